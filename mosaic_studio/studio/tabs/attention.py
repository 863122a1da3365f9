"""The Attention tab: click a reference point → that token's attention over the generated
image, with its colour bar; block range, step range (any range of the recorded step bins,
chosen after generating), image, colormap and opacity controls; the per-reference overview;
and "send to Annotate". Everything reads the maps recorded during generation (`Generation`)."""

from __future__ import annotations

import functools
from types import SimpleNamespace
from typing import NamedTuple

import gradio as gr
from PIL import Image

from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.mosaic.record import DEFAULT_BINS
from mosaic_studio.studio.access import DIRECT, Access
from mosaic_studio.studio.annotation import Opened
from mosaic_studio.studio.heatmap import CMAPS, DEFAULT_CMAP
from mosaic_studio.studio.inspector import (
    CLICK_PROMPT,
    NO_GENERATION,
    Clicked,
    bin_range,
    blocks_text,
    clicked_on_strip,
    clicked_reference_pixel,
    colour_bar_view,
    heatmap_view,
    image_index,
    need,
    overview_view,
    step_choices,
    strip,
)
from mosaic_studio.studio.proposals import POINTS_PER_REFERENCE, review_item
from mosaic_studio.studio.store_files import store_folder
from mosaic_studio.studio.tabs import annotate
from mosaic_studio.studio.tabs.views import components, user_error

STEPS_HELP = (  # docs/DESIGN.md §8
    f"The maps were recorded per step bin: the recorded denoising steps cut into at most {DEFAULT_BINS} "
    "bins of equal width, each the mean over its steps. From / To step pick any range of bins; their maps "
    "are averaged weighted by their step counts, which is exactly the average over those steps. "
    "Memory: per recorded block and bin, reference tokens × target tokens × 4 bytes (FLUX.1-dev at "
    "512 px with 4 references: 4·1024 × 1024 × 4 B = 16 MiB)."
)


class ResetView(NamedTuple):
    """The whole tab, reset for a fresh generation."""

    clicked: Clicked | None  # gr.State
    strip: Image.Image | None
    status: str
    image_number: dict  # gr.update of the dropdowns' choices and value
    first: dict
    last: dict
    first_step: dict
    last_step: dict
    heatmap: Image.Image | None
    colour_bar: str
    overview: Image.Image | None
    overview_caption: str
    caption: str


class HeatmapView(NamedTuple):
    """A click on a reference. The /heatmap API returns these fields but `clicked` (a gr.State)."""

    clicked: Clicked  # gr.State
    strip: Image.Image
    heatmap: Image.Image | None
    caption: str


class ClickView(NamedTuple):
    """A click on the strip: a HeatmapView and the heatmap's colour bar."""

    clicked: Clicked  # gr.State
    strip: Image.Image
    heatmap: Image.Image | None
    colour_bar: str
    caption: str


class RedrawView(NamedTuple):
    """A changed image, block range, step range, colormap or opacity."""

    heatmap: Image.Image | None
    colour_bar: str
    caption: str
    overview: Image.Image
    overview_caption: str
    status: str


class SendView(NamedTuple):
    """ "Send to Annotate": the Annotate tab's opened sample (annotate.OpenedView's fields), then the
    selected tab. The /send_to_annotate API returns these fields but `opened` (a gr.State)."""

    opened: Opened  # gr.State
    canvas: Image.Image
    info: str
    queue: dict
    progress: str
    tabs: dict


def _visible(handler):
    """Run a handler; a ValueError becomes a gr.Error the user sees (the app keeps serving).
    functools.wraps keeps the signature Gradio reads (for gr.SelectData)."""

    @functools.wraps(handler)
    def run(*args):
        try:
            return handler(*args)
        except ValueError as error:
            raise user_error(error) from error

    return run


