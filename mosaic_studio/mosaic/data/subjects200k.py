"""Reader for the authors' SemAlign-MS-Subjects200K release, producing SemAlign-MS `Sample`s.

Layout, as the official loader (`my_datasets/Subject200k_dataset.py`) reads it and the
official preprocessing (`preprocess/{dift,geoaware}_point_matching.py`) writes it:

    ROOT/data/*.parquet              Subjects200K rows: `image` (a side-by-side pair), `description`
                                     {item, description_0, description_1}, `collection`,
                                     `quality_assessment` {compositeStructure, objectConsistency,
                                     imageQuality}
    ROOT/mask/<uid>.png              the subject's mask in the target panel (bright = subject)
    ROOT/coord/dift/<uid>_ref0.pt    torch int64 tensor (G*G, 2) from DIFT matching
    ROOT/coord/geoaware/<uid>_ref0.pt   the same from GeoAware matching

Panels. The pair image holds the target in box (p, p, S+p, S+p) and the reference in
(S+2p, p, 2S+2p, S+p) (left, top, right, bottom; S = 512, p = 8); the maps were computed on
exactly these crops. Caption = description_0 (the target panel's). One reference per pair,
hence the `_ref0` suffix.

uid = sha256_hex(f"{item}_{description_0}_{h}"), h = the first 8 hex digits of sha256 of
the target panel saved as PNG by Pillow with default options. Those PNG bytes may differ
between Pillow/zlib builds; when the files are not found, pass `uid` in the row.

Coordinate maps. Row n is target cell n of a G x G grid over the target panel, row-major
(G = 64: both matchers ran at 1024 px with one feature per 16 px); its value (y, x) is the
row and column of the best-matching cell of the G x G grid over the reference panel.

Kept correspondences: target cell n is kept when both maps give the same (y, x) and the cell
lies in the mask; it is stored as v = the cell's centre in target pixels and u = the matched
cell's centre in reference pixels. Deliberate differences from the official loader:
  - the mask is tested at the cell's centre pixel (torch's nearest interpolation there reads
    the cell's top-left pixel), so the stored v is itself inside the mask as the format needs;
  - cells are kept on the native G grid and stored as pixels, so the trainer derives its own
    token grid; the official bilinearly resizes the maps to the training grid before comparing;
  - every agreeing cell is kept; the official {ref token: target token} dict keeps one target
    per reference token: `mosaic.semalign.token_pairs(..., unique_reference=True)` does that;
  - a missing mask or map is an error (or a skip with missing="skip"), where the official
    silently falls back to an all-ones mask or no correspondences; samples are validated;
  - Subjects200K has no category tag (the paper counts 92% objects): category="object".
"""

from __future__ import annotations

import glob
import hashlib
import io
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mosaic_studio.mosaic.data.semalign import MASK_THRESHOLD, Reference, Sample, validate

PANEL_SIZE = 512  # side of each panel of a Subjects200K pair image
PANEL_PADDING = 8  # border around the panels, as the official crops assume
REFERENCE_SLOT = 0  # Subjects200K pairs have a single reference: files end in _ref0.pt
UID_IMAGE_HASH_DIGITS = 8  # the official key keeps 8 hex digits of the image hash
HIGH_QUALITY_COLLECTION = "collection_2"
QUALITY_KEYS = ("compositeStructure", "objectConsistency", "imageQuality")
MIN_QUALITY = 5  # the official filter keeps rows scoring at least this on every key
DEFAULT_CATEGORY = "object"
MISSING_POLICIES = ("error", "skip")


def annotation_paths(root, uid: str) -> tuple[Path, Path, Path]:
    """(mask, dift map, geoaware map) paths of one pair."""
    root = Path(root)
    name = f"{uid}_ref{REFERENCE_SLOT}.pt"
    return root / "mask" / f"{uid}.png", root / "coord" / "dift" / name, root / "coord" / "geoaware" / name


def split_pair(image: Image.Image, panel_size: int = PANEL_SIZE, padding: int = PANEL_PADDING):
    """(target panel, reference panel) cropped from a Subjects200K pair image, both RGB."""
    s, p = panel_size, padding
    if image.width < 2 * s + 2 * p or image.height < s + p:
        raise ValueError(f"pair image {image.size} is too small for two {s}px panels with {p}px padding")
    image = image.convert("RGB")
    return image.crop((p, p, s + p, s + p)), image.crop((s + 2 * p, p, 2 * s + 2 * p, s + p))


def subjects200k_uid(item: str, target_caption: str, target_panel: Image.Image) -> str:
    """The official file key of a pair (see the module docstring)."""
    buffer = io.BytesIO()
    target_panel.save(buffer, format="PNG")
    image_hash = hashlib.sha256(buffer.getvalue()).hexdigest()[:UID_IMAGE_HASH_DIGITS]
    return hashlib.sha256(f"{item}_{target_caption}_{image_hash}".encode()).hexdigest()


def is_high_quality(row: dict) -> bool:
    """The official row filter: collection_2 with every quality score >= MIN_QUALITY."""
    scores = row.get("quality_assessment") or {}
    return row.get("collection") == HIGH_QUALITY_COLLECTION and all(
        scores.get(k, 0) >= MIN_QUALITY for k in QUALITY_KEYS
    )


