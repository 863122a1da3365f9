"""Synthetic world: determinism, exact correspondences and masks, Eq. 2, splits, CLI, speed."""

import time

import numpy as np
import pytest

from mosaic_studio.mosaic.data.semalign import CATEGORIES, SemAlignDataset, load_sample, save_sample, validate
from mosaic_studio.world import synthetic
from mosaic_studio.world.shapes import KINDS, identity_split, make_identity, shade
from mosaic_studio.world.synthetic import WorldConfig, generate_sample

CONFIG = WorldConfig(target_size=128, ref_size=64)
SEEDS_CHECKED = 24  # samples whose geometry is re-derived from scratch


def _local(matrix, points):
    """Subject-local points from pixel points, inverting a (2, 3) affine independently."""
    matrix = np.asarray(matrix)
    return np.linalg.solve(matrix[:, :2], (points - matrix[:, 2]).T).T


def _coverage_and_colour(subject, size):
    """Re-render one subject over the whole target from its stored transform."""
    ys, xs = np.mgrid[0:size, 0:size]
    local = _local(subject["local_to_target"], np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1))
    covered, colour = shade(make_identity(subject["identity"]), local[:, 0], local[:, 1])
    return covered.reshape(size, size), colour.reshape(size, size, 3)


def test_same_seed_same_bytes_other_index_other_sample(tmp_path):
    a, b = generate_sample(3, 5, "train", CONFIG), generate_sample(3, 5, "train", CONFIG)
    assert a == b
    assert generate_sample(3, 6, "train", CONFIG) != a
    assert generate_sample(4, 5, "train", CONFIG) != a
    first, second = save_sample(a, tmp_path / "1" / a.sample_id), save_sample(b, tmp_path / "2" / b.sample_id)
    for path in sorted(first.iterdir()):
        assert path.read_bytes() == (second / path.name).read_bytes(), path.name


@pytest.mark.parametrize("index", range(SEEDS_CHECKED))
def test_correspondences_masks_and_pixels_are_exact(index):
    sample = generate_sample(11, index, "train", CONFIG)
    size = CONFIG.target_size
    subjects = sample.meta["subjects"]
    assert len(subjects) == len(sample.references)
    # Masks: re-derive the front-most owner of every pixel from the stored transforms.
    owner = np.full((size, size), -1)
    colours = {}
    for subject in sorted(subjects, key=lambda s: s["draw_order"]):
        covered, colours[subject["draw_order"]] = _coverage_and_colour(subject, size)
        owner[covered] = subject["draw_order"]
    claimed = np.zeros((size, size), dtype=int)
    agreement = []
    for reference, subject in zip(sample.references, subjects):
        assert np.array_equal(reference.mask, owner == subject["draw_order"])
        claimed += reference.mask
        # The target shows the subject's own colour wherever it is visible.
        assert np.array_equal(sample.target[reference.mask], colours[subject["draw_order"]][reference.mask])
        # u and v are the same subject-local point, via two independent inverse transforms.
        local_u = _local(subject["local_to_reference"], reference.ref_points)
        local_v = _local(subject["local_to_target"], reference.target_points)
        np.testing.assert_allclose(local_u, local_v, atol=1e-9)
        covered, colour = shade(make_identity(subject["identity"]), local_v[:, 0], local_v[:, 1])
        assert covered.all()
        v_pixels = np.floor(reference.target_points).astype(int)
        assert np.array_equal(sample.target[v_pixels[:, 1], v_pixels[:, 0]], colour)  # v is a pixel centre
        # u is not a pixel centre: its reference pixel shows the same colour unless u is within
        # a pixel of a pattern or part boundary.
        u_pixels = np.floor(reference.ref_points).astype(int)
        same = np.all(reference.image[u_pixels[:, 1], u_pixels[:, 0]] == colour, axis=1)
        assert same.mean() > 0.6  # small, finely patterned subjects have many boundary points
        agreement.append(same.mean())
    assert np.mean(agreement) > 0.85
    assert claimed.max() <= 1  # visible regions are disjoint


