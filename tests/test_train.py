"""Trainer: config, batches, loss decrease, exact resume, non-finite stop (tiny models, CPU)."""

import csv

import numpy as np
import pytest
import torch
from train_fixtures import FAST, TINY

from mosaic_studio.mosaic.data.semalign import pixel_to_token
from mosaic_studio.train.config import DataConfig, load_config
from mosaic_studio.train.data import BatchSource
from mosaic_studio.train.trainer import NonFiniteLoss, checkpoints, train


def log_losses(run_dir):
    with (run_dir / "log.csv").open() as handle:
        return [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(handle)]


def log_rows(run_dir):
    """Every column but the wall time."""
    with (run_dir / "log.csv").open() as handle:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(handle)]


def test_config_file_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("stage: lora\noptim: {lr: 0.5, max_steps: 7}\nloss: {beta_ramp: [10, 20]}\n")
    config = load_config(path, ["optim.lr=0.25", "model.gradient_checkpointing=true"])
    assert (config.stage, config.optim.lr, config.optim.max_steps) == ("lora", 0.25, 7)
    assert config.loss.beta_ramp == (10, 20) and config.model.gradient_checkpointing is True
    with pytest.raises(ValueError, match="unknown config key 'optim.learning_rate'"):
        load_config(None, ["optim.learning_rate=1"])
    path.write_text("optimizer: {lr: 1}\n")
    with pytest.raises(ValueError, match="unknown config key 'optimizer'"):
        load_config(path)
    with pytest.raises(ValueError, match="optim.max_steps: expected int"):
        load_config(None, ["optim.max_steps=many"])
    with pytest.raises(ValueError, match="stage must be one of"):
        load_config(None, ["stage=finetune"])


