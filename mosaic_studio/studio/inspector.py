"""The Attention inspector's logic, without Gradio: which reference pixel a click on the strip
means, that token's heatmap over a generated image, the per-reference overview, and the text
around them. Every function reads the maps recorded during generation; ValueError names a
request that cannot be answered."""

from __future__ import annotations

import numpy as np
from PIL import Image

from mosaic_studio.mosaic.images import BBOX_TOLERANCE
from mosaic_studio.studio.canvas import REFERENCE, Layout, compose, strip_layout
from mosaic_studio.studio.heatmap import colour_bar_html, heatmap_overlay, mark, overlap, overview_overlay, times
from mosaic_studio.studio.session import Generation

NO_GENERATION = "Generate with at least one reference first: the maps are recorded while generating."
CLICK_PROMPT = "Click a point on a reference."
# A reference token is background when every pixel of its patch in the preprocessed reference is
# this close to white in every channel: the white padding of the official preprocessing, or a
# white backdrop around the subject (the same tolerance as the tolerant crop, images.TOLERANT_CROP).
BACKGROUND_TOLERANCE = BBOX_TOLERANCE
OUTSIDE_SUBJECT = (
    "**Outside the subject:** this point lies on the white background or padding of the reference "
    "(the reference is cropped to its subject and padded with white; every pixel of this token is "
    "near-white), so its map shows where blank background attends, not the subject."
)
Clicked = tuple[int, float, float]  # (reference index, x, y in its pixels)


def need(generation: Generation | None) -> Generation:
    if generation is None or generation.record is None:
        raise ValueError(NO_GENERATION)
    return generation


def image_index(generation: Generation, image_number) -> int:
    """0-based index of the 1-based `image_number`, checked."""
    try:
        index = int(image_number) - 1
    except (TypeError, ValueError):
        raise ValueError(f"generated image must be a number, got {image_number!r}") from None
    if not 0 <= index < len(generation.images):
        raise ValueError(f"there is no generated image {index + 1}; this generation has {len(generation.images)}")
    return index


def strip(generation: Generation, clicked: Clicked | None = None) -> tuple[Image.Image, Layout]:
    """The references side by side (with the clicked point marked) and their layout."""
    layout = strip_layout([image.size for image in generation.reference_images])
    picture = compose(layout, {(REFERENCE, i): image for i, image in enumerate(generation.reference_images)})
    if clicked is not None:
        reference, x, y = clicked
        picture = mark(picture, layout.panel(REFERENCE, reference).to_canvas((x, y)))
    return picture, layout


def clicked_on_strip(generation: Generation, x: float, y: float) -> Clicked:
    hit = strip(generation)[1].locate(float(x), float(y))
    if hit is None:
        raise ValueError("that click fell between references; click on a reference")
    panel, (ix, iy) = hit
    return (panel.index, ix, iy)


def clicked_reference_pixel(generation: Generation, reference_number, x, y) -> Clicked:
    k = int(reference_number) - 1
    if not 0 <= k < len(generation.reference_images):
        raise ValueError(f"there is no reference {k + 1}; this generation has {len(generation.reference_images)}")
    width, height = generation.reference_images[k].size
    if not (0 <= float(x) < width and 0 <= float(y) < height):
        raise ValueError(f"pixel ({x}, {y}) is outside reference {k + 1} ({width}×{height})")
    return (k, float(x), float(y))


def bin_range(generation: Generation, first_step=None, last_step=None) -> tuple[int, int]:
    """Recorded step bins first..last (0-based, inclusive, either order); None is the first or
    the last bin, so a caller that names no range gets every recorded step."""
    record = need(generation).record
    last_bin = record.num_bins - 1
    chosen = []
    for value, default, what in ((first_step, 0, "first step bin"), (last_step, last_bin, "last step bin")):
        try:
            index = default if value is None else int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be a bin index, got {value!r}") from None
        if not 0 <= index <= last_bin:
            raise ValueError(f"{what} {index} was not recorded; recorded bins: 0–{last_bin}")
        chosen.append(index)
    return tuple(sorted(chosen))


def steps_label(generation: Generation, bins: tuple[int, int]) -> str:
    """'steps 3–7' (1-based, inclusive) for the denoising steps of `bins`."""
    start, end = generation.record.bin_steps(bins)
    return f"step {end}" if end - start == 1 else f"steps {start + 1}–{end}"


def step_choices(generation: Generation) -> tuple[list, list]:
    """The From/To dropdowns' (label, bin) choices: each bin's first step, each bin's last step."""
    edges = generation.record.bin_edges
    firsts = [(f"step {edges[b] + 1}", b) for b in range(len(edges) - 1)]
    lasts = [(f"step {edges[b + 1]}", b) for b in range(len(edges) - 1)]
    return firsts, lasts


