"""FLUX latent conventions shared by the pipeline, the trainer and the annotator.

Pixels → VAE latents → shift/scale → 2×2 packing into tokens, the pixels one token covers, and
the resolution-dependent timestep shift (mu) of FLUX's scheduler. One definition each, so
generation, training and feature extraction cannot drift apart.
"""

from __future__ import annotations

import torch
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from mosaic_studio.mosaic.transformer import reference_position_ids


def pixels_per_token(pipe) -> int:
    """Image pixels per latent token side: the VAE factor times FLUX's 2×2 packing."""
    return pipe.vae_scale_factor * 2


@torch.no_grad()
def encode_latents(pipe, pixels: torch.Tensor, device=None, dtype=None, generator: torch.Generator | None = None):
    """(N, 3, H, W) pixels in [-1, 1] → packed latent tokens (N, n, 4·C_lat) and their (rows, cols) grid.

    Latents are shifted and scaled by the VAE config, as FLUX expects. With a `generator` the
    posterior is sampled (training: a little augmentation); without, its mode is used, so a
    generation depends only on its seed. device: where the VAE runs (default: the VAE's device;
    differs under model offloading). dtype: of the returned tokens (default: the VAE's).
    """
    vae = pipe.vae
    dist = vae.encode(pixels.to(device or vae.device, vae.dtype)).latent_dist
    latents = dist.sample(generator) if generator is not None else dist.mode()  # (N, C_lat, h, w)
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    n, channels, height, width = latents.shape
    tokens = pipe._pack_latents(latents, n, channels, height, width)
    return (tokens if dtype is None else tokens.to(dtype)), (height // 2, width // 2)


def encode_reference_pixels(pipe, reference_pixels: torch.Tensor):
    """(B, K, 3, h, w) reference pixels in [-1, 1] → reference_latents (B, K, N_ref, 4·C_lat), the
    posterior mode, and their position ids (K·N_ref, 3): the batched form of the pipeline's
    reference encoding, for training and evaluation."""
    b, k = reference_pixels.shape[:2]
    latents, grid = encode_latents(pipe, reference_pixels.flatten(0, 1))  # (B·K, N_ref, 4·C_lat)
    reference_latents = latents.reshape(b, k, *latents.shape[1:])  # (B, K, N_ref, 4·C_lat)
    return reference_latents, reference_position_ids(k, *grid, device=latents.device, dtype=latents.dtype)


def resolution_shift(num_tokens: int, scheduler_config) -> float:
    """mu of FLUX's dynamic shifting for an image of `num_tokens` latent tokens (diffusers'
    `calculate_shift`, with the scheduler's anchors or FLUX's defaults)."""
    get = scheduler_config.get
    return calculate_shift(
        num_tokens,
        get("base_image_seq_len", 256),
        get("max_image_seq_len", 4096),
        get("base_shift", 0.5),
        get("max_shift", 1.15),
    )
