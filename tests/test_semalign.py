"""SemAlign-MS format: validation rules, token helpers, P_k sampling, atomic on-disk round trip."""

import dataclasses
import json

import numpy as np
import pytest

from mosaic_studio.mosaic.data import semalign
from mosaic_studio.mosaic.data.semalign import (
    MAX_REFERENCES,
    Reference,
    Rule,
    Sample,
    SampleError,
    SemAlignDataset,
    load_sample,
    pixel_to_token,
    remove_partial_writes,
    sample_points,
    save_sample,
    token_grid,
    token_pairs,
    validate,
)

SIZE = 32  # target side: a 2x2 grid of 16 px tokens, 4x4 of 8 px tokens
REF = 24  # reference side


def _reference(mask_cols: slice, target_points, category="object", colour=(200, 0, 0)) -> Reference:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[:, mask_cols] = True
    image = np.full((REF, REF, 3), 255, dtype=np.uint8)
    image[4:20, 4:20] = colour
    target_points = np.asarray(target_points, dtype=np.float64)
    ref_points = np.full_like(target_points, 10.5)
    return Reference(image, mask, ref_points, target_points, category, "thing")


def make_sample() -> Sample:
    """Two subjects: left half and right half of a 32 px target, points in their own tokens."""
    left = _reference(slice(0, 16), [[3.5, 3.5], [10.5, 20.5], [15.9, 31.9]], "human")
    right = _reference(slice(16, 32), [[16.0, 0.0], [30.5, 30.5]], "animal", colour=(0, 0, 200))
    target = np.full((SIZE, SIZE, 3), 90, dtype=np.uint8)
    return Sample("s1", target, "a human and an animal", [left, right], True, {"source": "test"})


def test_valid_sample_passes_at_any_nested_token_size():
    sample = make_sample()
    for token_size in (16, 8, 4, 1):
        assert validate(sample, token_size) is sample


def _set_point(sample, k, which, index, xy):
    getattr(sample.references[k], which)[index] = xy


# Each case breaks one rule of a valid sample; the error must name the sample and that rule.
BROKEN = {
    Rule.SAMPLE_ID: lambda s: setattr(s, "sample_id", "bad/id"),
    Rule.REFERENCE_COUNT: lambda s: setattr(s, "references", []),
    Rule.IMAGE_FORMAT: lambda s: setattr(s, "target", s.target.astype(np.float32)),
    Rule.CATEGORY: lambda s: setattr(s.references[1], "category", "robot"),
    Rule.MASK_SHAPE: lambda s: setattr(s.references[0], "mask", s.references[0].mask[:-1]),
    Rule.MASK_NONEMPTY: lambda s: s.references[1].mask.fill(False),
    Rule.POINTS_FORMAT: lambda s: setattr(s.references[0], "ref_points", s.references[0].ref_points[:2]),
    Rule.REF_POINT_INSIDE: lambda s: _set_point(s, 0, "ref_points", 1, [REF, 3.0]),
    Rule.TARGET_POINT_INSIDE: lambda s: _set_point(s, 1, "target_points", 0, [16.0, -0.5]),
    Rule.TARGET_POINT_IN_MASK: lambda s: _set_point(s, 0, "target_points", 0, [20.5, 3.5]),
    Rule.MASKS_DISJOINT: lambda s: s.references[1].mask.__setitem__((0, 15), True),
}


@pytest.mark.parametrize("rule", list(BROKEN))
def test_each_rule_rejects_a_crafted_bad_sample(rule):
    sample = make_sample()
    BROKEN[rule](sample)
    with pytest.raises(SampleError) as error:
        validate(sample)
    assert error.value.rule == rule
    assert f"'{sample.sample_id}'" in str(error.value) and f"'{rule}'" in str(error.value)
    assert isinstance(error.value, ValueError)


def test_too_many_references_and_non_finite_points_are_rejected():
    sample = make_sample()
    sample.references = sample.references[:1] * (MAX_REFERENCES + 1)
    with pytest.raises(SampleError, match=Rule.REFERENCE_COUNT):
        validate(sample)
    sample = make_sample()
    sample.references[0].ref_points[0, 0] = np.nan
    with pytest.raises(SampleError, match=Rule.POINTS_FORMAT):
        validate(sample)


def test_eq2_disjointness_is_per_token_not_per_pixel():
    sample = make_sample()
    # Hand pixel (x=12, y=2) to the right subject, with a point there: masks stay disjoint, but
    # the 16 px token 0 now holds points of both subjects (the left one's at (3.5, 3.5)).
    sample.references[0].mask[2, 12] = False
    sample.references[1].mask[2, 12] = True
    sample.references[1].target_points = np.vstack([sample.references[1].target_points, [12.5, 2.5]])
    sample.references[1].ref_points = np.vstack([sample.references[1].ref_points, [5.0, 5.0]])
    validate(sample, token_size=4)  # different 4 px tokens: (0, 0) vs (0, 3)
    with pytest.raises(SampleError) as error:
        validate(sample, token_size=16)
    assert error.value.rule == Rule.TOKENS_DISJOINT and "token 0" in str(error.value)


def test_overlapping_masks_are_allowed_when_not_exclusive():
    sample = make_sample()
    sample.references[1].mask[:, 15] = True  # overlaps the left mask, no points there
    with pytest.raises(SampleError, match=Rule.MASKS_DISJOINT):
        validate(sample)
    sample.masks_exclusive = False
    validate(sample)


