"""The report panel (error rate per stratum with intervals, κ, what it covers) and the export of
accepted samples (JSON with copies of its images, paths relative to it)."""

import json
import os
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from test_studio_review import sample

from mosaic_studio.annotator.records import PointEdit, ReferenceRecord, SampleRecord
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.annotator.verify import format_stratum
from mosaic_studio.studio.report import (
    EXPORT_FORMAT,
    EXPORT_JSON,
    archive,
    export_accepted,
    report_markdown,
)


def review(store, sample_id, annotator, verdict, decision="accepted", edits=()):
    current = store.get_sample(sample_id)
    verdicts = {(p.ref_index, p.point_index): verdict for p in current.points}
    store.save_review(sample_id, annotator, current.version, verdicts=verdicts, decision=decision, edits=edits)


def images(folder: Path, refs: int = 2) -> None:
    """The files `sample()` names, relative to the store's folder: distinct bytes per file."""
    for k in range(refs):
        Image.new("RGB", (32, 32), (40 * k, 90, 200)).save(folder / f"ref_{k}.png")
    Image.new("RGB", (48, 32), (250, 10, 10)).save(folder / "target.png")


def with_categories(record, *categories):
    references = tuple(ReferenceRecord(k, f"ref_{k}.png", c) for k, c in enumerate(categories))
    points = tuple(p for p in record.points if p.ref_index < len(categories))
    return SampleRecord(record.sample_id, record.caption, record.target_path, references, points)


def test_report_has_strata_intervals_and_kappa(tmp_path):
    with ReviewStore(tmp_path / "s.db") as store:
        store.add_sample(sample("a", refs=1))
        store.add_sample(sample("b", refs=2))
        store.mark_sampled(["a", "b"])
        review(store, "a", "ann", "correct")
        review(store, "b", "ann", "wrong")
        review(store, "b", "bob", "wrong", decision="rejected")
        text = report_markdown(store)
    assert text.startswith("Stratified sample: 2 of 2 samples reviewed.")
    assert "| 1 | object | 1 | 2 | 0 | 0 | 0.0% | [0.0%," in text
    assert "| 2 | 2 × object | 1 | 4 | 4 | 0 | 100.0% |" in text
    assert "|  | **overall** | 2 | 6 | 4 |" in text
    assert "Cohen's κ = undefined (one label throughout)" in text and "4 doubly-judged points" in text


def test_strata_name_each_category_once_with_its_count():
    assert format_stratum((3, ("object", "object", "object"))) == "3 × object"
    assert format_stratum((3, ("animal", "human", "unknown"))) == "animal + human + unknown"
    assert format_stratum((3, ("human", "object", "human"))) == "2 × human + object"
    assert format_stratum((1, ("chair",))) == "chair"


def test_without_a_stratified_sample_the_report_covers_all_reviews_and_says_so(tmp_path):
    with ReviewStore(tmp_path / "s.db") as store:
        store.add_sample(sample("a", refs=2, points_per_ref=9))  # 18 points
        store.add_sample(with_categories(sample("b"), "animal", "human"))
        review(store, "a", "ann", "correct")
        text = report_markdown(store, draw_hint="Press the button.")
        store.mark_sampled(["b"])  # drawn now, but none of it reviewed
        sampled_empty = report_markdown(store)
        everything = report_markdown(store, sampled_only=False)
    assert text.startswith("**No stratified sample has been drawn yet**, so this report covers all reviews (1 ")
    assert "Press the button." in text and "— all reviewed samples" in text
    assert "|  | **overall** | 1 | 18 | 0 |" in text  # the 18 judged points, not "0 judged"
    assert "Stratified sample: 0 of 1 samples reviewed." in sampled_empty
    assert "None of them is reviewed yet" in sampled_empty and "|  | **overall** | 0 | 0 |" in sampled_empty
    assert everything.startswith("All reviews: 1 reviewed samples.") and "| 2 | 2 × object | 1 | 18 |" in everything


def test_export_copies_the_images_beside_the_json_with_relative_paths(tmp_path):
    store_dir, out = tmp_path / "store", tmp_path / "elsewhere" / "accepted-1"
    store_dir.mkdir()
    images(store_dir)
    with ReviewStore(store_dir / "s.db") as store:
        store.add_sample(sample("a", refs=1))
        store.add_sample(sample("b/../c", refs=2))  # an id that is no safe file name
        store.add_sample(sample("d", refs=1))
        review(store, "a", "ann", "correct", edits=[PointEdit.move(0, 1, (1.0, 2.0), (3.0, 4.0))])
        review(store, "b/../c", "ann", "correct")
        review(store, "d", "ann", "wrong", decision="rejected")
        path, count = export_accepted(store, out)
    text = path.read_text()
    data = json.loads(text)
    assert path == out / EXPORT_JSON and count == 2 and data["format"] == EXPORT_FORMAT
    assert [s["sample_id"] for s in data["samples"]] == ["a", "b/../c"]
    assert str(tmp_path) not in text and data["store"] == "s.db"  # nothing points into the store's folder
    first = data["samples"][0]["references"][0]
    assert first["correspondences"] == [[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]]
    for entry in data["samples"]:
        files = [entry["target"]] + [ref["image"] for ref in entry["references"]]
        for relative in files:
            assert not Path(relative).is_absolute() and ".." not in Path(relative).parts
            assert (out / relative).resolve().is_relative_to(out.resolve())
        assert (out / entry["target"]).read_bytes() == (store_dir / "target.png").read_bytes()
        for k, ref in enumerate(entry["references"]):
            assert (out / ref["image"]).read_bytes() == (store_dir / f"ref_{k}.png").read_bytes()
    zipped = archive(out)
    assert zipped == out.parent / "accepted-1.zip"
    with zipfile.ZipFile(zipped) as handle:
        names = set(handle.namelist())
        assert "accepted-1/accepted.json" in names and f"accepted-1/{data['samples'][1]['target']}" in names
        assert handle.read("accepted-1/accepted.json").decode() == text
    assert sorted(p.name for p in out.parent.iterdir()) == ["accepted-1", "accepted-1.zip"]  # no leftovers


def test_an_export_missing_an_image_writes_nothing_and_an_existing_folder_is_refused(tmp_path):
    images(tmp_path, refs=1)  # ref_1.png is missing
    with ReviewStore(tmp_path / "s.db") as store:
        store.add_sample(sample("a", refs=1))
        store.add_sample(sample("b", refs=2))
        review(store, "a", "ann", "correct")
        review(store, "b", "ann", "correct")
        out = tmp_path / "exports" / "accepted-1"
        with pytest.raises(ValueError, match=r"sample 'b' reference 2: its image ref_1.png is missing"):
            export_accepted(store, out)
        assert os.listdir(out.parent) == []  # no export, no staging folder
        out.mkdir()
        with pytest.raises(ValueError, match="accepted-1 exists already"):
            export_accepted(store, out)
