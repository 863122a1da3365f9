"""Typed training configuration: dataclass defaults < YAML file < command-line `key=value`.

Every field carries its rationale. Unknown keys (in the file or on the command line) fail, so a
typo never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.probe import all_blocks, all_double_blocks, early_double_blocks

STAGES = ("vae", "base", "lora")
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"  # the shipped stage configs (default_*.yaml)
LORA_CONFIG = (
    CONFIGS_DIR / "default_lora.yaml"
)  # the embedded default's LoRA stage: the ablation's and evaluation's reference
# loss.blocks → the transformer blocks the Eq. 8 probe reads (training supervises them, evaluation measures them)
PROBE_SITES = {"early": early_double_blocks, "double": all_double_blocks, "all": all_blocks}


@dataclass
class DataConfig:
    source: str = "synthetic"  # "synthetic" (generated on the fly) or a SemAlign-MS dataset folder
    seed: int = 0  # world seed: batch i of a run is a pure function of (seed, i)
    target_size: int = 128  # target side in pixels
    ref_size: int = 64  # reference side in pixels (square, padded like the official preprocessing)
    min_subjects: int = 1
    max_subjects: int = 6  # MOSAIC handles up to 6 references
    caption_drop: float = 0.1  # empty caption with this probability: trains the unconditional branch for CFG
    reference_drop: float = 0.0  # train a sample without references with this probability (LoRA stage)


@dataclass
class ModelConfig:
    pretrained: str = str(DEFAULT_MODEL_DIR)  # diffusers FLUX folder or hub id (black-forest-labs/FLUX.1-dev)
    lora_rank: int = 16  # the official LoRA rank is 128 at FLUX scale; small models need little
    max_sequence_length: int = 64  # T5 tokens per caption: the synthetic captions are short
    gradient_checkpointing: bool = False  # trade compute for memory at FLUX scale


@dataclass
class LossConfig:
    alpha: float = 0.4  # SCAL weight (paper Eq. 15; the authors' code uses 0.1)
    beta: float = 0.6  # MDL weight (paper; the authors' code ramps 0 → 1, see beta_ramp)
    beta_ramp: tuple[int, int] = (0, 0)  # (start, end) steps of a linear 0 → beta ramp; (0, 0) = constant
    points_per_reference: int = 150  # P_k (paper default)
    blocks: str = "early"  # probe sites: "early" (paper, Table 10), "double" (authors' code) or "all"
    divergence: str = "sym_kl"  # MDL divergence: "sym_kl" (paper) or "jsd" (authors' code)
    scal_reduction: str = "per_reference"  # "per_reference" (paper Eq. 10) or "per_point" (authors' code)
    logit_mean: float = 0.0  # logit-normal timestep sampling, as in FLUX training
    logit_std: float = 1.0
    kl_weight: float = 1e-6  # VAE stage: KL term of the ELBO, small as in LDM autoencoders


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    schedule: str = "constant"  # learning rate after warmup: "constant" or "cosine" (to 0 at max_steps)
    max_steps: int = 1000
    batch_size: int = 8
    grad_clip: float = 1.0
    mixed_precision: str = "no"  # accelerate: "no", "bf16" or "fp16"


@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    checkpoint_every: int = 250  # steps between checkpoints (resume restarts from the last one)
    log_every: int = 10  # steps between CSV log rows
    keep_checkpoints: int = 2
    max_minutes: float = 0.0  # wall-time budget: stop cleanly (with a checkpoint) after it; 0 = none
    threads: int = 0  # torch CPU threads; 0 = torch's default. 1 avoids OpenMP spin-waits on a busy machine


@dataclass
class TrainConfig:
    stage: str = "base"  # "vae", "base" (text-to-image pretraining) or "lora" (MOSAIC LoRA)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.optim.schedule not in ("constant", "cosine"):
            raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {self.optim.schedule!r}")


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Cast a YAML / command-line value to the field's declared type."""
    if kind is bool and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{key}: expected a boolean, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    if getattr(kind, "__origin__", None) is tuple:
        items = yaml.safe_load(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or len(items) != len(kind.__args__):
            raise ValueError(f"{key}: expected {len(kind.__args__)} values, got {value!r}")
        return tuple(_coerce(v, t, key) for v, t in zip(items, kind.__args__))
    try:
        return kind(yaml.safe_load(value) if isinstance(value, str) and kind is not str else value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{key}: expected {kind.__name__}, got {value!r}") from error


def _apply(config: Any, updates: dict, prefix: str = "") -> None:
    hints = get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ValueError(f"unknown config key {path!r}; known: {sorted(prefix + n for n in names)}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{path} is a section; give it a mapping")
            _apply(current, value, f"{path}.")
        else:
            setattr(config, key, _coerce(value, hints[key], path))


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file, then `section.key=value` overrides."""
    config = TrainConfig()
    if path is not None:
        _apply(config, yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like section.key=value")
        *sections, leaf = key.split(".")
        nested: dict = {leaf: value}
        for section in reversed(sections):
            nested = {section: nested}
        _apply(config, nested)
    config.__post_init__()
    return config


def to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)
