"""Multi-subject SemAlign-MS samples composed from single-subject ones.

The authors' released data (SemAlign-MS-Subjects200K) has one subject per sample, and so has a
user's own data made from photos of one subject each; on such data MDL (Eq. 11-14, which
contrasts the attention of different references) is always zero. A composed sample puts 2-6
subjects, each cut from its source's target by its mask, onto one new canvas:

  1. choose the sources (`choose_group`): the subject count K uniformly in [min_subjects,
     max_subjects], then per slot a category uniformly among those with unused sources, then a
     source of that category, so rare categories are as frequent as common ones (stratified);
     sources showing the same subject (meta["identity"], as `annotator requests` writes it for
     the photos of one subject) never meet in one sample;
  2. background: one source's target with its subject removed (OpenCV inpainting of the mask,
     grown a little) resized to cover the canvas, or a plain colour;
  3. each subject in drawing order (back to front) gets a scale s (a factor on its source's
     pixels) and a position (its box centre, a fraction of the canvas side), both uniform in
     configurable ranges; offsets are whole pixels. The affine A(x) = s·x + t maps source pixels
     to the canvas; a canvas pixel shows the source pixel its centre maps back to (nearest) or
     the mask-weighted bilinear blend there. A later subject covers an earlier one: the
     front-most subject owns a pixel, and masks are the visible regions (disjoint). A placement
     is retried while it would leave any subject less than `min_visible` of its placed pixels
     or fewer than `min_points` visible points; a source that cannot be placed is left out;
  4. correspondences: the reference points u stay as they are (the reference image is the
     source's own), v' = A(v) exactly, the same affine as the pixels; a point is kept when v'
     lies in the canvas and its pixel belongs to its own subject (not covered by a subject in
     front); then Eq. 2 at `token_size`: a target token holding points of several subjects
     keeps those of the subject owning most of its pixels (ties: the front-most), so
     correspondences are disjoint per token at that size and at every divisor of it;
  5. the captions are joined in reference order; references come in a random order, so their
     order says nothing about occlusion.

With nearest resampling and an integer scale (and the whole-pixel offsets), a kept v' shows
exactly the source pixel holding v, so a composed point has the colour its source point had.

Provenance in meta (see `compose_sample`): the source ids, every subject's affine and drawing
order, the background, the sources left out, the settings; per-point source and confidence
(meta["point_info"]) are carried over from the sources where they have them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from mosaic_studio.annotator.propose import POINT_INFO
from mosaic_studio.mosaic.data.semalign import (
    DEFAULT_TOKEN_SIZE,
    MAX_REFERENCES,
    Reference,
    Sample,
    token_grid,
    validate,
)

COMPOSE_VERSION = 1  # bump when the same settings and sources would give different bytes
COMPOSER = "mosaic_studio.annotator.compose"
BACKGROUNDS = ("inpaint", "plain")
RESAMPLING = ("nearest", "bilinear")
MIN_COMPOSED = 2  # fewer placed subjects is no multi-subject sample: the composition fails
INPAINT_RADIUS = 5  # pixels cv2.inpaint looks around each filled pixel
MASK_GROWTH = 3  # pixels the removed subject's mask grows, so its antialiased fringe goes too
COMPOSED_SOURCE = "composed"  # point source where a source sample records none
IDENTITY_META = "identity"  # meta key: which subject a sample shows (samples of one subject share it)


@dataclass(frozen=True)
class ComposeConfig:
    """Settings of one compose run; saved with every composed sample."""

    size: int = 512  # side of the square canvas in pixels (the paper's resolution)
    min_subjects: int = 2
    max_subjects: int = MAX_REFERENCES
    scale: tuple[float, float] = (0.4, 0.8)  # range of the factor on each source's pixels
    position: tuple[float, float] = (0.2, 0.8)  # range of a subject's box centre, fraction of the side
    background: str = "inpaint"  # "inpaint" (a source's scene, its subject removed) or "plain"
    plain_colour: tuple[int, int, int] = (255, 255, 255)
    resample: str = "bilinear"  # "nearest" keeps source pixels exactly (integer scales)
    min_visible: float = 0.5  # of a subject's placed pixels, once every subject is drawn
    min_points: int = 1  # visible correspondences per subject at least (before Eq. 2)
    placement_tries: int = 16
    token_size: int = DEFAULT_TOKEN_SIZE  # pixels per model token: Eq. 2 holds at this size

    def __post_init__(self):
        if not MIN_COMPOSED <= self.min_subjects <= self.max_subjects <= MAX_REFERENCES:
            raise ValueError(f"need {MIN_COMPOSED} <= min_subjects <= max_subjects <= {MAX_REFERENCES}")
        if min(self.size, self.token_size, self.placement_tries) < 1 or self.min_points < 0:
            raise ValueError("size, token_size and placement_tries must be >= 1, min_points >= 0")
        for name, (low, high) in (("scale", self.scale), ("position", self.position)):
            if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high) or (name == "scale" and low <= 0):
                raise ValueError(f"{name} must be a range (low, high) with 0 < low <= high, got {(low, high)}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        if self.resample not in RESAMPLING:
            raise ValueError(f"resample must be one of {RESAMPLING}, got {self.resample!r}")
        if len(self.plain_colour) != 3 or not all(0 <= c <= 255 for c in self.plain_colour):
            raise ValueError(f"plain_colour must be three values in 0..255, got {self.plain_colour}")
        if not 0 <= self.min_visible <= 1:
            raise ValueError(f"min_visible must be in [0, 1], got {self.min_visible}")


# --- choosing the sources ---------------------------------------------------------------------


def choose_group(
    by_category: dict[str, list[str]],
    rng: np.random.Generator,
    config: ComposeConfig,
    identity: dict[str, str] | None = None,
) -> list[str]:
    """Source names for one sample, in drawing order, stratified by category (step 1).

    identity: source name -> the subject it shows (default: every source its own). Two sources
    of one identity (two photo pairs of the same mug) never meet in a sample: MDL would push
    apart two references of the same subject.
    """
    identity = identity or {}
    remaining = {category: list(names) for category, names in sorted(by_category.items()) if names}
    distinct = {identity.get(name, name) for names in remaining.values() for name in names}
    count = min(int(rng.integers(config.min_subjects, config.max_subjects + 1)), len(distinct))
    chosen = []
    for _ in range(count):
        categories = sorted(remaining)
        names = remaining[categories[int(rng.integers(len(categories)))]]
        pick = names[int(rng.integers(len(names)))]
        chosen.append(pick)
        taken = identity.get(pick, pick)
        remaining = {
            category: kept
            for category, names in remaining.items()
            if (kept := [name for name in names if identity.get(name, name) != taken])
        }
    return chosen


# --- background -------------------------------------------------------------------------------


def _cover(image: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    """`image` scaled to cover a size x size square, centre-cropped to it."""
    import cv2

    height, width = image.shape[:2]
    factor = size / min(height, width)
    shape = (max(size, round(width * factor)), max(size, round(height * factor)))
    interpolation = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    resized = cv2.resize(image, shape, interpolation=interpolation)
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    return resized[top : top + size, left : left + size]


def inpainted_background(source: Sample, size: int) -> np.ndarray:
    """The source's target without its subject: the mask, grown by MASK_GROWTH, filled by
    OpenCV's Telea inpainting from the surrounding scene (simple, not generative)."""
    import cv2

    target = _cover(source.target, size, nearest=False)
    mask = _cover(source.references[0].mask.astype(np.uint8), size, nearest=True)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * MASK_GROWTH + 1,) * 2)
    hole = cv2.dilate(mask, kernel)
    return cv2.inpaint(np.ascontiguousarray(target), hole, INPAINT_RADIUS, cv2.INPAINT_TELEA)


