"""Subject segmentation for correspondence proposal (paper appendix B, stage 3).

One interface, chosen by name (`make_segmenter`): a segmenter gives, for each of the K subjects
of a sample, its mask in the target image. References need no model: MOSAIC references show
one subject on a plain (white) background, so `plain_background_mask` separates it.

  ground-truth      the masks the data already has (the synthetic world, imported samples)
  plain-background  a target with one subject on a plain background (K = 1 only)
  attention         the MOSAIC model's own reference→target attention (generated targets):
                    each target token goes to the reference attending to it most
  grounded-sam      open-vocabulary detection + SAM, as Lang-SAM does (annotator.segment_models)

A segmenter returns (masks, exclusive): `exclusive` says the masks are visible regions that
never overlap (ground truth, attention) rather than detector masks that may.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from mosaic_studio.annotator.segment_base import SegmentationInput, Segmenter, check_mask, plain_background_mask
from mosaic_studio.annotator.segment_models import GroundedSamSegmenter
from mosaic_studio.mosaic.data.semalign import token_grid
from mosaic_studio.mosaic.images import BBOX_TOLERANCE

DEFAULT_ATTENTION_THRESHOLD = 0.5  # of a reference's peak attention: below it a token is background


# --- references -------------------------------------------------------------------------------


def reference_masks(inp: SegmentationInput) -> list[np.ndarray]:
    """The subject of every reference, on its plain background."""
    return [
        check_mask(plain_background_mask(image), image.shape[:2], f"sample {inp.sample_id!r}, reference {k}")
        for k, image in enumerate(inp.references)
    ]


# --- offline backends -------------------------------------------------------------------------


class GroundTruthSegmenter(Segmenter):
    """The masks stored with the sample."""

    name = "ground-truth"

    def target_masks(self, inp):
        if inp.masks is None:
            raise ValueError(
                f"sample {inp.sample_id!r} has no stored masks: the ground-truth "
                f"segmenter needs them; choose another segmenter ({', '.join(SEGMENTERS)})"
            )
        if len(inp.masks) != len(inp.references):
            raise ValueError(f"sample {inp.sample_id!r}: {len(inp.masks)} masks for {len(inp.references)} references")
        exclusive = bool(inp.meta.get("masks_exclusive", True))
        return [np.asarray(m) for m in inp.masks], exclusive


class PlainBackgroundSegmenter(Segmenter):
    """One subject on a plain background: everything that is not the border colour."""

    name = "plain-background"

    def __init__(self, tolerance: float = BBOX_TOLERANCE):
        self.tolerance = tolerance

    def target_masks(self, inp):
        if len(inp.references) != 1:
            raise ValueError(
                f"sample {inp.sample_id!r}: the plain-background segmenter separates "
                f"one subject from its background, the sample has "
                f"{len(inp.references)}; use ground-truth, attention or grounded-sam"
            )
        return [plain_background_mask(inp.target, self.tolerance)], True


def masks_from_attention(
    maps: np.ndarray, image_hw: tuple[int, int], token_size: int, threshold: float = DEFAULT_ATTENTION_THRESHOLD
) -> list[np.ndarray]:
    """Disjoint pixel masks from per-reference attention over the target tokens.

    maps: (K, rows, cols). Each map is scaled by its own peak; a token goes to the reference
    with the highest scaled attention if that is at least `threshold`, and each reference keeps
    at least its peak token so no subject vanishes. Tokens become token_size² pixel blocks.
    """
    maps = np.asarray(maps, dtype=np.float64)
    rows, cols = token_grid(*image_hw, token_size)
    if maps.ndim != 3 or maps.shape[1:] != (rows, cols):
        raise ValueError(
            f"attention maps must be (K, {rows}, {cols}) for a {image_hw} target at "
            f"{token_size} px per token, got {maps.shape}"
        )
    scaled = maps / np.maximum(maps.max(axis=(1, 2), keepdims=True), np.finfo(float).tiny)
    owner = np.where(scaled.max(axis=0) >= threshold, scaled.argmax(axis=0), -1)  # (rows, cols)
    for k in range(len(maps)):
        owner.flat[np.argmax(scaled[k])] = k
    pixels = np.repeat(np.repeat(owner, token_size, axis=0), token_size, axis=1)
    pixels = pixels[: image_hw[0], : image_hw[1]]  # (H, W): partial edge tokens cropped
    return [pixels == k for k in range(len(maps))]


class AttentionSegmenter(Segmenter):
    """Masks from the MOSAIC model's reference→target attention (Eq. 8 rows, head-averaged).

    A generated target brings its attention overview (`AttentionRecord.overview()`); for any
    other target the model is run once on it at noise level `timestep` (annotator.flux_features).
    """

    name = "attention"

    def __init__(
        self, runner=None, threshold: float = DEFAULT_ATTENTION_THRESHOLD, timestep: float = 0.5, token_size: int = 16
    ):
        self.runner = runner
        self.threshold = threshold
        self.timestep = timestep
        self.token_size = token_size

    def target_masks(self, inp):
        maps, token_size = inp.attention, self.token_size  # a record's maps: its pixels_per_token
        if maps is None:
            if self.runner is None:
                raise ValueError(
                    f"sample {inp.sample_id!r} has no attention maps and no model "
                    "was given to compute them (pass runner=FluxRunner(pipe))"
                )
            maps = self.runner.attention_overview(inp.target, inp.references, inp.caption, self.timestep)
            token_size = self.runner.pixels_per_token
        return masks_from_attention(maps, inp.target.shape[:2], token_size, self.threshold), True


# --- registry ---------------------------------------------------------------------------------

SEGMENTERS: dict[str, Callable[..., Segmenter]] = {
    GroundTruthSegmenter.name: GroundTruthSegmenter,
    PlainBackgroundSegmenter.name: PlainBackgroundSegmenter,
    AttentionSegmenter.name: AttentionSegmenter,
    GroundedSamSegmenter.name: GroundedSamSegmenter,
}


def make_segmenter(name: str, **options) -> Segmenter:
    """The segmenter called `name`, built with `options`; ValueError for an unknown name."""
    if name not in SEGMENTERS:
        raise ValueError(f"unknown segmenter {name!r}; choose one of {sorted(SEGMENTERS)}")
    return SEGMENTERS[name](**options)


def segment(segmenter: Segmenter, inp: SegmentationInput) -> tuple[list[np.ndarray], bool]:
    """Run `segmenter` and check its K masks against the target's size."""
    masks, exclusive = segmenter.target_masks(inp)
    if len(masks) != len(inp.references):
        raise ValueError(
            f"sample {inp.sample_id!r}: segmenter {segmenter.name!r} gave "
            f"{len(masks)} masks for {len(inp.references)} references"
        )
    shape = inp.target.shape[:2]
    return [check_mask(m, shape, f"sample {inp.sample_id!r}, target mask {k}") for k, m in enumerate(masks)], exclusive


def labels_of(labels: Sequence[str], categories: Sequence[str]) -> list[str]:
    """Detector prompts: each subject's label, or its category when it has none."""
    return [label or category for label, category in zip(labels, categories)]
