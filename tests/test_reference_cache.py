"""Fast mode (docs/DESIGN.md §7): references attend only to themselves, their keys and values are
computed once and read from a `ReferenceCache` at every later step."""

import copy

import numpy as np
import pytest
import torch
from conftest import add_random_lora, make_transformer
from inputs import random_batch
from naive_attention import install_naive
from test_pipeline import REFS, generate, make_pipe

from mosaic_studio.mosaic.attention import ReferenceCache
from mosaic_studio.mosaic.probe import AttentionProbe
from mosaic_studio.mosaic.transformer import mosaic_forward

TIMESTEPS = (0.9, 0.6, 0.2)  # three denoising steps: the first writes the cache, the others read it
# Whole float64 forwards agree to this, not to 1e-15: diffusers' apply_rotary_emb computes in
# float32 (x.float()), so last-bit differences upstream can flip a float32 rounding. Fast mode
# differs from exact mode by ~1e-1 on these models, far above it.
FORWARD_TOL = 1e-7


def float64_model():
    model = make_transformer().double()
    add_random_lora(model)
    return model


def double_kwargs(batch) -> dict:
    return {
        k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.mosaic_kwargs().items()
    }


def steps(kwargs: dict, seed: int = 0):
    """Per-step inputs: the target latent and timestep change, references and prompt stay."""
    g = torch.Generator().manual_seed(seed)
    for t in TIMESTEPS:
        noisy = torch.randn(kwargs["hidden_states"].shape, generator=g, dtype=kwargs["hidden_states"].dtype)
        yield {**kwargs, "hidden_states": noisy, "timestep": torch.full_like(kwargs["timestep"], t)}


def test_fast_mode_equals_naive_dense_attention_with_isolated_references():
    """Ours (cache written at step 0, read later) against a dense float64 mask in which reference
    rows are cut off text and target, recomputed from the references at every step."""
    model = float64_model()
    naive = copy.deepcopy(model)
    install_naive(naive, isolated=True)
    kwargs = double_kwargs(random_batch(model, num_refs=3))
    cache = ReferenceCache()
    with torch.no_grad():
        for step in steps(kwargs):
            ours = mosaic_forward(model, **step, reference_cache=cache)
            expected = mosaic_forward(naive, **step)
            assert (ours - expected).abs().max() <= FORWARD_TOL
    assert cache.filled and cache.num_refs == 3


def test_fast_mode_is_not_the_exact_group_mask():
    """The test above could pass on an exact-mode forward if the references did not matter; they do."""
    model = float64_model()
    kwargs = double_kwargs(random_batch(model, num_refs=2))
    with torch.no_grad():
        fast = mosaic_forward(model, **kwargs, reference_cache=ReferenceCache())
        exact = mosaic_forward(model, **kwargs)
    assert (fast - exact).abs().max() > 1e-4


def test_cached_equals_recomputed_at_every_step():
    """In fast mode the reference stream sees neither the target nor t, so reading the cache gives
    what recomputing it (a fresh cache at each step) would give."""
    model = make_transformer()
    add_random_lora(model)
    kwargs = random_batch(model, num_refs=3).mosaic_kwargs()
    cache = ReferenceCache()
    with torch.no_grad():
        for step in steps(kwargs):
            cached = mosaic_forward(model, **step, reference_cache=cache)
            recomputed = mosaic_forward(model, **step, reference_cache=ReferenceCache())
            assert torch.equal(cached, recomputed)


def test_a_filled_cache_replaces_the_reference_latents():
    model = make_transformer()
    kwargs = random_batch(model, num_refs=2).mosaic_kwargs()
    cache = ReferenceCache()
    with torch.no_grad():
        mosaic_forward(model, **kwargs, reference_cache=cache)
        with_latents = mosaic_forward(model, **kwargs, reference_cache=cache)
        without = mosaic_forward(
            model, **{**kwargs, "reference_latents": None, "reference_ids": None}, reference_cache=cache
        )
    assert torch.equal(with_latents, without)


def test_a_cache_that_does_not_fit_is_refused():
    model = make_transformer()
    kwargs = random_batch(model, num_refs=2).mosaic_kwargs()
    cache = ReferenceCache()
    with torch.no_grad():
        mosaic_forward(model, **kwargs, reference_cache=cache)
        three = random_batch(model, num_refs=3).mosaic_kwargs()
        with pytest.raises(ValueError, match="holds 2 references but 3"):
            mosaic_forward(model, **three, reference_cache=cache)
        single = random_batch(model, batch=1, num_refs=2).mosaic_kwargs()
        with pytest.raises(ValueError, match="written for batch 2, this call has 1"):
            mosaic_forward(model, **single, reference_cache=cache)
        other = make_transformer(seed=3)
        with pytest.raises(RuntimeError, match="no cached reference keys"):
            mosaic_forward(other, **kwargs, reference_cache=cache)


