"""Imports into the review store: the project's format, the synthetic world, Subjects200K.

Every imported sample lives on disk as a SemAlign-MS sample folder (mosaic.semalign); the store
keeps its caption, categories, image paths (absolute, so the store can be opened from anywhere
on this machine; relative to the store's folder for samples kept inside it, see
`record_from_sample`) and points. Export finds the masks and meta again through the target path.

  semalign     a folder of SemAlign-MS sample folders (e.g. `python -m mosaic_studio.annotator propose`
               output: per-point source and confidence come from meta["point_info"])
  synthetic    the output of `python -m mosaic_studio.world.synthetic` (exact correspondences)
  subjects200k the authors' SemAlign-MS-Subjects200K layout, converted into sample folders
               under a media folder first

An import is checked completely before the store is written: a bad sample (unreadable image,
mask of the wrong size, a violation of Eq. 2, an id already in the store) raises ValueError
naming it, and the store stays unchanged.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from mosaic_studio.annotator.propose import POINT_INFO
from mosaic_studio.annotator.records import PointRecord, ReferenceRecord, SampleRecord, check_new_sample
from mosaic_studio.annotator.store import SYSTEM_ACTOR, ReviewStore
from mosaic_studio.mosaic.data.semalign import (
    DEFAULT_TOKEN_SIZE,
    REFERENCE_FILE,
    TARGET_FILE,
    Sample,
    list_sample_dirs,
    load_sample,
    save_sample,
)

SYNTHETIC_MANIFEST = "world.json"  # written by train.synthetic beside its samples
SOURCES = {
    "semalign": "imported",
    "synthetic": "synthetic-exact",
    "subjects200k": "dift+geoaware",
}  # point source when the sample does not say
FORMATS = tuple(SOURCES)


def record_from_sample(sample: Sample, folder: Path, default_source: str, root: Path | None = None) -> SampleRecord:
    """The store's record of a sample saved in `folder` (its points as proposals).

    root: record the paths relative to this folder, the store's own (ValueError when `folder`
    is not inside it): for samples kept beside the store, such as the studio's "send to
    Annotate" items, so the store finds them from any current directory and wherever the
    store's folder is moved. Without it, the paths are absolute.
    """
    folder = folder.resolve()
    if root is not None:
        folder = folder.relative_to(Path(root).resolve())
    info = sample.meta.get(POINT_INFO)
    if info is not None and (
        len(info) != len(sample.references)
        or any(
            len(entry["source"]) != len(ref.ref_points) or len(entry["confidence"]) != len(ref.ref_points)
            for entry, ref in zip(info, sample.references)
        )
    ):
        raise ValueError(
            f"sample {sample.sample_id!r}: meta[{POINT_INFO!r}] does not match its "
            "correspondences (one source and confidence per point)"
        )
    points = []
    for k, ref in enumerate(sample.references):
        for j, (u, v) in enumerate(zip(ref.ref_points.tolist(), ref.target_points.tolist())):
            source = info[k]["source"][j] if info else default_source
            confidence = info[k]["confidence"][j] if info else None
            points.append(PointRecord(k, j, tuple(u), tuple(v), source, confidence))
    references = tuple(
        ReferenceRecord(k, str(folder / REFERENCE_FILE.format(k)), ref.category)
        for k, ref in enumerate(sample.references)
    )
    return check_new_sample(
        SampleRecord(sample.sample_id, sample.caption, str(folder / TARGET_FILE), references, tuple(points))
    )


def _existing_ids(store: ReviewStore) -> set[str]:
    return {sample_id for sample_id, _ in store.sample_strata()}


def _plan(records: list[SampleRecord], existing: set[str], skip_existing: bool) -> list[SampleRecord]:
    """The records to add; ValueError for an id twice in the import or already in the store."""
    seen, todo = set(), []
    for record in records:
        if record.sample_id in seen:
            raise ValueError(f"sample {record.sample_id!r} appears twice in the import")
        seen.add(record.sample_id)
        if record.sample_id in existing:
            if skip_existing:
                continue
            raise ValueError(
                f"sample {record.sample_id!r} is already in the store (--skip-existing imports only the new ones)"
            )
        todo.append(record)
    return todo


def _add_all(store: ReviewStore, records: list[SampleRecord], actor: str) -> int:
    for record in records:
        store.add_sample(record, actor=actor)
    return len(records)


def import_folders(
    store: ReviewStore,
    data: Path,
    source: str,
    skip_existing: bool = False,
    token_size: int = DEFAULT_TOKEN_SIZE,
    actor: str = SYSTEM_ACTOR,
) -> tuple[int, int]:
    """Register every sample folder under `data`; (added, skipped as already present)."""
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"no data folder at {data}")
    folders = list_sample_dirs(data)
    from tqdm import tqdm

    records = [
        record_from_sample(load_sample(folder, token_size), folder, source)
        for folder in tqdm(folders, desc="import", unit="sample")
    ]
    todo = _plan(records, _existing_ids(store), skip_existing)
    return _add_all(store, todo, actor), len(records) - len(todo)


def import_synthetic(
    store: ReviewStore,
    data: Path,
    skip_existing: bool = False,
    token_size: int = DEFAULT_TOKEN_SIZE,
    actor: str = SYSTEM_ACTOR,
) -> tuple[int, int]:
    """`python -m mosaic_studio.world.synthetic` output: SemAlign-MS folders beside a world.json manifest."""
    if not (Path(data) / SYNTHETIC_MANIFEST).is_file():
        raise ValueError(f"{data} has no {SYNTHETIC_MANIFEST}: not a train.synthetic output folder")
    return import_folders(store, data, SOURCES["synthetic"], skip_existing, token_size, actor)


def import_subjects200k(
    store: ReviewStore,
    root: Path,
    media: Path,
    rows: Iterable[dict] | None = None,
    skip_existing: bool = False,
    quality_filter: bool = True,
    token_size: int = DEFAULT_TOKEN_SIZE,
    actor: str = SYSTEM_ACTOR,
    **read_options,
) -> tuple[int, int]:
    """The authors' layout: each pair becomes a sample folder under `media`, then a record.

    rows: the parquet rows by default (needs pyarrow), or any iterable of row dicts.
    read_options: panel_size, padding (mosaic.semalign_subjects200k.read_pair).
    """
    from mosaic_studio.mosaic.data.subjects200k import Subjects200KReader

    media = Path(media)
    existing = _existing_ids(store)
    written: list[Path] = []
    present = 0
    try:
        records = []
        for sample in Subjects200KReader(root, rows, quality_filter, **read_options):
            folder = media / sample.sample_id
            if sample.sample_id in existing and skip_existing:
                present += 1
                continue
            if not folder.exists():
                save_sample(sample, folder, token_size)
                written.append(folder)
            records.append(record_from_sample(sample, folder, SOURCES["subjects200k"]))
        todo = _plan(records, existing, skip_existing)
    except BaseException:
        for folder in written:  # nothing of a failed import stays behind
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return _add_all(store, todo, actor), present
