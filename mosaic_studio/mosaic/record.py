"""Attention recorded during generation, for the Attention inspector.

One `AttentionProbe` per recorded block accumulates, over the chosen denoising steps, every
reference token's Eq. 8 row; memory is (blocks × images × K·N_ref × N_tgt) whatever the number
of steps. `AttentionRecord` turns it into per-reference maps and pixel-space heatmaps.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from numbers import Integral, Real

import torch

from mosaic_studio.mosaic.probe import AttentionProbe


@dataclass
class AttentionRecord:
    """Reference→target attention of one generation.

    per_block: block name → (num_images, K, N_ref, N_tgt), each averaged over heads and the
    recorded steps. Grids are (rows, cols) in tokens; `pixels_per_token` maps them to pixels.
    """

    per_block: dict[str, torch.Tensor]
    reference_grid: tuple[int, int]
    target_grid: tuple[int, int]
    steps: tuple[int, int]
    pixels_per_token: int
    # the latest block selection's average, so repeated clicks cost an index, not an average
    _cached: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def blocks(self) -> list[str]:
        return list(self.per_block)

    def maps(self, blocks: Sequence[str] | None = None) -> torch.Tensor:
        """(num_images, K, N_ref, N_tgt) averaged over `blocks` (default: all recorded)."""
        names = tuple(self.blocks if blocks is None else blocks)
        if names not in self._cached:
            unknown = [name for name in names if name not in self.per_block]
            if unknown or not names:
                raise ValueError(f"blocks {unknown or list(names)} were not recorded; recorded: {self.blocks}")
            self._cached.clear()
            self._cached[names] = torch.stack([self.per_block[name] for name in names]).mean(dim=0)
        return self._cached[names]

    def reference_token(self, x: float, y: float) -> int:
        """Token index (row-major) of reference pixel (x, y), with 0 ≤ x < width and 0 ≤ y < height
        of the reference in pixels; ValueError names a coordinate outside it. No clamping here: a
        silently moved point would show another token's map (callers clamp clicks themselves)."""
        rows, cols = self.reference_grid
        for label, value, side in (("x", x, cols), ("y", y, rows)):
            limit = side * self.pixels_per_token
            if not (isinstance(value, Real) and not isinstance(value, bool) and 0 <= value < limit):
                raise ValueError(f"{label}={value} is outside [0, {limit}) (the reference's pixels)")
        return int(y // self.pixels_per_token) * cols + int(x // self.pixels_per_token)

    def heatmap(self, reference: int, x: float, y: float, image: int = 0, blocks=None) -> torch.Tensor:
        """(rows, cols) attention of reference pixel (x, y) over the target token grid.

        reference and image are 0-based; negative indices are refused, not counted from the end,
        so an off-by-one in a caller fails instead of showing the last reference."""
        maps = self.maps(blocks)  # (num_images, K, N_ref, N_tgt)
        _check_index("reference", reference, maps.shape[1])
        _check_index("image", image, maps.shape[0])
        row = maps[image, reference, self.reference_token(x, y)]  # (N_tgt,)
        return row.reshape(self.target_grid)

    def overview(self, image: int = 0, blocks=None) -> torch.Tensor:
        """(K, rows, cols): each reference's attention averaged over all its tokens."""
        maps = self.maps(blocks)[image].mean(dim=1)  # (K, N_tgt)
        return maps.reshape(-1, *self.target_grid)


def _check_index(label: str, value, count: int) -> None:
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise IndexError(f"{label} must be an int in [0, {count - 1}], got {value!r}")
    if not 0 <= value < count:
        raise IndexError(f"{label}={value} is outside [0, {count - 1}] ({count} recorded)")


class AttentionRecorder:
    """Owns one probe per block; attach it around the conditional forward of chosen steps."""

    def __init__(self, transformer, blocks: Sequence[str], steps: tuple[int, int]):
        self.transformer = transformer
        self.steps = steps
        self.probes = {name: AttentionProbe(rows=None) for name in blocks}

    def wants(self, step: int) -> bool:
        start, end = self.steps
        return start <= step < end

    @contextmanager
    def attached(self) -> Iterator[None]:
        with ExitStack() as stack:
            for name, probe in self.probes.items():
                stack.enter_context(probe.attached(self.transformer, [name]))
            yield

    def record(self, num_refs: int, reference_grid, target_grid, pixels_per_token: int) -> AttentionRecord:
        per_block = {}
        for name, probe in self.probes.items():
            rows = probe.attention()  # (B, K·N_ref, N_tgt)
            per_block[name] = rows.reshape(rows.shape[0], num_refs, -1, rows.shape[-1]).cpu()
        return AttentionRecord(per_block, tuple(reference_grid), tuple(target_grid), self.steps, pixels_per_token)
