"""Batch composition over a folder of single-subject samples: resumable, sharded, with a progress bar.

Input: a folder of SemAlign-MS sample folders (a training export, `propose` output, the
synthetic world with --max-subjects 1, or the authors' Subjects200K layout converted by
`convert_subjects200k`). Every source is checked first from its sample.json and mask alone
(`source_problem`); one with several references, no mask, an empty mask or no correspondence
points is reported by name and never used.

Output: composed sample `composed-<seed>-<index>` for index 0..num-1, each a pure function of
(seed, index, the usable sources, the settings) (annotator.compose), plus `compose.json`
pinning the settings and the source list: a resumed run must use the same (a larger --num
extends a run). The run (shards by rank, resume, progress bar) is annotator.resumable, as for
`propose`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mosaic_studio.annotator.compose import (
    COMPOSE_VERSION,
    IDENTITY_META,
    ComposeConfig,
    choose_group,
    compose_sample,
)
from mosaic_studio.annotator.resumable import Job, RunCounts, run_jobs
from mosaic_studio.mosaic.data.semalign import (
    CATEGORIES,
    MASK_THRESHOLD,
    SAMPLE_JSON,
    Sample,
    SampleError,
    list_sample_dirs,
    load_sample,
    sample_file,
    save_sample,
)
from mosaic_studio.mosaic.images import MAX_IMAGE_PIXELS

MANIFEST = "compose.json"
_COMPOSE_SALT = 0xC0305E  # separates composition streams from every other use of the seed
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Source:
    """A usable single-subject sample."""

    name: str
    folder: Path
    category: str
    identity: str  # the subject it shows: meta["identity"], else its own name


def composed_id(seed: int, index: int) -> str:
    return f"composed-{seed}-{index:07d}"


# --- checking the sources ---------------------------------------------------------------------


def _mask_problem(folder: Path, entry: dict) -> str | None:
    name = entry.get("mask")
    if not name:
        return "has no mask"
    try:
        path = sample_file(folder, name, folder.name, "references[0].mask")
    except SampleError as error:
        return f"has no mask ({error})"
    try:
        with Image.open(path) as image:
            if image.size[0] * image.size[1] > MAX_IMAGE_PIXELS:
                return f"its mask is {image.size[0]}x{image.size[1]} pixels, over the limit"
            if not (np.array(image.convert("L")) > MASK_THRESHOLD).any():
                return "its mask is empty (no subject pixel)"
    except _IMAGE_ERRORS as error:
        return f"its mask {name!r} is not a readable image ({type(error).__name__})"
    return None


def source_problem(folder: Path) -> tuple[Source | None, str | None]:
    """(the source, None) for a usable one, (None, why not) otherwise.

    Reads sample.json and the mask only, so every rank can check every source quickly; the
    rest of the sample is validated when a composition loads it.
    """
    try:
        doc = json.loads(sample_file(folder, SAMPLE_JSON, folder.name, SAMPLE_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, SampleError) as error:
        return None, f"unreadable {SAMPLE_JSON} ({type(error).__name__}: {error})"
    references = doc.get("references") if type(doc) is dict else None
    if type(references) is not list or len(references) != 1:
        count = len(references) if type(references) is list else "no"
        return None, f"has {count} references; compose takes single-subject samples"
    entry = references[0]
    if type(entry) is not dict:
        return None, "its reference entry is not an object"
    if entry.get("category") not in CATEGORIES:
        return None, f"category {entry.get('category')!r} is not one of {CATEGORIES}"
    points = entry.get("correspondences")
    if type(points) is not list or not points:
        return None, "has no correspondence points"
    problem = _mask_problem(folder, entry)
    if problem:
        return None, problem
    meta = doc.get("meta") if type(doc.get("meta")) is dict else {}
    identity = meta.get(IDENTITY_META) if type(meta.get(IDENTITY_META)) is str else folder.name
    return Source(folder.name, folder, entry["category"], identity), None


def scan_sources(data: Path) -> tuple[list[Source], list[str]]:
    """The usable sources under `data`, sorted by name, and 'name: why' for every other one."""
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"no data folder at {data}")
    sources, problems = [], []
    for folder in list_sample_dirs(data):
        source, problem = source_problem(folder)
        if problem:
            problems.append(f"{folder.name}: {problem}")
        else:
            sources.append(source)
    return sources, problems


def convert_subjects200k(
    root: Path, media: Path, rows: Iterable[dict] | None = None, token_size: int = 16, **read_options
) -> list[str]:
    """The authors' Subjects200K layout as sample folders under `media` (existing ones kept);
    returns the pairs skipped for missing annotation files, by name. read_options: panel_size,
    padding (mosaic.data.subjects200k.read_pair). Deterministic: every rank may run it."""
    from mosaic_studio.mosaic.data.subjects200k import Subjects200KReader

    media = Path(media)
    reader = Subjects200KReader(root, rows, missing="skip", **read_options)
    for sample in reader:
        if not (media / sample.sample_id / SAMPLE_JSON).is_file():
            try:
                save_sample(sample, media / sample.sample_id, token_size)
            except FileExistsError:  # another rank wrote the same (identical) folder first
                pass
    return list(reader.skipped)


# --- the run ----------------------------------------------------------------------------------


def _sources_digest(sources: list[Source]) -> str:
    listing = "\n".join(f"{source.name}\t{source.category}\t{source.identity}" for source in sources)
    return hashlib.sha256(listing.encode()).hexdigest()


def manifest_of(config: ComposeConfig, seed: int, sources: list[Source]) -> dict:
    """What a resumed run must share: settings, seed and the usable sources (not --num)."""
    return {
        "compose_version": COMPOSE_VERSION,
        "config": json.loads(json.dumps(asdict(config))),
        "seed": seed,
        "sources": {"count": len(sources), "sha256": _sources_digest(sources)},
    }


def _load_source(source: Source, token_size: int) -> Sample:
    try:
        return load_sample(source.folder, token_size)
    except SampleError as error:  # named by the source, so the skipped composition says which
        raise ValueError(f"source {source.name!r} is broken: {error}") from error


def make_composed(index: int, sources: list[Source], seed: int, config: ComposeConfig) -> Sample:
    """Composed sample `index` of the run (seed, sources, config): a pure function of them."""
    rng = np.random.default_rng([_COMPOSE_SALT, seed, index])
    by_name = {source.name: source for source in sources}
    by_category: dict[str, list[str]] = {}
    for source in sources:
        by_category.setdefault(source.category, []).append(source.name)
    group = choose_group(by_category, rng, config, {source.name: source.identity for source in sources})
    loaded = [(name, _load_source(by_name[name], config.token_size)) for name in group]
    return compose_sample(composed_id(seed, index), loaded, config, rng, {"seed": seed, "index": index})


def run_compose(
    data: Path,
    out: Path,
    num: int,
    *,
    seed: int = 0,
    config: ComposeConfig | None = None,
    rank: int = 0,
    world_size: int = 1,
    on_error: str = "stop",
    report: Callable[[str], None] = print,
) -> tuple[RunCounts, list[str]]:
    """Compose every unfinished sample of this rank's shard; (counts, sources left out)."""
    config = config or ComposeConfig()
    if num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    sources, problems = scan_sources(data)
    for problem in problems:
        report(f"skipped source {problem}")
    if len(sources) < config.min_subjects:
        raise ValueError(
            f"{data} has {len(sources)} usable single-subject samples; composing needs at least "
            f"{config.min_subjects} (min_subjects)"
        )
    jobs = [
        Job(composed_id(seed, index), functools.partial(make_composed, index, sources, seed, config))
        for index in range(num)
    ]
    counts = run_jobs(
        jobs,
        Path(out),
        manifest_path=Path(out) / MANIFEST,
        manifest=manifest_of(config, seed, sources),
        token_size=config.token_size,
        rank=rank,
        world_size=world_size,
        on_error=on_error,
        command="compose",
        verb="composed",
        report=report,
    )
    return counts, problems
