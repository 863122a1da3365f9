"""The ablation command end to end at toy size: four LoRAs from one base and seed that differ
only in their loss weights, evaluated on the same cases, reported; and its paired statistics.
The P_k sweep alone (--sweep-only), at a size of its own: its rows and anchor train, are
evaluated and reported there, in a report of its own."""

import json

import numpy as np
import pytest

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
    # The base as a path inside the checkout (tests run from its root): a run resumes only under
    # its own config, so an absolute path would tie its checkpoints to one machine's folder.
    assert configs["none"]["model"]["pretrained"] == "mosaic_studio/assets/tiny-flux"

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
def sweep_run(tmp_path_factory):
    """`ablate --sweep-only` at toy size: one P_k besides its anchor, at 128 px targets with 32 px
    references (not the loss rows' 64). Every variant's own data.ref_size=48, and --ref-side 48
    for every evaluation, must not win over the sweep's size."""
    root = tmp_path_factory.mktemp("sweep")
    runs, docs = root / "runs", root / "docs"
    argv = ["--runs", str(runs), "--out", str(docs), "--sweep-only", "--steps", "2", "--cases", "4"]
    argv += ["--sweep-cases", "2", "--sweep-points", "2", "--sweep-size", "128", "--sweep-ref-size", "32"]
    ablate.main([*argv, "--evaluate-args=--steps 1 --ref-side 48", *TOY_OVERRIDES, "data.ref_size=48"])
    return runs, docs, ablate.sweep_variants((2,), size=128, ref_size=32)


def test_sweep_rows_and_their_own_anchor_train_at_the_sweep_size(sweep_run):
    runs, _, sweep = sweep_run
    assert [v.name for v in sweep] == ["both_t128_r32_p150", "both_t128_r32_p2"]
    assert [v.is_sweep_anchor for v in sweep] == [True, False]
    assert not any(v.in_sweep for v in ablate.LOSS_VARIANTS)
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == [v.name for v in sweep]  # no loss row, no oracle
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
    assert [name for name, _, _ in ablate.evaluation_jobs(sweep, runs, "b")] == [v.name for v in sweep]
    assert ablate.benefit_jobs(sweep, runs, "b") == []


def test_sweep_rows_are_evaluated_and_reported_at_their_size(sweep_run, tmp_path):
    runs, docs, sweep = sweep_run
    names = [v.name for v in sweep]
    for name in names:  # a row's own size wins over the options for every row
        settings = json.loads((runs / name / "eval" / "settings.json").read_text())
        assert (settings["side"], settings["ref_side"], settings["cases"]) == (128, 32, 2)
    folder = docs / "ablation" / "sweep"
    text = (folder / "RESULTS.md").read_text()
    assert not (docs / "ablation" / "RESULTS.md").exists()  # the loss report is not the sweep's
    assert "**128 px targets with 32 px references**" in text
    assert "| vs both_t128_r32_p150 |" in text and "| P_k=2 |" in text and "| P_k=150 |" in text
    info = json.loads((folder / "summary.json").read_text())["sweep"]
    assert info["anchor"] == "both_t128_r32_p150"
    stats = info["drawable"]
    assert f"median of {stats['median']:.0f} drawable points" in text
    # The target's token grid alone bounds the points: the reference size does not change them.
    assert stats == json.loads(json.dumps(drawable_point_stats(128, 64, 8, [2, 150])))
    assert stats["all_drawn"]["150"] == 1.0 and stats["all_drawn"]["2"] < 0.05
    for name in ("pk_sweep.png", *(f"logs/{n}.csv" for n in names), *(f"records/{n}.jsonl.gz" for n in names)):
        assert (folder / name).is_file(), name
    # The same section straight from the evaluations, as the report built it.
    parts, direct = sweep_section({n: load_evaluation(runs, n) for n in names}, sweep, tmp_path, token_size=8)
    assert "\n".join(parts) in text and json.loads(json.dumps(direct)) == info


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
