"""Attention recorded during generation, for the Attention inspector.

One `AttentionProbe` per recorded block accumulates every reference token's Eq. 8 row over
the steps of one step bin at a time (docs/DESIGN.md §8): the recorded steps are cut into at most
`DEFAULT_BINS` equal-width bins, each kept as the mean over its steps, so memory is
(blocks × bins × images × K·N_ref × N_tgt) whatever the number of steps, and any contiguous
range of bins can be averaged after generating. `AttentionRecord` turns it into per-reference
maps and pixel-space heatmaps.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from numbers import Integral, Real

import torch

from mosaic_studio.mosaic.probe import AttentionProbe

DEFAULT_BINS = 10  # step bins a record keeps (fewer when fewer steps are recorded)
MAP_BYTES = 4  # float32: the probe's rows are float32 at least (probe.eq8_rows)


def step_bins(steps: tuple[int, int], max_bins: int = DEFAULT_BINS) -> tuple[int, ...]:
    """Edges of the step bins over the recorded steps [start, end): B = min(end − start, max_bins)
    bins, bin b covering steps [edges[b], edges[b + 1]) with edges[b] = start + ⌊b·n / B⌋
    (n = end − start). Equal widths where B divides n; otherwise widths differ by one step at most,
    and no bin is empty."""
    if not isinstance(max_bins, Integral) or isinstance(max_bins, bool) or max_bins < 1:
        raise ValueError(f"max_bins must be an int >= 1, got {max_bins!r}")
    start, end = (int(step) for step in steps)
    if not 0 <= start < end:
        raise ValueError(f"recorded steps must satisfy 0 <= start < end, got {tuple(steps)!r}")
    count = min(end - start, max_bins)
    return tuple(start + b * (end - start) // count for b in range(count + 1))


def record_bytes(*, num_images: int, num_refs: int, ref_tokens: int, target_tokens: int, bins: int) -> int:
    """Bytes one recorded block keeps: a float32 (K·N_ref × N_tgt) map per image and bin, plus
    one more for the mean over all recorded steps (`AttentionRecord.per_block`)."""
    return MAP_BYTES * num_images * num_refs * ref_tokens * target_tokens * (bins + 1)


@dataclass
class AttentionRecord:
    """Reference→target attention of one generation.

    per_block: block name → (num_images, K, N_ref, N_tgt), each averaged over heads and all the
    recorded steps. per_bin: block name → (bins, num_images, K, N_ref, N_tgt), bin b the mean over
    steps [bin_edges[b], bin_edges[b + 1]) (`step_bins`); None (a record made by hand) means one
    bin, the whole of `steps`. Grids are (rows, cols) in tokens; `pixels_per_token` maps them to
    pixels.
    """

    per_block: dict[str, torch.Tensor]
    reference_grid: tuple[int, int]
    target_grid: tuple[int, int]
    steps: tuple[int, int]
    pixels_per_token: int
    # how the maps were made (docs/DESIGN.md §7): fast mode (references saw only themselves) and
    # the per-reference strengths s_k (None: not stated, i.e. all 1)
    reference_cache: bool = False
    reference_strengths: tuple[float, ...] | None = None
    per_bin: dict[str, torch.Tensor] | None = None
    bin_edges: tuple[int, ...] | None = None
    # the latest block and step selection's average, so repeated clicks cost an index, not an average
    _cached: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.per_bin is None:
            if self.bin_edges is not None:
                raise ValueError("bin_edges were given without per_bin")
            self.per_bin = {name: maps.unsqueeze(0) for name, maps in self.per_block.items()}  # views
            self.bin_edges = tuple(self.steps)
        self.bin_edges = tuple(int(edge) for edge in self.bin_edges)
        _check_bins(self.per_block, self.per_bin, self.bin_edges, self.steps)

    @property
    def blocks(self) -> list[str]:
        return list(self.per_block)

    @property
    def num_bins(self) -> int:
        return len(self.bin_edges) - 1

    @property
    def bin_step_counts(self) -> tuple[int, ...]:
        """Steps per bin: each bin's weight in an average over several bins."""
        return tuple(b - a for a, b in zip(self.bin_edges, self.bin_edges[1:]))

    def bin_span(self, bins: tuple[int, int] | None = None) -> tuple[int, int]:
        """`bins` = (first, last), 0-based and inclusive, checked; None: every bin."""
        if bins is None:
            return (0, self.num_bins - 1)
        first, last = bins
        for value in (first, last):
            if not isinstance(value, Integral) or isinstance(value, bool):
                raise ValueError(f"step bins must be ints, got {bins!r}")
        if not 0 <= first <= last < self.num_bins:
            raise ValueError(f"step bins {tuple(bins)} do not lie in 0–{self.num_bins - 1} ({self.num_bins} recorded)")
        return (int(first), int(last))

    def bin_steps(self, bins: tuple[int, int] | None = None) -> tuple[int, int]:
        """The denoising steps [start, end) (0-based) that bins first..last cover."""
        first, last = self.bin_span(bins)
        return (self.bin_edges[first], self.bin_edges[last + 1])

    def maps(self, blocks: Sequence[str] | None = None, bins: tuple[int, int] | None = None) -> torch.Tensor:
        """(num_images, K, N_ref, N_tgt) averaged over `blocks` (default: all recorded) and over the
        steps of bins first..last (`bins`, see `bin_span`; default: every recorded step). Bins are
        weighted by their step counts, so the result is the mean over those steps."""
        names = tuple(self.blocks if blocks is None else blocks)
        span = self.bin_span(bins)
        if (names, span) not in self._cached:
            unknown = [name for name in names if name not in self.per_block]
            if unknown or not names:
                raise ValueError(f"blocks {unknown or list(names)} were not recorded; recorded: {self.blocks}")
            self._cached.clear()
            self._cached[names, span] = self._average(names, span)
        return self._cached[names, span]

    def _average(self, names: tuple[str, ...], span: tuple[int, int]) -> torch.Tensor:
        # Summed block by block: no (blocks × bins × …) stack is ever built.
        first, last = span
        if span == (0, self.num_bins - 1):
            parts = (self.per_block[name] for name in names)  # already the mean over every recorded step
        else:
            counts = torch.tensor(self.bin_step_counts[first : last + 1], dtype=torch.float64)
            weights = counts / counts.sum()
            parts = (
                torch.tensordot(weights.to(self.per_bin[name].dtype), self.per_bin[name][first : last + 1], dims=1)
                for name in names
            )
        total = None
        for part in parts:
            total = part.clone() if total is None else total.add_(part)
        return total / len(names)

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

    def heatmap(self, reference: int, x: float, y: float, image: int = 0, blocks=None, bins=None) -> torch.Tensor:
        """(rows, cols) attention of reference pixel (x, y) over the target token grid, averaged
        over `blocks` and the steps of `bins` (as in `maps`).

        reference and image are 0-based; negative indices are refused, not counted from the end,
        so an off-by-one in a caller fails instead of showing the last reference."""
        maps = self.maps(blocks, bins)  # (num_images, K, N_ref, N_tgt)
        _check_index("reference", reference, maps.shape[1])
        _check_index("image", image, maps.shape[0])
        row = maps[image, reference, self.reference_token(x, y)]  # (N_tgt,)
        return row.reshape(self.target_grid)

    def overview(self, image: int = 0, blocks=None, bins=None) -> torch.Tensor:
        """(K, rows, cols): each reference's attention averaged over all its tokens."""
        maps = self.maps(blocks, bins)[image].mean(dim=1)  # (K, N_tgt)
        return maps.reshape(-1, *self.target_grid)


