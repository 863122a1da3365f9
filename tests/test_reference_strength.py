"""Per-reference strengths s_k (docs/DESIGN.md §7): text and target queries weigh reference k's
keys by s_k, an additive log s_k on their logits (s_k = 0: masked)."""

import copy
import math

import numpy as np
import pytest
import torch
from conftest import add_random_lora, make_transformer
from inputs import random_batch
from naive_attention import install_naive
from studio_fixtures import example_references, generate_inputs
from test_attention import REF_GRID, TEXT, block_inputs, double_model
from test_pipeline import REFS, generate, make_pipe

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic import attention
from mosaic_studio.mosaic.attention import ReferenceBranch, ReferenceCache
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.mosaic.transformer import check_reference_strengths, mosaic_forward
from mosaic_studio.studio.generation import Request
from mosaic_studio.studio.metadata import read_settings
from mosaic_studio.studio.tabs import generate as generate_tab

# Whole float64 forwards: diffusers' RoPE runs in float32, see tests/test_reference_cache.py.
FORWARD_TOL = 1e-7


def double_kwargs(batch) -> dict:
    return {
        k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.mosaic_kwargs().items()
    }


@pytest.fixture
def masks_seen(monkeypatch):
    """The attn_mask of every attention call the MOSAIC processors make."""
    seen = []
    original = attention.dispatch_attention_fn

    def spy(query, key, value, attn_mask=None, **kwargs):
        seen.append(attn_mask)
        return original(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(attention, "dispatch_attention_fn", spy)
    return seen


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("strengths", [(0.5, 0.0, 2.0), (1.0, 1.0, 0.25)])
def test_strengths_equal_naive_dense_attention(strengths, fast):
    model = make_transformer().double()
    add_random_lora(model)
    naive = copy.deepcopy(model)
    install_naive(naive, isolated=fast, strengths=strengths)
    kwargs = double_kwargs(random_batch(model, num_refs=3))
    with torch.no_grad():
        ours = mosaic_forward(
            model, **kwargs, reference_strengths=strengths, reference_cache=ReferenceCache() if fast else None
        )
        expected = mosaic_forward(naive, **kwargs)
        unweighted = mosaic_forward(model, **kwargs, reference_cache=ReferenceCache() if fast else None)
    assert (ours - expected).abs().max() <= FORWARD_TOL
    assert (ours - unweighted).abs().max() > 1e-4  # the strengths did change something


def test_unit_strengths_keep_the_unmasked_fused_call(masks_seen):
    model = make_transformer()
    kwargs = random_batch(model, num_refs=2).mosaic_kwargs()
    with torch.no_grad():
        default = mosaic_forward(model, **kwargs)
        assert masks_seen and all(mask is None for mask in masks_seen)
        masks_seen.clear()
        ones = mosaic_forward(model, **kwargs, reference_strengths=[1.0, 1])
        assert masks_seen and all(mask is None for mask in masks_seen)
        masks_seen.clear()
        mosaic_forward(model, **kwargs, reference_strengths=[1.0, 0.5])
    assert torch.equal(default, ones)
    base_calls = [mask for mask in masks_seen if mask is not None]
    assert len(base_calls) == len(model.transformer_blocks) + len(model.single_transformer_blocks)


def test_unit_strengths_give_todays_image(pipe):
    assert np.array_equal(
        generate(pipe, REFS[:3], reference_strengths=[1, 1, 1]).images, generate(pipe, REFS[:3]).images
    )


@pytest.mark.parametrize("fast", [False, True])
def test_zero_on_the_last_reference_equals_leaving_it_out(pipe, fast):
    call = dict(guidance_scale=3.0, reference_cache=fast)  # with CFG: both passes see the strengths
    dropped = generate(pipe, REFS[:3], reference_strengths=[1, 1, 0], **call).images
    without = generate(pipe, REFS[:2], **call).images
    assert np.abs(dropped - without).max() <= 1e-6
    assert np.abs(dropped - generate(pipe, REFS[:3], **call).images).max() > 1e-4


def test_zero_on_a_middle_reference_equals_leaving_it_out_at_the_same_positions():
    """The others keep the position ids they have with K = 3 (reference 3 stays shifted by 3·W)."""
    model = make_transformer()
    add_random_lora(model)
    kwargs = random_batch(model, num_refs=3).mosaic_kwargs()
    n_ref = kwargs["reference_latents"].shape[2]
    kept_ids = torch.cat([kwargs["reference_ids"][:n_ref], kwargs["reference_ids"][2 * n_ref :]])
    with torch.no_grad():
        dropped = mosaic_forward(model, **kwargs, reference_strengths=[1, 0, 1])
        without = mosaic_forward(
            model,
            **{**kwargs, "reference_latents": kwargs["reference_latents"][:, [0, 2]], "reference_ids": kept_ids},
        )
    assert (dropped - without).abs().max() <= 1e-5


def base_attention_mass(model, strengths, reference, monkeypatch) -> torch.Tensor:
    """Per (batch, head, target query): the softmax mass on reference `reference`'s keys, in float64,
    from the logits and mask the processor's base attention call really received."""
    attn = model.transformer_blocks[0].attn
    text, target, refs, rope, ref_rope = block_inputs(model)
    calls = []
    original = attention.dispatch_attention_fn
    monkeypatch.setattr(
        attention, "dispatch_attention_fn", lambda q, k, v, **kw: calls.append((q, k, kw)) or original(q, k, v, **kw)
    )
    branch = ReferenceBranch(
        refs, ref_rope, len(strengths), TEXT, strengths=torch.tensor(strengths, dtype=torch.float64)
    )
    with torch.no_grad():
        attn(hidden_states=target, encoder_hidden_states=text, image_rotary_emb=rope, reference_branch=branch)
    monkeypatch.undo()
    query, key, kw = calls[0]  # the base call: text and target queries over every key
    scores = torch.einsum("bihd,bjhd->bhij", query, key) / math.sqrt(query.shape[-1])
    weights = (scores + kw["attn_mask"]).softmax(-1)[:, :, TEXT:]  # target queries only
    n_base, n_ref = TEXT + target.shape[1], REF_GRID[0] * REF_GRID[1]
    return weights[..., n_base + reference * n_ref : n_base + (reference + 1) * n_ref].sum(-1)


def test_strength_scales_the_attention_mass_monotonically(monkeypatch):
    model = double_model()
    reference = 1
    mass = {s: base_attention_mass(model, [1.0, s, 1.0], reference, monkeypatch) for s in (0.0, 0.5, 1.0, 2.0)}
    assert torch.equal(mass[0.0], torch.zeros_like(mass[0.0]))
    assert (mass[0.0] < mass[0.5]).all() and (mass[0.5] < mass[1.0]).all() and (mass[1.0] < mass[2.0]).all()
    m = mass[1.0]  # multiplying a softmax weight by s renormalises to s·m / (s·m + 1 − m)
    for s in (0.5, 2.0):
        assert torch.allclose(mass[s], s * m / (s * m + 1 - m), rtol=0, atol=1e-12)


def test_strengths_are_recorded(pipe):
    record = generate(pipe, REFS[:3], reference_strengths=[1, 0.5, 2], record_attention=True).attention
    assert record.reference_strengths == (1.0, 0.5, 2.0)
    assert generate(pipe, REFS[:2], record_attention=True).attention.reference_strengths == (1.0, 1.0)


@pytest.mark.parametrize(
    "strengths, error, message",
    [
        ([1.0], ValueError, "1 values for 2 references"),
        ([1.0, -0.5], ValueError, r"reference_strengths\[1\] = -0.5: a strength must be finite and >= 0"),
        ([float("nan"), 1.0], ValueError, r"reference_strengths\[0\]"),
        ([1.0, float("inf")], ValueError, "finite"),
        ([True, 1.0], TypeError, "must be a number"),
        ("11", TypeError, "sequence of numbers"),
    ],
)
def test_bad_strengths_are_named(pipe, strengths, error, message):
    with pytest.raises(error, match=message):
        generate(pipe, REFS[:2], reference_strengths=strengths)


def test_check_reference_strengths_normalises():
    assert check_reference_strengths(None, 3) is None
    assert check_reference_strengths([1, 1.0], 2) is None  # all 1: the default path
    assert check_reference_strengths(torch.tensor([0.5, 2.0]), 2) == (0.5, 2.0)
    assert check_reference_strengths([], 0) is None


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


# --- the app --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def studio_pipe():
    return load_pipeline(DEFAULT_MODEL_DIR, device="cpu")


def test_generate_tab_passes_fast_mode_and_strengths_to_png_and_record(studio_pipe, tmp_path):
    handler = generate_tab.make_generate_handler(studio_pipe, outputs_dir=tmp_path, model_info={})
    inputs = generate_inputs(example_references(2), "a person and a quadruped")
    sliders = [0.5, 2.0, 1.0, 1.0, 1.0, 0.0]  # slots 3–6 have no reference: ignored
    view = handler(*inputs, None, True, *sliders, progress=lambda *a, **k: None)
    settings = read_settings(view.generation.paths[0])
    assert settings["reference_cache"] is True and settings["reference_strengths"] == [0.5, 2.0]
    record = view.generation.record
    assert record.reference_cache is True and record.reference_strengths == (0.5, 2.0)
    assert "fast mode · strengths 0.5, 2" in view.summary


def test_studio_request_names_a_bad_strength():
    request = Request("a box", 64, 64, 2, 3.5, 0, 1, reference_strengths=(1.0, 2.5))
    with pytest.raises(ValueError, match=r"reference 2 strength=2.5 is outside \[0, 2\]"):
        request.check()
    assert Request("a box", 64, 64, 2, 3.5, 0, 1, reference_strengths=(0.5,)).strengths_for(3) == [0.5, 1.0, 1.0]


def test_one_strength_slider_per_uploaded_reference():
    shown = [update["visible"] for update in generate_tab.on_reference_count(["a.png", "b.png"])]
    assert shown == [True, True, False, False, False, False]
