"""int8 weight quantization (torchao) of the embedded default, on the CPU: it loads, takes the
reference LoRA on top of the quantized base, keeps that LoRA on reference tokens only, stays
close to the unquantized pipeline, and stores what int8 should store (measured)."""

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.lora import adapters_disabled
from mosaic_studio.mosaic.quantization import (
    QUANTIZED_COMPONENTS,
    check_quantization,
    quantization_config,
    quantized_linears,
    stored_bytes,
)
from mosaic_studio.studio.quantization import load_studio_pipeline

EXAMPLES = DEFAULT_MODEL_DIR.parent / "examples"
SIDE, REF_SIDE, TEXT_TOKENS = 64, 32, 16  # 64 target, 3 × 16 reference and 16 text tokens: all different
# Output latents of the int8 pipeline against the float32 one, relative L2 error. int8 rounding
# with one scale per output row moves a weight by at most 1/254 of its row's largest weight
# (about 1 % of a typical weight); that compounds over 8 blocks and the denoising steps. Measured:
# 0.019 at 4 steps (a bfloat16 pipeline, for scale: 0.023). 0.05 leaves room for other CPUs'
# kernels, while losing the LoRA moves the output by 0.82 and a wrong scale by far more.
TOLERANCE = 0.05


def references(count=3):
    return [Image.open(path).convert("RGB") for path in sorted(EXAMPLES.glob("scene*.png"))[:count]]


def generate(pipe, refs, output_type="latent"):
    return pipe(
        "a chest, a bird and a robed figure",
        reference_images=refs,
        height=SIDE,
        width=SIDE,
        reference_size=REF_SIDE,
        num_inference_steps=4,
        max_sequence_length=TEXT_TOKENS,
        output_type=output_type,
        generator=torch.Generator().manual_seed(0),
    ).images


@pytest.fixture(scope="module")
def int8_pipe():
    return load_studio_pipeline(quantize="int8", device="cpu")


@pytest.fixture(scope="module")
def float_pipe():
    return load_studio_pipeline(device="cpu")


def lora_layers(transformer):
    """peft's LoRA wrappers (quantized base layer inside, LoRA factors beside it)."""
    return [m for m in transformer.modules() if hasattr(m, "base_layer") and hasattr(m, "lora_A")]


def relative_error(value, reference):
    return float((value.float() - reference.float()).norm() / reference.float().norm())


def test_int8_pipeline_loads_the_lora_on_a_quantized_base_and_generates_with_three_references(int8_pipe):
    adapted = lora_layers(int8_pipe.transformer)
    assert len(adapted) == 49  # every reference-LoRA target of the 4 + 4 block default (docs/DESIGN.md §3)
    assert all(type(m.base_layer.weight).__name__ == "Int8Tensor" for m in adapted)
    images = generate(int8_pipe, references(3), output_type="pil")
    assert len(images) == 1 and images[0].size == (SIDE, SIDE)
    pixels = torch.from_numpy(np.asarray(images[0], dtype=np.float32))
    assert pixels.std() > 5  # an image, not a flat or black square


