"""Heatmap and overview rendering with matplotlib colormaps; the colour bar and the peak ring."""

import re

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from mosaic_studio.studio.heatmap import (
    MARK_HALO,
    MARK_RADIUS,
    colorize,
    colour_bar_html,
    heatmap_overlay,
    mark,
    overlap,
    overview_overlay,
    reference_colours,
    ring_centre,
    times,
    token_centre,
)


def test_colorize_is_the_matplotlib_colormap():
    values = np.array([[0.0, 1.0]])
    expected = (colormaps["viridis"](values)[..., :3] * 255).astype(np.uint8)
    assert np.array_equal(colorize(values, "viridis"), expected)
    with pytest.raises(ValueError, match="unknown colormap"):
        colorize(values, "no-such-map")


def test_heatmap_overlay_marks_the_argmax_and_respects_opacity():
    grid = np.zeros((4, 4), np.float32)
    grid[1, 2] = 1.0
    image = Image.new("RGB", (64, 64), (10, 20, 30))
    picture, argmax = heatmap_overlay(image, grid, "inferno", opacity=0.0)
    assert argmax == 6 and token_centre(argmax, (4, 4), (64, 64)) == (40.0, 24.0)
    assert picture.getpixel((2, 62)) == (10, 20, 30)  # opacity 0: the image itself away from the mark
    hot, _ = heatmap_overlay(image, grid, "inferno", opacity=1.0)
    assert hot.getpixel((2, 62)) == tuple(colorize(np.zeros((1, 1)), "inferno")[0, 0])


def test_overview_gives_each_reference_its_colour_where_it_wins():
    maps = np.zeros((2, 2, 2), np.float32)
    maps[0, :, 0], maps[1, :, 1] = 1.0, 1.0  # reference 1 left, reference 2 right
    picture = overview_overlay(Image.new("RGB", (64, 64), "white"), maps, opacity=1.0, labels=["a", "b"])
    first, second = reference_colours(2)
    assert picture.getpixel((2, 30)) == first and picture.getpixel((61, 30)) == second
    assert picture.height > 64  # the legend
    assert overlap(maps) == pytest.approx(0.0) and overlap(np.ones((3, 2, 2))) == pytest.approx(1.0)


def test_legend_wraps_many_long_labels():
    labels = [f"reference {i}" for i in range(6)]
    picture = overview_overlay(Image.new("RGB", (64, 64)), np.random.rand(6, 2, 2), labels=labels)
    assert picture.height >= 64 + 3 * 22


def test_heatmap_colours_run_from_the_grids_lowest_to_its_highest_token():
    # The colour bar's ends are the map's extremes: a token of the grid's maximum is colormap(1),
    # its minimum colormap(0), linear between. 31-pixel tokens put pixel 31·j + 15 exactly on
    # token centre j, where bilinear upsampling returns the token's own value.
    grid = np.array([[0.5, 2.0, 7.0], [1.0, 3.0, 1.5], [7.0, 2.5, 0.2]], np.float32)
    image = Image.new("RGB", (93, 93), (0, 0, 0))
    picture, argmax = heatmap_overlay(image, grid, "viridis", opacity=1.0)
    assert argmax == 2  # the first of the two maxima carries the ring; the other is free to read

    def expected(value):
        return tuple(int(255 * c) for c in colormaps["viridis"]((value - 0.2) / (7.0 - 0.2))[:3])

    for row, col in [(2, 0), (2, 2), (1, 1), (1, 0)]:
        centre = (31 * col + 15, 31 * row + 15)
        assert picture.getpixel(centre) == pytest.approx(expected(grid[row, col]), abs=1)


def test_colour_bar_shows_the_colormap_from_low_to_high_with_1x_marked():
    html = colour_bar_html("magma", low=0.25, high=12.0)
    stops = re.findall(r"rgb\((\d+), (\d+), (\d+)\) ([\d.]+)%", html)
    assert len(stops) >= 2 and float(stops[0][3]) == 0.0 and float(stops[-1][3]) == 100.0
    for *rgb, at in stops:  # every gradient stop is the colormap at that position
        expected = tuple(int(255 * c) for c in colormaps["magma"](float(at) / 100)[:3])
        assert tuple(int(c) for c in rgb) == pytest.approx(expected, abs=1)  # at rounds to 0.1 %
    assert "low: 0.25×" in html and "high: 12×" in html and "1× = spread evenly" in html
    even = 100 * (1 - 0.25) / (12 - 0.25)  # 1× on a linear bar from 0.25× to 12×
    assert f"left: {even:.1f}%" in html and "▲ 1× = spread evenly" in html  # near the left: label runs right
    assert "1× = spread evenly ▲" in colour_bar_html("magma", low=0.5, high=1.2)  # 1× at 71 %: label runs left


def test_colour_bar_of_a_flat_map_puts_1x_at_its_start():
    html = colour_bar_html("inferno", low=1.0, high=1.0)
    assert "low: 1.0×" in html and "high: 1.0×" in html and "left: 0.0%" in html


@pytest.mark.parametrize("value, text", [(12.4, "12×"), (10.0, "10×"), (2.44, "2.4×"), (1.0, "1.0×"), (0.354, "0.35×")])
def test_times_words_a_multiple_of_uniform(value, text):
    assert times(value) == text


def white_box(picture: Image.Image) -> tuple[int, int, int, int]:
    """Bounding box (left, top, right, bottom; inclusive) of the pure-white pixels: the ring's halo."""
    ys, xs = np.nonzero((np.asarray(picture) == 255).all(axis=2))
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


@pytest.mark.parametrize("xy", [(0, 0), (63, 63), (8, 32), (32, 63), (2.5, 61)])
def test_ring_at_an_edge_stays_whole_and_inside(xy):
    whole = white_box(mark(Image.new("RGB", (200, 200)), (100, 100)))  # far from every edge
    size = (whole[2] - whole[0], whole[3] - whole[1])
    left, top, right, bottom = white_box(mark(Image.new("RGB", (64, 64)), xy))
    assert (right - left, bottom - top) == size  # not clipped
    assert left >= 0 and top >= 0 and right <= 63 and bottom <= 63
    centre = ((left + right) / 2, (top + bottom) / 2)
    assert all(abs(c - p) <= MARK_RADIUS + MARK_HALO for c, p in zip(centre, xy))  # the point stays within


def test_a_peak_in_a_corner_token_gets_a_whole_ring_on_that_token():
    grid = np.zeros((4, 4), np.float32)
    grid[3, 3] = 1.0  # the bottom-right token of a 64×64 image: centre (56, 56), 8 px from the edges
    picture, _ = heatmap_overlay(Image.new("RGB", (64, 64)), grid, "inferno", opacity=0.0)
    whole = white_box(mark(Image.new("RGB", (200, 200)), (100, 100)))
    left, top, right, bottom = white_box(picture)
    assert (right - left, bottom - top) == (whole[2] - whole[0], whole[3] - whole[1]) and right <= 63
    assert abs((left + right) / 2 - 56) <= 2 and abs((top + bottom) / 2 - 56) <= 2  # moved 2 px at most


def test_ring_moves_only_as_far_as_an_edge_needs():
    reach = MARK_RADIUS + MARK_HALO
    assert ring_centre((30, 40), (64, 64)) == (30, 40)
    assert ring_centre((8, 60), (64, 64)) == (reach, 63 - reach)
    assert ring_centre((3, 3), (10, 10)) == (4.5, 4.5)  # too small for the ring: centred