# --- placing one subject ----------------------------------------------------------------------


@dataclass
class Placement:
    """One subject on the canvas: its affine and the pixels it covers."""

    name: str
    source: Sample
    scale: float
    offset: tuple[int, int]  # (t_x, t_y) in whole canvas pixels
    box: tuple[int, int, int, int]  # canvas rows/cols it touches: (y0, x0, y1, x1)
    covered: np.ndarray  # (y1-y0, x1-x0) bool: the subject is there
    colour: np.ndarray  # (y1-y0, x1-x0, 3) uint8
    points: np.ndarray  # (P, 2) v' = A(v) of the source's correspondences, canvas pixels

    @property
    def matrix(self) -> list[list[float]]:
        """The affine A as a (2, 3) matrix: source (x, y, 1) -> canvas pixels."""
        return [[self.scale, 0.0, float(self.offset[0])], [0.0, self.scale, float(self.offset[1])]]


def _subject_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1  # x0, y0, x1, y1


def _resampled(source: Sample, scale: float, offset, box, resample: str) -> tuple[np.ndarray, np.ndarray]:
    """(covered, colour) of the canvas pixels in `box`: each pixel centre mapped back by A⁻¹."""
    import cv2

    y0, x0, y1, x1 = box
    mask, image = source.references[0].mask, source.target
    height, width = mask.shape
    back_x = (np.arange(x0, x1) + 0.5 - offset[0]) / scale  # continuous source x of each column
    back_y = (np.arange(y0, y1) + 0.5 - offset[1]) / scale
    cols, rows = np.floor(back_x).astype(np.int64), np.floor(back_y).astype(np.int64)
    inside = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]
    rows_c, cols_c = np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)
    covered = inside & mask[rows_c[:, None], cols_c[None, :]]  # the nearest source pixel is the subject's
    if resample == "nearest":
        return covered, image[rows_c[:, None], cols_c[None, :]]
    # Bilinear, weighted by the mask so no background colour of the source bleeds in; the
    # nearest pixel is one of the four blended, so every covered pixel has a weight > 0.
    map_x = np.broadcast_to(back_x[None, :] - 0.5, covered.shape).astype(np.float32)
    map_y = np.broadcast_to(back_y[:, None] - 0.5, covered.shape).astype(np.float32)
    weight = mask.astype(np.float32)
    premultiplied = image.astype(np.float32) * weight[..., None]
    blended = cv2.remap(premultiplied, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    total = cv2.remap(weight, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    colour = np.rint(blended / np.maximum(total, 1e-6)[..., None]).clip(0, 255).astype(np.uint8)
    return covered, colour


def place(name: str, source: Sample, rng: np.random.Generator, config: ComposeConfig) -> Placement:
    """A random scale and position for the source's subject (step 3), and its pixels there."""
    x0, y0, x1, y1 = _subject_box(source.references[0].mask)
    scale = float(rng.uniform(*config.scale))
    centre = rng.uniform(*config.position, size=2) * config.size
    # Whole-pixel offsets: with an integer scale, canvas pixels then map onto source pixels exactly.
    offset = (int(round(centre[0] - scale * (x0 + x1) / 2)), int(round(centre[1] - scale * (y0 + y1) / 2)))
    size = config.size
    box = (
        min(size, max(0, math.floor(scale * y0 + offset[1]))),
        min(size, max(0, math.floor(scale * x0 + offset[0]))),
        min(size, max(0, math.ceil(scale * y1 + offset[1]))),
        min(size, max(0, math.ceil(scale * x1 + offset[0]))),
    )
    covered, colour = _resampled(source, scale, offset, box, config.resample)
    points = source.references[0].target_points * scale + np.asarray(offset, dtype=np.float64)
    return Placement(name, source, scale, offset, box, covered, colour, points)


# --- ownership --------------------------------------------------------------------------------


def owner_map(placements: list[Placement], size: int) -> np.ndarray:
    """Index of the front-most subject at each canvas pixel, -1 for background."""
    owner = np.full((size, size), -1, dtype=np.int16)
    for k, placement in enumerate(placements):  # later subjects are in front
        y0, x0, y1, x1 = placement.box
        owner[y0:y1, x0:x1][placement.covered] = k
    return owner


def visible_points(placement: Placement, k: int, owner: np.ndarray) -> np.ndarray:
    """(P,) bool: v' inside the canvas on a pixel subject k owns (not covered by one in front)."""
    x, y = placement.points[:, 0], placement.points[:, 1]
    size = owner.shape[0]
    inside = (x >= 0) & (x < size) & (y >= 0) & (y < size)
    cols = np.clip(np.floor(x).astype(np.int64), 0, size - 1)
    rows = np.clip(np.floor(y).astype(np.int64), 0, size - 1)
    return inside & (owner[rows, cols] == k)


def token_owner(owner: np.ndarray, token_size: int, count: int) -> np.ndarray:
    """(H, W): per pixel, the subject owning most pixels of its token (ties: the front-most)."""
    rows, cols = token_grid(*owner.shape, token_size)
    pixel_rows, pixel_cols = np.indices(owner.shape)
    tokens = (pixel_rows // token_size) * cols + pixel_cols // token_size
    votes = np.bincount((tokens * (count + 1) + owner + 1).ravel(), minlength=rows * cols * (count + 1))
    votes = votes.reshape(rows * cols, count + 1)[:, 1:]  # background dropped
    best = count - 1 - np.argmax(votes[:, ::-1], axis=1)  # reversed: ties go to the later (front) subject
    return np.where(votes.max(axis=1) > 0, best, -1)[tokens]


def acceptable(placements: list[Placement], config: ComposeConfig) -> bool:
    """Every subject keeps min_visible of its placed pixels and min_points visible points."""
    owner = owner_map(placements, config.size)
    for k, placement in enumerate(placements):
        placed = int(placement.covered.sum())
        if placed == 0 or (owner == k).sum() < config.min_visible * placed:
            return False
        if visible_points(placement, k, owner).sum() < config.min_points:
            return False
    return True


# --- the composed sample ----------------------------------------------------------------------


def join_captions(captions: list[str]) -> str:
    """The sources' captions in reference order, each without its closing full stop."""
    parts = [caption.strip().rstrip(".").strip() for caption in captions]
    return " and ".join(part for part in parts if part)


def _background(sources: list[tuple[str, Sample]], rng, config: ComposeConfig) -> tuple[np.ndarray, dict]:
    if config.background == "plain":
        canvas = np.empty((config.size, config.size, 3), dtype=np.uint8)
        canvas[:] = config.plain_colour
        return canvas, {"mode": "plain", "colour": list(config.plain_colour)}
    name, source = sources[int(rng.integers(len(sources)))]
    return inpainted_background(source, config.size), {"mode": "inpaint", "source": name}


def _place_all(sources, rng, config: ComposeConfig) -> tuple[list[Placement], list[str]]:
    placements, left_out = [], []
    for name, source in sources:
        for _ in range(config.placement_tries):  # after that many failures the source is left out
            candidate = place(name, source, rng, config)
            if acceptable(placements + [candidate], config):
                placements.append(candidate)
                break
        else:
            left_out.append(name)
    return placements, left_out


def _point_info(source: Sample, keep: np.ndarray) -> dict:
    """The kept points' source and confidence, from the source sample's meta where it has them."""
    info = source.meta.get(POINT_INFO)
    count = len(source.references[0].ref_points)
    entry = info[0] if isinstance(info, list) and len(info) == 1 else None
    if not (isinstance(entry, dict) and len(entry.get("source", ())) == len(entry.get("confidence", ())) == count):
        return {"source": [COMPOSED_SOURCE] * int(keep.sum()), "confidence": [None] * int(keep.sum())}
    indices = np.flatnonzero(keep).tolist()
    return {"source": [entry["source"][j] for j in indices], "confidence": [entry["confidence"][j] for j in indices]}


def compose_sample(
    sample_id: str,
    sources: list[tuple[str, Sample]],
    config: ComposeConfig,
    rng: np.random.Generator,
    provenance: dict | None = None,
) -> Sample:
    """One multi-subject sample from single-subject `sources` (name, sample), in drawing order.

    Deterministic for a given rng state. `provenance` (e.g. the run's seed and index) goes into
    meta beside what this function records. ValueError when a source is not single-subject or
    fewer than MIN_COMPOSED subjects can be placed visibly.
    """
    for name, source in sources:
        if len(source.references) != 1:
            raise ValueError(
                f"source {name!r} has {len(source.references)} references; compose takes single-subject samples"
            )
    canvas, background = _background(sources, rng, config)
    placements, left_out = _place_all(sources, rng, config)
    if len(placements) < MIN_COMPOSED:
        raise ValueError(
            f"sample {sample_id!r}: only {len(placements)} of {len(sources)} sources could be placed visibly "
            f"(left out: {left_out}); widen the scale/position ranges or lower min_visible"
        )
    for placement in placements:  # back to front
        y0, x0, y1, x1 = placement.box
        canvas[y0:y1, x0:x1][placement.covered] = placement.colour[placement.covered]
    owner = owner_map(placements, config.size)
    tokens = token_owner(owner, config.token_size, len(placements))
    references, subjects, info = [], [], []
    for k in rng.permutation(len(placements)).tolist():
        placement = placements[k]
        ref = placement.source.references[0]
        keep = visible_points(placement, k, owner)
        kept_points = placement.points[keep]
        rows, cols = np.floor(kept_points[:, 1]).astype(np.int64), np.floor(kept_points[:, 0]).astype(np.int64)
        eq2 = tokens[rows, cols] == k  # Eq. 2: only tokens this subject owns
        keep[np.flatnonzero(keep)[~eq2]] = False
        references.append(
            Reference(ref.image, owner == k, ref.ref_points[keep], placement.points[keep], ref.category, ref.label)
        )
        info.append(_point_info(placement.source, keep))
        subjects.append(
            {
                "source": placement.name,
                "category": ref.category,
                "draw_order": k,
                "scale": placement.scale,
                "offset": list(placement.offset),
                "source_to_target": placement.matrix,
                "source_size": list(placement.source.target.shape[:2]),
                "points": {"source": len(ref.target_points), "kept": int(keep.sum())},
            }
        )
    meta = {
        "composer": COMPOSER,
        "compose_version": COMPOSE_VERSION,
        **(provenance or {}),
        "config": asdict(config),
        "background": background,
        "subjects": subjects,
        "left_out": left_out,
        POINT_INFO: info,
    }
    caption = join_captions([placements[s["draw_order"]].source.caption for s in subjects])
    return validate(Sample(sample_id, canvas, caption, references, True, meta), config.token_size)
