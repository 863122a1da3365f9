"""The Attention tab's words and choices on a hand-made record: the caption's coordinates and
plain-language attention, the outside-the-subject note, the colour bar's scale and the step
range chosen after generating."""

import numpy as np
import pytest
import torch
from PIL import Image

from mosaic_studio.mosaic.record import AttentionRecord
from mosaic_studio.studio import inspector
from mosaic_studio.studio.session import Generation
from mosaic_studio.studio.tabs import attention

PPT = 16
REF_GRID = (2, 2)  # a 32×32 reference: its left column of tokens white padding, the right a subject
TARGET_GRID = (2, 3)  # a 48×32 generated image
EDGES = (0, 1, 4)  # two bins: step 1, steps 2–4


def reference_image() -> Image.Image:
    image = np.full((32, 32, 3), 255, np.uint8)
    image[:, 16:] = (180, 40, 40)  # the subject fills the right-hand tokens
    image[0, 15] = (180, 40, 40)  # one subject pixel in the top-left token: no longer all white
    return Image.fromarray(image)


def rows_per_bin() -> torch.Tensor:
    """(bins, images=1, K=1, N_ref=4, N_tgt=6): bin 0 peaks on target token 1, bin 1 on token 5."""
    rows = torch.full((2, 1, 1, 4, 6), 0.5 / 5)
    rows[0, ..., 1] = 0.5
    rows[1, ..., 5] = 0.5
    return rows


@pytest.fixture
def generation() -> Generation:
    per_bin = {"transformer_blocks.0": rows_per_bin()}
    weights = torch.tensor([1.0, 3.0]) / 4  # the bins' step counts
    per_block = {name: torch.tensordot(weights, bins, dims=1) for name, bins in per_bin.items()}
    record = AttentionRecord(per_block, REF_GRID, TARGET_GRID, (0, 4), PPT, per_bin=per_bin, bin_edges=EDGES)
    return Generation(
        settings={"steps": 4, "references": ["box.png"]},
        images=[Image.new("RGB", (48, 32), (90, 90, 90))],
        reference_images=[reference_image()],
        categories=["object"],
        record=record,
        paths=[],
    )


def test_caption_labels_both_coordinate_orders_and_says_attention_in_words():
    caption = inspector.heatmap_caption(
        reference=1,
        xy=(85.4, 54.0),
        token=37,
        reference_grid=(32, 32),
        peak=7 * 32 + 9,
        target_grid=(32, 32),
        target_size=(512, 512),
        peak_attention=0.0124,
        background=False,
    )
    assert "Reference 2, pixel (85, 54) as (x, y)" in caption
    assert "token 37 at (row 1, col 5) of its 32×32 token grid" in caption
    assert "target token (row 7, col 9) of 32×32" in caption
    assert "pixel (152, 120) as (x, y) of the generated image" in caption  # (col 9.5, row 7.5) × 16 px
    assert "**13×** the attention it would get if attention were spread evenly" in caption  # 0.0124 · 1024
    assert inspector.OUTSIDE_SUBJECT not in caption


def test_heatmap_view_reads_the_chosen_step_bins(generation):
    clicked = (0, 20.0, 3.0)  # the top-right token: on the subject
    _, all_steps = inspector.heatmap_view(generation, clicked, 1, 0, 0, "inferno", 0.5)
    # steps 1–4: token 5 gets 3/4·0.5 + 1/4·0.1 = 0.4 (2.4×), the most
    assert "target token (row 1, col 2) of 2×3" in all_steps and "**2.4×**" in all_steps
    _, first = inspector.heatmap_view(generation, clicked, 1, 0, 0, "inferno", 0.5, 0, 0)
    assert "target token (row 0, col 1) of 2×3" in first and "**3.0×**" in first and "attention 0.5000" in first
    assert inspector.OUTSIDE_SUBJECT not in first


@pytest.mark.parametrize(
    "xy, outside",
    [((3.0, 20.0), True), ((15.0, 31.0), True), ((17.0, 2.0), False), ((3.0, 3.0), False)],
    ids=["white-token", "white-token-corner", "subject", "one-subject-pixel"],
)
def test_a_click_on_white_padding_is_said_to_lie_outside_the_subject(generation, xy, outside):
    assert inspector.on_background(generation, 0, *xy) is outside
    _, caption = inspector.heatmap_view(generation, (0, *xy), 1, 0, 0, "inferno", 0.5)
    assert (inspector.OUTSIDE_SUBJECT in caption) is outside


def test_colour_bar_spans_the_rows_lowest_and_highest_multiple(generation):
    clicked = (0, 20.0, 3.0)
    assert inspector.colour_bar_view(generation, None, 1, 0, 0, "inferno") == ""
    bar = inspector.colour_bar_view(generation, clicked, 1, 0, 0, "inferno", 1, 1)  # steps 2–4 only
    assert "low: 0.60×" in bar and "high: 3.0×" in bar  # 0.1 and 0.5 of 6 tokens


def test_step_range_defaults_to_every_step_and_is_checked(generation):
    assert inspector.bin_range(generation) == (0, 1) and inspector.bin_range(generation, 1, 0) == (0, 1)
    assert inspector.steps_label(generation, (1, 1)) == "steps 2–4"
    assert inspector.steps_label(generation, (0, 0)) == "step 1"
    with pytest.raises(ValueError, match="last step bin 2 was not recorded; recorded bins: 0–1"):
        inspector.bin_range(generation, 0, 2)
    with pytest.raises(ValueError, match="must be a bin index"):
        inspector.bin_range(generation, "x", 1)
    assert "averaged over denoising **steps 2–4** of 4" in inspector.blocks_text(generation, 0, 0, 1, 1)


def test_the_tab_offers_the_recorded_bins_after_generating(generation):
    reset = attention.on_new_generation(generation, 0.5)
    assert reset.first_step["choices"] == [("step 1", 0), ("step 2", 1)] and reset.first_step["value"] == 0
    assert reset.last_step["choices"] == [("step 1", 0), ("step 4", 1)] and reset.last_step["value"] == 1
    assert "steps 1–4" in reset.status and reset.colour_bar == ""
    clicked = (0, 20.0, 3.0)
    redrawn = attention.redraw(generation, clicked, 1, 0, 0, "inferno", 0.5, 0, 0)
    assert "**step 1** of 4" in redrawn.status and "**3.0×**" in redrawn.caption and "high: 3.0×" in redrawn.colour_bar
    api = attention.on_reference_pixel(generation, 1, 20, 3, 1, 0, 0, "inferno", 0.5)  # no step range: every step
    assert "**2.4×**" in api.caption


class Sent(Exception):
    pass


def test_send_to_annotate_proposes_from_the_chosen_steps(generation, tmp_path, monkeypatch):
    seen = []

    def review_item(_generation, image, maps, *_args):
        seen.append(maps)
        raise Sent  # stop before any file is written: the maps handed over are what is tested

    monkeypatch.setattr(attention, "review_item", review_item)
    for steps in ((1, 1), (None, None)):
        with pytest.raises(Sent):
            attention.make_send_handler(tmp_path / "store.db")(generation, 1, 0, 0, 2, "ann", *steps)
    blocks = generation.blocks
    assert torch.equal(seen[0], generation.record.maps(blocks, bins=(1, 1)))  # steps 2–4 only
    assert torch.equal(seen[1], generation.record.maps(blocks))
    assert not torch.allclose(seen[0], seen[1])
