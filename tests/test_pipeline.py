"""MosaicPipeline end to end on a tiny FLUX-architecture pipeline (random weights)."""

import numpy as np
import pytest
import torch
from conftest import add_random_lora
from PIL import Image
from safetensors.torch import load_file, save_file

from mosaic_studio.mosaic.lora_io import DEFAULT_WEIGHT_NAME
from mosaic_studio.mosaic.pipeline import MosaicPipeline
from mosaic_studio.mosaic.tiny import TinyFluxConfig, tiny_flux_components

SIZE = 64  # 4x4 target tokens with the 8x VAE


def make_pipe(seed=0, **config):
    return MosaicPipeline(**tiny_flux_components(TinyFluxConfig(**config), seed=seed))


def subject(colour, seed=0, size=96):
    """A coloured blob on white: a plausible reference."""
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), 255, np.uint8)
    top, left = rng.integers(5, 30, size=2)
    image[top : top + 50, left : left + 40] = colour
    return Image.fromarray(image)


REFS = [
    subject(c, i)
    for i, c in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (200, 30, 200), (30, 200, 200)])
]


def generate(pipe, refs, seed=0, **kw):
    kw = {"height": SIZE, "width": SIZE, "num_inference_steps": 2, "output_type": "np", **kw}
    return pipe("a red box and a green box", reference_images=refs, generator=torch.Generator().manual_seed(seed), **kw)


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


@pytest.mark.parametrize("num_refs", [0, 1, 3, 6])
def test_generates_with_0_to_6_references_deterministically(pipe, num_refs):
    first = generate(pipe, REFS[:num_refs]).images
    again = generate(pipe, REFS[:num_refs]).images
    other_seed = generate(pipe, REFS[:num_refs], seed=1).images
    assert first.shape == (1, SIZE, SIZE, 3) and np.isfinite(first).all()
    assert np.array_equal(first, again)
    assert np.abs(first - other_seed).max() > 1e-3


def test_references_change_the_image(pipe):
    assert np.abs(generate(pipe, REFS[:2]).images - generate(pipe, REFS[2:4]).images).max() > 1e-4


def test_pil_output_and_several_images_per_prompt(pipe):
    images = generate(pipe, REFS[:2], output_type="pil", num_images_per_prompt=2).images
    assert len(images) == 2 and images[0].size == (SIZE, SIZE)


