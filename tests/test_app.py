"""The Generate tab's handler and Blocks on the embedded default."""

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from app import build_demo, generate, parse_args
from mosaic import DEFAULT_MODEL_DIR
from mosaic.loading import load_pipeline


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(DEFAULT_MODEL_DIR, device="cpu")


def reference_file(tmp_path, colour, name):
    image = np.full((80, 80, 3), 255, np.uint8)
    image[20:60, 25:55] = colour
    path = tmp_path / name
    Image.fromarray(image).save(path)
    return str(path)


def test_generate_handler_with_three_references(pipe, tmp_path):
    files = [reference_file(tmp_path, c, f"r{i}.png") for i, c in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)])]
    images = generate(pipe, files, "a red box, a green box and a blue box", 64, 64, 2, 3.5, 7, 2, progress=lambda *a, **k: None)
    assert len(images) == 2 and images[0].size == (64, 64)


@pytest.mark.parametrize(
    "files, prompt, height, message",
    [([], "", 64, "prompt is empty"), ([], "a box", 72, "divisible by 16")],
)
def test_bad_input_becomes_a_visible_error(pipe, files, prompt, height, message):
    with pytest.raises(gr.Error, match=message):
        generate(pipe, files, prompt, height, 64, 2, 3.5, 0, 1, progress=lambda *a, **k: None)


def test_not_an_image_is_named(pipe, tmp_path):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(gr.Error, match="not a readable image"):
        generate(pipe, [str(bad)], "a box", 64, 64, 2, 3.5, 0, 1, progress=lambda *a, **k: None)


def test_build_demo_and_defaults(pipe):
    assert isinstance(build_demo(pipe), gr.Blocks)
    args = parse_args([])
    assert args.model == str(DEFAULT_MODEL_DIR) and args.host == "127.0.0.1"
