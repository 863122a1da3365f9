"""Trainer reliability: a kill during a checkpoint write, checkpoint retention, config changes on
resume, and validation of every config field (tiny models, CPU)."""

import csv
import json

import pytest
from train_fixtures import FAST

from mosaic_studio.train import trainer
from mosaic_studio.train.__main__ import main
from mosaic_studio.train.config import CONFIGS_DIR, DataConfig, OptimConfig, RunConfig, load_config, to_dict
from mosaic_studio.train.trainer import checkpoints, train


def run_args(tiny_dir, out, *extra):
    return [*FAST, "stage=base", f"model.pretrained={tiny_dir}", f"run.output_dir={out}", *extra]


def logged_steps(out):
    with (out / "log.csv").open() as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


def snapshot(folder):
    """Every file under `folder` with its bytes: what a refused run must leave untouched."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. a kill while a checkpoint is written -------------------------------------------------


def test_checkpoint_listing_matches_only_complete_step_folders(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step-3", "step-10", "step-8.partial", "step-x", "step-3.bak", "step-"):
        (root / name).mkdir(parents=True)
    (root / "step-4").write_text("a file, not a checkpoint")
    assert [p.name for p in checkpoints(tmp_path)] == ["step-3", "step-10"]


def test_resume_after_a_kill_during_a_checkpoint_write(tiny_dir, tmp_path, monkeypatch):
    real_save = trainer.Accelerator.save_state

    def killed_after_writing(self, output_dir=None, **kwargs):
        real_save(self, output_dir, **kwargs)
        if str(output_dir).endswith("step-4.partial"):
            raise KeyboardInterrupt("killed while step-4 is written")  # the rename never happens

    monkeypatch.setattr(trainer.Accelerator, "save_state", killed_after_writing)
    args = run_args(tiny_dir, tmp_path, "optim.max_steps=4", "run.checkpoint_every=2")
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, args))
    monkeypatch.undo()
    assert (tmp_path / "checkpoints" / "step-4.partial").is_dir()
    (tmp_path / "checkpoints" / "step-99.partial").mkdir()  # an older kill's leftover, never rewritten
    assert [p.name for p in checkpoints(tmp_path)] == ["step-2"]

    train(load_config(None, args))  # resumes from step-2, not a crash on int('4.partial')
    assert [p.name for p in checkpoints(tmp_path)] == ["step-2", "step-4"]
    assert not list((tmp_path / "checkpoints").glob("*.partial"))
    assert logged_steps(tmp_path) == [0, 1, 2, 3]
    assert (tmp_path / "pipeline").is_dir()


# --- 2. keep_checkpoints ---------------------------------------------------------------------


@pytest.mark.parametrize("keep", ["-1", "0"])
def test_keep_checkpoints_below_one_is_refused(keep):
    with pytest.raises(ValueError, match=r"run\.keep_checkpoints must be >= 1, got " + keep):
        load_config(None, [f"run.keep_checkpoints={keep}"])


# --- 5. a changed config on resume -----------------------------------------------------------


def test_resume_refuses_a_changed_config_before_writing_anything(tiny_dir, tmp_path):
    train(load_config(None, run_args(tiny_dir, tmp_path, "optim.max_steps=2", "run.checkpoint_every=2")))
    before = snapshot(tmp_path)
    changed = run_args(tiny_dir, tmp_path, "optim.max_steps=4", "run.checkpoint_every=2", "optim.lr=0.5", "data.seed=7")
    with pytest.raises(
        ValueError, match=r"changed.*data\.seed: 0 -> 7.*optim\.lr: 0\.001 -> 0\.5.*allow_config_change"
    ):
        train(load_config(None, changed))
    assert snapshot(tmp_path) == before  # config.json, log.csv and the checkpoints are untouched

    # Keys that may differ on resume: extending the run, its budget, threads and bookkeeping.
    extended = run_args(
        tiny_dir,
        tmp_path,
        "optim.max_steps=3",
        "run.checkpoint_every=3",
        "run.log_every=2",
        "run.keep_checkpoints=3",
        "run.max_minutes=30",
        "run.threads=1",
    )
    train(load_config(None, extended))
    assert [p.name for p in checkpoints(tmp_path)] == ["step-2", "step-3"]
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["max_steps"] == 3

    train(load_config(None, [*changed, "run.allow_config_change=true"]))  # asked for explicitly
    stored = json.loads((tmp_path / "config.json").read_text())
    assert (stored["optim"]["lr"], stored["data"]["seed"]) == (0.5, 7)
    assert [p.name for p in checkpoints(tmp_path)][-1] == "step-4"


def test_cli_refuses_a_changed_config_unless_allowed(tiny_dir, tmp_path, capsys):
    assert main(run_args(tiny_dir, tmp_path, "optim.max_steps=2", "run.checkpoint_every=2")) == 0
    changed = run_args(tiny_dir, tmp_path, "optim.max_steps=3", "run.checkpoint_every=3", "optim.lr=0.5")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(changed)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("python -m mosaic_studio.train: error: ") and "optim.lr: 0.001 -> 0.5" in error
    assert main(["--allow-config-change", *changed]) == 0
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == 0.5


# --- 16. validation of every config field ----------------------------------------------------

# At least one refused value for every key: a field added without validation fails the first test.
BAD = {
    "stage": ["finetune"],
    "data.source": [""],
    "data.seed": ["-1", "1.5", "true"],
    "data.target_size": ["0", "-8", "2.9", "true"],
    "data.ref_size": ["0", "[32]"],
    "data.min_subjects": ["0"],
    "data.max_subjects": ["7"],
    "data.caption_drop": ["1.5", "-0.1", "nan", "true"],
    "data.reference_batches": ["1.5", "-0.1"],
    "data.reference_drop": ["2"],
    "data.composed": ["data/composed"],  # without data.composed_fraction
    "data.composed_fraction": ["1.5", "0.5"],  # 0.5 without data.composed
    "model.pretrained": [""],
    "model.lora_rank": ["0"],
    "model.max_sequence_length": ["0", "513"],
    "model.gradient_checkpointing": ["maybe", "2"],
    "loss.alpha": ["-1", "inf"],
    "loss.beta": ["-0.5"],
    "loss.beta_ramp": ["[10, 5]", "[-1, 0]", "[1.5, 2]", "[1]"],
    "loss.points_per_reference": ["0"],
    "loss.blocks": ["bogus"],
    "loss.divergence": ["kl"],
    "loss.scal_reduction": ["mean"],
    "loss.logit_mean": ["nan"],
    "loss.logit_std": ["0"],
    "loss.kl_weight": ["-1e-6"],
    "loss.target_latents": ["mean", "Mode"],
    "optim.lr": ["0", "-1", "nan", "fast"],
    "optim.weight_decay": ["-0.1"],
    "optim.warmup_steps": ["-1"],
    "optim.schedule": ["linear"],
    "optim.max_steps": ["2.9", "true", "0", "-5"],
    "optim.batch_size": ["0"],
    "optim.grad_clip": ["-1"],
    "optim.mixed_precision": ["fp8"],
    "run.output_dir": [""],
    "run.checkpoint_every": ["0"],
    "run.log_every": ["0"],
    "run.keep_checkpoints": ["-1"],
    "run.max_minutes": ["-1", "nan"],
    "run.threads": ["-1"],
    "run.allow_config_change": ["maybe"],
}


def leaf_keys(tree, prefix=""):
    for key, value in tree.items():
        yield from leaf_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]


def test_every_config_key_has_a_refusal_case():
    assert set(leaf_keys(to_dict(load_config()))) == set(BAD)


@pytest.mark.parametrize("key, value", [(k, v) for k, values in BAD.items() for v in values])
def test_invalid_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError) as info:
        load_config(None, [f"{key}={value}"])
    message = str(info.value)
    assert message.startswith(key) and "\n" not in message, message
    assert "must be" in message or "expected" in message, message


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.max_steps=2.9", r"optim\.max_steps: expected int, got 2\.9"),
        ("optim.max_steps=true", r"optim\.max_steps: expected int, got True"),
        ("optim.max_steps=0", r"optim\.max_steps must be >= 1, got 0"),
        ("optim.max_steps=-5", r"optim\.max_steps must be >= 1, got -5"),
        ("run.checkpoint_every=0", r"run\.checkpoint_every must be >= 1, got 0"),
        ("loss.blocks=bogus", r"loss\.blocks must be one of \('early', 'double', 'all'\), got 'bogus'"),
        ("optim.mixed_precision=fp8", r"optim\.mixed_precision must be one of \('no', 'bf16', 'fp16'\)"),
        ("data.caption_drop=1.5", r"data\.caption_drop must be between 0 and 1, got 1\.5"),
        ("model.gradient_checkpointing=2", r"model\.gradient_checkpointing: expected bool \(true or false\), got '2'"),
    ],
)
def test_refusal_messages_name_the_allowed_values(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_cross_field_constraints_and_accepted_forms(tmp_path):
    with pytest.raises(ValueError, match=r"data\.min_subjects must be <= data\.max_subjects \(3\), got 4"):
        load_config(None, ["data.min_subjects=4", "data.max_subjects=3"])
    with pytest.raises(ValueError, match=r"data\.ref_size must be <= data\.target_size \(64\) in the vae stage"):
        load_config(None, ["stage=vae", "data.target_size=64", "data.ref_size=128"])
    assert load_config(None, ["optim.max_steps=2.0"]).optim.max_steps == 2  # integral: an integer
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 1e-3, max_steps: 5}\nmodel: {gradient_checkpointing: true}\n")
    config = load_config(path)  # YAML 1.1 reads 1e-3 as a string: still a float
    assert (config.optim.lr, config.optim.max_steps, config.model.gradient_checkpointing) == (1e-3, 5, True)
    for text, key in [
        ("optim: {max_steps: 2.9}", "optim.max_steps"),
        ("optim: {lr: null}", "optim.lr"),
        ("stage: 3", "stage"),
        ("loss: {beta_ramp: [0, true]}", "loss.beta_ramp"),
    ]:
        path.write_text(text + "\n")
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            load_config(path)


def test_sections_validate_when_built_directly():
    for build, key in [
        (lambda: DataConfig(target_size=0), "data.target_size"),
        (lambda: OptimConfig(max_steps=0), "optim.max_steps"),
        (lambda: RunConfig(keep_checkpoints=-1), "run.keep_checkpoints"),
    ]:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            build()


@pytest.mark.parametrize("path", sorted(CONFIGS_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_still_load(path):
    load_config(path)


@pytest.mark.parametrize("override", ["data.target_size=100", "data.ref_size=36"])
def test_image_sizes_must_be_whole_model_tokens(tiny_dir, tmp_path, override, capsys):
    key = override.split("=")[0]
    out = tmp_path / "run"
    args = run_args(tiny_dir, out, "stage=lora", "optim.max_steps=2", override)
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + r" must be a multiple of 8 .*got (100|36)"):
        train(load_config(None, args))
    assert not out.exists()  # refused before anything is written
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and key in capsys.readouterr().err.strip().splitlines()[-1]


def test_cli_prints_config_errors_as_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["optim.max_steps=2.9"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "python -m mosaic_studio.train: error: optim.max_steps: expected int, got 2.9"
    )
