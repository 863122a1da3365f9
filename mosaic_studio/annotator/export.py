"""Exports from the review store: training data, and Label Studio JSON for other tools.

Training export: every accepted sample (as reviewed: moved points where they were moved,
deleted ones gone, added ones in) becomes a SemAlign-MS sample folder, the format the trainer
reads. Images, masks, categories and meta come from the sample folder the store points at (see
annotator.imports); points, their source and confidence from the store. meta["review"] records
the store's status and version. Every sample is rebuilt and validated before anything is
written, so an annotator's edit that breaks a rule (a point outside its mask, two references
on one target token: Eq. 2) stops the export with an error naming the sample and the rule.

Label Studio export: one task per sample with the target and reference images, each
correspondence as two keypoints (target and reference) joined by a relation; reviewed samples
as annotations, pending ones as predictions. `label_studio_config` gives the labelling XML.
Image values are the store's local paths: serve them to Label Studio (local-files storage, or
rewrite the prefix to a URL) before importing the tasks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image

from mosaic_studio.annotator.propose import POINT_INFO
from mosaic_studio.annotator.records import PointStatus, SampleRecord, SampleStatus
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.files import replace_dir, write_file_atomic
from mosaic_studio.mosaic.data.semalign import (
    DEFAULT_TOKEN_SIZE,
    EXPORT_MANIFEST,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_REFERENCES,
    SAMPLE_JSON,
    Reference,
    Sample,
    SampleError,
    load_sample,
    save_sample,
    validate,
)

REVIEW_META = "review"  # meta key: store status and version of an exported sample
KEYPOINT_WIDTH = 0.6  # Label Studio keypoint size, percent of the image width
# Beside a training export folder OUT: .OUT.staging-* is an export being written, .OUT.old-* the
# previous export during the swap. Dot-folders, so dataset listings skip them.
_STAGING, _ASIDE = ".staging-", ".old-"
_DIR_MODE = 0o755  # as a plain mkdir would leave it (mkdtemp makes 0700 folders)


def _records(store: ReviewStore, statuses: Sequence[str]) -> list[SampleRecord]:
    """The samples of these statuses, their paths resolved against the store's folder (the
    studio's items are stored relative to it), never against the current directory."""
    wanted = {SampleStatus(status) for status in statuses}  # ValueError for an unknown status
    return [
        _resolved(store, record)
        for record in (store.get_sample(sid) for sid, _ in store.sample_strata())
        if record.status in wanted
    ]


def _resolved(store: ReviewStore, record: SampleRecord) -> SampleRecord:
    references = tuple(replace(ref, image_path=str(store.resolve_path(ref.image_path))) for ref in record.references)
    return replace(record, target_path=str(store.resolve_path(record.target_path)), references=references)


def _live_points(record: SampleRecord, ref_index: int):
    return [p for p in record.points if p.ref_index == ref_index and p.status != PointStatus.DELETED]


def reviewed_sample(record: SampleRecord, token_size: int = DEFAULT_TOKEN_SIZE) -> Sample:
    """The sample as reviewed: its folder's images, masks and meta with the store's points."""
    folder = Path(record.target_path).parent
    if not (folder / SAMPLE_JSON).is_file():
        raise ValueError(
            f"sample {record.sample_id!r}: {folder} is not a SemAlign-MS sample folder; "
            "export needs the folder the sample was imported from"
        )
    source = load_sample(folder, token_size, check=False)
    if len(source.references) != len(record.references):
        raise ValueError(
            f"sample {record.sample_id!r}: the store has {len(record.references)} "
            f"references, its folder {len(source.references)}"
        )
    references, info = [], []
    for k, ref in enumerate(source.references):
        points = _live_points(record, k)
        references.append(
            Reference(
                ref.image, ref.mask, [p.ref_xy for p in points], [p.target_xy for p in points], ref.category, ref.label
            )
        )
        info.append({"source": [p.source for p in points], "confidence": [p.confidence for p in points]})
    meta = {**source.meta, POINT_INFO: info, REVIEW_META: {"status": record.status.value, "version": record.version}}
    sample = Sample(record.sample_id, source.target, source.caption, references, source.masks_exclusive, meta)
    return validate(sample, token_size)


def _check_destination(out: Path, records: Sequence[SampleRecord]) -> None:
    """An export replaces its whole folder, so refuse any folder but an earlier export (or an
    empty one), and any folder that holds the samples the store reads its images from."""
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise ValueError(f"{out} exists and is not a folder; choose a new export folder")
        if any(out.iterdir()) and not (out / EXPORT_MANIFEST).is_file():
            raise ValueError(
                f"{out} is not an export folder (it has no {EXPORT_MANIFEST}) and is not empty; "
                "an export replaces its whole folder, so choose a new or empty one"
            )
    resolved = out.resolve()
    for record in records:
        if Path(record.target_path).resolve().is_relative_to(resolved):
            raise ValueError(
                f"{out} holds sample {record.sample_id!r} that the store reads its images from; "
                "export into another folder"
            )


def _remove_leftovers(out: Path) -> None:
    """Staging and set-aside folders of earlier exports to `out` that were killed midway."""
    for pattern in (f".{out.name}{_STAGING}*", f".{out.name}{_ASIDE}*"):
        for stale in out.parent.glob(pattern):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)


