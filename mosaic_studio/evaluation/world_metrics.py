"""Identity metrics for generations of the synthetic world, from pixels alone (no model).

A synthetic subject differs from its reference only by the world's viewpoint change: a scale,
a small rotation (|θ| ≤ 15°) and a horizontal flip (mosaic_studio/world/synthetic.py). So the descriptor of
identity used here is the reference itself, matched under that family of transforms
(`VIEWPOINTS`) at every position of the generated image, the classic masked template match. It
is exact on the world (a faithful subject matches its reference up to resampling), needs no
trained network whose own errors would blur the comparison between LoRAs, and is blind to the
attention maps that SCAL trains (no circularity). At a placement p of reference k:

- structure S(p) ∈ [-1, 1]: normalised cross-correlation of colour-gradient magnitudes over the
  reference's silhouette dilated by EDGE_MARGIN px, i.e. outline, pattern and detail edges.
  Invariant to colour, so a recoloured subject still has its shape found.
- colour C(p) ∈ [0, 1]: 1 − RMS RGB error inside the silhouette / COLOUR_SCALE.
- match J(p) = (max(S, 0) + C) / 2.

Per subject k (`subject_scores`):
- **identity fidelity** F_k = max_p J(p): about 0.9 for a faithfully drawn subject (the 64 px
  reference resampled), about 0.55 for a decoy identity in the same image.
- **fidelity above chance**: F_k minus `chance`, the mean fidelity of decoy references
  (identities absent from the image) in the same image (`chance_fidelity`).
- **presence**: the detection threshold is max(PRESENT_THRESHOLD, chance + PRESENT_MARGIN);
  `count` = placements with J above it and within DUPLICATE_MARGIN of
  the best, left after non-maximum suppression (boxes sharing more than half of the smaller
  one are one instance); 0 = missing, ≥ 2 = duplicated.
- **attribute leakage**: the reference recoloured with another reference's dominant colour (its
  pixels of its own dominant coarse colour, in the caption vocabulary train/shapes.COLOURS,
  painted in the other's), searched like the reference, matches better than the reference
  itself by more than LEAK_MARGIN: somewhere the subject's shape wears a neighbour's colour more
  than its own. Judged only where the subject is detected (own or recoloured match above the
  detection threshold); None otherwise, and when all references share one colour name.
- **prompt adherence** for the caption's phrase of subject k ("a <colour> <kind>"): the colour
  named covers ≥ COLOUR_AREA of the image outside the background's own colour name, and the kind
  is there: the silhouette alone (outline edges of the reference's mask, so pattern and colour
  do not matter; identities of one kind differ only by ±15% part sizes) reaches SHAPE_THRESHOLD.
  Pattern is never named in captions, so it is not part of adherence.

Thresholds are calibrated on the world's own ground-truth targets (docs/ABLATION.md lists the
oracle row: the metrics applied to the true target images).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from mosaic_studio.world.shapes import COLOURS

# Viewpoints searched: the longer side of the subject as a fraction of the image side (the world
# draws 0.17-0.75), rotations (the world draws uniform ±15°: ±10 leaves ≤ 5° unmatched), flips.
SCALES = tuple(0.14 * 1.15**n for n in range(13))  # 0.14 … 0.75
ROTATIONS = (-10.0, 0.0, 10.0)
VIEWPOINTS = tuple((s, r, f) for s in SCALES for r in ROTATIONS for f in (False, True))
WHITE_LEVEL = 245  # reference pixels with every channel above this are background
EDGE_MARGIN = 2  # px: the silhouette's outline edges lie just outside the silhouette
# Both sides are blurred before matching: references are 64 px point-sampled renders, so even
# the exact transform leaves aliasing errors at pattern edges (RMS 29 levels unblurred, 12 with
# this blur and the colour mask eroded by one pixel, on 10 held-out subjects).
BLUR_SIGMA = 1.0
COLOUR_SCALE = 128.0  # RMS error (0-255 levels) at which colour agreement reaches 0
PRESENT_MARGIN = 0.05  # above the decoys' chance fidelity of the same image
PRESENT_THRESHOLD = 0.64  # true targets: ~80% of (partly occluded) subjects pass, ~8% of absent identities
SHAPE_THRESHOLD = 0.5
COLOUR_AREA = 0.01  # of the image: a named colour present in smaller amounts is noise
NMS_OVERLAP = 0.5  # detections sharing more than this of the smaller box are one instance
DUPLICATE_MARGIN = 0.05  # a second instance must match about as well as the best one
LEAK_MARGIN = 0.05  # colour agreement a neighbour's colour must win by to count as leakage
_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)


@dataclass
class SubjectScore:
    fidelity: float  # max_p J(p)
    gain: float  # fidelity minus the image's chance fidelity (decoys); 0 = no better than chance
    structure: float  # S at the fidelity placement
    colour: float  # C at the fidelity placement
    count: int  # detections above the detection threshold (instances)
    leaked: bool | None  # took another reference's colour; None where undefined
    colour_present: bool  # the caption's colour for this subject is in the image
    kind_present: bool  # the silhouette of the subject's kind is in the image
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the fidelity placement

    @property
    def present(self) -> bool:
        return self.count >= 1

    @property
    def adherent(self) -> bool:
        return self.colour_present and self.kind_present

    def as_dict(self) -> dict:
        return {**asdict(self), "present": self.present, "adherent": self.adherent}


def reference_mask(reference: np.ndarray) -> np.ndarray:
    """Silhouette of a reference drawn on white (the official preprocessing's convention)."""
    return np.any(reference <= WHITE_LEVEL, axis=-1)


def colour_names(pixels: np.ndarray) -> np.ndarray:
    """Index into the caption colour vocabulary of each pixel's nearest named colour (RGB)."""
    flat = pixels.reshape(-1, 3).astype(np.float32)
    distance = ((flat[:, None, :] - _PALETTE[None]) ** 2).sum(-1)
    return distance.argmin(1).reshape(pixels.shape[:-1])


def dominant_colour(pixels: np.ndarray) -> str:
    """The most frequent colour name among (N, 3) pixels."""
    return _NAMES[np.bincount(colour_names(pixels), minlength=len(_NAMES)).argmax()]


def _blur(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(image.astype(np.float32), (0, 0), BLUR_SIGMA)


def _gradient(image: np.ndarray) -> np.ndarray:
    """Sum over RGB channels of the Sobel gradient magnitude (float32)."""
    image = image.astype(np.float32)
    dx, dy = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(dx * dx + dy * dy).sum(-1)


@dataclass
class _View:
    colour: np.ndarray  # (h, w, 3) float32, white outside the silhouette
    mask: np.ndarray  # (h, w) float32 silhouette less its boundary pixels (colour compares here)
    window: np.ndarray  # (h, w) float32 silhouette dilated by EDGE_MARGIN
    edges: np.ndarray  # (h, w) gradient magnitude of `colour`
    outline: np.ndarray  # (h, w) gradient magnitude of the silhouette alone
    raw: np.ndarray  # (h, w, 3) float32 unblurred colour (recolouring names its pixels)
    silhouette: np.ndarray  # (h, w) float32 full silhouette


def _views(reference: np.ndarray, image_side: int) -> list[_View]:
    """The reference under every viewpoint, cropped to its silhouette plus a margin."""
    mask = reference_mask(reference)
    if not mask.any():
        raise ValueError("reference has no subject pixels (everything is white)")
    ys, xs = np.nonzero(mask)
    crop = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
    colour, silhouette = reference[crop].astype(np.float32), mask[crop].astype(np.float32)
    h, w = silhouette.shape
    views = []
    for scale, rotation, flip in VIEWPOINTS:
        factor = scale * image_side / max(h, w)
        c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
        linear = factor * np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if flip else 1.0, 1.0])
        corners = linear @ (np.array([[0, w, 0, w], [0, 0, h, h]], dtype=np.float64) - [[w / 2], [h / 2]])
        half = np.ceil(np.abs(corners).max(axis=1)) + EDGE_MARGIN + 1
        size = (int(2 * half[0]), int(2 * half[1]))  # (width, height)
        if max(size) >= image_side:
            continue
        matrix = np.concatenate([linear, (half - linear @ [w / 2, h / 2])[:, None]], axis=1)

        def warp(a, border, matrix=matrix, size=size):  # bound now: used within this iteration only
            return cv2.warpAffine(a, matrix, size, flags=cv2.INTER_LINEAR, borderValue=border)

        view_mask = (warp(silhouette, 0) >= 0.5).astype(np.float32)
        if view_mask.sum() < 4:
            continue
        raw = warp(colour, (255, 255, 255))
        raw[view_mask == 0] = 255
        view_colour = _blur(raw)
        window = cv2.dilate(view_mask, np.ones((2 * EDGE_MARGIN + 1,) * 2, np.uint8))
        inner = cv2.erode(view_mask, np.ones((3, 3), np.uint8))  # its boundary blends with white
        outline = _gradient(_blur(np.repeat(view_mask[..., None] * 255, 3, axis=-1)))
        views.append(
            _View(
                view_colour,
                inner if inner.sum() >= 4 else view_mask,
                window,
                _gradient(view_colour),
                outline,
                raw,
                view_mask,
            )
        )
    return views


