"""Reliability of the exports (audit A and B): atomic writes, and exactly the accepted set.

A killed or failing export leaves the previous export as it was (files are written under a
temporary name and renamed; the training export is staged and swapped in whole), and a reader
pointed at an unfinished export is told so. Re-exporting drops samples no longer accepted.
"""

import json
import os
import resource
import shutil
import signal

import pytest

from mosaic_studio.annotator import export as export_module
from mosaic_studio.annotator.cli import main
from mosaic_studio.annotator.export import export_label_studio, export_training
from mosaic_studio.annotator.store import PointStatus, ReviewStore
from mosaic_studio.mosaic.data.semalign import list_sample_dirs
from mosaic_studio.world import synthetic


@pytest.fixture
def store_path(tmp_path):
    """Three synthetic samples imported into a store, all pending."""
    world = tmp_path / "world"
    synthetic.main(["--out", str(world), "--num", "3", "--split", "heldout", "--points-per-subject", "8"])
    path = tmp_path / "reviews.db"
    assert main(["import", "--store", str(path), "--format", "synthetic", "--data", str(world)]) == 0
    return path


def ids(store_path):
    with ReviewStore(store_path) as store:
        return [sample_id for sample_id, _ in store.sample_strata()]


def review(store_path, sample_id, decision):
    with ReviewStore(store_path) as store:
        record = store.get_sample(sample_id)
        verdicts = {(p.ref_index, p.point_index): "correct" for p in record.points if p.status != PointStatus.DELETED}
        store.save_review(sample_id, "alice", record.version, verdicts=verdicts, decision=decision)


def names(folder):
    return sorted(p.name for p in folder.iterdir() if (p / "sample.json").is_file())


def in_child(function):
    """Run function() in a forked child (as a separate, killable process); return its exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            function()
            os._exit(0)
        except BaseException:
            os._exit(3)
    return os.waitpid(pid, 0)[1]


def test_a_killed_training_export_leaves_the_previous_export_and_is_marked(store_path, tmp_path):
    first, *_ = all_ids = ids(store_path)
    review(store_path, first, "accepted")
    out = tmp_path / "export"
    assert main(["export", "--store", str(store_path), "--out", str(out)]) == 0
    assert names(out) == [first]
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for sample_id in all_ids[1:]:
        review(store_path, sample_id, "accepted")

    real_save, calls = export_module.save_sample, []

    def save_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # SIGKILL between two samples: no cleanup code runs
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(*args, **kwargs)

    def killed_export():
        export_module.save_sample = save_then_die
        with ReviewStore(store_path) as store:
            export_training(store, out)

    status = in_child(killed_export)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    # The previous export is untouched, and still reads as a complete export ...
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in list_sample_dirs(out)] == [first]
    # ... while whatever the killed run left behind refuses to be read as a dataset.
    leftovers = [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith(".")]
    for leftover in leftovers:
        with pytest.raises(ValueError, match="unfinished"):
            list_sample_dirs(leftover)
    # A fresh export finishes the job and clears the leftovers.
    assert main(["export", "--store", str(store_path), "--out", str(out)]) == 0
    assert names(out) == sorted(all_ids) and [p.name for p in list_sample_dirs(out)] == sorted(all_ids)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_partial_export_folder_is_reported_to_readers(store_path, tmp_path):
    for sample_id in ids(store_path):
        review(store_path, sample_id, "accepted")
    out = tmp_path / "export"
    assert main(["export", "--store", str(store_path), "--out", str(out)]) == 0
    victim = names(out)[1]
    shutil.rmtree(out / victim)  # a sample lost after the export: the folder no longer matches
    with pytest.raises(ValueError, match=victim):
        list_sample_dirs(out)


def test_re_export_equals_the_accepted_set(store_path, tmp_path, capsys):
    all_ids = ids(store_path)
    for sample_id in all_ids:
        review(store_path, sample_id, "accepted")
    out = tmp_path / "export"
    assert main(["export", "--store", str(store_path), "--out", str(out)]) == 0
    assert names(out) == sorted(all_ids)
    review(store_path, all_ids[1], "rejected")  # a second opinion rejects it
    assert main(["export", "--store", str(store_path), "--out", str(out)]) == 0
    assert names(out) == sorted(set(all_ids) - {all_ids[1]})
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["complete"] is True and manifest["samples"] == names(out)
    for sample_id in all_ids:
        review(store_path, sample_id, "rejected")
    assert main(["export", "--store", str(store_path), "--out", str(out)]) == 0
    assert names(out) == [] and list_sample_dirs(out) == []


def test_export_never_replaces_a_folder_that_is_not_an_export(store_path, tmp_path, capsys):
    review(store_path, ids(store_path)[0], "accepted")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert main(["export", "--store", str(store_path), "--out", str(out)]) == 1
    assert "not an export" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"
    # Nor the folder the store's samples live in.
    assert main(["export", "--store", str(store_path), "--out", str(tmp_path / "world")]) == 1
    assert len(names(tmp_path / "world")) == 3


def test_a_failing_label_studio_export_keeps_the_previous_tasks(store_path, tmp_path):
    out = tmp_path / "ls" / "tasks.json"
    with ReviewStore(store_path) as store:
        assert export_label_studio(store, out, ["pending"]) == 3
    before, config = out.read_bytes(), out.with_suffix(".xml").read_bytes()
    # A write cut short (disk full, or a kill mid-write): the file size limit stops it at 100 bytes.
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def cut_short():
        with ReviewStore(store_path) as store:  # opened first: the limit is for the export's files
            resource.setrlimit(resource.RLIMIT_FSIZE, (100, previous[1]))
            export_label_studio(store, out, ["pending", "accepted"])

    try:
        assert in_child(cut_short) != 0
    finally:
        signal.signal(signal.SIGXFSZ, handler)
    assert out.read_bytes() == before and out.with_suffix(".xml").read_bytes() == config
    assert sorted(p.name for p in out.parent.iterdir()) == ["tasks.json", "tasks.xml"]
