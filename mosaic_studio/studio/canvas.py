"""Layouts of the clickable composite images, and the mapping between a click on one and a
pixel of one of its images.

Gradio reports a click on an image in the image's own pixels, so a composite made of several
images (the references strip of the Attention tab, the reference/target canvas of the
Annotate tab) needs its layout to know which image was clicked, and where in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image, ImageDraw

REFERENCE, TARGET = "reference", "target"
STRIP_TILE = 160  # pixels per reference in the Attention tab's strip
REVIEW_TILE = 200  # pixels per reference on the review canvas
MIN_TARGET_SIDE = 420  # the target is shown at least this tall on the review canvas
GAP = 12
TOP = 34  # clear of the label badge Gradio draws over an image's top-left corner
LABEL = 16  # height of the text line above each image
LABEL_COLOUR = (90, 90, 90)
BACKGROUND = (245, 245, 245)


@dataclass(frozen=True)
class Panel:
    """One image on a composite: `scale` display pixels per image pixel."""

    kind: str  # REFERENCE or TARGET
    index: int  # reference index (0-based); 0 for the target
    left: int
    top: int
    scale: float
    image_size: tuple[int, int]  # (w, h) of the image itself

    @property
    def size(self) -> tuple[int, int]:
        return (round(self.image_size[0] * self.scale), round(self.image_size[1] * self.scale))

    def contains(self, x: float, y: float) -> bool:
        width, height = self.size
        return self.left <= x < self.left + width and self.top <= y < self.top + height

    def to_image(self, x: float, y: float) -> tuple[float, float]:
        """Composite pixel → image pixel, clamped inside the image."""
        ix = min(max((x - self.left) / self.scale, 0.0), self.image_size[0] - 1e-3)
        iy = min(max((y - self.top) / self.scale, 0.0), self.image_size[1] - 1e-3)
        return (ix, iy)

    def to_canvas(self, xy: tuple[float, float]) -> tuple[float, float]:
        return (self.left + xy[0] * self.scale, self.top + xy[1] * self.scale)


@dataclass(frozen=True)
class Layout:
    size: tuple[int, int]
    panels: tuple[Panel, ...]

    def locate(self, x: float, y: float) -> tuple[Panel, tuple[float, float]] | None:
        """The panel under composite pixel (x, y) and the image pixel there, or None (a gap)."""
        for panel in self.panels:
            if panel.contains(x, y):
                return panel, panel.to_image(x, y)
        return None

    def panel(self, kind: str, index: int = 0) -> Panel:
        return next(p for p in self.panels if p.kind == kind and p.index == index)


def strip_layout(sizes: list[tuple[int, int]], tile: int = STRIP_TILE, gap: int = GAP) -> Layout:
    """References side by side, each scaled to fit a `tile` square, with a label row above."""
    panels = []
    for i, (w, h) in enumerate(sizes):
        scale = tile / max(w, h)
        panels.append(Panel(REFERENCE, i, gap + i * (tile + gap), TOP + LABEL, scale, (w, h)))
    return Layout((gap + len(sizes) * (tile + gap), TOP + LABEL + tile + gap // 2), tuple(panels))


def review_layout(
    ref_sizes: list[tuple[int, int]], target_size: tuple[int, int], tile: int = REVIEW_TILE, gap: int = GAP
) -> Layout:
    """References in one column (two beyond three references) on the left, the target on the
    right, as tall as the reference column and at least MIN_TARGET_SIDE."""
    columns = 1 if len(ref_sizes) <= 3 else 2
    rows = math.ceil(len(ref_sizes) / columns)
    panels = []
    for i, (w, h) in enumerate(ref_sizes):
        row, col = divmod(i, columns)
        top = TOP + LABEL + row * (tile + LABEL)
        panels.append(Panel(REFERENCE, i, gap + col * (tile + gap), top, tile / max(w, h), (w, h)))
    column_height = rows * (tile + LABEL)  # from TOP, each image with its label line
    target_height = max(column_height - LABEL, MIN_TARGET_SIDE)
    scale = target_height / target_size[1]
    left = gap + columns * (tile + gap) + 2 * gap
    panels.append(Panel(TARGET, 0, left, TOP + LABEL, scale, target_size))
    width = left + round(target_size[0] * scale) + gap
    return Layout((width, TOP + max(column_height, LABEL + target_height) + gap // 2), tuple(panels))


def compose(layout: Layout, images: dict[tuple[str, int], Image.Image]) -> Image.Image:
    """Paste each panel's image (keyed (kind, index)) scaled into place, with its label above."""
    canvas = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for panel in layout.panels:
        image = images[(panel.kind, panel.index)].convert("RGB")
        canvas.paste(image.resize(panel.size, Image.Resampling.LANCZOS), (panel.left, panel.top))
        text = f"reference {panel.index + 1}" if panel.kind == REFERENCE else "generated image"
        draw.text((panel.left, panel.top - 14), text, fill=LABEL_COLOUR)
    return canvas
