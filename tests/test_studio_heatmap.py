"""Heatmap and overview rendering with matplotlib colormaps."""

import numpy as np
import pytest
from matplotlib import colormaps
from PIL import Image

from mosaic_studio.studio.heatmap import (
    colorize,
    heatmap_overlay,
    overlap,
    overview_overlay,
    reference_colours,
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
