"""The shared trainer: one loop for every stage, built on accelerate.

The same command runs single-process on a CPU and under `accelerate launch` on many GPUs or
nodes (DDP, FSDP or DeepSpeed from accelerate's own config). Exact resume: batches, noise and
timesteps are pure functions of (seed, step, shard), and checkpoints hold the trainable weights,
optimizer and LR scheduler, so a resumed run continues the uninterrupted loss trajectory.

Shards: each step's global batch is num_processes × gradient_accumulation_steps shards of
optim.batch_size samples (accelerate's `--gradient_accumulation_steps`, 1 by default). Process p
trains shards p·A … p·A + A − 1, one micro-batch each; gradients are averaged over all shards
(accelerate's DDP averages over processes, `accelerator.backward` divides by A). So 2 processes
× 1 micro-batch train what 1 process × 2 micro-batches trains, to float rounding
(tests/test_two_process.py). Logged values are means over every shard; only process 0 writes
the log, config.json, checkpoints (accelerate adds each process's own RNG state file) and the
exported pipeline.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file
from tqdm.auto import tqdm

from mosaic_studio.files import replace_dir, write_file_atomic
from mosaic_studio.mosaic.pipeline import MosaicPipeline
from mosaic_studio.train.config import ConfigError, TrainConfig, config_changes, to_dict
from mosaic_studio.train.data import BatchSource
from mosaic_studio.train.stages import PER_SAMPLE_LOSS, PER_SAMPLE_T, STAGE_CLASSES

CHECKPOINT_PREFIX = "step-"
PARTIAL_SUFFIX = ".partial"  # a checkpoint being written; renamed to step-N when complete
# Only complete checkpoints: `step-8.partial` (left by a kill during a write) is not one.
_CHECKPOINT_NAME = re.compile(re.escape(CHECKPOINT_PREFIX) + r"(\d+)")
WEIGHTS_FILE = "model.safetensors"  # accelerate's name for the first prepared model
SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine"}  # optim.schedule → diffusers' name
_NOISE_SALT = 0x7E15E  # separates noise/timestep draws from the data streams
LOSS_BINS = 10  # per-noise-level L_diff columns, as minRF's lossbin: bin i holds t in [i/10, (i+1)/10)
LOSS_BIN_COLUMNS = tuple(f"loss_bin_{i}" for i in range(LOSS_BINS))
# A folder: every process then writes rank-<i>.json there at the end of a run, naming the samples
# of each of its shards per step and the (averaged) gradient norm: how sharding is checked.
SHARD_LOG_ENV = "MOSAIC_TRAIN_SHARD_LOG"


class NonFiniteLoss(RuntimeError):
    """Training stopped because the loss is NaN or infinite; the last checkpoint is intact."""


class LossBins:
    """Per-sample L_diff summed by timestep bin on the device, over the steps since the last log
    row: no host sync per step. Its state travels in checkpoints, so a resumed run's first row
    covers the same steps as an uninterrupted run's.

    Each process sums its own samples; `total` adds them up over processes (a collective: every
    process calls `state` and `row` at the same steps). A resumed run gives the stored totals to
    process 0 only, so they are counted once."""

    def __init__(self, device, state: dict | None = None, total=None):
        self.sums = torch.zeros(LOSS_BINS, device=device)
        self.counts = torch.zeros(LOSS_BINS, device=device)
        self.total = total or (lambda tensor: tensor)
        if state:
            self.sums.copy_(torch.tensor(state["sums"]))
            self.counts.copy_(torch.tensor(state["counts"]))

    def add(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        index = (t.float() * LOSS_BINS).long().clamp_(0, LOSS_BINS - 1).to(self.sums.device)
        self.sums.index_add_(0, index, losses.float().to(self.sums.device))
        self.counts.index_add_(0, index, torch.ones(len(index), device=self.sums.device))

    def state(self) -> dict:
        """Totals over every process (host sync: log rows and checkpoints only)."""
        return {"sums": self.total(self.sums).tolist(), "counts": self.total(self.counts).tolist()}

    def row(self) -> dict:
        """The bin columns of a log row, empty where no sample fell (host sync); starts a new interval."""
        state = self.state()
        self.sums.zero_()
        self.counts.zero_()
        return {c: (s / n if n else "") for c, s, n in zip(LOSS_BIN_COLUMNS, state["sums"], state["counts"])}


def _to_host(logs: dict) -> dict:
    """A step's logs (0-dim tensors on the device) as floats, in one host sync."""
    return dict(zip(logs, torch.stack(list(logs.values())).tolist())) if logs else {}


def _mean_over_processes(accelerator: Accelerator, logs: dict) -> dict:
    """A step's logs averaged over every process (a collective), as floats on the host."""
    if not logs:
        return {}
    return dict(zip(logs, accelerator.reduce(torch.stack(list(logs.values())), reduction="mean").tolist()))