def test_batches_are_deterministic_and_correspondences_index_the_right_tokens():
    config = DataConfig(target_size=64, ref_size=32, max_subjects=4)
    source = BatchSource(config, batch_size=3, token_size=8, with_references=True, points=5)
    a, b = source.batch(7), source.batch(7)
    assert torch.equal(a.target, b.target) and torch.equal(a.rows, b.rows) and a.captions == b.captions
    assert not torch.equal(a.target, source.batch(8).target)
    k = a.num_refs
    assert a.reference_pixels.shape == (3, k, 3, 32, 32) and a.rows.shape == (3, k * 5)
    n_ref, n_tgt = (32 // 8) ** 2, (64 // 8) ** 2
    valid = a.valid
    assert (a.rows[valid] // n_ref == a.ref_index[valid]).all()  # each row lies in its reference's block
    assert (a.tgt_index[valid] < n_tgt).all() and valid.any()
    # The same point recomputed from the sample: first point of reference 0 of sample 0.
    sample = source._sample(7 * 3, k, np.random.default_rng(0))
    u0 = pixel_to_token(sample.references[0].ref_points, 8, 4)
    assert int(a.rows[0, 0]) in set(u0.tolist())


@pytest.mark.parametrize("stage_name, lr", [("base", 3e-3), ("lora", 2e-2)])
def test_a_few_steps_on_a_fixed_batch_reduce_the_loss(stage_name, lr):
    from mosaic_studio.mosaic.pipeline import MosaicPipeline
    from mosaic_studio.mosaic.tiny import tiny_flux_components
    from mosaic_studio.train.stages import STAGE_CLASSES

    config = load_config(None, [*FAST, f"stage={stage_name}", "data.caption_drop=0", "model.lora_rank=8"])
    pipe = MosaicPipeline(**tiny_flux_components(TINY, seed=0))
    stage = STAGE_CLASSES[stage_name](config)
    module = stage.trainable(pipe)
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr)
    batch = BatchSource(config.data, 2, token_size=8, with_references=stage_name == "lora", points=8).batch(0)
    losses = []
    for _ in range(25):  # same batch, noise and timesteps every step: the loss must fall
        loss, _ = stage.loss(pipe, module, batch, torch.Generator().manual_seed(0), step=0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


@pytest.mark.parametrize("stage", ["base", "lora"])
def test_resume_continues_the_uninterrupted_loss_trajectory(tiny_dir, tmp_path, stage):
    common = [*FAST, f"stage={stage}", f"model.pretrained={tiny_dir}", "run.checkpoint_every=3"]
    whole = tmp_path / "whole"
    train(load_config(None, [*common, f"run.output_dir={whole}", "optim.max_steps=6"]))
    split = tmp_path / "split"
    train(load_config(None, [*common, f"run.output_dir={split}", "optim.max_steps=3"]))
    train(load_config(None, [*common, f"run.output_dir={split}", "optim.max_steps=6"]))
    assert log_losses(split) == log_losses(whole)
    assert log_rows(split) == log_rows(whole)  # the per-noise-level loss bins too
    assert [f"loss_bin_{i}" for i in range(10)] == list(log_rows(whole)[0])[-10:]
    assert any(r["loss_bin_5"] for r in log_rows(whole))  # t is logit-normal: the middle bins fill
    assert [p.name for p in checkpoints(split)] == ["step-3", "step-6"]


@pytest.mark.parametrize("log_every", [1, 4])  # 4: found only before the checkpoint after step 3 is written
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_dir, tmp_path, monkeypatch, log_every):
    from mosaic_studio.train import stages

    real = stages.BaseStage.loss

    def poisoned(self, pipe, module, batch, generator, step):
        loss, logs = real(self, pipe, module, batch, generator, step)
        return (loss * float("nan"), logs) if step == 3 else (loss, logs)

    monkeypatch.setattr(stages.BaseStage, "loss", poisoned)
    config = load_config(
        None,
        [
            *FAST,
            "stage=base",
            f"model.pretrained={tiny_dir}",
            f"run.output_dir={tmp_path}",
            "optim.max_steps=10",
            "run.checkpoint_every=2",
            f"run.log_every={log_every}",
        ],
    )
    with pytest.raises(NonFiniteLoss, match="nan at step 3.*last good checkpoint: step-2"):
        train(config)
    assert [p.name for p in checkpoints(tmp_path)] == ["step-2"]
    assert not (tmp_path / "pipeline").exists()


def test_a_semalign_ms_folder_feeds_the_same_batches(tmp_path):
    from mosaic_studio.mosaic.data.semalign import save_sample
    from mosaic_studio.world.synthetic import WorldConfig, generate_sample

    world = WorldConfig(target_size=96, ref_size=48, token_size=8, min_subjects=2, max_subjects=2)
    for i in range(3):
        save_sample(generate_sample(5, i, "train", world), tmp_path / f"s{i}", token_size=8)
    config = DataConfig(source=str(tmp_path), target_size=64, ref_size=32, caption_drop=0.0)
    batch = BatchSource(config, batch_size=2, token_size=8, with_references=True, points=6).batch(0)
    assert batch.target.shape == (2, 3, 64, 64) and batch.reference_pixels.shape == (2, 2, 3, 32, 32)
    assert batch.valid.any() and (batch.tgt_index[batch.valid] < (64 // 8) ** 2).all()  # points rescaled to 64 px
    with pytest.raises(ValueError, match="neither 'synthetic' nor a dataset folder"):
        BatchSource(DataConfig(source=str(tmp_path / "missing")), 1, 8, True, 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no samples"):
        BatchSource(DataConfig(source=str(tmp_path / "empty")), 1, 8, True, 4)


def test_base_reference_batches_carry_references_in_that_fraction_only():
    config = DataConfig(target_size=64, ref_size=32, max_subjects=4, reference_batches=0.5)
    mixed = BatchSource(config, batch_size=2, token_size=8, with_references=True, points=4, reference_batches=0.5)
    carried = [mixed.batch(step).reference_pixels is not None for step in range(40)]
    assert 10 < sum(carried) < 30  # about half, deterministically
    assert [mixed.batch(step).reference_pixels is not None for step in range(40)] == carried
    # A batch with references has exactly K subjects per scene; one without may have any number.
    with_refs = next(mixed.batch(s) for s in range(40) if carried[s])
    assert with_refs.reference_pixels.shape[1] == with_refs.num_refs and with_refs.rows is not None
    # At the default fraction nothing changes: the batches a LoRA or VAE run always saw.
    plain = BatchSource(config, batch_size=2, token_size=8, with_references=True, points=4)
    again = BatchSource(config, batch_size=2, token_size=8, with_references=True, points=4, reference_batches=1.0)
    assert torch.equal(plain.batch(3).reference_pixels, again.batch(3).reference_pixels)


def test_base_stage_with_references_trains_the_base_through_them():
    from mosaic_studio.mosaic.pipeline import MosaicPipeline
    from mosaic_studio.mosaic.tiny import tiny_flux_components
    from mosaic_studio.train.stages import STAGE_CLASSES

    config = load_config(None, [*FAST, "stage=base", "data.reference_batches=1"])
    pipe = MosaicPipeline(**tiny_flux_components(TINY, seed=0))
    stage = STAGE_CLASSES["base"](config)
    module = stage.trainable(pipe)
    source = BatchSource(config.data, 2, token_size=8, with_references=True, points=8, reference_batches=1.0)
    batch = source.batch(0)
    loss, _ = stage.loss(pipe, module, batch, torch.Generator().manual_seed(0), step=0)
    loss.backward()
    assert torch.isfinite(loss)
    # The references reach the loss: changing them changes it (same noise and timesteps).
    batch.reference_pixels = -batch.reference_pixels
    changed, _ = stage.loss(pipe, module, batch, torch.Generator().manual_seed(0), step=0)
    assert not torch.isclose(loss.detach(), changed.detach())
    assert all(p.grad is not None for p in module.x_embedder.parameters())


@pytest.mark.parametrize("stage_name", ["base", "lora"])
def test_mode_targets_are_the_posterior_mode_and_sampled_targets_are_not(stage_name):
    from mosaic_studio.mosaic.latents import encode_latents
    from mosaic_studio.mosaic.pipeline import MosaicPipeline
    from mosaic_studio.mosaic.tiny import tiny_flux_components
    from mosaic_studio.train.stages import STAGE_CLASSES

    pipe = MosaicPipeline(**tiny_flux_components(TINY, seed=0))
    batch = BatchSource(load_config(None, FAST).data, 2, token_size=8, with_references=False).batch(0)
    mode, _ = encode_latents(pipe, batch.target)
    targets = {}
    for choice in ("mode", "sample"):
        stage = STAGE_CLASSES[stage_name](
            load_config(None, [*FAST, f"stage={stage_name}", f"loss.target_latents={choice}"])
        )
        targets[choice] = [stage.flow_inputs(pipe, batch, torch.Generator().manual_seed(s))["x0"] for s in (0, 1)]
    assert all(torch.equal(x0, mode) for x0 in targets["mode"])  # whatever the step's generator
    first, second = targets["sample"]
    assert not torch.allclose(first, mode) and not torch.allclose(first, second)
