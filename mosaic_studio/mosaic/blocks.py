"""FLUX block forwards split by branch: the only diffusers block logic this project restates.

A stock block modulates all image tokens with one timestep embedding and one set of weights.
MOSAIC needs two image streams per block (SPEC §2):

    target:     the noisy latent, timestep t, base weights
    references: K clean latents concatenated, timestep 0, reference LoRA active

so the AdaLN-Zero modulation, the gated residuals and the MLP are applied per stream, using the
stock submodules. Attention goes through the block's `MosaicAttnProcessor`. With no references
(`refs is None`) each function computes exactly what the stock block does.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from mosaic_studio.mosaic.attention import ReferenceBranch, RotaryEmb
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
    text: torch.Tensor,
    target: torch.Tensor,
    refs: torch.Tensor | None,
    temb: torch.Tensor,
    ref_temb: torch.Tensor | None,
    rotary_emb: RotaryEmb,
    ref_rotary_emb: RotaryEmb | None,
    num_refs: int,
):
    """One FluxTransformerBlock over text (B, N_txt, D), target (B, N_tgt, D) and refs
    (B, K·N_ref, D) or None. Returns (text, target, refs)."""
    norm_text, *text_mod = block.norm1_context(text, emb=temb)
    with _lora(block.norm1, False):
        norm_target, *target_mod = block.norm1(target, emb=temb)
    branch = None
    if refs is not None:
        norm_refs, *ref_mod = block.norm1(refs, emb=ref_temb)
        branch = ReferenceBranch(norm_refs, ref_rotary_emb, num_refs, text_len=text.shape[1])

    outputs = block.attn(
        hidden_states=norm_target, encoder_hidden_states=norm_text, image_rotary_emb=rotary_emb, references=branch
    )
    target_attn, text_attn = outputs[0], outputs[1]

    text = _gated_mlp_residual(text, text_attn, text_mod, block.norm2_context, block.ff_context, lora=False)
    target = _gated_mlp_residual(target, target_attn, target_mod, block.norm2, block.ff, lora=False)
    if refs is not None:
        refs = _gated_mlp_residual(refs, outputs[2], ref_mod, block.norm2, block.ff, lora=True)
    return text, target, refs


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
    base: torch.Tensor,
    refs: torch.Tensor | None,
    temb: torch.Tensor,
    ref_temb: torch.Tensor | None,
    rotary_emb: RotaryEmb,
    ref_rotary_emb: RotaryEmb | None,
    num_refs: int,
    text_len: int,
):
    """One FluxSingleTransformerBlock over base = [text, target] (B, N_txt+N_tgt, D) and refs.
    Text and target share timestep and base weights here, so they stay one stream, as in stock
    FLUX. Returns (base, refs)."""
    normed, gate, mlp = _single_stream_in(block, base, temb, lora=False)
    branch = None
    if refs is not None:
        ref_normed, ref_gate, ref_mlp = _single_stream_in(block, refs, ref_temb, lora=True)
        branch = ReferenceBranch(ref_normed, ref_rotary_emb, num_refs, text_len=text_len)

    outputs = block.attn(hidden_states=normed, image_rotary_emb=rotary_emb, references=branch)
    base_attn = outputs if refs is None else outputs[0]
    base = _single_stream_out(block, base, base_attn, gate, mlp, lora=False)
    if refs is not None:
        refs = _single_stream_out(block, refs, outputs[1], ref_gate, ref_mlp, lora=True)
    return base, refs
