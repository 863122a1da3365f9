"""Reliability of reading SemAlign-MS samples and proposal requests from disk (audit C and D).

Every file a sample names must stay inside its folder (no `..`, no absolute path, no symlink
out of it); broken files and JSON of the wrong shape give a SampleError (a ValueError) naming
the sample and the field, which `--on-error skip` catches; a FIFO is never opened.
"""

import json
import os
import struct
import threading
import zlib

import numpy as np
import pytest
from conftest import store_dump as dump
from PIL import Image

from mosaic_studio.annotator.cli import main
from mosaic_studio.annotator.propose_run import read_request
from mosaic_studio.mosaic.data.semalign import Reference, Sample, SampleError, load_sample, save_sample
from mosaic_studio.world import synthetic

SID = "s1"


def tiny_sample(sample_id=SID) -> Sample:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), dtype=bool)
    mask[:, :16] = True
    reference = Reference(
        rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
        mask,
        [(3.5, 4.5), (10.5, 20.5)],
        [(2.5, 3.5), (8.5, 30.5)],
        "object",
        "mug",
    )
    return Sample(sample_id, target, "a mug", [reference], meta={"origin": "test"})


@pytest.fixture
def folder(tmp_path):
    return save_sample(tiny_sample(), tmp_path / "data" / SID)


def edit_json(folder, change):
    doc = json.loads((folder / "sample.json").read_text())
    doc = change(doc)
    (folder / "sample.json").write_text(json.dumps(doc))


