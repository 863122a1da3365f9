"""Group-masked attention and the Eq. 8 probe against naive float64 computations."""

import pytest
import torch
from conftest import add_random_lora, make_transformer
from diffusers.models.embeddings import apply_rotary_emb
from inputs import random_batch
from naive_attention import dense_mask

from mosaic_studio.mosaic.attention import ReferenceBranch, install_mosaic_processors
from mosaic_studio.mosaic.losses import scal_loss
from mosaic_studio.mosaic.probe import AttentionProbe
from mosaic_studio.mosaic.transformer import grid_position_ids, mosaic_forward, reference_position_ids

B, TEXT, TARGET_GRID, REF_GRID, K = 2, 5, (3, 4), (2, 3), 3


def double_model():
    model = make_transformer().double()
    add_random_lora(model)
    install_mosaic_processors(model)
    return model


def heads(t, attn):
    return t.unflatten(-1, (attn.heads, -1))  # (B, N, H, d)


def base(linear):
    return linear.get_base_layer()


def naive_projections(attn, text, target, refs, rope, ref_rope):
    """Q, K, V of [text, target, refs] written out from the weights, float64."""
    q = [
        attn.norm_added_q(heads(attn.add_q_proj(text), attn)),
        attn.norm_q(heads(base(attn.to_q)(target), attn)),
        attn.norm_q(heads(attn.to_q(refs), attn)),
    ]
    k = [
        attn.norm_added_k(heads(attn.add_k_proj(text), attn)),
        attn.norm_k(heads(base(attn.to_k)(target), attn)),
        attn.norm_k(heads(attn.to_k(refs), attn)),
    ]
    v = [heads(attn.add_v_proj(text), attn), heads(base(attn.to_v)(target), attn), heads(attn.to_v(refs), attn)]
    rope_all = tuple(torch.cat([a, b]) for a, b in zip(rope, ref_rope))
    q = apply_rotary_emb(torch.cat(q, 1), rope_all, sequence_dim=1)
    k = apply_rotary_emb(torch.cat(k, 1), rope_all, sequence_dim=1)
    return q, k, torch.cat(v, 1)


def block_inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    dim = model.inner_dim
    n_tgt, n_ref = TARGET_GRID[0] * TARGET_GRID[1], REF_GRID[0] * REF_GRID[1]
    text = torch.randn(B, TEXT, dim, generator=g, dtype=torch.float64)
    target = torch.randn(B, n_tgt, dim, generator=g, dtype=torch.float64)
    refs = torch.randn(B, K * n_ref, dim, generator=g, dtype=torch.float64)
    ids = torch.cat([torch.zeros(TEXT, 3), grid_position_ids(*TARGET_GRID)])
    rope = tuple(t.double() for t in model.pos_embed(ids))
    ref_rope = tuple(t.double() for t in model.pos_embed(reference_position_ids(K, *REF_GRID)))
    return text, target, refs, rope, ref_rope


def test_double_block_attention_equals_naive_group_masked_attention():
    model = double_model()
    attn = model.transformer_blocks[0].attn
    text, target, refs, rope, ref_rope = block_inputs(model)
    with torch.no_grad():
        target_out, text_out, ref_out = attn(
            hidden_states=target,
            encoder_hidden_states=text,
            image_rotary_emb=rope,
            reference_branch=ReferenceBranch(refs, ref_rope, K, TEXT),
        )
        q, k, v = naive_projections(attn, text, target, refs, rope, ref_rope)
        scores = torch.einsum("bihd,bjhd->bhij", q, k) / q.shape[-1] ** 0.5
        mask = dense_mask(TEXT + target.shape[1], REF_GRID[0] * REF_GRID[1], K, isolated=False)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        out = torch.einsum("bhij,bjhd->bihd", weights, v).flatten(2)
        n_base = TEXT + target.shape[1]
        assert (text_out - attn.to_add_out(out[:, :TEXT])).abs().max() < 1e-10
        assert (target_out - base(attn.to_out[0])(out[:, TEXT:n_base])).abs().max() < 1e-10
        assert (ref_out - attn.to_out[0](out[:, n_base:])).abs().max() < 1e-10


def test_a_reference_never_sees_another_reference():
    model = double_model()
    attn = model.transformer_blocks[0].attn
    text, target, refs, rope, ref_rope = block_inputs(model)
    n_ref = REF_GRID[0] * REF_GRID[1]
    changed = refs.clone()
    changed[:, n_ref : 2 * n_ref] += 3.0  # perturb reference 2 only
    with torch.no_grad():
        outs = [
            attn(
                hidden_states=target,
                encoder_hidden_states=text,
                image_rotary_emb=rope,
                reference_branch=ReferenceBranch(r, ref_rope, K, TEXT),
            )
            for r in (refs, changed)
        ]
    (target_a, _, ref_a), (target_b, _, ref_b) = outs
    assert torch.equal(ref_a[:, :n_ref], ref_b[:, :n_ref])  # reference 1: exactly unaffected
    assert torch.equal(ref_a[:, 2 * n_ref :], ref_b[:, 2 * n_ref :])  # reference 3 too
    assert (target_a - target_b).abs().max() > 1e-3  # the target does attend to reference 2


