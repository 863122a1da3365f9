"""The reference→target attention probe of MOSAIC, Eq. 8 (docs/DESIGN.md §4).

For a reference token u and target token v:

    A[u, v] = mean over selected blocks and heads of softmax_v(Q_u · K_v / sqrt(d)),

the softmax taken over target tokens only, with Q/K after the QK-norm and RoPE exactly as the
main attention uses them. The probe is attached to the attention processors of chosen blocks;
each processor hands it that block's reference queries and target keys, and it keeps a running
sum, so memory never depends on the number of blocks or denoising steps. Only the requested rows
are computed: the (N_ref × N_tgt × heads) map is never built, and neither is the full joint map.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from mosaic_studio.mosaic.attention import mosaic_processor

# Rows per chunk when many rows are probed without gradients (the attention record of the
# pipeline): bounds the transient (heads × chunk × N_tgt) score tensor.
DEFAULT_CHUNK_ROWS = 1024


def eq8_rows(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Eq. 8 for one block: head-averaged softmax over target tokens.

    query: (B, R, H, d) reference queries; key: (B, N_tgt, H, d) target keys.
    Returns (B, R, N_tgt), in float32 at least (bf16 softmax rows would be too coarse for a log).
    """
    dtype = torch.promote_types(query.dtype, torch.float32)
    scale = 1.0 / math.sqrt(query.shape[-1])
    scores = torch.einsum("brhd,bnhd->bhrn", query.to(dtype), key.to(dtype)) * scale  # (B, H, R, N_tgt)
    return scores.softmax(dim=-1).mean(dim=1)  # (B, R, N_tgt)


def early_double_blocks(transformer: torch.nn.Module) -> list[str]:
    """The paper's default supervision site (Table 10: early blocks): the first third of the
    double-stream blocks, at least one."""
    count = max(1, len(transformer.transformer_blocks) // 3)
    return [f"transformer_blocks.{i}" for i in range(count)]


def all_double_blocks(transformer: torch.nn.Module) -> list[str]:
    """The authors' released training setting: every double-stream block."""
    return [f"transformer_blocks.{i}" for i in range(len(transformer.transformer_blocks))]


def all_blocks(transformer: torch.nn.Module) -> list[str]:
    singles = [f"single_transformer_blocks.{i}" for i in range(len(transformer.single_transformer_blocks))]
    return all_double_blocks(transformer) + singles


class AttentionProbe:
    """Accumulates Eq. 8 rows over the blocks (and calls) it is attached to.

    rows: indices into the concatenated reference sequence (ref_1 … ref_K, each N_ref tokens),
    shape (R,) shared by the batch or (B, R) per sample; None probes every reference token.
    With gradients enabled the result is differentiable (the training losses); without, rows
    are processed in chunks of `chunk_rows`.
    """

    def __init__(self, rows: torch.Tensor | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS):
        self.rows = rows
        self.chunk_rows = chunk_rows
        self.reset()

    def reset(self) -> None:
        self._total: torch.Tensor | None = None
        self.count = 0

    def observe(self, reference_query: torch.Tensor, target_key: torch.Tensor) -> None:
        """Called by an attached processor: (B, K·N_ref, H, d) queries, (B, N_tgt, H, d) keys."""
        query = self._select_rows(reference_query)  # (B, R, H, d)
        if torch.is_grad_enabled():
            rows = eq8_rows(query, target_key)
        else:
            chunks = query.split(self.chunk_rows, dim=1)
            rows = torch.cat([eq8_rows(chunk, target_key) for chunk in chunks], dim=1)
        self._total = rows if self._total is None else self._total + rows
        self.count += 1

    def attention(self) -> torch.Tensor:
        """(B, R, N_tgt): the mean over everything observed since the last reset."""
        if self._total is None:
            raise RuntimeError("the probe observed nothing: attach it to blocks and run a forward with references")
        return self._total / self.count

    def _select_rows(self, query: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            return query
        rows = self.rows.to(query.device)
        if rows.ndim == 1:
            return query[:, rows]
        index = rows[:, :, None, None].expand(-1, -1, *query.shape[2:])  # (B, R, H, d)
        return query.gather(1, index)

    @contextmanager
    def attached(self, transformer: torch.nn.Module, blocks: Sequence[str]) -> Iterator[AttentionProbe]:
        """Attach to the attention processors of `blocks` (module names, see `early_double_blocks`);
        the transformer must have the MOSAIC processors (`install_mosaic_processors`)."""
        processors = [mosaic_processor(transformer, name) for name in blocks]
        for processor in processors:
            if processor.probe is not None:
                raise RuntimeError("another probe is already attached to these blocks")
            processor.probe = self
        try:
            yield self
        finally:
            for processor in processors:
                processor.probe = None
