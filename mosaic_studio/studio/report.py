"""The Annotate tab's report panel and export: point error rate with a Wilson 95% interval per
stratum and overall, Cohen's κ on doubly-judged points, and the accepted samples as JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

from mosaic_studio.annotator.records import PointStatus, SampleStatus
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.annotator.verify import cohens_kappa, error_report, format_stratum, observed_agreement
from mosaic_studio.studio.store_files import resolve

EXPORT_FORMAT = "mosaic-review-export"
EXPORT_VERSION = 1


def _percent(value: float) -> str:
    return "—" if value is None or math.isnan(value) else f"{100 * value:.1f}%"


def report_markdown(store: ReviewStore, sampled_only: bool = True) -> str:
    """A Markdown table of the error rates and the agreement line."""
    report = error_report(store.verdict_rows(sampled_only=sampled_only))
    scope = "stratified sample" if sampled_only else "all reviewed samples"
    lines = [
        f"**Point error rate** = wrong / judged (unsure left out), Wilson 95% interval — {scope}",
        "",
        "| stratum | samples | judged | wrong | unsure | error rate | 95% interval |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [(format_stratum(stratum), rate) for stratum, rate in report.strata.items()] + [
        ("**overall**", report.overall)
    ]
    for label, rate in rows:
        lines.append(
            f"| {label} | {rate.samples} | {rate.judged} | {rate.wrong} | {rate.unsure} | "
            f"{_percent(rate.rate)} | [{_percent(rate.low)}, {_percent(rate.high)}] |"
        )
    pairs = store.verdict_pairs(sampled_only=sampled_only)
    if pairs:
        kappa = cohens_kappa(pairs)
        shown = "undefined (one label throughout)" if math.isnan(kappa) else f"{kappa:.3f}"
        lines += [
            "",
            f"**Agreement** on {len(pairs)} doubly-judged points: Cohen's κ = {shown}, "
            f"observed agreement {_percent(observed_agreement(pairs))}",
        ]
    else:
        lines += ["", "**Agreement**: no point judged by two annotators yet (κ needs doubly-reviewed samples)"]
    stats = store.stats()
    lines += [
        "",
        f"Store: {stats.samples} samples, {stats.in_sample} in the stratified sample "
        f"({stats.sampled_reviewed} reviewed), {stats.reviews} reviews, {stats.doubly_reviewed} doubly reviewed.",
    ]
    return "\n".join(lines)


def export_accepted(store: ReviewStore, out_path: str | Path) -> tuple[Path, int]:
    """Write every accepted sample with its live points as JSON; returns (path, count).

    Per reference, correspondences are [u_x, u_y, v_x, v_y] rows (pixels), the layout of the
    SemAlign-MS sample format; image paths are absolute.
    """
    samples = []
    for sample_id, _ in store.sample_strata():
        sample = store.get_sample(sample_id)
        if sample.status != SampleStatus.ACCEPTED:
            continue
        live = [p for p in sample.points if p.status != PointStatus.DELETED]
        samples.append(
            {
                "sample_id": sample.sample_id,
                "caption": sample.caption,
                "version": sample.version,
                "target": str(resolve(store.path, sample.target_path)),
                "references": [
                    {
                        "image": str(resolve(store.path, ref.image_path)),
                        "category": ref.category,
                        "correspondences": [[*p.ref_xy, *p.target_xy] for p in live if p.ref_index == ref.index],
                    }
                    for ref in sample.references
                ],
            }
        )
    out_path = Path(out_path)
    payload = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "store": str(store.path), "samples": samples}
    out_path.write_text(json.dumps(payload, indent=1, ensure_ascii=False))
    return out_path, len(samples)
