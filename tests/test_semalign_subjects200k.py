"""The SemAlign-MS-Subjects200K reader, on a small fixture built in the official layout."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from mosaic_studio.mosaic.data.semalign import validate
from mosaic_studio.mosaic.data.subjects200k import (
    Subjects200KReader,
    agreeing_cells,
    annotation_paths,
    split_pair,
    subjects200k_uid,
)

PANEL = 32  # panel side (the real data: 512)
PAD = 4  # border (the real data: 8)
GRID = 8  # coordinate-map grid (the real data: 64), so one cell is 4 px here
TARGET_RGB, REFERENCE_RGB, BORDER_RGB = (200, 30, 30), (30, 30, 200), (128, 128, 128)


def _pair_image() -> Image.Image:
    """Target panel at (PAD, PAD), reference panel where the official loader crops it."""
    image = Image.new("RGB", (2 * PANEL + 3 * PAD, PANEL + 2 * PAD), BORDER_RGB)
    image.paste(TARGET_RGB, (PAD, PAD, PAD + PANEL, PAD + PANEL))
    image.paste(REFERENCE_RGB, (PANEL + 2 * PAD, PAD, 2 * PANEL + 2 * PAD, PAD + PANEL))
    return image


def _row(item="mug", caption="a mug on a table", quality=5):
    return {
        "image": _pair_image(),
        "description": {"item": item, "description_0": caption, "description_1": "a mug, studio shot"},
        "collection": "collection_2",
        "quality_assessment": {"compositeStructure": quality, "objectConsistency": 5, "imageQuality": 5},
    }


def _write_annotations(root, row):
    """Mask: the left half of the target (stored at 2x, as a mask of another size would be).
    DIFT map: cell n -> reference cell (n // GRID, (n + 3) % GRID); GeoAware agrees on even n."""
    target_panel, _ = split_pair(row["image"], PANEL, PAD)
    uid = subjects200k_uid(row["description"]["item"], row["description"]["description_0"], target_panel)
    mask_path, dift_path, geo_path = annotation_paths(root, uid)
    for path in (mask_path, dift_path, geo_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((2 * PANEL, 2 * PANEL), dtype=np.uint8)
    mask[:, :PANEL] = 255
    Image.fromarray(mask).save(mask_path)
    cells = np.arange(GRID * GRID)
    dift = np.stack([cells // GRID, (cells + 3) % GRID], axis=1)
    geo = dift.copy()
    geo[1::2, 1] = (geo[1::2, 1] + 1) % GRID  # disagree on odd cells
    torch.save(torch.from_numpy(dift), dift_path)
    torch.save(torch.from_numpy(geo), geo_path)
    return uid, dift


def test_reader_keeps_only_agreeing_cells_inside_the_mask(tmp_path):
    row = _row()
    uid, dift = _write_annotations(tmp_path, row)
    samples = list(Subjects200KReader(tmp_path, rows=[row], panel_size=PANEL, padding=PAD))
    assert len(samples) == 1
    sample = samples[0]
    assert sample.sample_id == uid and sample.caption == "a mug on a table"
    assert (sample.target == TARGET_RGB).all() and (sample.references[0].image == REFERENCE_RGB).all()
    reference = sample.references[0]
    assert reference.category == "object" and reference.label == "mug"

    rows, cols = np.divmod(np.arange(GRID * GRID), GRID)
    expected = np.flatnonzero((np.arange(GRID * GRID) % 2 == 0) & (cols < GRID // 2))  # agree & in mask
    cell = PANEL / GRID
    assert np.array_equal(reference.target_points, np.stack([(cols + 0.5) * cell, (rows + 0.5) * cell], 1)[expected])
    ref_y, ref_x = dift[expected, 0], dift[expected, 1]
    assert np.array_equal(reference.ref_points, np.stack([(ref_x + 0.5) * cell, (ref_y + 0.5) * cell], 1))
    validate(sample)


def test_agreement_and_mask_tests_are_independent():
    dift = np.array([[0, 0], [1, 1], [2, 2], [3, 3]])
    geo = np.array([[0, 0], [1, 0], [2, 2], [3, 3]])
    mask = np.ones((4, 4), dtype=bool)
    mask[2:, 2:] = False  # cell 3 (bottom right of the 2x2 grid) is outside
    assert agreeing_cells(dift, geo, mask).tolist() == [0, 2]


def test_missing_annotations_raise_or_are_skipped_and_low_quality_rows_are_filtered(tmp_path):
    annotated, missing, poor = _row(), _row(item="hat"), _row(item="cup", quality=3)
    _write_annotations(tmp_path, annotated)
    options = {"panel_size": PANEL, "padding": PAD}
    with pytest.raises(FileNotFoundError, match="missing annotation file"):
        list(Subjects200KReader(tmp_path, rows=[annotated, missing], **options))
    reader = Subjects200KReader(tmp_path, rows=[poor, missing, annotated], missing="skip", **options)
    assert [s.references[0].label for s in reader] == ["mug"]
    assert len(reader.skipped) == 1
    assert len(list(Subjects200KReader(tmp_path, rows=[poor], quality_filter=False, missing="skip", **options))) == 0


def test_uid_follows_the_official_key():
    panel = Image.new("RGB", (8, 8), (1, 2, 3))
    assert subjects200k_uid("a", "b", panel) != subjects200k_uid("a", "c", panel)
    assert len(subjects200k_uid("a", "b", panel)) == 64  # a full sha256 hex digest


def test_reads_parquet_shards_with_hugging_face_image_structs(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    row = _row()
    _write_annotations(tmp_path, row)
    encoded = io.BytesIO()
    row["image"].save(encoded, format="PNG")
    row = {**row, "image": {"bytes": encoded.getvalue(), "path": None}}
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "data" / "train-00000.parquet")
    samples = list(Subjects200KReader(tmp_path, panel_size=PANEL, padding=PAD))
    assert len(samples) == 1 and len(samples[0].references[0].target_points) == GRID * GRID // 4
