"""Correspondence pairs on the review canvas: a coloured line from the reference point to the
target point, both ends numbered; the selected pair thicker with a white halo; a reference
point waiting for its target (while adding a pair) as a hollow ring."""

from __future__ import annotations

from dataclasses import dataclass

from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont

from mosaic_studio.studio.canvas import REFERENCE, TARGET, Layout

PAIR_PALETTE = "tab20"
POINT_RADIUS = 6
SELECTED_RADIUS = 9
HIT_RADIUS = 14  # canvas pixels: a click this close to a point selects its pair
FONT_SIZE = 13
VERDICT_MARKS = {"correct": "+", "wrong": "x", "unsure": "?"}  # after the number; ASCII: the default font has no ✓


@dataclass(frozen=True)
class DrawnPair:
    number: int  # 1-based, shown on both ends
    ref_index: int
    ref_xy: tuple[float, float]  # image pixels
    target_xy: tuple[float, float]
    verdict: str | None = None


def pair_colour(number: int) -> tuple[int, int, int]:
    palette = colormaps[PAIR_PALETTE]
    return tuple(int(255 * c) for c in palette((number - 1) % palette.N)[:3])


def _font():
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def endpoints(layout: Layout, pair: DrawnPair) -> tuple[tuple[float, float], tuple[float, float]]:
    """Canvas positions of the pair's reference and target ends."""
    return (
        layout.panel(REFERENCE, pair.ref_index).to_canvas(pair.ref_xy),
        layout.panel(TARGET).to_canvas(pair.target_xy),
    )


def nearest_pair(layout: Layout, pairs: list[DrawnPair], x: float, y: float, radius: float = HIT_RADIUS) -> int | None:
    """Number of the pair with an end within `radius` of canvas (x, y) (the closest), or None."""
    best, best_distance = None, radius
    for pair in pairs:
        for cx, cy in endpoints(layout, pair):
            distance = ((cx - x) ** 2 + (cy - y) ** 2) ** 0.5
            if distance <= best_distance:
                best, best_distance = pair.number, distance
    return best


def _dot(draw, xy, colour, radius, halo: bool, filled: bool = True):
    x, y = xy
    if halo:
        draw.ellipse((x - radius - 3, y - radius - 3, x + radius + 3, y + radius + 3), fill=(255, 255, 255))
    draw.ellipse(
        (x - radius, y - radius, x + radius, y + radius),
        fill=colour if filled else None,
        outline=(0, 0, 0) if filled else colour,
        width=1 if filled else 3,
    )


def draw_pairs(
    canvas: Image.Image,
    layout: Layout,
    pairs: list[DrawnPair],
    selected: int | None = None,
    pending: tuple[int, tuple[float, float]] | None = None,
) -> Image.Image:
    """A copy of `canvas` (from `canvas.compose`) with every pair drawn; `selected` is a number."""
    canvas = canvas.copy()
    draw = ImageDraw.Draw(canvas)
    font = _font()
    ordered = sorted(pairs, key=lambda p: p.number == selected)  # the selected pair on top
    for pair in ordered:
        chosen = pair.number == selected
        colour = pair_colour(pair.number)
        start, end = endpoints(layout, pair)
        if chosen:
            draw.line((*start, *end), fill=(255, 255, 255), width=6)
        draw.line((*start, *end), fill=colour, width=3 if chosen else 1)
        for xy in (start, end):
            _dot(draw, xy, colour, SELECTED_RADIUS if chosen else POINT_RADIUS, halo=chosen)
            label = f"{pair.number}{VERDICT_MARKS.get(pair.verdict, '')}"
            draw.text(
                (xy[0] + POINT_RADIUS + 2, xy[1] - POINT_RADIUS - 8),
                label,
                fill=(0, 0, 0),
                font=font,
                stroke_width=2,
                stroke_fill=(255, 255, 255),
            )
    if pending is not None:
        ref_index, xy = pending
        _dot(
            draw,
            layout.panel(REFERENCE, ref_index).to_canvas(xy),
            (255, 0, 255),
            SELECTED_RADIUS,
            halo=True,
            filled=False,
        )
    return canvas
