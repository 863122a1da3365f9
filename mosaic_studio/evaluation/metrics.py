"""Evaluation metrics as pure functions, each with its definition."""

from __future__ import annotations

import torch


def attention_pck(
    attention: torch.Tensor, tgt_index: torch.Tensor, grid_w: int, radius: int = 1, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention PCK: the fraction of reference points whose probe row peaks within `radius`
    tokens (Chebyshev distance on the target token grid) of the true target token.

    attention: (..., R, N_tgt) Eq. 8 rows; tgt_index: (..., R) true target tokens (row-major,
    `grid_w` tokens per row); valid: (..., R) bool, False on padding. Returns a 0-d tensor.
    """
    predicted = attention.argmax(dim=-1)
    rows = (predicted // grid_w - tgt_index // grid_w).abs()
    cols = (predicted % grid_w - tgt_index % grid_w).abs()
    hit = torch.maximum(rows, cols) <= radius
    if valid is not None:
        hit = hit[valid]
    if hit.numel() == 0:
        raise ValueError("attention_pck: no valid points")
    return hit.float().mean()
