"""Joint attention over [text, target, ref_1 … ref_K] with the MOSAIC group mask.

Group mask (docs/DESIGN.md §2): text and target attend to every branch; each reference attends to text,
target and itself, never to another reference. Rather than a dense (N_total × N_total) mask,
which would push SDPA off its fused kernels, the mask is realised by two unmasked fused calls:

    base queries [text, target]  → keys [text, target, ref_1 … ref_K]
    ref_k queries (batched over k) → keys [text, target, ref_k]

With no references the processor is exactly diffusers' `FluxAttnProcessor`. The processors are
installed once per transformer (`install_mosaic_processors`; `MosaicPipeline` does it on
construction) and never replaced behind the user's back.

Two options (docs/DESIGN.md §7):
- per-reference strengths s_k: the logits of text and target queries on reference k's keys get
  + log s_k (s_k = 0: masked). Only then does the base call take an additive mask; with every
  s_k = 1 it stays the unmasked fused call.
- fast mode (`ReferenceCache`): reference queries see only their own reference's keys, so the
  reference stream no longer depends on the target or the timestep; its keys and values are
  computed by the first forward and read from the cache by the later ones, where the reference
  stream does not run at all.
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
class CachedReference:
    """One block's reference projections, after QK-norm and RoPE, each (B, K·N_ref, H, d).
    query is kept only for the attention probe (None otherwise)."""

    key: torch.Tensor
    value: torch.Tensor
    query: torch.Tensor | None = None


class ReferenceCache:
    """Fast mode (docs/DESIGN.md §7): every block's reference keys and values, written by the
    first forward that is given this cache and read by every later one.

    Valid for one conditioning of one generation only: the reference stream is modulated with the
    pooled prompt projection, so the conditional and the unconditional pass of classifier-free
    guidance each need their own cache. keep_queries also keeps the reference queries, which the
    attention probe (Eq. 8) needs at every recorded step; without a probe they would only cost
    memory (FLUX.1-dev, 6 references at 512 px, bf16: keys and values take about 4.3 GB).
    """

    def __init__(self, keep_queries: bool = False):
        self.keep_queries = keep_queries
        self.num_refs: int | None = None  # set once a whole forward has written the cache
        self.batch_size: int | None = None
        self._entries: dict[torch.nn.Module, CachedReference] = {}

    @property
    def filled(self) -> bool:
        return self.num_refs is not None

    def write(self, attn: torch.nn.Module, *, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> None:
        if self.filled:
            raise RuntimeError("this reference cache is already filled; a new generation needs a new ReferenceCache")
        self._entries[attn] = CachedReference(key=key, value=value, query=query if self.keep_queries else None)

    def seal(self, *, num_refs: int, batch_size: int) -> None:
        """Mark the cache complete (`mosaic_forward` calls this after a forward wrote every block)."""
        self.num_refs, self.batch_size = num_refs, batch_size

    def read(self, attn: torch.nn.Module) -> CachedReference:
        # Keyed by the attention module itself, so no block counting is needed.
        entry = self._entries.get(attn)
        if entry is None:
            raise RuntimeError("this block has no cached reference keys: the cache was written by another transformer")
        return entry


@dataclass
class ReferenceStream:
    """The reference stream between blocks (docs/DESIGN.md §1): what stays fixed over the forward
    plus the tokens each block updates.

    tokens: (B, K·N_ref, D) reference tokens after the x_embedder, references concatenated; None
    when a filled `cache` stands in for them (fast mode after its first step: nothing runs).
    temb: (B, D) their time embedding (t = 0, guidance 1). rotary_emb: RoPE (cos, sin) of the
    reference position ids, each (K·N_ref, d). num_refs: K. strengths: (K,) s_k or None (all 1).
    cache: the fast-mode cache, or None for the exact group mask.
    """

    tokens: torch.Tensor | None
    temb: torch.Tensor | None
    rotary_emb: RotaryEmb | None
    num_refs: int
    strengths: torch.Tensor | None = None
    cache: ReferenceCache | None = None

    @property
    def computed(self) -> bool:
        """Whether the blocks compute the reference tokens (False: keys and values come from the cache)."""
        return self.tokens is not None

    def branch(self, normed: torch.Tensor | None, text_len: int) -> ReferenceBranch:
        """The attention input of one block: its normalised tokens (None: cached) with the stream's positions."""
        return ReferenceBranch(
            normed, self.rotary_emb, self.num_refs, text_len=text_len, strengths=self.strengths, cache=self.cache
        )