def test_eq2_holds_at_the_token_size_and_its_divisors():
    for index in range(40):
        sample = generate_sample(2, index, "train", CONFIG)
        for token_size in (16, 8, 4, 2, 1):
            validate(sample, token_size)
        assert all(len(r.target_points) > 0 for r in sample.references)
    validate(generate_sample(2, 0, "train", WorldConfig(target_size=96, ref_size=48, token_size=32)), 32)


def test_scenes_cover_every_subject_count_and_category():
    samples = [generate_sample(0, i, "train", CONFIG) for i in range(120)]
    counts = {len(s.references) for s in samples}
    assert counts == set(range(1, 7))
    assert {r.category for s in samples for r in s.references} == set(CATEGORIES)
    assert any(s.meta["subjects"][0]["flipped"] for s in samples)


def test_references_are_upright_on_white_and_fill_ninety_percent():
    sample = generate_sample(0, 1, "train", CONFIG)
    for reference in sample.references:
        image = reference.image
        subject = np.any(image != 255, axis=2)
        rows, cols = np.flatnonzero(subject.any(1)), np.flatnonzero(subject.any(0))
        longer = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
        assert abs(longer - 0.9 * CONFIG.ref_size) <= 2
        assert (image[0] == 255).all() and (image[-1] == 255).all()


def test_captions_name_kind_and_colour_only():
    """Each subject appears as "a <coarse colour> <kind>" and nothing else describes it, so
    pattern, accent colour and detail must be read from the reference."""
    for index in range(30):
        sample = generate_sample(5, index, "train", CONFIG)
        names = [
            f"{'an' if s['colour'][0] in 'aeiou' else 'a'} {s['colour']} {r.label}"
            for r, s in zip(sample.references, sample.meta["subjects"])
        ]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        assert sample.caption == f"{listed} on {synthetic.BACKGROUNDS[sample.meta['background']]}"
        assert all(r.label in KINDS[r.category] for r in sample.references)


def test_heldout_identities_never_appear_in_training():
    train = {s["identity"] for i in range(150) for s in generate_sample(0, i, "train", CONFIG).meta["subjects"]}
    heldout = {s["identity"] for i in range(60) for s in generate_sample(0, i, "heldout", CONFIG).meta["subjects"]}
    assert train and heldout and not train & heldout
    assert {identity_split(i) for i in train} == {"train"}
    assert {identity_split(i) for i in heldout} == {"heldout"}
    share = np.mean([identity_split(i) == "heldout" for i in range(5000)])
    assert 0.07 < share < 0.13


def test_identities_are_a_pure_function_of_the_id():
    a = make_identity(12345)
    make_identity.cache_clear()
    b = make_identity(12345)
    assert a is not b
    assert (a.kind, a.main_name, a.pattern, a.detail, a.parts) == (b.kind, b.main_name, b.pattern, b.detail, b.parts)
    assert np.array_equal(a.palette, b.palette)


def test_cli_writes_a_resumable_dataset(tmp_path, capsys):
    out = tmp_path / "world"
    args = ["--out", str(out), "--seed", "1", "--target-size", "64", "--ref-size", "32"]
    synthetic.main(args + ["--num", "3"])
    first = (out / "train-1-0000000" / "target.png").read_bytes()
    (out / ".partial-train-1-0000003-x").mkdir()  # a sample a killed run was writing
    synthetic.main(args + ["--num", "5"])
    assert "3 samples present, 2 to write" in capsys.readouterr().out
    dataset = SemAlignDataset(out)
    assert [s.sample_id for s in dataset] == [f"train-1-{i:07d}" for i in range(5)]
    assert (out / "train-1-0000000" / "target.png").read_bytes() == first
    assert not list(out.glob(".partial-*"))
    assert load_sample(out / "train-1-0000004") == generate_sample(1, 4, "train", WorldConfig(64, 32))
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(out), "--num", "5", "--seed", "2"])  # other settings


def test_generation_is_fast():
    generate_sample(0, 0, "train", CONFIG)  # imports and caches warm
    start = time.perf_counter()
    for index in range(200):
        generate_sample(9, index, "train", CONFIG)
    assert time.perf_counter() - start < 5.0  # ~0.7 s here; loose for slow CI machines
