"""The attention record per step bin (docs/DESIGN.md §8): bin edges, averages over any range of
bins, and the equality with a naive per-step average on a generation."""

import numpy as np
import pytest
import torch
from PIL import Image

from mosaic_studio.mosaic.pipeline import MosaicPipeline
from mosaic_studio.mosaic.record import DEFAULT_BINS, AttentionRecord, record_bytes, step_bins
from mosaic_studio.mosaic.tiny import TinyFluxConfig, tiny_flux_components

SIZE = 64  # 4×4 target tokens
STEPS = 13  # more steps than bins: bins of one and of two steps


@pytest.mark.parametrize("steps, bins", [((0, 28), 10), ((0, 13), 10), ((0, 4), 10), ((3, 9), 4), ((0, 100), 10)])
def test_step_bins_tile_the_steps_in_near_equal_widths(steps, bins):
    edges = step_bins(steps, bins)
    widths = np.diff(edges)
    assert edges[0] == steps[0] and edges[-1] == steps[1]
    assert len(widths) == min(steps[1] - steps[0], bins)  # no empty bin
    assert widths.min() >= 1 and widths.max() - widths.min() <= 1


def test_step_bins_of_28_steps():
    # edges[b] = ⌊28·b / 10⌋
    assert step_bins((0, 28)) == (0, 2, 5, 8, 11, 14, 16, 19, 22, 25, 28)


@pytest.mark.parametrize(
    "steps, bins, message",
    [((0, 4), 0, "max_bins"), ((0, 4), 2.5, "max_bins"), ((3, 3), 10, "start < end"), ((-1, 3), 10, "start < end")],
)
def test_step_bins_refuse_bad_arguments(steps, bins, message):
    with pytest.raises(ValueError, match=message):
        step_bins(steps, bins)


def per_step_maps(steps=6, images=1, refs=2, n_ref=3, n_tgt=4, seed=0) -> torch.Tensor:
    """(steps, images, K, N_ref, N_tgt) random rows, each a distribution over the target tokens."""
    rows = torch.rand((steps, images, refs, n_ref, n_tgt), generator=torch.Generator().manual_seed(seed))
    return rows / rows.sum(-1, keepdim=True)


def binned_record(per_step: dict[str, torch.Tensor], edges: tuple[int, ...]) -> AttentionRecord:
    """A record whose bins are the per-step maps averaged within `edges`."""
    per_bin = {name: torch.stack([s[a:b].mean(0) for a, b in zip(edges, edges[1:])]) for name, s in per_step.items()}
    per_block = {name: s.mean(0) for name, s in per_step.items()}
    return AttentionRecord(per_block, (1, 3), (2, 2), (edges[0], edges[-1]), 16, per_bin=per_bin, bin_edges=edges)


def test_a_bin_range_is_the_mean_over_its_steps_and_blocks():
    per_step = {"a": per_step_maps(seed=1), "b": per_step_maps(seed=2)}
    edges = (0, 1, 3, 6)  # bins of 1, 2 and 3 steps: an unweighted mean of bins would be wrong
    record = binned_record(per_step, edges)
    for first, last in [(0, 0), (1, 2), (0, 1), (0, 2), (2, 2)]:
        steps = slice(edges[first], edges[last + 1])
        expected = torch.stack([per_step["a"][steps], per_step["b"][steps]]).mean(dim=(0, 1))
        assert torch.allclose(record.maps(bins=(first, last)), expected, atol=1e-7)
        assert record.bin_steps((first, last)) == (steps.start, steps.stop)
    only_b = per_step["b"][1:6].mean(0)
    assert torch.allclose(record.maps(["b"], bins=(1, 2)), only_b, atol=1e-7)
    token = record.reference_token(20, 5)  # column 1 of the 1×3 reference grid
    assert torch.allclose(record.heatmap(1, 20, 5, bins=(1, 2)), record.maps(bins=(1, 2))[0, 1, token].reshape(2, 2))
    assert torch.allclose(record.overview(bins=(0, 0)), record.maps(bins=(0, 0))[0].mean(1).reshape(2, 2, 2))