def _ncc(image: np.ndarray, template: np.ndarray, window: np.ndarray) -> np.ndarray:
    if template[window > 0].std() < 1e-6:
        return np.zeros((image.shape[0] - template.shape[0] + 1, image.shape[1] - template.shape[1] + 1), np.float32)
    score = cv2.matchTemplate(image, template, cv2.TM_CCOEFF_NORMED, mask=window)
    return np.nan_to_num(score, nan=0.0, posinf=0.0, neginf=0.0)  # flat image patches give 0/0


def _colour_agreement(image: np.ndarray, view: _View) -> np.ndarray:
    mask3 = np.repeat(view.mask[..., None], 3, axis=-1)
    squared = cv2.matchTemplate(image, view.colour, cv2.TM_SQDIFF, mask=mask3)
    rms = np.sqrt(np.maximum(squared, 0) / (3 * view.mask.sum()))
    return np.clip(1.0 - rms / COLOUR_SCALE, 0.0, 1.0)


def _overlap(a: tuple, b: tuple) -> float:
    """Intersection over the smaller box: a smaller view nested in a subject is the subject."""
    w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return w * h / smaller if smaller > 0 else 0.0


def count_instances(candidates: list[tuple[float, tuple]]) -> int:
    """Greedy non-maximum suppression of (score, box) detections: a detection overlapping a
    better one by more than NMS_OVERLAP of the smaller box is the same instance, and only
    detections within DUPLICATE_MARGIN of the best count. Returns the number of instances."""
    kept: list[tuple] = []
    ordered = sorted(candidates, key=lambda c: -c[0])
    for score, box in ordered:
        if score < ordered[0][0] - DUPLICATE_MARGIN:
            break  # a much weaker second match is a look-alike, not a copy
        if all(_overlap(box, other) <= NMS_OVERLAP for other in kept):
            kept.append(box)
    return len(kept)


