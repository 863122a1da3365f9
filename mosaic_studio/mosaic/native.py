"""What a model folder records about itself: the settings it was trained for, and its LoRA.

A checkpoint folder (diffusers layout) may hold `mosaic_defaults.json`, the settings its
weights were trained and evaluated at:

    {"height": 128, "width": 128, "reference_size": 64, "num_inference_steps": 12, "guidance_scale": 3.5}

`MosaicPipeline` uses them for every setting a call leaves out, and the app opens its controls
at them. A folder without the record gets FLUX.1-dev's with the authors' LoRA (`FLUX_DEV_SETTINGS`):
those are the settings the official LoRA was trained for. It may also hold a MOSAIC LoRA in the
authors' file format (`mosaic_lora.safetensors`), loaded by `MosaicPipeline.from_pretrained`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from mosaic_studio.mosaic.lora_io import DEFAULT_WEIGHT_NAME

NATIVE_SETTINGS_FILE = "mosaic_defaults.json"


@dataclass(frozen=True)
class NativeSettings:
    """Generation settings a checkpoint was trained for; checked on construction."""

    height: int  # target image size, pixels
    width: int
    reference_size: int  # side of the square references, pixels
    num_inference_steps: int
    guidance_scale: float

    def __post_init__(self):
        for name in ("height", "width", "reference_size", "num_inference_steps"):
            value = getattr(self, name)
            # bool is an int to Python, but `true` in the file is a mistake, not 1
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        guidance = self.guidance_scale
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise ValueError(f"guidance_scale must be a finite number, got {guidance!r}")
        if guidance < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance!r}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# The authors' inference settings for FLUX.1-dev with `subject_512.safetensors` (the LoRA is
# named for its 512 px training size; 28 steps and embedded guidance 3.5 are FLUX.1-dev's).
FLUX_DEV_SETTINGS = NativeSettings(
    height=512, width=512, reference_size=512, num_inference_steps=28, guidance_scale=3.5
)
FIELDS = tuple(field.name for field in dataclasses.fields(NativeSettings))


def _local_folder(model: str | os.PathLike) -> Path | None:
    """`model` as a local folder, or None for a hub id (whose files are not read here)."""
    path = Path(model)
    return path if path.is_dir() else None


def read_native_settings(model: str | os.PathLike) -> NativeSettings | None:
    """The record in local folder `model`, or None when it has none (or `model` is a hub id).

    A record that is not valid JSON, misses a setting, has an unknown one or a bad value raises
    ValueError naming the file and the problem: a mistyped record must not fall back silently."""
    folder = _local_folder(model)
    if folder is None or not (folder / NATIVE_SETTINGS_FILE).is_file():
        return None
    path = folder / NATIVE_SETTINGS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON object of generation settings ({error})") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with {', '.join(FIELDS)}, got {type(data).__name__}")
    missing, unknown = [f for f in FIELDS if f not in data], sorted(set(data) - set(FIELDS))
    if missing or unknown:
        raise ValueError(
            f"{path}: missing {missing or 'nothing'}, unknown {unknown or 'nothing'}; expected exactly {list(FIELDS)}"
        )
    try:
        return NativeSettings(**data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def native_settings_of(model: str | os.PathLike) -> NativeSettings:
    """The record of `model`, else FLUX.1-dev's settings (see the module docstring)."""
    return read_native_settings(model) or FLUX_DEV_SETTINGS


def write_native_settings(folder: str | os.PathLike, settings: NativeSettings) -> Path:
    """Write `settings` as `folder`/mosaic_defaults.json (checked by NativeSettings first)."""
    path = Path(folder) / NATIVE_SETTINGS_FILE
    path.write_text(json.dumps(settings.as_dict(), indent=2) + "\n", encoding="utf-8")
    return path


def write_trained_settings(
    folder: str | os.PathLike, *, target_size: int, reference_size: int, trained_from: str | os.PathLike
) -> Path:
    """The record of a checkpoint trained at `target_size` / `reference_size` pixels (square, as
    the trainer's data.target_size / data.ref_size). Training says nothing about sampling, so
    steps and guidance are those of the model it was trained from (its record, else FLUX.1-dev's)."""
    sampling = native_settings_of(trained_from)
    settings = NativeSettings(
        height=target_size,
        width=target_size,
        reference_size=reference_size,
        num_inference_steps=sampling.num_inference_steps,
        guidance_scale=sampling.guidance_scale,
    )
    return write_native_settings(folder, settings)


def bundled_lora(model: str | os.PathLike) -> Path | None:
    """The MOSAIC LoRA file shipped inside local folder `model` (`mosaic_lora.safetensors`), or None."""
    folder = _local_folder(model)
    path = folder / DEFAULT_WEIGHT_NAME if folder is not None else None
    return path if path is not None and path.is_file() else None
