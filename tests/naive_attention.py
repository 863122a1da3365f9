"""A naive, dense-mask MOSAIC attention for the tests (docs/DESIGN.md §2, §7).

`NaiveMosaicProcessor` writes the attention of one block out from the weights: Q/K/V of every
stream, one (N_total × N_total) boolean mask built element by element, the strengths as log s_k
on the logits of text/target rows over reference columns, softmax in float64. It takes its
semantics from its own constructor (isolated references, strengths), never from the branch the
pipeline plumbs, so a run with it is an independent reference for the fused processor.
"""

import math

import torch
from diffusers.models.embeddings import apply_rotary_emb

from mosaic_studio.mosaic.attention import MosaicAttnProcessor


def _heads(t, attn):
    return t.unflatten(-1, (attn.heads, -1))  # (B, N, H, d)


def _base(linear):
    return linear.get_base_layer() if hasattr(linear, "get_base_layer") else linear


def dense_mask(n_base: int, n_ref: int, num_refs: int, isolated: bool) -> torch.Tensor:
    """(N, N) True where attention is allowed. Text/target rows see everything; reference rows see
    their own reference, and text/target too unless `isolated` (fast mode)."""
    n = n_base + n_ref * num_refs
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(n):
            ref_i = None if i < n_base else (i - n_base) // n_ref
            ref_j = None if j < n_base else (j - n_base) // n_ref
            if ref_i is None:
                mask[i, j] = True
            elif ref_j is None:
                mask[i, j] = not isolated
            else:
                mask[i, j] = ref_i == ref_j
    return mask


def logit_bias(n_base: int, n_ref: int, strengths, mask: torch.Tensor) -> torch.Tensor:
    """(N, N) additive logits: -inf where masked, log s_k on text/target rows × reference k columns."""
    bias = torch.zeros(mask.shape, dtype=torch.float64)
    for k, s in enumerate(strengths or []):
        cols = slice(n_base + k * n_ref, n_base + (k + 1) * n_ref)
        bias[:n_base, cols] = math.log(s) if s > 0 else float("-inf")
    return bias.masked_fill(~mask, float("-inf"))


class NaiveMosaicProcessor(MosaicAttnProcessor):
    """Dense float64 attention; `isolated`: references see only themselves (fast mode)."""

    def __init__(self, isolated: bool = False, strengths=None):
        super().__init__()
        self.isolated, self.strengths = isolated, strengths

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        image_rotary_emb=None,
        reference_branch=None,
    ):
        branch = reference_branch
        refs, double = branch.hidden_states, encoder_hidden_states is not None
        dtype = hidden_states.dtype
        hidden_states, refs = hidden_states.double(), refs.double()
        q = [attn.norm_q(_heads(_base(attn.to_q)(hidden_states), attn))]
        k = [attn.norm_k(_heads(_base(attn.to_k)(hidden_states), attn))]
        v = [_heads(_base(attn.to_v)(hidden_states), attn)]
        if double:  # text first, with the context projections
            text = encoder_hidden_states.double()
            q.insert(0, attn.norm_added_q(_heads(attn.add_q_proj(text), attn)))
            k.insert(0, attn.norm_added_k(_heads(attn.add_k_proj(text), attn)))
            v.insert(0, _heads(attn.add_v_proj(text), attn))
        q.append(attn.norm_q(_heads(attn.to_q(refs), attn)))  # the reference LoRA is active here
        k.append(attn.norm_k(_heads(attn.to_k(refs), attn)))
        v.append(_heads(attn.to_v(refs), attn))
        rope = tuple(torch.cat([a, b]).double() for a, b in zip(image_rotary_emb, branch.rotary_emb))
        q = apply_rotary_emb(torch.cat(q, 1), rope, sequence_dim=1)
        k = apply_rotary_emb(torch.cat(k, 1), rope, sequence_dim=1)
        v = torch.cat(v, 1)

        n_base = q.shape[1] - refs.shape[1]
        n_ref = refs.shape[1] // branch.num_refs
        mask = dense_mask(n_base, n_ref, branch.num_refs, self.isolated)
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(q.shape[-1])
        weights = (scores + logit_bias(n_base, n_ref, self.strengths, mask)).softmax(-1)
        out = torch.einsum("bhij,bjhd->bihd", weights, v).flatten(2)  # (B, N, H·d)
        base_out, ref_out = out[:, :n_base], out[:, n_base:]
        if not double:
            return base_out.to(dtype), ref_out.to(dtype)
        text_len = encoder_hidden_states.shape[1]
        target_out = _base(attn.to_out[0])(base_out[:, text_len:])
        return (
            target_out.to(dtype),
            attn.to_add_out(base_out[:, :text_len]).to(dtype),
            attn.to_out[0](ref_out).to(dtype),
        )


def install_naive(transformer, isolated: bool = False, strengths=None) -> None:
    """Put a `NaiveMosaicProcessor` on every block of `transformer`."""
    for block in [*transformer.transformer_blocks, *transformer.single_transformer_blocks]:
        block.attn.set_processor(NaiveMosaicProcessor(isolated=isolated, strengths=strengths))