def _check_bins(per_block: dict, per_bin: dict, edges: tuple[int, ...], steps) -> None:
    """Bins that tile `steps` and maps that match `per_block` block by block."""
    if len(edges) < 2 or edges[0] != steps[0] or edges[-1] != steps[1] or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"bin_edges {edges} must rise strictly from {steps[0]} to {steps[1]} (the recorded steps)")
    if set(per_bin) != set(per_block):
        raise ValueError(f"per_bin blocks {list(per_bin)} differ from per_block blocks {list(per_block)}")
    for name, bins in per_bin.items():
        if tuple(bins.shape) != (len(edges) - 1, *per_block[name].shape):
            raise ValueError(
                f"{name}: per_bin shape {tuple(bins.shape)} is not ({len(edges) - 1} bins, "
                f"*{tuple(per_block[name].shape)})"
            )


def _check_index(label: str, value, count: int) -> None:
    if not isinstance(value, Integral) or isinstance(value, bool):
        raise IndexError(f"{label} must be an int in [0, {count - 1}], got {value!r}")
    if not 0 <= value < count:
        raise IndexError(f"{label}={value} is outside [0, {count - 1}] ({count} recorded)")


class AttentionRecorder:
    """Owns one probe per block; attach it around the conditional forward of every recorded step.

    The recorded steps are kept in `step_bins(steps, max_bins)` bins. The probes accumulate the
    open bin on the model's device; once a step of the next bin arrives, each block's mean over
    the bin moves to the CPU (one slot of a preallocated (bins × …) tensor) and the probe starts
    afresh. The device thus holds one bin's sums, the CPU the record, whatever the step count.
    """

    def __init__(self, transformer, blocks: Sequence[str], steps: tuple[int, int], max_bins: int = DEFAULT_BINS):
        self.transformer = transformer
        self.steps = tuple(steps)
        self.bin_edges = step_bins(self.steps, max_bins)
        self.probes = {name: AttentionProbe(rows=None) for name in blocks}
        self._bins: dict[str, torch.Tensor] = {}  # name → (bins, B, K·N_ref, N_tgt) on the CPU
        self._open: int | None = None  # the bin the probes are accumulating
        self._seen = [0] * (len(self.bin_edges) - 1)  # steps recorded per bin

    def wants(self, step: int) -> bool:
        start, end = self.steps
        return start <= step < end

    def bin_of(self, step: int) -> int:
        """The bin (0-based) of recorded step `step`."""
        return bisect.bisect_right(self.bin_edges, step) - 1

    @contextmanager
    def attached(self, *, step: int) -> Iterator[None]:
        """Record denoising step `step` (0-based, one of `steps`) during the enclosed forward."""
        if not self.wants(step):
            raise ValueError(f"step {step} is outside the recorded steps [{self.steps[0]}, {self.steps[1]})")
        index = self.bin_of(step)
        if index != self._open:
            self._close_bin()
            self._open = index
        with ExitStack() as stack:
            for name, probe in self.probes.items():
                stack.enter_context(probe.attached(self.transformer, [name]))
            yield
        self._seen[index] += 1

    def _close_bin(self) -> None:
        """Move the open bin's means to the CPU and reset the probes."""
        if self._open is None:
            return
        for name, probe in self.probes.items():
            mean = probe.attention()  # (B, K·N_ref, N_tgt)
            if name not in self._bins:
                self._bins[name] = torch.empty((len(self._seen), *mean.shape), dtype=mean.dtype)
            self._bins[name][self._open].copy_(mean)
            probe.reset()
        self._open = None

    def record(self, num_refs: int, reference_grid, target_grid, pixels_per_token: int) -> AttentionRecord:
        self._close_bin()
        wanted = [b - a for a, b in zip(self.bin_edges, self.bin_edges[1:])]
        if self._seen != wanted:
            raise RuntimeError(
                f"steps recorded per bin {self._seen} differ from the bins' {wanted} (edges {self.bin_edges}): "
                f"attach the recorder at every step of {self.steps}"
            )
        weights = torch.tensor(wanted, dtype=torch.float64) / sum(wanted)
        per_bin, per_block = {}, {}
        for name, bins in self._bins.items():  # (bins, B, K·N_ref, N_tgt) → (bins, B, K, N_ref, N_tgt)
            per_bin[name] = bins.reshape(*bins.shape[:2], num_refs, -1, bins.shape[-1])
            per_block[name] = torch.tensordot(weights.to(bins.dtype), per_bin[name], dims=1)
        return AttentionRecord(
            per_block,
            tuple(reference_grid),
            tuple(target_grid),
            self.steps,
            pixels_per_token,
            per_bin=per_bin,
            bin_edges=self.bin_edges,
        )
