"""The LoRA stage under `accelerate launch` with two CPU processes (gloo DDP), on the tiny model.

accelerate 1.15's `--cpu --num_processes 2` starts one process unless mpirun is installed, so
the two processes come from its torchrun launcher (`--multi_gpu`) with ACCELERATE_USE_CPU=1,
which makes accelerate pick its multi-CPU mode and gloo (docs/TRAINING.md).

Shown: every process trains a disjoint shard of each step's global batch; the gradients are
averaged (both processes hold the same gradient, the one a single process gets from the two
shards as micro-batches); process 0 alone writes the log, config and checkpoints (process 1
only its own RNG state file, accelerate's); a resume after a stop equals the uninterrupted run;
and the final LoRA equals one process training the same global batch (2 shards as 2
micro-batches of gradient accumulation) to float rounding.
"""

import csv
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import FAST

from mosaic_studio.train.config import load_config
from mosaic_studio.train.trainer import SHARD_LOG_ENV, checkpoints, train

LORA_FILE = "pipeline/mosaic_lora.safetensors"
STEPS = 4
# warmup_steps=2: accelerate's own scheduler stepping would advance it once per process and
# reach full lr a step early; the trainer steps it once per optimizer step, as one process does.
SETTINGS = [*FAST, "stage=lora", "optim.warmup_steps=2", f"optim.max_steps={STEPS}", "run.checkpoint_every=2"]
OTHERS_GROUP = 4242  # the group process 1 creates its files with (see ENTRY)
# The launched entry: the real CLI. Run as root (as CI is), process 1 first switches its
# effective group, so every file it creates, by Python, torch or safetensors' native writer
# alike, belongs to OTHERS_GROUP: who wrote what shows in the run folder.
ENTRY = f"""import os, sys
if os.environ["RANK"] != "0" and os.geteuid() == 0:
    os.setegid({OTHERS_GROUP})
from mosaic_studio.train.__main__ import main
sys.exit(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(tmp_path, overrides, shard_log) -> None:
    """`accelerate launch` with 2 CPU processes, each writing its shard log into `shard_log`."""
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(free_port()), str(entry), *overrides),
    ]
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        SHARD_LOG_ENV: str(shard_log),
        "HF_HOME": str(tmp_path / "hf"),  # no accelerate default_config.yaml of this machine's user
        "HF_HUB_OFFLINE": "1",
    }
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def shard_logs(folder) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("rank-*.json"))]


def log_rows(run_dir):
    with (run_dir / "log.csv").open() as handle:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(handle)]


def written_by_others(run_dir) -> list[str]:
    """The files of the run that process 1 created (see ENTRY)."""
    return sorted(
        str(path.relative_to(run_dir))
        for path in run_dir.rglob("*")
        if path.is_file() and path.stat().st_gid == OTHERS_GROUP
    )


def assert_close_loras(a, b, atol):
    a, b = load_file(str(a)), load_file(str(b))
    assert a.keys() == b.keys() and a
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= atol, worst


@pytest.fixture(scope="module")
def two_process_run(tiny_dir, tmp_path_factory):
    """One uninterrupted two-process run: its folder, its shard logs and the settings it ran with."""
    root = tmp_path_factory.mktemp("two-process")
    common = [*SETTINGS, f"model.pretrained={tiny_dir}", "run.threads=1"]
    launch(root, [*common, f"run.output_dir={root / 'whole'}"], root / "shards-whole")
    return root, shard_logs(root / "shards-whole"), common


def test_each_process_trains_a_disjoint_shard_and_gets_the_averaged_gradient(two_process_run):
    root, (rank0, rank1), _ = two_process_run
    assert (rank0["num_processes"], rank0["process_index"], rank1["process_index"]) == (2, 0, 1)
    assert len(rank0["steps"]) == len(rank1["steps"]) == STEPS
    for a, b in zip(rank0["steps"], rank1["steps"]):
        assert list(a["shards"]) == ["0"] and list(b["shards"]) == ["1"]
        assert len(a["shards"]["0"]) == len(b["shards"]["1"]) == 2  # optim.batch_size per shard
        assert not set(a["shards"]["0"]) & set(b["shards"]["1"])
        assert a["grad_norm"] == b["grad_norm"]  # all-reduced: one gradient on both processes
    seen = [sample for step in rank0["steps"] + rank1["steps"] for ids in step["shards"].values() for sample in ids]
    assert len(seen) == len(set(seen)) == 2 * 2 * STEPS  # no sample trained twice in the run


@pytest.mark.skipif(os.geteuid() != 0, reason="telling the processes' files apart needs root (setegid)")
def test_process_0_alone_writes_the_log_and_checkpoints(two_process_run):
    root, _, _ = two_process_run
    whole = root / "whole"
    assert [int(row["step"]) for row in log_rows(whole)] == list(range(STEPS))  # one writer: no duplicate rows
    assert [p.name for p in checkpoints(whole)] == ["step-2", "step-4"]
    # of everything in the run folder, process 1 created only accelerate's RNG state of its own
    assert written_by_others(whole) == [f"checkpoints/step-{s}/random_states_1.pkl" for s in (2, 4)]


def test_a_resume_after_a_stop_equals_the_uninterrupted_run(two_process_run):
    root, _, common = two_process_run
    whole, split = root / "whole", root / "split"
    # What a stop after the step-2 checkpoint leaves (log rows of later steps included), then resume.
    shutil.copytree(whole, split)
    shutil.rmtree(split / "checkpoints" / "step-4")
    shutil.rmtree(split / "pipeline")
    launch(root, [*common, f"run.output_dir={split}"], root / "shards-split")
    assert [s["step"] for s in shard_logs(root / "shards-split")[0]["steps"]] == [2, 3]
    assert log_rows(split) == log_rows(whole)
    assert_close_loras(split / LORA_FILE, whole / LORA_FILE, atol=0.0)  # the same computation, bit for bit


def test_one_process_training_the_same_global_batch_ends_with_the_same_lora(two_process_run, monkeypatch):
    """1 process × 2 micro-batches (gradient accumulation) trains the 2 shards 2 processes train."""
    root, (rank0, rank1), common = two_process_run
    single = root / "single"
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")  # what `--gradient_accumulation_steps 2` sets
    monkeypatch.setenv(SHARD_LOG_ENV, str(root / "shards-single"))
    threads = torch.get_num_threads()
    try:
        train(load_config(None, [*common, f"run.output_dir={single}"]))
    finally:
        torch.set_num_threads(threads)  # run.threads=1 set it for the whole test process
    (one,) = shard_logs(root / "shards-single")
    assert (one["num_processes"], one["gradient_accumulation_steps"]) == (1, 2)
    for both, a, b in zip(one["steps"], rank0["steps"], rank1["steps"], strict=True):
        assert both["shards"] == {**a["shards"], **b["shards"]}  # the same samples, in the same shards
        # the mean of the two shards' gradients, as DDP averages them (a sum would be twice as large)
        assert both["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    whole_rows = log_rows(root / "whole")
    for row_one, row_two in zip(log_rows(single), whole_rows, strict=True):
        assert row_one.keys() == row_two.keys() and (row_one["step"], row_one["lr"]) == (row_two["step"], row_two["lr"])
        for key, value in row_one.items():
            if value and key not in ("step", "lr"):  # losses: means over the same shards
                assert float(value) == pytest.approx(float(row_two[key]), rel=1e-5, abs=1e-7), key
    # The sums run in another order (gloo's all-reduce vs accumulation in place): float rounding only.
    assert_close_loras(single / LORA_FILE, root / "whole" / LORA_FILE, atol=1e-6)
