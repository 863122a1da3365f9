"""The shared trainer: one loop for every stage, built on accelerate.

The same command runs single-process on a CPU and under `accelerate launch` on many GPUs or
nodes (DDP, FSDP or DeepSpeed from accelerate's own config). Exact resume: batches, noise and
timesteps are pure functions of (seed, step, rank), and checkpoints hold the trainable weights,
optimizer and LR scheduler, so a resumed run continues the uninterrupted loss trajectory.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file
from tqdm.auto import tqdm

from mosaic_studio.mosaic.pipeline import MosaicPipeline
from mosaic_studio.train.config import TrainConfig, to_dict
from mosaic_studio.train.data import BatchSource
from mosaic_studio.train.stages import STAGE_CLASSES

CHECKPOINT_PREFIX = "step-"
WEIGHTS_FILE = "model.safetensors"  # accelerate's name for the first prepared model
SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine"}  # optim.schedule → diffusers' name
_NOISE_SALT = 0x7E15E  # separates noise/timestep draws from the data streams


class NonFiniteLoss(RuntimeError):
    """Training stopped because the loss is NaN or infinite; the last checkpoint is intact."""


class StageModel(torch.nn.Module):
    """The trainable module with its stage's loss as `forward`, so DDP/FSDP wrap the real step."""

    def __init__(self, stage, pipe, trainable: torch.nn.Module):
        super().__init__()
        self.model = trainable
        self.stage, self.pipe = stage, pipe  # not modules: frozen parts stay out of the wrapper

    def forward(self, batch, generator, step):
        return self.stage.loss(self.pipe, self.model, batch, generator, step)


def checkpoints(out: Path) -> list[Path]:
    found = [p for p in (out / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def _trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, param in model.named_parameters() if param.requires_grad}


def _install_checkpoint_hooks(accelerator: Accelerator, model: StageModel) -> None:
    """Checkpoints keep only trainable weights (a LoRA run never rewrites the frozen base)."""
    names = _trainable_names(model)

    def save_hook(models, weights, output_dir):
        for i, state in enumerate(weights):
            weights[i] = {k: v for k, v in state.items() if k in names}

    def load_hook(models, input_dir):
        for _ in range(len(models)):
            target = accelerator.unwrap_model(models.pop())
            state = load_file(str(Path(input_dir) / WEIGHTS_FILE))
            missing, unexpected = target.load_state_dict(state, strict=False)
            if unexpected or names & set(missing):
                raise RuntimeError(f"checkpoint {input_dir} does not match the model: missing {sorted(names & set(missing))[:5]}, unexpected {unexpected[:5]}")

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _save_checkpoint(accelerator: Accelerator, out: Path, step: int, keep: int) -> None:
    """Write to a temporary folder, then rename: a crash never leaves a half checkpoint."""
    final = out / "checkpoints" / f"{CHECKPOINT_PREFIX}{step}"
    partial = final.with_name(final.name + ".partial")
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        (partial / "step.json").write_text(json.dumps({"step": step}))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        for old in checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def train(config: TrainConfig) -> Path:
    """Run (or resume) one stage; returns the exported pipeline folder `<output_dir>/pipeline`."""
    out = Path(config.run.output_dir)
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=config.stage == "lora")]
    accelerator = Accelerator(mixed_precision=config.optim.mixed_precision, kwargs_handlers=kwargs)
    if accelerator.device.type == "cuda":
        # cuDNN's attention backward crashed on FLUX.1-dev-shaped MOSAIC steps (torch 2.11, CUDA 13,
        # H200; docs/BENCHMARKS.md); flash and memory-efficient SDPA train them fine.
        torch.backends.cuda.enable_cudnn_sdp(False)
    pipe = MosaicPipeline.from_pretrained(config.model.pretrained)
    pipe.set_progress_bar_config(disable=True)
    for component in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.transformer):
        component.requires_grad_(False).eval()
    pipe.to(accelerator.device)
    pipe.transformer.gradient_checkpointing = config.model.gradient_checkpointing

    stage = STAGE_CLASSES[config.stage](config)
    model = StageModel(stage, pipe, stage.trainable(pipe))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    scheduler = get_scheduler(SCHEDULES[config.optim.schedule], optimizer, num_warmup_steps=config.optim.warmup_steps,
                              num_training_steps=config.optim.max_steps)
    _install_checkpoint_hooks(accelerator, model)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    start = 0
    if checkpoints(out):
        latest = checkpoints(out)[-1]
        accelerator.load_state(str(latest))
        start = json.loads((latest / "step.json").read_text())["step"]
        accelerator.print(f"resuming {config.stage} from {latest} (step {start})")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(to_dict(config), indent=2))

    token_size = pipe.vae_scale_factor * 2
    source = BatchSource(config.data, config.optim.batch_size, token_size, with_references=config.stage != "base", points=config.loss.points_per_reference)
    log_path = out / "log.csv"
    if accelerator.is_main_process:
        _truncate_log(log_path, start)  # rows written after the checkpoint we resume from
    began = time.monotonic()
    step = start
    progress = tqdm(total=config.optim.max_steps, initial=start, desc=config.stage, disable=not accelerator.is_main_process)
    for step in range(start, config.optim.max_steps):
        batch = source.batch(step, accelerator.process_index, accelerator.num_processes)
        generator = torch.Generator().manual_seed(_step_seed(config.data.seed, step, accelerator.process_index))
        with accelerator.autocast():
            loss, logs = model(batch, generator, step)
        if not math.isfinite(loss.item()):
            last = checkpoints(out)[-1].name if checkpoints(out) else "none yet"
            raise NonFiniteLoss(f"{config.stage} loss is {loss.item()} at step {step} ({logs}); last good checkpoint: {last}. Lower optim.lr or check the data.")
        accelerator.backward(loss)
        if accelerator.sync_gradients and config.optim.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.update()
        progress.set_postfix(loss=f"{logs['loss']:.4f}")
        if accelerator.is_main_process and (step % config.run.log_every == 0 or step == config.optim.max_steps - 1):
            _append_log(log_path, {"step": step, "lr": scheduler.get_last_lr()[0], "seconds": round(time.monotonic() - began, 2), **logs})
        done = step + 1
        out_of_time = config.run.max_minutes > 0 and time.monotonic() - began > 60 * config.run.max_minutes
        if done % config.run.checkpoint_every == 0 or done == config.optim.max_steps or out_of_time:
            _save_checkpoint(accelerator, out, done, config.run.keep_checkpoints)
        if out_of_time:
            accelerator.print(f"wall-time budget of {config.run.max_minutes} min reached at step {done}; checkpoint saved")
            break
    progress.close()

    export_dir = out / "pipeline"
    if accelerator.is_main_process:
        stage.export(pipe, accelerator.unwrap_model(model).model, export_dir, source)
    accelerator.wait_for_everyone()
    return export_dir


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([_NOISE_SALT, seed, step, rank]).generate_state(1, np.uint64)[0] >> 1)


def _truncate_log(path: Path, start: int) -> None:
    if not path.exists():
        return
    with path.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["step"]) < start]
    path.unlink()
    for row in rows:
        _append_log(path, row)


def _append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
