"""Reliability of the library core: high-bit-depth images, numeric argument ranges, non-finite
LoRA files, and out-of-range attention lookups are handled or refused with a named error."""

import io
import math

import numpy as np
import pytest
import torch
from conftest import add_random_lora, make_transformer
from PIL import Image
from safetensors.torch import load_file, save_file

from mosaic_studio.mosaic.images import load_image, preprocess_reference
from mosaic_studio.mosaic.lora_io import DEFAULT_WEIGHT_NAME
from mosaic_studio.mosaic.pipeline import MosaicPipeline
from mosaic_studio.mosaic.record import AttentionRecord
from mosaic_studio.mosaic.tiny import TinyFluxConfig, tiny_flux_components

SIZE = 64


def make_pipe(seed=0, **config):
    return MosaicPipeline(**tiny_flux_components(TinyFluxConfig(**config), seed=seed))


def box(colour=(200, 30, 30), size=96):
    image = np.full((size, size, 3), 255, np.uint8)
    image[20:70, 25:65] = colour
    return Image.fromarray(image)


def generate(pipe, seed=0, **kw):
    kw = {"height": SIZE, "width": SIZE, "num_inference_steps": 2, "output_type": "np", **kw}
    return pipe("a red box", reference_images=[box()], generator=torch.Generator().manual_seed(seed), **kw).images


@pytest.fixture(scope="module")
def pipe():
    return make_pipe()


# --- 13. high-bit-depth grayscale images --------------------------------------------------------------