def on_new_generation(generation, opacity):
    """Reset the tab for a fresh generation."""
    if generation is None or generation.record is None:
        empty = gr.update(choices=[], value=None)
        return ResetView(
            clicked=None,
            strip=None,
            status=NO_GENERATION,
            image_number=gr.update(choices=[1], value=1),
            first=empty,
            last=empty,
            first_step=empty,
            last_step=empty,
            heatmap=None,
            colour_bar="",
            overview=None,
            overview_caption="",
            caption="",
        )
    blocks = [(name, i) for i, name in enumerate(generation.blocks)]
    last = len(blocks) - 1
    firsts, lasts = step_choices(generation)
    over, over_text = overview_view(generation, 1, 0, last, opacity)
    return ResetView(
        clicked=None,
        strip=strip(generation)[0],
        status=blocks_text(generation, 0, last),
        image_number=gr.update(choices=list(range(1, len(generation.images) + 1)), value=1),
        first=gr.update(choices=blocks, value=0),
        last=gr.update(choices=blocks, value=last),
        first_step=gr.update(choices=firsts, value=0),
        last_step=gr.update(choices=lasts, value=len(lasts) - 1),
        heatmap=None,
        colour_bar="",
        overview=over,
        overview_caption=over_text,
        caption=CLICK_PROMPT,
    )


def show(generation, clicked, image_number, first, last, cmap, opacity, first_step=None, last_step=None):
    picture, caption = heatmap_view(
        generation, clicked, image_number, first, last, cmap, opacity, first_step, last_step
    )
    return HeatmapView(clicked=clicked, strip=strip(generation, clicked)[0], heatmap=picture, caption=caption)


def on_reference_pixel(
    generation, reference, x, y, image_number, first, last, cmap, opacity, first_step=None, last_step=None
):
    """API: the heatmap of reference `reference` (1-based) at its pixel (x, y). The step bins'
    defaults (None: every recorded step) make them optional for API clients too: Gradio reads
    a parameter's default from this signature."""
    generation = need(generation)
    clicked = clicked_reference_pixel(generation, reference, x, y)
    return show(generation, clicked, image_number, first, last, cmap, opacity, first_step, last_step)


def on_strip_click(generation, clicked, image_number, first, last, cmap, opacity, first_step=None, last_step=None):
    """A click on the strip: the heatmap and its colour bar."""
    shown = show(generation, clicked, image_number, first, last, cmap, opacity, first_step, last_step)
    bar = colour_bar_view(generation, clicked, image_number, first, last, cmap, first_step, last_step)
    return ClickView(
        clicked=shown.clicked, strip=shown.strip, heatmap=shown.heatmap, colour_bar=bar, caption=shown.caption
    )


def redraw(generation, clicked, image_number, first, last, cmap, opacity, first_step=None, last_step=None):
    generation = need(generation)
    steps = (first_step, last_step)
    picture, caption = heatmap_view(generation, clicked, image_number, first, last, cmap, opacity, *steps)
    over, over_text = overview_view(generation, image_number, first, last, opacity, *steps)
    return RedrawView(
        heatmap=picture,
        colour_bar=colour_bar_view(generation, clicked, image_number, first, last, cmap, *steps),
        caption=caption,
        overview=over,
        overview_caption=over_text,
        status=blocks_text(generation, first, last, *steps),
    )


def make_send_handler(store_path, access: Access = DIRECT):
    """ "Send to Annotate": store the selected image with attention-proposed points, open it."""

    def on_send(
        generation,
        image_number,
        first,
        last,
        per_reference,
        annotator,
        first_step=None,
        last_step=None,
        request: gr.Request = None,
    ):
        actor = access.creator(annotator, request)  # before any file is written for the sample
        generation = need(generation)
        image = image_index(generation, image_number)
        # the maps on screen: the chosen blocks and step bins (None: every recorded step)
        maps = generation.record.maps(generation.block_range(first, last), bin_range(generation, first_step, last_step))
        sample = review_item(generation, image, maps, store_folder(store_path), int(per_reference))
        with ReviewStore(store_path) as store:
            store.add_sample(sample, actor=actor)
        view = annotate.open_view(store_path, sample_id=sample.sample_id, annotator=annotator)
        gr.Info(f"{sample.sample_id}: {len(sample.points)} proposed points sent to Annotate")
        return SendView(**view._asdict(), tabs=gr.update(selected="annotate"))

    return _visible(on_send)


