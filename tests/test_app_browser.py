"""End to end in a real browser: Debian's chromium driven by Playwright, headless.

Uploads three references, generates, clicks a reference point and sees its heatmap, sends the
result to Annotate, moves a point there, judges the rest with a button and accepts with the
Shift+A shortcut; then checks the review store. Screenshots go to test-artifacts/browser/.
Skips only when /usr/bin/chromium is absent (CI installs it: .ci/run).
"""

import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from studio_fixtures import ARTIFACTS, example_references, free_target_point

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.annotator.records import PointStatus, SampleStatus
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.studio.annotation import open_sample
from mosaic_studio.studio.app import build_demo
from mosaic_studio.studio.canvas import TARGET
from mosaic_studio.studio.local_server import launched

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# Records every progress-bar text while generating (the bar may be gone before we look).
WATCH_PROGRESS = """() => {
  window.progressSeen = [];
  new MutationObserver(() => document.querySelectorAll(".progress-level-inner")
      .forEach((e) => window.progressSeen.push(e.textContent)))
      .observe(document.body, {subtree: true, childList: true, characterData: true});
}"""
TIMEOUT_MS = 60_000  # generous for a 2-core CI machine; a step normally takes a second or two

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium (apt-get install chromium)"
)
if CHROMIUM.exists():  # with chromium present a missing playwright package is an error, not a skip
    from playwright import sync_api


@contextmanager
def app_page(demo):
    """`demo` served on a free local port and open in headless chromium: the page, closed after."""
    sync_api.expect.set_options(timeout=TIMEOUT_MS)
    with launched(demo) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        yield page
        browser.close()


def _image_point(img, x: float, y: float) -> tuple[float, float]:
    """Viewport position of natural pixel (x, y) of `img`, as Gradio maps clicks back
    (object-fit: contain, never scaled up)."""
    box = img.bounding_box()
    natural = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    scale = min(box["width"] / natural[0], box["height"] / natural[1], 1.0)
    left = box["x"] + (box["width"] - natural[0] * scale) / 2
    top = box["y"] + (box["height"] - natural[1] * scale) / 2
    return left + x * scale, top + y * scale


def click_image_pixel(page, selector: str, x: float, y: float) -> None:
    """Click natural pixel (x, y) of the <img> in `selector`, first scrolling it into the middle
    of the window: a mouse click outside the viewport reaches nothing."""
    img = page.locator(f"{selector} img").first
    _, top = _image_point(img, x, y)
    # instant: a smooth scroll would still be moving when the position is read back
    page.evaluate(
        "offset => window.scrollBy({top: offset, behavior: 'instant'})", top - page.viewport_size["height"] / 2
    )
    page.mouse.click(*_image_point(img, x, y))


def test_generate_inspect_annotate_in_chromium(tmp_path):
    shots = ARTIFACTS / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    store_path = tmp_path / "store.db"
    demo = build_demo(load_pipeline(DEFAULT_MODEL_DIR, device="cpu"), store=store_path, outputs_dir=tmp_path / "out")
    expect = sync_api.expect
    with app_page(demo) as page:
        # Generate: upload three references, a prompt, few steps
        page.locator("#references input[type=file]").set_input_files(example_references(3))
        expect(page.locator("#reference-preview img")).to_have_count(3)
        page.locator("#prompt textarea").fill(
            "a blue person, a brown quadruped and a yellow bird on a plain background"
        )
        page.locator("#steps input[type=number]").fill("4")
        page.evaluate(WATCH_PROGRESS)
        page.locator("#generate").click()
        expect(page.locator("#gallery img").first).to_be_visible()
        assert any("denoising step" in text for text in page.evaluate("window.progressSeen")), "no progress bar"
        page.screenshot(path=str(shots / "1-generate.png"), full_page=True)

        # Attention: click the middle of reference 2 on the strip → its heatmap
        page.get_by_role("tab", name="Attention").click()
        expect(page.locator("#reference-strip img")).to_be_visible()
        strip = page.locator("#reference-strip img")
        natural = strip.evaluate("e => [e.naturalWidth, e.naturalHeight]")
        started = time.perf_counter()
        click_image_pixel(page, "#reference-strip", natural[0] / 2, natural[1] * 0.65)
        expect(page.locator("#heatmap img")).to_be_visible()
        expect(page.locator("#heatmap-caption")).to_contain_text("Reference 2")
        (shots / "heatmap-latency.txt").write_text(f"click → heatmap shown: {time.perf_counter() - started:.3f} s\n")
        page.screenshot(path=str(shots / "2-attention.png"), full_page=True)

        # Send to Annotate, then move pair 1's target (selected on opening)
        page.locator("#send-to-annotate").click()
        expect(page.locator("#review-canvas img")).to_be_visible()
        expect(page.locator("#ann-info")).to_contain_text("Pair 1")
        sample_id = page.locator("#ann-info strong").first.inner_text()
        page.locator("#annotator textarea").fill("browser")
        opened = open_sample(store_path, sample_id)  # a click near a drawn point would select its pair
        spot = free_target_point(opened.layout, opened.draft.visible())
        click_image_pixel(page, "#review-canvas", *opened.layout.panel(TARGET).to_canvas(spot))
        expect(page.locator("#ann-info")).to_contain_text("1 moved")
        page.locator("#ann-all-correct").click()
        expect(page.locator("#ann-info")).to_contain_text("0 to judge")
        page.screenshot(path=str(shots / "3-annotate.png"), full_page=True)
        page.locator("body").click(position={"x": 5, "y": 5})  # focus outside text fields: shortcuts apply
        page.keyboard.press("Shift+A")  # accept
        expect(page.locator("#ann-progress")).to_contain_text("1 reviewed by browser")
        page.screenshot(path=str(shots / "4-accepted.png"), full_page=True)

    with ReviewStore(store_path) as store:
        sample = store.get_sample(sample_id)
    assert sample.status == SampleStatus.ACCEPTED
    moved = [p for p in sample.points if p.status == PointStatus.MOVED]
    assert len(moved) == 1 and moved[0].target_xy == pytest.approx(spot, abs=1.5)
