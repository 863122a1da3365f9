"""`annotator compose`: multi-subject samples from single-subject ones, and their use in training.

Sources are one-subject scenes of the synthetic world. For the colour checks each source's
reference is remade as a crop of its own target (u = v - the crop's whole-pixel corner), so a
reference point and its target point hold the same pixel exactly; composing with nearest
resampling at integer scales (1 and 2) and whole-pixel offsets then copies source pixels
exactly, and every composed target point must hold the colour of its reference point.
"""

import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from train_fixtures import FAST

from mosaic_studio.annotator.cli import main
from mosaic_studio.annotator.compose import ComposeConfig, choose_group
from mosaic_studio.mosaic.data.semalign import (
    Reference,
    Sample,
    list_sample_dirs,
    load_sample,
    pixel_to_token,
    save_sample,
    token_grid,
    validate,
)
from mosaic_studio.train.config import ConfigError, DataConfig, load_config
from mosaic_studio.train.data import BatchSource, generate_exact
from mosaic_studio.world.synthetic import WorldConfig

T = 16  # Eq. 2 token size of the composed samples (FLUX's)
SOURCES = 8
WORLD = WorldConfig(target_size=64, ref_size=32, min_subjects=1, max_subjects=1, points_per_subject=64)


def one_subject(index):
    return generate_exact(7, index, "train", WORLD, 1)


def exact_copy(sample):
    """The sample with its reference replaced by a crop of its target around the subject."""
    ref = sample.references[0]
    rows, cols = np.nonzero(ref.mask)
    y0, x0, y1, x1 = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
    crop = np.where(ref.mask[y0:y1, x0:x1, None], sample.target[y0:y1, x0:x1], 255).astype(np.uint8)
    u = ref.target_points - np.array([x0, y0], dtype=np.float64)
    reference = Reference(crop, ref.mask, u, ref.target_points, ref.category, ref.label)
    return Sample(sample.sample_id, sample.target, sample.caption, [reference], True, {})


@pytest.fixture(scope="module")
def world_sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("world1")
    for i in range(SOURCES):
        sample = one_subject(i)
        save_sample(sample, folder / sample.sample_id)
    return folder


@pytest.fixture(scope="module")
def exact_sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("exact")
    for i in range(SOURCES):
        sample = exact_copy(one_subject(i))
        pixels = np.floor(sample.references[0].ref_points).astype(int)
        targets = np.floor(sample.references[0].target_points).astype(int)
        # the premise of the colour check, on the sources themselves
        assert np.array_equal(
            sample.references[0].image[pixels[:, 1], pixels[:, 0]], sample.target[targets[:, 1], targets[:, 0]]
        )
        save_sample(sample, folder / sample.sample_id)
    return folder


def compose(data, out, *extra):
    return main(["compose", "--data", str(data), "--out", str(out), *extra])


def composed(folder):
    return [load_sample(path) for path in list_sample_dirs(folder)]


def files_of(folder):
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    }


# --- exactness --------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1, 2])
def test_composed_points_hold_the_colour_of_their_reference_points(exact_sources, tmp_path, scale, capsys):
    out = tmp_path / "out"
    size = 96 * scale
    args = ["--num", "6", "--size", str(size), "--scale", f"{scale},{scale}", "--resample", "nearest"]
    assert compose(exact_sources, out, *args, "--max-subjects", "4") == 0
    samples = composed(out)
    assert len(samples) == 6
    checked = 0
    for sample in samples:
        assert 2 <= len(sample.references) <= 4
        for ref, subject in zip(sample.references, sample.meta["subjects"]):
            u = np.floor(ref.ref_points).astype(int)
            v = np.floor(ref.target_points).astype(int)
            assert np.array_equal(sample.target[v[:, 1], v[:, 0]], ref.image[u[:, 1], u[:, 0]])
            checked += len(u)
            # every kept pair is a source pair with v moved by the recorded affine, exactly
            source = load_sample(exact_sources / subject["source"]).references[0]
            (s, _, tx), (_, s_y, ty) = subject["source_to_target"]
            assert s == s_y == scale and subject["offset"] == [tx, ty] and float(tx).is_integer()
            moved = {(tuple(a), tuple(b)) for a, b in zip(source.ref_points, source.target_points * s + (tx, ty))}
            assert {(tuple(a), tuple(b)) for a, b in zip(ref.ref_points, ref.target_points)} <= moved
            assert np.array_equal(ref.image, source.image)
    assert checked > 200
    capsys.readouterr()