def _open_row_image(value) -> Image.Image:
    """A row's `image`: PIL image, encoded bytes, a Hugging Face {bytes, path} dict, or a path."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value))
    return Image.open(value)


def load_coordinate_map(path) -> np.ndarray:
    """A (G*G, 2) int64 array of (y, x) reference cells from an official .pt file."""
    import torch  # only this reader needs torch; the format module stays numpy-only

    array = torch.load(path, map_location="cpu", weights_only=True).numpy().astype(np.int64)
    grid = math.isqrt(array.shape[0]) if array.ndim == 2 else 0
    if array.ndim != 2 or array.shape[1] != 2 or grid * grid != array.shape[0]:
        raise ValueError(f"{path}: expected a (G*G, 2) coordinate map, got shape {array.shape}")
    if array.min(initial=0) < 0 or array.max(initial=0) >= grid:
        raise ValueError(f"{path}: coordinates outside the {grid}x{grid} grid")
    return array


def cell_centres(grid: int, height: int, width: int) -> np.ndarray:
    """(G*G, 2) centres (x, y) in pixels of a row-major G x G grid over a height x width image."""
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    return np.stack([(cols + 0.5) * width / grid, (rows + 0.5) * height / grid], axis=1)


def agreeing_cells(dift: np.ndarray, geoaware: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Target cells kept: both maps agree on (y, x) and the cell's centre pixel is in `mask`."""
    if dift.shape != geoaware.shape:
        raise ValueError(f"DIFT map {dift.shape} and GeoAware map {geoaware.shape} differ in shape")
    grid = math.isqrt(dift.shape[0])
    centres = np.floor(cell_centres(grid, *mask.shape)).astype(np.int64)
    in_mask = mask[centres[:, 1], centres[:, 0]]
    return np.flatnonzero(np.all(dift == geoaware, axis=1) & in_mask)


def read_pair(
    row: dict, root, panel_size: int = PANEL_SIZE, padding: int = PANEL_PADDING, category: str = DEFAULT_CATEGORY
) -> Sample:
    """One Subjects200K row plus its annotation files as a `Sample` (not yet validated)."""
    description = row["description"]
    target_panel, reference_panel = split_pair(_open_row_image(row["image"]), panel_size, padding)
    uid = row.get("uid") or subjects200k_uid(description["item"], description["description_0"], target_panel)
    mask_path, dift_path, geo_path = annotation_paths(root, uid)
    for path in (mask_path, dift_path, geo_path):
        if not path.is_file():
            raise FileNotFoundError(f"pair {uid}: missing annotation file {path}")
    with Image.open(mask_path) as mask_image:
        mask_image = mask_image.convert("L")
        if mask_image.size != target_panel.size:  # the official loader resizes masks the same way
            mask_image = mask_image.resize(target_panel.size, Image.Resampling.NEAREST)
        mask = np.array(mask_image) > MASK_THRESHOLD
    dift, geoaware = load_coordinate_map(dift_path), load_coordinate_map(geo_path)
    kept = agreeing_cells(dift, geoaware, mask)
    grid = math.isqrt(dift.shape[0])
    ref_cells = dift[kept]  # (P, 2) as (y, x): flip to (x, y) and take the cell centres
    ref_points = np.stack(
        [
            (ref_cells[:, 1] + 0.5) * reference_panel.width / grid,
            (ref_cells[:, 0] + 0.5) * reference_panel.height / grid,
        ],
        axis=1,
    )
    target_points = cell_centres(grid, target_panel.height, target_panel.width)[kept]
    reference = Reference(np.array(reference_panel), mask, ref_points, target_points, category, description["item"])
    return Sample(
        uid,
        np.array(target_panel),
        description["description_0"],
        [reference],
        True,
        {"source": "SemAlign-MS-Subjects200K", "item": description["item"], "grid": grid},
    )


def iter_parquet_rows(data_dir) -> Iterator[dict]:
    """Rows of the `data/*.parquet` shards, in file order; needs the optional `pyarrow`."""
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise ImportError(
            "reading the Subjects200K parquet shards needs pyarrow (pip install pyarrow); "
            "or pass rows= to Subjects200KReader"
        ) from error
    for path in sorted(glob.glob(os.path.join(data_dir, "*.parquet"))):
        for batch in pq.ParquetFile(path).iter_batches():
            yield from batch.to_pylist()


class Subjects200KReader:
    """Iterate `Sample`s from a SemAlign-MS-Subjects200K folder.

    `rows` defaults to the parquet shards in ROOT/data; any iterable of row dicts works (tests,
    or a `datasets` split). `quality_filter` applies the official high-quality filter. Pairs
    without annotation files raise, or are skipped with the reason appended to `skipped`.
    """

    def __init__(
        self,
        root,
        rows: Iterable[dict] | None = None,
        quality_filter: bool = True,
        missing: str = "error",
        **read_options: Any,
    ):
        if missing not in MISSING_POLICIES:
            raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
        self.root = Path(root)
        self.rows = rows
        self.quality_filter = quality_filter
        self.missing = missing
        self.read_options = read_options
        self.skipped: list[str] = []

    def __iter__(self) -> Iterator[Sample]:
        rows = self.rows if self.rows is not None else iter_parquet_rows(self.root / "data")
        for row in rows:
            if self.quality_filter and not is_high_quality(row):
                continue
            try:
                sample = read_pair(row, self.root, **self.read_options)
            except FileNotFoundError as error:
                if self.missing == "error":
                    raise
                self.skipped.append(str(error))
                continue
            yield validate(sample)
