"""What fast mode (`reference_cache=True`, docs/DESIGN.md §7) costs in quality: the evaluation suite
(mosaic_studio/evaluation/evaluate.py) in exact and in fast mode on the same held-out synthetic cases
with the same generation seeds, compared case by case.

    python benchmarks/fast_mode_quality.py                  # the embedded default, 204 held-out cases
    python benchmarks/fast_mode_quality.py --cases 48 --out runs/fast-mode-quality-48
    python benchmarks/fast_mode_quality.py --model runs/ablation/both/pipeline --out runs/fast-mode-both

The two evaluations go to <out>/exact and <out>/fast (each resumes where it stopped, with the same
settings). <out>/fast_mode_quality.md (also printed) and .json give, per metric (fidelity above
chance, presence, attention PCK@1), each mode's mean and the paired difference fast − exact with a
95 % bootstrap interval over cases (`ablation_report.paired_difference`, the ablation's), per
subject count and overall. Diversity is off (diversity_every 0): it is not part of this comparison
and would double the generations.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.evaluation import evaluate as ev
from mosaic_studio.evaluation.intervals import BOOTSTRAP_DRAWS
from mosaic_studio.evaluation.report import METRICS, shown_path
from mosaic_studio.experiments.ablation_report import paired_difference

COMPARED = ("fidelity_gain", "presence", "pck")
MODES = ("exact", "fast")
TABLE = "fast_mode_quality"


def evaluate_both(pipe, settings: ev.Settings, out: Path) -> dict[str, dict]:
    """{mode: evaluation.json's content}: `settings` run once per mode (only reference_cache differs)."""
    evaluations = {}
    for mode in MODES:
        mode_settings = dataclasses.replace(settings, reference_cache=mode == "fast")
        ev.evaluate(pipe, mode_settings, out / mode, name=mode)
        evaluations[mode] = json.loads((out / mode / "evaluation.json").read_text())
    return evaluations


def paired_cases(exact: list[dict], fast: list[dict], metric: str) -> tuple[list[dict], list[dict]]:
    """The records (exact, fast) of the cases where both modes define `metric`, in case order."""
    pairs = [(a, b) for a, b in zip(exact, fast) if a.get(metric) is not None and b.get(metric) is not None]
    return [a for a, _ in pairs], [b for _, b in pairs]


def compare(exact: list[dict], fast: list[dict], metric: str) -> dict:
    """{"overall": row, "by_subjects": {k: row}}, row = {"n", "exact", "fast", "difference"}: each
    mode's mean over the cases both define, and `paired_difference(fast, exact)` (None under two
    cases: no interval)."""
    if [r["case"] for r in exact] != [r["case"] for r in fast]:
        raise ValueError("the two evaluations did not run the same cases in the same order")

    def row(a: list[dict], b: list[dict]) -> dict:
        a, b = paired_cases(a, b, metric)
        mean = lambda records: sum(r[metric] for r in records) / len(records) if records else None  # noqa: E731
        return {"n": len(a), "exact": mean(a), "fast": mean(b), "difference": paired_difference(b, a, metric)}

    counts = sorted({r["subjects"] for r in exact})
    by_k = {k: ([r for r in exact if r["subjects"] == k], [r for r in fast if r["subjects"] == k]) for k in counts}
    return {"overall": row(exact, fast), "by_subjects": {k: row(*pair) for k, pair in by_k.items()}}


def _value(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _difference(entry: dict) -> str:
    d = entry["difference"]
    if d is not None:
        return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
    if entry["n"] == 1:
        return f"{entry['fast'] - entry['exact']:+.3f} (one case: no interval)"
    return "–"


def markdown(comparison: dict, metric: str) -> str:
    """One metric: a row per subject count and one overall; cases, exact, fast, fast − exact [95 %]."""
    label, higher = METRICS[metric]
    lines = [
        f"| {label} {'↑' if higher else '↓'} | cases | exact | fast | fast − exact [95 % interval] |",
        "|---|---|---|---|---|",
    ]
    rows = [(f"K={k}", entry) for k, entry in comparison["by_subjects"].items()]
    for name, entry in [*rows, ("**overall**", comparison["overall"])]:
        cells = [str(entry["n"]), _value(entry["exact"]), _value(entry["fast"]), _difference(entry)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pck_note(sites: list[str]) -> str:
    """What the PCK rows mean for this model's probe sites (evaluate.probe_attention)."""
    if sites == ["transformer_blocks.0"]:
        return (
            "PCK is the same in both modes by construction on this model: its probe reads "
            "`transformer_blocks.0` alone, whose reference queries and target keys are projected from "
            "the embedded inputs, before any attention, so fast mode's mask cannot reach them "
            "(`evaluate.probe_attention`). The difference is 0 exactly."
        )
    return (
        f"PCK: the Eq. 8 probe on {', '.join(sites)}, run under each mode's mask; the rows are the same "
        "quantity in both modes, from tokens that fast mode changed from the second block on "
        "(`evaluate.probe_attention`)."
    )


def write_report(out: Path, evaluations: dict[str, dict], model: str, sites: list[str]) -> Path:
    """<out>/fast_mode_quality.md and .json from the two evaluations; returns the .md path."""
    exact, fast = (evaluations[m]["records"] for m in MODES)
    metrics = [m for m in COMPARED if any(r.get(m) is not None for r in exact)]
    comparison = {m: compare(exact, fast, m) for m in metrics}
    settings = evaluations["exact"]["settings"]
    shown = f"{settings['side']} px, {settings['steps']} steps, guidance {settings['guidance']}"
    parts = [
        "# Fast mode against exact mode: quality\n",
        f"Generated by `python benchmarks/fast_mode_quality.py`. Model: `{model}`. {len(exact)} held-out "
        f"synthetic cases, the same cases and generation seeds in both modes ({shown}). Exact: the group "
        "mask the model was trained with; fast: `reference_cache=True` (references attend to themselves "
        "only, their keys and values computed once). Differences are paired over cases, 95 % bootstrap "
        f"intervals ({BOOTSTRAP_DRAWS} resamples, fixed seed).\n",
    ]
    for metric in metrics:
        parts += [f"## {METRICS[metric][0]}\n", markdown(comparison[metric], metric), ""]
    if "pck" in metrics:
        parts += [pck_note(sites), ""]
    path = out / f"{TABLE}.md"
    path.write_text("\n".join(parts))
    data = {
        "model": model,
        "settings": {m: evaluations[m]["settings"] for m in MODES},
        "probe_sites": sites,
        "comparison": comparison,
    }
    (out / f"{TABLE}.json").write_text(json.dumps(data, indent=2))
    return path


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ev.Settings()
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="pipeline folder or hub id")
    parser.add_argument("--lora", default="auto", help="LoRA folder/hub id; 'auto' = the model folder's own; 'none'")
    parser.add_argument("--cases", type=int, default=defaults.cases, help="held-out cases (case i: 1 + i mod 6 refs)")
    parser.add_argument("--out", default="runs/fast-mode-quality", help="folder of both evaluations and the table")
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from mosaic_studio.mosaic.loading import load_pipeline

    pipe = load_pipeline(args.model, lora=None if args.lora == "none" else args.lora, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    settings = ev.Settings(cases=args.cases, steps=args.steps, diversity_every=0)
    out = Path(args.out)
    path = write_report(out, evaluate_both(pipe, settings, out), shown_path(args.model), ev.probe_sites(pipe))
    print(path.read_text())
    return path


if __name__ == "__main__":
    main()
