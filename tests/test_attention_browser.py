"""The Attention tab in a real browser (Debian's chromium, headless, via Playwright): the colour
bar with its words, the caption's labelled coordinates and plain-language attention, a step
range chosen after generating, and the note for a click on the white padding. Screenshots go to
test-artifacts/browser/. Skips only when /usr/bin/chromium is absent (CI installs it)."""

import numpy as np
import pytest
from studio_fixtures import ARTIFACTS, example_references
from test_app_browser import CHROMIUM, app_page, click_image_pixel

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.images import load_image, preprocess_reference
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.studio.app import build_demo
from mosaic_studio.studio.canvas import REFERENCE, strip_layout
from mosaic_studio.studio.inspector import BACKGROUND_TOLERANCE
from mosaic_studio.studio.metadata import read_settings

STEPS = 6  # fewer than the 10 bins: one step per bin
SIDE = 128

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium (apt-get install chromium)"
)
if CHROMIUM.exists():  # with chromium present a missing playwright package is an error, not a skip
    from playwright import sync_api


def token_points(reference: np.ndarray, token: int, background: bool) -> list[tuple[float, float]]:
    """Centres of the tokens of a preprocessed reference that are (or are not) background by the
    inspector's rule, written out here: every pixel of the token within the tolerance of white."""
    points = []
    for top in range(0, reference.shape[0], token):
        for left in range(0, reference.shape[1], token):
            white = reference[top : top + token, left : left + token].min() >= 255 - BACKGROUND_TOLERANCE
            if white == background:
                points.append((left + token / 2, top + token / 2))
    return points


def choose(page, dropdown: str, label: str) -> None:
    """Pick `label` in the Gradio dropdown `dropdown` (a CSS selector of its block). The option is
    looked up inside that block: both step dropdowns list the same labels, and the list of the one
    chosen before may still be in the page while it closes."""
    page.locator(f"{dropdown} input").click()
    page.locator(dropdown).get_by_role("option", name=label, exact=True).click()


def test_colour_bar_captions_step_range_and_padding_note_in_chromium(tmp_path):
    shots = ARTIFACTS / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(DEFAULT_MODEL_DIR, device="cpu")
    files = example_references(3)
    demo = build_demo(pipe, store=tmp_path / "store.db", outputs_dir=tmp_path / "out")
    expect = sync_api.expect
    with app_page(demo) as page:
        page.locator("#references input[type=file]").set_input_files(files)
        expect(page.locator("#reference-preview img")).to_have_count(3)
        page.locator("#prompt textarea").fill("a person, a quadruped and a bird on a plain background")
        page.locator("#steps input[type=number]").fill(str(STEPS))
        for label in ("Width", "Height"):
            page.get_by_label(label, exact=True).fill(str(SIDE))
        page.locator("#generate").click()
        expect(page.locator("#gallery img").first).to_be_visible()
        # The reference size the app chose, from the PNG's settings: where its tokens lie
        served = tmp_path / "served.png"
        served.write_bytes(page.request.get(page.locator("#gallery img").first.get_attribute("src")).body())
        size = read_settings(served)["reference_size"]
        second = np.asarray(preprocess_reference(load_image(files[1]), size).convert("RGB"))
        padding = token_points(second, pipe.pixels_per_token, background=True)
        subject = token_points(second, pipe.pixels_per_token, background=False)
        assert padding and subject, "reference 2 needs both white padding and subject tokens"
        panel = strip_layout([(size, size)] * 3).panel(REFERENCE, 1)

        # A click on the subject: colour bar with its scale, labelled coordinates, words
        page.get_by_role("tab", name="Attention").click()
        expect(page.locator("#reference-strip img")).to_be_visible()
        expect(page.locator("#attention-status")).to_contain_text(f"steps 1–{STEPS} of {STEPS}")
        click_image_pixel(page, "#reference-strip", *panel.to_canvas(subject[len(subject) // 2]))
        caption, bar = page.locator("#heatmap-caption"), page.locator("#colour-bar")
        expect(caption).to_contain_text("Reference 2, pixel (")
        for words in ("as (x, y)", "(row ", ", col ", "the attention it would get if attention were spread evenly"):
            expect(caption).to_contain_text(words)
        expect(caption).not_to_contain_text("Outside the subject")
        for words in ("low: ", "high: ", "1× = spread evenly", "multiple of an even spread"):
            expect(bar).to_contain_text(words)
        gradient = bar.locator("div[style*=linear-gradient]")
        assert "linear-gradient" in gradient.evaluate("e => getComputedStyle(e).backgroundImage")
        assert gradient.bounding_box()["width"] > 100  # drawn, not stripped or collapsed
        page.screenshot(path=str(shots / "attention-colour-bar.png"), full_page=True)

        # The step range, after generating: steps 4–6 only
        before = page.locator("#heatmap img").get_attribute("src")
        choose(page, "#first-step", "step 4")
        expect(page.locator("#attention-status")).to_contain_text(f"steps 4–{STEPS} of {STEPS}")
        expect(page.locator("#heatmap img")).not_to_have_attribute("src", before)
        choose(page, "#last-step", "step 4")
        expect(page.locator("#attention-status")).to_contain_text(f"step 4 of {STEPS}")  # bold in the Markdown

        # A click on the white padding is said to lie outside the subject
        click_image_pixel(page, "#reference-strip", *panel.to_canvas(padding[0]))
        expect(caption).to_contain_text("Outside the subject")
        page.screenshot(path=str(shots / "attention-padding.png"), full_page=True)
