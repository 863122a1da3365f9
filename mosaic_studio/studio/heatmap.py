"""Attention as pictures: one reference token's map over the generated image, and the
per-reference overview (each reference's aggregate attention in its own colour).

Maps arrive on the target token grid (rows, cols); they are upsampled bilinearly to the image,
normalised to [0, 1] by the grid's own minimum and maximum (so the colour bar's ends are the
map's lowest and highest token) and coloured with a matplotlib colormap. The colour bar speaks
in multiples of uniform attention: a row of Eq. 8 sums to 1 over the N_tgt target tokens, so
1/N_tgt per token is attention spread evenly, "1×".
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

CMAPS = ("inferno", "magma", "viridis", "plasma", "turbo", "jet", "hot")
DEFAULT_CMAP = "inferno"
REFERENCE_PALETTE = "tab10"  # distinct colours for up to 10 references
MARK_RADIUS = 7  # pixels: the argmax and clicked-point markers
MARK_HALO = 2  # pixels of white halo outside the ring
BAR_STOPS = 11  # colours sampled along the colour bar's gradient
LEGEND_HEIGHT = 22


def reference_colours(count: int) -> list[tuple[int, int, int]]:
    palette = colormaps[REFERENCE_PALETTE]
    return [tuple(int(255 * c) for c in palette(i % palette.N)[:3]) for i in range(count)]


def normalise(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """(values − low) / (high − low) clipped to [0, 1], low and high defaulting to the values'
    minimum and maximum; a constant map becomes zeros."""
    values = np.asarray(values, dtype=np.float32)
    low = float(values.min()) if low is None else float(low)
    high = float(values.max()) if high is None else float(high)
    if high - low <= 0:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def upsample(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(rows, cols) → (height, width) for size = (width, height), bilinear."""
    image = Image.fromarray(np.asarray(grid, dtype=np.float32), mode="F")
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR))


def colorize(values: np.ndarray, cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """(H, W) in [0, 1] → (H, W, 3) uint8 through a matplotlib colormap."""
    if cmap not in colormaps:
        raise ValueError(f"unknown colormap {cmap!r}; try one of {CMAPS}")
    return (colormaps[cmap](values)[..., :3] * 255).astype(np.uint8)


def blend(image: Image.Image, colour: np.ndarray, alpha: np.ndarray | float) -> Image.Image:
    """image·(1 − alpha) + colour·alpha, alpha a scalar or (H, W) in [0, 1]."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    alpha = np.asarray(alpha, dtype=np.float32)
    alpha = alpha[..., None] if alpha.ndim == 2 else alpha
    return Image.fromarray((base * (1 - alpha) + colour.astype(np.float32) * alpha).round().astype(np.uint8))


def ring_centre(xy: tuple[float, float], size: tuple[int, int], radius: int = MARK_RADIUS) -> tuple[float, float]:
    """Where to centre a ring of `radius` (plus its halo) for point `xy` so that it lies wholly
    inside an image of `size` (w, h): `xy` itself, moved inwards only as far as an edge needs
    (at most radius + halo pixels, so the point stays within the halo; a token centre, 8 pixels
    from the edge, moves two pixels at most). Centred on an image too small for the ring."""
    reach = radius + MARK_HALO

    def clamp(value: float, side: int) -> float:
        low, high = reach, side - 1 - reach
        return (side - 1) / 2 if low > high else min(max(float(value), low), high)

    return (clamp(xy[0], size[0]), clamp(xy[1], size[1]))


def mark(image: Image.Image, xy: tuple[float, float], colour=(0, 255, 255), radius: int = MARK_RADIUS) -> Image.Image:
    """A ring with a white halo, kept inside the image (`ring_centre`), and a cross at exactly
    `xy` (pixels), on a copy."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    x, y = xy  # the cross marks the point itself, even where the ring had to move; drawn first,
    # so a moved ring stays whole on top of it
    draw.line((x - radius, y, x + radius, y), fill=colour, width=1)
    draw.line((x, y - radius, x, y + radius), fill=colour, width=1)
    cx, cy = ring_centre(xy, image.size, radius)
    reach = radius + MARK_HALO
    draw.ellipse((cx - reach, cy - reach, cx + reach, cy + reach), outline=(255, 255, 255), width=MARK_HALO)
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=colour, width=2)
    return image


def token_centre(index: int, grid: tuple[int, int], image_size: tuple[int, int]) -> tuple[float, float]:
    """Pixel centre of target token `index` (row-major) in an image of `image_size` (w, h)."""
    rows, cols = grid
    row, col = divmod(int(index), cols)
    return ((col + 0.5) * image_size[0] / cols, (row + 0.5) * image_size[1] / rows)


def heatmap_overlay(
    image: Image.Image, grid: np.ndarray, cmap: str = DEFAULT_CMAP, opacity: float = 0.6
) -> tuple[Image.Image, int]:
    """`image` with the (rows, cols) map coloured over it, its argmax marked. Colours run from
    the grid's lowest token (colormap 0) to its highest (colormap 1), as on `colour_bar_html`.
    Returns the picture and the argmax token index."""
    grid = np.asarray(grid, dtype=np.float32)
    heat = colorize(normalise(upsample(grid, image.size), float(grid.min()), float(grid.max())), cmap)
    argmax = int(grid.argmax())
    picture = blend(image, heat, float(np.clip(opacity, 0.0, 1.0)))
    return mark(picture, token_centre(argmax, grid.shape, image.size)), argmax


