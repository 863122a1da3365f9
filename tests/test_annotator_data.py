"""Data commands of the annotator: propose (resumable, sharded), import, export round trip."""

import json
import shutil

import numpy as np
import pytest
from conftest import store_dump as dump
from PIL import Image

from mosaic_studio.annotator.cli import main
from mosaic_studio.annotator.export import label_studio_config
from mosaic_studio.annotator.imports import import_subjects200k
from mosaic_studio.annotator.store import PointEdit, PointStatus, ReviewStore
from mosaic_studio.mosaic.data.semalign import load_sample, token_grid
from mosaic_studio.world import synthetic

T = 16


@pytest.fixture
def world(tmp_path):
    """Three held-out synthetic samples, as `python -m mosaic_studio.world.synthetic` writes them."""
    out = tmp_path / "world"
    synthetic.main(["--out", str(out), "--num", "3", "--split", "heldout", "--points-per-subject", "12"])
    return out


def ids_in(folder):
    return sorted(p.name for p in folder.iterdir() if (p / "sample.json").is_file())


def all_correct(record):
    return {(p.ref_index, p.point_index): "correct" for p in record.points if p.status != PointStatus.DELETED}


def shared_token(sample):
    """(j, k, v_j, v_k): references j < k whose masks share a target token, and a pixel centre
    of each mask inside that token; None when no two masks touch one token."""
    _, grid_w = token_grid(*sample.target.shape[:2], T)
    rows, cols = np.indices(sample.target.shape[:2])
    tokens = (rows // T) * grid_w + cols // T
    masks = [ref.mask for ref in sample.references]
    for j in range(len(masks)):
        for k in range(j + 1, len(masks)):
            common = np.intersect1d(tokens[masks[j]], tokens[masks[k]])
            if common.size:
                pick = [np.argwhere(m & (tokens == common[0]))[0] for m in (masks[j], masks[k])]
                return (j, k, *[(float(c) + 0.5, float(r) + 0.5) for r, c in pick])
    return None


# --- import and export ------------------------------------------------------------------------


def test_reviewed_samples_round_trip_through_export(world, tmp_path, capsys):
    store_path, exported = tmp_path / "reviews.db", tmp_path / "export"
    assert main(["import", "--store", str(store_path), "--format", "synthetic", "--data", str(world)]) == 0
    first, second, third = ids_in(world)
    with ReviewStore(store_path) as store:
        record = store.get_sample(first)
        p0, p1 = [p for p in record.points if p.ref_index == 0][:2]
        moved_ref = (p0.ref_xy[0] + 1.0, p0.ref_xy[1])
        store.save_review(
            first,
            "alice",
            0,
            verdicts=all_correct(record),
            decision="accepted",
            edits=[
                PointEdit.move(0, p0.point_index, moved_ref, p0.target_xy),
                PointEdit.delete(0, p1.point_index),
                PointEdit.add(0, (10.5, 20.5), p0.target_xy),
            ],
        )
        for sample_id, decision in ((second, "accepted"), (third, "rejected")):
            store.save_review(sample_id, "bob", 0, verdicts=all_correct(store.get_sample(sample_id)), decision=decision)
    assert main(["export", "--store", str(store_path), "--out", str(exported)]) == 0
    assert ids_in(exported) == [first, second]

    original, again = load_sample(world / second), load_sample(exported / second)
    assert again.meta["review"] == {"status": "accepted", "version": 1}
    assert again.meta["point_info"][0]["source"][0] == "synthetic-exact"
    for before, after in zip(original.references, again.references):
        assert np.array_equal(before.ref_points, after.ref_points)
        assert np.array_equal(before.target_points, after.target_points)
        assert np.array_equal(before.mask, after.mask) and np.array_equal(before.image, after.image)
    assert np.array_equal(original.target, again.target) and original.caption == again.caption

    edited, source = load_sample(exported / first).references[0], load_sample(world / first).references[0]
    expected = [moved_ref] + [tuple(u) for u in source.ref_points[2:].tolist()] + [(10.5, 20.5)]
    assert [tuple(u) for u in edited.ref_points.tolist()] == expected
    assert load_sample(exported / first).meta["point_info"][0]["source"][-1] == "annotator"

    # The export is the project's format again: it imports as such, points and sources intact.
    assert (
        main(["import", "--store", str(tmp_path / "second.db"), "--format", "semalign", "--data", str(exported)]) == 0
    )
    with ReviewStore(tmp_path / "second.db") as store:
        points = [p for p in store.get_sample(first).points if p.ref_index == 0]
        assert [p.ref_xy for p in points] == expected and points[-1].source == "annotator"
    capsys.readouterr()


def test_label_studio_export(world, tmp_path):
    store_path, out = tmp_path / "reviews.db", tmp_path / "ls" / "tasks.json"
    assert main(["import", "--store", str(store_path), "--format", "synthetic", "--data", str(world)]) == 0
    assert (
        main(
            ["export", "--store", str(store_path), "--out", str(out), "--format", "label-studio", "--status", "pending"]
        )
        == 0
    )
    tasks = json.loads(out.read_text())
    assert len(tasks) == 3 and "<Relations/>" in out.with_suffix(".xml").read_text()
    task = tasks[0]
    result = task["predictions"][0]["result"]
    with ReviewStore(store_path) as store:
        record = store.get_sample(task["meta"]["sample_id"])
    assert len(result) == 3 * len(record.points)
    keypoints = {r["id"]: r for r in result if r["type"] == "keypointlabels"}
    for relation in (r for r in result if r["type"] == "relation"):
        assert keypoints[relation["to_id"]]["to_name"] == "target"
        assert keypoints[relation["from_id"]]["to_name"].startswith("ref_")
    assert all(0 <= k["value"]["x"] <= 100 and 0 <= k["value"]["y"] <= 100 for k in keypoints.values())
    assert 'name="kp_ref_5"' in label_studio_config()


def _break_unreadable(folder):
    (folder / "ref_0.png").write_bytes(b"not a png")


def _break_mask_size(folder):
    Image.open(folder / "mask_0.png").resize((64, 64)).save(folder / "mask_0.png")


def _break_eq2(folder):
    j, k, v_j, v_k = shared_token(load_sample(folder))
    doc = json.loads((folder / "sample.json").read_text())
    doc["references"][j]["correspondences"].append([5.5, 5.5, *v_j])
    doc["references"][k]["correspondences"].append([5.5, 5.5, *v_k])
    (folder / "sample.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "breaks, message",
    [
        (_break_unreadable, "ref_0.png"),
        (_break_mask_size, "mask-shape"),
        (_break_eq2, "token-disjointness-eq2"),
    ],
)
def test_bad_samples_are_refused_and_the_store_is_unchanged(world, tmp_path, capsys, breaks, message):
    store_path = tmp_path / "reviews.db"
    last = next(sid for sid in ids_in(world) if shared_token(load_sample(world / sid)))
    first = next(sid for sid in ids_in(world) if sid != last)
    keep = tmp_path / "one"
    keep.mkdir()
    (world / first).rename(keep / first)
    assert main(["import", "--store", str(store_path), "--format", "semalign", "--data", str(keep)]) == 0
    before = dump(store_path)
    breaks(world / last)
    capsys.readouterr()
    assert main(["import", "--store", str(store_path), "--format", "synthetic", "--data", str(world)]) == 1
    error = capsys.readouterr().err
    assert message in error and last in error
    assert dump(store_path) == before


def test_export_refuses_a_review_that_breaks_eq2(world, tmp_path, capsys):
    store_path, out = tmp_path / "reviews.db", tmp_path / "export"
    assert main(["import", "--store", str(store_path), "--format", "synthetic", "--data", str(world)]) == 0
    broken = next(sid for sid in ids_in(world) if shared_token(load_sample(world / sid)))
    j, k, v_j, v_k = shared_token(load_sample(world / broken))
    with ReviewStore(store_path) as store:
        for sample_id in ids_in(world):
            edits = (
                [PointEdit.add(j, (5.5, 5.5), v_j), PointEdit.add(k, (5.5, 5.5), v_k)] if sample_id == broken else []
            )
            store.save_review(
                sample_id,
                "alice",
                0,
                verdicts=all_correct(store.get_sample(sample_id)),
                decision="accepted",
                edits=edits,
            )
    capsys.readouterr()
    assert main(["export", "--store", str(store_path), "--out", str(out)]) == 1
    assert "token-disjointness-eq2" in capsys.readouterr().err and not out.exists()
    assert main(["export", "--store", str(store_path), "--out", str(out), "--skip-invalid"]) == 0
    assert broken not in ids_in(out) and len(ids_in(out)) == 2
    assert "left out" in capsys.readouterr().out


def test_subjects200k_layout_imports_into_the_store(tmp_path):
    from tests.test_semalign_subjects200k import PAD, PANEL, _row, _write_annotations

    root, media = tmp_path / "s200k", tmp_path / "media"
    row = _row()
    uid, _ = _write_annotations(root, row)
    with ReviewStore(tmp_path / "reviews.db") as store:
        assert import_subjects200k(store, root, media, rows=[row], panel_size=PANEL, padding=PAD) == (1, 0)
        record = store.get_sample(uid)
        assert record.points and {p.source for p in record.points} == {"dift+geoaware"}
        assert import_subjects200k(
            store, root, media, rows=[row], skip_existing=True, panel_size=PANEL, padding=PAD
        ) == (0, 1)
    assert load_sample(media / uid).caption == row["description"]["description_0"]


def test_subjects200k_import_command_reads_the_parquet_shards(tmp_path, capsys):
    pq = pytest.importorskip("pyarrow.parquet")
    import io

    import pyarrow as pa

    from tests.test_semalign_subjects200k import PAD, PANEL, _row, _write_annotations

    root = tmp_path / "s200k"
    row = _row()
    uid, _ = _write_annotations(root, row)
    encoded = io.BytesIO()
    row["image"].save(encoded, format="PNG")
    (root / "data").mkdir()
    pq.write_table(
        pa.Table.from_pylist([{**row, "image": {"bytes": encoded.getvalue(), "path": None}}]),
        root / "data" / "train-0.parquet",
    )
    args = [
        "import",
        "--store",
        str(tmp_path / "reviews.db"),
        "--format",
        "subjects200k",
        "--data",
        str(root),
        "--panel-size",
        str(PANEL),
        "--padding",
        str(PAD),
    ]
    assert main(args) == 1 and "--media" in capsys.readouterr().err
    assert main(args + ["--media", str(tmp_path / "media")]) == 0
    with ReviewStore(tmp_path / "reviews.db") as store:
        assert store.get_sample(uid).references[0].category == "object"


# --- propose ----------------------------------------------------------------------------------


def propose(data, out, *extra):
    return main(["propose", "--data", str(data), "--out", str(out), "--extractors", "sift", *extra])


def test_propose_is_sharded_and_resumable(world, tmp_path, capsys, monkeypatch):
    out = tmp_path / "proposed"
    names = ids_in(world)
    assert propose(world, out, "--rank", "0", "--world-size", "2") == 0
    assert ids_in(out) == [names[0], names[2]]
    monkeypatch.setenv("RANK", "1")  # as `accelerate launch` / torchrun set them
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert propose(world, out) == 0
    assert ids_in(out) == names
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    capsys.readouterr()
    shutil.rmtree(out / names[1])  # as a run killed mid-write leaves it: only a partial folder
    (out / f".partial-{names[1]}-x1").mkdir()
    assert propose(world, out) == 0
    assert "2 already proposed, 1 to do" in capsys.readouterr().out
    assert ids_in(out) == names and not list(out.glob(".partial-*"))
    proposal = load_sample(out / names[0])
    assert proposal.meta["proposal"]["extractors"] == ["sift"] and "subjects" in proposal.meta
    assert propose(world, out, "--radius", "1") == 1
    assert "records other settings" in capsys.readouterr().err


def test_propose_from_requests_and_bad_files(world, tmp_path, capsys):
    sample = load_sample(world / ids_in(world)[0])
    request = tmp_path / "requests" / "r1"
    request.mkdir(parents=True)
    Image.fromarray(sample.target).save(request / "target.png")
    entries = []
    for k, ref in enumerate(sample.references):
        Image.fromarray(ref.image).save(request / f"ref_{k}.png")
        Image.fromarray(ref.mask).save(request / f"mask_{k}.png")
        entries.append({"image": f"ref_{k}.png", "mask": f"mask_{k}.png", "category": ref.category, "label": ref.label})
    (request / "request.json").write_text(
        json.dumps({"caption": sample.caption, "target": "target.png", "references": entries})
    )
    assert propose(request.parent, tmp_path / "out") == 0
    assert len(load_sample(tmp_path / "out" / "r1").references) == len(sample.references)

    broken = tmp_path / "broken"
    (request.parent).rename(broken)
    (broken / "r1" / "target.png").write_bytes(b"\x89PNG broken")
    capsys.readouterr()
    assert propose(broken, tmp_path / "out2") == 1
    assert "target file" in capsys.readouterr().err
    assert propose(broken, tmp_path / "out3", "--on-error", "skip") == 0
    assert "skipped r1" in capsys.readouterr().out + capsys.readouterr().err
