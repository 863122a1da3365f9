"""The Generate tab in a real browser (Debian's chromium, headless, as tests/test_app_browser.py):
controls open at the model's settings, the size boxes snap and refuse when left, a refused
request is said once under the Generate button (no error badge on the Seed or any output, no
toast, no traceback on the server), and the reference preview shows every reference whole.
Screenshots go to test-artifacts/browser-generate/."""

import pytest
from studio_fixtures import ARTIFACTS, example_references
from test_app_browser import CHROMIUM, app_page

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.studio.app import build_demo
from mosaic_studio.world.shapes import KINDS

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium (apt-get install chromium)"
)
if CHROMIUM.exists():  # with chromium present a missing playwright package is an error, not a skip
    from playwright import sync_api

# gradio's error badge: the status tracker of an output whose event failed says "Error"
ERROR_BADGES = """() => [...document.querySelectorAll('[data-testid=status-tracker]')]
    .filter((e) => e.innerText.includes('Error')).length"""
# Per preview image: its natural and rendered size, and whether each corner and the centre of
# it is the topmost element there (nothing drawn over it, nothing clipped away by its box). The
# corners are taken just inside the thumbnail's rounded frame, which trims its very corners only.
WHOLE_IMAGES = """() => [...document.querySelectorAll('#reference-preview img')].map((img) => {
    img.scrollIntoView({block: 'center'});
    const frame = parseFloat(getComputedStyle(img.parentElement).borderBottomRightRadius) || 0;
    const r = img.getBoundingClientRect(), inset = frame + 2;
    const points = [[r.left + inset, r.top + inset], [r.right - inset, r.top + inset],
                    [r.left + inset, r.bottom - inset], [r.right - inset, r.bottom - inset],
                    [(r.left + r.right) / 2, (r.top + r.bottom) / 2]];
    // the block label ignores the pointer, so elementFromPoint sees through it: compare boxes
    const l = document.querySelector('#reference-preview label').getBoundingClientRect();
    const underLabel = l.bottom > r.top && l.top < r.bottom && l.right > r.left && l.left < r.right;
    return {natural: [img.naturalWidth, img.naturalHeight], shown: [r.width, r.height], underLabel,
            visible: points.map(([x, y]) => document.elementFromPoint(x, y) === img)};
})"""


def leave(page, selector: str) -> None:
    """Blur the box `selector` by clicking the prompt (what a user does when moving on)."""
    page.locator(f"{selector} input").blur()


def test_generate_tab_settings_sizes_errors_and_preview(tmp_path, capfd):
    shots = ARTIFACTS / "browser-generate"
    shots.mkdir(parents=True, exist_ok=True)
    demo = build_demo(load_pipeline(DEFAULT_MODEL_DIR, device="cpu"), store=tmp_path / "s.db", outputs_dir=tmp_path)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    expect = sync_api.expect
    with app_page(demo) as page:
        # The controls open at the embedded default's own settings; the tab says what it knows
        for selector, value in (("#width", "128"), ("#height", "128"), ("#reference-size", "64")):
            expect(page.locator(f"{selector} input")).to_have_value(value)
        expect(page.locator("#steps input[type=number]")).to_have_value("12")
        expect(page.locator("#guidance input[type=number]")).to_have_value("3.5")
        note = page.locator("#model-note")
        for kind in (kind for kinds in KINDS.values() for kind in kinds):
            expect(note).to_contain_text(kind)
        expect(note).to_contain_text("FLUX.1-dev")

        # Size boxes: checked when left
        page.locator("#width input").fill("250")
        leave(page, "#width")
        expect(page.locator("#width input")).to_have_value("248")
        expect(page.locator("#size-note")).to_contain_text("Width 250 px is not a whole number of 8 px tokens")
        page.locator("#height input").fill("2000")
        leave(page, "#height")
        expect(page.locator("#height input")).to_have_value("1536")
        expect(page.locator("#size-note")).to_contain_text("Height 2000 px refused: it must be 64–1536 px")
        page.screenshot(path=str(shots / "1-sizes.png"), full_page=True)
        for selector in ("#width", "#height"):
            page.locator(f"{selector} input").fill("128")
            leave(page, selector)
        expect(page.locator("#size-note")).to_have_text("")

        # A refused request: said once, under the button; the Seed and the other outputs untouched
        page.locator("#seed input").fill("5")
        capfd.readouterr()
        page.locator("#generate").click()
        status = page.locator("#generate-status")
        expect(status).to_contain_text("Not generated: the prompt is empty and there are no references")
        page.wait_for_timeout(1000)  # any badge or toast would have been drawn by now
        assert page.evaluate(ERROR_BADGES) == 0
        assert page.locator(".toast-body").count() == 0
        expect(page.locator("#seed input")).to_have_value("5")
        expect(page.locator("#gallery img")).to_have_count(0)
        page.screenshot(path=str(shots / "2-refused.png"), full_page=True)
        server = capfd.readouterr()
        assert "Traceback" not in server.out + server.err

        # The preview shows each reference whole, however many there are
        references = example_references(6)
        for shown, added in ((1, references[:1]), (3, references[1:3]), (6, references[3:])):
            page.locator("#references input[type=file]").set_input_files(added)
            expect(page.locator("#reference-preview img")).to_have_count(shown)
            page.wait_for_timeout(500)  # layout settles after the images load
            for image in page.evaluate(WHOLE_IMAGES):
                (nw, nh), (w, h) = image["natural"], image["shown"]
                assert all(image["visible"]) and not image["underLabel"], f"a {nw}×{nh} reference is cut: {image}"
                assert abs(w / h - nw / nh) < 0.02, f"shown {w:.0f}×{h:.0f}, natural {nw}×{nh}"
            page.locator("#reference-preview").screenshot(path=str(shots / f"3-preview-{shown}.png"))

        # The badge check above can fail: a refused preview (a gr.Error) draws one
        page.locator("#references button[aria-label='Clear']").first.click()
        page.locator("#references input[type=file]").set_input_files([str(bad)])
        expect(page.locator(".toast-body")).to_have_count(1)
        # the badge is drawn a moment after the toast: wait for it rather than look once
        page.wait_for_function(f"({ERROR_BADGES})() >= 1", timeout=5000)
