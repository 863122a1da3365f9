"""Dense feature extractors for correspondence proposal (paper appendix B, stages 5 and 6).

One interface, chosen by name (`make_extractor`): `extract(image, mask)` returns a feature map
whose `at(points)` gives one L2-normalised descriptor per (x, y) pixel point, so the matcher
compares any target token with any reference position by cosine similarity.

  dift    diffusion features of the loaded FLUX transformer (annotator.flux_features)
  dinov2  DINOv2 patch features through transformers, when its weights are present
  sift    offline classical descriptor: OpenCV SIFT, upright, at a scale set by the subject's
          size, plus the local mean colour (CIE Lab), which SIFT's grey gradients ignore
  patch   offline classical descriptor: the colour layout around the point, a PATCH_GRID²
          lattice of blurred CIE Lab values over a window scaled to the subject (OpenCV remap)

The paper intersects DIFT with GeoAware-SC (itself DIFT + DINOv2 features); here any two of
these play the two independent extractors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mosaic_studio.annotator.weights import OFFLINE_EXTRACTORS, load_pretrained

DEFAULT_DINOV2 = "facebook/dinov2-base"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's input normalisation
IMAGENET_STD = (0.229, 0.224, 0.225)
SIFT_PATCH_FRACTION = 0.2  # SIFT window side, as a fraction of the subject's box (scale-normalised)
MIN_SIFT_PATCH = 4.0  # pixels: below this SIFT's histogram cells hold a pixel or less
COLOUR_WEIGHT = 1.0  # weight of the 3 Lab values against the unit-norm 128-d SIFT vector
PATCH_GRID = 5  # samples per side of the colour-patch descriptor
PATCH_FRACTION = 0.3  # colour-patch window side, as a fraction of the subject's box


class FeatureMap(Protocol):
    def at(self, points: np.ndarray) -> np.ndarray:
        """(P, C) float32 unit-norm descriptors at (P, 2) pixel points (x, y)."""


class Extractor(Protocol):
    name: str
    uses_mask: bool  # whether `extract` depends on the mask (else one map serves every subject)

    def extract(self, image: np.ndarray, mask: np.ndarray) -> FeatureMap:
        """Features of an (H, W, 3) uint8 image whose subject is `mask` (H, W). An extractor may
        also offer `extract_many(images, masks)` to describe several images in one batch."""


def _normalise(features: np.ndarray) -> np.ndarray:
    return (features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class GridFeatures:
    """A (C, rows, cols) map over a whole image, read at pixel points by bilinear interpolation."""

    def __init__(self, grid: torch.Tensor, image_hw: tuple[int, int]):
        self.grid = grid.float().cpu()
        self.image_hw = image_hw

    def at(self, points: np.ndarray) -> np.ndarray:
        height, width = self.image_hw
        # Pixel (x, y) → grid_sample's [-1, 1] with align_corners=False: the map covers the image.
        normalised = np.stack([2 * points[:, 0] / width - 1, 2 * points[:, 1] / height - 1], axis=1)
        where = torch.from_numpy(normalised).float()[None, None]  # (1, 1, P, 2)
        sampled = F.grid_sample(
            self.grid[None], where, mode="bilinear", padding_mode="border", align_corners=False
        )  # (1, C, 1, P)
        return _normalise(sampled[0, :, 0].T.numpy())


class DiftExtractor:
    """DIFT-style features of a FLUX transformer (see annotator.flux_features)."""

    name = "dift"
    uses_mask = False

    def __init__(
        self,
        runner,
        block: str | None = None,
        timestep: float = 0.3,
        copies: int = 4,
        resolution: int | None = 512,
        seed: int = 0,
    ):
        """block: default the middle double block; timestep: noise level t ∈ [0, 1];
        copies: noisy copies averaged (DIFT's ensemble); resolution: longer side fed to the model
        (None: the image's own size)."""
        from mosaic_studio.annotator.flux_features import middle_double_block

        if not 0.0 <= timestep <= 1.0:
            raise ValueError(f"DIFT timestep must be in [0, 1], got {timestep}")
        if copies < 1:
            raise ValueError(f"DIFT copies must be >= 1, got {copies}")
        self.runner = runner
        self.block = block or middle_double_block(runner.transformer)
        self.timestep, self.copies, self.resolution, self.seed = timestep, copies, resolution, seed

    def extract(self, image, mask):
        return self.extract_many([image], [mask])[0]

    def extract_many(self, images, masks):
        """All images in as few model calls as their sizes allow (see FluxRunner)."""
        grids = self.runner.block_features(images, self.block, self.timestep, self.copies, self.resolution, self.seed)
        return [GridFeatures(grid, image.shape[:2]) for grid, image in zip(grids, images)]


class Dinov2Extractor:
    """DINOv2 patch tokens (last layer) through transformers."""

    name = "dinov2"
    uses_mask = False

    def __init__(self, model_id: str = DEFAULT_DINOV2, model=None, resolution: int = 448, device: str = "cpu"):
        """model: an already built Dinov2Model (tests); by default loaded from `model_id`."""
        if model is None:
            from transformers import AutoModel

            model = load_pretrained(AutoModel, model_id, "DINOv2", "--dinov2", OFFLINE_EXTRACTORS)
        self.model = model.to(device).eval()
        self.patch = int(model.config.patch_size)
        self.resolution, self.device = resolution, device

    @torch.no_grad()
    def extract(self, image, mask):
        height, width = image.shape[:2]
        scale = self.resolution / max(height, width)
        rows = max(1, round(height * scale / self.patch))
        cols = max(1, round(width * scale / self.patch))
        pil = Image.fromarray(image).resize((cols * self.patch, rows * self.patch), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0)
        pixels = (pixels - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        pixels = pixels.permute(2, 0, 1)[None].to(self.device)  # (1, 3, H', W')
        hidden = self.model(pixel_values=pixels).last_hidden_state[0]  # (1 + registers + rows·cols, C)
        patches = hidden[-rows * cols :]  # the patch tokens come last, row-major
        return GridFeatures(patches.T.reshape(-1, rows, cols), (height, width))


class SiftFeatures:
    """SIFT + colour computed on demand at the requested points."""

    def __init__(self, image: np.ndarray, patch: float, colour_weight: float):
        import cv2

        self._cv2 = cv2
        self.grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32) / 255.0
        self.lab = cv2.GaussianBlur(lab, (0, 0), max(patch / 4, 0.5))  # (H, W, 3) local mean colour
        self.patch, self.colour_weight = patch, colour_weight

    def at(self, points):
        cv2 = self._cv2
        keypoints = [cv2.KeyPoint(float(x), float(y), self.patch, 0.0) for x, y in points]
        _, descriptors = cv2.SIFT_create().compute(self.grey, keypoints)
        if descriptors is None or len(descriptors) != len(points):
            raise RuntimeError("OpenCV SIFT dropped keypoints; points must lie inside the image")
        height, width = self.grey.shape
        cols = np.clip(points[:, 0].astype(np.int64), 0, width - 1)
        rows = np.clip(points[:, 1].astype(np.int64), 0, height - 1)
        colour = self.colour_weight * self.lab[rows, cols]  # (P, 3)
        return _normalise(np.concatenate([_normalise(descriptors), colour], axis=1))


class SiftExtractor:
    """Offline classical descriptor (OpenCV)."""

    name = "sift"
    uses_mask = True  # the descriptor's window scales with the subject's box

    def __init__(self, patch_fraction: float = SIFT_PATCH_FRACTION, colour_weight: float = COLOUR_WEIGHT):
        try:
            import cv2  # noqa: F401
        except ImportError as error:
            raise ImportError("the sift extractor needs OpenCV: pip install opencv-python-headless") from error
        self.patch_fraction, self.colour_weight = patch_fraction, colour_weight

    def extract(self, image, mask):
        patch = max(MIN_SIFT_PATCH, self.patch_fraction * _subject_side(image, mask))
        return SiftFeatures(image, patch, self.colour_weight)


def _subject_side(image: np.ndarray, mask: np.ndarray) -> float:
    rows, cols = np.nonzero(mask)
    if not rows.size:
        return float(max(image.shape[:2]))
    return float(max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1))


class PatchFeatures:
    """Blurred Lab colour on a PATCH_GRID × PATCH_GRID lattice centred on each point."""

    def __init__(self, image: np.ndarray, window: float):
        import cv2

        self._cv2 = cv2
        spacing = window / (PATCH_GRID - 1)
        lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32) / 255.0
        self.lab = cv2.GaussianBlur(lab, (0, 0), max(spacing / 2, 0.5))  # (H, W, 3)
        steps = (np.arange(PATCH_GRID) - (PATCH_GRID - 1) / 2) * spacing
        self.dx, self.dy = (a.ravel().astype(np.float32) for a in np.meshgrid(steps, steps))

    def at(self, points):
        # Pixel centres: point (x, y) is pixel coordinate (x - 0.5, y - 0.5) for remap.
        map_x = (points[:, :1] - 0.5).astype(np.float32) + self.dx  # (P, PATCH_GRID²)
        map_y = (points[:, 1:] - 0.5).astype(np.float32) + self.dy
        values = self._cv2.remap(
            self.lab, map_x, map_y, self._cv2.INTER_LINEAR, borderMode=self._cv2.BORDER_REPLICATE
        )  # (P, PATCH_GRID², 3)
        return _normalise(values.reshape(len(points), -1))


class PatchExtractor:
    """Offline colour-layout descriptor (OpenCV): independent of SIFT's grey gradients."""

    name = "patch"
    uses_mask = True  # the window scales with the subject's box

    def __init__(self, window_fraction: float = PATCH_FRACTION):
        try:
            import cv2  # noqa: F401
        except ImportError as error:
            raise ImportError("the patch extractor needs OpenCV: pip install opencv-python-headless") from error
        self.window_fraction = window_fraction

    def extract(self, image, mask):
        return PatchFeatures(image, max(MIN_SIFT_PATCH, self.window_fraction * _subject_side(image, mask)))


EXTRACTORS: dict[str, Callable[..., Extractor]] = {
    DiftExtractor.name: DiftExtractor,
    Dinov2Extractor.name: Dinov2Extractor,
    SiftExtractor.name: SiftExtractor,
    PatchExtractor.name: PatchExtractor,
}


def make_extractor(name: str, **options) -> Extractor:
    """The extractor called `name`, built with `options`; ValueError for an unknown name."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](**options)