def test_the_lora_acts_on_reference_tokens_only_on_top_of_int8(int8_pipe):
    """Every call of every adapted (quantized) layer is compared with the same layer on the same
    input with its adapter off: equal for text and target tokens, different for references."""
    refs = references(3)
    reference_tokens = len(refs) * (REF_SIDE // int8_pipe.pixels_per_token) ** 2
    target_tokens = (SIDE // int8_pipe.pixels_per_token) ** 2
    calls = []  # (layer, input shape, whether the adapter changed the output)

    def compare(module, inputs, output):
        with torch.no_grad():
            base = module.base_layer(inputs[0])
        calls.append((module, inputs[0].shape, not torch.equal(output, base)))

    # The last single block's reference queries and MLP feed nothing (only the target leaves the
    # model), so training left those three LoRAs at their zero init: they cannot change anything.
    adapted = [m for m in lora_layers(int8_pipe.transformer) if any(b.weight.any() for b in m.lora_B.values())]
    assert len(adapted) == 49 - 3
    handles = [m.register_forward_hook(compare) for m in adapted]
    try:
        generate(int8_pipe, refs)
    finally:
        for handle in handles:
            handle.remove()
    tokens = [(shape[-2], differs) for _, shape, differs in calls if len(shape) == 3]  # (B, N, D) streams
    assert {n for n, differs in tokens if differs} == {reference_tokens}  # the LoRA changed references only
    # and left the target (double blocks) and text + target (single blocks) on the int8 base weights
    assert {n for n, differs in tokens if not differs} == {target_tokens, TEXT_TOKENS + target_tokens}
    # AdaLN modulation layers take one (B, D) time embedding per stream: the target's on base
    # weights, the references' (t = 0) with the LoRA, so exactly half of their calls change.
    modulation = [differs for _, shape, differs in calls if len(shape) == 2]
    assert modulation and sum(modulation) * 2 == len(modulation)
    assert {module for module, _, differs in calls if differs} == set(adapted)  # every adapted layer acted


def test_without_references_the_lora_changes_nothing_and_with_them_it_does(int8_pipe):
    with_lora = generate(int8_pipe, [])
    with adapters_disabled(int8_pipe.transformer):
        without = generate(int8_pipe, [])
        without_refs = generate(int8_pipe, references(3))
    assert torch.equal(with_lora, without)  # bit for bit: text and target never see the LoRA
    assert relative_error(generate(int8_pipe, references(3)), without_refs) > 10 * TOLERANCE


def test_int8_output_stays_within_tolerance_of_float32(int8_pipe, float_pipe):
    refs = references(3)
    error = relative_error(generate(int8_pipe, refs), generate(float_pipe, refs))
    assert 0 < error < TOLERANCE, error  # 0 would mean nothing was quantized


def expected_int8_bytes(float_module, names) -> int:
    """What the float module should store once the Linear layers `names` are int8: each weight
    becomes int8 data (1 byte) plus, per output row, a scale in the model's dtype and an int8 zero point."""
    total = stored_bytes(float_module)
    for name in names:
        weight = float_module.get_submodule(name).weight
        rows, columns = weight.shape
        total += rows * columns + rows * (weight.element_size() + 1) - weight.nbytes
    return total


@pytest.mark.parametrize("component", QUANTIZED_COMPONENTS)
def test_int8_stores_a_quarter_of_float32_measured(component):
    """Bytes of the tensors really stored (torchao's inner int8 data, scales and zero points),
    without the LoRA so that only the quantized base is compared."""
    quantized = getattr(load_studio_pipeline(quantize="int8", lora=None), component)
    plain = getattr(load_studio_pipeline(lora=None), component)
    names = quantized_linears(quantized)
    linears = [n for n, m in plain.named_modules() if isinstance(m, torch.nn.Linear)]
    assert names == linears  # every Linear layer is int8; embeddings and norms stay float32
    measured = stored_bytes(quantized)
    assert measured == expected_int8_bytes(plain, names)
    factor = stored_bytes(plain) / measured
    # The transformer is almost all Linear weights (measured 3.8x); half of the tiny T5's 0.43 MB
    # is its token embedding, which stays float32 (measured 2.3x).
    assert factor > {"transformer": 3.5, "text_encoder_2": 2.0}[component], factor


def test_backends_refuse_what_they_cannot_run_naming_the_fix(monkeypatch):
    real = importlib.util.find_spec
    present = {"bitsandbytes": real("torch")}  # bitsandbytes pretended installed: the CPU must still be refused
    absent = set()
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in absent else present.get(name) or real(name, *a)
    )
    with pytest.raises(ValueError, match="bitsandbytes, which runs on CUDA GPUs only.*use --quantize int8"):
        check_quantization("8bit", device="cpu")
    with pytest.raises(ValueError, match="CUDA GPUs only"):  # refused before anything loads
        load_studio_pipeline(quantize="4bit", device="cpu")
    absent.add("torchao")
    with pytest.raises(ValueError, match=r"--quantize int8 needs the torchao package \(pip install torchao"):
        quantization_config("int8", "float32")
    with pytest.raises(ValueError, match="quantize must be one of"):
        quantization_config("2bit", "float32")
