"""The Annotate tab's report panel and export: point error rate with a Wilson 95% interval per
stratum and overall, Cohen's κ on doubly-judged points, and the accepted samples as JSON with
copies of their images.

The report measures the stratified sample (as the paper does) once one is drawn; until then it
covers every review and says so, rather than showing an empty table."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from mosaic_studio.annotator.records import PointStatus, SampleRecord, SampleStatus, StoreStats
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.annotator.verify import cohens_kappa, error_report, format_stratum, observed_agreement
from mosaic_studio.files import atomic_file, write_file_atomic
from mosaic_studio.studio.store_files import resolve

EXPORT_FORMAT = "mosaic-review-export"
EXPORT_VERSION = 2  # 2: image paths relative to the JSON file, the images copied beside it
EXPORT_JSON = "accepted.json"
_DIR_MODE = 0o755  # as a plain mkdir would leave it (mkdtemp makes 0700 folders)
_FILE_MODE = 0o644
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SLUG_CHARS = 60


def _percent(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def reviewed_samples(stats: StoreStats) -> int:
    """Samples with at least one saved review (a review leaves a sample accepted or rejected)."""
    return stats.samples - stats.by_status.get(SampleStatus.PENDING.value, 0)


def _scope_note(stats: StoreStats, sampled_only: bool, draw_hint: str) -> tuple[bool, list[str]]:
    """(measure the stratified sample only, lines saying what the report covers and why)."""
    if not sampled_only:
        return False, [f"All reviews: {reviewed_samples(stats)} reviewed samples."]
    if stats.in_sample == 0:  # nothing to measure on the sample: an empty table would say nothing
        return False, [
            f"**No stratified sample has been drawn yet**, so this report covers all reviews "
            f"({reviewed_samples(stats)} reviewed samples). Draw the sample to measure the error rate "
            f"on it, as the paper does. {draw_hint}".strip()
        ]
    lines = [f"Stratified sample: {stats.sampled_reviewed} of {stats.in_sample} samples reviewed."]
    if stats.sampled_reviewed == 0:
        lines.append(
            "None of them is reviewed yet (they come first in every queue); untick "
            f"'Stratified sample only' to see all reviews ({reviewed_samples(stats)} reviewed samples)."
        )
    return True, lines


def report_markdown(store: ReviewStore, sampled_only: bool = True, *, draw_hint: str = "") -> str:
    """What the report covers, a Markdown table of the error rates and the agreement line.
    draw_hint: how to draw the stratified sample, said while none is drawn."""
    stats = store.stats()
    sampled, notes = _scope_note(stats, sampled_only, draw_hint)
    report = error_report(store.verdict_rows(sampled_only=sampled))
    scope = "stratified sample" if sampled else "all reviewed samples"
    lines = [
        *notes,
        "",
        f"**Point error rate** = wrong / judged (unsure left out), Wilson 95% interval — {scope}",
        "",
        "| subjects | stratum | samples | judged | wrong | unsure | error rate | 95% interval |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [(str(stratum[0]), format_stratum(stratum), rate) for stratum, rate in report.strata.items()]
    for subjects, label, rate in [*rows, ("", "**overall**", report.overall)]:
        lines.append(
            f"| {subjects} | {label} | {rate.samples} | {rate.judged} | {rate.wrong} | {rate.unsure} | "
            f"{_percent(rate.rate)} | [{_percent(rate.low)}, {_percent(rate.high)}] |"
        )
    lines += ["", _agreement_line(store.verdict_pairs(sampled_only=sampled))]
    lines += [
        "",
        f"Store: {stats.samples} samples, {stats.in_sample} in the stratified sample "
        f"({stats.sampled_reviewed} reviewed), {stats.reviews} reviews, {stats.doubly_reviewed} doubly reviewed.",
    ]
    return "\n".join(lines)


def _agreement_line(pairs: list[tuple[str, str]]) -> str:
    if not pairs:
        return "**Agreement**: no point judged by two annotators yet (κ needs doubly-reviewed samples)"
    kappa = cohens_kappa(pairs)
    shown = "undefined (one label throughout)" if math.isnan(kappa) else f"{kappa:.3f}"
    return (
        f"**Agreement** on {len(pairs)} doubly-judged points: Cohen's κ = {shown}, "
        f"observed agreement {_percent(observed_agreement(pairs))}"
    )


# --- export -----------------------------------------------------------------------------------


def _folder_name(number: int, sample_id: str) -> str:
    """A sample's folder in the export: numbered (so unique whatever its id), then its id made
    safe as one file name (an id may hold any character, '/' and '..' included)."""
    slug = _UNSAFE.sub("_", sample_id).strip("._")[:_SLUG_CHARS] or "sample"
    return f"{number:03d}-{slug}"


def _copy_image(store: ReviewStore, stored: str, destination: Path, what: str) -> None:
    source = resolve(store.path, stored)
    if not source.is_file():
        raise ValueError(f"{what}: its image {source.name} is missing from the store's folder; nothing was exported")
    shutil.copyfile(source, destination)
    os.chmod(destination, _FILE_MODE)


def _export_sample(store: ReviewStore, sample: SampleRecord, folder: Path, root: Path) -> dict:
    """Copy the sample's images into `folder` (inside the export `root`); its JSON entry, with
    paths relative to `root`."""
    folder.mkdir()
    live = [p for p in sample.points if p.status != PointStatus.DELETED]
    target = folder / f"target{Path(sample.target_path).suffix.lower() or '.png'}"
    _copy_image(store, sample.target_path, target, f"sample {sample.sample_id!r} target")
    references = []
    for ref in sample.references:
        image = folder / f"ref_{ref.index}{Path(ref.image_path).suffix.lower() or '.png'}"
        _copy_image(store, ref.image_path, image, f"sample {sample.sample_id!r} reference {ref.index + 1}")
        references.append(
            {
                "image": image.relative_to(root).as_posix(),
                "category": ref.category,
                "correspondences": [[*p.ref_xy, *p.target_xy] for p in live if p.ref_index == ref.index],
            }
        )
    return {
        "sample_id": sample.sample_id,
        "caption": sample.caption,
        "version": sample.version,
        "target": target.relative_to(root).as_posix(),
        "references": references,
    }


def export_accepted(store: ReviewStore, out_dir: str | Path) -> tuple[Path, int]:
    """Write the new folder `out_dir`: every accepted sample with its live points in
    `out_dir`/accepted.json and a copy of its images in a folder per sample; returns (the JSON's
    path, count).

    Per reference, correspondences are [u_x, u_y, v_x, v_y] rows (pixels), the layout of the
    SemAlign-MS sample format. Image paths are relative to the JSON file, so the folder works
    wherever it is moved or unpacked, away from the store. Everything is written into a staging
    folder beside `out_dir` and renamed into place at the end: a failure (a missing image, a full
    disk) leaves no `out_dir` at all, never a half-written one. An existing `out_dir` is refused.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() or out_dir.is_symlink():
        raise ValueError(f"{out_dir.name} exists already; an export is written into a new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        records = (store.get_sample(sample_id) for sample_id, _ in store.sample_strata())
        accepted = [record for record in records if record.status == SampleStatus.ACCEPTED]
        samples = [
            _export_sample(store, sample, staging / _folder_name(n, sample.sample_id), staging)
            for n, sample in enumerate(accepted, start=1)
        ]
        payload = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_VERSION,
            "paths": "relative to this file",
            "store": store.path.name,  # its name only: where the server keeps it is no part of the data
            "samples": samples,
        }
        write_file_atomic(
            staging / EXPORT_JSON, lambda handle: json.dump(payload, handle, indent=1, ensure_ascii=False)
        )
        os.chmod(staging, _DIR_MODE)
        os.rename(staging, out_dir)  # fails on a non-empty out_dir made meanwhile: never a merge
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir / EXPORT_JSON, len(samples)


def archive(folder: str | Path) -> Path:
    """`folder` as `folder`.zip beside it (its files under the folder's name), written under a
    temporary name and renamed: a download never gets a truncated archive."""
    folder = Path(folder)
    path = folder.parent / f"{folder.name}.zip"
    with atomic_file(path, "wb") as handle, zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zipped.write(file, Path(folder.name) / file.relative_to(folder))
    return path