def test_pixel_to_token_and_grid():
    assert token_grid(32, 48, 16) == (2, 3)
    assert token_grid(33, 48, 16) == (3, 3)  # a partial edge token still counts
    points = [[0.0, 0.0], [15.99, 0.0], [16.0, 0.0], [47.5, 31.5]]
    assert pixel_to_token(points, 16, grid_w=3).tolist() == [0, 0, 1, 5]
    with pytest.raises(ValueError):
        pixel_to_token([[48.0, 0.0]], 16, grid_w=3)
    with pytest.raises(ValueError):
        token_grid(32, 32, 0)


def test_token_pairs_keep_one_point_per_target_token():
    ref = _reference(slice(0, 32), [[1.5, 1.5], [3.5, 3.5], [20.5, 1.5], [20.5, 20.5]])
    ref.ref_points = np.array([[1.0, 1.0], [18.0, 1.0], [1.5, 1.5], [20.0, 20.0]])
    u, v = token_pairs(ref, (SIZE, SIZE), 16)
    assert v.tolist() == [0, 1, 3]  # target token 0 keeps its first point
    assert u.tolist() == [0, 0, 3]  # reference grid of 24 px at 16 px tokens: 2 wide
    u, v = token_pairs(ref, (SIZE, SIZE), 16, unique_reference=True)
    assert (u.tolist(), v.tolist()) == ([0, 3], [0, 3])  # the official dict: one target per ref token


def test_sample_points_is_deterministic_and_bounded():
    sample = make_sample()
    first = sample_points(sample, 2, np.random.default_rng(7))
    again = sample_points(sample, 2, np.random.default_rng(7))
    assert [len(u) for u, _ in first] == [2, 2]
    for (u1, v1), (u2, v2) in zip(first, again):
        assert np.array_equal(u1, u2) and np.array_equal(v1, v2)
    # Per token: the left subject has 3 points but only 2 distinct 16 px tokens.
    per_token = sample_points(sample, 10, np.random.default_rng(0), token_size=16)
    assert [len(v) for _, v in per_token] == [2, 2]
    assert all(len(v) == 0 for _, v in sample_points(sample, 0, np.random.default_rng(0)))


def test_round_trip_and_format(tmp_path):
    sample = make_sample()
    path = save_sample(sample, tmp_path / "data" / sample.sample_id)
    doc = json.loads((path / semalign.SAMPLE_JSON).read_text())
    assert doc["format"] == "semalign-ms" and doc["format_version"] == semalign.FORMAT_VERSION
    assert doc["references"][0]["correspondences"][0] == [10.5, 10.5, 3.5, 3.5]
    assert sorted(p.name for p in path.iterdir()) == [
        "mask_0.png",
        "mask_1.png",
        "ref_0.png",
        "ref_1.png",
        "sample.json",
        "target.png",
    ]
    loaded = load_sample(path)
    assert loaded == sample
    assert loaded != dataclasses.replace(sample, caption="other")
    with pytest.raises(FileExistsError):
        save_sample(sample, path)
    sample.caption = "replaced"
    save_sample(sample, path, overwrite=True)
    assert load_sample(path).caption == "replaced"
    assert not list(path.parent.glob(".partial-*"))


def test_save_refuses_invalid_samples_and_cleans_up_after_a_crash(tmp_path, monkeypatch):
    sample = make_sample()
    sample.references[0].category = "robot"
    with pytest.raises(SampleError):
        save_sample(sample, tmp_path / "s1")
    assert not (tmp_path / "s1").exists()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(semalign.Path, "write_text", crash)  # fails after the images are written
    with pytest.raises(OSError, match="disk full"):
        save_sample(make_sample(), tmp_path / "s1")
    assert list(tmp_path.iterdir()) == []  # neither a sample nor a temporary folder is left


def test_load_validates_and_names_the_sample(tmp_path):
    path = save_sample(make_sample(), tmp_path / "s1")
    doc = json.loads((path / "sample.json").read_text())
    doc["references"][0]["correspondences"][0][2:] = [20.5, 3.5]  # move v into the other mask
    (path / "sample.json").write_text(json.dumps(doc))
    with pytest.raises(SampleError) as error:
        load_sample(path)
    assert error.value.rule == Rule.TARGET_POINT_IN_MASK and error.value.sample_id == "s1"
    assert load_sample(path, check=False).references[0].target_points[0].tolist() == [20.5, 3.5]
    doc["format_version"] = 99
    (path / "sample.json").write_text(json.dumps(doc))
    with pytest.raises(SampleError, match="file-format"):
        load_sample(path)


def test_dataset_lists_finished_samples_only(tmp_path):
    for name in ("b", "a"):
        sample = make_sample()
        sample.sample_id = name
        save_sample(sample, tmp_path / name)
    (tmp_path / ".partial-c-123").mkdir()  # what a killed writer leaves behind
    (tmp_path / "notes").mkdir()  # a folder without sample.json is not a sample
    dataset = SemAlignDataset(tmp_path)
    assert len(dataset) == 2 and [s.sample_id for s in dataset] == ["a", "b"]
    assert dataset[1].sample_id == "b"
    assert remove_partial_writes(tmp_path) == 1 and not (tmp_path / ".partial-c-123").exists()
