"""The app's pipeline: `mosaic.loading.load_pipeline`, plus optional weight quantization.

The backend-neutral part (the choices, diffusers' configs, the stored-bytes measurement) is
`mosaic_studio.mosaic.quantization`, for library users too. `--quantize int8` (torchao) runs on
the CPU and on CUDA; `8bit` / `4bit` (bitsandbytes) on CUDA only. Weights of FLUX.1-dev's two
quantized components (parameter count × bytes per parameter; activations and the VAE come on
top; estimates until measured on a GPU):

| quantize | transformer | T5-XXL | rest (CLIP, VAE) |
|---|---|---|---|
| none (bf16)      | 23.8 GB | 9.5 GB | 0.4 GB |
| int8, 8bit       | 11.9 GB | 4.8 GB | 0.4 GB |
| 4bit (NF4)       |  6.7 GB | 2.7 GB | 0.4 GB |

README "Memory" turns these into GPU needs with and without CPU offload; docs/BENCHMARKS.md
has the numbers measured on the embedded default and a FLUX-shaped transformer.
"""

from __future__ import annotations

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.loading import AUTO, DTYPES, load_pipeline, pick_device
from mosaic_studio.mosaic.quantization import (  # noqa: F401 (re-exported: the app's option and its tests)
    QUANTIZE_CHOICES,
    QUANTIZED_COMPONENTS,
    check_quantization,
    quantization_config,
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
    """`load_pipeline` with the same arguments, plus `quantize` (see QUANTIZE_CHOICES).

    Raises ValueError before anything loads when the backend is missing or cannot run on the
    device (bitsandbytes off CUDA).
    """
    config = None
    if quantize != "none":
        device = pick_device(device)
        dtype = dtype or ("float32" if device == "cpu" else "bfloat16")  # load_pipeline's defaults
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        config = quantization_config(quantize, dtype, device=device)
    return load_pipeline(
        model,
        lora=lora,
        lora_weight_name=lora_weight_name,
        device=device,
        dtype=dtype,
        cpu_offload=cpu_offload,
        quantization_config=config,
    )