def test_attention_record_shapes_and_rows_are_distributions(pipe):
    out = generate(pipe, REFS[:3], record_attention=True, num_inference_steps=3, attention_steps=(1, 3))
    record = out.attention
    assert record.blocks == ["transformer_blocks.0", "transformer_blocks.1"]
    maps = record.maps()
    n_ref = (SIZE // 16) ** 2
    assert maps.shape == (1, 3, n_ref, (SIZE // 16) ** 2)
    assert torch.allclose(maps.sum(-1), torch.ones(1, 3, n_ref), atol=1e-5)
    assert record.heatmap(reference=2, x=40, y=10).shape == (SIZE // 16, SIZE // 16)
    assert record.overview().shape == (3, SIZE // 16, SIZE // 16)
    assert not torch.allclose(record.maps(["transformer_blocks.0"]), record.maps(["transformer_blocks.1"]))


def test_attention_record_memory_does_not_grow_with_steps(pipe):
    short = generate(pipe, REFS[:2], record_attention=True, num_inference_steps=2).attention
    long = generate(pipe, REFS[:2], record_attention=True, num_inference_steps=6).attention
    assert all(short.per_block[b].shape == long.per_block[b].shape for b in short.blocks)


def test_classifier_free_guidance_runs_two_passes_and_embedded_guidance_one(monkeypatch):
    calls = []
    cfg_pipe = make_pipe()
    original = MosaicPipeline._denoise
    monkeypatch.setattr(MosaicPipeline, "_denoise", lambda self, **kw: calls.append(1) or original(self, **kw))
    generate(cfg_pipe, REFS[:1], guidance_scale=3.0, num_inference_steps=3)
    assert len(calls) == 6
    calls.clear()
    generate(cfg_pipe, REFS[:1], guidance_scale=1.0, num_inference_steps=3)
    assert len(calls) == 3
    calls.clear()
    distilled = make_pipe(guidance_embeds=True)
    a = generate(distilled, REFS[:1], guidance_scale=3.0, num_inference_steps=3).images
    assert len(calls) == 3
    b = generate(distilled, REFS[:1], guidance_scale=5.0, num_inference_steps=3).images
    assert np.abs(a - b).max() > 1e-5  # the guidance value is embedded, so it matters


def test_callback_sees_every_step(pipe):
    steps = []
    generate(pipe, REFS[:1], num_inference_steps=3, callback_on_step_end=lambda p, i, t, kw: steps.append(i) or {})
    assert steps == [0, 1, 2]


def test_model_cpu_offload_gives_the_same_image():
    offloaded = make_pipe()
    expected = generate(offloaded, REFS[:2]).images
    offloaded.enable_model_cpu_offload(device="cpu")
    assert np.allclose(generate(offloaded, REFS[:2]).images, expected, atol=1e-6)


def test_lora_round_trip_in_the_authors_format(tmp_path):
    trained = make_pipe()
    add_random_lora(trained.transformer, adapter_name="subject")
    expected = generate(trained, REFS[:3]).images
    trained.save_mosaic_lora(tmp_path)
    keys = load_file(tmp_path / DEFAULT_WEIGHT_NAME).keys()
    assert all(k.startswith("transformer.") and (".lora_A.weight" in k or ".lora_B.weight" in k) for k in keys)
    assert "transformer.x_embedder.lora_A.weight" in keys
    assert "transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight" in keys

    fresh = make_pipe()
    before = generate(fresh, REFS[:3]).images
    fresh.load_mosaic_lora(tmp_path, weight_name=DEFAULT_WEIGHT_NAME)
    saved = {n: p for n, p in trained.transformer.named_parameters() if "lora_" in n}
    loaded = {n: p for n, p in fresh.transformer.named_parameters() if "lora_" in n}
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[n], loaded[n]) for n in saved)
    # same weights; separately allocated tensors may take other CPU kernel paths (float32 rounding)
    assert np.abs(generate(fresh, REFS[:3]).images - expected).max() < 1e-5
    assert np.abs(before - expected).max() > 1e-4


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda sd: {**sd, "transformer.no_such_block.lora_A.weight": torch.zeros(4, 64)}, "no module 'no_such_block'"),
        (
            lambda sd: {
                k: (v[:, :3].contiguous() if k.endswith("x_embedder.lora_A.weight") else v) for k, v in sd.items()
            },
            "do not fit",
        ),
        (lambda sd: {k: v for k, v in sd.items() if not k.endswith("x_embedder.lora_B.weight")}, "not both"),
        (lambda sd: {"unet.down.lora_A.weight": torch.zeros(1)}, "not a 'transformer"),
    ],
)
def test_mismatched_lora_is_refused_and_nothing_is_loaded(tmp_path, corrupt, message):
    source = make_pipe()
    add_random_lora(source.transformer, adapter_name="subject")
    source.save_mosaic_lora(tmp_path)
    path = tmp_path / DEFAULT_WEIGHT_NAME
    save_file(corrupt(load_file(path)), path)
    target = make_pipe()
    with pytest.raises(ValueError, match=message):
        target.load_mosaic_lora(tmp_path, weight_name=DEFAULT_WEIGHT_NAME)
    assert not getattr(target.transformer, "peft_config", None)
    assert not any("lora_" in name for name, _ in target.transformer.named_parameters())


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"reference_images": REFS + REFS[:1]}, ValueError, "at most 6"),
        ({"reference_images": [REFS[0], 42]}, TypeError, "reference 2"),
        ({"reference_images": [Image.new("RGB", (20, 20))]}, ValueError, "20x20|20×20"),
        ({"reference_images": REFS[0]}, TypeError, "list of images"),
        ({"height": 72}, ValueError, "height=72 is not divisible by 16"),
        ({"width": 48, "reference_size": 40}, ValueError, "not divisible by 16"),
        ({"prompt": "  ", "reference_images": []}, ValueError, "prompt is empty"),
        ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
        ({"output_type": "jpeg"}, ValueError, "output_type"),
        ({"record_attention": True, "attention_steps": (2, 1)}, ValueError, "attention_steps"),
    ],
)
def test_bad_input_is_named(pipe, kwargs, error, message):
    call = {
        "prompt": "a red box",
        "reference_images": REFS[:1],
        "height": SIZE,
        "width": SIZE,
        "num_inference_steps": 2,
        **kwargs,
    }
    with pytest.raises(error, match=message):
        pipe(**call)
