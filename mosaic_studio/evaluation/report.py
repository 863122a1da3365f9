"""Summaries, markdown tables and plots of evaluation records (mosaic_studio/evaluation/evaluate.py).

A record is one case's dict of metric values (None where a metric is undefined for it). A
summary averages each metric over the cases where it is defined, overall and per number of
subjects, with the 95 % bootstrap interval of that mean (evaluation.intervals), and keeps the
count of those cases so a table can say what a mean rests on.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mosaic_studio.evaluation.intervals import bootstrap_interval

# Metric key → (label, higher is better). Order is the tables' column order.
METRICS = {
    "fidelity": ("identity fidelity", True),
    "fidelity_gain": ("fidelity above chance", True),
    "presence": ("presence (exactly once)", True),
    "missing": ("missing", False),
    "duplicated": ("duplicated", False),
    "leakage": ("leakage", False),
    "adherence": ("prompt adherence", True),
    "pck": ("attention PCK@1", True),
    "diversity": ("diversity", True),
    "clip_i": ("CLIP-I", True),
    "clip_t": ("CLIP-T", True),
    "dino": ("DINO", True),
}


def shown_path(path) -> str:
    """`path` as a committed report prints it: relative to the working directory when it lies
    inside it (the default model's folder is absolute, and no machine's absolute path belongs in
    a report), else as given (a hub id, a folder elsewhere)."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _mean(values: list[float]) -> dict:
    """{"mean", "ci95": [low, high], "n"}; the interval needs two values, so one gives None."""
    mean = sum(values) / len(values) if values else None
    return {"mean": mean, "ci95": list(bootstrap_interval(values)) if len(values) > 1 else None, "n": len(values)}


def summarise(records: list[dict]) -> dict:
    """{"overall": {metric: {"mean", "ci95", "n"}}, "by_subjects": {k: {metric: {...}}}} for the metrics
    that at least one record defines."""
    present = [m for m in METRICS if any(r.get(m) is not None for r in records)]
    groups: dict[int, list[dict]] = defaultdict(list)
    for record in records:
        groups[record["subjects"]].append(record)
    pick = lambda rows, m: [r[m] for r in rows if r.get(m) is not None]  # noqa: E731
    return {
        "cases": len(records),
        "overall": {m: _mean(pick(records, m)) for m in present},
        "by_subjects": {k: {m: _mean(pick(rows, m)) for m in present} for k, rows in sorted(groups.items())},
    }


def _cell(entry: dict | None, interval: bool = False) -> str:
    if not entry or entry["mean"] is None:
        return "–"
    ci = entry.get("ci95") if interval else None
    return f"{entry['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def markdown_table(summaries: dict[str, dict], metrics: list[str] | None = None) -> str:
    """One row per named summary, one column per metric (overall means); arrows say which way
    is better."""
    metrics = metrics or [m for m in METRICS if any(m in s["overall"] for s in summaries.values())]
    head = "| | " + " | ".join(f"{METRICS[m][0]} {'↑' if METRICS[m][1] else '↓'}" for m in metrics) + " |"
    rows = [head, "|---" * (len(metrics) + 1) + "|"]
    for name, summary in summaries.items():
        rows.append(f"| {name} | " + " | ".join(_cell(summary["overall"].get(m)) for m in metrics) + " |")
    return "\n".join(rows)


def markdown_by_subjects(summaries: dict[str, dict], metric: str) -> str:
    """One row per named summary, one column per number of subjects, for one metric: each
    cell the mean and its 95 % interval, "mean [low, high]"."""
    counts = sorted({int(k) for s in summaries.values() for k in s["by_subjects"]})
    rows = [
        f"| {METRICS[metric][0]} | " + " | ".join(f"K={k}" for k in counts) + " |",
        "|---" * (len(counts) + 1) + "|",
    ]
    for name, summary in summaries.items():
        by = {int(k): v for k, v in summary["by_subjects"].items()}
        rows.append(f"| {name} | " + " | ".join(_cell(by.get(k, {}).get(metric), interval=True) for k in counts) + " |")
    return "\n".join(rows)


def plot_by_subjects(summaries: dict[str, dict], path, metrics: list[str] | None = None, title: str = "") -> None:
    """One panel per metric: its mean against the number of subjects with its 95 % interval,
    a line per summary."""
    metrics = metrics or [m for m in METRICS if any(m in s["overall"] for s in summaries.values())]
    columns = min(4, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.9 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for i, (name, summary) in enumerate(summaries.items()):  # a fixed colour per row in every panel
            by = sorted(
                (int(k), v[metric])
                for k, v in summary["by_subjects"].items()
                if metric in v and v[metric]["mean"] is not None
            )
            if by:
                ks, entries = zip(*by)
                means = [e["mean"] for e in entries]
                # the 95 % interval as an error bar; a single case has none, nor a summary saved
                # before reports had intervals (an ablation's older rows)
                spans = [(e.get("ci95") or [e["mean"]] * 2) for e in entries]
                errors = [[m - lo for m, (lo, _) in zip(means, spans)], [hi - m for m, (_, hi) in zip(means, spans)]]
                ax.errorbar(ks, means, yerr=errors, marker="o", capsize=3, label=name, color=f"C{i}")
        label, higher = METRICS[metric]
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)", fontsize=9)
        ax.set_xlabel("subjects")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
