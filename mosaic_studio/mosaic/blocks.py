"""FLUX block forwards split by branch: the only diffusers block logic this project restates.

A stock block modulates all image tokens with one timestep embedding and one set of weights.
MOSAIC needs two image streams per block (docs/DESIGN.md §1):

    target:     the noisy latent, timestep t, base weights
    references: K clean latents concatenated, timestep 0, reference LoRA active

so the AdaLN-Zero modulation, the gated residuals and the MLP are applied per stream, using the
stock submodules. Attention goes through the block's `MosaicAttnProcessor` (docs/DESIGN.md §2),
the LoRA acts on the reference stream only (§3). With no references (`reference is None`) each
function computes exactly what the stock block does. In fast mode after its first step
(`reference.computed` is False) the reference stream does not run: only its cached keys and
values reach the attention (§7).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from mosaic_studio.mosaic.attention import ReferenceStream, RotaryEmb
from mosaic_studio.mosaic.lora import adapters_disabled

FP16_MAX = 65504.0  # stock FLUX clips fp16 activations to the finite range


def _lora(module: torch.nn.Module, enabled: bool):
    """Context in which `module` runs with the reference LoRA (enabled) or base weights."""
    return nullcontext() if enabled else adapters_disabled(module)


def _clip_fp16(h: torch.Tensor) -> torch.Tensor:
    return h.clip(-FP16_MAX, FP16_MAX) if h.dtype == torch.float16 else h


def _gated_mlp_residual(h, attn_out, modulation, norm, ff, lora: bool) -> torch.Tensor:
    """Second half of a double block for one stream: gated attention residual, then the
    modulated, gated MLP residual."""
    gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation  # each (B, D)
    h = h + gate_msa.unsqueeze(1) * attn_out
    normed = norm(h) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
    with _lora(ff, lora):
        h = h + gate_mlp.unsqueeze(1) * ff(normed)
    return _clip_fp16(h)


def double_block_forward(
    block,
    *,
    text: torch.Tensor,
    target: torch.Tensor,
    temb: torch.Tensor,
    rotary_emb: RotaryEmb,
    reference: ReferenceStream | None = None,
):
    """One FluxTransformerBlock over text (B, N_txt, D), target (B, N_tgt, D) and the reference
    stream or None; rotary_emb: RoPE of [text, target]. Returns (text, target, reference_tokens),
    the last (B, K·N_ref, D) or None."""
    norm_text, *text_mod = block.norm1_context(text, emb=temb)
    with _lora(block.norm1, False):
        norm_target, *target_mod = block.norm1(target, emb=temb)
    branch = None
    if reference is not None and reference.computed:
        norm_reference, *reference_mod = block.norm1(reference.tokens, emb=reference.temb)
        branch = reference.branch(norm_reference, text_len=text.shape[1])
    elif reference is not None:  # fast mode, cache filled
        branch = reference.branch(None, text_len=text.shape[1])

    outputs = block.attn(
        hidden_states=norm_target, encoder_hidden_states=norm_text, image_rotary_emb=rotary_emb, reference_branch=branch
    )
    target_attn, text_attn = outputs[0], outputs[1]

    text = _gated_mlp_residual(text, text_attn, text_mod, block.norm2_context, block.ff_context, lora=False)
    target = _gated_mlp_residual(target, target_attn, target_mod, block.norm2, block.ff, lora=False)
    if reference is None or not reference.computed:
        return text, target, None
    reference_tokens = _gated_mlp_residual(
        reference.tokens, outputs[2], reference_mod, block.norm2, block.ff, lora=True
    )
    return text, target, reference_tokens


def _single_stream_in(block, h, temb, lora: bool):
    """AdaLN-Zero-single modulation and the parallel MLP input of one stream."""
    with _lora(block.norm, lora), _lora(block.proj_mlp, lora):
        normed, gate = block.norm(h, emb=temb)
        mlp = block.act_mlp(block.proj_mlp(normed))
    return normed, gate, mlp


def _single_stream_out(block, h, attn_out, gate, mlp, lora: bool) -> torch.Tensor:
    with _lora(block.proj_out, lora):
        update = block.proj_out(torch.cat([attn_out, mlp], dim=2))
    return _clip_fp16(h + gate.unsqueeze(1) * update)


def single_block_forward(
    block,
    *,
    base: torch.Tensor,
    text_len: int,
    temb: torch.Tensor,
    rotary_emb: RotaryEmb,
    reference: ReferenceStream | None = None,
):
    """One FluxSingleTransformerBlock over base = [text, target] (B, N_txt+N_tgt, D), whose first
    `text_len` tokens are text, and the reference stream or None. Text and target share timestep
    and base weights here, so they stay one stream, as in stock FLUX. Returns (base,
    reference_tokens), the last (B, K·N_ref, D) or None."""
    normed, gate, mlp = _single_stream_in(block, base, temb, lora=False)
    branch = None
    if reference is not None and reference.computed:
        reference_normed, reference_gate, reference_mlp = _single_stream_in(
            block, reference.tokens, reference.temb, lora=True
        )
        branch = reference.branch(reference_normed, text_len=text_len)
    elif reference is not None:  # fast mode, cache filled
        branch = reference.branch(None, text_len=text_len)

    outputs = block.attn(hidden_states=normed, image_rotary_emb=rotary_emb, reference_branch=branch)
    base_attn = outputs if reference is None else outputs[0]
    base = _single_stream_out(block, base, base_attn, gate, mlp, lora=False)
    if reference is None or not reference.computed:
        return base, None
    reference_tokens = _single_stream_out(block, reference.tokens, outputs[1], reference_gate, reference_mlp, lora=True)
    return base, reference_tokens
