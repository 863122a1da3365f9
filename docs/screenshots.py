"""Screenshots of the app for the README: the served app with the embedded default model,
driven in Debian's chromium (headless, Playwright), saved as docs/app-<tab>.png.

    python docs/screenshots.py                      # generate, attention and annotate: the bundled
                                                    # 3-subject example at the model's native settings
    python docs/screenshots.py --tabs attention     # only docs/app-attention.png

Needs /usr/bin/chromium (apt-get install chromium) and the playwright package; a minute or two
on a CPU. The Attention shot clicks the middle of reference 2 and averages a later step range
(From step 3), so it shows the colour bar, the caption and the step-range controls. The
Annotate shot reviews one sent sample, judges two pairs of a second and opens the report.
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.studio.app import build_demo
from mosaic_studio.studio.examples import load_examples
from mosaic_studio.studio.local_server import launched

DOCS = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
VIEWPORT = {"width": 1400, "height": 1000}
TABS = ("generate", "attention", "annotate")
TIMEOUT_MS = 300_000  # a CPU generation on a busy machine


def click_image_pixel(page, selector: str, x: float, y: float) -> None:
    """Click natural pixel (x, y) of the <img> in `selector` (object-fit: contain, never scaled up)."""
    img = page.locator(f"{selector} img").first
    box = img.bounding_box()
    natural = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    scale = min(box["width"] / natural[0], box["height"] / natural[1], 1.0)
    left = box["x"] + (box["width"] - natural[0] * scale) / 2
    top = box["y"] + (box["height"] - natural[1] * scale) / 2
    page.mouse.click(left + x * scale, top + y * scale)


def choose(page, dropdown: str, label: str) -> None:
    page.locator(f"{dropdown} input").click()
    page.get_by_role("option", name=label, exact=True).click()


def generate(page, example, steps: int | None, side: int | None) -> None:
    """The bundled example's references, caption and seed; steps and side None: the controls as
    they open, at the model's native settings (what a newcomer's first click gets)."""
    page.locator("#references input[type=file]").set_input_files(list(example.references))
    expect(page.locator("#reference-preview img")).to_have_count(len(example.references))
    page.locator("#prompt textarea").fill(example.prompt)
    page.locator("#seed input").fill(str(example.seed))
    if steps is not None:
        page.locator("#steps input[type=number]").fill(str(steps))
    for label in ("Width", "Height") if side is not None else ():
        page.get_by_label(label, exact=True).fill(str(side))
    page.locator("#generate").click()
    expect(page.locator("#gallery img").first).to_be_visible()


def inspect_attention(page) -> None:
    page.get_by_role("tab", name="Attention").click()
    strip = page.locator("#reference-strip img")
    expect(strip).to_be_visible()
    choose(page, "#first-step", "step 3")
    expect(page.locator("#attention-status")).to_contain_text("steps 3–")
    width, height = strip.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    click_image_pixel(page, "#reference-strip", width / 2, height * 0.65)  # the middle of reference 2
    expect(page.locator("#colour-bar")).to_contain_text("spread evenly")
    heatmap = page.locator("#heatmap img")
    expect(heatmap).to_be_visible()
    page.wait_for_function(  # every picture decoded: the heatmap and the strip with its mark
        "() => [...document.querySelectorAll('#heatmap img, #reference-strip img')]"
        ".every((e) => e.complete && e.naturalWidth > 0)"
    )


def send_to_annotate(page) -> None:
    page.get_by_role("tab", name="Attention").click()
    page.locator("#send-to-annotate").click()
    expect(page.locator("#review-canvas img")).to_be_visible()


def annotate(page) -> None:
    """Review one sent sample (all correct, accepted), send another and judge its first two
    pairs (each verdict moves on), then open the report: before a stratified sample is drawn it
    covers all reviews, says so and offers the draw button."""
    send_to_annotate(page)
    info = page.locator("#ann-info")
    page.locator("#annotator textarea").fill("annotator")
    page.locator("#ann-all-correct").click()
    expect(info).to_contain_text("0 to judge")
    page.locator("#ann-accept").click()
    expect(page.locator("#ann-progress")).to_contain_text("1 reviewed by annotator")
    send_to_annotate(page)
    expect(info).to_contain_text("Pair 1")
    page.locator("#ann-correct").click()
    expect(info).to_contain_text("Pair 2")
    page.locator("#ann-wrong").click()
    expect(info).to_contain_text("Pair 3")
    page.get_by_text("Report: error rate per stratum").click()
    expect(page.locator("#ann-report")).to_contain_text("No stratified sample has been drawn yet")
    expect(page.locator("#ann-draw")).to_be_visible()
    expect(page.locator(".toast-body")).to_have_count(0)  # the info toasts gone: they cover the canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tabs", nargs="+", choices=TABS, default=list(TABS))
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's native ones)")
    parser.add_argument("--side", type=int, help="generated image side in pixels (default: the model's native one)")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()

    example = next(e for e in load_examples() if len(e.references) == 3)
    expect.set_options(timeout=TIMEOUT_MS)
    with tempfile.TemporaryDirectory() as folder:
        demo = build_demo(
            load_pipeline(DEFAULT_MODEL_DIR, device="cpu"),
            store=Path(folder) / "store.db",
            outputs_dir=Path(folder),
            admin=True,  # the Annotate shot shows the report's "Draw the stratified sample" button
        )
        with launched(demo) as url, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(url)
            # each tab's state follows from the one before: Annotate opens what Attention sends
            actions = {
                "generate": functools.partial(generate, example=example, steps=args.steps, side=args.side),
                "attention": inspect_attention,
                "annotate": annotate,
            }
            last = max(TABS.index(tab) for tab in args.tabs)
            for tab in TABS[: last + 1]:
                actions[tab](page)
                if tab in args.tabs:
                    path = args.out / f"app-{tab}.png"
                    page.screenshot(path=str(path), full_page=True)
                    print(f"wrote {path}")
            browser.close()


if __name__ == "__main__":
    main()
