"""What one browser session keeps between events: its latest generation.

A `Generation` holds the images, the reference images as the model saw them (after the
official preprocessing) and the attention recorded while generating, so the Attention tab answers a
click by indexing stored maps, never by generating again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from mosaic_studio.mosaic.record import AttentionRecord


@dataclass
class Generation:
    settings: dict  # prompt, seed, sizes, steps, … as written into the PNGs
    images: list[Image.Image]
    reference_images: list[Image.Image]  # preprocessed, reference_size × reference_size
    categories: list[str]  # one tag per reference (the review store's strata)
    record: AttentionRecord | None  # None without references
    paths: list[str]  # the PNG files, with metadata

    @property
    def blocks(self) -> list[str]:
        """The recorded blocks in model order (double blocks, then single blocks)."""
        return self.record.blocks if self.record is not None else []

    def block_range(self, first, last) -> list[str]:
        """Recorded blocks first..last (0-based indices into `blocks`, inclusive, either order)."""
        if not self.blocks:
            raise ValueError("this generation recorded no attention (it had no references)")
        first, last = sorted((_index(first, "first block"), _index(last, "last block")))
        if last >= len(self.blocks):
            raise ValueError(
                f"block {last} was not recorded; recorded: 0–{len(self.blocks) - 1} ({', '.join(self.blocks)})"
            )
        return self.blocks[first : last + 1]

    def maps(self, first: int, last: int) -> torch.Tensor:
        """(num_images, K, N_ref, N_tgt) averaged over blocks first..last (the record caches
        the latest range, so clicks after a block change cost one average, then an index)."""
        return self.record.maps(self.block_range(first, last))


def _index(value, what: str) -> int:
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a block index, got {value!r}") from None
    if index < 0:
        raise ValueError(f"{what} must be >= 0, got {index}")
    return index
