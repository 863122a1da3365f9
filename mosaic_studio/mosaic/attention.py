"""Joint attention over [text, target, ref_1 … ref_K] with the MOSAIC group mask.

Group mask (docs/DESIGN.md §2): text and target attend to every branch; each reference attends to text,
target and itself, never to another reference. Rather than a dense (N_total × N_total) mask,
which would push SDPA off its fused kernels, the mask is realised by two unmasked fused calls:

    base queries [text, target]  → keys [text, target, ref_1 … ref_K]
    ref_k queries (batched over k) → keys [text, target, ref_k]

With no references the processor is exactly diffusers' `FluxAttnProcessor`. The processors are
installed once per transformer (`install_mosaic_processors`; `MosaicPipeline` does it on
construction) and never replaced behind the user's back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

from mosaic_studio.mosaic.lora import adapters_disabled

RotaryEmb = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ReferenceStream:
    """The reference stream between blocks (docs/DESIGN.md §1): what stays fixed over the forward
    plus the tokens each block updates.

    tokens: (B, K·N_ref, D) reference tokens after the x_embedder, references concatenated.
    temb: (B, D) their time embedding (t = 0, guidance 1). rotary_emb: RoPE (cos, sin) of the
    reference position ids, each (K·N_ref, d). num_refs: K.
    """

    tokens: torch.Tensor
    temb: torch.Tensor
    rotary_emb: RotaryEmb
    num_refs: int

    def branch(self, normed: torch.Tensor, text_len: int) -> ReferenceBranch:
        """The attention input of one block: its normalised tokens with the stream's positions."""
        return ReferenceBranch(normed, self.rotary_emb, self.num_refs, text_len=text_len)


@dataclass
class ReferenceBranch:
    """What the processor needs beyond the stock arguments.

    hidden_states: (B, K·N_ref, D) normalised reference tokens, references concatenated.
    rotary_emb: RoPE (cos, sin) of the reference position ids, each (K·N_ref, d).
    num_refs: K. text_len: number of text tokens at the front of the base sequence.
    """

    hidden_states: torch.Tensor
    rotary_emb: RotaryEmb
    num_refs: int
    text_len: int


class AttentionObserver(Protocol):
    """What a processor hands its reference queries and target keys to (`AttentionProbe`, Eq. 8)."""

    def observe(self, reference_query: torch.Tensor, target_key: torch.Tensor) -> None: ...


