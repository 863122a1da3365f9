"""The Generate tab's controls and handlers: controls open at the model's own settings, the size
boxes snap to whole tokens and refuse what is out of range, a refused request is shown once
(status line) and logged as one line, and the /generate API still raises."""

import logging

import gradio as gr
import pytest
from gradio_client import handle_file
from studio_fixtures import FAST, box_file, connect, generate_inputs

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.mosaic.native import FLUX_DEV_SETTINGS, NativeSettings
from mosaic_studio.mosaic.pipeline import MosaicPipeline
from mosaic_studio.mosaic.tiny import tiny_flux_components
from mosaic_studio.studio.app import build_demo
from mosaic_studio.studio.generation import MAX_REFERENCE_SIDE, MAX_SIDE, MIN_SIDE, snap_side
from mosaic_studio.studio.local_server import launched
from mosaic_studio.studio.tabs import generate
from mosaic_studio.world.shapes import KINDS

LOGGER = "mosaic_studio.studio.tabs.views"  # user_error logs the one line
EMPTY = "the prompt is empty and there are no references"


def no_progress(*args, **kwargs):
    return None


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(DEFAULT_MODEL_DIR, device="cpu")


INPUTS = ("files", "prompt", "categories", "width", "height", "steps", "guidance", "seed", "randomise")
INPUTS += ("num_images", "remove_bg", "attention_first", "attention_last", "tolerant_crop")


def inputs(**changes) -> list:
    """The handlers' positional inputs (tests/studio_fixtures.generate_inputs), with `changes`."""
    values = dict(zip(INPUTS, generate_inputs([], "a red box"), strict=True))
    return list({**values, **changes}.values())


def built(pipe):
    with gr.Blocks():
        return generate.build(pipe)


def test_the_controls_open_at_the_models_settings(pipe):
    ui = built(pipe)
    shown = (ui.width.value, ui.height.value, ui.reference_size.value, ui.steps.value, ui.guidance.value)
    assert shown == (128, 128, 64, 12, 3.5)  # the embedded default's mosaic_defaults.json
    other = MosaicPipeline(**tiny_flux_components())
    assert other.native_settings == FLUX_DEV_SETTINGS
    other.native_settings = NativeSettings(
        height=96, width=160, reference_size=48, num_inference_steps=7, guidance_scale=2
    )
    ui = built(other)
    assert (ui.width.value, ui.height.value, ui.reference_size.value, ui.steps.value, ui.guidance.value) == (
        160,
        96,
        48,
        7,
        2,
    )
    assert ui.width.step == other.pixels_per_token == 16


def test_the_embedded_default_says_what_it_knows(pipe):
    note = generate.model_note(pipe)
    assert all(kind in note for kinds in KINDS.values() for kind in kinds)
    assert "FLUX.1-dev" in note and "--model" in note and "\n" not in note
    assert built(pipe).model_note.visible
    other = MosaicPipeline(**tiny_flux_components())  # not the embedded default: nothing to say
    assert generate.model_note(other) == "" and not built(other).model_note.visible


@pytest.mark.parametrize(
    "value, token, expected, said",
    [
        (128, 8, 128, ""),
        (250, 8, 248, "Width 250 px is not a whole number of 8 px tokens: snapped to 248."),
        (250, 16, 256, "snapped to 256"),
        (2000, 8, 1536, f"Width 2000 px refused: it must be {MIN_SIDE}–{MAX_SIDE} px. Set to 1536."),
        (40, 8, 64, f"it must be {MIN_SIDE}–{MAX_SIDE} px. Set to 64."),
        (-5, 16, 64, "refused"),
        (None, 8, None, f"enter a size in pixels, {MIN_SIDE}–{MAX_SIDE}"),
    ],
)
def test_snap_side(value, token, expected, said):
    snapped, note = snap_side("Width", value, token=token)
    assert snapped == expected and (note == said if not said else said in note)


def test_the_size_boxes_snap_and_refuse_when_left(pipe):
    on_size = generate.make_size_handler(pipe)
    fine = on_size(128, 128, 64)
    assert all(isinstance(v, type(gr.skip())) for v in fine[:3]) and fine.size_note == ""
    typo = on_size(250, 128, 64)
    assert typo.width == 248 and isinstance(typo.height, type(gr.skip())) and "snapped to 248" in typo.size_note
    out = on_size(2000, 40, 4096)
    assert (out.width, out.height, out.reference_size) == (MAX_SIDE, MIN_SIDE, MAX_REFERENCE_SIDE)
    for label, value in (("Width", 2000), ("Height", 40), ("Reference size", 4096)):
        assert f"{label} {value} px refused" in out.size_note
    assert f"{MIN_SIDE}–{MAX_REFERENCE_SIDE} px" in out.size_note


def test_the_button_shows_a_refused_request_once_and_leaves_the_rest(pipe, tmp_path, caplog):
    on_click = generate.make_generate_button_handler(pipe, outputs_dir=tmp_path, model_info={})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        shown = on_click(*inputs(prompt=""), progress=no_progress)
    assert isinstance(shown, generate.GenerateShown)
    skip = type(gr.skip())
    assert all(isinstance(getattr(shown, field), skip) for field in generate.GenerateView._fields)  # Seed too
    assert shown.status.startswith("**Not generated:**") and EMPTY in shown.status
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert records[0].getMessage() == f"refused: {EMPTY}: give a prompt, references, or both"


def test_the_button_clears_the_status_after_a_generation(pipe, tmp_path):
    on_click = generate.make_generate_button_handler(pipe, outputs_dir=tmp_path, model_info={})
    shown = on_click(*inputs(files=[box_file(tmp_path / "box.png")]), progress=no_progress)
    assert shown.status == "" and len(shown.gallery) == 1 and shown.seed == 7


def test_the_api_handler_raises_without_a_traceback_and_logs_one_line(pipe, tmp_path, caplog):
    handler = generate.make_generate_handler(pipe, outputs_dir=tmp_path, model_info={})
    odd = FAST["height"] + pipe.pixels_per_token // 2
    with caplog.at_level(logging.WARNING, logger=LOGGER), pytest.raises(gr.Error) as error:
        handler(*inputs(height=odd), progress=no_progress)
    assert error.value.print_exception is False  # gradio prints no traceback for it
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1 and f"height={odd} is not divisible by" in records[0].getMessage()


def test_a_served_refusal_prints_no_traceback(pipe, tmp_path, capfd, caplog):
    demo = build_demo(pipe, store=tmp_path / "store.db", outputs_dir=tmp_path / "out")
    with launched(demo) as url, caplog.at_level(logging.WARNING, logger=LOGGER):
        client = connect(url)
        capfd.readouterr()  # start-up output is not the point here
        with pytest.raises(Exception, match=EMPTY):
            client.predict(*generate_inputs([], ""), api_name="/generate")
        gallery, *_ = client.predict(
            *generate_inputs([handle_file(box_file(tmp_path / "box.png"))], "a red box"), api_name="/generate"
        )
    printed = capfd.readouterr()
    assert "Traceback" not in printed.out + printed.err and len(gallery) == 1  # and still serving
    assert len([r for r in caplog.records if r.name == LOGGER]) == 1
