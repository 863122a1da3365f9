"""The Annotate tab in a real browser (Debian's chromium driven by Playwright, headless), on a
review store made here: clicks right after a sample loads, verdict keys, counts after a delete,
the report before a stratified sample is drawn, strata and missing categories, the export and
where the store lives. Screenshots go to test-artifacts/annotate/.

Skips only when /usr/bin/chromium is absent (CI installs it: .ci/run)."""

from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from studio_fixtures import ARTIFACTS, free_target_point
from test_app_browser import CHROMIUM, app_page, click_image_pixel

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.annotator.records import PointRecord, PointStatus, ReferenceRecord, SampleRecord
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.studio.annotation import open_sample
from mosaic_studio.studio.app import build_demo
from mosaic_studio.studio.canvas import REFERENCE, TARGET
from mosaic_studio.studio.tabs import annotate

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium (apt-get install chromium)"
)
if CHROMIUM.exists():  # with chromium present a missing playwright package is an error, not a skip
    from playwright import sync_api

    expect = sync_api.expect
SHOTS = ARTIFACTS / "annotate"
SLOW_OPEN_S = 3.0  # an opening this slow (a busy machine, big images) leaves time to click during it


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline(DEFAULT_MODEL_DIR, device="cpu")


def add_samples(store_path: Path, categories: dict[str, tuple[str, ...]], points_per_ref: int = 3) -> None:
    """Samples with noise images beside the store (512 px, so the canvas scales them) and
    points on a grid: pair numbers run reference by reference."""
    folder = store_path.parent
    rng = np.random.default_rng(0)
    for name in ("ref_0", "ref_1", "ref_2", "target"):
        pixels = rng.integers(60, 200, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((512, 512), Image.Resampling.NEAREST).save(folder / f"{name}.png")
    with ReviewStore(store_path) as store:
        for sample_id, tags in categories.items():
            references = tuple(ReferenceRecord(k, f"ref_{k}.png", tag) for k, tag in enumerate(tags))
            points = tuple(
                PointRecord(k, i, (80.0 + 150 * i, 100.0 + 140 * k), (60.0 + 130 * i, 70.0 + 90 * k), "test")
                for k in range(len(tags))
                for i in range(points_per_ref)
            )
            store.add_sample(SampleRecord(sample_id, f"caption of {sample_id}", "target.png", references, points))


def review_all(store_path: Path, sample_id: str, verdict: str = "correct") -> None:
    with ReviewStore(store_path) as store:
        current = store.get_sample(sample_id)
        verdicts = {(p.ref_index, p.point_index): verdict for p in current.points}
        store.save_review(sample_id, "earlier", current.version, verdicts=verdicts, decision="accepted")


@contextmanager
def annotate_page(pipe, store_path: Path, outputs_dir: Path):
    """The app on `store_path` (admin: the draw button shows), its Annotate tab open in chromium."""
    demo = build_demo(pipe, store=store_path, outputs_dir=outputs_dir, admin=True)
    with app_page(demo) as page:
        page.get_by_role("tab", name="Annotate").click()
        yield page


def load_queue(page, name: str = "browser") -> None:
    page.locator("#annotator textarea").fill(name)
    page.locator("#ann-load").click()


def shortcut(page, key: str) -> None:
    page.locator("#ann-progress").click()  # focus outside text fields: the shortcuts apply
    page.keyboard.press(key)


@pytest.fixture
def slow_opening(monkeypatch):
    """Every sample opening (load, accept → next) takes SLOW_OPEN_S longer: the time a busy
    machine takes, made certain, so a click lands while it is running."""
    real = annotate.annotation.open_sample

    def slow(*args, **kwargs):
        time.sleep(SLOW_OPEN_S)
        return real(*args, **kwargs)

    monkeypatch.setattr(annotate.annotation, "open_sample", slow)


def test_clicks_right_after_loading_act_on_the_loaded_sample(pipe, tmp_path, slow_opening):
    """The lost click of issue 15: a click sent while the sample was (re)opening read the state
    from before, and the opening then replaced its result; the next click moved pair 1."""
    store_path = tmp_path / "store.db"
    add_samples(store_path, {"a": ("object", "object")})
    opened = open_sample(store_path, "a")
    pair5 = opened.draft.pair(5)
    ref_end = opened.layout.panel(REFERENCE, pair5.ref_index).to_canvas(pair5.ref_xy)
    spot = free_target_point(opened.layout, opened.draft.visible())
    with annotate_page(pipe, store_path, tmp_path / "out") as page:
        load_queue(page)
        expect(page.locator("#ann-info")).to_contain_text("Pair 1")
        started = time.perf_counter()
        page.locator("#ann-load").click()  # reopens sample a, slowly
        click_image_pixel(page, "#review-canvas", *ref_end)  # pair 5, while the opening runs
        # The next click as quick as a person's, still during the opening. (Two clicks a few
        # milliseconds apart are two requests that may reach the server in either order.)
        page.wait_for_timeout(150)
        click_image_pixel(page, "#review-canvas", *opened.layout.panel(TARGET).to_canvas(spot))
        assert time.perf_counter() - started < SLOW_OPEN_S, "both clicks must land while the sample opens"
        expect(page.locator("#ann-info")).to_contain_text("Pair 5 · reference 2")
        expect(page.locator("#ann-info")).to_contain_text("(moved)")
        expect(page.locator("#ann-info")).to_contain_text("1 moved")
        page.screenshot(path=str(SHOTS / "clicks-after-loading.png"), full_page=True)
        page.locator("#ann-all-correct").click()
        expect(page.locator("#ann-info")).to_contain_text("0 to judge")
        shortcut(page, "Shift+A")
        expect(page.locator("#ann-progress")).to_contain_text("1 reviewed by browser")
    with ReviewStore(store_path) as store:
        points = {(p.ref_index, p.point_index): p for p in store.get_sample("a").points}
    moved = [key for key, p in points.items() if p.status == PointStatus.MOVED]
    assert moved == [(pair5.ref_index, pair5.point_index)]  # pair 5, not pair 1
    assert points[moved[0]].target_xy == pytest.approx(spot, abs=1.5)


def test_a_click_meant_for_the_previous_sample_changes_nothing(pipe, tmp_path, slow_opening):
    store_path = tmp_path / "store.db"
    add_samples(store_path, {"a": ("object", "object"), "b": ("object", "object")})
    opened = open_sample(store_path, "a")
    pair5 = opened.draft.pair(5)
    with annotate_page(pipe, store_path, tmp_path / "out") as page:
        load_queue(page)
        expect(page.locator("#ann-info")).to_contain_text("Pair 1")
        page.locator("#ann-all-correct").click()
        expect(page.locator("#ann-info")).to_contain_text("0 to judge")
        shortcut(page, "Shift+A")  # saves a, then opens b slowly
        click_image_pixel(page, "#review-canvas", *opened.layout.panel(REFERENCE, 1).to_canvas(pair5.ref_xy))
        expect(page.get_by_text("opened meanwhile: that click")).to_be_visible()
        expect(page.locator("#ann-info strong").first).to_have_text("b")
        expect(page.locator("#ann-info")).to_contain_text("Pair 1")  # the click did not select b's pair 5


def test_verdict_keys_move_on_and_counts_add_up_after_a_delete(pipe, tmp_path):
    store_path = tmp_path / "store.db"
    add_samples(store_path, {"a": ("object", "object")})  # 6 pairs
    with annotate_page(pipe, store_path, tmp_path / "out") as page:
        load_queue(page)
        info = page.locator("#ann-info")
        expect(info).to_contain_text("Pair 1")
        shortcut(page, "c")
        expect(info).to_contain_text("Pair 2")  # judged 1, on to the next
        expect(info).to_contain_text("6 pairs: 1 judged · 5 to judge")
        for key in ("w", "u", "c"):  # pressed at once: each waits its turn, none is dropped
            page.keyboard.press(key)
        expect(info).to_contain_text("Pair 5")
        expect(info).to_contain_text("6 pairs: 4 judged · 2 to judge")
        page.keyboard.press("n")  # moves without judging
        expect(info).to_contain_text("Pair 6")
        expect(info).to_contain_text("4 judged")
        page.keyboard.press("d")
        expect(info).to_contain_text("5 pairs: 4 judged · 1 to judge · 0 added — 0 moved · 1 deleted")
        page.screenshot(path=str(SHOTS / "counts-after-delete.png"), full_page=True)


def test_report_before_a_sample_is_drawn_shows_all_reviews_and_the_draw_button(pipe, tmp_path):
    store_path = tmp_path / "store.db"
    add_samples(store_path, {"a": ("object", "object"), "b": ("animal", "human", "unknown")})
    review_all(store_path, "a")  # 6 judged points, and no stratified sample
    with annotate_page(pipe, store_path, tmp_path / "out") as page:
        page.get_by_text("Report: error rate per stratum").click()
        report = page.locator("#ann-report")
        expect(report).to_contain_text("No stratified sample has been drawn yet")
        expect(report).to_contain_text("Draw the stratified sample below")
        expect(report.locator("tr", has_text="overall")).to_contain_text("6")  # judged, not 0
        expect(report.locator("tr", has_text="2 × object")).to_be_visible()  # each category once
        assert "object + object" not in report.inner_text()
        page.screenshot(path=str(SHOTS / "report-no-sample.png"), full_page=True)
        page.locator("#annotator textarea").fill("admin")
        page.locator("#ann-draw").click()
        expect(report).to_contain_text("Stratified sample: ")
        expect(report).not_to_contain_text("No stratified sample")
        expect(page.locator("#ann-draw")).to_be_hidden()
        expect(page.locator("#ann-progress")).to_contain_text("stratified sample: ")


def test_a_missing_category_is_asked_for_and_its_stratum_is_unknown(pipe, tmp_path):
    store_path = tmp_path / "store.db"
    add_samples(store_path, {"b": ("animal", "human", "unknown")}, points_per_ref=1)
    review_all(store_path, "b")
    with annotate_page(pipe, store_path, tmp_path / "out") as page:
        load_queue(page, "someone else")
        expect(page.locator("#ann-info")).to_contain_text("No category was given for reference 3")
        page.get_by_text("Report: error rate per stratum").click()
        expect(page.locator("#ann-report tr", has_text="animal + human + unknown")).to_be_visible()


def test_export_offers_images_beside_relative_paths_and_the_tab_says_where_the_store_lives(pipe, tmp_path):
    store_path = tmp_path / "store.db"
    add_samples(store_path, {"a": ("object", "object")})
    review_all(store_path, "a")
    outputs = tmp_path / "out"
    with annotate_page(pipe, store_path, outputs) as page:
        expect(page.locator("#ann-location")).to_contain_text(f"Review store: {store_path.resolve()}")
        page.get_by_text("Report: error rate per stratum").click()
        page.locator("#ann-export").click()
        files = page.locator("#ann-export-file")
        expect(files.get_by_role("cell", name=re.compile(r"^accepted-[\w-]+\.zip$"))).to_be_visible()
        expect(files.get_by_role("cell", name="accepted.json", exact=True)).to_be_visible()
    (exported,) = [p for p in outputs.glob("accepted-*") if p.is_dir()]
    data = json.loads((exported / "accepted.json").read_text())
    target = data["samples"][0]["target"]
    assert not Path(target).is_absolute() and (exported / target).is_file()
    assert str(tmp_path) not in (exported / "accepted.json").read_text()


@pytest.fixture(autouse=True, scope="module")
def _shots_folder():
    SHOTS.mkdir(parents=True, exist_ok=True)
