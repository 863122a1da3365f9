"""Rectified-flow training objective of FLUX (L_diff in Eq. 15, docs/DESIGN.md §4), in the spirit of minRF.

x_t = (1 − t)·x_0 + t·ε and the model predicts the velocity ε − x_0. Timesteps are
logit-normal, then shifted towards noise for larger images exactly as the FLUX scheduler shifts
its sampling sigmas: mu grows linearly with the token count between two anchors
(`mosaic.latents.resolution_shift`, the pipeline's own).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mosaic_studio.mosaic.latents import resolution_shift


def sample_timesteps(batch: int, num_tokens: int, scheduler_config, generator: torch.Generator, mean=0.0, std=1.0):
    """(batch,) t in (0, 1): sigmoid of a normal, then the resolution shift t ↦ e^mu / (e^mu + 1/t − 1)."""
    t = torch.sigmoid(mean + std * torch.randn(batch, generator=generator))
    mu = resolution_shift(num_tokens, scheduler_config)
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - t) * x0 + t * noise


def flow_matching_loss(
    prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """L_diff: the squared error of the velocity prediction, its mean ("mean") or per sample, (B,) ("per_sample")."""
    if reduction == "mean":
        return F.mse_loss(prediction.float(), (noise - x0).float())
    if reduction == "per_sample":
        return F.mse_loss(prediction.float(), (noise - x0).float(), reduction="none").flatten(1).mean(1)
    raise ValueError(f"reduction must be 'mean' or 'per_sample', got {reduction!r}")