def _background_name(image: np.ndarray) -> int:
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return int(np.bincount(colour_names(border), minlength=len(_NAMES)).argmax())


def _recoloured(view: _View, painted: np.ndarray, rgb: np.ndarray) -> _View:
    """The view with its `painted` pixels in colour `rgb`: the subject as it would look had it
    taken another reference's dominant colour."""
    colour = view.raw.copy()
    colour[painted] = rgb
    colour[view.silhouette == 0] = 255
    return _View(_blur(colour), view.mask, view.window, view.edges, view.outline, colour, view.silhouette)


@dataclass
class _Search:
    """The best placements of one reference in one image."""

    fidelity: float = -1.0
    structure: float = 0.0
    colour: float = 0.0
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    view: _View | None = None
    at: tuple[int, int] = (0, 0)
    recoloured: list = dataclasses.field(default_factory=list)  # best J of each recoloured reference
    kind: float = -1.0  # best silhouette-outline NCC
    candidates: list = dataclasses.field(default_factory=list)  # (J, box) detections


def _search(reference: np.ndarray, pixels: np.ndarray, edges: np.ndarray, own: str = "", recolours=()) -> _Search:
    """Every viewpoint of `reference` at every position. With `recolours` (RGB colours), also
    the best match of the reference with its pixels of colour name `own` painted each colour
    (structure is colour-blind, so it is shared)."""
    found = _Search(recoloured=[-1.0] * len(recolours))
    for view in _views(reference, pixels.shape[0]):
        h, w = view.mask.shape
        structure = _ncc(edges, view.edges, view.window)
        colour = _colour_agreement(pixels, view)
        match = (np.maximum(structure, 0) + colour) / 2
        painted = (colour_names(view.raw) == _NAMES.index(own)) & (view.silhouette > 0) if recolours else None
        for i, rgb in enumerate(recolours):
            other = (np.maximum(structure, 0) + _colour_agreement(pixels, _recoloured(view, painted, rgb))) / 2
            found.recoloured[i] = max(found.recoloured[i], float(other.max()))
        found.kind = max(found.kind, float(_ncc(edges, view.outline, view.window).max()))
        y, x = np.unravel_index(match.argmax(), match.shape)
        if match[y, x] > found.fidelity:
            found.fidelity, found.structure, found.colour = (
                float(match[y, x]),
                float(structure[y, x]),
                float(colour[y, x]),
            )
            found.box, found.view, found.at = (int(x), int(y), int(x + w), int(y + h)), view, (y, x)
        for _ in range(2):  # the two best positions of each viewpoint: room for a duplicate
            y, x = np.unravel_index(match.argmax(), match.shape)
            if match[y, x] < PRESENT_THRESHOLD:
                break
            found.candidates.append((float(match[y, x]), (x, y, x + w, y + h)))
            match[max(0, y - h // 2) : y + h // 2 + 1, max(0, x - w // 2) : x + w // 2 + 1] = -1
    return found


def _leaked(found: _Search, threshold: float) -> bool | None:
    """Judged where the subject is detected in its own or a neighbour's colour."""
    if not found.recoloured or max(found.fidelity, *found.recoloured) < threshold:
        return None
    return max(found.recoloured) > found.fidelity + LEAK_MARGIN


def _image_features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.ascontiguousarray(np.asarray(image)[..., :3])
    if image.ndim != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"image must be a square (H, W, 3) array, got shape {image.shape}")
    pixels = _blur(image)
    return image, pixels, _gradient(pixels)


def chance_fidelity(image: np.ndarray, decoys: list[np.ndarray]) -> float:
    """Mean fidelity of decoy references (identities absent from the scene) in `image`: what
    any subject-like template reaches by chance in this image's clutter at that size."""
    if not decoys:
        raise ValueError("need at least one decoy reference")
    _, pixels, edges = _image_features(image)
    return float(np.mean([_search(d, pixels, edges).fidelity for d in decoys]))


def subject_scores(
    image: np.ndarray, references: list[np.ndarray], caption_colours: list[str] | None = None, chance: float = 0.0
) -> list[SubjectScore]:
    """Fidelity, presence, leakage and adherence of every reference's subject in `image`.

    image: (H, W, 3) uint8 generation (square); references: (r, r, 3) uint8 on white, in
    prompt order; caption_colours: the colour named for each subject (default: each
    reference's dominant colour name); chance: `chance_fidelity` of this image, which raises
    the detection threshold to chance + PRESENT_MARGIN where that is above PRESENT_THRESHOLD.
    """
    image, pixels, edges = _image_features(image)
    if not references:
        raise ValueError("need at least one reference")
    silhouettes = [reference_mask(r) for r in references]
    for k, silhouette in enumerate(silhouettes):
        if not silhouette.any():
            raise ValueError(f"reference {k} has no subject pixels (everything is white)")
    own = [dominant_colour(r[m]) for r, m in zip(references, silhouettes)]
    means = [r[m][colour_names(r[m]) == _NAMES.index(name)].mean(0) for r, m, name in zip(references, silhouettes, own)]
    caption_colours = list(caption_colours) if caption_colours is not None else own
    if len(caption_colours) != len(references):
        raise ValueError(f"{len(caption_colours)} caption colours for {len(references)} references")
    unknown = sorted(set(caption_colours) - set(_NAMES))
    if unknown:
        raise ValueError(f"unknown colour names {unknown}; known: {list(_NAMES)}")
    names = colour_names(image)
    counts = np.bincount(names[names != _background_name(image)], minlength=len(_NAMES)) / names.size
    threshold = max(PRESENT_THRESHOLD, chance + PRESENT_MARGIN)
    results = []
    for k, reference in enumerate(references):
        others = list(dict.fromkeys(name for name in own if name != own[k]))  # distinct, in order
        found = _search(reference, pixels, edges, own[k], [means[own.index(name)] for name in others])
        results.append(
            SubjectScore(
                fidelity=found.fidelity,
                gain=found.fidelity - chance,
                structure=found.structure,
                colour=found.colour,
                count=count_instances([c for c in found.candidates if c[0] >= threshold]),
                leaked=_leaked(found, threshold),
                colour_present=bool(counts[_NAMES.index(caption_colours[k])] >= COLOUR_AREA),
                kind_present=found.kind >= SHAPE_THRESHOLD,
                box=found.box,
            )
        )
    return results
