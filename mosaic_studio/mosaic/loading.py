"""Load a ready-to-use MosaicPipeline: the embedded default or FLUX.1-dev + the authors' LoRA."""

from __future__ import annotations

from pathlib import Path

import torch

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.lora_io import DEFAULT_WEIGHT_NAME

FLUX_DEV = "black-forest-labs/FLUX.1-dev"
OFFICIAL_LORA = ("ByteDance-FanQie/MOSAIC", "subject_512.safetensors")
AUTO = "auto"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def default_lora(model: str | Path) -> tuple[str, str] | None:
    """The LoRA that goes with `model`: the authors' for FLUX.1-dev, the LoRA file shipped
    inside a local model folder, or none."""
    if str(model) == FLUX_DEV:
        return OFFICIAL_LORA
    local = Path(model) / DEFAULT_WEIGHT_NAME
    return (str(Path(model)), DEFAULT_WEIGHT_NAME) if local.is_file() else None


def pick_device(device: str | None) -> str:
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(
    model: str | Path = DEFAULT_MODEL_DIR,
    lora: str | None = AUTO,
    lora_weight_name: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    cpu_offload: bool = False,
    quantization_config=None,
):
    """model: a diffusers FLUX folder or hub id. lora: "auto" (see `default_lora`), None for
    none, or a file / folder / hub id. dtype: float32 on CPU and bfloat16 on GPU by default.
    quantization_config: a diffusers `PipelineQuantizationConfig`, or None."""
    from mosaic_studio.mosaic.pipeline import MosaicPipeline  # diffusers import only when a model is really loaded

    device = pick_device(device)
    dtype = dtype or ("float32" if device == "cpu" else "bfloat16")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    quantized = {} if quantization_config is None else {"quantization_config": quantization_config}
    pipe = MosaicPipeline.from_pretrained(str(model), dtype=DTYPES[dtype], **quantized)
    if lora == AUTO:
        lora, lora_weight_name = default_lora(model) or (None, None)
    if lora:
        pipe.load_mosaic_lora(lora, weight_name=lora_weight_name)
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)  # quantized layers are already on the GPU; the rest follows
    pipe.set_progress_bar_config(disable=True)
    return pipe
