"""The launched app driven through its API with gradio_client: generate with three references,
ask for a heatmap, send to Annotate, move a point and accept → the review store changed."""

import pytest
from gradio_client import handle_file
from studio_fixtures import (
    box_file,
    connect,
    example_references,
    free_target_point,
    generate_inputs,
    png_declaring,
)

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.annotator.records import PointStatus, SampleStatus
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.studio.annotation import open_sample
from mosaic_studio.studio.app import build_demo
from mosaic_studio.studio.canvas import TARGET
from mosaic_studio.studio.local_server import launched
from mosaic_studio.studio.metadata import read_settings

# gradio_client's HTTP calls otherwise wait httpx's default 5 s (its heartbeat 20 s): too short for a
# generation with the default model on a busy 2-core machine. A hung server still fails, after this long.


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("studio")
    demo = build_demo(
        load_pipeline(DEFAULT_MODEL_DIR, device="cpu"), store=folder / "store.db", outputs_dir=folder / "out"
    )
    with launched(demo) as url:
        yield url, folder / "store.db"


def generate(client, files, prompt="a blue person, a brown quadruped and a yellow bird on a plain background", **kw):
    return client.predict(*generate_inputs([handle_file(f) for f in files], prompt, **kw), api_name="/generate")


def test_generate_heatmap_annotate_accept(served):
    url, store_path = served
    client = connect(url)
    # The API returns the handlers' view fields in order, less the gr.State ones (tabs.generate.GenerateView,
    # tabs.attention.HeatmapView, SendView): unpacking them here pins the endpoints' output order.
    gallery, downloads, seed, summary = generate(client, example_references(3))
    assert seed == 7 and len(gallery) == 1 and "3 reference(s)" in summary
    for served_png in (downloads[0], gallery[0]["image"]):  # what the download buttons serve
        assert read_settings(served_png)["seed"] == 7

    # Click latency (target 300 ms) is measured by benchmarks/heatmap_latency.py, not here:
    # a timed assertion fails on a busy machine without any change in the code.
    strip, heatmap, caption = client.predict(2, 50, 40, 1, 0, 3, "viridis", 0.5, api_name="/heatmap")
    assert heatmap and "Reference 2, pixel (50, 40)" in caption

    canvas, info, queue, progress = client.predict(1, 0, 3, 4, "ann", api_name="/send_to_annotate")
    sample_id = info.split("**")[1]
    with ReviewStore(store_path) as store:
        before = store.get_sample(sample_id)
    assert len(before.points) >= 3 and {p.source for p in before.points} == {"attention"}

    # Pair 1 is selected on opening: click the target clear of every drawn point (a click near
    # one would select its pair) to move pair 1's target point there.
    opened = open_sample(store_path, sample_id)
    spot = free_target_point(opened.layout, opened.draft.visible())
    x, y = opened.layout.panel(TARGET).to_canvas(spot)
    client.predict("Select / move", x, y, api_name="/annotate_click")
    client.predict("Select / move", api_name="/annotate_all_correct")
    client.predict("ann", "Select / move", api_name="/annotate_accepted")

    with ReviewStore(store_path) as store:
        after = store.get_sample(sample_id)
        report = client.predict(False, api_name="/annotate_report")
    assert after.status == SampleStatus.ACCEPTED and after.version == before.version + 1
    moved = [p for p in after.points if p.status == PointStatus.MOVED]
    first = before.points[0]  # pair 1
    assert len(moved) == 1 and (moved[0].ref_index, moved[0].point_index) == (first.ref_index, first.point_index)
    assert moved[0].target_xy == pytest.approx(spot, abs=1.0)
    assert "overall" in report


def test_bad_uploads_are_named_and_the_app_keeps_serving(served, tmp_path):
    url, store_path = served
    client = connect(url)
    with ReviewStore(store_path) as store:
        stats = store.stats()
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    bomb = png_declaring(tmp_path / "bomb.png", 20_000, 20_000)
    seven = [box_file(tmp_path / f"b{i}.png") for i in range(7)]
    cases = [
        ([str(text)], "not a readable image"),
        ([bomb], "too large"),
        (seven, "at most 6"),
        ([], "prompt is empty"),
    ]
    for files, message in cases:
        with pytest.raises(Exception, match=message):
            generate(client, files, prompt="" if not files else "a box")
    with pytest.raises(Exception, match=r"width=4096 is outside \[64, 1536\]"):  # checked before generating
        generate(client, [seven[0]], width=4096)
    gallery, *_ = generate(client, [seven[0]], prompt="a red box")  # still serving
    assert len(gallery) == 1
    with ReviewStore(store_path) as store:
        assert store.stats() == stats
