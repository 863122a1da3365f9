"""The ablation command end to end at toy size: four LoRAs from one base and seed that differ
only in their loss weights, evaluated on the same cases, reported; and its paired statistics.
The P_k sweep at a size of its own: its rows and anchor train, are evaluated and reported there."""

import json

import numpy as np
import pytest

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.evaluation.evaluate import heldout_sample
from mosaic_studio.experiments import ablate
from mosaic_studio.experiments.ablation_report import (
    drawable_point_stats,
    load_evaluation,
    paired_difference,
    sweep_section,
)
from mosaic_studio.train.data import collate, drawable_points

TOY_OVERRIDES = ["optim.batch_size=2", "optim.warmup_steps=1", "run.checkpoint_every=2"]


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
        "--benefit-cases",
        "6",
        "--evaluate-args=--steps 1 --seeds 2 --diversity-every 1",
        *TOY_OVERRIDES,
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
    # Each loss row and the base: how much its references lower the loss, per noise level.
    assert "How much the references lower" in results
    assert set(summary["reference_benefit"]) == {"base", "none", "scal", "mdl", "both"}
    base_benefit = summary["reference_benefit"]["base"]
    assert base_benefit["lora"] == "none" and base_benefit["cases"] == 6
    measured = {name: (runs / name / "reference_benefit.json").stat().st_mtime for name in summary["reference_benefit"]}

    # A second run finds everything done: nothing trains or evaluates again.
    ablate.main(argv)
    again = ablate.collect_timings(runs)
    assert again["train"] == summary["timings"]["train"] and again["evaluate"] == summary["timings"]["evaluate"]
    assert [p["phase"] for p in again["phases"]] == ["train", "evaluate", "train", "evaluate"]
    assert {name: (runs / name / "reference_benefit.json").stat().st_mtime for name in measured} == measured


def test_paired_difference_is_the_mean_of_per_case_differences():
    a = [{"m": 0.5}, {"m": 0.7}, {"m": None}, {"m": 0.9}]
    b = [{"m": 0.4}, {"m": 0.4}, {"m": 0.1}, {"m": 0.6}]
    d = paired_difference(a, b, "m")
    assert d["n"] == 3 and d["mean"] == pytest.approx(np.mean([0.1, 0.3, 0.3]))
    assert d["low"] <= d["mean"] <= d["high"]
    assert paired_difference(a[:1], b[:1], "m") is None  # one case has no interval


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory):
    """A toy sweep, one P_k besides its anchor, at 128 px targets with 32 px references (not the
    loss rows' 64); every variant's own data.ref_size=48 must not win over the sweep's size."""
    runs = tmp_path_factory.mktemp("sweep")
    sweep = ablate.sweep_variants((2,), size=128, ref_size=32)
    ablate.train_all(
        sweep,
        runs,
        base=str(DEFAULT_MODEL_DIR),
        steps=2,
        seed=0,
        jobs=2,
        overrides=[*TOY_OVERRIDES, "data.ref_size=48"],
    )
    return runs, sweep


def test_sweep_rows_and_their_own_anchor_train_at_the_sweep_size(sweep_runs):
    runs, sweep = sweep_runs
    assert [v.name for v in sweep] == ["both_t128_r32_p150", "both_t128_r32_p2"]
    assert [v.is_sweep_anchor for v in sweep] == [True, False]
    assert not any(v.in_sweep for v in ablate.LOSS_VARIANTS)
    configs = {v.name: json.loads((runs / v.name / "config.json").read_text()) for v in sweep}
    for config in configs.values():
        assert (config["data"]["target_size"], config["data"]["ref_size"]) == (128, 32)
        assert (config["loss"]["alpha"], config["loss"]["beta"]) == (0.4, 0.6)
    assert {n: c["loss"]["points_per_reference"] for n, c in configs.items()} == {
        "both_t128_r32_p150": 150,
        "both_t128_r32_p2": 2,
    }
    for config in configs.values():  # the anchor and the row differ in P_k alone
        config["loss"].pop("points_per_reference"), config["run"].pop("output_dir")
    assert configs["both_t128_r32_p150"] == configs["both_t128_r32_p2"]
    jobs = {name: extra for name, _, extra in ablate.evaluation_jobs([*ablate.LOSS_VARIANTS, *sweep], runs, "b", 2)}
    assert jobs["both_t128_r32_p2"] == ["--diversity-every", "0", "--cases", "2", "--side", "128", "--ref-side", "32"]
    assert jobs["both"] == [] and jobs["both_t128_r32_p150"] == jobs["both_t128_r32_p2"]


def test_sweep_rows_are_evaluated_and_reported_at_their_size(sweep_runs, tmp_path):
    runs, sweep = sweep_runs
    names = [v.name for v in sweep]
    jobs = [j for j in ablate.evaluation_jobs(sweep, runs, str(DEFAULT_MODEL_DIR), sweep_cases=2) if j[0] in names]
    # Options for every row come first: a row's own size wins over them.
    ablate.evaluate_all(jobs, runs, cases=4, workers=2, extra=["--steps", "1", "--ref-side", "48"])
    for name in names:
        settings = json.loads((runs / name / "eval" / "settings.json").read_text())
        assert (settings["side"], settings["ref_side"], settings["cases"]) == (128, 32, 2)
    parts, info = sweep_section({n: load_evaluation(runs, n) for n in names}, sweep, tmp_path, token_size=8)
    text = "\n".join(parts)
    assert "**128 px targets with 32 px references**" in text
    assert info["anchor"] == "both_t128_r32_p150" and "| vs both_t128_r32_p150 |" in text
    assert "| P_k=2 |" in text and "| P_k=150 |" in text
    stats = info["drawable"]
    assert f"median of {stats['median']:.0f} drawable points" in text
    # The target's token grid alone bounds the points: the reference size does not change them.
    assert stats == drawable_point_stats(128, 64, 8, [2, 150])
    assert stats["all_drawn"][150] == 1.0 and stats["all_drawn"][2] < 0.05
    assert (tmp_path / "pk_sweep.png").is_file()


def test_drawable_points_are_the_most_the_sampler_draws():
    sample = heldout_sample(3, 4, 256, 128)
    drawable = drawable_points(sample, 8)
    assert drawable == drawable_points(heldout_sample(3, 4, 256, 64), 8)  # reference size: no effect
    for points in (5, max(drawable), max(drawable) + 50):
        batch = collate([sample], [sample.caption], points, 8, np.random.default_rng(0))
        drawn = batch.valid.view(len(drawable), points).sum(1).tolist()
        assert drawn == [min(points, d) for d in drawable]
        for k, d in enumerate(drawn):  # one point per target token: all distinct
            assert len(set(batch.tgt_index.view(len(drawable), points)[k, :d].tolist())) == d
