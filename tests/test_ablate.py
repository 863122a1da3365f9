"""The ablation command end to end at toy size: four LoRAs from one base and seed that differ
only in their loss weights, evaluated on the same cases, reported; and its paired statistics."""

import json

import numpy as np
import pytest

from mosaic_studio.experiments import ablate
from mosaic_studio.experiments.ablation_report import paired_difference


def test_ablation_trains_four_variants_and_reports(tmp_path):
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    argv = [
        "--runs",
        str(runs),
        "--out",
        str(docs),
        "--no-sweep",
        "--steps",
        "2",
        "--cases",
        "2",
        "--evaluate-args=--steps 1 --seeds 2 --diversity-every 1",
        "optim.batch_size=2",
        "optim.warmup_steps=1",
        "run.checkpoint_every=2",
    ]
    ablate.main(argv)
    configs = {v.name: json.loads((runs / v.name / "config.json").read_text()) for v in ablate.LOSS_VARIANTS}
    weights = {name: (c["loss"]["alpha"], c["loss"]["beta"]) for name, c in configs.items()}
    assert weights == {"none": (0.0, 0.0), "scal": (0.4, 0.0), "mdl": (0.0, 0.6), "both": (0.4, 0.6)}
    for config in configs.values():  # equal budgets, same base and world seed: only α, β differ
        config["loss"].pop("alpha"), config["loss"].pop("beta"), config["run"].pop("output_dir")
    assert all(c == configs["none"] for c in configs.values())
    assert configs["none"]["optim"]["max_steps"] == 2

    results = (docs / "ablation" / "RESULTS.md").read_text()
    for row in ("| base |", "| none |", "| scal |", "| mdl |", "| both |", "| oracle |"):
        assert row in results
    for name in (
        "metrics_vs_subjects.png",
        "training_losses.png",
        "attention.png",
        "generations.png",
        "summary.json",
        "logs/both.csv",
        "records/oracle.jsonl.gz",
    ):
        assert (docs / "ablation" / name).is_file(), name
    summary = json.loads((docs / "ablation" / "summary.json").read_text())
    assert summary["summaries"]["none"]["cases"] == 2
    assert set(summary["timings"]["train"]) == {"none", "scal", "mdl", "both"}
    assert set(summary["timings"]["evaluate"]) == {"oracle", "base", "none", "scal", "mdl", "both"}
    assert "all invocations" in results

    # A second run finds everything done: nothing trains or evaluates again.
    ablate.main(argv)
    again = ablate.collect_timings(runs)
    assert again["train"] == summary["timings"]["train"] and again["evaluate"] == summary["timings"]["evaluate"]
    assert [p["phase"] for p in again["phases"]] == ["train", "evaluate", "train", "evaluate"]


def test_paired_difference_is_the_mean_of_per_case_differences():
    a = [{"m": 0.5}, {"m": 0.7}, {"m": None}, {"m": 0.9}]
    b = [{"m": 0.4}, {"m": 0.4}, {"m": 0.1}, {"m": 0.6}]
    d = paired_difference(a, b, "m")
    assert d["n"] == 3 and d["mean"] == pytest.approx(np.mean([0.1, 0.3, 0.3]))
    assert d["low"] <= d["mean"] <= d["high"]
    assert paired_difference(a[:1], b[:1], "m") is None  # one case has no interval
