"""Sampling, error-rate and agreement statistics (annotator.verify) and the annotator CLI."""

import json
import math
from collections import Counter

import pytest

from mosaic_studio.annotator.cli import main
from mosaic_studio.annotator.records import PointRecord, ReferenceRecord, SampleRecord
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.annotator.verify import (
    VerdictRow,
    cohens_kappa,
    error_report,
    observed_agreement,
    sample_size,
    stratified_sample,
    stratum_from_text,
    stratum_of,
    stratum_to_text,
    wilson_interval,
)

Z = 1.96  # the textbook 95% quantile used in published tables
EXACT = 1e-12


def population(sizes):
    """(sample_id, stratum) pairs: sizes maps a category tuple to its number of samples."""
    return [
        (f"{'-'.join(categories)}-{i:03d}", stratum_of(categories))
        for categories, size in sizes.items()
        for i in range(size)
    ]


SIZES = {("dog",): 1, ("cat",): 5, ("chair", "person"): 10, ("person", "person"): 30, ("bag", "boy", "woman"): 101}


# --- strata and sampling ----------------------------------------------------------------------


def test_stratum_is_count_and_sorted_multiset():
    assert stratum_of(["person", "chair", "person"]) == (3, ("chair", "person", "person"))
    stratum = stratum_of(["b+c", 'a, "x"'])
    assert stratum_from_text(stratum_to_text(stratum)) == stratum


@pytest.mark.parametrize(
    "population_size, fraction, expected",
    [(1, 0.1, 1), (9, 0.1, 1), (10, 0.1, 1), (11, 0.1, 2), (30, 0.1, 3), (101, 0.1, 11), (7, 1.0, 7), (0, 0.1, 0)],
)
def test_sample_size_rounds_up(population_size, fraction, expected):
    assert sample_size(population_size, fraction) == expected


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_sample_size_rejects_fraction_outside_unit_interval(fraction):
    with pytest.raises(ValueError, match="fraction"):
        sample_size(10, fraction)


def test_stratified_sample_covers_every_stratum_at_its_fraction():
    samples = population(SIZES)
    chosen = set(stratified_sample(samples, fraction=0.1, seed=0))
    strata = dict(samples)
    picked = Counter(strata[sample_id] for sample_id in chosen)
    for categories, size in SIZES.items():
        assert picked[stratum_of(categories)] == math.ceil(0.1 * size - EXACT)


def test_stratified_sample_is_deterministic_and_seeded():
    samples = population(SIZES)
    first = stratified_sample(samples, seed=0)
    assert stratified_sample(list(reversed(samples)), seed=0) == first  # input order irrelevant
    assert stratified_sample(samples, seed=1) != first


def test_adding_a_stratum_leaves_the_others_unchanged():
    before = set(stratified_sample(population(SIZES), seed=3))
    grown = population({**SIZES, ("lamp", "sofa"): 40})
    after = set(stratified_sample(grown, seed=3))
    new_ids = {sample_id for sample_id, stratum in grown if stratum == stratum_of(("lamp", "sofa"))}
    assert after - new_ids == before


def test_stratified_sample_rejects_duplicate_ids():
    with pytest.raises(ValueError, match="twice"):
        stratified_sample([("a", stratum_of(["dog"])), ("a", stratum_of(["cat"]))])


# --- Wilson interval --------------------------------------------------------------------------


def test_wilson_matches_closed_form_for_3_of_100():
    # The score interval in its other textbook form:
    # (x + z²/2 ± z·sqrt(x(n−x)/n + z²/4)) / (n + z²)
    x, n = 3, 100
    root = Z * math.sqrt(x * (n - x) / n + Z * Z / 4)
    low, high = (x + Z * Z / 2 - root) / (n + Z * Z), (x + Z * Z / 2 + root) / (n + Z * Z)
    rate, got_low, got_high = wilson_interval(3, 100, z=Z)
    assert rate == 0.03
    assert got_low == pytest.approx(low, abs=EXACT)
    assert got_high == pytest.approx(high, abs=EXACT)
    assert (round(low, 4), round(high, 4)) == (0.0103, 0.0845)


def test_wilson_zero_of_ten_matches_published_upper_bound():
    rate, low, high = wilson_interval(0, 10, z=Z)
    assert (rate, low) == (0.0, 0.0)
    assert high == pytest.approx(Z * Z / (10 + Z * Z), abs=EXACT)  # x = 0: upper = z²/(n + z²)
    assert round(high, 4) == 0.2775  # the familiar "0 of 10: up to 27.8%"


def test_wilson_is_symmetric_and_defined_without_data():
    _, low, high = wilson_interval(7, 40)
    _, mirror_low, mirror_high = wilson_interval(33, 40)
    assert low == pytest.approx(1 - mirror_high, abs=EXACT)
    assert high == pytest.approx(1 - mirror_low, abs=EXACT)
    rate, low, high = wilson_interval(0, 0)
    assert math.isnan(rate) and (low, high) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


# --- error report -----------------------------------------------------------------------------


def test_error_report_per_stratum_and_pooled_overall():
    one, two = stratum_of(["dog"]), stratum_of(["cat", "dog"])
    rows = (
        [VerdictRow("a", one, "wrong")] * 2
        + [VerdictRow("a", one, "correct")] * 7
        + [VerdictRow("b", one, "correct"), VerdictRow("b", one, "unsure")]
        + [VerdictRow("c", two, "correct")] * 5
        + [VerdictRow("c", two, "wrong")]
    )
    report = error_report(rows)
    assert list(report.strata) == [one, two]
    first = report.strata[one]
    counts = (first.samples, first.correct, first.wrong, first.unsure, first.judged)
    assert counts == (2, 8, 2, 1, 10)
    assert (first.rate, first.low, first.high) == wilson_interval(2, 10)
    overall = report.overall
    assert (overall.samples, overall.wrong, overall.judged, overall.unsure) == (3, 3, 16, 1)
    assert overall.rate == 3 / 16