def build() -> SimpleNamespace:
    ui = SimpleNamespace()
    ui.clicked = gr.State(None)  # (reference, x, y) of the last click
    ui.status = gr.Markdown(NO_GENERATION, elem_id="attention-status")
    with gr.Row():
        with gr.Column(scale=1):
            ui.strip = gr.Image(
                label="References: click any point",
                interactive=False,
                type="pil",
                elem_id="reference-strip",
                buttons=[],
            )
            with gr.Row():
                ui.image_number = gr.Dropdown([1], value=1, label="Generated image", allow_custom_value=True)
                ui.cmap = gr.Dropdown(list(CMAPS), value=DEFAULT_CMAP, label="Colormap")
                ui.opacity = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Opacity")
            with gr.Row():
                # allow_custom_value: the choices arrive with each generation, and API callers pass indices
                ui.first = gr.Dropdown(
                    [], label="First block (model order: double, then single blocks)", allow_custom_value=True
                )
                ui.last = gr.Dropdown([], label="Last block", allow_custom_value=True)
            with gr.Row():
                # values are bin indices; None (an API call that leaves them out) means every recorded step
                ui.first_step = gr.Dropdown([], label="From step", allow_custom_value=True, elem_id="first-step")
                ui.last_step = gr.Dropdown([], label="To step", allow_custom_value=True, elem_id="last-step")
            gr.Markdown(STEPS_HELP, elem_id="steps-help")
        with gr.Column(scale=1):
            ui.heatmap = gr.Image(
                label="Attention of the clicked token over the generated image (ring: peak)",
                interactive=False,
                elem_id="heatmap",
                buttons=["download"],
            )
            ui.colour_bar = gr.HTML(elem_id="colour-bar")
            ui.caption = gr.Markdown(elem_id="heatmap-caption")
    with gr.Row():
        with gr.Column(scale=1):
            ui.overview = gr.Image(label="Per-reference overview", interactive=False, elem_id="overview")
        with gr.Column(scale=1):
            ui.overview_caption = gr.Markdown()
            ui.per_reference = gr.Slider(1, 20, value=POINTS_PER_REFERENCE, step=1, label="Points per reference")
            ui.send = gr.Button("Send to Annotate", elem_id="send-to-annotate")
            gr.Markdown(
                "Creates a review item from the selected generated image: for each reference, points "
                "inside its subject paired with where their attention peaks."
            )
    with gr.Row(visible=False):  # API-only inputs: a heatmap by reference pixel, for scripts and tests
        ui.api_reference, ui.api_x, ui.api_y = gr.Number(1), gr.Number(0), gr.Number(0)
        ui.api_run = gr.Button()
    return ui


def wire(
    ui: SimpleNamespace, *, generation: gr.State, generated, store_path, annotate_ui, tabs, access: Access = DIRECT
) -> None:
    # the step range last: API callers of /heatmap may leave it out (every recorded step)
    view = [ui.image_number, ui.first, ui.last, ui.cmap, ui.opacity, ui.first_step, ui.last_step]
    shown = components(HeatmapView, ui)
    generated.then(
        _visible(on_new_generation), [generation, ui.opacity], components(ResetView, ui), api_visibility="private"
    )

    def on_select(generation, image_number, first, last, cmap, opacity, first_step, last_step, evt: gr.SelectData):
        generation = need(generation)
        clicked = clicked_on_strip(generation, *evt.index)
        return on_strip_click(generation, clicked, image_number, first, last, cmap, opacity, first_step, last_step)

    ui.strip.select(
        _visible(on_select),
        [generation, *view],
        components(ClickView, ui),
        api_visibility="private",
        show_progress="hidden",
    )
    ui.api_run.click(
        _visible(on_reference_pixel),
        [generation, ui.api_reference, ui.api_x, ui.api_y, *view],
        shown,
        api_name="heatmap",
    )
    outputs = components(RedrawView, ui)
    triggers = (ui.image_number.input, ui.first.input, ui.last.input, ui.first_step.input, ui.last_step.input)
    for trigger in (*triggers, ui.opacity.release, ui.cmap.input):
        trigger(
            _visible(redraw), [generation, ui.clicked, *view], outputs, api_visibility="private", show_progress="hidden"
        )
    ui.send.click(
        make_send_handler(store_path, access),
        [
            generation,
            ui.image_number,
            ui.first,
            ui.last,
            ui.per_reference,
            annotate_ui.annotator,
            ui.first_step,
            ui.last_step,
        ],
        components(SendView, annotate_ui, tabs=tabs),
        api_name="send_to_annotate",
    )