def _mean_logs(per_micro_batch: list[dict]) -> dict:
    """The mean of each log key over a step's micro-batches (their shards are the same size)."""
    return {key: torch.stack([logs[key] for logs in per_micro_batch]).mean() for key in per_micro_batch[0]}


class StageModel(torch.nn.Module):
    """The trainable module with its stage's loss as `forward`, so DDP/FSDP wrap the real step."""

    def __init__(self, stage, pipe, trainable: torch.nn.Module):
        super().__init__()
        self.model = trainable
        self.stage, self.pipe = stage, pipe  # not modules: frozen parts stay out of the wrapper

    def forward(self, batch, generator, step):
        return self.stage.loss(self.pipe, self.model, batch, generator, step)


def checkpoints(out: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    found = [p for p in (out / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir()]
    steps = {p: _CHECKPOINT_NAME.fullmatch(p.name) for p in found}
    return sorted((p for p, match in steps.items() if match), key=lambda p: int(steps[p].group(1)))


def _remove_partial_checkpoints(out: Path) -> None:
    """Leftovers of a run killed while writing a checkpoint: never resumed from, so delete them
    rather than let them pile up (a later write of the same step replaces its own anyway)."""
    for partial in (out / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*{PARTIAL_SUFFIX}"):
        shutil.rmtree(partial, ignore_errors=True)


def _refuse_config_changes(config: TrainConfig, out: Path) -> list[str]:
    """The keys (beyond RESUMABLE_CHANGES) where a resume differs from the run's config.json.
    Refused, with nothing written yet, unless run.allow_config_change; a fresh run has none."""
    stored_path = out / "config.json"
    if not checkpoints(out) or not stored_path.exists():
        return []
    try:
        changes = config_changes(json.loads(stored_path.read_text()), config)
    except json.JSONDecodeError:
        changes = [f"{stored_path.name}: unreadable"]
    if changes and not config.run.allow_config_change:
        raise ConfigError(
            f"{out} holds a run trained with another config; changed: {', '.join(changes)}. Resume with the "
            "run's own config, use another run.output_dir, or set run.allow_config_change=true "
            "(--allow-config-change) to continue with the new values"
        )
    return changes


def _check_image_sizes(config: TrainConfig, pixels_per_token: int) -> None:
    """Images must be whole latent tokens of the loaded model, or packing them fails deep in a step."""
    sizes = ["target_size"] + (["ref_size"] if config.uses_references else [])
    for name in sizes:
        value = getattr(config.data, name)
        if value % pixels_per_token:
            raise ConfigError(
                f"data.{name} must be a multiple of {pixels_per_token} (the pixels per token of "
                f"{config.model.pretrained}: VAE factor x 2x2 packing), got {value}"
            )


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
                raise RuntimeError(
                    f"checkpoint {input_dir} does not match the model: "
                    f"missing {sorted(names & set(missing))[:5]}, unexpected {unexpected[:5]}"
                )

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _save_checkpoint(accelerator: Accelerator, out: Path, step: int, keep: int, extra: dict | None = None) -> None:
    """Write to a temporary folder, then rename: a crash never leaves a half checkpoint. `extra`
    goes into step.json beside the step."""
    final = out / "checkpoints" / f"{CHECKPOINT_PREFIX}{step}"
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    accelerator.save_state(str(partial))
    # Every process writes into `partial` (its RNG state file; FSDP/DeepSpeed their shards), and
    # save_state does not wait for them: rename only once all are done.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / "step.json").write_text(json.dumps({"step": step, **(extra or {})}))
        replace_dir(partial, final)  # a re-run of the same step swaps its older copy out whole
        for old in checkpoints(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def train(config: TrainConfig) -> Path:
    """Run (or resume) one stage; returns the exported pipeline folder `<output_dir>/pipeline`."""
    config.validate()  # again: a config built in code may have been changed after construction
    out = Path(config.run.output_dir)
    changes = _refuse_config_changes(config, out)  # before anything is written
    if config.run.threads > 0:
        torch.set_num_threads(config.run.threads)
    kwargs = [DistributedDataParallelKwargs(find_unused_parameters=config.stage == "lora")]
    # The scheduler is stepped by hand, once per optimizer step: accelerate's own stepping advances
    # it num_processes times per step (it assumes the step count was divided by the processes),
    # which would run warmup and decay that many times too fast under `accelerate launch`.
    accelerator = Accelerator(
        mixed_precision=config.optim.mixed_precision, kwargs_handlers=kwargs, step_scheduler_with_optimizer=False
    )
    if accelerator.device.type == "cuda":
        # cuDNN's attention backward crashed on FLUX.1-dev-shaped MOSAIC steps (torch 2.11, CUDA 13,
        # H200; docs/BENCHMARKS.md); flash and memory-efficient SDPA train them fine.
        torch.backends.cuda.enable_cudnn_sdp(False)
    # a stage trains its own, seeded LoRA: a folder's bundled one is not its starting point
    pipe = MosaicPipeline.from_pretrained(config.model.pretrained, load_bundled_lora=False)
    pipe.set_progress_bar_config(disable=True)
    for component in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.transformer):
        component.requires_grad_(False).eval()
    pipe.to(accelerator.device)
    pipe.transformer.gradient_checkpointing = config.model.gradient_checkpointing
    token_size = pipe.pixels_per_token
    _check_image_sizes(config, token_size)
    source = BatchSource(  # before anything is written: a missing dataset folder fails here
        config.data,
        config.optim.batch_size,
        token_size,
        with_references=config.uses_references,
        points=config.loss.points_per_reference,
        reference_batches=config.data.reference_batches if config.stage == "base" else 1.0,
    )
    if accelerator.is_main_process:
        _remove_partial_checkpoints(out)
    accelerator.wait_for_everyone()

    stage = STAGE_CLASSES[config.stage](config)
    model = StageModel(stage, pipe, stage.trainable(pipe))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    scheduler = get_scheduler(
        SCHEDULES[config.optim.schedule],
        optimizer,
        num_warmup_steps=config.optim.warmup_steps,
        num_training_steps=config.optim.max_steps,
    )
    _install_checkpoint_hooks(accelerator, model)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    start, resumed = 0, {}
    if checkpoints(out):
        latest = checkpoints(out)[-1]
        accelerator.load_state(str(latest))
        resumed = json.loads((latest / "step.json").read_text())
        start = resumed["step"]
        accelerator.print(f"resuming {config.stage} from {latest} (step {start})")
        if changes:
            accelerator.print(f"run.allow_config_change: continuing with changed {', '.join(changes)}")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        # Written whole, then renamed: a kill mid-write must not leave a config.json the next resume cannot read.
        write_file_atomic(out / "config.json", lambda handle: json.dump(to_dict(config), handle, indent=2))

    log_path = out / "log.csv"
    if accelerator.is_main_process:
        _truncate_log(log_path, start)  # rows written after the checkpoint we resume from
    # Stored totals go to process 0 alone, or a resumed row would count them once per process.
    bins = LossBins(
        accelerator.device,
        resumed.get("loss_bins") if accelerator.is_main_process else None,
        total=lambda tensor: accelerator.reduce(tensor, reduction="sum"),
    )
    # Losses the host has not checked yet: finiteness is checked at log steps and before every
    # checkpoint, so a NaN trains on for at most log_every steps and never reaches a checkpoint.
    unchecked: list[tuple[int, torch.Tensor, dict]] = []

    def check_finite() -> None:
        # Every process checks the mean over all processes (a NaN anywhere makes it NaN), so all of
        # them stop together rather than leave the others waiting in the next all-reduce.
        losses = torch.stack([loss for _, loss, _ in unchecked]) if unchecked else None
        values = accelerator.reduce(losses, reduction="mean").tolist() if unchecked else []  # host sync
        for (bad_step, _, bad_logs), value in zip(unchecked, values):
            if not math.isfinite(value):
                last = checkpoints(out)[-1].name if checkpoints(out) else "none yet"
                raise NonFiniteLoss(
                    f"{config.stage} loss is {value} at step {bad_step} ({_to_host(bad_logs)}); "
                    f"last good checkpoint: {last}. Lower optim.lr or check the data."
                )
        unchecked.clear()

    began = time.monotonic()
    step = start
    progress = tqdm(
        total=config.optim.max_steps, initial=start, desc=config.stage, disable=not accelerator.is_main_process
    )
    shard_log = ShardLog(accelerator)
    num_shards = accelerator.num_processes * accelerator.gradient_accumulation_steps

    def forward(step: int, shard: int):
        """Loss and logs of one shard of step `step`'s global batch; its loss bins are added."""
        batch = source.batch(step, shard, num_shards)
        shard_log.add(step, shard, batch)
        generator = torch.Generator().manual_seed(_step_seed(config.data.seed, step, shard))
        with accelerator.autocast():
            loss, logs = model(batch, generator, step)
        per_sample, t = logs.pop(PER_SAMPLE_LOSS, None), logs.pop(PER_SAMPLE_T, None)
        if per_sample is not None:
            bins.add(t, per_sample)
        return loss, logs

    for step in range(start, config.optim.max_steps):
        log_step = step % config.run.log_every == 0 or step == config.optim.max_steps - 1
        losses, micro_logs = [], []
        for micro, shard in enumerate(_shards(accelerator)):
            last = micro == accelerator.gradient_accumulation_steps - 1
            # Gradients are all-reduced once per step, by the last micro-batch's backward.
            with nullcontext() if last else accelerator.no_sync(model):
                loss, micro_log = forward(step, shard)
                losses.append(loss.detach())  # the loss trained on, which the logs need not show
                micro_logs.append(micro_log)
                if last:
                    logs = _mean_logs(micro_logs)
                    unchecked.append((step, torch.stack(losses).mean(), logs))
                    if log_step:
                        check_finite()  # before the last backward: a NaN found here never updates the weights
                accelerator.backward(loss)  # divided by gradient_accumulation_steps
        if accelerator.sync_gradients and config.optim.grad_clip > 0:
            shard_log.grad_norm(step, accelerator.clip_grad_norm_(model.parameters(), config.optim.grad_clip))
        optimizer.step()
        if not accelerator.optimizer_step_was_skipped:  # fp16's scaler skips steps with inf gradients
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        progress.update()
        if log_step:  # the hot loop's only host syncs besides check_finite: once per log_every steps
            values, binned = _mean_over_processes(accelerator, logs), bins.row()
            progress.set_postfix(loss=f"{values['loss']:.4f}")
            if accelerator.is_main_process:
                _append_log(
                    log_path,
                    {
                        "step": step,
                        "lr": scheduler.get_last_lr()[0],
                        "seconds": round(time.monotonic() - began, 2),
                        **values,
                        **binned,
                    },
                )
        done = step + 1
        out_of_time = config.run.max_minutes > 0 and _agreed(
            accelerator, time.monotonic() - began > 60 * config.run.max_minutes
        )
        if done % config.run.checkpoint_every == 0 or done == config.optim.max_steps or out_of_time:
            check_finite()  # a checkpoint is never written after a non-finite step
            _save_checkpoint(accelerator, out, done, config.run.keep_checkpoints, {"loss_bins": bins.state()})
        if out_of_time:
            accelerator.print(
                f"wall-time budget of {config.run.max_minutes} min reached at step {done}; checkpoint saved"
            )
            break
    progress.close()
    shard_log.write()

    export_dir = out / "pipeline"
    if accelerator.is_main_process:
        stage.export(pipe, accelerator.unwrap_model(model).model, export_dir, source)
    accelerator.wait_for_everyone()
    return export_dir


def _step_seed(seed: int, step: int, shard: int) -> int:
    return int(np.random.SeedSequence([_NOISE_SALT, seed, step, shard]).generate_state(1, np.uint64)[0] >> 1)


def _shards(accelerator: Accelerator) -> range:
    """This process's shards of every global batch, one per micro-batch (module docstring)."""
    per_process = accelerator.gradient_accumulation_steps
    return range(accelerator.process_index * per_process, (accelerator.process_index + 1) * per_process)


def _agreed(accelerator: Accelerator, decision: bool) -> bool:
    """Process 0's `decision`, on every process: clocks differ, and a process that stops alone
    leaves the others waiting in the next all-reduce."""
    flag = torch.tensor([float(decision)], device=accelerator.device)
    return bool(broadcast(flag, from_process=0).item())


class ShardLog:
    """With SHARD_LOG_ENV set, what this process trained: per step, the sample ids of each of
    its shards and the gradient norm after averaging; written as <folder>/rank-<i>.json."""

    def __init__(self, accelerator: Accelerator):
        folder = os.environ.get(SHARD_LOG_ENV, "")
        self.path = Path(folder) / f"rank-{accelerator.process_index}.json" if folder else None
        self.steps: dict[int, dict] = {}
        self.header = {
            "process_index": accelerator.process_index,
            "num_processes": accelerator.num_processes,
            "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        }

    def add(self, step: int, shard: int, batch) -> None:
        if self.path is not None:
            self.steps.setdefault(step, {"step": step, "shards": {}})["shards"][str(shard)] = batch.sample_ids

    def grad_norm(self, step: int, norm: torch.Tensor) -> None:
        if self.path is not None:
            self.steps[step]["grad_norm"] = float(norm)  # a host sync, in this debugging mode only

    def write(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({**self.header, "steps": list(self.steps.values())}, indent=1))


def _truncate_log(path: Path, start: int) -> None:
    """Keep the rows before `start`; rows of a log written before the loss bins existed get empty
    bin columns, so every row has the columns the resumed run appends (DictWriter fieldnames)."""
    if not path.exists():
        return
    with path.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["step"]) < start]
    path.unlink()
    for row in rows:
        _append_log(path, {**row, **{c: row.get(c, "") for c in LOSS_BIN_COLUMNS}})


def _append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
