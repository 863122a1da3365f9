"""Weight quantization of a MosaicPipeline's two big components, and what they really store.

`quantization_config` builds diffusers' `PipelineQuantizationConfig` for
`MosaicPipeline.from_pretrained(..., quantization_config=...)` (or `loading.load_pipeline`). It
quantizes the FLUX transformer and the T5 text encoder, which hold 95 % of FLUX.1-dev's weights
(transformer 11.9B parameters, T5-XXL 4.7B); CLIP and the VAE stay in the pipeline's dtype.

| quantize | backend | devices | weights of the quantized layers |
|---|---|---|---|
| int8 | torchao, int8 weight-only (per output row scale) | CPU and CUDA | 1 byte per weight + a scale per row |
| 8bit | bitsandbytes LLM.int8() | CUDA only | 1 byte per weight |
| 4bit | bitsandbytes NF4 | CUDA only | ½ byte per weight + a scale per 64 |

The reference LoRA (peft) wraps the quantized layers as it wraps plain ones: peft keeps the
quantized layer as the base layer and adds the LoRA product beside it, and the MOSAIC forward
still switches the adapter off for text and target tokens (docs/DESIGN.md §3). Nothing is merged
into the quantized weights, which the reference-only LoRA forbids anyway.

`stored_bytes` measures a module's parameters and buffers as stored: the inner tensors of
quantized tensor subclasses (torchao's int8 data, scales and zero points) are counted, each
storage once. Measured numbers: docs/BENCHMARKS.md ("Quantization and memory").
"""

from __future__ import annotations

import importlib.util
import itertools

import torch

QUANTIZE_CHOICES = ("none", "int8", "8bit", "4bit")
QUANTIZED_COMPONENTS = ("transformer", "text_encoder_2")  # FLUX's transformer and its T5 encoder
BACKENDS = {"int8": "torchao", "8bit": "bitsandbytes", "4bit": "bitsandbytes"}
_INSTALL = {"torchao": "pip install torchao==0.18.0", "bitsandbytes": "pip install bitsandbytes"}
_CUDA_ONLY = {"bitsandbytes"}  # its kernels are CUDA kernels


def check_quantization(quantize: str, device: str | None = None) -> None:
    """Raise ValueError naming the problem when `quantize` cannot run here: an unknown choice, its
    backend not installed, or (when `device` is given) a device the backend does not run on."""
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    if quantize == "none":
        return
    backend = BACKENDS[quantize]
    if importlib.util.find_spec(backend) is None:
        where = " and a CUDA GPU" if backend in _CUDA_ONLY else ""
        raise ValueError(f"--quantize {quantize} needs the {backend} package ({_INSTALL[backend]}){where}")
    if device is not None and backend in _CUDA_ONLY and torch.device(device).type != "cuda":
        raise ValueError(
            f"--quantize {quantize} uses {backend}, which runs on CUDA GPUs only, not on device {device!r}; "
            "use --quantize int8 (torchao, CPU and GPU) there"
        )


def quantization_config(quantize: str, dtype: str = "bfloat16", device: str | None = None):
    """diffusers' PipelineQuantizationConfig for `quantize` (QUANTIZE_CHOICES), or None for "none".

    dtype: the compute dtype of bitsandbytes' 4-bit layers (float32, bfloat16 or float16).
    Raises ValueError as `check_quantization` does.
    """
    check_quantization(quantize, device)
    if quantize == "none":
        return None
    if BACKENDS[quantize] == "torchao":
        return _torchao_config()
    return _bitsandbytes_config(quantize, dtype)


def _torchao_config():
    """int8 weight-only for both components. diffusers' and transformers' TorchAoConfig take
    different arguments, so each component gets its own (a `quant_mapping`)."""
    from diffusers import TorchAoConfig as DiffusersTorchAoConfig
    from diffusers.quantizers import PipelineQuantizationConfig
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig as TransformersTorchAoConfig

    transformer, text_encoder = QUANTIZED_COMPONENTS
    return PipelineQuantizationConfig(
        quant_mapping={
            transformer: DiffusersTorchAoConfig(quant_type=Int8WeightOnlyConfig()),
            text_encoder: TransformersTorchAoConfig(quant_type=Int8WeightOnlyConfig()),
        }
    )


def _bitsandbytes_config(quantize: str, dtype: str):
    from diffusers.quantizers import PipelineQuantizationConfig

    from mosaic_studio.mosaic.loading import DTYPES

    if quantize == "8bit":
        backend, kwargs = "bitsandbytes_8bit", {"load_in_8bit": True}
    else:
        backend = "bitsandbytes_4bit"
        kwargs = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": DTYPES[dtype]}
    return PipelineQuantizationConfig(
        quant_backend=backend, quant_kwargs=kwargs, components_to_quantize=list(QUANTIZED_COMPONENTS)
    )


def _stored_tensors(tensor: torch.Tensor):
    """The plain tensors holding `tensor`'s data: itself, or a subclass's inner tensors, recursively
    (torch's wrapper-subclass protocol, which torchao's quantized tensors follow)."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        for name in names:
            yield from _stored_tensors(getattr(tensor, name))
    else:
        yield tensor


def stored_bytes(module: torch.nn.Module) -> int:
    """Bytes of the storages behind `module`'s parameters and buffers, each storage counted once
    (tied weights, views). bitsandbytes keeps its 4-bit scales in a `quant_state` outside the
    parameter, which this does not see (one float32 per 64 weights: an eighth of the 4-bit data)."""
    seen, total = set(), 0
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        for leaf in _stored_tensors(tensor):
            storage = leaf.untyped_storage()
            key = (leaf.device, storage.data_ptr())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return total


def quantized_linears(module: torch.nn.Module) -> list[str]:
    """Names of the Linear layers of `module` whose weight is a quantized tensor (a torchao
    subclass or a bitsandbytes parameter), peft's wrappers looked through."""
    names = []
    for name, layer in module.named_modules():
        weight = getattr(layer, "weight", None)
        if isinstance(layer, torch.nn.Linear) and weight is not None and _is_quantized(weight):
            names.append(name)
    return names


def _is_quantized(weight: torch.Tensor) -> bool:
    return hasattr(weight, "__tensor_flatten__") or type(weight).__module__.startswith("bitsandbytes")
