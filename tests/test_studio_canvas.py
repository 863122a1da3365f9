"""Composite layouts (clicks → image pixels) and the pair drawing on the review canvas."""

import pytest
from PIL import Image

from mosaic_studio.studio.canvas import REFERENCE, TARGET, compose, review_layout, strip_layout
from mosaic_studio.studio.drawing import DrawnPair, draw_pairs, nearest_pair, pair_colour


@pytest.mark.parametrize("refs", [1, 3, 4, 6])
def test_review_layout_round_trips_and_panels_do_not_overlap(refs):
    layout = review_layout([(64, 64)] * refs, (96, 64))
    boxes = [(p.left, p.top, p.left + p.size[0], p.top + p.size[1]) for p in layout.panels]
    for i, a in enumerate(boxes):
        assert a[2] <= layout.size[0] and a[3] <= layout.size[1]
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
    for panel in layout.panels:
        hit, xy = layout.locate(*panel.to_canvas((10.5, 20.5)))
        assert hit == panel and xy == pytest.approx((10.5, 20.5))
    assert layout.panel(TARGET).size[1] >= 420  # shown large enough to click


def test_strip_layout_and_gaps():
    layout = strip_layout([(64, 64), (128, 128)])
    assert layout.locate(0, 0) is None
    panel, xy = layout.locate(*layout.panel(REFERENCE, 1).to_canvas((100, 7)))
    assert panel.index == 1 and xy == pytest.approx((100, 7))


def test_compose_and_draw_pairs_mark_both_ends_in_the_pair_colour():
    layout = review_layout([(64, 64)], (64, 64))
    white = Image.new("RGB", (64, 64), "white")
    base = compose(layout, {(REFERENCE, 0): white, (TARGET, 0): white})
    pair = DrawnPair(1, 0, (32.0, 32.0), (16.0, 48.0))
    drawn = draw_pairs(base, layout, [pair])
    for panel, xy in ((layout.panel(REFERENCE), pair.ref_xy), (layout.panel(TARGET), pair.target_xy)):
        x, y = panel.to_canvas(xy)
        assert drawn.getpixel((round(x), round(y))) == pair_colour(1)
    assert nearest_pair(layout, [pair], *layout.panel(TARGET).to_canvas((17.0, 47.0))) == 1
    assert nearest_pair(layout, [pair], 0, 0) is None
