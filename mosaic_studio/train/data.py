"""Training batches from SemAlign-MS samples: the synthetic world or a dataset folder, optionally
mixed with a folder of composed multi-subject samples (data.composed, data.composed_fraction).

Batch `step` of a run is a pure function of (data seed, step, process rank), so a resumed run
sees exactly the batches an uninterrupted run would. All samples of a batch have the same
number of references K (the transformer takes one K per forward), drawn per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mosaic_studio.mosaic.data.semalign import (
    MAX_REFERENCES,
    Sample,
    SemAlignDataset,
    pixel_to_token,
    sample_points,
    token_grid,
)
from mosaic_studio.train.config import ConfigError, DataConfig
from mosaic_studio.world.synthetic import WorldConfig, generate_sample

_BATCH_SALT = 0xBA7C4  # separates batch-level draws (K, drops) from the world's own streams
_SCENE_TRIES = 20
_RETRY_STRIDE = 1 << 40  # retry indices start far beyond any run's own sample indices


@dataclass
class Batch:
    """Pixels in [-1, 1]; correspondences as token indices for the Eq. 8 probe.

    rows: (B, K·P) index of each point's reference token in the concatenated references
    (reference k's token u → k·N_ref + u); tgt_index: (B, K·P) target token; ref_index: (B, K·P)
    reference of each point; valid: (B, K·P) False on padding (a reference with < P points).
    """

    target: torch.Tensor  # (B, 3, H, W)
    captions: list[str]
    reference_pixels: torch.Tensor | None  # (B, K, 3, h, w) or None (text-only batch, or dropped)
    rows: torch.Tensor | None = None
    tgt_index: torch.Tensor | None = None
    ref_index: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    sample_ids: list[str] | None = None  # the samples this batch (one process's shard) holds, in order

    @property
    def num_refs(self) -> int:
        return 0 if self.reference_pixels is None else self.reference_pixels.shape[1]


def to_pixels(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images → (N, 3, H, W) float in [-1, 1]."""
    array = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def correspondence_indices(samples: list[Sample], points: int, token_size: int, rng: np.random.Generator):
    """Sample P_k points per reference and convert them to the probe's index tensors."""
    num_refs = len(samples[0].references)
    width = num_refs * points
    rows, tgt, ref, valid = (np.zeros((len(samples), width), dtype) for dtype in (np.int64, np.int64, np.int64, bool))
    for b, sample in enumerate(samples):
        _, tgt_w = token_grid(*sample.target.shape[:2], token_size)
        ref_h, ref_w = token_grid(*sample.references[0].image.shape[:2], token_size)
        for k, (u, v) in enumerate(sample_points(sample, points, rng, token_size=token_size)):
            n, start = len(u), k * points
            rows[b, start : start + n] = k * ref_h * ref_w + pixel_to_token(u, token_size, ref_w)
            tgt[b, start : start + n] = pixel_to_token(v, token_size, tgt_w)
            ref[b, start : start + points] = k
            valid[b, start : start + n] = True
    return tuple(torch.from_numpy(a) for a in (rows, tgt, ref, valid))


def drawable_points(sample: Sample, token_size: int) -> list[int]:
    """Per reference, the most correspondences `correspondence_indices` can draw for it: one per
    target token among its stored points, so any P_k at or above this draws the same points.
    The target's token grid alone sets it; the reference's size does not."""
    unbounded = max(len(r.target_points) for r in sample.references)  # never subsampled: no rng draw
    return [len(v) for _, v in sample_points(sample, unbounded, np.random.default_rng(0), token_size=token_size)]


def collate(
    samples: list[Sample], captions: list[str], points: int, token_size: int, rng, with_references: bool = True
) -> Batch:
    """Samples with the same K → a Batch; P_k = `points` correspondences per reference."""
    target = to_pixels([s.target for s in samples])
    if not with_references:
        return Batch(target, captions, None)
    reference_pixels = torch.stack([to_pixels([r.image for r in s.references]) for s in samples])
    return Batch(target, captions, reference_pixels, *correspondence_indices(samples, points, token_size, rng))


def generate_exact(seed: int, index: int, split: str, world: WorldConfig, count: int | None) -> Sample:
    """Scene `index` of the world, with exactly `count` subjects (None: any number).

    The world drops a subject it cannot place visibly, so its subject count is a maximum; a
    scene that comes out short is replaced by one from a disjoint index range.
    """
    for attempt in range(_SCENE_TRIES):
        sample = generate_sample(seed, index + attempt * _RETRY_STRIDE, split, world)
        if count is None or len(sample.references) == count:
            return sample
    raise RuntimeError(f"the synthetic world could not place {count} subjects in {_SCENE_TRIES} scenes")


class BatchSource:
    """Deterministic batches for one stage. `with_references` is False for the base/VAE stages."""

    def __init__(
        self,
        config: DataConfig,
        batch_size: int,
        token_size: int,
        with_references: bool,
        points: int = 0,
        reference_batches: float = 1.0,
    ):
        """reference_batches: with `with_references`, the fraction of batches that carry them (the
        base stage's `data.reference_batches`); below 1 it costs one extra draw per batch, so runs
        at 1 see exactly the batches they always saw."""
        self.config, self.batch_size, self.token_size = config, batch_size, token_size
        self.with_references, self.points, self.reference_batches = with_references, points, reference_batches
        self.folder = None if config.source == "synthetic" else FolderSamples(config)
        self.composed = FolderSamples(config, key="composed") if config.composed else None

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> Batch:
        """Shard `rank` of `world_size` of step `step`'s global batch: the synthetic world's scenes
        (step·world_size + rank)·batch_size onwards, so shards never overlap (a dataset folder is
        drawn from at random, with replacement, by each shard's own stream). The trainer numbers
        its shards process_index × gradient accumulation + micro-batch, so a run's global batches
        depend on the number of shards, not on how they are spread over processes."""
        rng = np.random.default_rng([_BATCH_SALT, self.config.seed, step, rank])
        num_refs = int(rng.integers(self.config.min_subjects, self.config.max_subjects + 1))
        carries = self.with_references and (self.reference_batches >= 1 or rng.random() < self.reference_batches)
        # data.composed_fraction: one more draw per batch, only when data.composed is set, so runs
        # without composed samples see exactly the batches they always saw.
        composed = carries and self.composed is not None and rng.random() < self.config.composed_fraction
        first = (step * world_size + rank) * self.batch_size
        samples = [
            self._sample(first + j, num_refs if carries else None, rng, composed) for j in range(self.batch_size)
        ]
        captions = [("" if rng.random() < self.config.caption_drop else s.caption) for s in samples]
        keep_refs = carries and not rng.random() < self.config.reference_drop
        batch = collate(samples, captions, self.points, self.token_size, rng, keep_refs)
        batch.sample_ids = [s.sample_id for s in samples]
        return batch

    def _sample(self, index: int, count: int | None, rng: np.random.Generator, composed: bool = False) -> Sample:
        """Sample `index` with exactly `count` subjects, or any number when None; from
        data.composed when `composed` (the reference count nearest to `count` it holds)."""
        if composed:
            return self.composed.sample(count, rng)
        if self.folder is not None:
            return self.folder.sample(count, rng)
        world = WorldConfig(
            target_size=self.config.target_size,
            ref_size=self.config.ref_size,
            token_size=self.token_size,
            min_subjects=count or self.config.min_subjects,
            max_subjects=count or self.config.max_subjects,
        )
        return generate_exact(self.config.seed, index, "train", world, count)


class FolderSamples:
    """A SemAlign-MS dataset folder, bucketed by reference count and resized to the run's sizes."""

    def __init__(self, config: DataConfig, key: str = "source"):
        """key: the config key naming the folder, data.source or data.composed."""
        self.config = config
        folder = getattr(config, key)
        if not Path(folder).is_dir():
            expected = "neither 'synthetic' nor a dataset folder" if key == "source" else "not a dataset folder"
            raise ConfigError(f"data.{key} {folder!r} is {expected}")
        self.dataset = SemAlignDataset(folder)
        self.buckets: dict[int, list[int]] = {}  # reference count → sample indices
        for index in range(len(self.dataset)):
            self.buckets.setdefault(self.dataset.num_references(index), []).append(index)
        if not self.buckets:
            raise ConfigError(f"data.{key}: no samples found under {folder!r}")

    def sample(self, num_refs: int | None, rng: np.random.Generator) -> Sample:
        counts = sorted(self.buckets) if num_refs is None else [num_refs]
        if num_refs is not None and num_refs not in self.buckets:
            counts = [min(self.buckets, key=lambda c: abs(c - num_refs))]
        pool = self.buckets[int(rng.choice(counts))]
        return resize_sample(self.dataset[pool[int(rng.integers(len(pool)))]], self.config)


def _resize(image: np.ndarray, size: int) -> tuple[np.ndarray, float, float]:
    h, w = image.shape[:2]
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
    return resized, size / w, size / h


def resize_sample(sample: Sample, config: DataConfig) -> Sample:
    """Square-resize target and references to the run's sizes, scaling points and masks with them."""
    target, sx, sy = _resize(sample.target, config.target_size)
    refs = []
    for r in sample.references[:MAX_REFERENCES]:
        image, rx, ry = _resize(r.image, config.ref_size)
        mask = np.asarray(Image.fromarray(r.mask).resize((config.target_size,) * 2, Image.Resampling.NEAREST))
        refs.append(type(r)(image, mask, r.ref_points * (rx, ry), r.target_points * (sx, sy), r.category, r.label))
    return Sample(sample.sample_id, target, sample.caption, refs, sample.masks_exclusive, sample.meta)
