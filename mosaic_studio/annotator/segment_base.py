"""The segmenter interface and the plain-background rule (paper appendix B, stage 3).

Shared by the offline segmenters (annotator.segment, which also holds the registry) and the
model-based one (annotator.segment_models), so neither has to import the other's module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mosaic_studio.mosaic.images import BBOX_TOLERANCE


@dataclass
class SegmentationInput:
    """What a segmenter may look at: the images, their text labels and what the data knows."""

    sample_id: str
    target: np.ndarray  # (H, W, 3) uint8
    references: list[np.ndarray]  # K × (h, w, 3) uint8, one subject each on a plain background
    labels: list[str]  # K text prompts, e.g. "mug" (the open-vocabulary detector's queries)
    caption: str = ""
    masks: list[np.ndarray] | None = None  # K × (H, W) bool ground truth, when the data has it
    attention: np.ndarray | None = None  # (K, rows, cols) attention overview of a generation
    meta: dict = field(default_factory=dict)


class Segmenter:
    """Base class: `name` and `target_masks`."""

    name = ""

    def target_masks(self, inp: SegmentationInput) -> tuple[list[np.ndarray], bool]:
        raise NotImplementedError


def check_mask(mask, shape: tuple[int, int], where: str) -> np.ndarray:
    """A (H, W) bool mask of `shape` with at least one pixel; ValueError naming `where` otherwise."""
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise ValueError(
            f"{where}: mask is {mask.shape[:2] if mask.ndim >= 2 else mask.shape}, "
            f"the image is {tuple(shape)}; masks must have the image's size"
        )
    if mask.dtype != np.bool_:
        raise ValueError(f"{where}: mask must be bool, got {mask.dtype}")
    if not mask.any():
        raise ValueError(f"{where}: mask is empty (no subject found)")
    return mask


# --- references and plain backgrounds ---------------------------------------------------------


def background_colour(image: np.ndarray) -> np.ndarray:
    """The median colour of the image's one-pixel border: its plain background."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])  # (2H+2W, 3)
    return np.median(border, axis=0)


def plain_background_mask(image: np.ndarray, tolerance: float = BBOX_TOLERANCE) -> np.ndarray:
    """(H, W) bool: pixels differing from the border colour by more than `tolerance` per channel.

    The same rule as the reference preprocessing's subject box (mosaic.images), with the
    background colour read from the border instead of assumed white.
    """
    difference = np.abs(image.astype(np.int16) - background_colour(image))  # (H, W, 3)
    return (difference > tolerance).any(axis=2)
