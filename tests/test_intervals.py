"""The shared bootstrap interval, and the per-subject-count intervals the evaluation report shows."""

import math

import numpy as np
import pytest

from mosaic_studio.evaluation.intervals import bootstrap_interval
from mosaic_studio.evaluation.report import markdown_by_subjects, summarise


def test_bootstrap_interval_matches_the_normal_approximation_on_many_values():
    values = np.random.default_rng(3).normal(loc=2.0, scale=1.5, size=400)
    low, high = bootstrap_interval(values)
    half = 1.959964 * values.std() / math.sqrt(len(values))  # the CLT's 95 % half-width
    assert low < values.mean() < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert (low + high) / 2 == pytest.approx(values.mean(), abs=0.1 * half)


def test_bootstrap_interval_is_seeded_and_collapses_on_constant_values():
    values = np.random.default_rng(0).random(30).tolist()
    assert bootstrap_interval(values) == bootstrap_interval(values)
    assert bootstrap_interval(values, seed=1) != bootstrap_interval(values)
    assert bootstrap_interval([0.25] * 7) == pytest.approx((0.25, 0.25))
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])


def test_report_gives_each_subject_count_its_interval():
    records = [{"subjects": 1, "presence": p} for p in (0.0, 1.0, 1.0, 0.0)]
    records += [{"subjects": 2, "presence": 0.5}]  # one case: a mean without an interval
    summary = summarise(records)
    one, two = summary["by_subjects"][1]["presence"], summary["by_subjects"][2]["presence"]
    assert one["mean"] == 0.5 and one["ci95"] == pytest.approx(list(bootstrap_interval([0.0, 1.0, 1.0, 0.0])))
    assert two == {"mean": 0.5, "ci95": None, "n": 1}
    low, high = one["ci95"]
    table = markdown_by_subjects({"model": summary}, "presence")
    assert f"| model | 0.500 [{low:.3f}, {high:.3f}] | 0.500 |" in table


def test_a_summary_saved_before_intervals_still_plots(tmp_path):
    """An ablation's older rows were summarised without "ci95": they plot without error bars."""
    from mosaic_studio.evaluation.report import plot_by_subjects

    older = {"cases": 2, "overall": {"presence": {"mean": 0.5, "n": 2}}}
    older["by_subjects"] = {"1": {"presence": {"mean": 0.5, "n": 2}}}
    current = summarise([{"subjects": 1, "presence": p} for p in (0.0, 1.0, 1.0)])
    plot_by_subjects({"older": older, "current": current}, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