def capture_attention_inputs(model, block_names):
    captured = {}

    def hook(name):
        def capture(module, args, kwargs):
            captured[name] = kwargs

        return capture

    handles = [
        model.get_submodule(name).attn.register_forward_pre_hook(hook(name), with_kwargs=True) for name in block_names
    ]
    return captured, handles


def naive_probe_rows(attn, kwargs, rows):
    """Eq. 8 for one block: softmax over target tokens of Q_u·K_v/sqrt(d), head-averaged."""
    refs: ReferenceBranch = kwargs["reference_branch"]
    q = apply_rotary_emb(attn.norm_q(heads(attn.to_q(refs.hidden_states), attn)), refs.rotary_emb, sequence_dim=1)
    hidden = kwargs["hidden_states"]
    key = attn.norm_k(heads(base(attn.to_k)(hidden), attn))
    if kwargs.get("encoder_hidden_states") is not None:  # double block: prepend the text keys
        text_key = attn.norm_added_k(heads(attn.add_k_proj(kwargs["encoder_hidden_states"]), attn))
        key = torch.cat([text_key, key], 1)
    key = apply_rotary_emb(key, kwargs["image_rotary_emb"], sequence_dim=1)[:, refs.text_len :]
    q = q[:, rows]
    scores = torch.einsum("brhd,bnhd->bhrn", q, key) / q.shape[-1] ** 0.5
    return scores.softmax(-1).mean(1)


@pytest.mark.parametrize("blocks", [["transformer_blocks.0"], ["transformer_blocks.1", "single_transformer_blocks.0"]])
def test_probe_rows_equal_naive_float64(blocks):
    model = double_model()
    batch = random_batch(model, num_refs=K, ref_grid=REF_GRID, grid=TARGET_GRID)
    kwargs = {
        k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.mosaic_kwargs().items()
    }
    rows = torch.tensor([0, 4, 7, 11, 17])
    captured, handles = capture_attention_inputs(model, blocks)
    probe = AttentionProbe(rows)
    with torch.no_grad(), probe.attached(model, blocks):
        mosaic_forward(model, **kwargs)
        expected = torch.stack([naive_probe_rows(model.get_submodule(n).attn, captured[n], rows) for n in blocks]).mean(
            0
        )
    for h in handles:
        h.remove()
    assert probe.count == len(blocks)
    assert (probe.attention() - expected).abs().max() <= 1e-10
    assert torch.allclose(probe.attention().sum(-1), torch.ones(B, len(rows), dtype=torch.float64))


def test_per_sample_rows_select_per_sample():
    model = make_transformer()
    batch = random_batch(model, num_refs=K, ref_grid=REF_GRID, grid=TARGET_GRID)
    per_sample = torch.tensor([[0, 3, 5], [2, 9, 16]])
    results = {}
    for key, rows in {"batched": per_sample, "row0": per_sample[0], "row1": per_sample[1]}.items():
        probe = AttentionProbe(rows)
        with torch.no_grad(), probe.attached(model, ["transformer_blocks.0"]):
            mosaic_forward(model, **batch.mosaic_kwargs())
        results[key] = probe.attention()
    assert torch.allclose(results["batched"][0], results["row0"][0])
    assert torch.allclose(results["batched"][1], results["row1"][1])


def test_probe_gradients_reach_the_reference_lora():
    model = make_transformer()
    add_random_lora(model)
    batch = random_batch(model, num_refs=2, ref_grid=REF_GRID, grid=TARGET_GRID)
    rows = torch.tensor([0, 1, 6, 8])
    probe = AttentionProbe(rows)
    with probe.attached(model, ["transformer_blocks.0"]):
        mosaic_forward(model, **batch.mosaic_kwargs())
    attention = probe.attention()[0]
    loss = scal_loss(attention, torch.tensor([0, 1, 2, 3]), torch.tensor([0, 0, 1, 1]), 2)
    loss.backward()
    lora_a = model.transformer_blocks[0].attn.to_q.lora_A["default"].weight
    assert lora_a.grad is not None and lora_a.grad.abs().max() > 0
    base_weight = model.transformer_blocks[0].attn.to_q.get_base_layer().weight
    assert base_weight.grad is None or not base_weight.requires_grad


def test_probe_detaches_and_refuses_a_second_probe():
    model = double_model()
    first, second = AttentionProbe(), AttentionProbe()
    with first.attached(model, ["transformer_blocks.0"]):
        with pytest.raises(RuntimeError, match="already attached"):
            with second.attached(model, ["transformer_blocks.0"]):
                pass
    assert model.transformer_blocks[0].attn.processor.probe is None
    with pytest.raises(ValueError, match="unknown transformer block"):
        with first.attached(model, ["transformer_blocks.99"]):
            pass