class MosaicAttnProcessor(FluxAttnProcessor):
    """FLUX attention processor with reference branches and an optional Eq. 8 probe."""

    def __init__(self) -> None:
        super().__init__()
        self.probe: AttentionObserver | None = None

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: RotaryEmb | None = None,
        reference_branch: ReferenceBranch | None = None,
    ):
        if reference_branch is None:  # no reference branch: the stock computation, on base weights
            with adapters_disabled(attn):
                return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        if attention_mask is not None:
            raise ValueError("MOSAIC attention builds its own group mask; attention_mask must be None")

        # Base stream: the stock projections on base weights. Double blocks project text with
        # the context weights (add_*_proj) and the target with to_*; single blocks get
        # [text, target] already concatenated in `hidden_states`.
        with adapters_disabled(attn):
            query, key, value, text_query, text_key, text_value = _get_qkv_projections(
                attn, hidden_states, encoder_hidden_states
            )
        query, key, value = (_heads(t, attn) for t in (query, key, value))  # (B, N, H, d)
        query, key = attn.norm_q(query), attn.norm_k(key)
        if encoder_hidden_states is not None:
            text_query, text_key, text_value = (_heads(t, attn) for t in (text_query, text_key, text_value))
            query = torch.cat([attn.norm_added_q(text_query), query], dim=1)
            key = torch.cat([attn.norm_added_k(text_key), key], dim=1)
            value = torch.cat([text_value, value], dim=1)
        query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
        key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        # Reference stream: the image projections with the LoRA active.
        ref_states = reference_branch.hidden_states
        ref_query, ref_key, ref_value = (_heads(proj(ref_states), attn) for proj in (attn.to_q, attn.to_k, attn.to_v))
        ref_query, ref_key = attn.norm_q(ref_query), attn.norm_k(ref_key)
        ref_query = apply_rotary_emb(ref_query, reference_branch.rotary_emb, sequence_dim=1)
        ref_key = apply_rotary_emb(ref_key, reference_branch.rotary_emb, sequence_dim=1)

        if self.probe is not None:
            self.probe.observe(ref_query, key[:, reference_branch.text_len :])

        base_out = self._attend(query, torch.cat([key, ref_key], dim=1), torch.cat([value, ref_value], dim=1))
        ref_out = self._attend_own_reference(
            query.shape[1], key, value, ref_query, ref_key, ref_value, reference_branch.num_refs
        )
        base_out, ref_out = base_out.to(query.dtype), ref_out.to(query.dtype)

        if encoder_hidden_states is None:  # single block: output projection happens in the block
            return base_out, ref_out
        text_out, target_out = base_out.split_with_sizes([reference_branch.text_len, hidden_states.shape[1]], dim=1)
        with adapters_disabled(attn):
            target_out = attn.to_out[1](attn.to_out[0](target_out.contiguous()))
        ref_out = attn.to_out[1](attn.to_out[0](ref_out))
        return target_out, attn.to_add_out(text_out.contiguous()), ref_out

    def _attend(self, query, key, value) -> torch.Tensor:
        out = dispatch_attention_fn(
            query, key, value, backend=self._attention_backend, parallel_config=self._parallel_config
        )
        return out.flatten(2, 3)  # (B, N, H·d)

    def _attend_own_reference(self, base_len, key, value, ref_query, ref_key, ref_value, num_refs) -> torch.Tensor:
        """Each reference's queries against [text, target, that reference], batched over K."""
        batch, ref_total, heads, dim = ref_query.shape
        ref_len = ref_total // num_refs

        def per_reference(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch * num_refs, ref_len, heads, dim)  # (B·K, N_ref, H, d)

        shared_key = key.repeat_interleave(num_refs, dim=0)  # (B·K, N_base, H, d)
        shared_value = value.repeat_interleave(num_refs, dim=0)
        out = self._attend(
            per_reference(ref_query),
            torch.cat([shared_key, per_reference(ref_key)], dim=1),
            torch.cat([shared_value, per_reference(ref_value)], dim=1),
        )  # (B·K, N_ref, H·d)
        return out.reshape(batch, ref_total, heads * dim)


def _heads(t: torch.Tensor, attn) -> torch.Tensor:
    return t.unflatten(-1, (-1, attn.head_dim))  # (B, N, H, d)


def _blocks(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    return [*transformer.transformer_blocks, *transformer.single_transformer_blocks]


def install_mosaic_processors(transformer: torch.nn.Module) -> None:
    """Give every attention module of a FluxTransformer2DModel its own MosaicAttnProcessor
    (own instance, so a probe can be attached to chosen blocks). Call once after building a bare
    transformer; `MosaicPipeline` does it for its own. Idempotent: a block that already has a
    MosaicAttnProcessor (or a subclass the user set) keeps it."""
    for block in _blocks(transformer):
        if not isinstance(block.attn.processor, MosaicAttnProcessor):
            block.attn.set_processor(MosaicAttnProcessor())


def check_mosaic_processors(transformer: torch.nn.Module) -> None:
    """Raise unless every block runs a MosaicAttnProcessor (the MOSAIC forward needs them all)."""
    names = [f"transformer_blocks.{i}" for i in range(len(transformer.transformer_blocks))]
    names += [f"single_transformer_blocks.{i}" for i in range(len(transformer.single_transformer_blocks))]
    for name, block in zip(names, _blocks(transformer)):
        if not isinstance(block.attn.processor, MosaicAttnProcessor):
            raise _not_installed(name, block.attn.processor)


def _not_installed(block_name: str, processor) -> RuntimeError:
    return RuntimeError(
        f"{block_name} runs {type(processor).__name__}, not MosaicAttnProcessor: call "
        "mosaic_studio.mosaic.attention.install_mosaic_processors(transformer) once after building "
        "the transformer (MosaicPipeline does this for its own transformer)"
    )


def mosaic_processor(transformer: torch.nn.Module, block_name: str) -> MosaicAttnProcessor:
    """The processor of block `block_name` (e.g. "transformer_blocks.0")."""
    try:
        block = transformer.get_submodule(block_name)
    except AttributeError:
        raise ValueError(f"unknown transformer block {block_name!r}") from None
    attn = getattr(block, "attn", None)
    if attn is None or block not in _blocks(transformer):
        raise ValueError(f"{block_name!r} is not a FLUX transformer block")
    if not isinstance(attn.processor, MosaicAttnProcessor):
        raise _not_installed(block_name, attn.processor)
    return attn.processor
