"""Typed training configuration: dataclass defaults < YAML file < command-line `key=value`.

Every field carries its rationale. Unknown keys (in the file or on the command line) fail, so a
typo never silently trains with a default. Every value is checked when the config is built
(`__post_init__`, run again by `load_config` after the file and the overrides): exact types (an
int field refuses 2.9 and `true`; an integral float such as 2.0 is taken as 2), ranges and
choices, with a message that names the key and the allowed values. The trainer adds the checks
that need the model (image sizes in whole tokens) and the run being resumed (RESUMABLE_CHANGES).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, get_type_hints

import yaml

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.mosaic.data.semalign import MAX_REFERENCES
from mosaic_studio.mosaic.losses import DIVERGENCES, REDUCTIONS
from mosaic_studio.mosaic.probe import all_blocks, all_double_blocks, early_double_blocks
from mosaic_studio.mosaic.validation import FLUX_MAX_SEQUENCE_LENGTH

STAGES = ("vae", "decoder", "base", "lora")
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"  # the shipped stage configs (default_*.yaml)
LORA_CONFIG = (
    CONFIGS_DIR / "default_lora.yaml"
)  # the embedded default's LoRA stage: the ablation's and evaluation's reference
# loss.blocks → the transformer blocks the Eq. 8 probe reads (training supervises them, evaluation measures them)
PROBE_SITES = {"early": early_double_blocks, "double": all_double_blocks, "all": all_blocks}
SCHEDULE_NAMES = ("constant", "cosine")
TARGET_LATENTS = ("sample", "mode")  # loss.target_latents
MIXED_PRECISION = ("no", "bf16", "fp16")  # accelerate's; fp8 needs extra packages and hardware
MAX_SEED = 2**64 - 1  # torch.manual_seed's limit (numpy's SeedSequence takes any non-negative int)
# Keys that may differ when a run resumes from its checkpoints: they change how long the run goes
# on, how fast and how often it logs or keeps checkpoints, or where the folder now lives, not what
# it learns. optim.max_steps extends (or shortens) a run; with schedule=cosine the decay re-spans
# to the new end. Any other change (lr, seed, data, model, loss...) would silently splice two
# different runs, so the trainer refuses it unless run.allow_config_change is set.
RESUMABLE_CHANGES = frozenset(
    {
        "optim.max_steps",
        "model.gradient_checkpointing",  # recomputes activations: memory vs compute, same math
        "run.output_dir",
        "run.checkpoint_every",
        "run.log_every",
        "run.keep_checkpoints",
        "run.max_minutes",
        "run.threads",
        "run.allow_config_change",
    }
)


class ConfigError(ValueError):
    """A refused config value: from `load_config`, or from `train` against the model or the run it resumes."""


def _check_range(key: str, value, low=None, high=None, low_open: bool = False) -> None:
    """`value` within [low, high] (low excluded with `low_open`); a float must also be finite."""
    finite = not isinstance(value, float) or math.isfinite(value)
    above = low is None or (value > low if low_open else value >= low)
    if finite and above and (high is None or value <= high):
        return
    if low is not None and high is not None:
        allowed = f"between {low} and {high}"
    else:
        allowed = f"{'>' if low_open else '>='} {low}" if low is not None else f"<= {high}"
        if isinstance(value, float):
            allowed = f"a finite number {allowed}"
    raise ConfigError(f"{key} must be {allowed}, got {value!r}")


def _check_finite(key: str, value: float) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")


def _check_choice(key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {tuple(choices)!r}, got {value!r}")


def _check_nonempty(key: str, value: str) -> None:
    if not value:
        raise ConfigError(f"{key} must be a non-empty string, got {value!r}")


class _Section:
    """A config section: its fields are type-checked (and normalised, e.g. 2.0 → 2 for an int)
    and range-checked on construction and whenever `validate` runs again."""

    SECTION: ClassVar[str]

    def __post_init__(self):
        self.validate()

    @property
    def uses_references(self) -> bool:
        """Whether batches carry references: every stage but base, and base with data.reference_batches."""
        return self.stage != "base" or self.data.reference_batches > 0

    def validate(self) -> None:
        hints = get_type_hints(type(self))
        for item in dataclasses.fields(self):
            key = self.key(item.name)
            setattr(self, item.name, _coerce(getattr(self, item.name), hints[item.name], key))
        self.check()

    def key(self, name: str) -> str:
        return f"{self.SECTION}.{name}"

    def check(self) -> None:
        """Ranges and choices of the (type-checked) fields."""


@dataclass
class DataConfig(_Section):
    SECTION = "data"
    source: str = "synthetic"  # "synthetic" (generated on the fly) or a SemAlign-MS dataset folder
    seed: int = 0  # world seed: batch i of a run is a pure function of (seed, i)
    target_size: int = 128  # target side in pixels
    ref_size: int = 64  # reference side in pixels (square, padded like the official preprocessing)
    min_subjects: int = 1
    max_subjects: int = 6  # MOSAIC handles up to 6 references
    caption_drop: float = 0.1  # empty caption with this probability: trains the unconditional branch for CFG
    reference_drop: float = 0.0  # train a sample without references with this probability (LoRA stage)
    # Base stage: the fraction of batches that carry references, run through the base weights. In
    # MOSAIC only reference tokens carry the LoRA, so the target copies from references with base
    # weights: FLUX learnt that in-context prior in pretraining; a tiny base learns it here. 0 = text only.
    reference_batches: float = 0.0
    # A SemAlign-MS folder of multi-subject samples composed from single-subject ones
    # (`python -m mosaic_studio.annotator compose`), mixed into the batches that carry references:
    # on single-subject data (the authors' release, a user's own photos) MDL has no second
    # reference to contrast and is always zero. "" = none.
    composed: str = ""
    composed_fraction: float = 0.0  # share of the reference-carrying batches drawn from data.composed

    def check(self) -> None:
        _check_nonempty(self.key("source"), self.source)
        _check_range(self.key("seed"), self.seed, 0, MAX_SEED)
        # Whole tokens of the model are checked by the trainer, which knows its pixels per token.
        _check_range(self.key("target_size"), self.target_size, 1)
        _check_range(self.key("ref_size"), self.ref_size, 1)
        _check_range(self.key("min_subjects"), self.min_subjects, 1, MAX_REFERENCES)
        _check_range(self.key("max_subjects"), self.max_subjects, 1, MAX_REFERENCES)
        if self.min_subjects > self.max_subjects:
            raise ConfigError(
                f"data.min_subjects must be <= data.max_subjects ({self.max_subjects}), got {self.min_subjects}"
            )
        _check_range(self.key("caption_drop"), self.caption_drop, 0, 1)
        _check_range(self.key("reference_drop"), self.reference_drop, 0, 1)
        _check_range(self.key("reference_batches"), self.reference_batches, 0, 1)
        _check_range(self.key("composed_fraction"), self.composed_fraction, 0, 1)
        # The two go together: one without the other would leave the composed samples silently unused.
        if self.composed and self.composed_fraction == 0:
            raise ConfigError(
                f"data.composed is set ({self.composed!r}), so data.composed_fraction must be > 0 "
                "(the share of reference-carrying batches drawn from it), got 0"
            )
        if self.composed_fraction > 0 and not self.composed:
            raise ConfigError(
                f"data.composed_fraction is {self.composed_fraction}, so data.composed must be a folder of "
                "composed samples (annotator compose), got ''"
            )


@dataclass
class ModelConfig(_Section):
    SECTION = "model"
    pretrained: str = str(DEFAULT_MODEL_DIR)  # diffusers FLUX folder or hub id (black-forest-labs/FLUX.1-dev)
    lora_rank: int = 16  # the official LoRA rank is 128 at FLUX scale; small models need little
    max_sequence_length: int = 64  # T5 tokens per caption: the synthetic captions are short
    gradient_checkpointing: bool = False  # trade compute for memory at FLUX scale

    def check(self) -> None:
        _check_nonempty(self.key("pretrained"), self.pretrained)
        _check_range(self.key("lora_rank"), self.lora_rank, 1)
        _check_range(self.key("max_sequence_length"), self.max_sequence_length, 1, FLUX_MAX_SEQUENCE_LENGTH)


@dataclass
class LossConfig(_Section):
    SECTION = "loss"
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
    # Flow-matching targets: the VAE posterior's "sample" (diffusers' training scripts) or its
    # "mode". With a weak KL term, channels the decoder ignores keep a posterior near the prior
    # (std ~1 after scaling): sampling them adds noise the transformer can never predict.
    target_latents: str = "sample"

    def check(self) -> None:
        _check_range(self.key("alpha"), self.alpha, 0)
        _check_range(self.key("beta"), self.beta, 0)
        start, end = self.beta_ramp
        if not 0 <= start <= end:
            raise ConfigError(f"loss.beta_ramp must be (start, end) steps with 0 <= start <= end, got {self.beta_ramp}")
        _check_range(self.key("points_per_reference"), self.points_per_reference, 1)
        _check_choice(self.key("blocks"), self.blocks, PROBE_SITES)
        _check_choice(self.key("divergence"), self.divergence, DIVERGENCES)
        _check_choice(self.key("scal_reduction"), self.scal_reduction, REDUCTIONS)
        _check_finite(self.key("logit_mean"), self.logit_mean)
        _check_range(self.key("logit_std"), self.logit_std, 0, low_open=True)
        _check_range(self.key("kl_weight"), self.kl_weight, 0)
        _check_choice(self.key("target_latents"), self.target_latents, TARGET_LATENTS)


@dataclass
class OptimConfig(_Section):
    SECTION = "optim"
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    schedule: str = "constant"  # learning rate after warmup: "constant" or "cosine" (to 0 at max_steps)
    max_steps: int = 1000
    batch_size: int = 8
    grad_clip: float = 1.0
    mixed_precision: str = "no"  # accelerate: "no", "bf16" or "fp16"

    def check(self) -> None:
        _check_range(self.key("lr"), self.lr, 0, low_open=True)
        _check_range(self.key("weight_decay"), self.weight_decay, 0)
        _check_range(self.key("warmup_steps"), self.warmup_steps, 0)
        _check_choice(self.key("schedule"), self.schedule, SCHEDULE_NAMES)
        _check_range(self.key("max_steps"), self.max_steps, 1)  # 0 would export an untrained pipeline
        _check_range(self.key("batch_size"), self.batch_size, 1)
        _check_range(self.key("grad_clip"), self.grad_clip, 0)  # 0 = no clipping
        _check_choice(self.key("mixed_precision"), self.mixed_precision, MIXED_PRECISION)


@dataclass
class RunConfig(_Section):
    SECTION = "run"
    output_dir: str = "runs/default"
    checkpoint_every: int = 250  # steps between checkpoints (resume restarts from the last one)
    log_every: int = 10  # steps between CSV log rows
    keep_checkpoints: int = 2  # newest checkpoints kept; >= 1, so the one just written always stays
    max_minutes: float = 0.0  # wall-time budget: stop cleanly (with a checkpoint) after it; 0 = none
    threads: int = 0  # torch CPU threads; 0 = torch's default. 1 avoids OpenMP spin-waits on a busy machine
    # Resume even though keys outside RESUMABLE_CHANGES differ from the run's config.json (which is
    # then overwritten); off, such a resume is refused before anything is written.
    allow_config_change: bool = False

    def check(self) -> None:
        _check_nonempty(self.key("output_dir"), self.output_dir)
        _check_range(self.key("checkpoint_every"), self.checkpoint_every, 1)
        _check_range(self.key("log_every"), self.log_every, 1)
        _check_range(self.key("keep_checkpoints"), self.keep_checkpoints, 1)
        _check_range(self.key("max_minutes"), self.max_minutes, 0)
        _check_range(self.key("threads"), self.threads, 0)


@dataclass
class TrainConfig:
    # "vae", "decoder" (the VAE decoder alone), "base" (text-to-image pretraining) or "lora" (MOSAIC LoRA)
    stage: str = "base"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        self.validate()

    @property
    def uses_references(self) -> bool:
        """Whether batches carry references: every stage but base, and base with data.reference_batches."""
        return self.stage != "base" or self.data.reference_batches > 0

    def validate(self) -> None:
        """Every field, again: `load_config` and `train` call it after values were set in place."""
        self.stage = _coerce(self.stage, str, "stage")
        _check_choice("stage", self.stage, STAGES)
        for section in (self.data, self.model, self.loss, self.optim, self.run):
            section.validate()
        if self.stage in ("vae", "decoder") and self.data.ref_size > self.data.target_size:
            # the VAE stages train on ref_size crops of the targets
            raise ConfigError(
                f"data.ref_size must be <= data.target_size ({self.data.target_size}) in the {self.stage} stage, "
                f"got {self.data.ref_size}"
            )


_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """A YAML / command-line value as the field's declared type, exactly: int(2.9) and int(True)
    would silently train something else, so an int takes only integers (2.0 counts as 2), a float
    only numbers, a bool only true/false (yes/no, 1/0) and a str only text."""
    if getattr(kind, "__origin__", None) is tuple:
        items = _parse(value) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or len(items) != len(kind.__args__):
            raise ConfigError(f"{key}: expected {len(kind.__args__)} values, got {value!r}")
        return tuple(_coerce(v, t, key) for v, t in zip(items, kind.__args__))
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected str, got {value!r}")
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        word = str(value).lower() if isinstance(value, (str, int)) else None
        if word not in _BOOLEANS:
            raise ConfigError(f"{key}: expected bool (true or false), got {value!r}")
        return _BOOLEANS[word]
    if isinstance(value, str):
        value = _parse(value)
        if kind is float and isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads 1e-3 (no dot) and nan as strings
            except ValueError:
                pass
    if kind is int:
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral:
            raise ConfigError(f"{key}: expected int, got {value!r}")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected float, got {value!r}")
        return float(value)
    raise TypeError(f"{key}: no coercion for the config type {kind!r}")


def _parse(text: str) -> Any:
    """A command-line value read as YAML (`8`, `2.5`, `[10, 20]`); text YAML cannot read stays text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _apply(config: Any, updates: dict, prefix: str = "") -> None:
    hints = get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    for key, value in updates.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}; known: {sorted(prefix + n for n in names)}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{path} is a section; give it a mapping")
            _apply(current, value, f"{path}.")
        else:
            setattr(config, key, _coerce(value, hints[key], path))


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file, then `section.key=value` overrides."""
    config = TrainConfig()
    if path is not None:
        content = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(content, dict):
            raise ConfigError(f"{path}: expected a mapping of config sections, got {type(content).__name__}")
        _apply(config, content)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        *sections, leaf = key.split(".")
        nested: dict = {leaf: value}
        for section in reversed(sections):
            nested = {section: nested}
        _apply(config, nested)
    config.validate()  # the values were set in place, after construction
    return config


def to_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat


def config_changes(stored: dict, config: TrainConfig) -> list[str]:
    """`key: old -> new` for each key outside RESUMABLE_CHANGES where `config` differs from a run's
    stored config.json. Keys only one side has (a config.json from an older version) are skipped."""
    old = _flatten(stored)
    new = _flatten(json.loads(json.dumps(to_dict(config))))  # tuples as JSON lists, like the stored side
    return [
        f"{key}: {json.dumps(old[key])} -> {json.dumps(new[key])}"
        for key in sorted(old.keys() & new.keys())
        if key not in RESUMABLE_CHANGES and old[key] != new[key]
    ]
