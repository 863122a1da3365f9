"""The MOSAIC multi-branch forward of a stock diffusers `FluxTransformer2DModel`.

Branches, in order: text, target (noisy latent), ref_1 … ref_K (docs/DESIGN.md §1).
- text and target use timestep t (and the requested guidance); references use t = 0 (and
  guidance 1.0); all branches share the pooled text projection;
- reference k (0-based) sits on its own token grid shifted left by (k+1)·W_ref columns;
- the group mask (§2) and the Eq. 8 probe (§4) live in `MosaicAttnProcessor`, which
  `install_mosaic_processors` puts on every block once;
- the reference LoRA (peft, on the stock modules) acts on reference tokens only (§3);
- options (§7): per-reference strengths s_k, and fast mode (a `ReferenceCache`: references see
  only themselves, their keys and values are computed once and read at later steps).
With K = 0 and no LoRA the result equals `FluxTransformer2DModel.forward`.

Names: `reference_latents` are the packed VAE latents (B, K, N_ref, C); after the x_embedder they
are `reference_tokens` (B, K·N_ref, D), carried between blocks in a `ReferenceStream`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from numbers import Real

import torch
from torch.utils.checkpoint import checkpoint

from mosaic_studio.mosaic.attention import ReferenceCache, ReferenceStream, check_mosaic_processors
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


def check_reference_strengths(strengths: Sequence[float] | None, num_refs: int) -> tuple[float, ...] | None:
    """The per-reference strengths s_k as floats, one per reference, each finite and ≥ 0.

    None (or every s_k = 1) returns None: the unmasked fused attention, bit for bit the default.
    ValueError/TypeError names the problem (count, entry, value)."""
    if strengths is None:
        return None
    if isinstance(strengths, (str, bytes)) or not isinstance(strengths, (Sequence, torch.Tensor)):
        raise TypeError(f"reference_strengths must be a sequence of numbers, got {type(strengths).__name__}")
    values = strengths.tolist() if isinstance(strengths, torch.Tensor) else list(strengths)
    if len(values) != num_refs:
        raise ValueError(
            f"reference_strengths has {len(values)} values for {num_refs} references: give one per reference"
        )
    for k, value in enumerate(values):
        if not isinstance(value, Real) or isinstance(value, bool):
            raise TypeError(f"reference_strengths[{k}] must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"reference_strengths[{k}] = {value!r}: a strength must be finite and >= 0")
    values = tuple(float(v) for v in values)
    return None if all(v == 1.0 for v in values) else values


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
    reference_strengths: Sequence[float] | None = None,
    reference_cache: ReferenceCache | None = None,
) -> torch.Tensor:
    """Predict the flow for the target tokens.

    transformer: a FluxTransformer2DModel with the MOSAIC processors installed
    (`install_mosaic_processors`). hidden_states: (B, N_tgt, C) packed noisy target;
    encoder_hidden_states: (B, N_txt, C_txt); pooled_projections: (B, C_pool); timestep,
    guidance: (B,) in [0, 1] (guidance as a scale, only for models with `guidance_embeds`);
    img_ids (N_tgt, 3), txt_ids (N_txt, 3);
    reference_latents: (B, K, N_ref, C) packed clean reference latents or None;
    reference_ids: (K·N_ref, 3), see `reference_position_ids`.
    reference_strengths: K floats s_k ≥ 0 (default all 1): text and target queries weigh
    reference k's keys by s_k (docs/DESIGN.md §7).
    reference_cache: fast mode. An empty cache makes the references attend to themselves only and
    is filled with every block's reference keys and values; a filled one replaces the reference
    stream, which then does not run (reference_latents may then be None; if given, their count
    must match the cache's). None: the exact group mask (§2).
    Returns (B, N_tgt, C_out).
    """
    if transformer.config.guidance_embeds and guidance is None:
        raise ValueError("this transformer has guidance_embeds: pass `guidance`")
    check_mosaic_processors(transformer)
    num_refs = 0 if reference_latents is None else reference_latents.shape[1]
    reading = reference_cache is not None and reference_cache.filled
    if reading:
        num_refs = _check_filled_cache(reference_cache, num_refs, reference_latents, hidden_states.shape[0])
        reference_latents = None  # the cache stands in for them
    elif num_refs == 0:
        reference_latents = None
    elif reference_ids is None or reference_ids.shape[0] != num_refs * reference_latents.shape[2]:
        raise ValueError("reference_ids must hold K·N_ref rows of position ids, see reference_position_ids()")
    strengths = check_reference_strengths(reference_strengths, num_refs)
    if strengths is not None:  # float64 for a float64 model: the log s_k bias is then exact to 1e-16
        precision = torch.promote_types(hidden_states.dtype, torch.float32)
        strengths = torch.tensor(strengths, device=hidden_states.device, dtype=precision)

    with adapters_disabled(transformer.x_embedder):
        target = transformer.x_embedder(hidden_states)
    dtype = target.dtype
    temb = _time_embedding(transformer, timestep, guidance, pooled_projections, dtype)
    text = transformer.context_embedder(encoder_hidden_states)
    rotary_emb = transformer.pos_embed(torch.cat([txt_ids, img_ids], dim=0))

    reference = None
    if reading:
        reference = ReferenceStream(
            tokens=None, temb=None, rotary_emb=None, num_refs=num_refs, strengths=strengths, cache=reference_cache
        )
    elif reference_latents is not None:
        reference_tokens = transformer.x_embedder(reference_latents.flatten(1, 2))  # (B, K·N_ref, D)
        ref_time = torch.full_like(timestep, REFERENCE_TIMESTEP)
        ref_guidance = None if guidance is None else torch.full_like(guidance, REFERENCE_GUIDANCE)
        reference = ReferenceStream(
            tokens=reference_tokens,
            temb=_time_embedding(transformer, ref_time, ref_guidance, pooled_projections, dtype),
            rotary_emb=transformer.pos_embed(reference_ids),
            num_refs=num_refs,
            strengths=strengths,
            cache=reference_cache,
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

    if reference is not None and reference.computed and reference_cache is not None:
        reference_cache.seal(num_refs=num_refs, batch_size=hidden_states.shape[0])  # every block has written
    target = base[:, text_len:]
    with adapters_disabled(transformer.norm_out, transformer.proj_out):
        return transformer.proj_out(transformer.norm_out(target, temb))


def _check_filled_cache(cache: ReferenceCache, num_refs: int, reference_latents, batch_size: int) -> int:
    """The cache's K, after checking it fits this call (same references, same batch)."""
    if reference_latents is not None and num_refs != cache.num_refs:
        raise ValueError(f"reference_cache holds {cache.num_refs} references but {num_refs} were given")
    if batch_size != cache.batch_size:
        raise ValueError(f"reference_cache was written for batch {cache.batch_size}, this call has {batch_size}")
    return cache.num_refs


def _advanced(reference: ReferenceStream | None, tokens: torch.Tensor | None) -> ReferenceStream | None:
    """The stream with a block's output tokens (a new object: a checkpointed block may rerun on the
    old one). A cached stream has no tokens and stays as it is."""
    if reference is None or not reference.computed:
        return reference
    return dataclasses.replace(reference, tokens=tokens)


def _direct(fn, block, **kwargs):
    return fn(block, **kwargs)


def _checkpointed(fn, block, **kwargs):
    return checkpoint(fn, block, use_reentrant=False, **kwargs)