def test_probe_reads_cached_queries_and_needs_them():
    model = make_transformer()
    kwargs = random_batch(model, num_refs=2).mosaic_kwargs()
    blocks = ["transformer_blocks.0", "single_transformer_blocks.1"]
    later = list(steps(kwargs))[1]
    rows = {}
    for name, first_cache in (("cached", ReferenceCache(keep_queries=True)), ("recomputed", None)):
        with torch.no_grad():
            mosaic_forward(model, **kwargs, reference_cache=first_cache or ReferenceCache())
            probe = AttentionProbe()
            with probe.attached(model, blocks):
                mosaic_forward(model, **later, reference_cache=first_cache or ReferenceCache())
        rows[name] = probe.attention()
    assert torch.equal(rows["cached"], rows["recomputed"])
    bare = ReferenceCache()
    with torch.no_grad():
        mosaic_forward(model, **kwargs, reference_cache=bare)
        with AttentionProbe().attached(model, blocks), pytest.raises(RuntimeError, match="keep_queries=True"):
            mosaic_forward(model, **later, reference_cache=bare)


# --- the pipeline ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


def test_fast_mode_without_references_is_exact_mode(pipe):
    assert np.array_equal(generate(pipe, [], reference_cache=True).images, generate(pipe, []).images)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])  # 3.0: classifier-free guidance, two caches
def test_pipeline_cache_equals_recomputing_each_step(pipe, monkeypatch, guidance_scale):
    call = dict(reference_cache=True, num_inference_steps=3, guidance_scale=guidance_scale)
    cached = generate(pipe, REFS[:3], **call).images
    # a cache that never reports itself filled is rewritten at every step: the references rerun
    monkeypatch.setattr(ReferenceCache, "filled", property(lambda self: False))
    recomputed = generate(pipe, REFS[:3], **call).images
    assert np.abs(cached - recomputed).max() <= 1e-6
    monkeypatch.undo()
    exact = generate(pipe, REFS[:3], num_inference_steps=3, guidance_scale=guidance_scale).images
    assert np.abs(cached - exact).max() > 1e-4  # fast mode is a different computation


def test_later_steps_do_not_run_the_reference_stream(pipe, monkeypatch):
    embedded, reads = [], []
    handle = pipe.transformer.x_embedder.register_forward_hook(lambda m, args, out: embedded.append(out.shape[1]))
    original = ReferenceCache.read
    monkeypatch.setattr(ReferenceCache, "read", lambda self, attn: reads.append(attn) or original(self, attn))
    n_blocks = len(pipe.transformer.transformer_blocks) + len(pipe.transformer.single_transformer_blocks)
    try:
        generate(pipe, REFS[:2], num_inference_steps=4, guidance_scale=1.0)
        assert len(embedded) == 8 and not reads  # exact mode: target and references at every step
        embedded.clear()
        generate(pipe, REFS[:2], num_inference_steps=4, guidance_scale=1.0, reference_cache=True)
    finally:
        handle.remove()
    target_tokens = embedded[0]
    assert len(embedded) == 5  # 4 target embeddings + the references once, at step 0
    assert sorted(embedded).count(target_tokens) == 4
    assert len(reads) == 3 * n_blocks  # steps 1–3 read every block's keys and values


def test_attention_record_works_in_fast_mode_and_says_so(pipe):
    fast = generate(pipe, REFS[:2], reference_cache=True, record_attention=True, num_inference_steps=3).attention
    exact = generate(pipe, REFS[:2], record_attention=True, num_inference_steps=3).attention
    assert fast.reference_cache is True and exact.reference_cache is False
    maps = fast.maps()
    assert maps.shape == exact.maps().shape
    assert torch.allclose(maps.sum(-1), torch.ones(maps.shape[:-1]), atol=1e-5)
    assert not torch.allclose(maps, exact.maps())


def test_reference_cache_must_be_a_bool(pipe):
    with pytest.raises(TypeError, match="reference_cache must be True or False"):
        generate(pipe, REFS[:1], reference_cache="yes")
