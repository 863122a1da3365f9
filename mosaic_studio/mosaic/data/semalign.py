"""SemAlign-MS samples: data model, validation, token helpers and the on-disk store.

A sample (paper §3, Eq. 1) is a target image, its caption and K references (1 ≤ K ≤ 6). Each
reference carries its subject's mask in the target, its correspondences C_k = {(u_j, v_j)}
(u in the reference, v in the target) and a category tag ("human", "animal" or "object").

Coordinates. Points are (x, y) floats in the pixels of their own image, so any token grid can
be derived later. Pixel (row i, col j) covers [j, j+1) x [i, i+1); its centre is (j+.5, i+.5).
A point lies inside an H x W image when 0 <= x < W and 0 <= y < H, and inside a mask when the
pixel containing it, mask[floor(y), floor(x)], is set. With a token size of T pixels (FLUX:
8x VAE x 2x2 packing = 16), token (r, c) covers pixels [cT, (c+1)T) x [rT, (r+1)T) and has the
row-major index r * grid_w + c, as in the packed latent sequence; grid_w = ceil(W / T).

Validation rules (`Rule`; a violation raises `SampleError`, a ValueError naming the sample id
and the rule; nothing is ever repaired silently):
  sample-id              non-empty, letters/digits/._- only (it names the sample's folder)
  reference-count        1 <= K <= MAX_REFERENCES
  image-format           target and references are uint8 (H, W, 3) RGB arrays
  category               each tag is one of CATEGORIES
  mask-shape             each mask is a bool array of the target's (H, W)
  mask-nonempty          each mask covers at least one pixel (the subject is visible)
  points-format          u and v are finite (P, 2) float arrays of equal length
  reference-point-inside-image / target-point-inside-image
  target-point-inside-mask   v lies in its own reference's mask
  masks-disjoint         only when `masks_exclusive`: no target pixel is in two masks. Masks
                         are then the subjects' visible regions (front-most subject owns a
                         pixel), as the synthetic world and instance segmenters produce. Set it
                         False for masks that may overlap (amodal or loose detector masks);
                         correspondences must still be disjoint per token, below.
  token-disjointness-eq2 Eq. 2: no target token, at the `token_size` given to `validate`,
                         holds correspondence targets v of two different references.

On disk (format_version 1): a dataset is a folder of sample folders, one per sample, named
by its id; dot-folders are unfinished writes. A sample folder holds target.png and, for
reference k = 0..K-1, ref_k.png (RGB) and mask_k.png (1-bit), plus sample.json:
  {"format": "semalign-ms", "format_version": 1, "sample_id": str, "caption": str,
   "target": "target.png", "masks_exclusive": bool, "meta": {...},
   "references": [{"image": "ref_k.png", "mask": "mask_k.png", "category": str, "label": str,
                   "correspondences": [[u_x, u_y, v_x, v_y], ...]}, ...]}
Floats are written exactly (shortest round-trip form), so save -> load is lossless.
Loading checks the type of every field (rule json-schema) and that every file named resolves,
symlinks followed, to a regular file inside the sample folder (rule file-inside-sample); images
over mosaic.images.MAX_IMAGE_PIXELS are refused before decoding. A training export's folder
also holds EXPORT_MANIFEST (see `list_sample_dirs`).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mosaic_studio.files import replace_dir, write_file_atomic
from mosaic_studio.mosaic.images import MAX_IMAGE_PIXELS

MIN_REFERENCES = 1
MAX_REFERENCES = 6  # the paper's data and model go up to six references
CATEGORIES = ("human", "animal", "object")  # the paper's stratification families (H/A/O)
# FLUX: the VAE downsamples 8x and latents are packed 2x2, so one token covers 16x16 pixels.
DEFAULT_TOKEN_SIZE = 16

FORMAT_NAME = "semalign-ms"
FORMAT_VERSION = 1
SAMPLE_JSON = "sample.json"
TARGET_FILE = "target.png"
REFERENCE_FILE = "ref_{}.png"
MASK_FILE = "mask_{}.png"
# Written last by a training export (annotator.export): {"complete": true, "samples": [...]}.
EXPORT_MANIFEST = "export.json"
# Temporary folders of unfinished writes; dataset listings skip every dot-folder.
PARTIAL_PREFIX = ".partial-"
# Masks are written as 1-bit PNGs; an 8-bit mask written by another tool counts above half.
MASK_THRESHOLD = 127
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Folder permissions for a finished sample (mkdtemp creates 0700 folders).
_SAMPLE_DIR_MODE = 0o755


class Rule:
    """Names of the validation rules, as they appear in error messages."""

    SAMPLE_ID = "sample-id"
    REFERENCE_COUNT = "reference-count"
    IMAGE_FORMAT = "image-format"
    CATEGORY = "category"
    MASK_SHAPE = "mask-shape"
    MASK_NONEMPTY = "mask-nonempty"
    POINTS_FORMAT = "points-format"
    REF_POINT_INSIDE = "reference-point-inside-image"
    TARGET_POINT_INSIDE = "target-point-inside-image"
    TARGET_POINT_IN_MASK = "target-point-inside-mask"
    MASKS_DISJOINT = "masks-disjoint"
    TOKENS_DISJOINT = "token-disjointness-eq2"
    FILE_FORMAT = "file-format"  # on-disk only: format name/version, files, image modes
    SCHEMA = "json-schema"  # on-disk only: sample.json has a field of the wrong type
    FILE_INSIDE = "file-inside-sample"  # on-disk only: a named file resolves outside its sample folder


class SampleError(ValueError):
    """A sample breaks a format rule; `sample_id` and `rule` say which and where."""

    def __init__(self, sample_id: str, rule: str, detail: str, field: str | None = None):
        self.sample_id = sample_id
        self.rule = rule
        self.field = field  # the sample.json field at fault, e.g. "references[0].image", if any
        super().__init__(f"sample {sample_id!r} violates rule '{rule}': {detail}")


def _as_points(points) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    return array.reshape(0, 2) if array.size == 0 else array


@dataclass(eq=False)
class Reference:
    """One subject: its reference image and where it appears in the target."""

    image: np.ndarray  # (h, w, 3) uint8 RGB reference image
    mask: np.ndarray  # (H, W) bool: the subject's region in the target
    ref_points: np.ndarray  # (P, 2) float64 (x, y) pixels in the reference: u of Eq. 1
    target_points: np.ndarray  # (P, 2) float64 (x, y) pixels in the target: v of Eq. 1
    category: str  # one of CATEGORIES
    label: str = ""  # optional finer class name, e.g. "quadruped"

    def __post_init__(self):
        self.ref_points = _as_points(self.ref_points)
        self.target_points = _as_points(self.target_points)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Reference):
            return NotImplemented
        return (self.category, self.label) == (other.category, other.label) and all(
            a.dtype == b.dtype and np.array_equal(a, b)
            for a, b in zip(
                (self.image, self.mask, self.ref_points, self.target_points),
                (other.image, other.mask, other.ref_points, other.target_points),
            )
        )


@dataclass(eq=False)
class Sample:
    """A target image, its caption and its references (paper Eq. 1)."""

    sample_id: str
    target: np.ndarray  # (H, W, 3) uint8 RGB target image
    caption: str
    references: list[Reference]
    masks_exclusive: bool = True  # masks are visible regions: see the masks-disjoint rule
    meta: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable provenance

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sample):
            return NotImplemented
        return (
            (self.sample_id, self.caption, self.masks_exclusive, self.meta)
            == (other.sample_id, other.caption, other.masks_exclusive, other.meta)
            and self.target.dtype == other.target.dtype
            and np.array_equal(self.target, other.target)
            and self.references == other.references
        )


# ----------------------------------------------------------------------------- tokens
def _check_token_size(token_size: int) -> None:
    if isinstance(token_size, bool) or not isinstance(token_size, int) or token_size < 1:
        raise ValueError(f"token_size must be a positive int (pixels per token), got {token_size!r}")


def token_grid(height: int, width: int, token_size: int) -> tuple[int, int]:
    """(rows, cols) of the token grid over an image; partial edge tokens count."""
    _check_token_size(token_size)
    return math.ceil(height / token_size), math.ceil(width / token_size)


def pixel_to_token(points, token_size: int, grid_w: int) -> np.ndarray:
    """Row-major token index of each (x, y) pixel point: floor(y/T) * grid_w + floor(x/T)."""
    _check_token_size(token_size)
    xy = _as_points(points)
    cols = np.floor(xy[:, 0] / token_size).astype(np.int64)
    rows = np.floor(xy[:, 1] / token_size).astype(np.int64)
    if np.any(cols < 0) or np.any(cols >= grid_w) or np.any(rows < 0):
        raise ValueError(f"points fall outside a token grid {grid_w} tokens wide")
    return rows * grid_w + cols


def _first_of_each(indices: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each distinct value, ordered by that value."""
    return np.unique(indices, return_index=True)[1]


