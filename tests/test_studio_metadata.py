"""PNG metadata, the bundled examples, flags and environment, optional backends."""

import importlib.util
import json

import pytest
from PIL import Image

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.studio.examples import EXAMPLES_DIR, load_examples
from mosaic_studio.studio.metadata import TEXT_KEY, read_settings, save_png
from mosaic_studio.studio.options import default_store_path, parse_args


def test_png_settings_round_trip(tmp_path):
    settings = {"prompt": "a red vase", "seed": 3, "steps": 2, "references": ["a.png"]}
    path = save_png(Image.new("RGB", (32, 32)), tmp_path / "x.png", settings)
    assert read_settings(path) == settings
    assert Image.open(path).text[TEXT_KEY].startswith("a red vase | seed: 3")
    Image.new("RGB", (32, 32)).save(tmp_path / "plain.png")
    with pytest.raises(ValueError, match="no MOSAIC settings"):
        read_settings(tmp_path / "plain.png")


def test_examples_cover_four_and_more_references_and_are_reproducible(tmp_path):
    examples = load_examples()
    assert len(examples) >= 4 and max(len(e.references) for e in examples) >= 4
    assert all(len(e.categories) == len(e.references) for e in examples)
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES_DIR / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for name in [p.name for p in EXAMPLES_DIR.glob("*.png")] + ["examples.json"]:
        assert (tmp_path / name).read_bytes() == (EXAMPLES_DIR / name).read_bytes(), name
    assert json.loads((tmp_path / "examples.json").read_text())[0]["references"]


def test_flags_and_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    args = parse_args([])
    assert args.host == "127.0.0.1" and args.port == 7860 and args.quantize == "none" and not args.cpu_offload
    assert args.model == str(DEFAULT_MODEL_DIR) and args.lora == "auto"
    assert args.store == str(default_store_path()) == str(tmp_path / "mosaic-studio" / "studio.db")
    monkeypatch.setenv("MOSAIC_MODEL", "black-forest-labs/FLUX.1-dev")
    monkeypatch.setenv("MOSAIC_CPU_OFFLOAD", "1")
    monkeypatch.setenv("MOSAIC_STORE", str(tmp_path / "s.db"))
    monkeypatch.setenv("MOSAIC_QUANTIZE", "4bit")
    args = parse_args(["--port", "8000"])
    assert (args.model, args.cpu_offload, args.store, args.quantize, args.port) == (
        "black-forest-labs/FLUX.1-dev",
        True,
        str(tmp_path / "s.db"),
        "4bit",
        8000,
    )
    with pytest.raises(SystemExit):
        parse_args(["--quantize", "2bit"])


def test_space_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setenv("SPACE_ID", "someone/mosaic-studio")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    args = parse_args([])
    assert (args.host, args.port) == ("0.0.0.0", 7861)  # a Space's proxy must reach the app
    monkeypatch.setenv("GRADIO_SERVER_NAME", "10.0.0.2")
    assert parse_args([]).host == "10.0.0.2"


def test_optional_backends_are_never_required(monkeypatch):
    from mosaic_studio.studio import background, quantization, space

    real = importlib.util.find_spec
    absent = ("bitsandbytes", "rembg")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else real(name, *a))
    monkeypatch.setattr(space, "spaces", None)
    handler = lambda: None  # noqa: E731
    assert space.on_gpu(handler) is handler
    assert background.backend_name() is None
    with pytest.raises(ValueError, match="pip install rembg"):
        background.remove_background(Image.new("RGB", (32, 32)))
    with pytest.raises(ValueError, match="bitsandbytes"):
        quantization.quantization_config("4bit", "bfloat16")
    assert quantization.quantization_config("none", "bfloat16") is None


def test_spaces_gpu_is_applied_when_present(monkeypatch):
    from mosaic_studio.studio import space

    calls = []

    class FakeSpaces:
        @staticmethod
        def GPU(duration):
            calls.append(duration)
            return lambda fn: ("wrapped", fn)

    monkeypatch.setattr(space, "spaces", FakeSpaces)
    handler = lambda: None  # noqa: E731
    assert space.on_gpu(handler) == ("wrapped", handler) and calls == [space.GPU_SECONDS]
