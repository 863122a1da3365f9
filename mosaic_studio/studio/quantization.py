"""The app's pipeline: `mosaic.loading.load_pipeline`, plus optional bitsandbytes quantization.

Quantization goes through diffusers' `PipelineQuantizationConfig` and quantizes the two big
components, the FLUX transformer (12B parameters) and the T5-XXL text encoder (4.7B). Weights
alone (parameter count × bytes per parameter; activations and the VAE come on top):

| quantize | transformer | T5-XXL | rest (CLIP, VAE) |
|---|---|---|---|
| none (bf16) | 23.8 GB | 9.5 GB | 0.4 GB |
| 8bit        | 11.9 GB | 4.8 GB | 0.4 GB |
| 4bit (NF4)  |  6.7 GB | 2.7 GB | 0.4 GB |

README "Memory" turns these into GPU needs with and without CPU offload.
"""

from __future__ import annotations

import importlib.util

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.loading import AUTO, DTYPES, load_pipeline, pick_device

QUANTIZE_CHOICES = ("none", "8bit", "4bit")
QUANTIZED_COMPONENTS = ["transformer", "text_encoder_2"]  # the two that hold 95% of the weights
_BACKENDS = {"8bit": "bitsandbytes_8bit", "4bit": "bitsandbytes_4bit"}


def quantization_config(quantize: str, dtype: str):
    """diffusers' PipelineQuantizationConfig for `quantize`, or None for "none".

    Raises ValueError naming what is missing when bitsandbytes is not installed.
    """
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    if quantize == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(
            f"--quantize {quantize} needs the bitsandbytes package (pip install bitsandbytes) and a CUDA GPU"
        )
    from diffusers.quantizers import PipelineQuantizationConfig

    kwargs = (
        {"load_in_8bit": True}
        if quantize == "8bit"
        else {
            "load_in_4bit": True,
            "bnb_4bit_quant_type": "nf4",
            "bnb_4bit_compute_dtype": DTYPES[dtype],
        }
    )
    return PipelineQuantizationConfig(
        quant_backend=_BACKENDS[quantize], quant_kwargs=kwargs, components_to_quantize=QUANTIZED_COMPONENTS
    )


def load_studio_pipeline(
    model=DEFAULT_MODEL_DIR,
    *,
    lora=AUTO,
    lora_weight_name=None,
    device=None,
    dtype=None,
    cpu_offload=False,
    quantize="none",
):
    """`load_pipeline` with the same arguments, plus `quantize` (see QUANTIZE_CHOICES)."""
    config = None
    if quantize != "none":
        device = pick_device(device)
        dtype = dtype or "bfloat16"
        if device == "cpu" or dtype not in DTYPES:
            raise ValueError(
                f"--quantize {quantize} runs on a CUDA GPU with a float dtype, got device={device!r}, dtype={dtype!r}"
            )
        config = quantization_config(quantize, dtype)
    return load_pipeline(
        model,
        lora=lora,
        lora_weight_name=lora_weight_name,
        device=device,
        dtype=dtype,
        cpu_offload=cpu_offload,
        quantization_config=config,
    )