def test_points_follow_the_pixels_exactly_at_any_scale(world_sources, tmp_path, capsys):
    """World sources keep their own references; both transforms of every subject are in the
    world's meta, so u and the composed v' must be the same subject-local point."""
    out = tmp_path / "out"
    assert compose(world_sources, out, "--num", "4", "--size", "128", "--scale", "0.6,1.7") == 0
    for sample in composed(out):
        for ref, subject in zip(sample.references, sample.meta["subjects"]):
            world = load_sample(world_sources / subject["source"]).meta["subjects"][0]
            composed_affine = np.array(subject["source_to_target"] + [[0, 0, 1]])
            to_target = composed_affine @ np.array(world["local_to_target"] + [[0, 0, 1]])
            to_reference = np.array(world["local_to_reference"] + [[0, 0, 1]])
            homogeneous = np.ones((len(ref.ref_points), 1))
            from_v = np.linalg.solve(to_target, np.hstack([ref.target_points, homogeneous]).T)
            from_u = np.linalg.solve(to_reference, np.hstack([ref.ref_points, homogeneous]).T)
            assert np.allclose(from_v, from_u, atol=1e-9)
    capsys.readouterr()


def test_visible_points_are_kept_and_eq2_holds(world_sources, tmp_path, capsys):
    out = tmp_path / "out"
    assert compose(world_sources, out, "--num", "6", "--size", "96", "--scale", "0.8,1.3") == 0
    overlapping = 0
    for sample in composed(out):
        validate(sample, T)  # every rule of the format, Eq. 2 at 16 px included
        height, width = sample.target.shape[:2]
        for token_size in (T, T // 2):  # and at the divisors of the token size
            _, grid_w = token_grid(height, width, token_size)
            claimed = [set(pixel_to_token(r.target_points, token_size, grid_w).tolist()) for r in sample.references]
            assert all(not (a & b) for i, a in enumerate(claimed) for b in claimed[i + 1 :])
        masks = np.stack([r.mask for r in sample.references])
        assert masks.sum(axis=0).max() == 1  # the front-most subject owns each pixel
        overlapping += sum(s["points"]["kept"] < s["points"]["source"] for s in sample.meta["subjects"])
        # A source point on a pixel of its own visible mask, in a token no other subject touches,
        # must have been kept (independent of the majority rule for shared tokens).
        rows, cols = np.indices((height, width))
        tokens = (rows // T) * token_grid(height, width, T)[1] + cols // T
        for k, (ref, subject) in enumerate(zip(sample.references, sample.meta["subjects"])):
            source = load_sample(world_sources / subject["source"]).references[0]
            (s, _, tx), (_, _, ty) = subject["source_to_target"]
            moved = source.target_points * s + (tx, ty)
            inside = np.all((moved >= 0) & (moved < (width, height)), axis=1)
            px = np.floor(moved[inside]).astype(int)
            others = np.zeros_like(ref.mask)
            for j, other in enumerate(sample.references):
                if j != k:
                    others |= other.mask
            shared = np.isin(tokens[px[:, 1], px[:, 0]], tokens[others])
            must_keep = ref.mask[px[:, 1], px[:, 0]] & ~shared
            kept = {tuple(p) for p in ref.target_points}
            assert all(tuple(p) in kept for p in moved[inside][must_keep])
    assert overlapping > 0  # some subjects were occluded or cut by the canvas: the rule was exercised
    assert all(len(s.caption.split(" and ")) >= len(s.references) for s in composed(out))
    capsys.readouterr()


def test_provenance_and_captions(world_sources, tmp_path, capsys):
    out = tmp_path / "out"
    assert compose(world_sources, out, "--num", "3", "--size", "96", "--seed", "5", "--background", "inpaint") == 0
    for sample in composed(out):
        meta = sample.meta
        assert (meta["seed"], meta["composer"]) == (5, "mosaic_studio.annotator.compose")
        assert sample.sample_id == f"composed-5-{meta['index']:07d}"
        sources = [s["source"] for s in meta["subjects"]]
        assert len(set(sources)) == len(sources) and meta["background"]["source"] in sources + meta["left_out"]
        captions = [load_sample(world_sources / name).caption for name in sources]
        assert sample.caption == " and ".join(captions)
        assert [r.category for r in sample.references] == [s["category"] for s in meta["subjects"]]
        assert sorted(s["draw_order"] for s in meta["subjects"]) == list(range(len(sources)))
        assert meta["point_info"][0]["source"] == ["composed"] * len(sample.references[0].ref_points)
    capsys.readouterr()


def test_groups_are_stratified_by_category_and_never_repeat_a_subject():
    by_category = {"human": ["h0"], "object": [f"o{i}" for i in range(12)], "animal": ["a0", "a1"]}
    identity = {"a0": "dog", "a1": "dog"}  # two samples of one subject
    config = ComposeConfig(size=64, min_subjects=2, max_subjects=2)
    groups = [choose_group(by_category, np.random.default_rng([9, i]), config, identity) for i in range(600)]
    slots = [name[0] for group in groups for name in group]
    # Uniform over categories, not over sources. Slot 1 is human with 1/3; slot 2 with 1/3 after an
    # object (three categories left) and 1/2 after the dog (its other sample is gone, so animals
    # are used up): 1/3 · 1/3 + 1/3 · 1/2 = 5/18. Humans fill (1/3 + 5/18) / 2 = 11/36 of the slots,
    # the dog likewise, objects 14/36; by source count humans would fill 1/15.
    share = {c: slots.count(c) / len(slots) for c in "hoa"}
    assert all(abs(share[c] - expected) < 0.03 for c, expected in (("h", 11 / 36), ("a", 11 / 36), ("o", 14 / 36)))
    assert not any({"a0", "a1"} <= set(group) for group in groups)
    assert all(len(set(group)) == 2 for group in groups)


# --- the Subjects200K layout ------------------------------------------------------------------


def test_composes_the_subjects200k_layout(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from tests.test_semalign_subjects200k import PAD, PANEL, TARGET_RGB, _row, _write_annotations

    root = tmp_path / "s200k"
    rows = [_row(item=item, caption=f"a {item} on a table") for item in ("mug", "hat", "cup")]
    for row in rows:
        _write_annotations(root, row)
    encoded = []
    for row in rows:
        buffer = io.BytesIO()
        row["image"].save(buffer, format="PNG")
        encoded.append({**row, "image": {"bytes": buffer.getvalue(), "path": None}})
    (root / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(encoded), root / "data" / "train-0.parquet")
    out, media = tmp_path / "out", tmp_path / "media"
    layout = ["--format", "subjects200k", "--panel-size", str(PANEL), "--padding", str(PAD)]
    sizes = ["--num", "3", "--size", "64", "--scale", "1,1", "--resample", "nearest", "--background", "plain"]
    assert compose(root, out, *layout, *sizes) == 1
    assert "--media" in capsys.readouterr().err
    assert compose(root, out, *layout, "--media", str(media), *sizes) == 0
    assert len(list_sample_dirs(media)) == 3
    for sample in composed(out):
        assert len(sample.references) >= 2
        assert {r.label for r in sample.references} <= {"mug", "hat", "cup"}
        for ref in sample.references:
            v = np.floor(ref.target_points).astype(int)
            assert len(v) and (sample.target[v[:, 1], v[:, 0]] == TARGET_RGB).all()
        assert all(f"a {r.label} on a table" in sample.caption for r in sample.references)


# --- bad sources ------------------------------------------------------------------------------


def test_bad_sources_are_reported_by_name_and_never_used(world_sources, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(world_sources, data)
    names = sorted(p.name for p in list_sample_dirs(data))
    no_mask, empty_mask, no_points = names[:3]
    (data / no_mask / "mask_0.png").unlink()
    Image.fromarray(np.zeros((64, 64), dtype=bool)).save(data / empty_mask / "mask_0.png")
    doc = json.loads((data / no_points / "sample.json").read_text())
    doc["references"][0]["correspondences"] = []
    (data / no_points / "sample.json").write_text(json.dumps(doc))
    two = generate_exact(3, 0, "train", WorldConfig(target_size=64, ref_size=32, min_subjects=2, max_subjects=2), 2)
    save_sample(two, data / "two-subjects")
    out = tmp_path / "out"
    assert compose(data, out, "--num", "8", "--size", "96") == 0
    printed = capsys.readouterr().out
    assert f"skipped source {no_mask}: has no mask" in printed
    assert f"skipped source {empty_mask}: its mask is empty" in printed
    assert f"skipped source {no_points}: has no correspondence points" in printed
    assert "skipped source two-subjects: has 2 references; compose takes single-subject samples" in printed
    used = {s["source"] for sample in composed(out) for s in sample.meta["subjects"]}
    assert used and not used & {no_mask, empty_mask, no_points, "two-subjects"}

    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    for name in (no_mask, empty_mask, "two-subjects"):
        shutil.copytree(data / name, only_bad / name)
    assert compose(only_bad, tmp_path / "none", "--num", "1") == 1
    assert "0 usable single-subject samples" in capsys.readouterr().err


def test_a_source_broken_beyond_its_json_is_named_when_used(world_sources, tmp_path, capsys):
    args = ["--num", "3", "--size", "96"]
    assert compose(world_sources, tmp_path / "clean", *args) == 0
    broken = composed(tmp_path / "clean")[0].meta["subjects"][0]["source"]  # a source sample 0 uses
    data = tmp_path / "data"
    shutil.copytree(world_sources, data)
    (data / broken / "target.png").write_bytes(b"not a png")  # sample.json and mask still fine
    out = tmp_path / "out"
    capsys.readouterr()
    assert compose(data, out, *args) == 1
    assert f"source {broken!r} is broken" in capsys.readouterr().err
    assert compose(data, out, *args, "--on-error", "skip") == 0
    report = capsys.readouterr()
    assert f"skipped composed-0-0000000: source {broken!r} is broken" in report.out + report.err
    assert "composed-0-0000000" not in [p.name for p in list_sample_dirs(out)]
    assert all(broken not in {s["source"] for s in x.meta["subjects"]} for x in composed(out))


# --- determinism, resume, shards --------------------------------------------------------------


def test_deterministic_resumable_and_sharded(world_sources, tmp_path, capsys):
    args = ["--num", "5", "--size", "96", "--seed", "3"]
    whole, again, other = tmp_path / "whole", tmp_path / "again", tmp_path / "other"
    assert compose(world_sources, whole, *args) == 0
    assert compose(world_sources, again, *args) == 0
    assert files_of(whole) == files_of(again)  # same seed: identical bytes
    assert compose(world_sources, other, "--num", "5", "--size", "96", "--seed", "4") == 0
    assert {k: v for k, v in files_of(other).items() if k.endswith("target.png")} != {
        k: v for k, v in files_of(whole).items() if k.endswith("target.png")
    }

    resumed = tmp_path / "resumed"
    assert compose(world_sources, resumed, "--num", "3", "--size", "96", "--seed", "3") == 0
    shutil.rmtree(resumed / "composed-3-0000001")  # as a run killed mid-write leaves it
    (resumed / ".partial-composed-3-0000001-x1").mkdir()
    capsys.readouterr()
    assert compose(world_sources, resumed, *args) == 0  # and a larger --num extends the run
    assert "2 already composed, 3 to do" in capsys.readouterr().out
    assert files_of(resumed) == files_of(whole) and not list(resumed.glob(".partial-*"))

    sharded = tmp_path / "sharded"
    assert compose(world_sources, sharded, *args, "--rank", "1", "--world-size", "2") == 0
    assert [p.name for p in list_sample_dirs(sharded)] == ["composed-3-0000001", "composed-3-0000003"]
    assert compose(world_sources, sharded, *args, "--rank", "0", "--world-size", "2") == 0
    assert files_of(sharded) == files_of(whole)

    capsys.readouterr()
    assert compose(world_sources, whole, "--num", "5", "--size", "128", "--seed", "3") == 1
    assert "records other settings" in capsys.readouterr().err


def test_bad_settings_are_refused(world_sources, tmp_path, capsys):
    with pytest.raises(SystemExit):  # argparse: usage error
        compose(world_sources, tmp_path / "out", "--num", "1", "--scale", "0.5")
    assert "expected 2 comma-separated floats" in capsys.readouterr().err
    for bad, message in ((["--min-subjects", "1"], "min_subjects"), (["--scale", "0,1"], "scale must be a range")):
        assert compose(world_sources, tmp_path / "out", "--num", "1", *bad) == 1
        assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- training on composed samples -------------------------------------------------------------


@pytest.fixture(scope="module")
def composed_set(world_sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("composed")
    assert compose(world_sources, out, "--num", "4", "--size", "64", "--scale", "0.5,0.9", "--max-subjects", "3") == 0
    return out


def test_composed_fraction_of_the_batches_comes_from_the_composed_folder(world_sources, composed_set):
    config = DataConfig(
        source=str(world_sources),
        composed=str(composed_set),
        composed_fraction=0.5,
        target_size=64,
        ref_size=32,
        min_subjects=2,
        max_subjects=3,
    )
    source = BatchSource(config, batch_size=1, token_size=8, with_references=True, points=4)
    counts = [source.batch(step).num_refs for step in range(30)]
    assert [source.batch(step).num_refs for step in range(30)] == counts  # deterministic
    assert 5 < sum(k >= 2 for k in counts) < 25 and set(counts) <= {1, 2, 3}  # single-subject source: K = 1
    with pytest.raises(ConfigError, match="data.composed_fraction must be > 0"):
        DataConfig(composed=str(composed_set))
    with pytest.raises(ConfigError, match="data.composed must be a folder"):
        DataConfig(composed_fraction=0.5)
    with pytest.raises(ConfigError, match="data.composed .* is not a dataset folder"):
        BatchSource(DataConfig(composed=str(composed_set / "missing"), composed_fraction=0.5), 1, 8, True, 4)


def _mdl_column(run_dir):
    with (run_dir / "log.csv").open() as handle:
        return [float(row["mdl"]) for row in csv.DictReader(handle)]


def test_a_lora_step_on_composed_samples_has_a_nonzero_mdl(tiny_dir, world_sources, composed_set, tmp_path):
    from mosaic_studio.train.trainer import train

    common = [*FAST, "stage=lora", f"model.pretrained={tiny_dir}", f"data.source={world_sources}", "optim.max_steps=2"]
    alone = tmp_path / "alone"
    train(load_config(None, [*common, f"run.output_dir={alone}"]))
    assert _mdl_column(alone) == [0.0, 0.0]  # single-subject data: MDL has nothing to contrast
    mixed = tmp_path / "mixed"
    composed_keys = [f"data.composed={composed_set}", "data.composed_fraction=1", "data.min_subjects=2"]
    train(load_config(None, [*common, *composed_keys, f"run.output_dir={mixed}"]))
    assert all(value != 0.0 for value in _mdl_column(mixed))