def grey_levels(dtype, levels, size=64):
    """A (size, size) array in four vertical bands of `levels`."""
    array = np.zeros((size, size), dtype)
    for i, level in enumerate(levels):
        array[:, i * size // 4 : (i + 1) * size // 4] = level
    return array


def band_values(image):
    """The RGB value at the middle of each of the four bands (all three channels equal)."""
    pixels = np.asarray(image)
    assert image.mode == "RGB" and (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    return [int(pixels[32, 8 + 16 * i, 0]) for i in range(4)]


def png_bytes(image, **params):
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def test_16_bit_grayscale_png_keeps_its_tones(tmp_path):
    image = Image.fromarray(grey_levels(np.uint16, [0, 257 * 64, 257 * 128, 65535]))
    assert image.mode == "I;16"
    data = png_bytes(image)
    path = tmp_path / "deep.png"
    path.write_bytes(data)
    assert Image.open(path).mode in ("I;16", "I")  # what Pillow decodes a 16-bit grey PNG to
    for source in (image, data, path, str(path), Image.open(io.BytesIO(data))):
        assert band_values(load_image(source)) == [0, 64, 128, 255]


def test_16_bit_big_endian_and_tiff():
    array = grey_levels(np.uint16, [0, 257 * 10, 257 * 200, 65535])
    big = Image.frombytes("I;16B", (64, 64), array.astype(">u2").tobytes())
    assert band_values(load_image(big)) == [0, 10, 200, 255]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "TIFF")
    assert band_values(load_image(buffer.getvalue())) == [0, 10, 200, 255]


def test_16_bit_reference_is_not_preprocessed_to_white():
    array = np.full((96, 96), 65535, np.uint16)
    array[20:70, 25:65] = 257 * 50  # a dark subject on white
    reference = preprocess_reference(Image.fromarray(array), 64)
    pixels = np.asarray(reference)
    assert pixels.min() == 50 and pixels.max() == 255
    assert (pixels == 50).all(axis=2).mean() > 0.3  # the subject fills most of the canvas


def test_32_bit_int_image_uses_the_16_bit_range_or_its_own():
    in_16_bit = Image.fromarray(grey_levels(np.int32, [0, 257 * 64, 257 * 128, 65535]))
    assert in_16_bit.mode == "I"
    assert band_values(load_image(in_16_bit)) == [0, 64, 128, 255]
    # beyond the 16-bit range: the image's own min..max is stretched to 0..255
    wide = Image.fromarray(grey_levels(np.int32, [-1000, 0, 1000, 100000]))
    assert band_values(load_image(wide)) == [0, 3, 5, 255]


def test_float_image_uses_0_1_or_its_own_range():
    unit = Image.fromarray(grey_levels(np.float32, [0.0, 0.25, 0.5, 1.0]))
    assert unit.mode == "F"
    assert band_values(load_image(unit)) == [0, 64, 128, 255]
    wide = Image.fromarray(grey_levels(np.float32, [-2.0, 0.0, 2.0, 6.0]))
    assert band_values(load_image(wide)) == [0, 64, 128, 255]
    flat = Image.fromarray(grey_levels(np.float32, [7.0] * 4))
    assert band_values(load_image(flat)) == [255] * 4  # no range to stretch: clipped into 0..1 as 1


def test_non_finite_float_image_is_refused():
    array = grey_levels(np.float32, [0.0, 0.5, np.nan, 1.0])
    with pytest.raises(ValueError, match="reference.*NaN or infinite"):
        load_image(Image.fromarray(array), name="reference")


def test_16_bit_png_transparency_is_kept():
    array = grey_levels(np.uint16, [0, 257 * 64, 257 * 128, 65535])
    image = Image.open(io.BytesIO(png_bytes(Image.fromarray(array), transparency=65535)))
    loaded = load_image(image)
    assert loaded.mode == "RGBA"
    pixels = np.asarray(loaded)
    assert [int(pixels[32, 8 + 16 * i, 3]) for i in range(4)] == [255, 255, 255, 0]
    assert [int(pixels[32, 8 + 16 * i, 0]) for i in range(3)] == [0, 64, 128]


# --- 14. numeric arguments and LoRA values ------------------------------------------------------------


# None is not here: it means the model's own setting
@pytest.mark.parametrize("guidance", [math.inf, -math.inf, math.nan, 1e30, -0.5, 100.5, "3.5", True])
def test_guidance_scale_must_be_finite_and_in_range(pipe, guidance):
    with pytest.raises(ValueError, match=r"guidance_scale must be a finite number in \[0, 100\]"):
        generate(pipe, guidance_scale=guidance)


@pytest.mark.parametrize("guidance", [0, 1.0, 100, np.float32(7.5)])
def test_guidance_scale_in_range_is_accepted(pipe, guidance):
    images = generate(pipe, guidance_scale=guidance, num_inference_steps=1)
    assert np.isfinite(images).all()


def test_embedded_guidance_is_checked_too():
    distilled = make_pipe(guidance_embeds=True)
    with pytest.raises(ValueError, match="guidance_scale"):
        generate(distilled, guidance_scale=math.inf)


@pytest.mark.parametrize("length", [100000, 129, 0, -1, 2.5, True])
def test_max_sequence_length_is_bounded_by_the_tokenizer(pipe, length):
    assert pipe.tokenizer_2.model_max_length == 128
    with pytest.raises(ValueError, match=r"max_sequence_length must be an int in \[1, 128\]"):
        generate(pipe, max_sequence_length=length)


def test_max_sequence_length_limit_follows_the_loaded_tokenizer():
    short = make_pipe(t5_max_length=48)
    with pytest.raises(ValueError, match=r"max_sequence_length must be an int in \[1, 48\]"):
        generate(short, max_sequence_length=64)
    assert np.isfinite(generate(short, max_sequence_length=48, num_inference_steps=1)).all()
    assert np.isfinite(generate(short, max_sequence_length=1, num_inference_steps=1)).all()


@pytest.mark.parametrize("steps", [100000, 1001, True, 2.0])
def test_num_inference_steps_is_bounded(pipe, steps):
    with pytest.raises(ValueError, match=r"num_inference_steps must be an int in \[1, 1000\]"):
        generate(pipe, num_inference_steps=steps)


def saved_lora(tmp_path, corrupt):
    source = make_pipe()
    add_random_lora(source.transformer, adapter_name="subject")
    source.save_mosaic_lora(tmp_path)
    path = tmp_path / DEFAULT_WEIGHT_NAME
    save_file(corrupt(load_file(path)), path)
    return tmp_path


def all_nan(state):
    return {key: torch.full_like(value, math.nan) for key, value in state.items()}


def one_inf(state):
    key = next(k for k in sorted(state) if k.endswith("x_embedder.lora_B.weight"))
    bad = state[key].clone()
    bad[0, 0] = math.inf
    return {**state, key: bad}


@pytest.mark.parametrize("corrupt, message", [(all_nan, "NaN"), (one_inf, "x_embedder.lora_B.weight: 1 of")])
def test_non_finite_lora_is_refused_and_the_pipeline_is_unchanged(tmp_path, corrupt, message):
    folder = saved_lora(tmp_path, corrupt)
    target = make_pipe()
    before = generate(target)
    with pytest.raises(ValueError, match=f"not a usable MOSAIC LoRA(.|\n)*{message}(.|\n)*finite"):
        target.load_mosaic_lora(folder, weight_name=DEFAULT_WEIGHT_NAME)
    assert not getattr(target.transformer, "peft_config", None)
    assert not any("lora_" in name for name, _ in target.transformer.named_parameters())
    assert np.array_equal(generate(target), before)


def test_non_finite_lora_leaves_a_loaded_adapter_in_place(tmp_path):
    good = tmp_path / "good"
    source = make_pipe()
    add_random_lora(source.transformer, adapter_name="subject")
    source.save_mosaic_lora(good)
    bad = saved_lora(tmp_path / "bad", all_nan)
    target = make_pipe()
    target.load_mosaic_lora(good, weight_name=DEFAULT_WEIGHT_NAME)
    before = generate(target)
    lora = {n: p.clone() for n, p in target.transformer.named_parameters() if "lora_" in n}
    with pytest.raises(ValueError, match="finite"):
        target.load_mosaic_lora(bad, weight_name=DEFAULT_WEIGHT_NAME, adapter_name="other")
    assert list(target.transformer.peft_config) == ["subject"]
    after = {n: p for n, p in target.transformer.named_parameters() if "lora_" in n}
    assert after.keys() == lora.keys() and all(torch.equal(after[n], lora[n]) for n in lora)
    assert np.array_equal(generate(target), before)


def test_lora_values_must_fit_the_transformer_dtype():
    from mosaic_studio.mosaic.lora_io import lora_value_problems

    transformer = make_transformer().to(torch.float16)
    state = {"transformer.x_embedder.lora_A.weight": torch.full((4, 16), 1e6)}
    problems = lora_value_problems(state, transformer)
    assert len(problems) == 1 and "float16" in problems[0]
    assert lora_value_problems(state, make_transformer()) == []  # float32 holds 1e6


# --- 15. attention record lookups ---------------------------------------------------------------------


def make_record(images=2, refs=3, ref_grid=(2, 3), target_grid=(4, 4), ppt=16):
    n_ref, n_tgt = ref_grid[0] * ref_grid[1], target_grid[0] * target_grid[1]
    maps = torch.arange(images * refs * n_ref * n_tgt, dtype=torch.float32).reshape(images, refs, n_ref, n_tgt)
    return AttentionRecord({"b0": maps}, ref_grid, target_grid, (0, 1), ppt)


def test_heatmap_of_valid_points_including_the_edges():
    record = make_record()
    last = record.heatmap(2, 47.999, 31.999, image=1)  # the last pixel of the 48×32 reference
    assert torch.equal(last, record.maps()[1, 2, 5].reshape(4, 4))
    assert torch.equal(record.heatmap(0, 0, 0), record.maps()[0, 0, 0].reshape(4, 4))
    assert record.reference_token(17, 16) == 4


@pytest.mark.parametrize("reference", [-1, 3, 10])
def test_heatmap_refuses_a_reference_out_of_range(reference):
    with pytest.raises(IndexError, match=rf"reference={reference} is outside \[0, 2\]"):
        make_record().heatmap(reference, 0, 0)


@pytest.mark.parametrize("image", [-1, 2])
def test_heatmap_refuses_an_image_out_of_range(image):
    with pytest.raises(IndexError, match=rf"image={image} is outside \[0, 1\]"):
        make_record().heatmap(0, 0, 0, image=image)


@pytest.mark.parametrize(
    "x, y, message",
    [
        (-1, 0, r"x=-1 is outside \[0, 48\)"),
        (48, 0, r"x=48 is outside \[0, 48\)"),
        (0, 32, r"y=32 is outside \[0, 32\)"),
        (0, -0.5, r"y=-0.5 is outside \[0, 32\)"),
        (math.nan, 0, r"x=nan is outside \[0, 48\)"),
        (1000, 5, r"x=1000 is outside \[0, 48\)"),
    ],
)
def test_heatmap_and_token_refuse_pixels_outside_the_reference(x, y, message):
    record = make_record()
    with pytest.raises(ValueError, match=message):
        record.heatmap(0, x, y)
    with pytest.raises(ValueError, match=message):
        record.reference_token(x, y)


def test_reference_index_must_be_an_int():
    with pytest.raises(IndexError, match="reference must be an int"):
        make_record().heatmap(1.5, 0, 0)