def png_bomb(path, side=60_000):
    """A PNG whose header declares side x side pixels (Pillow refuses > ~179 MP) in a few bytes."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def finishes(function, fifo, timeout_s=20.0):
    """Run function(); if it blocks (on opening `fifo`), release it and fail."""
    outcome = {}

    def call():
        try:
            outcome["value"] = function()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        try:  # a writer opening the FIFO unblocks a reader stuck in open()
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        thread.join(5)
        pytest.fail(f"reading blocked on the FIFO {fifo}")
    return outcome


# --- C: files outside the sample folder -------------------------------------------------------


@pytest.mark.parametrize("field", ["target", "references[0].image", "references[0].mask"])
@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_files_outside_the_sample_folder_are_refused(folder, tmp_path, field, how):
    secret = tmp_path / "secret" / "private.png"
    secret.parent.mkdir()
    source = "mask_0.png" if field.endswith("mask") else "target.png"
    (folder / source).rename(secret)
    if how == "dotdot":
        name = os.path.relpath(secret, folder)
        assert name.startswith("..")
    elif how == "absolute":
        name = str(secret)
    else:
        name = "link.png"
        (folder / name).symlink_to(secret)

    def change(doc):
        if field == "target":
            doc["target"] = name
        else:
            doc["references"][0][field.rsplit(".", 1)[1]] = name
        return doc

    edit_json(folder, change)
    with pytest.raises(SampleError, match="outside") as caught:
        load_sample(folder)
    assert SID in str(caught.value) and field in str(caught.value)


def test_symlinks_inside_the_sample_folder_still_work(folder):
    (folder / "target.png").rename(folder / "real.png")
    (folder / "target.png").symlink_to("real.png")
    assert load_sample(folder) == tiny_sample()


def test_import_refuses_a_traversal_and_leaves_the_store_unchanged(folder, tmp_path, capsys):
    store = tmp_path / "reviews.db"
    good = save_sample(tiny_sample("s0"), tmp_path / "good" / "s0")
    assert main(["import", "--store", str(store), "--format", "semalign", "--data", str(good.parent)]) == 0
    before = dump(store)
    (folder / "target.png").rename(tmp_path / "outside.png")
    edit_json(folder, lambda doc: {**doc, "target": "../../outside.png"})
    capsys.readouterr()
    assert main(["import", "--store", str(store), "--format", "semalign", "--data", str(folder.parent)]) == 1
    error = capsys.readouterr().err
    assert SID in error and "target" in error and "outside" in error and "Traceback" not in error
    assert dump(store) == before


# --- D: broken files and JSON of the wrong shape ----------------------------------------------


@pytest.mark.parametrize("name", ["target.png", "mask_0.png", "ref_0.png"])
def test_decompression_bombs_are_a_sample_error(folder, name):
    png_bomb(folder / name)
    with pytest.raises(SampleError, match=name.split(".")[0]) as caught:
        load_sample(folder)
    assert SID in str(caught.value)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda doc: [doc], "sample.json"),
        (lambda doc: None, "sample.json"),
        (lambda doc: {**doc, "references": 3}, "references"),
        (lambda doc: {**doc, "meta": []}, "meta"),
        (lambda doc: {**doc, "masks_exclusive": "false"}, "masks_exclusive"),
        (lambda doc: {**doc, "caption": 7}, "caption"),
        (lambda doc: {**doc, "target": None}, "target"),
        (lambda doc: {**doc, "sample_id": ["x"]}, "sample_id"),
        (lambda doc: {**doc, "references": ["ref_0.png"]}, "references[0]"),
        (lambda doc: {**doc, "references": [{**doc["references"][0], "category": 1}]}, "references[0].category"),
        (lambda doc: {**doc, "references": [{**doc["references"][0], "label": None}]}, "references[0].label"),
        (lambda doc: {**doc, "references": [{**doc["references"][0], "image": 5}]}, "references[0].image"),
        (
            lambda doc: {**doc, "references": [{**doc["references"][0], "correspondences": "1,2"}]},
            "references[0].correspondences",
        ),
        (
            lambda doc: {**doc, "references": [{**doc["references"][0], "correspondences": [[1, 2, "a", 4]]}]},
            "references[0].correspondences",
        ),
    ],
)
def test_sample_json_of_the_wrong_shape_is_a_sample_error(folder, change, field):
    edit_json(folder, change)
    with pytest.raises(SampleError) as caught:
        load_sample(folder)
    message = str(caught.value)
    assert SID in message and field in message


def test_a_fifo_is_never_opened(folder):
    os.remove(folder / "mask_0.png")
    os.mkfifo(folder / "mask_0.png")
    outcome = finishes(lambda: load_sample(folder), folder / "mask_0.png")
    assert isinstance(outcome.get("error"), SampleError) and "regular file" in str(outcome["error"])


@pytest.fixture
def world(tmp_path):
    out = tmp_path / "world"
    synthetic.main(["--out", str(out), "--num", "2", "--split", "heldout", "--points-per-subject", "12"])
    return out


def make_request(world, folder):
    """A request.json folder built from the first synthetic sample."""
    sample = load_sample(next(p for p in sorted(world.iterdir()) if (p / "sample.json").is_file()))
    folder.mkdir(parents=True)
    Image.fromarray(sample.target).save(folder / "target.png")
    entries = []
    for k, ref in enumerate(sample.references):
        Image.fromarray(ref.image).save(folder / f"ref_{k}.png")
        Image.fromarray(ref.mask).save(folder / f"mask_{k}.png")
        entries.append({"image": f"ref_{k}.png", "mask": f"mask_{k}.png", "category": ref.category})
    (folder / "request.json").write_text(
        json.dumps({"caption": sample.caption, "target": "target.png", "references": entries})
    )
    return folder


def test_a_fifo_in_a_request_folder_does_not_hang_propose(world, tmp_path, capsys):
    request = make_request(world, tmp_path / "requests" / "r1")
    os.remove(request / "mask_0.png")
    os.mkfifo(request / "mask_0.png")
    outcome = finishes(lambda: read_request(request), request / "mask_0.png")
    assert isinstance(outcome.get("error"), ValueError) and "mask_0.png" in str(outcome["error"])
    outcome = finishes(
        lambda: main(
            [
                "propose",
                "--data",
                str(request.parent),
                "--out",
                str(tmp_path / "out"),
                "--extractors",
                "sift",
                "--on-error",
                "skip",
            ]
        ),
        request / "mask_0.png",
    )
    assert outcome.get("value") == 0 and "skipped r1" in "".join(capsys.readouterr())


@pytest.mark.parametrize(
    "breaks",
    ["bomb-mask", "bomb-target", "json-list", "meta-list", "refs-int", "request-traversal", "request-refs-int"],
)
def test_on_error_skip_catches_every_broken_sample(world, tmp_path, capsys, breaks):
    data = tmp_path / "data"
    request = make_request(world, data / "r1")
    names = sorted(p.name for p in world.iterdir() if (p / "sample.json").is_file())
    (world / names[0]).rename(data / names[0])
    sample_dir = data / names[0]
    if breaks == "bomb-mask":
        png_bomb(request / "mask_0.png")
    elif breaks == "bomb-target":
        png_bomb(sample_dir / "target.png")
    elif breaks == "json-list":
        edit_json(sample_dir, lambda doc: [doc])
    elif breaks == "meta-list":
        edit_json(sample_dir, lambda doc: {**doc, "meta": []})
    elif breaks == "refs-int":
        edit_json(sample_dir, lambda doc: {**doc, "references": 2})
    elif breaks == "request-traversal":
        doc = json.loads((request / "request.json").read_text())
        (request / "target.png").rename(tmp_path / "outside.png")
        (request / "request.json").write_text(json.dumps({**doc, "target": "../../outside.png"}))
    else:
        doc = json.loads((request / "request.json").read_text())
        (request / "request.json").write_text(json.dumps({**doc, "references": 2}))
    broken = "r1" if breaks.startswith(("bomb-mask", "request")) else names[0]
    args = ["propose", "--data", str(data), "--out", str(tmp_path / "out"), "--extractors", "sift"]
    capsys.readouterr()
    assert main(args) == 1
    error = capsys.readouterr().err
    assert broken in error and "Traceback" not in error
    assert main(args + ["--on-error", "skip"]) == 0
    assert f"skipped {broken}" in "".join(capsys.readouterr())
