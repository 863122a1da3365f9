"""Reliability of "send to Annotate" (audit): a studio item, once accepted, is training data.

The item used to be a few loose PNGs with paths that resolved against the current directory
and no sample.json, so one accepted studio item made `mosaic-annotate export` refuse the whole
store. Now it is a complete SemAlign-MS sample folder inside the store's folder, registered
with paths relative to that folder.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from studio_fixtures import example_references, generate_inputs

from mosaic_studio import DEFAULT_MODEL_DIR
from mosaic_studio.annotator.cli import main
from mosaic_studio.annotator.store import ReviewStore
from mosaic_studio.mosaic.data.semalign import EXPORT_MANIFEST, SAMPLE_JSON, list_sample_dirs, load_sample
from mosaic_studio.mosaic.loading import load_pipeline
from mosaic_studio.studio.tabs import annotate, attention, generate


def no_progress(*args, **kwargs):
    return None


@pytest.fixture(scope="module")
def generation(tmp_path_factory):
    pipe = load_pipeline(DEFAULT_MODEL_DIR, device="cpu")
    handler = generate.make_generate_handler(pipe, outputs_dir=tmp_path_factory.mktemp("out"), model_info={})
    prompt, categories = "a person and a quadruped", "human, animal"
    return handler(*generate_inputs(example_references(2), prompt, categories), progress=no_progress).generation


def send_and_accept(generation, store: Path) -> str:
    """What a user does: send image 1 to Annotate, judge every pair correct, accept."""
    sent = attention.make_send_handler(store)(generation, 1, 0, 3, 3, "ann")
    judged = annotate._draft_action("judge_remaining", "correct")(sent.opened, annotate.SELECT_MODE).opened
    annotate.on_save(store, "accepted", judged, "ann", annotate.SELECT_MODE)
    return sent.opened.draft.sample_id


def test_an_accepted_studio_item_is_exported_from_any_current_directory(generation, tmp_path, monkeypatch):
    studio = tmp_path / "studio"
    studio.mkdir()
    store = studio / "reviews.db"
    ReviewStore(store).close()
    sample_id = send_and_accept(generation, store)
    with ReviewStore(store) as opened:
        record = opened.get_sample(sample_id)
        assert opened.stats().by_status == {"accepted": 1}

    # Stored relative to the store's folder, and that is where the files are: a complete sample
    paths = [record.target_path, *(ref.image_path for ref in record.references)]
    assert not any(Path(path).is_absolute() for path in paths)
    folder = studio / Path(record.target_path).parent
    assert folder.is_relative_to(studio) and (folder / SAMPLE_JSON).is_file()
    stored = load_sample(folder)  # validated: masks, Eq. 2, every file inside the folder
    assert stored.sample_id == sample_id and stored.caption == "a person and a quadruped"
    assert [ref.category for ref in stored.references] == ["human", "animal"]
    assert len(stored.references) == len(generation.reference_images) == 2
    assert np.array_equal(stored.target, np.asarray(generation.images[0].convert("RGB")))
    for ref, image in zip(stored.references, generation.reference_images):
        assert np.array_equal(ref.image, np.asarray(image.convert("RGB")))  # as the model saw it
        assert ref.mask.shape == stored.target.shape[:2] and ref.mask.any()
    assert not (stored.references[0].mask & stored.references[1].mask).any()  # disjoint, like Eq. 2
    proposed = sum(len(ref.target_points) for ref in stored.references)
    assert proposed == len(record.points) > 0

    # From another current directory, holding a decoy at the same relative path: the export
    # reads the store's sample, never a cwd-relative one.
    elsewhere = tmp_path / "elsewhere"
    decoy = elsewhere / Path(record.target_path).parent
    shutil.copytree(folder, decoy)
    document = json.loads((decoy / SAMPLE_JSON).read_text(encoding="utf-8"))
    (decoy / SAMPLE_JSON).write_text(json.dumps({**document, "caption": "decoy"}), encoding="utf-8")
    monkeypatch.chdir(elsewhere)
    assert Path(record.target_path).resolve().is_relative_to(elsewhere)  # what the old code read
    out = tmp_path / "export"
    assert main(["export", "--store", str(store), "--out", str(out)]) == 0

    assert [path.name for path in list_sample_dirs(out)] == [sample_id]
    assert json.loads((out / EXPORT_MANIFEST).read_text(encoding="utf-8"))["samples"] == [sample_id]
    exported = load_sample(out / sample_id)
    assert exported.caption == "a person and a quadruped"  # not the decoy's
    assert np.array_equal(exported.target, stored.target)
    for ref, before in zip(exported.references, stored.references):
        assert np.array_equal(ref.mask, before.mask) and np.array_equal(ref.target_points, before.target_points)
    for name in (
        document["target"],
        *(r[key] for r in document["references"] for key in ("image", "mask")),
    ):
        assert (out / sample_id / name).resolve().is_relative_to((out / sample_id).resolve())
        assert (out / sample_id / name).is_file()
    assert all(p.status.value == "kept" for p in record.points)
