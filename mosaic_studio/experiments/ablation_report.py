"""The ablation's results, from the evaluations under <runs>/<row>/eval (mosaic_studio/experiments/ablate.py):

    <out>/ablation/RESULTS.md            the loss rows: Table-4 analogue, per subject count, paired
                                         differences against "none" with 95% bootstrap intervals,
                                         how much each row's references lower its loss, wall times
    <out>/ablation/summary.json          every row's summary, the timings and the reference benefits
    <out>/ablation/metrics_vs_subjects.png, training_losses.png, attention.png, generations.png
    <out>/ablation/logs/<variant>.csv    each variant's training log
    <out>/ablation/records/<row>.jsonl.gz  every case's metrics, per row
    <out>/ablation/sweep/                the P_k sweep, at its own size, against its own P_k = 150
                                         anchor, with the points a reference can give: RESULTS.md,
                                         summary.json, pk_sweep.png, logs/, records/ (written by
                                         write_sweep_report; it needs none of the loss rows)

Differences are paired: every row ran the same cases with the same generation seeds, so the
interval is over cases of the per-case difference (evaluation.intervals: BOOTSTRAP_DRAWS resamples, fixed seed).
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from mosaic_studio.evaluation.evaluate import EVAL_SEED, heldout_sample, probe_points
from mosaic_studio.evaluation.intervals import bootstrap_interval
from mosaic_studio.evaluation.report import METRICS, markdown_by_subjects, markdown_table, plot_by_subjects, summarise
from mosaic_studio.mosaic.data.semalign import MAX_REFERENCES
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.train.data import collate, drawable_points

COMPARED = ("fidelity", "fidelity_gain", "presence", "leakage", "adherence", "pck", "diversity")
BY_SUBJECTS = ("fidelity_gain", "presence", "leakage", "pck")
SWEPT = ("fidelity_gain", "presence", "leakage", "pck")
ATTENTION_CASE = 2  # held-out case index shown in attention.png (3 subjects)
DRAWABLE_SCENES = 300  # held-out scenes (50 per subject count) the sweep's drawable points are counted on


def evaluated(runs: Path, name: str) -> bool:
    return (runs / name / "eval" / "evaluation.json").is_file()


def load_evaluation(runs: Path, name: str) -> dict:
    path = runs / name / "eval" / "evaluation.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no evaluation for {name!r} ({path}); run python -m mosaic_studio.experiments.ablate --phase evaluate"
        )
    return json.loads(path.read_text())


def benefit_table(benefits: dict) -> str:
    """Rows × noise levels: the reference benefit (experiments.reference_benefit) with its interval."""
    levels = list(next(iter(benefits.values()))["levels"])
    lines = ["| row | " + " | ".join(f"t = {t}" for t in levels) + " |", "|---" * (len(levels) + 1) + "|"]
    for name, result in benefits.items():
        cells = [
            f"{cell['benefit']:+.4f} [{cell['ci95'][0]:+.4f}, {cell['ci95'][1]:+.4f}]"
            for cell in (result["levels"][t] for t in levels)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_difference(a: list[dict], b: list[dict], metric: str, seed: int = 0) -> dict | None:
    """Mean of a − b over cases where both define `metric`, with a 95% bootstrap interval."""
    pairs = [(x[metric], y[metric]) for x, y in zip(a, b) if x.get(metric) is not None and y.get(metric) is not None]
    if len(pairs) < 2:
        return None
    diff = np.array([x - y for x, y in pairs])
    low, high = bootstrap_interval(diff, seed=seed)
    return {"mean": float(diff.mean()), "low": low, "high": high, "n": len(diff)}


def differences_table(evaluations: dict[str, dict], baseline: str, rows: list[str]) -> str:
    metrics = [m for m in COMPARED if m in evaluations[baseline]["summary"]["overall"]]
    lines = [
        f"| vs {baseline} | " + " | ".join(METRICS[m][0] for m in metrics) + " |",
        "|---" * (len(metrics) + 1) + "|",
    ]
    for name in rows:
        cells = []
        for metric in metrics:
            d = paired_difference(evaluations[name]["records"], evaluations[baseline]["records"], metric)
            cells.append("–" if d is None else f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_training(runs: Path, names: list[str], path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.3))
    for i, name in enumerate(names):  # one colour per variant in every panel, even where it is absent
        rows = list(csv.DictReader((runs / name / "log.csv").open()))
        steps = np.array([int(r["step"]) for r in rows])
        for ax, column in zip(axes, ("diffusion", "scal", "mdl")):
            values = np.array([float(r[column]) for r in rows])
            if not values.any():
                continue  # α = β = 0: the probe never ran, so there is nothing to plot
            window = max(1, len(values) // 15)
            ax.plot(
                steps[window - 1 :],
                np.convolve(values, np.ones(window) / window, mode="valid"),
                label=name,
                color=f"C{i}",
            )
    for ax, column in zip(
        axes, ("diffusion loss", "SCAL (logged wherever the probe runs, even at α = 0)", "MDL (idem, even at β = 0)")
    ):
        ax.set_title(column, fontsize=9)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(evaluations: dict[str, dict], points: dict[str, int], path: Path) -> None:
    names = sorted(points, key=points.get)
    fig, axes = plt.subplots(1, len(SWEPT), figsize=(3.4 * len(SWEPT), 2.9))
    for ax, metric in zip(axes, SWEPT):
        # A metric no case of a row defines (leakage needs a subject to be present) is a gap.
        means = [evaluations[n]["summary"]["overall"].get(metric, {}).get("mean") for n in names]
        ax.plot([points[n] for n in names], [np.nan if m is None else m for m in means], marker="o")
        ax.set_title(METRICS[metric][0], fontsize=9)
        ax.set_xlabel("P_k (points per reference)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_generations(runs: Path, rows: list[str], path: Path, cases: tuple[int, ...] = (0, 1, 2, 3, 4, 5)) -> None:
    """The same held-out cases (one per subject count) as each row generated them; the oracle
    row's images are the true targets."""
    fig, axes = plt.subplots(len(rows), len(cases), figsize=(1.6 * len(cases), 1.6 * len(rows)), squeeze=False)
    for r, name in enumerate(rows):
        records = load_evaluation(runs, name)["records"]
        for c, case in enumerate(cases):
            ax = axes[r, c]
            if case < len(records):
                ax.imshow(plt.imread(runs / name / "eval" / records[case]["image"]))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{case % 6 + 1} subject{'s' if case % 6 else ''}", fontsize=8)
        axes[r, 0].set_ylabel("true target" if name == "oracle" else name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def plot_attention(models: dict[str, str], path: Path) -> None:
    """For one held-out 3-subject case, the probe's attention row (t = 0.5) of one point per
    reference, under each model: where that reference point looks in the target."""
    sample = heldout_sample(ATTENTION_CASE, 3)
    k = len(sample.references)
    fig, axes = plt.subplots(len(models), k + 1, figsize=(2.1 * (k + 1), 2.1 * len(models)), squeeze=False)
    for row, (name, (model, lora)) in enumerate(models.items()):
        pipe = load_pipeline(model, lora=lora, device="cpu")
        token = pipe.pixels_per_token
        batch = collate([sample], [sample.caption], 1, token, np.random.default_rng(EVAL_SEED))
        attention = probe_points(pipe, batch, 0.5)[0]  # (K, N_tgt): one point per reference
        side = sample.target.shape[0] // token
        axes[row, 0].imshow(sample.target)
        axes[row, 0].set_ylabel(name, fontsize=9)
        for j in range(k):
            ax = axes[row, j + 1]
            ax.imshow(sample.target, alpha=0.5)
            heat = attention[j].reshape(side, side).float().numpy()
            ax.imshow(heat, cmap="magma", alpha=0.6, extent=(0, sample.target.shape[1], sample.target.shape[0], 0))
            true = int(batch.tgt_index[0, j])
            ax.scatter([(true % side + 0.5) * token], [(true // side + 0.5) * token], marker="x", c="cyan", s=40)
            if row == 0:
                ax.set_title(f"reference {j + 1} point", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"probe attention at t=0.5, x = true point; case: {sample.caption}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def drawable_point_stats(
    target_size: int, ref_size: int, token_size: int, points, scenes: int = DRAWABLE_SCENES
) -> dict:
    """How many correspondences a reference can give (train.data.drawable_points) over `scenes`
    held-out scenes at these sizes: median, 10th/90th percentile, max, and for each P_k in
    `points` the share of references whose every point it draws."""
    counts = np.array(
        [
            n
            for i in range(scenes)
            for n in drawable_points(
                heldout_sample(i, 1 + i % MAX_REFERENCES, target_size, ref_size, token_size), token_size
            )
        ]
    )
    p10, median, p90 = np.percentile(counts, [10, 50, 90])
    return {
        "references": len(counts),
        "median": float(median),
        "p10": float(p10),
        "p90": float(p90),
        "max": int(counts.max()),
        "all_drawn": {int(p): float(np.mean(counts <= p)) for p in points},
    }


def sweep_section(evaluations: dict[str, dict], sweep, folder: Path, token_size: int) -> tuple[list[str], dict]:
    """RESULTS.md's P_k sweep part and its summary.json entry. `sweep`: the evaluated sweep
    variants (ablate.Variant), all at one size, its P_k = 150 anchor among them. They are compared
    with that anchor only: the loss rows trained and were evaluated at another size."""
    anchor = next(v for v in sweep if v.is_sweep_anchor)
    target_size, ref_size = anchor.sizes
    points = {v.name: v.points for v in sweep}
    # Sweep rows may cover fewer cases: every row is summarised on the cases all of them ran.
    common = min(len(evaluations[n]["records"]) for n in points)
    swept = {n: {**evaluations[n], "summary": summarise(evaluations[n]["records"][:common])} for n in points}
    plot_sweep(swept, points, folder / "pk_sweep.png")
    ordered = sorted(points, key=points.get)
    stats = drawable_point_stats(target_size, ref_size, token_size, sorted(points.values()))
    shares = ", ".join(f"P_k = {p}: {share:.1%}" for p, share in stats["all_drawn"].items())
    parts = [
        "## P_k sweep (both losses)\n",
        f"Every sweep row trained and was evaluated at **{target_size} px targets with {ref_size} px references** "
        f"({token_size} px per token), not at the loss rows' size, so the sweep rows are compared among "
        f"themselves; P_k = {anchor.points} is `{anchor.name}`, trained at this size. Attention PCK@1's "
        f"chance level is about {9 / (target_size // token_size) ** 2:.3f} here (3 × 3 of "
        f"{(target_size // token_size) ** 2} target tokens).\n",
        "The sampler draws at most one point per target token a subject owns. At this size a reference has a "
        f"**median of {stats['median']:.0f} drawable points** (10th-90th percentile {stats['p10']:.0f}-"
        f"{stats['p90']:.0f}, at most {stats['max']}; {stats['references']} references of {DRAWABLE_SCENES} "
        f"held-out scenes). Share of the references of which P_k draws every point: {shares}.\n",
        f"The first {common} cases, the same for every row.\n",
        markdown_table({f"P_k={points[n]}": swept[n]["summary"] for n in ordered}, list(SWEPT)),
        "",
        differences_table(swept, anchor.name, [n for n in ordered if n != anchor.name]),
        "",
    ]
    return parts, {"target_size": target_size, "ref_size": ref_size, "anchor": anchor.name, "drawable": stats}


def wall_table(timings: dict) -> str:
    """Per-job minutes (each job ran on one torch thread, `--jobs` at a time) and each
    invocation's wall time."""
    lines = ["| job | train | evaluate |", "|---|---|---|"]
    for name in dict.fromkeys([*timings["train"], *timings["evaluate"]]):
        cells = [timings[k].get(name) for k in ("train", "evaluate")]
        lines.append(f"| {name} | " + " | ".join("–" if c is None else f"{c:.1f}" for c in cells) + " |")
    phases = timings["phases"]
    lines += ["", "| invocation | wall minutes | jobs |", "|---|---|---|"]
    lines += [f"| {p['phase']} | {p['minutes']:.1f} | {', '.join(p['jobs'])} |" for p in phases]
    timed = [p for p in phases if "start" in p]
    span = (max(p["end"] for p in timed) - min(p["start"] for p in timed)) / 60 if timed else 0.0
    return "\n".join(lines + [f"| **all invocations, first start to last end** | **{span:.1f}** | |"])


def _rows_timings(timings: dict, names) -> dict:
    """`timings` (ablate.collect_timings) narrowed to the jobs of one report, and to the
    invocations that ran any of them."""
    names = set(names)
    return {
        "train": {n: m for n, m in timings["train"].items() if n in names},
        "evaluate": {n: m for n, m in timings["evaluate"].items() if n in names},
        "phases": [p for p in timings["phases"] if names & set(p["jobs"])],
    }


def _copy_logs_and_records(runs: Path, folder: Path, trained, evaluated_rows) -> None:
    """Each trained variant's training log and each evaluated row's case metrics (gzip, mtime=0:
    the same bytes each run), small enough to commit."""
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    (folder / "records").mkdir(exist_ok=True)
    for name in trained:
        shutil.copyfile(runs / name / "log.csv", folder / "logs" / f"{name}.csv")
    for name in evaluated_rows:
        data = (runs / name / "eval" / "records.jsonl").read_bytes()
        (folder / "records" / f"{name}.jsonl.gz").write_bytes(gzip.compress(data, mtime=0))


def write_report(runs: Path, out: Path, variants, base: str, timings: dict) -> Path:
    """Write <out>/ablation/ (see the module docstring) for the loss rows of `variants`; returns
    RESULTS.md's path. timings: `ablate.collect_timings(runs)`."""
    folder = out / "ablation"
    loss_rows = [v.name for v in variants if not v.in_sweep]
    names = ["oracle", *loss_rows] + (["base"] if evaluated(runs, "base") else [])  # the base when evaluated
    evaluations = {name: load_evaluation(runs, name) for name in names}
    summaries = {name: evaluations[name]["summary"] for name in names}
    _copy_logs_and_records(runs, folder, loss_rows, names)

    table_rows = [n for n in ["base", *loss_rows, "oracle"] if n in names]
    plot_by_subjects(
        {n: summaries[n] for n in table_rows},
        folder / "metrics_vs_subjects.png",
        [m for m in COMPARED if m in summaries["none"]["overall"]],
        "loss ablation on held-out synthetic cases",
    )
    plot_training(runs, loss_rows, folder / "training_losses.png")
    plot_attention(
        {"base": (base, None)} | {n: (str(runs / n / "pipeline"), "auto") for n in loss_rows}, folder / "attention.png"
    )
    plot_generations(runs, table_rows, folder / "generations.png")
    parts = [
        "# Ablation results (generated by `python -m mosaic_studio.experiments.ablate`; do not edit)\n",
        f"{summaries['none']['cases']} held-out cases per row; same cases and seeds for every row. "
        "The P_k sweep, at a size of its own, is reported apart, in `sweep/RESULTS.md`.\n",
        "## Table 4 analogue\n",
        markdown_table({n: summaries[n] for n in table_rows}),
        "",
        "## Paired differences against the LoRA trained without SCAL and MDL (95% bootstrap interval)\n",
        differences_table(evaluations, "none", [n for n in table_rows if n not in ("none", "oracle")]),
        "",
        "## By number of subjects\n",
        *[markdown_by_subjects({n: summaries[n] for n in table_rows}, m) + "\n" for m in BY_SUBJECTS],
    ]
    timings = _rows_timings(timings, names)
    report = {"summaries": summaries, "timings": timings}
    benefits = {
        n: json.loads(f.read_text()) for n in table_rows if (f := runs / n / "reference_benefit.json").is_file()
    }
    if benefits:
        parts += [
            "## How much the references lower the flow-matching loss (without − with, 95% bootstrap interval)\n",
            benefit_table(benefits),
            "",
        ]
        report["reference_benefit"] = benefits
    return _write_results(folder, parts, report)


def write_sweep_report(runs: Path, out: Path, sweep, base: str, timings: dict) -> Path:
    """Write <out>/ablation/sweep/ for the P_k sweep's rows (ablate.Variant, its P_k = 150 anchor
    among them): RESULTS.md, summary.json, pk_sweep.png, logs/ and records/. The loss rows are
    not needed: the sweep is compared with its own anchor, at its own size."""
    folder = out / "ablation" / "sweep"
    names = [v.name for v in sweep]
    evaluations = {name: load_evaluation(runs, name) for name in names}
    _copy_logs_and_records(runs, folder, names, names)
    token_size = load_pipeline(base, lora=None, device="cpu").pixels_per_token
    sweep_parts, info = sweep_section(evaluations, sweep, folder, token_size)
    parts = ["# P_k sweep results (generated by `python -m mosaic_studio.experiments.ablate`; do not edit)\n"]
    timings = _rows_timings(timings, names)
    report = {"sweep": info, "summaries": {n: evaluations[n]["summary"] for n in names}, "timings": timings}
    return _write_results(folder, parts + sweep_parts, report)


def _write_results(folder: Path, parts: list[str], report: dict) -> Path:
    """RESULTS.md (`parts`, then the wall table of the report's own timings) and summary.json."""
    parts = [*parts, "## Wall time (minutes)\n", wall_table(report["timings"]), ""]
    (folder / "summary.json").write_text(json.dumps(report, indent=2))
    results = folder / "RESULTS.md"
    results.write_text("\n".join(parts))
    return results