def token_pairs(
    reference: Reference,
    target_hw: tuple[int, int],
    token_size: int,
    unique_reference: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Correspondences as token indices (u_tokens, v_tokens), one point per target token.

    Each target token keeps its first point; pairs come sorted by target token. With
    `unique_reference` each reference token also keeps only its first target token in that
    order, which is what the official loader's {ref_token: tgt_token} dict amounts to.
    """
    _, target_w = token_grid(*target_hw, token_size)
    _, ref_w = token_grid(*reference.image.shape[:2], token_size)
    v = pixel_to_token(reference.target_points, token_size, target_w)
    u = pixel_to_token(reference.ref_points, token_size, ref_w)
    keep = _first_of_each(v)
    if unique_reference:
        keep = keep[np.sort(_first_of_each(u[keep]))]
    return u[keep], v[keep]


def sample_points(sample: Sample, k_max: int, rng: np.random.Generator, token_size: int | None = None):
    """Draw up to `k_max` correspondences per reference (the paper's P_k) without replacement.

    Returns a list of (ref_points, target_points) arrays, one pair per reference, in their
    stored order. With `token_size`, candidates are first reduced to one per target token so
    the P_k drawn points supervise P_k distinct tokens. Deterministic for a given rng state.
    """
    if k_max < 0:
        raise ValueError(f"k_max must be >= 0, got {k_max}")
    drawn = []
    for reference in sample.references:
        candidates = np.arange(len(reference.target_points))
        if token_size is not None:
            _, grid_w = token_grid(*sample.target.shape[:2], token_size)
            candidates = np.sort(_first_of_each(pixel_to_token(reference.target_points, token_size, grid_w)))
        if len(candidates) > k_max:
            candidates = np.sort(rng.choice(candidates, size=k_max, replace=False))
        drawn.append((reference.ref_points[candidates], reference.target_points[candidates]))
    return drawn


# ------------------------------------------------------------------------- validation
def _is_rgb(image) -> bool:
    return isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def _inside(points: np.ndarray, height: int, width: int) -> np.ndarray:
    x, y = points[:, 0], points[:, 1]
    return (x >= 0) & (x < width) & (y >= 0) & (y < height)


def validate(sample: Sample, token_size: int = DEFAULT_TOKEN_SIZE) -> Sample:
    """Check every rule of the module docstring; return the sample or raise SampleError."""
    _check_token_size(token_size)
    sid = sample.sample_id

    def fail(rule: str, detail: str):
        raise SampleError(sid, rule, detail)

    if not isinstance(sid, str) or not _SAFE_ID.fullmatch(sid):
        fail(Rule.SAMPLE_ID, "the id must be non-empty and use only letters, digits, '.', '_', '-'")
    if not MIN_REFERENCES <= len(sample.references) <= MAX_REFERENCES:
        fail(Rule.REFERENCE_COUNT, f"{len(sample.references)} references, allowed {MIN_REFERENCES}..{MAX_REFERENCES}")
    if not _is_rgb(sample.target):
        fail(Rule.IMAGE_FORMAT, "the target must be a uint8 (H, W, 3) array")
    height, width = sample.target.shape[:2]
    _, grid_w = token_grid(height, width, token_size)
    owner = {}  # target token -> index of the first reference that claimed it
    claimed = np.zeros((height, width), dtype=bool)
    for k, ref in enumerate(sample.references):
        if not _is_rgb(ref.image):
            fail(Rule.IMAGE_FORMAT, f"reference {k} must be a uint8 (h, w, 3) array")
        if ref.category not in CATEGORIES:
            fail(Rule.CATEGORY, f"reference {k} has category {ref.category!r}, expected one of {CATEGORIES}")
        mask = ref.mask
        if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != (height, width):
            fail(Rule.MASK_SHAPE, f"mask {k} must be a bool array of the target's shape {(height, width)}")
        if not mask.any():
            fail(Rule.MASK_NONEMPTY, f"mask {k} is empty")
        u, v = ref.ref_points, ref.target_points
        if u.ndim != 2 or u.shape[1:] != (2,) or u.shape != v.shape:
            fail(Rule.POINTS_FORMAT, f"reference {k}: u {u.shape} and v {v.shape} must both be (P, 2)")
        if not (np.isfinite(u).all() and np.isfinite(v).all()):
            fail(Rule.POINTS_FORMAT, f"reference {k} has non-finite points")
        bad = np.flatnonzero(~_inside(u, *ref.image.shape[:2]))
        if bad.size:
            fail(Rule.REF_POINT_INSIDE, f"reference {k}, point {bad[0]}: u={tuple(u[bad[0]])} is outside the reference")
        bad = np.flatnonzero(~_inside(v, height, width))
        if bad.size:
            fail(Rule.TARGET_POINT_INSIDE, f"reference {k}, point {bad[0]}: v={tuple(v[bad[0]])} is outside the target")
        pix = np.floor(v).astype(np.int64)
        bad = np.flatnonzero(~mask[pix[:, 1], pix[:, 0]])
        if bad.size:
            fail(Rule.TARGET_POINT_IN_MASK, f"reference {k}, point {bad[0]}: v={tuple(v[bad[0]])} is outside mask {k}")
        if sample.masks_exclusive:
            overlap = np.argwhere(claimed & mask)
            if overlap.size:
                row, col = overlap[0]
                fail(Rule.MASKS_DISJOINT, f"mask {k} overlaps an earlier mask at pixel (x={col}, y={row})")
            claimed |= mask
        for token in np.unique(pixel_to_token(v, token_size, grid_w)).tolist():
            if owner.setdefault(token, k) != k:
                fail(
                    Rule.TOKENS_DISJOINT,
                    f"target token {token} (token size {token_size}) is claimed by references {owner[token]} and {k}",
                )
    return sample


# --------------------------------------------------------------------------- on disk
def _sample_json(sample: Sample) -> dict:
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "sample_id": sample.sample_id,
        "caption": sample.caption,
        "target": TARGET_FILE,
        "masks_exclusive": bool(sample.masks_exclusive),
        "references": [
            {
                "image": REFERENCE_FILE.format(k),
                "mask": MASK_FILE.format(k),
                "category": ref.category,
                "label": ref.label,
                # One row per pair: [u_x, u_y, v_x, v_y], pixels (see the module docstring).
                "correspondences": np.concatenate([ref.ref_points, ref.target_points], axis=1).tolist(),
            }
            for k, ref in enumerate(sample.references)
        ],
        "meta": sample.meta,
    }


def save_sample(sample: Sample, sample_dir, token_size: int = DEFAULT_TOKEN_SIZE, overwrite: bool = False) -> Path:
    """Validate, then write the sample folder `sample_dir` atomically; return its path.

    Everything is written into a sibling temporary folder that is renamed into place, so a
    crash leaves either no sample or a complete one (plus a dot-folder that datasets skip
    and `remove_partial_writes` deletes).
    """
    validate(sample, token_size)
    sample_dir = Path(sample_dir)
    if sample_dir.exists() and not overwrite:
        raise FileExistsError(f"sample folder {sample_dir} already exists (pass overwrite=True to replace it)")
    # Compact: json's fast C encoder only runs without indent. Fails early on a non-JSON meta.
    document = json.dumps(_sample_json(sample), separators=(",", ":"))
    sample_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{sample_dir.name}-", dir=sample_dir.parent))
    try:
        Image.fromarray(sample.target).save(tmp / TARGET_FILE)
        for k, ref in enumerate(sample.references):
            Image.fromarray(ref.image).save(tmp / REFERENCE_FILE.format(k))
            Image.fromarray(ref.mask).save(tmp / MASK_FILE.format(k))  # bool -> 1-bit PNG
        (tmp / SAMPLE_JSON).write_text(document, encoding="utf-8")
        os.chmod(tmp, _SAMPLE_DIR_MODE)
        # overwrite: the old folder goes aside under the partial-write prefix, so a crash mid-swap
        # leaves it to `remove_partial_writes`
        replace_dir(tmp, sample_dir, aside_prefix=f"{PARTIAL_PREFIX}{sample_dir.name}-old-")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return sample_dir


# What Pillow raises for a file it cannot decode. DecompressionBombError (a header declaring
# more pixels than Pillow allows) derives from none of them, so it is listed too.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
_TYPE_NAMES = {str: "a string", bool: "true or false", list: "a list", dict: "an object"}
_REQUIRED = object()


def _kind(value) -> str:
    text = repr(value)
    return f"{text if len(text) <= 40 else text[:37] + '...'} ({type(value).__name__})"


def _field(doc: dict, key: str, kind: type, sid: str, where: str = "", default=_REQUIRED):
    """doc[key], checked to be of JSON type `kind`; SampleError (json-schema) naming the field."""
    name = f"{where}{key}"
    if key not in doc:
        if default is _REQUIRED:
            raise SampleError(sid, Rule.SCHEMA, f"field '{name}' is missing", name)
        return default
    value = doc[key]
    if type(value) is not kind:  # exact: JSON true is not the number 1, nor "false" a boolean
        raise SampleError(sid, Rule.SCHEMA, f"field '{name}' must be {_TYPE_NAMES[kind]}, got {_kind(value)}", name)
    return value


def sample_file(sample_dir, name, sample_id: str, field: str) -> Path:
    """The regular file `name` (from field `field`) of the sample folder `sample_dir`, resolved.

    After following symlinks it must lie inside the resolved sample folder, so a sample never
    reads `../...`, an absolute path or a link out of its folder (rule file-inside-sample). A
    FIFO or device is refused as well: opening one can block forever.
    """
    if type(name) is not str or not name:
        raise SampleError(
            sample_id, Rule.SCHEMA, f"field '{field}' must be a non-empty file name, got {_kind(name)}", field
        )
    try:
        folder = Path(sample_dir).resolve()
        path = (folder / name).resolve()
    except (OSError, RuntimeError) as error:  # a symlink loop
        raise SampleError(
            sample_id, Rule.FILE_INSIDE, f"field '{field}': cannot resolve {name!r} ({error})", field
        ) from None
    if path == folder or not path.is_relative_to(folder):
        raise SampleError(
            sample_id,
            Rule.FILE_INSIDE,
            f"field '{field}' names {name!r}, which resolves outside the sample folder",
            field,
        )
    if not path.exists():
        raise SampleError(sample_id, Rule.FILE_FORMAT, f"field '{field}': {name!r} does not exist", field)
    if not path.is_file():
        raise SampleError(sample_id, Rule.FILE_FORMAT, f"field '{field}': {name!r} is not a regular file", field)
    return path


def _read_image(path: Path, sid: str, field: str, mask: bool) -> np.ndarray:
    """An RGB image or a mask, with the size limit checked on the header, before decoding."""
    try:
        with warnings.catch_warnings():
            # The limit below is stricter than Pillow's bomb warning, which would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise SampleError(
                        sid,
                        Rule.FILE_FORMAT,
                        f"field '{field}': {path.name} is {width}x{height} "
                        f"pixels, over the limit of {MAX_IMAGE_PIXELS:,}",
                        field,
                    )
                if mask:
                    return np.array(image.convert("L")) > MASK_THRESHOLD
                if image.mode != "RGB":
                    raise SampleError(sid, Rule.FILE_FORMAT, f"{path.name} is {image.mode}, expected RGB", field)
                return np.array(image)
    except _IMAGE_ERRORS as error:
        if isinstance(error, SampleError):
            raise
        raise SampleError(
            sid,
            Rule.FILE_FORMAT,
            f"field '{field}': {path.name} is not a readable image ({type(error).__name__}: {error})",
            field,
        ) from None


def _read_points(entry: dict, sid: str, where: str) -> np.ndarray:
    rows = _field(entry, "correspondences", list, sid, where)
    name = f"{where}correspondences"
    for j, row in enumerate(rows):
        if type(row) is not list or len(row) != 4 or any(type(x) not in (int, float) for x in row):
            raise SampleError(
                sid,
                Rule.POINTS_FORMAT,
                f"field '{name}' row {j} must be 4 numbers [u_x, u_y, v_x, v_y], got {_kind(row)}",
                name,
            )
    try:
        pairs = np.asarray(rows, dtype=np.float64).reshape(len(rows), 4)
    except OverflowError as error:  # an integer beyond float range
        raise SampleError(sid, Rule.POINTS_FORMAT, f"field '{name}': {error}", name) from None
    return pairs


def load_sample(sample_dir, token_size: int = DEFAULT_TOKEN_SIZE, check: bool = True) -> Sample:
    """Read a sample folder written by `save_sample` and (by default) validate it.

    Every field of sample.json is type-checked and every file it names must be a regular file
    inside the folder; any problem is a SampleError naming the sample and the field.
    """
    sample_dir = Path(sample_dir)
    try:
        document = sample_file(sample_dir, SAMPLE_JSON, sample_dir.name, SAMPLE_JSON)
        doc = json.loads(document.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SampleError(sample_dir.name, Rule.FILE_FORMAT, f"cannot read {SAMPLE_JSON}: {error}") from error
    if type(doc) is not dict:
        raise SampleError(
            sample_dir.name, Rule.SCHEMA, f"{SAMPLE_JSON} must hold a JSON object, got {_kind(doc)}", SAMPLE_JSON
        )
    sid = _field(doc, "sample_id", str, sample_dir.name, default=sample_dir.name)
    if doc.get("format") != FORMAT_NAME or doc.get("format_version") != FORMAT_VERSION:
        raise SampleError(
            sid,
            Rule.FILE_FORMAT,
            f"format {doc.get('format')!r} version {doc.get('format_version')!r}, "
            f"expected {FORMAT_NAME!r} {FORMAT_VERSION}",
        )
    caption = _field(doc, "caption", str, sid)
    masks_exclusive = _field(doc, "masks_exclusive", bool, sid)
    meta = _field(doc, "meta", dict, sid, default={})
    target_name = doc.get("target")
    entries = _field(doc, "references", list, sid)
    references = []
    for k, entry in enumerate(entries):
        where = f"references[{k}]."
        if type(entry) is not dict:
            raise SampleError(
                sid, Rule.SCHEMA, f"field 'references[{k}]' must be an object, got {_kind(entry)}", f"references[{k}]"
            )
        category = _field(entry, "category", str, sid, where)
        label = _field(entry, "label", str, sid, where, default="")
        pairs = _read_points(entry, sid, where)
        image_path = sample_file(sample_dir, entry.get("image"), sid, f"{where}image")
        mask_path = sample_file(sample_dir, entry.get("mask"), sid, f"{where}mask")
        references.append(
            Reference(
                image=_read_image(image_path, sid, f"{where}image", mask=False),
                mask=_read_image(mask_path, sid, f"{where}mask", mask=True),
                ref_points=pairs[:, :2].copy(),
                target_points=pairs[:, 2:].copy(),
                category=category,
                label=label,
            )
        )
    target = _read_image(sample_file(sample_dir, target_name, sid, "target"), sid, "target", mask=False)
    sample = Sample(sid, target, caption, references, masks_exclusive, meta)
    return validate(sample, token_size) if check else sample


# --------------------------------------------------------------------------- datasets
class IncompleteDatasetError(ValueError):
    """A dataset folder's EXPORT_MANIFEST says the export was not finished, or lists other samples."""


def list_sample_dirs(root) -> list[Path]:
    """Finished sample folders under `root`, sorted by name (dot-folders are skipped).

    A folder written by a training export holds EXPORT_MANIFEST; then the folder must be a
    complete export holding exactly the samples it lists, or IncompleteDatasetError is raised,
    so a trainer never silently trains on part of an export.
    """
    root = Path(root)
    found = sorted(
        path
        for path in root.iterdir()
        if path.is_dir() and not path.name.startswith(".") and (path / SAMPLE_JSON).is_file()
    )
    manifest = root / EXPORT_MANIFEST
    if manifest.exists() or manifest.is_symlink():
        check_export_manifest(manifest, [path.name for path in found])
    return found


def check_export_manifest(path, present: list[str]) -> dict:
    """The manifest at `path` of a finished export holding exactly the samples `present`."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if type(doc) is not dict or doc.get("complete") is not True or type(doc.get("samples")) is not list:
        raise IncompleteDatasetError(
            f"{path.parent} is an unfinished or damaged export ({path.name} does not say "
            "complete): the export was interrupted; run it again"
        )
    missing, extra = sorted(set(doc["samples"]) - set(present)), sorted(set(present) - set(doc["samples"]))
    if missing or extra:
        raise IncompleteDatasetError(
            f"{path.parent} does not match its {path.name}: missing samples {missing[:5]}, "
            f"unexpected samples {extra[:5]}; run the export again"
        )
    return doc


def remove_partial_writes(root) -> int:
    """Delete the temporary folders that interrupted `save_sample` calls left; return how many."""
    stale = [p for p in Path(root).glob(f"{PARTIAL_PREFIX}*") if p.is_dir()]
    for path in stale:
        shutil.rmtree(path)
    return len(stale)


def check_manifest(path, manifest: dict) -> None:
    """Write a dataset folder's settings file, or refuse (ValueError) to resume into a folder
    written with other settings. The write is atomic, so ranks starting together agree."""
    path = Path(path)
    if path.exists():
        existing = json.loads(path.read_text(encoding="utf-8"))
        if existing != manifest:
            raise ValueError(f"{path} records other settings {existing}; use a new output folder")
        return
    write_file_atomic(path, lambda handle: json.dump(manifest, handle, indent=1))


class SemAlignDataset:
    """A folder of sample folders, read lazily; usable as a map-style torch Dataset."""

    def __init__(self, root, token_size: int = DEFAULT_TOKEN_SIZE):
        self.root = Path(root)
        self.token_size = token_size
        self.sample_dirs = list_sample_dirs(self.root)

    def __len__(self) -> int:
        return len(self.sample_dirs)

    def __getitem__(self, index: int) -> Sample:
        return load_sample(self.sample_dirs[index], self.token_size)

    def num_references(self, index: int) -> int:
        """Sample `index`'s reference count, from its sample.json alone (no image is read)."""
        document = json.loads((self.sample_dirs[index] / SAMPLE_JSON).read_text(encoding="utf-8"))
        return len(document["references"])

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))
