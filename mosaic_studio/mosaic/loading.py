"""Load a ready-to-use MosaicPipeline: the embedded default or FLUX.1-dev + the authors' LoRA;
and the third-party notices that loading prints although nothing is wrong, silenced one by one."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.native import bundled_lora

FLUX_DEV = "black-forest-labs/FLUX.1-dev"
OFFICIAL_LORA = ("ByteDance-FanQie/MOSAIC", "subject_512.safetensors")
AUTO = "auto"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# transformers falls back to its PIL image processors without torchvision and says so when diffusers'
# FLUX pipeline imports them; the pipelines never use an image processor (no feature_extractor).
_TORCHVISION_NOTICE = re.compile(r"`(CLIP|Siglip)ImageProcessor` requires torchvision \(not installed\)")
_TORCHVISION_LOGGER = "transformers.utils.import_utils"
# A MOSAIC LoRA acts on the transformer only, so diffusers' search for text-encoder keys in it
# always finds none, and says so as if the load had failed.
_TEXT_ENCODER_LORA_NOTICE = re.compile(r"No LoRA keys associated to CLIPTextModel found with the prefix='text_encoder'")
_LORA_LOGGER = "diffusers.loaders.lora_base"


class _DropMatching(logging.Filter):
    """Drops the records of one logger whose message matches `pattern`; lets every other through."""

    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.match(record.getMessage()) is None


_TORCHVISION_FILTER = _DropMatching(_TORCHVISION_NOTICE)


def quiet_torchvision_notice() -> None:
    """Silence transformers' "requires torchvision" fallback notice (that message of that logger
    only). Must run before diffusers' FLUX pipeline is first imported: the notice comes then."""
    logger = logging.getLogger(_TORCHVISION_LOGGER)  # the same object transformers gets later
    if _TORCHVISION_FILTER not in logger.filters:
        logger.addFilter(_TORCHVISION_FILTER)


@contextmanager
def quiet_text_encoder_lora_notice() -> Iterator[None]:
    """While loading a MOSAIC LoRA: no "No LoRA keys associated to CLIPTextModel" notice."""
    logger, dropped = logging.getLogger(_LORA_LOGGER), _DropMatching(_TEXT_ENCODER_LORA_NOTICE)
    logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)


quiet_torchvision_notice()  # on import: mosaic.pipeline imports this module before diffusers


def default_lora(model: str | Path) -> tuple[str, str] | None:
    """The LoRA that goes with `model`: the authors' for FLUX.1-dev, the LoRA file shipped
    inside a local model folder, or none."""
    if str(model) == FLUX_DEV:
        return OFFICIAL_LORA
    bundled = bundled_lora(model)
    return (str(bundled.parent), bundled.name) if bundled is not None else None


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
    """model: a diffusers FLUX folder or hub id. lora: "auto" (see `default_lora`: a local folder's
    own LoRA, which `MosaicPipeline.from_pretrained` loads; FLUX.1-dev's official one), None for
    none, or a file / folder / hub id (then a folder's own LoRA is not loaded). dtype: float32 on
    CPU and bfloat16 on GPU by default. quantization_config: a diffusers
    `PipelineQuantizationConfig`, or None."""
    from mosaic_studio.mosaic.pipeline import MosaicPipeline  # diffusers import only when a model is really loaded

    device = pick_device(device)
    dtype = dtype or ("float32" if device == "cpu" else "bfloat16")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    quantized = {} if quantization_config is None else {"quantization_config": quantization_config}
    # "auto" on a local folder: from_pretrained loads the LoRA the folder ships (once: never again below)
    pipe = MosaicPipeline.from_pretrained(str(model), dtype=DTYPES[dtype], load_bundled_lora=lora == AUTO, **quantized)
    if lora == AUTO:
        lora, lora_weight_name = OFFICIAL_LORA if str(model) == FLUX_DEV else (None, None)
    if lora:
        pipe.load_mosaic_lora(lora, weight_name=lora_weight_name)
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)  # quantized layers are already on the GPU; the rest follows
    pipe.set_progress_bar_config(disable=True)
    return pipe
