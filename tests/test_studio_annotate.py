"""The Annotate tab's handlers without a browser: events aimed at a sample another has replaced,
the event queue they share, the report's fallback and draw button, the export's downloads,
where the store lives, and the categories "send to Annotate" gives the store."""

import json
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image
from test_studio_report import images, review
from test_studio_review import sample

from mosaic_studio.annotator.records import UNKNOWN_CATEGORY
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.mosaic.data.semalign import load_sample
from mosaic_studio.studio import proposals
from mosaic_studio.studio.access import Access
from mosaic_studio.studio.annotation import SELECT_MODE, open_sample
from mosaic_studio.studio.canvas import REFERENCE
from mosaic_studio.studio.session import Generation
from mosaic_studio.studio.tabs import annotate
from mosaic_studio.studio.tabs.views import skipped


@pytest.fixture
def store(tmp_path):
    images(tmp_path)
    path = tmp_path / "store.db"
    with ReviewStore(path) as opened:
        opened.add_sample(sample("a"))
        opened.add_sample(sample("b"))
    return path


def test_a_click_aimed_at_the_sample_shown_before_does_nothing(store):
    opened = open_sample(store, "a")
    shown_b = annotate.annotation.describe(open_sample(store, "b"))
    x, y = opened.layout.panel(REFERENCE, 1).to_canvas(opened.draft.pair(4).ref_xy)  # pair 4's reference end
    with pytest.warns(UserWarning, match="sample a opened meanwhile: that click"):
        assert annotate.on_click(opened, SELECT_MODE, x, y, shown_b) == skipped(annotate.DraftView)
    shown_a = annotate.annotation.describe(opened)
    assert annotate.on_click(opened, SELECT_MODE, x, y, shown_a).opened.draft.selected == 4
    assert annotate.on_click(opened, SELECT_MODE, x, y).opened.draft.selected == 4  # the API: no canvas seen
    judge = annotate._draft_action("judge", "correct")
    with pytest.warns(UserWarning, match="opened meanwhile"):
        assert judge(opened, SELECT_MODE, "") == skipped(annotate.DraftView)  # nothing was shown yet
    assert judge(opened, SELECT_MODE, shown_a).opened.draft.selected == 2  # judged 1, on to 2
    done = annotate._draft_action("judge_remaining", "correct")(opened, SELECT_MODE).opened
    with pytest.raises(gr.Error, match="that press was meant for the sample shown before"):
        annotate.on_save(store, "accepted", done, "ann", SELECT_MODE, shown=shown_b)
    with ReviewStore(store) as unchanged:
        assert unchanged.get_sample("a").version == 0
    assert annotate.on_save(store, "accepted", done, "ann", SELECT_MODE, shown=shown_a).opened.draft.sample_id == "b"


def test_every_event_on_the_opened_sample_runs_in_one_ordered_queue(tmp_path):
    with gr.Blocks() as demo:
        ui = annotate.build()
        annotate.wire(ui, store_path=tmp_path / "s.db", outputs_dir=tmp_path)
    state = ui.opened._id
    on_sample = [fn for fn in demo.fns.values() if state in [block._id for block in fn.inputs + fn.outputs]]
    assert len(on_sample) == 16  # load (button, Enter), open, select, click, mode, 8 draft buttons, accept, reject
    for fn in on_sample:
        assert (fn.concurrency_id, fn.concurrency_limit) == (annotate.EVENTS, 1), fn.name
    by_name = {fn.api_name: fn for fn in on_sample}
    for name in ("annotate_click", "annotate_correct", "annotate_next", "annotate_delete"):
        assert by_name[name].trigger_mode == "multiple"  # a click while one is pending waits its turn
    assert by_name["annotate_accepted"].trigger_mode == "once"  # a double press never accepts the next unseen
    select = next(fn for fn in on_sample if any(t[1] == "select" for t in fn.targets))
    assert select.trigger_mode == "multiple" and ui.info._id in [block._id for block in select.inputs]


