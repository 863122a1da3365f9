"""The multi-branch forward against stock diffusers and against its own semantics (docs/DESIGN.md §1)."""

import copy

import pytest
import torch
from conftest import add_random_lora, make_transformer
from inputs import random_batch

from mosaic_studio.mosaic.attention import install_mosaic_processors
from mosaic_studio.mosaic.transformer import mosaic_forward, reference_position_ids


@pytest.mark.parametrize("guidance_embeds", [False, True])
def test_no_references_no_lora_equals_stock_forward(guidance_embeds):
    model = make_transformer(guidance_embeds=guidance_embeds, mosaic=False)
    stock = copy.deepcopy(model)  # keeps diffusers' own attention processors
    install_mosaic_processors(model)
    batch = random_batch(model, guidance=3.5 if guidance_embeds else None)
    with torch.no_grad():
        expected = stock(**batch.stock_kwargs()).sample
        actual = mosaic_forward(model, **batch.mosaic_kwargs())
    assert (actual - expected).abs().max() <= 1e-5


def test_lora_never_touches_text_or_target():
    model = make_transformer(mosaic=False)
    stock = copy.deepcopy(model)
    install_mosaic_processors(model)
    add_random_lora(model)
    batch = random_batch(model)
    with torch.no_grad():
        expected = stock(**batch.stock_kwargs()).sample
        actual = mosaic_forward(model, **batch.mosaic_kwargs())
    assert (actual - expected).abs().max() <= 1e-5


def test_lora_changes_output_once_references_exist():
    model = make_transformer()
    plain = copy.deepcopy(model)
    add_random_lora(model)
    batch = random_batch(model, num_refs=2)
    with torch.no_grad():
        with_lora = mosaic_forward(model, **batch.mosaic_kwargs())
        without = mosaic_forward(plain, **batch.mosaic_kwargs())
    assert (with_lora - without).abs().max() > 1e-3


def test_references_change_the_prediction_and_order_matters():
    model = make_transformer()
    batch = random_batch(model, num_refs=2)
    with torch.no_grad():
        two = mosaic_forward(model, **batch.mosaic_kwargs())
        none = mosaic_forward(model, **{**batch.mosaic_kwargs(), "reference_latents": None, "reference_ids": None})
        swapped = mosaic_forward(
            model, **{**batch.mosaic_kwargs(), "reference_latents": batch.reference_latents.flip(1)}
        )
    assert (two - none).abs().max() > 1e-3
    assert (two - swapped).abs().max() > 1e-5  # positions tell the references apart


def test_reference_position_ids_shift_left_by_reference_width():
    ids = reference_position_ids(3, 2, 4)  # 3 refs on a 2x4 grid
    cols = ids[:, 2].reshape(3, 8)
    assert torch.equal(ids[:, 0], torch.zeros(24))
    for k in range(3):
        assert cols[k].min() == -(k + 1) * 4 and cols[k].max() == -(k + 1) * 4 + 3
    assert torch.equal(ids[:8, 1], torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1]))


def test_references_use_timestep_zero_and_guidance_one():
    """Changing the target timestep or the guidance must not change what the reference branch
    is modulated with: capture the reference temb entering the first block."""
    model = make_transformer(guidance_embeds=True)
    seen = []

    def capture(module, args, kwargs):
        seen.append(kwargs["emb"].clone())

    handle = model.transformer_blocks[0].norm1.register_forward_pre_hook(capture, with_kwargs=True)
    batch = random_batch(model, num_refs=1, guidance=4.0)
    with torch.no_grad():
        mosaic_forward(model, **batch.mosaic_kwargs())
        mosaic_forward(
            model, **{**batch.mosaic_kwargs(), "timestep": batch.timestep * 0.5, "guidance": batch.guidance * 2}
        )
    handle.remove()
    (target_a, ref_a), (target_b, ref_b) = seen[:2], seen[2:]
    assert (target_a - target_b).abs().max() > 1e-4
    assert torch.equal(ref_a, ref_b)
    expected = model.time_text_embed(torch.zeros(2), torch.full((2,), 1000.0), batch.pooled_projections)
    assert torch.allclose(ref_a, expected, atol=1e-6)


def test_bad_reference_ids_rejected():
    model = make_transformer()
    batch = random_batch(model, num_refs=2)
    with pytest.raises(ValueError, match="reference_ids"):
        mosaic_forward(model, **{**batch.mosaic_kwargs(), "reference_ids": batch.reference_ids[:5]})


def test_gradient_checkpointing_gives_the_same_gradients():
    model = make_transformer()
    add_random_lora(model)
    batch = random_batch(model, num_refs=2)

    def lora_grads(checkpointing):
        model.zero_grad()
        model.gradient_checkpointing = checkpointing
        mosaic_forward(model, **batch.mosaic_kwargs()).square().mean().backward()
        # the last single block's reference-side layers feed nothing, so they get no gradient
        return {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n and p.grad is not None}

    plain, checkpointed = lora_grads(False), lora_grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-6) for n in plain)
    assert all(g.abs().max() > 0 for g in plain.values())
