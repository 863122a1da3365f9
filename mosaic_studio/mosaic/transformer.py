"""The MOSAIC multi-branch forward of a stock diffusers `FluxTransformer2DModel`.

Branches, in order: text, target (noisy latent), ref_1 … ref_K (docs/DESIGN.md §1).
- text and target use timestep t (and the requested guidance); references use t = 0 (and
  guidance 1.0); all branches share the pooled text projection;
- reference k (0-based) sits on its own token grid shifted left by (k+1)·W_ref columns;
- the group mask (§2) and the Eq. 8 probe (§4) live in `MosaicAttnProcessor`, which
  `install_mosaic_processors` puts on every block once;
- the reference LoRA (peft, on the stock modules) acts on reference tokens only (§3).
With K = 0 and no LoRA the result equals `FluxTransformer2DModel.forward`.

Names: `reference_latents` are the packed VAE latents (B, K, N_ref, C); after the x_embedder they
are `reference_tokens` (B, K·N_ref, D), carried between blocks in a `ReferenceStream`.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils.checkpoint import checkpoint

from mosaic_studio.mosaic.attention import ReferenceStream, check_mosaic_processors
from mosaic_studio.mosaic.blocks import double_block_forward, single_block_forward
from mosaic_studio.mosaic.lora import adapters_disabled

TIMESTEP_SCALE = 1000  # FLUX embeds t ∈ [0, 1] (and guidance) multiplied by 1000
REFERENCE_TIMESTEP = 0.0  # references are clean latents
REFERENCE_GUIDANCE = 1.0  # references carry no guidance


def grid_position_ids(height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(height·width, 3) FLUX image position ids: (0, row, col), row-major like the packed tokens."""
    rows = torch.arange(height, device=device, dtype=dtype)[:, None].expand(height, width)
    cols = torch.arange(width, device=device, dtype=dtype)[None, :].expand(height, width)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(height * width, 3)


def reference_position_ids(num_refs: int, height: int, width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(K·height·width, 3) ids of K references on a (height, width) token grid: reference k's
    columns shifted by −(k+1)·width, so each sits to the left of the target and of each other."""
    grid = grid_position_ids(height, width, device, dtype)
    shifts = [grid - torch.tensor([0, 0, (k + 1) * width], device=device, dtype=dtype) for k in range(num_refs)]
    return torch.cat(shifts, dim=0)


def _time_embedding(transformer, timestep, guidance, pooled, dtype) -> torch.Tensor:
    timestep = timestep.to(dtype) * TIMESTEP_SCALE
    if not transformer.config.guidance_embeds:
        return transformer.time_text_embed(timestep, pooled)
    guidance = guidance.to(dtype) * TIMESTEP_SCALE
    return transformer.time_text_embed(timestep, guidance, pooled)


def mosaic_forward(
    transformer,
    hidden_states: torch.Tensor,
    *,
    encoder_hidden_states: torch.Tensor,
    pooled_projections: torch.Tensor,
    timestep: torch.Tensor,
    img_ids: torch.Tensor,
    txt_ids: torch.Tensor,
    guidance: torch.Tensor | None = None,
    reference_latents: torch.Tensor | None = None,
    reference_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Predict the flow for the target tokens.

    transformer: a FluxTransformer2DModel with the MOSAIC processors installed
    (`install_mosaic_processors`). hidden_states: (B, N_tgt, C) packed noisy target;
    encoder_hidden_states: (B, N_txt, C_txt); pooled_projections: (B, C_pool); timestep,
    guidance: (B,) in [0, 1] (guidance as a scale, only for models with `guidance_embeds`);
    img_ids (N_tgt, 3), txt_ids (N_txt, 3);
    reference_latents: (B, K, N_ref, C) packed clean reference latents or None;
    reference_ids: (K·N_ref, 3), see `reference_position_ids`.
    Returns (B, N_tgt, C_out).
    """
    if transformer.config.guidance_embeds and guidance is None:
        raise ValueError("this transformer has guidance_embeds: pass `guidance`")
    check_mosaic_processors(transformer)
    num_refs = 0 if reference_latents is None else reference_latents.shape[1]
    if num_refs == 0:
        reference_latents = None
    elif reference_ids is None or reference_ids.shape[0] != num_refs * reference_latents.shape[2]:
        raise ValueError("reference_ids must hold K·N_ref rows of position ids, see reference_position_ids()")

    with adapters_disabled(transformer.x_embedder):
        target = transformer.x_embedder(hidden_states)
    dtype = target.dtype
    temb = _time_embedding(transformer, timestep, guidance, pooled_projections, dtype)
    text = transformer.context_embedder(encoder_hidden_states)
    rotary_emb = transformer.pos_embed(torch.cat([txt_ids, img_ids], dim=0))

    reference = None
    if reference_latents is not None:
        reference_tokens = transformer.x_embedder(reference_latents.flatten(1, 2))  # (B, K·N_ref, D)
        ref_time = torch.full_like(timestep, REFERENCE_TIMESTEP)
        ref_guidance = None if guidance is None else torch.full_like(guidance, REFERENCE_GUIDANCE)
        reference = ReferenceStream(
            tokens=reference_tokens,
            temb=_time_embedding(transformer, ref_time, ref_guidance, pooled_projections, dtype),
            rotary_emb=transformer.pos_embed(reference_ids),
            num_refs=num_refs,
        )

    run = _checkpointed if torch.is_grad_enabled() and transformer.gradient_checkpointing else _direct
    for block in transformer.transformer_blocks:
        text, target, reference_tokens = run(
            double_block_forward, block, text=text, target=target, temb=temb, rotary_emb=rotary_emb, reference=reference
        )
        reference = _advanced(reference, reference_tokens)

    text_len = text.shape[1]
    base = torch.cat([text, target], dim=1)
    for block in transformer.single_transformer_blocks:
        base, reference_tokens = run(
            single_block_forward,
            block,
            base=base,
            text_len=text_len,
            temb=temb,
            rotary_emb=rotary_emb,
            reference=reference,
        )
        reference = _advanced(reference, reference_tokens)

    target = base[:, text_len:]
    with adapters_disabled(transformer.norm_out, transformer.proj_out):
        return transformer.proj_out(transformer.norm_out(target, temb))


def _advanced(reference: ReferenceStream | None, tokens: torch.Tensor | None) -> ReferenceStream | None:
    """The stream with a block's output tokens (a new object: a checkpointed block may rerun on the old one)."""
    return None if reference is None else dataclasses.replace(reference, tokens=tokens)


def _direct(fn, block, **kwargs):
    return fn(block, **kwargs)


def _checkpointed(fn, block, **kwargs):
    return checkpoint(fn, block, use_reentrant=False, **kwargs)