def test_report_without_a_sample_offers_the_draw_to_admins_only(store):
    with ReviewStore(store) as opened:
        review(opened, "a", "ann", "correct")
    admin, other = Access.of(admin=True), Access.of(admin=False)
    assert annotate.DRAW_HINT_ADMIN in annotate.on_report(store, True, admin)
    assert annotate.DRAW_HINT_OTHERS in annotate.on_report(store, True, other)
    assert annotate.draw_button(store, admin)["visible"] is True
    assert annotate.draw_button(store, other)["visible"] is False
    assert "stratified sample" in annotate.on_mark(store, 0.5, 0, "ann", access=admin)
    assert annotate.draw_button(store, admin)["visible"] is False
    assert "No stratified sample" not in annotate.on_report(store, True, admin)


def test_export_offers_the_archive_and_the_json(store, tmp_path):
    with ReviewStore(store) as opened:
        review(opened, "a", "ann", "correct")
    out = tmp_path / "out"
    json_path = annotate.on_export(store, out)
    zipped, alone = annotate.export_downloads(json_path)
    assert alone == json_path and Path(zipped) == Path(json_path).parent.with_name(Path(json_path).parent.name + ".zip")
    assert (
        Path(zipped).is_file() and json.loads(Path(json_path).read_text())["samples"][0]["target"] == "001-a/target.png"
    )


def test_the_tab_says_where_the_store_lives(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    store = tmp_path / ".local" / "share" / "mosaic-studio" / "studio.db"
    text = annotate.location_text(store, tmp_path / "out")
    assert "`~/.local/share/mosaic-studio/studio.db`" in text and "`~/out`" in text
    assert "`/elsewhere/s.db`" in annotate.location_text(Path("/elsewhere/s.db"), tmp_path)


@pytest.mark.parametrize(
    ("tag", "stored", "folder"),
    [
        ("cat", "animal", ("animal", "cat")),
        ("Man", "human", ("human", "man")),
        ("dogs", "animal", ("animal", "dogs")),
        ("object", "object", ("object", "")),
        ("teapot", "teapot", ("object", "teapot")),  # no family known: its own stratum
        ("", UNKNOWN_CATEGORY, ("object", "")),
        ("unknown", UNKNOWN_CATEGORY, ("object", "")),
    ],
)
def test_categories_of_a_sent_sample(tag, stored, folder):
    assert proposals.store_category(tag) == stored and proposals.folder_category(tag) == folder


def subject(colour) -> Image.Image:
    image = np.full((64, 64, 3), 255, np.uint8)
    image[8:56, 8:56] = colour
    return Image.fromarray(image)


def test_send_to_annotate_marks_a_missing_category_unknown_and_asks_for_it(tmp_path):
    refs = [subject((200, 30, 30)), subject((30, 200, 30)), subject((30, 30, 200))]
    generation = Generation(
        settings={"prompt": "a cat, a man and something"},
        images=[Image.new("RGB", (64, 64), (120, 120, 120))],
        reference_images=refs,
        categories=["cat", "man", ""],
        record=SimpleNamespace(reference_grid=(4, 4), target_grid=(4, 4)),
        paths=[],
    )
    maps = torch.rand((1, 3, 16, 16), generator=torch.Generator().manual_seed(0))
    record = proposals.review_item(generation, 0, maps, tmp_path, per_reference=2)
    assert record.categories == ("animal", "human", UNKNOWN_CATEGORY)
    assert record.stratum == (3, ("animal", "human", UNKNOWN_CATEGORY))
    folder = load_sample(tmp_path / Path(record.target_path).parent)
    assert [(r.category, r.label) for r in folder.references] == [("animal", "cat"), ("human", "man"), ("object", "")]
    with ReviewStore(tmp_path / "s.db") as store:
        store.add_sample(record)
    caption = open_sample(tmp_path / "s.db", record.sample_id).caption
    assert "animal, human, unknown" in caption and "No category was given for reference 3" in caption
