"""Resumable, sharded runs that write one SemAlign-MS sample folder per job, with a progress bar.

Shared by `propose` (annotator.propose_run) and `compose` (annotator.compose_run):
  - job i goes to rank i % world_size (RANK / WORLD_SIZE from the environment by default, as
    `accelerate launch` and torchrun set them), so ranks never write the same folder;
  - a job whose sample folder is finished (its sample.json exists) is never redone, so a run
    can be killed and restarted; each rank removes only its own unfinished writes;
  - the output folder's settings file pins the settings, so a resumed run cannot splice two
    configurations into one dataset (semalign.check_manifest).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mosaic_studio.mosaic.data.semalign import PARTIAL_PREFIX, SAMPLE_JSON, Sample, check_manifest, save_sample

ON_ERROR = ("stop", "skip")


@dataclass(frozen=True)
class Job:
    """One output sample: its folder name (the sample id) and how to make it."""

    name: str
    make: Callable[[], Sample]


@dataclass(frozen=True)
class RunCounts:
    done: int  # written by this call
    present: int  # finished by an earlier call
    failed: int  # skipped with on_error="skip"


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """This rank's share: every world_size-th item starting at `rank`."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world size {world_size}")
    return list(items[rank::world_size])


def remove_own_partials(out: Path, names: list[str]) -> None:
    """Leftovers of this rank's interrupted writes (never another rank's work in progress)."""
    for name in names:
        for stale in out.glob(f"{PARTIAL_PREFIX}{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)


def run_jobs(
    jobs: Sequence[Job],
    out: Path,
    *,
    manifest_path: Path,
    manifest: dict,
    token_size: int,
    rank: int = 0,
    world_size: int = 1,
    on_error: str = "stop",
    command: str,
    verb: str,
    report: Callable[[str], None] = print,
) -> RunCounts:
    """Make and save every unfinished job of this rank's shard of `jobs`.

    command / verb name the work in the progress bar and the summary ("propose", "proposed").
    A job raising ValueError or FileNotFoundError stops the run (on_error="stop") or is skipped
    with its reason printed (on_error="skip"); nothing half-written stays in `out`.
    """
    from tqdm import tqdm

    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    mine = shard(jobs, rank, world_size)
    out.mkdir(parents=True, exist_ok=True)
    check_manifest(manifest_path, manifest)
    remove_own_partials(out, [job.name for job in mine])
    todo = [job for job in mine if not (out / job.name / SAMPLE_JSON).is_file()]
    report(f"rank {rank}/{world_size}: {len(mine)} samples, {len(mine) - len(todo)} already {verb}, {len(todo)} to do")
    done = failed = 0
    for job in tqdm(todo, desc=f"{command} [{rank}]", unit="sample", position=rank):
        try:
            save_sample(job.make(), out / job.name, token_size=token_size)
            done += 1
        except (ValueError, FileNotFoundError) as error:
            if on_error == "stop":
                raise
            failed += 1
            tqdm.write(f"skipped {job.name}: {error}")
    return RunCounts(done, len(mine) - len(todo), failed)