def test_a_record_made_by_hand_is_one_bin_over_its_steps():
    maps = per_step_maps(steps=1)[0]
    record = AttentionRecord({"a": maps}, (1, 3), (2, 2), (2, 5), 16)
    assert record.num_bins == 1 and record.bin_edges == (2, 5) and record.bin_step_counts == (3,)
    assert torch.equal(record.maps(bins=(0, 0)), maps) and torch.equal(record.maps(), maps)


@pytest.mark.parametrize("bins, message", [((0, 3), "do not lie in 0–2"), ((2, 1), "do not lie"), ((0, 1.0), "ints")])
def test_bins_outside_the_record_are_refused(bins, message):
    record = binned_record({"a": per_step_maps()}, (0, 1, 3, 6))
    with pytest.raises(ValueError, match=message):
        record.maps(bins=bins)


def test_inconsistent_bins_are_refused():
    per_step = {"a": per_step_maps()}
    with pytest.raises(ValueError, match="must rise strictly from 0 to 6"):
        binned_record(per_step, (0, 3, 3, 6))
    record = binned_record(per_step, (0, 3, 6))
    with pytest.raises(ValueError, match="per_bin shape"):
        AttentionRecord(record.per_block, (1, 3), (2, 2), (0, 6), 16, per_bin=record.per_bin, bin_edges=(0, 2, 4, 6))


def test_record_bytes_counts_every_bin_and_the_all_steps_mean():
    # FLUX.1-dev at 512 px, 4 references: 1024 tokens per reference, 1024 target tokens
    per_bin = 4 * 1024 * 1024 * 4
    assert per_bin == 16 * 2**20  # 16 MiB, as docs/DESIGN.md §8 states
    assert record_bytes(num_images=1, num_refs=4, ref_tokens=1024, target_tokens=1024, bins=10) == 11 * per_bin


# --- on a generation ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    return MosaicPipeline(**tiny_flux_components(TinyFluxConfig(), seed=0))


def references():
    images = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        image = np.full((80, 80, 3), 255, np.uint8)
        image[10 + 5 * i : 60, 15 : 55 - 5 * i] = colour
        images.append(Image.fromarray(image))
    return images


def record_of(pipe, **kw) -> AttentionRecord:
    out = pipe(
        "a red box and a blue box",
        reference_images=references(),
        height=SIZE,
        width=SIZE,
        num_inference_steps=STEPS,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
        record_attention=True,
        **kw,
    )
    return out.attention


def test_any_bin_range_equals_the_average_of_single_step_records(pipe):
    """The naive reference: one generation per step, each recording only that step (the
    single-range method), averaged over a range's steps by hand."""
    record = record_of(pipe)
    assert record.bin_edges == step_bins((0, STEPS)) and record.num_bins == DEFAULT_BINS
    assert set(record.bin_step_counts) == {1, 2}
    singles = [record_of(pipe, attention_steps=(s, s + 1)) for s in range(STEPS)]
    every_block = torch.stack([single.maps() for single in singles])  # (steps, images, K, N_ref, N_tgt)
    assert not torch.allclose(every_block[0], every_block[-1], atol=1e-4)  # the steps differ: a wrong range shows
    for first, last in [(0, DEFAULT_BINS - 1), (0, 0), (3, 3), (2, 6), (5, DEFAULT_BINS - 1)]:
        start, end = record.bin_steps((first, last))
        assert torch.allclose(record.maps(bins=(first, last)), every_block[start:end].mean(0), atol=1e-6)
    blocks = record.blocks[:1]
    first_block = torch.stack([single.maps(blocks) for single in singles[3:7]]).mean(0)
    assert record.bin_steps((3, 5)) == (3, 7) and torch.allclose(
        record.maps(blocks, bins=(3, 5)), first_block, atol=1e-6
    )


def test_record_memory_is_bounded_by_the_bins_not_the_steps(pipe):
    long = pipe(
        "a red box",
        reference_images=references()[:1],
        height=SIZE,
        width=SIZE,
        num_inference_steps=3 * DEFAULT_BINS,
        output_type="latent",
        record_attention=True,
    ).attention
    assert all(long.per_bin[name].shape[0] == DEFAULT_BINS for name in long.blocks)
    assert long.bin_step_counts == (3,) * DEFAULT_BINS
