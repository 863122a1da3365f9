"""Run a loaded FLUX / MOSAIC pipeline on existing images: DIFT features and attention maps.

DIFT (Tang et al. 2023) reads a diffusion model's intermediate activations of a *noised* real
image: encode it with the VAE, add noise at a moderate level t, run one denoiser forward and keep
one block's output, one feature vector per token, averaged over several noisy copies. For FLUX:
x_t = (1 − t)·x_0 + t·ε (rectified flow), the stock transformer forward with an empty prompt,
and a forward hook on the chosen block, whose output is (text tokens, image tokens).

The stock forward equals the MOSAIC forward with no references (docs/DESIGN.md §1); a reference LoRA is
switched off for it, as MOSAIC does for every target branch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mosaic_studio.mosaic.latents import encode_latents, pixels_per_token
from mosaic_studio.mosaic.lora import adapters_disabled
from mosaic_studio.mosaic.probe import AttentionProbe, all_double_blocks
from mosaic_studio.mosaic.transformer import grid_position_ids, mosaic_forward

PROMPT_TOKENS = 32  # T5 length of the (empty) feature prompt: padding beyond this only costs time


def middle_double_block(transformer) -> str:
    """Default DIFT site: the middle double-stream block (DIFT also reads a middle layer)."""
    return f"transformer_blocks.{len(transformer.transformer_blocks) // 2}"


class FluxRunner:
    """Shared VAE / transformer plumbing for DIFT features and the attention segmenter."""

    def __init__(self, pipe, prompt_tokens: int = PROMPT_TOKENS):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.device = pipe.transformer.device
        self.dtype = pipe.transformer.dtype
        self.prompt_tokens = min(prompt_tokens, pipe.tokenizer_2.model_max_length)
        self._prompts: dict[str, tuple] = {}

    @property
    def pixels_per_token(self) -> int:
        return pixels_per_token(self.pipe)

    @torch.no_grad()
    def prompt(self, text: str):
        """(embeds (1, N_txt, C), pooled (1, C_pool), text ids) of `text`, cached."""
        if text not in self._prompts:
            self._prompts[text] = self.pipe.encode_prompt(
                prompt=[text],
                prompt_2=None,
                device=self.device,
                num_images_per_prompt=1,
                max_sequence_length=self.prompt_tokens,
            )
        return self._prompts[text]

    @torch.no_grad()
    def encode(self, images: Sequence[np.ndarray], height: int, width: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """VAE latents of images resized to (height, width), packed: (n, N, C) and (rows, cols)."""
        pils = [Image.fromarray(image).resize((width, height), Image.Resampling.BICUBIC) for image in images]
        pixels = self.pipe.image_processor.preprocess(pils, height=height, width=width)
        return encode_latents(self.pipe, pixels, device=self.device, dtype=self.dtype)

    def model_size(self, image_hw: tuple[int, int], resolution: int | None) -> tuple[int, int]:
        """(height, width) fed to the model: longer side `resolution` (None: the image's own),
        aspect kept, both rounded up to whole tokens."""
        height, width = image_hw
        scale = 1.0 if resolution is None else resolution / max(height, width)
        step = self.pixels_per_token
        return (max(step, math.ceil(height * scale / step) * step), max(step, math.ceil(width * scale / step) * step))

    def _noised(self, clean: torch.Tensor, timestep: float, copies: int, seed: int) -> torch.Tensor:
        """(n·copies, N, C): `copies` noisy versions of each of the n latents, image-major. Every
        image gets the same `seed`ed noise, so its features do not depend on its batch."""
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn((1, copies, *clean.shape[1:]), generator=generator).to(clean)
        noisy = (1 - timestep) * clean[:, None] + timestep * noise  # (n, copies, N, C)
        return noisy.flatten(0, 1)

    def _guidance(self, batch: int):
        if not self.transformer.config.guidance_embeds:
            return None
        return torch.ones(batch, device=self.device)  # references' and unguided value

    def _block(self, block: str) -> torch.nn.Module:
        try:
            return self.transformer.get_submodule(block)
        except AttributeError:
            singles = len(self.transformer.single_transformer_blocks)
            names = all_double_blocks(self.transformer) + [f"single_transformer_blocks.{i}" for i in range(singles)]
            raise ValueError(f"unknown transformer block {block!r}; choose one of {names}") from None

    @torch.no_grad()
    def block_features(
        self,
        images: Sequence[np.ndarray],
        block: str,
        timestep: float,
        copies: int,
        resolution: int | None = None,
        seed: int = 0,
    ) -> list[torch.Tensor]:
        """DIFT: per image, the (C, rows, cols) output of `block` for its image tokens, averaged
        over `copies` noisy versions at noise level `timestep` ∈ [0, 1]. Images that the model
        sees at one size run as one batch."""
        module = self._block(block)
        sizes = [self.model_size(image.shape[:2], resolution) for image in images]
        features: list[torch.Tensor | None] = [None] * len(images)
        for size in dict.fromkeys(sizes):
            members = [i for i, other in enumerate(sizes) if other == size]
            for i, grid in zip(
                members, self._run_block([images[i] for i in members], size, module, timestep, copies, seed)
            ):
                features[i] = grid
        return features

    def _run_block(self, images, size, module, timestep, copies, seed) -> torch.Tensor:
        clean, (rows, cols) = self.encode(images, *size)
        noisy = self._noised(clean, timestep, copies, seed)
        batch = noisy.shape[0]
        embeds, pooled, text_ids = self.prompt("")
        captured = {}
        hook = module.register_forward_hook(lambda _m, _a, output: captured.__setitem__("h", output[1]))
        try:
            with adapters_disabled(self.transformer):
                self.transformer(
                    hidden_states=noisy,
                    encoder_hidden_states=embeds.expand(batch, -1, -1),
                    pooled_projections=pooled.expand(batch, -1),
                    timestep=torch.full((batch,), timestep, device=self.device, dtype=self.dtype),
                    img_ids=grid_position_ids(rows, cols, self.device, self.dtype),
                    txt_ids=text_ids,
                    guidance=self._guidance(batch),
                    return_dict=False,
                )
        finally:
            hook.remove()
        hidden = captured["h"].float().unflatten(0, (len(images), copies))  # (n, copies, N, C)
        return hidden.mean(dim=1).transpose(1, 2).unflatten(2, (rows, cols))  # (n, C, rows, cols)

    @torch.no_grad()
    def attention_overview(
        self,
        target: np.ndarray,
        references: Sequence[np.ndarray],
        caption: str,
        timestep: float,
        blocks: Sequence[str] | None = None,
        reference_size: int | None = None,
        seed: int = 0,
    ) -> np.ndarray:
        """(K, rows, cols): each reference's Eq. 8 attention over the target tokens, averaged
        over its tokens, for the target noised to `timestep` (one MOSAIC forward)."""
        rows, cols = (math.ceil(side / self.pixels_per_token) for side in target.shape[:2])
        clean, _ = self.encode([target], rows * self.pixels_per_token, cols * self.pixels_per_token)
        noisy = self._noised(clean, timestep, 1, seed)
        embeds, pooled, text_ids = self.prompt(caption)
        size = reference_size or self.pipe.default_reference_size(*target.shape[:2])
        reference_latents, ref_ids, _ = self.pipe.encode_references(
            [Image.fromarray(r) for r in references], size, self.device, self.dtype
        )
        probe = AttentionProbe(rows=None)
        with probe.attached(self.transformer, list(blocks or all_double_blocks(self.transformer))):
            mosaic_forward(
                self.transformer,
                noisy,
                encoder_hidden_states=embeds,
                pooled_projections=pooled,
                timestep=torch.full((1,), timestep, device=self.device, dtype=self.dtype),
                img_ids=grid_position_ids(rows, cols, self.device, self.dtype),
                txt_ids=text_ids,
                guidance=self._guidance(1),
                reference_latents=reference_latents.unsqueeze(0),
                reference_ids=ref_ids,
            )
        maps = probe.attention()[0].reshape(len(references), -1, rows * cols).mean(dim=1)  # (K, N_tgt)
        return maps.reshape(len(references), rows, cols).cpu().numpy()