def on_background(generation: Generation, reference: int, x: float, y: float) -> bool:
    """Whether reference pixel (x, y) falls on a background token: every pixel of that token's
    patch in the preprocessed reference is within BACKGROUND_TOLERANCE of white."""
    size = generation.record.pixels_per_token
    left, top = int(x // size) * size, int(y // size) * size
    patch = np.asarray(generation.reference_images[reference].convert("RGB"))[top : top + size, left : left + size]
    return bool(patch.size) and int(patch.min()) >= 255 - BACKGROUND_TOLERANCE


def attention_row(generation: Generation, clicked: Clicked, image: int, blocks, bins) -> np.ndarray:
    """(rows, cols): the clicked token's attention over the target tokens (a distribution: sums to 1)."""
    reference, x, y = clicked
    return generation.record.heatmap(reference, x, y, image, blocks, bins).numpy()


def as_multiples(row: np.ndarray) -> np.ndarray:
    """Attention as multiples of uniform: 1 = 1/N_tgt, the share of each token if spread evenly."""
    return row * row.size


def heatmap_caption(
    *,
    reference: int,
    xy: tuple[float, float],
    token: int,
    reference_grid: tuple[int, int],
    peak: int,
    target_grid: tuple[int, int],
    target_size: tuple[int, int],
    peak_attention: float,
    background: bool,
) -> str:
    """The words under the heatmap. Pixels are (x, y) from the top-left, tokens (row, col); each
    is labelled where it appears. peak_attention: the peak token's share of the attention."""
    rows, cols = target_grid
    even = 1 / (rows * cols)
    ref_cols = reference_grid[1]
    x, y = xy
    peak_x, peak_y = ((peak % cols + 0.5) * target_size[0] / cols, (peak // cols + 0.5) * target_size[1] / rows)
    lines = [
        f"Reference {reference + 1}, pixel ({x:.0f}, {y:.0f}) as (x, y) from the top-left = token {token} at "
        f"(row {token // ref_cols}, col {token % ref_cols}) of its {reference_grid[0]}×{ref_cols} token grid.",
        f"Peak (ring): target token (row {peak // cols}, col {peak % cols}) of {rows}×{cols}, around pixel "
        f"({peak_x:.0f}, {peak_y:.0f}) as (x, y) of the generated image. It gets **{times(peak_attention / even)}** "
        "the attention it would get if attention were spread evenly over the image "
        f"(attention {peak_attention:.4f} of the total; spread evenly: {even:.4f} per token).",
    ]
    if background:
        lines.append(OUTSIDE_SUBJECT)
    return "\n\n".join(lines)


def heatmap_view(
    generation: Generation,
    clicked: Clicked | None,
    image_number,
    first,
    last,
    cmap,
    opacity,
    first_step=None,
    last_step=None,
):
    """(picture, caption): the clicked reference token's attention over the generated image,
    averaged over blocks first..last and step bins first_step..last_step (None: all)."""
    if clicked is None:
        return None, CLICK_PROMPT
    reference, x, y = clicked
    record, image = generation.record, image_index(generation, image_number)
    bins = bin_range(generation, first_step, last_step)
    row = attention_row(generation, clicked, image, generation.block_range(first, last), bins)
    picture, argmax = heatmap_overlay(generation.images[image], as_multiples(row), cmap, float(opacity))
    caption = heatmap_caption(
        reference=reference,
        xy=(x, y),
        token=record.reference_token(x, y),
        reference_grid=record.reference_grid,
        peak=argmax,
        target_grid=record.target_grid,
        target_size=generation.images[image].size,
        peak_attention=float(row.max()),
        background=on_background(generation, reference, x, y),
    )
    return picture, caption


def colour_bar_view(
    generation: Generation, clicked: Clicked | None, image_number, first, last, cmap, first_step=None, last_step=None
) -> str:
    """The colour bar under the heatmap (HTML; empty before a click)."""
    if clicked is None:
        return ""
    image = image_index(generation, image_number)
    bins = bin_range(generation, first_step, last_step)
    multiples = as_multiples(attention_row(generation, clicked, image, generation.block_range(first, last), bins))
    return colour_bar_html(cmap, float(multiples.min()), float(multiples.max()))


def overview_view(generation: Generation, image_number, first, last, opacity, first_step=None, last_step=None):
    """(picture, caption): each reference's mean attention in its own colour on one image."""
    image = image_index(generation, image_number)
    bins = bin_range(generation, first_step, last_step)
    maps = generation.record.overview(image, generation.block_range(first, last), bins)  # (K, rows, cols)
    labels = [f"{k + 1}: {name}" for k, name in enumerate(generation.settings.get("references", []))]
    picture = overview_overlay(generation.images[image], maps.numpy(), float(opacity), labels or None)
    if len(maps) < 2:
        return picture, "One reference: nothing to disentangle."
    return picture, (
        f"Mean pairwise overlap of the references' attention: **{overlap(maps.numpy()):.2f}** "
        "(0 = disjoint regions, 1 = identical). Each pixel takes the colour of the reference that "
        "attends to it most, stronger where that attention is higher."
    )


def blocks_text(generation: Generation, first, last, first_step=None, last_step=None) -> str:
    names = generation.block_range(first, last)
    record = generation.record
    bins = bin_range(generation, first_step, last_step)
    start, end = record.steps
    return (
        f"Blocks **{names[0]}** … **{names[-1]}** ({len(names)} of {len(generation.blocks)} recorded) · averaged "
        f"over denoising **{steps_label(generation, bins)}** of {generation.settings['steps']} (recorded: steps "
        f"{start + 1}–{end} in {record.num_bins} bins; choose any range with From / To step)"
    )
