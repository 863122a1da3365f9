"""Batch proposal over a data folder: resumable, sharded by rank, with a progress bar.

Input: a folder of sample folders, each either a SemAlign-MS sample (sample.json, as written by
mosaic.semalign or train.synthetic; its masks serve the ground-truth segmenter) or a request
without masks or correspondences, `request.json`:

    {"caption": "a mug and a dog", "target": "target.png",
     "references": [{"image": "ref_0.png", "category": "object", "label": "mug"}, ...]}

optionally with per reference "mask" (a PNG of the target's size), "attention" (a .npy of
shape (K, rows, cols) from a generation's attention record) and "meta". A folder's name is its
sample id.

Output: one SemAlign-MS sample folder per input, written atomically, plus `proposal.json` (the
settings; a resumed run must use the same). A finished sample is never redone, so a run can be
interrupted and restarted. Sample i goes to rank i % world_size (RANK / WORLD_SIZE from the
environment by default, as `accelerate launch` and torchrun set them). The run itself (shards,
resume, progress bar) is annotator.resumable, shared with `compose`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from mosaic_studio.annotator.propose import ProposalConfig, ProposalRequest, Proposer
from mosaic_studio.annotator.resumable import Job, run_jobs
from mosaic_studio.mosaic.data.semalign import MASK_THRESHOLD, SAMPLE_JSON, load_sample, sample_file
from mosaic_studio.mosaic.images import MAX_IMAGE_PIXELS, flatten_alpha, load_image

REQUEST_JSON = "request.json"
MANIFEST = "proposal.json"


def input_dirs(data: Path) -> list[Path]:
    """Sample or request folders under `data`, sorted by name (dot-folders skipped)."""
    if not data.is_dir():
        raise FileNotFoundError(f"no data folder at {data}")
    return sorted(
        p
        for p in data.iterdir()
        if p.is_dir() and not p.name.startswith(".") and ((p / SAMPLE_JSON).is_file() or (p / REQUEST_JSON).is_file())
    )


def _rgb(path: Path, what: str) -> np.ndarray:
    return np.array(flatten_alpha(load_image(path, name=what)))  # ValueError if unreadable


def _mask(path: Path, what: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.size[0] * image.size[1] > MAX_IMAGE_PIXELS:  # before decoding a bomb
                raise ValueError(
                    f"{what} file '{path}' is {image.size[0]}x{image.size[1]} pixels, over the "
                    f"limit of {MAX_IMAGE_PIXELS:,}"
                )
            return np.array(image.convert("L")) > MASK_THRESHOLD
    except (OSError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        raise ValueError(f"{what} file '{path}' is not a readable image ({error})") from None


def _request_field(doc: dict, key: str, kind: type, sid: str, where: str = "", default=None):
    value = doc.get(key, default)
    if type(value) is not kind:
        raise ValueError(
            f"sample {sid!r}: {REQUEST_JSON} field '{where}{key}' must be a {kind.__name__}, got {type(value).__name__}"
        )
    return value


def read_request(folder: Path) -> ProposalRequest:
    """A ProposalRequest from a SemAlign-MS sample folder or a request.json folder.

    Every file named must be a regular file inside `folder` (semalign.sample_file); any problem
    is a ValueError naming the sample, which `--on-error skip` catches.
    """
    if (folder / SAMPLE_JSON).is_file():
        return ProposalRequest.from_sample(load_sample(folder))
    sid = folder.name
    try:
        doc = json.loads(sample_file(folder, REQUEST_JSON, sid, REQUEST_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{folder / REQUEST_JSON}: malformed request ({type(error).__name__}: {error})") from error
    if type(doc) is not dict:
        raise ValueError(f"sample {sid!r}: {REQUEST_JSON} must hold a JSON object, got {type(doc).__name__}")
    entries = _request_field(doc, "references", list, sid)
    for k, entry in enumerate(entries):
        if type(entry) is not dict:
            raise ValueError(f"sample {sid!r}: {REQUEST_JSON} field 'references[{k}]' must be an object")
        _request_field(entry, "category", str, sid, f"references[{k}].")
        _request_field(entry, "label", str, sid, f"references[{k}].", "")

    def file(name, field: str) -> Path:
        return sample_file(folder, name, sid, field)  # SampleError (a ValueError) names sid and field

    target = _rgb(file(doc.get("target"), "target"), f"sample {sid!r}: target")
    references = [
        _rgb(file(e.get("image"), f"references[{k}].image"), f"sample {sid!r}: reference {k}")
        for k, e in enumerate(entries)
    ]
    masks = None
    if all("mask" in e for e in entries):
        masks = [
            _mask(file(e["mask"], f"references[{k}].mask"), f"sample {sid!r}: mask {k}") for k, e in enumerate(entries)
        ]
    attention = None
    if "attention" in doc:
        try:
            attention = np.load(file(doc["attention"], "attention"))
        except (OSError, EOFError, ValueError) as error:
            raise ValueError(f"sample {sid!r}: attention file is not a readable .npy ({error})") from None
    return ProposalRequest(
        sid,
        target,
        _request_field(doc, "caption", str, sid, default=""),
        references,
        [e["category"] for e in entries],
        [e.get("label", "") for e in entries],
        masks,
        attention=attention,
        meta=_request_field(doc, "meta", dict, sid, default={}),
    )


def run_proposals(
    data: Path,
    out: Path,
    proposer: Proposer,
    manifest: dict,
    rank: int = 0,
    world_size: int = 1,
    on_error: str = "stop",
    report: Callable[[str], None] = print,
) -> tuple[int, int, int]:
    """Propose every unfinished sample of this rank's shard; (done, skipped, failed) counts."""

    def propose_one(folder: Path):
        return proposer.propose(read_request(folder))

    jobs = [Job(folder.name, functools.partial(propose_one, folder)) for folder in input_dirs(data)]
    counts = run_jobs(
        jobs,
        out,
        manifest_path=out / MANIFEST,
        manifest=manifest,
        token_size=proposer.config.token_size,
        rank=rank,
        world_size=world_size,
        on_error=on_error,
        command="propose",
        verb="proposed",
        report=report,
    )
    return counts.done, counts.present, counts.failed


def manifest_of(config: ProposalConfig, model: str | None, options: dict) -> dict:
    return {"config": asdict(config) | {"extractors": list(config.extractors)}, "model": model, "options": options}
