"""The Attention inspector's logic, without Gradio: which reference pixel a click on the strip
means, that token's heatmap over a generated image, the per-reference overview, and the text
around them. Every function reads the maps recorded during generation; ValueError names a
request that cannot be answered."""

from __future__ import annotations

from PIL import Image

from mosaic_studio.studio.canvas import REFERENCE, Layout, compose, strip_layout
from mosaic_studio.studio.heatmap import heatmap_overlay, mark, overlap, overview_overlay
from mosaic_studio.studio.session import Generation

NO_GENERATION = "Generate with at least one reference first: the maps are recorded while generating."
CLICK_PROMPT = "Click a point on a reference."
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


def heatmap_view(generation: Generation, clicked: Clicked | None, image_number, first, last, cmap, opacity):
    """(picture, caption): the clicked reference token's attention over the generated image."""
    if clicked is None:
        return None, CLICK_PROMPT
    reference, x, y = clicked
    record, image = generation.record, image_index(generation, image_number)
    token = record.reference_token(x, y)
    row = record.heatmap(reference, x, y, image, generation.block_range(first, last))  # (rows, cols)
    picture, argmax = heatmap_overlay(generation.images[image], row.numpy(), cmap, float(opacity))
    rows, cols = record.target_grid
    caption = (
        f"Reference {reference + 1}, pixel ({x:.0f}, {y:.0f}) = token {token} of its {record.reference_grid[0]}×"
        f"{record.reference_grid[1]} grid · peak (ring) at target token ({argmax // cols}, {argmax % cols}) of "
        f"{rows}×{cols}, attention {float(row.max()):.4f} (uniform: {1 / (rows * cols):.4f})"
    )
    return picture, caption


def overview_view(generation: Generation, image_number, first, last, opacity):
    """(picture, caption): each reference's mean attention in its own colour on one image."""
    image = image_index(generation, image_number)
    maps = generation.record.overview(image, generation.block_range(first, last))  # (K, rows, cols)
    labels = [f"{k + 1}: {name}" for k, name in enumerate(generation.settings.get("references", []))]
    picture = overview_overlay(generation.images[image], maps.numpy(), float(opacity), labels or None)
    if len(maps) < 2:
        return picture, "One reference: nothing to disentangle."
    return picture, (
        f"Mean pairwise overlap of the references' attention: **{overlap(maps.numpy()):.2f}** "
        "(0 = disjoint regions, 1 = identical). Each pixel takes the colour of the reference that "
        "attends to it most, stronger where that attention is higher."
    )


def blocks_text(generation: Generation, first, last) -> str:
    names = generation.block_range(first, last)
    start, end = generation.settings["attention_first"], generation.settings["attention_last"]
    return (
        f"Blocks **{names[0]}** … **{names[-1]}** ({len(names)} of {len(generation.blocks)} recorded) · averaged "
        f"over denoising steps {start}–{end} of {generation.settings['steps']} (set before generating: "
        "Generate tab → Attention recording)"
    )
