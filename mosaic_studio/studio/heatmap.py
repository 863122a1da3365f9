"""Attention as pictures: one reference token's map over the generated image, and the
per-reference overview (each reference's aggregate attention in its own colour).

Maps arrive on the target token grid (rows, cols); they are upsampled bilinearly to the image,
normalised to [0, 1] and coloured with a matplotlib colormap.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

CMAPS = ("inferno", "magma", "viridis", "plasma", "turbo", "jet", "hot")
DEFAULT_CMAP = "inferno"
REFERENCE_PALETTE = "tab10"  # distinct colours for up to 10 references
MARK_RADIUS = 7  # pixels: the argmax and clicked-point markers
LEGEND_HEIGHT = 22


def reference_colours(count: int) -> list[tuple[int, int, int]]:
    palette = colormaps[REFERENCE_PALETTE]
    return [tuple(int(255 * c) for c in palette(i % palette.N)[:3]) for i in range(count)]


def normalise(values: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1]; a constant map becomes zeros."""
    values = np.asarray(values, dtype=np.float32)
    span = float(values.max() - values.min())
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


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


def mark(image: Image.Image, xy: tuple[float, float], colour=(0, 255, 255), radius: int = MARK_RADIUS) -> Image.Image:
    """A ring with a white halo and a cross at `xy` (pixels), on a copy."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    x, y = xy
    draw.ellipse((x - radius - 2, y - radius - 2, x + radius + 2, y + radius + 2), outline=(255, 255, 255), width=2)
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=colour, width=2)
    draw.line((x - radius, y, x + radius, y), fill=colour, width=1)
    draw.line((x, y - radius, x, y + radius), fill=colour, width=1)
    return image


def token_centre(index: int, grid: tuple[int, int], image_size: tuple[int, int]) -> tuple[float, float]:
    """Pixel centre of target token `index` (row-major) in an image of `image_size` (w, h)."""
    rows, cols = grid
    row, col = divmod(int(index), cols)
    return ((col + 0.5) * image_size[0] / cols, (row + 0.5) * image_size[1] / rows)


def heatmap_overlay(
    image: Image.Image, grid: np.ndarray, cmap: str = DEFAULT_CMAP, opacity: float = 0.6
) -> tuple[Image.Image, int]:
    """`image` with the (rows, cols) map coloured over it, its argmax marked.
    Returns the picture and the argmax token index."""
    grid = np.asarray(grid, dtype=np.float32)
    heat = colorize(normalise(upsample(grid, image.size)), cmap)
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