@dataclass
class ReferenceBranch:
    """What the processor needs beyond the stock arguments.

    hidden_states: (B, K·N_ref, D) normalised reference tokens, references concatenated; None when
    `cache` holds this block's keys and values. rotary_emb: RoPE (cos, sin) of the reference
    position ids, each (K·N_ref, d). num_refs: K. text_len: number of text tokens at the front of
    the base sequence. strengths: (K,) s_k, None for all 1. cache: fast mode's `ReferenceCache`
    (references attend to themselves only), None for the exact group mask.
    """

    hidden_states: torch.Tensor | None
    rotary_emb: RotaryEmb | None
    num_refs: int
    text_len: int
    strengths: torch.Tensor | None = None
    cache: ReferenceCache | None = None


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

        ref = self._reference_projections(attn, reference_branch)
        if self.probe is not None:
            if ref.query is None:
                raise RuntimeError(
                    "the attention probe needs reference queries: make the ReferenceCache with keep_queries=True"
                )
            self.probe.observe(ref.query, key[:, reference_branch.text_len :])

        bias = _strength_bias(reference_branch.strengths, query.shape[1], ref.key.shape[1], query)
        base_out = self._attend(query, torch.cat([key, ref.key], dim=1), torch.cat([value, ref.value], dim=1), bias)
        base_out = base_out.to(query.dtype)
        ref_out = None
        if reference_branch.hidden_states is not None:
            num_refs = reference_branch.num_refs
            if reference_branch.cache is None:
                ref_out = self._attend_own_reference(key, value, ref.query, ref.key, ref.value, num_refs)
            else:
                ref_out = self._attend_self_only(ref.query, ref.key, ref.value, num_refs)
            ref_out = ref_out.to(query.dtype)

        if encoder_hidden_states is None:  # single block: output projection happens in the block
            return base_out, ref_out
        text_out, target_out = base_out.split_with_sizes([reference_branch.text_len, hidden_states.shape[1]], dim=1)
        with adapters_disabled(attn):
            target_out = attn.to_out[1](attn.to_out[0](target_out.contiguous()))
        if ref_out is not None:
            ref_out = attn.to_out[1](attn.to_out[0](ref_out))
        return target_out, attn.to_add_out(text_out.contiguous()), ref_out

    def _reference_projections(self, attn, branch: ReferenceBranch) -> CachedReference:
        """Reference Q, K, V (after norm and RoPE): the image projections with the LoRA active, or
        the fast-mode cache's; a cache that is not yet filled is written here."""
        if branch.hidden_states is None:
            return branch.cache.read(attn)
        states = branch.hidden_states
        ref_query, ref_key, ref_value = (_heads(proj(states), attn) for proj in (attn.to_q, attn.to_k, attn.to_v))
        ref_query, ref_key = attn.norm_q(ref_query), attn.norm_k(ref_key)
        ref_query = apply_rotary_emb(ref_query, branch.rotary_emb, sequence_dim=1)
        ref_key = apply_rotary_emb(ref_key, branch.rotary_emb, sequence_dim=1)
        if branch.cache is not None:
            branch.cache.write(attn, query=ref_query, key=ref_key, value=ref_value)
        return CachedReference(key=ref_key, value=ref_value, query=ref_query)

    def _attend(self, query, key, value, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        out = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attn_mask,
            backend=self._attention_backend,
            parallel_config=self._parallel_config,
        )
        return out.flatten(2, 3)  # (B, N, H·d)

    def _attend_own_reference(self, key, value, ref_query, ref_key, ref_value, num_refs) -> torch.Tensor:
        """Each reference's queries against [text, target, that reference], batched over K."""
        per_reference = _per_reference(ref_query, num_refs)
        shared_key = key.repeat_interleave(num_refs, dim=0)  # (B·K, N_base, H, d)
        shared_value = value.repeat_interleave(num_refs, dim=0)
        out = self._attend(
            per_reference(ref_query),
            torch.cat([shared_key, per_reference(ref_key)], dim=1),
            torch.cat([shared_value, per_reference(ref_value)], dim=1),
        )  # (B·K, N_ref, H·d)
        return out.reshape(ref_query.shape[0], ref_query.shape[1], -1)

    def _attend_self_only(self, ref_query, ref_key, ref_value, num_refs) -> torch.Tensor:
        """Fast mode: each reference's queries against its own keys only, batched over K."""
        per_reference = _per_reference(ref_query, num_refs)
        out = self._attend(per_reference(ref_query), per_reference(ref_key), per_reference(ref_value))
        return out.reshape(ref_query.shape[0], ref_query.shape[1], -1)


def _per_reference(ref_query: torch.Tensor, num_refs: int):
    """(B, K·N_ref, H, d) → (B·K, N_ref, H, d), so one SDPA call treats each reference as a sample."""
    batch, ref_total, heads, dim = ref_query.shape
    return lambda t: t.reshape(batch * num_refs, ref_total // num_refs, heads, dim)


def _strength_bias(strengths: torch.Tensor | None, base_len: int, ref_total: int, like: torch.Tensor):
    """Additive (1, 1, 1, N_base + K·N_ref) mask for the base queries: 0 on text and target keys,
    log s_k on reference k's keys (s_k = 0 gives -inf: masked). None when there are no strengths,
    so the call stays unmasked and fused."""
    if strengths is None:
        return None
    ref_len = ref_total // strengths.numel()
    # log in at least float32 (float64 for a float64 model), then cast: log 0 = -inf in any dtype
    log_strength = strengths.to(device=like.device, dtype=torch.promote_types(like.dtype, torch.float32)).log()
    bias = torch.cat([log_strength.new_zeros(base_len), log_strength.repeat_interleave(ref_len)])
    return bias.to(like.dtype).view(1, 1, 1, -1)


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