def export_training(
    store: ReviewStore,
    out: Path,
    statuses: Sequence[str] = ("accepted",),
    token_size: int = DEFAULT_TOKEN_SIZE,
    skip_invalid: bool = False,
) -> tuple[int, list[str]]:
    """Write the chosen samples as SemAlign-MS folders under `out`, replacing any earlier export.

    Returns (written, problems). Without `skip_invalid` any problem raises ValueError before
    anything is written; with it, broken samples are left out and listed in `problems`.

    `out` ends up holding exactly the chosen samples (a sample rejected since the last export
    disappears) and EXPORT_MANIFEST listing them. Everything is written into a staging folder
    beside `out` whose manifest says "complete": false until its last sample is written; only
    then is the staging folder swapped in for `out`. A kill at any point leaves the previous
    export as it was; readers (`semalign.list_sample_dirs`) refuse a folder whose manifest is
    unfinished or does not match its samples.
    """
    from tqdm import tqdm

    wanted = {SampleStatus(status) for status in statuses}  # ValueError for an unknown status
    out = Path(out)
    everything = _records(store, [status.value for status in SampleStatus])
    records = [record for record in everything if record.status in wanted]
    problems, good = [], []
    for record in records:
        try:
            reviewed_sample(record, token_size)
            good.append(record)
        except (SampleError, ValueError, OSError) as error:
            problems.append(str(error))
    if problems and not skip_invalid:
        raise ValueError(
            f"{len(problems)} of {len(records)} samples cannot be exported "
            f"(nothing written): {problems[0]}" + (" …" if len(problems) > 1 else "")
        )
    _check_destination(out, everything)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(out)
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "complete": False,
        "statuses": sorted(status.value for status in wanted),
        "token_size": token_size,
        "samples": sorted(record.sample_id for record in good),
        "left_out": problems,
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{_STAGING}", dir=out.parent))
    try:
        write_file_atomic(staging / EXPORT_MANIFEST, lambda handle: json.dump(manifest, handle, indent=1))
        for record in tqdm(good, desc="export", unit="sample"):
            save_sample(reviewed_sample(record, token_size), staging / record.sample_id, token_size)
        manifest["complete"] = True  # written last: the staging folder now is a whole export
        write_file_atomic(staging / EXPORT_MANIFEST, lambda handle: json.dump(manifest, handle, indent=1))
        os.chmod(staging, _DIR_MODE)  # mkdtemp makes 0700 folders
        replace_dir(staging, out, aside_prefix=f".{out.name}{_ASIDE}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return len(good), problems


# --- Label Studio -----------------------------------------------------------------------------


def label_studio_config(num_references: int = MAX_REFERENCES) -> str:
    """Labelling interface XML for the exported tasks: target + references, keypoints, relations."""
    labels = "".join(f'<Label value="ref_{k}"/>' for k in range(num_references))
    views = [
        '<Image name="target" value="$target"/>',
        f'<KeyPointLabels name="kp_target" toName="target">{labels}</KeyPointLabels>',
    ]
    for k in range(num_references):
        views += [
            f'<Image name="ref_{k}" value="$ref_{k}"/>',
            f'<KeyPointLabels name="kp_ref_{k}" toName="ref_{k}"><Label value="ref_{k}"/></KeyPointLabels>',
        ]
    return '<View>\n  <Text name="caption" value="$caption"/>\n  <Relations/>\n  ' + "\n  ".join(views) + "\n</View>\n"


def _keypoint(result_id: str, image: str, size: tuple[int, int], xy, ref_index: int) -> dict:
    width, height = size
    return {
        "id": result_id,
        "type": "keypointlabels",
        "from_name": f"kp_{image}",
        "to_name": image,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": 100.0 * xy[0] / width,
            "y": 100.0 * xy[1] / height,
            "width": KEYPOINT_WIDTH,
            "keypointlabels": [f"ref_{ref_index}"],
        },
    }


def _image_size(path: str) -> tuple[int, int]:
    with Image.open(path) as image:  # reads the header only
        return image.size


def label_studio_task(record: SampleRecord, task_id: int) -> dict:
    """One Label Studio task: images by path, each correspondence as two keypoints + a relation."""
    target_size = _image_size(record.target_path)
    result = []
    for ref in record.references:
        ref_size = _image_size(ref.image_path)
        for point in _live_points(record, ref.index):
            key = f"r{ref.index}p{point.point_index}"
            result += [
                _keypoint(f"{key}t", "target", target_size, point.target_xy, ref.index),
                _keypoint(f"{key}u", f"ref_{ref.index}", ref_size, point.ref_xy, ref.index),
                {"type": "relation", "from_id": f"{key}u", "to_id": f"{key}t", "direction": "right"},
            ]
    reviewed = record.status != SampleStatus.PENDING
    return {
        "id": task_id,
        "data": {
            "target": record.target_path,
            "caption": record.caption,
            **{f"ref_{r.index}": r.image_path for r in record.references},
        },
        "meta": {
            "sample_id": record.sample_id,
            "status": record.status.value,
            "version": record.version,
            "categories": list(record.categories),
        },
        "annotations" if reviewed else "predictions": [{"result": result}],
    }


def export_label_studio(store: ReviewStore, out: Path, statuses: Sequence[str] = ("accepted",)) -> int:
    """Write the tasks JSON to `out` and the labelling config beside it (out.xml)."""
    records = _records(store, statuses)
    tasks = [label_studio_task(record, n + 1) for n, record in enumerate(records)]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    most = max((len(r.references) for r in records), default=1)
    config = label_studio_config(min(most, MAX_REFERENCES))
    # Each file is replaced atomically: a kill or a full disk leaves the previous one intact.
    write_file_atomic(out, lambda handle: json.dump(tasks, handle, indent=1, ensure_ascii=False))
    write_file_atomic(out.with_suffix(".xml"), lambda handle: handle.write(config))
    return len(tasks)
