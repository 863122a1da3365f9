"""Rectified-flow training objective of FLUX (SPEC §3, L_diff), in the spirit of minRF.

x_t = (1 − t)·x_0 + t·ε and the model predicts the velocity ε − x_0. Timesteps are
logit-normal, then shifted towards noise for larger images exactly as the FLUX scheduler shifts
its sampling sigmas: mu grows linearly with the token count between two anchors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resolution_shift(num_tokens: int, scheduler_config) -> float:
    """mu of FLUX's dynamic shifting for an image of `num_tokens` latent tokens."""
    get = scheduler_config.get
    base_len, max_len = get("base_image_seq_len", 256), get("max_image_seq_len", 4096)
    base_shift, max_shift = get("base_shift", 0.5), get("max_shift", 1.15)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return num_tokens * slope + base_shift - slope * base_len


def sample_timesteps(batch: int, num_tokens: int, scheduler_config, generator: torch.Generator, mean=0.0, std=1.0):
    """(batch,) t in (0, 1): sigmoid of a normal, then the resolution shift t ↦ e^mu / (e^mu + 1/t − 1)."""
    t = torch.sigmoid(mean + std * torch.randn(batch, generator=generator))
    mu = resolution_shift(num_tokens, scheduler_config)
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x0.ndim - 1)))
    return (1 - t) * x0 + t * noise


def flow_matching_loss(prediction: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(prediction.float(), (noise - x0).float())
