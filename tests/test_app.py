"""app.build_demo and the tabs' Gradio-facing handlers on the embedded default: bad input
becomes a visible gr.Error naming the problem, and the review store stays unchanged."""

from pathlib import Path

import gradio as gr
import pytest
from studio_fixtures import FAST, box_file, example_references, free_target_point, png_declaring

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.studio.app import build_demo
from mosaic_studio.studio.generation import MAX_SEED
from mosaic_studio.studio.tabs import annotate, attention, generate
from mosaic_studio.studio.tabs.views import skipped


def no_progress(*args, **kwargs):
    return None


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(DEFAULT_MODEL_DIR, device="cpu")


@pytest.fixture
def run_generate(pipe, tmp_path):
    handler = generate.make_generate_handler(pipe, outputs_dir=tmp_path, model_info={"model": "tiny"})

    def run(files, prompt="a red box", width=FAST["width"], height=FAST["height"], seed=7, randomise=False, images=1):
        return handler(
            files,
            prompt,
            "",
            width,
            height,
            FAST["steps"],
            3.5,
            seed,
            randomise,
            images,
            False,
            1,
            100,
            progress=no_progress,
        )

    return run


def test_build_demo_serves_the_three_tabs_with_a_queue(pipe, tmp_path):
    demo = build_demo(pipe, store=tmp_path / "data" / "store.db", outputs_dir=tmp_path / "out", max_queue=5)
    assert isinstance(demo, gr.Blocks) and (tmp_path / "data" / "store.db").is_file()
    names = {fn.api_name for fn in demo.fns.values()}
    assert {
        "generate",
        "heatmap",
        "send_to_annotate",
        "annotate_load",
        "annotate_click",
        "annotate_accepted",
        "annotate_report",
        "annotate_export",
    } <= names
    assert demo._queue.max_size == 5
    generate_fn = next(fn for fn in demo.fns.values() if fn.api_name == "generate")
    assert generate_fn.concurrency_limit == 1  # one pipeline, one generation at a time


def test_generate_handler_returns_pngs_seed_and_session(run_generate):
    view = run_generate(example_references(3), images=2)
    assert view.gallery == view.downloads == view.generation.paths and len(view.gallery) == 2 and view.seed == 7
    assert view.generation.record is not None and "3 reference(s)" in view.summary
    assert 0 <= run_generate([], randomise=True).seed <= MAX_SEED


@pytest.mark.parametrize(
    "case, message",
    [
        ("text", "not a readable image"),
        ("corrupt", "not a readable image"),
        ("bomb", "too large to load"),
        ("seven", "at most 6"),
        ("empty", "prompt is empty"),
        ("height", "height={odd} is not divisible by {token}"),
        ("width", "width=2048 is outside"),
    ],
)
def test_bad_input_is_a_visible_error(pipe, run_generate, tmp_path, case, message):
    token = pipe.pixels_per_token
    odd = FAST["height"] + token // 2  # inside the slider's range, not whole tokens for this model
    message = message.format(odd=odd, token=token)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    corrupt = tmp_path / "cut.png"
    corrupt.write_bytes(open(box_file(tmp_path / "whole.png"), "rb").read()[:120])  # truncated mid-data
    files = {
        "text": [str(text)],
        "corrupt": [str(corrupt)],
        "bomb": [png_declaring(tmp_path / "bomb.png", 20_000, 20_000)],
        "seven": [box_file(tmp_path / f"{i}.png") for i in range(7)],
    }.get(case, [])
    kwargs = {"empty": dict(prompt=""), "height": dict(height=odd), "width": dict(width=2048)}.get(case, {})
    with pytest.raises(gr.Error, match=message):
        run_generate(files, **kwargs)