def test_error_report_rejects_unknown_verdict_and_handles_no_data():
    with pytest.raises(ValueError, match="'maybe'"):
        error_report([("a", stratum_of(["dog"]), "maybe")])
    empty = error_report([])
    assert empty.strata == {} and empty.overall.judged == 0
    assert empty.overall.as_dict()["rate"] is None


# --- Cohen's kappa ----------------------------------------------------------------------------


def kappa_from_confusion(matrix):
    """κ from a confusion matrix (rows: annotator A, columns: annotator B), by the definition."""
    n = sum(map(sum, matrix))
    observed = sum(matrix[i][i] for i in range(len(matrix))) / n
    rows = [sum(row) / n for row in matrix]
    columns = [sum(row[j] for row in matrix) / n for j in range(len(matrix))]
    expected = sum(r * c for r, c in zip(rows, columns))
    return (observed - expected) / (1 - expected)


def pairs_from_confusion(labels, matrix):
    return [(a, b) for i, a in enumerate(labels) for j, b in enumerate(labels) for _ in range(matrix[i][j])]


def test_kappa_two_by_two_by_hand():
    # yes/yes 20, yes/no 5, no/yes 10, no/no 15: p_o = 35/50 = 0.7;
    # p_A(yes) = 0.5, p_B(yes) = 0.6, p_e = 0.5·0.6 + 0.5·0.4 = 0.5; κ = (0.7 − 0.5)/0.5 = 0.4
    pairs = pairs_from_confusion(["yes", "no"], [[20, 5], [10, 15]])
    assert cohens_kappa(pairs) == pytest.approx(0.4, abs=EXACT)
    assert observed_agreement(pairs) == pytest.approx(0.7, abs=EXACT)


def test_kappa_three_by_three_by_hand():
    labels = ["correct", "wrong", "unsure"]
    matrix = [[40, 3, 2], [4, 20, 1], [2, 2, 6]]
    # p_o = 66/80; rows (45, 25, 10)/80; columns (46, 25, 9)/80;
    # p_e = (45·46 + 25·25 + 10·9)/6400 = 2785/6400;
    # κ = (80·66 − 2785)/(6400 − 2785) = (5280 − 2785)/3615 = 2495/3615
    expected = 2495 / 3615
    assert kappa_from_confusion(matrix) == pytest.approx(expected, abs=EXACT)
    assert cohens_kappa(pairs_from_confusion(labels, matrix)) == pytest.approx(expected, abs=EXACT)


def test_kappa_edge_cases():
    assert cohens_kappa([("correct", "correct"), ("wrong", "wrong")]) == 1.0
    # Both annotators used one label throughout: p_e = 1 and κ is 0/0, returned as NaN.
    assert math.isnan(cohens_kappa([("correct", "correct")] * 5))
    assert cohens_kappa([("correct", "wrong"), ("wrong", "correct")]) == -1.0
    with pytest.raises(ValueError):
        cohens_kappa([])


# --- CLI --------------------------------------------------------------------------------------


def cli_sample(sample_id, categories):
    references = tuple(
        ReferenceRecord(i, f"refs/{sample_id}-{i}.png", category) for i, category in enumerate(categories)
    )
    points = tuple(
        PointRecord(r, j, (1.0 + j, 2.0), (3.0, 4.0 + r), "dift+dino") for r in range(len(categories)) for j in range(2)
    )
    return SampleRecord(sample_id, "a caption", f"targets/{sample_id}.png", references, points)


def test_cli_sample_then_report(tmp_path, capsys):
    path = tmp_path / "store.db"
    with ReviewStore(path) as store:
        for i in range(12):
            store.add_sample(cli_sample(f"one-{i:02d}", ["dog"]))
        for i in range(3):
            store.add_sample(cli_sample(f"two-{i:02d}", ["dog", "cat"]))
    assert main(["sample", "--store", str(path), "--fraction", "0.1", "--seed", "0"]) == 0
    assert "total" in capsys.readouterr().out
    with ReviewStore(path) as store:
        sampled = [sid for sid in store.queue("ann-a") if store.get_sample(sid).in_sample]
        assert len(sampled) == 2 + 1  # ceil(1.2) dogs + ceil(0.3) dog-and-cat
        for annotator, verdict in (("ann-a", "wrong"), ("ann-b", "wrong")):
            for sample_id in sampled:
                sample = store.get_sample(sample_id)
                verdicts = {(p.ref_index, p.point_index): verdict for p in sample.points}
                verdicts[(0, 0)] = "correct"
                store.save_review(sample_id, annotator, sample.version, verdicts=verdicts, decision="rejected")
    assert main(["report", "--store", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["samples"] for row in report["strata"]] == [2, 1]
    assert report["overall"]["judged"] == 2 * 2 + 4 and report["overall"]["wrong"] == 1 * 2 + 3
    assert report["agreement"] == {"pairs": 8, "observed": 1.0, "kappa": 1.0}
    assert main(["report", "--store", str(path)]) == 0
    table = capsys.readouterr().out
    assert "overall" in table and "Cohen's κ = 1.000" in table


def test_cli_errors(tmp_path, capsys):
    assert main(["report", "--store", str(tmp_path / "missing.db")]) == 1
    assert "no review store" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["export-everything"])
    assert exit_info.value.code == 2
