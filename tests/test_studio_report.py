"""The report panel (error rate per stratum with intervals, κ) and the export of accepted samples."""

import json

from test_studio_review import sample

from mosaic_studio.annotator.records import PointEdit
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.studio.report import EXPORT_FORMAT, export_accepted, report_markdown


def review(store, sample_id, annotator, verdict, decision="accepted", edits=()):
    current = store.get_sample(sample_id)
    verdicts = {(p.ref_index, p.point_index): verdict for p in current.points}
    store.save_review(sample_id, annotator, current.version, verdicts=verdicts, decision=decision, edits=edits)


def test_report_has_strata_intervals_and_kappa(tmp_path):
    with ReviewStore(tmp_path / "s.db") as store:
        store.add_sample(sample("a", refs=1))
        store.add_sample(sample("b", refs=2))
        store.mark_sampled(["a", "b"])
        review(store, "a", "ann", "correct")
        review(store, "b", "ann", "wrong")
        review(store, "b", "bob", "wrong", decision="rejected")
        text = report_markdown(store)
    assert "| 1 × object | 1 | 2 | 0 | 0 | 0.0% | [0.0%," in text
    assert "| 2 × object + object | 1 | 4 | 4 | 0 | 100.0% |" in text
    assert "| **overall** | 2 | 6 | 4 |" in text
    assert "Cohen's κ = undefined (one label throughout)" in text and "4 doubly-judged points" in text


def test_export_writes_accepted_samples_with_their_current_points(tmp_path):
    with ReviewStore(tmp_path / "s.db") as store:
        store.add_sample(sample("a", refs=1))
        store.add_sample(sample("b", refs=1))
        review(
            store,
            "a",
            "ann",
            "correct",
            edits=[
                PointEdit.move(0, 1, (1.0, 2.0), (3.0, 4.0)),
            ],
        )
        review(store, "b", "ann", "wrong", decision="rejected")
        path, count = export_accepted(store, tmp_path / "export.json")
    data = json.loads(path.read_text())
    assert count == 1 and data["format"] == EXPORT_FORMAT and [s["sample_id"] for s in data["samples"]] == ["a"]
    reference = data["samples"][0]["references"][0]
    assert reference["correspondences"] == [[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]]
    assert reference["image"] == str(tmp_path / "ref_0.png")