def test_preview_shows_the_preprocessed_references_or_names_the_bad_one(tmp_path):
    shown = generate.on_preview(example_references(2), False)
    names = [Path(name).name for name in example_references(2)]
    assert [caption for _, caption in shown] == [f"{i}: {name}" for i, name in enumerate(names, 1)]
    assert shown[0][0].size == (256, 256) and shown[0][0].getpixel((0, 0)) == (255, 255, 255)  # white padding
    with pytest.raises(gr.Error, match="reference 1 .*too large"):
        generate.on_preview([png_declaring(tmp_path / "bomb.png", 30_000, 20_000)], False)


def test_attention_handlers_before_and_after_a_generation(run_generate, tmp_path):
    with pytest.raises(gr.Error, match="Generate with at least one reference"):
        attention._visible(attention.redraw)(None, None, 1, 0, 0, "inferno", 0.5)
    assert attention.on_new_generation(None, 0.5).status.startswith("Generate with")
    generation = run_generate(example_references(2)).generation
    reset = attention.on_new_generation(generation, 0.5)
    assert reset.first["choices"][0] == ("transformer_blocks.0", 0) and reset.overview is not None
    shown = attention.on_reference_pixel(generation, 1, 30, 30, 1, 0, 3, "turbo", 0.4)
    assert shown.clicked == (0, 30.0, 30.0) and shown.heatmap.size == (64, 64) and "Reference 1" in shown.caption

    store = tmp_path / "store.db"
    ReviewStore(store).close()
    sent = attention.make_send_handler(store)(generation, 1, 0, 3, 2, "ann")
    assert sent.tabs["selected"] == "annotate" and sent.opened.draft.selected == 1
    with ReviewStore(store) as opened:
        assert opened.stats().samples == 1
    with pytest.raises(gr.Error, match="no generated image 2"):
        attention.make_send_handler(store)(generation, 2, 0, 3, 2, "ann")


def test_annotate_handlers_move_accept_and_refuse_a_stale_save(run_generate, tmp_path):
    generation = run_generate(example_references(2)).generation
    store = tmp_path / "store.db"
    ReviewStore(store).close()
    opened = attention.make_send_handler(store)(generation, 1, 0, 3, 2, "").opened
    with pytest.raises(gr.Error, match="annotator name"):
        annotate.on_load(store, " ")
    view = annotate.on_load(store, "ann")
    loaded = view.opened
    assert loaded.draft.sample_id == opened.draft.sample_id and "Sample **1 of 1**" in view.progress

    # A click near any drawn point selects its pair, so move pair 1 (selected) to a spot clear of them all
    assert loaded.draft.selected == 1
    spot = free_target_point(loaded.layout, loaded.draft.visible())
    target = loaded.layout.panel("target")
    moved = annotate.on_click(loaded, annotate.SELECT_MODE, *target.to_canvas(spot)).opened
    assert moved.draft.counts()["moved"] == 1 and moved.draft.selected == 1
    assert moved.draft.pair(1).target_xy == pytest.approx(spot)  # > 2 hit radii from where it was
    assert annotate.on_click(moved, annotate.SELECT_MODE, 0, 0) == skipped(annotate.DraftView)  # a gap: a warning only
    judged = annotate._draft_action("judge_remaining", "correct")(moved, annotate.SELECT_MODE).opened
    with pytest.raises(gr.Error, match="still need a verdict"):
        annotate.on_save(store, "accepted", moved, "ann", annotate.SELECT_MODE)
    after = annotate.on_save(store, "accepted", judged, "ann", annotate.SELECT_MODE)
    assert after.opened is None and "All **1** samples reviewed" in after.progress

    with ReviewStore(store) as opened_store:
        before = opened_store.stats()
    with pytest.raises(gr.Error, match="changed by another review"):  # the same draft again: version conflict
        annotate.on_save(store, "rejected", judged, "bob", annotate.SELECT_MODE)
    with ReviewStore(store) as opened_store:
        assert opened_store.stats() == before and before.by_status == {"accepted": 1}
    assert "overall" in annotate.on_report(store, False)
    assert annotate.on_export(store, tmp_path).endswith(".json")
    assert "stratified sample: 1 of 1 reviewed" in annotate.on_mark(store, 0.5, 0, "ann")