def overlap(maps: np.ndarray) -> float:
    """Mean pairwise histogram intersection Σ_v min(a_i(v), a_j(v)) of the K maps, each
    normalised to sum 1: 0 = disjoint regions (disentangled), 1 = identical. NaN for K < 2."""
    dists = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    dists = dists / np.clip(dists.sum(axis=1, keepdims=True), 1e-12, None)
    pairs = [np.minimum(dists[i], dists[j]).sum() for i in range(len(dists)) for j in range(i + 1, len(dists))]
    return float(np.mean(pairs)) if pairs else float("nan")


def overview_overlay(image: Image.Image, maps: np.ndarray, opacity: float = 0.6, labels=None) -> Image.Image:
    """Each reference's (rows, cols) map in its own colour: per pixel the reference with the
    highest (self-normalised) attention wins, with strength = that value. A legend below."""
    maps = np.asarray(maps, dtype=np.float32)
    up = np.stack([normalise(upsample(m, image.size)) for m in maps])  # (K, H, W)
    winner, strength = up.argmax(axis=0), up.max(axis=0)  # (H, W)
    colours = np.array(reference_colours(len(maps)), dtype=np.uint8)
    picture = blend(image, colours[winner], strength * float(np.clip(opacity, 0.0, 1.0)))
    return with_legend(picture, [str(i + 1) if labels is None else labels[i] for i in range(len(maps))])


def with_legend(image: Image.Image, labels: list[str]) -> Image.Image:
    """`image` above colour swatches, one per reference, wrapped onto as many lines as needed."""
    draw = ImageDraw.Draw(image.copy())
    widths = [16 + int(draw.textlength(label)) + 10 for label in labels]
    lines, x = 1, 4
    for width in widths:  # first pass: how many lines
        if x + width > image.width and x > 4:
            lines, x = lines + 1, 4
        x += width
    canvas = Image.new("RGB", (image.width, image.height + lines * LEGEND_HEIGHT), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x, y = 4, image.height + 5
    for colour, label, width in zip(reference_colours(len(labels)), labels, widths):
        if x + width > image.width and x > 4:
            x, y = 4, y + LEGEND_HEIGHT
        draw.rectangle((x, y, x + 12, y + 12), fill=colour)
        draw.text((x + 16, y), label, fill=(0, 0, 0))
        x += width
    return canvas


def times(multiple: float) -> str:
    """A multiple of uniform attention for people: 12×, 2.4×, 0.35×."""
    multiple = float(multiple)
    if multiple >= 10:
        return f"{multiple:.0f}×"
    return f"{multiple:.1f}×" if multiple >= 1 else f"{multiple:.2f}×"


def bar_stops(cmap: str = DEFAULT_CMAP, count: int = BAR_STOPS) -> list[tuple[float, tuple[int, int, int]]]:
    """(position in [0, 1], colour) pairs along the colormap, as `colorize` colours them."""
    positions = np.linspace(0.0, 1.0, count)
    colours = colorize(positions[None, :], cmap)[0]
    return [(float(p), tuple(int(c) for c in colour)) for p, colour in zip(positions, colours)]


def even_position(low: float, high: float) -> float:
    """Where 1× (attention spread evenly) lies on a bar from `low` to `high`, in [0, 1]."""
    return 0.0 if high - low <= 0 else float(np.clip((1.0 - low) / (high - low), 0.0, 1.0))


def colour_bar_html(cmap: str, low: float, high: float) -> str:
    """The heatmap's colour bar: the colormap from `low` to `high`, both multiples of uniform
    attention (the map's lowest and highest token), with 1× (spread evenly) marked."""
    gradient = ", ".join(f"rgb{colour} {100 * p:.1f}%" for p, colour in bar_stops(cmap))
    at = 100 * even_position(low, high)
    # the label's arrow sits on the tick: the label runs rightwards from it on the bar's left half,
    # leftwards on its right half, so it never leaves the bar
    label, shift = ("▲ 1× = spread evenly", 0) if at < 50 else ("1× = spread evenly ▲", 100)
    return (
        '<div class="colour-bar" style="font-size: 0.85em; line-height: 1.4">'
        '<div style="display: flex; justify-content: space-between">'
        f'<span class="colour-bar-low">low: {times(low)}</span>'
        f'<span class="colour-bar-high">high: {times(high)}</span></div>'
        '<div style="position: relative; height: 14px; border-radius: 3px; '
        f'background: linear-gradient(to right, {gradient})">'
        f'<div style="position: absolute; left: {at:.1f}%; top: -3px; bottom: -3px; width: 2px; '
        'margin-left: -1px; background: #fff; box-shadow: 0 0 0 1px #000"></div></div>'
        f'<div style="position: relative; height: 1.4em"><span class="colour-bar-even" style="position: absolute; '
        f'left: {at:.1f}%; transform: translateX(-{shift}%); white-space: nowrap">{label}</span></div>'
        "<div>Colour: attention of the clicked token as a multiple of an even spread over the image "
        "(1× = every target token gets the same share).</div></div>"
    )
