"""Procedural subject identities for the synthetic world, shaded in their own local frame.

An identity is a pure function of an integer id: a category family (analogues of the paper's
human / animal / object), a silhouette kind of that family built from a few primitives, a main
and an accent colour (a named coarse colour plus a jitter), a pattern painted in the accent
colour over the main-coloured parts, and a small distinctive mark (the detail) at a specific
spot of the body. The local frame has x to the right and y down; a subject spans about
[-1, 1]^2 and faces right, so a horizontal flip in a scene is a visible change.

`shade(identity, x, y)` gives coverage and colour at any local points, so a caller renders a
view by mapping its pixel centres back into the local frame (no per-pixel Python loops).
Held-out identities (`identity_split`) come from a hash of the id, so no seed or scene can
leak them into the training split.
"""

from __future__ import annotations

import functools
import hashlib
import math
from dataclasses import dataclass

import numpy as np

FAMILIES = ("human", "animal", "object")  # the tags of mosaic.semalign.CATEGORIES
KINDS = {
    "human": ("person", "robed figure"),
    "animal": ("quadruped", "bird", "fish"),
    "object": ("vase", "mug", "lamp", "chest"),
}
# Coarse colour names used in captions, with their base RGB. No near-white colour: references
# are drawn on white, and the official preprocessing treats white as background.
COLOURS = {
    "red": (200, 40, 40),
    "orange": (235, 130, 30),
    "yellow": (230, 200, 40),
    "green": (50, 160, 60),
    "teal": (30, 150, 150),
    "blue": (40, 80, 200),
    "purple": (130, 60, 170),
    "pink": (235, 120, 170),
    "brown": (130, 80, 40),
    "gray": (128, 128, 128),
    "black": (35, 35, 35),
}
COLOUR_JITTER = 18  # +- per channel: identities of one coarse colour still differ
PATTERNS = ("plain", "stripes", "dots", "checks")
PATTERN_PERIOD = (0.16, 0.32)  # local units: a few repeats across a subject
DOT_RADIUS = (0.22, 0.36)  # as a fraction of the pattern period
PART_JITTER = (0.85, 1.15)  # multiplicative jitter on every part dimension
DETAIL_RADIUS = (0.08, 0.13)  # local units: a small but visible mark
DETAIL_SHAPES = ("disc", "diamond", "square")
DETAIL_SPREAD = 0.25  # the mark's centre is within +-this fraction of the body's box of its centre
HELDOUT_PERCENT = 10  # share of identity ids reserved for held-out evaluation
_IDENTITY_SALT = 0x1D  # separates identity streams from any other use of the same ids
_SPLIT_HASH_KEY = b"mosaic-identity-split"

# Paint codes, in painting order: later codes win where they overlap.
NONE, MAIN, ACCENT, PATTERN, DETAIL = range(5)


@dataclass(frozen=True)
class Part:
    """One primitive of a silhouette, in local units, painted MAIN or ACCENT."""

    shape: str  # "ellipse" | "box" | "capsule" | "polygon" | "ring"
    params: tuple  # see `_contains`
    paint: int


@dataclass(frozen=True, eq=False)  # eq=False: identities are compared by id, not by arrays
class Identity:
    identity_id: int
    family: str
    kind: str
    parts: tuple[Part, ...]  # parts[0] is the body: it carries the detail mark
    main_name: str
    accent_name: str
    palette: np.ndarray  # (5, 3) uint8 colour per paint code (NONE's row is unused)
    pattern: str
    pattern_params: tuple  # (angle, period, dot radius): local units
    detail: Part
    bounds: tuple[float, float, float, float]  # local (x0, y0, x1, y1) of the silhouette


def _contains(part: Part, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = part.params
    if part.shape == "ellipse":  # (cx, cy, rx, ry)
        return ((x - p[0]) / p[2]) ** 2 + ((y - p[1]) / p[3]) ** 2 <= 1.0
    if part.shape == "box":  # rounded box (cx, cy, half_w, half_h, corner radius)
        qx = np.abs(x - p[0]) - (p[2] - p[4])
        qy = np.abs(y - p[1]) - (p[3] - p[4])
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
        return outside <= p[4]
    if part.shape == "capsule":  # segment (x0, y0) -> (x1, y1) thickened by radius r
        dx, dy = p[2] - p[0], p[3] - p[1]
        t = np.clip(((x - p[0]) * dx + (y - p[1]) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        return (x - p[0] - t * dx) ** 2 + (y - p[1] - t * dy) ** 2 <= p[4] ** 2
    if part.shape == "polygon":  # convex, vertices ((x, y), ...) in either winding
        inside_left = inside_right = True
        for (x0, y0), (x1, y1) in zip(p, p[1:] + p[:1]):
            cross = (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0)
            inside_left = inside_left & (cross >= 0)
            inside_right = inside_right & (cross <= 0)
        return inside_left | inside_right
    if part.shape == "ring":  # annulus (cx, cy, outer radius, inner radius)
        d2 = (x - p[0]) ** 2 + (y - p[1]) ** 2
        return (d2 <= p[2] ** 2) & (d2 >= p[3] ** 2)
    raise ValueError(f"unknown part shape {part.shape!r}")


def _bounds(part: Part) -> tuple[float, float, float, float]:
    p = part.params
    if part.shape == "ellipse":
        return p[0] - p[2], p[1] - p[3], p[0] + p[2], p[1] + p[3]
    if part.shape == "box":
        return p[0] - p[2], p[1] - p[3], p[0] + p[2], p[1] + p[3]
    if part.shape == "capsule":
        return min(p[0], p[2]) - p[4], min(p[1], p[3]) - p[4], max(p[0], p[2]) + p[4], max(p[1], p[3]) + p[4]
    if part.shape == "polygon":
        xs, ys = zip(*p)
        return min(xs), min(ys), max(xs), max(ys)
    return p[0] - p[2], p[1] - p[2], p[0] + p[2], p[1] + p[2]  # ring


def _silhouette(kind: str, j) -> list[Part]:
    """Parts of one kind; `j()` draws a fresh dimension jitter factor for each use."""
    E, B, C, P, R = "ellipse", "box", "capsule", "polygon", "ring"
    if kind == "person":
        arm_y = -0.75 * j()  # one arm raised, the other down: the figure is not symmetric
        return [
            Part(B, (0, -0.15, 0.26 * j(), 0.36 * j(), 0.08), MAIN),
            Part(E, (0, -0.74, 0.19 * j(), 0.21 * j()), ACCENT),
            Part(C, (0.24, -0.42, 0.48 * j(), arm_y, 0.07), MAIN),
            Part(C, (-0.24, -0.42, -0.4 * j(), 0.15, 0.07), MAIN),
            Part(C, (0.12, 0.18, 0.14, 0.92 * j(), 0.08 * j()), ACCENT),
            Part(C, (-0.12, 0.18, -0.14, 0.92 * j(), 0.08 * j()), ACCENT),
        ]
    if kind == "robed figure":
        hem = 0.45 * j()
        return [
            Part(P, ((-0.2, -0.5), (0.2, -0.5), (hem, 0.92), (-hem, 0.92)), MAIN),
            Part(E, (0, -0.72, 0.18 * j(), 0.2 * j()), ACCENT),
            Part(P, ((-0.2, -0.82), (0.2, -0.82), (0.05 * j(), -1.0)), ACCENT),  # hat
            Part(C, (0.18, -0.4, 0.5 * j(), -0.1 * j(), 0.07), MAIN),
        ]
    if kind == "quadruped":
        return [
            Part(E, (-0.05, 0.0, 0.6 * j(), 0.3 * j()), MAIN),
            Part(E, (0.62, -0.32, 0.22 * j(), 0.2 * j()), MAIN),
            Part(P, ((0.52, -0.45), (0.62, -0.45), (0.55, -0.68 * j())), ACCENT),
            Part(C, (-0.6, -0.1, -0.92 * j(), -0.45 * j(), 0.05), ACCENT),
            *[Part(C, (lx, 0.15, lx, 0.68 * j(), 0.07), ACCENT) for lx in (-0.45, -0.25, 0.2, 0.4)],
        ]
    if kind == "bird":
        return [
            Part(E, (0, 0, 0.5 * j(), 0.32 * j()), MAIN),
            Part(E, (0.45, -0.38, 0.2 * j(), 0.19 * j()), MAIN),
            Part(P, ((0.6, -0.43), (0.9 * j(), -0.36), (0.6, -0.3)), ACCENT),
            Part(E, (-0.08, -0.05, 0.3 * j(), 0.15 * j()), ACCENT),  # wing
            Part(P, ((-0.45, -0.05), (-0.95 * j(), -0.3), (-0.9 * j(), 0.15)), ACCENT),
            Part(C, (0.05, 0.3, 0.0, 0.7 * j(), 0.035), ACCENT),
            Part(C, (-0.15, 0.3, -0.2, 0.7 * j(), 0.035), ACCENT),
        ]
    if kind == "fish":
        return [
            Part(E, (0.1, 0, 0.65 * j(), 0.35 * j()), MAIN),
            Part(P, ((-0.45, 0), (-0.95, -0.4 * j()), (-0.95, 0.4 * j())), ACCENT),
            Part(P, ((-0.1, -0.3), (0.3, -0.3), (0.0, -0.6 * j())), ACCENT),
            Part(E, (0.5, -0.08, 0.06, 0.06), ACCENT),
        ]  # eye
    if kind == "vase":
        return [
            Part(E, (0, 0.25, 0.5 * j(), 0.62 * j()), MAIN),
            Part(B, (0, -0.45, 0.17 * j(), 0.32, 0.05), MAIN),
            Part(B, (0, -0.8, 0.28 * j(), 0.07, 0.03), ACCENT),
        ]
    if kind == "mug":
        return [
            Part(B, (-0.12, 0.05, 0.5 * j(), 0.68 * j(), 0.1), MAIN),
            Part(R, (0.42, 0.05, 0.34 * j(), 0.2), ACCENT),
            Part(B, (-0.12, -0.62, 0.52, 0.07, 0.03), ACCENT),
        ]
    if kind == "lamp":
        top = -0.95 * j()
        return [
            Part(P, ((-0.25, top), (0.25, top), (0.55 * j(), -0.2), (-0.55 * j(), -0.2)), MAIN),
            Part(C, (0, -0.2, 0, 0.75, 0.06), ACCENT),
            Part(B, (0.08, 0.82, 0.42 * j(), 0.1, 0.04), ACCENT),
        ]
    if kind == "chest":
        return [
            Part(B, (0, 0.15, 0.8 * j(), 0.45 * j(), 0.06), MAIN),
            Part(B, (0, -0.42, 0.84, 0.16 * j(), 0.06), ACCENT),
            Part(B, (0.55, 0.2, 0.08, 0.12, 0.02), ACCENT),
        ]  # latch, off-centre
    raise ValueError(f"unknown kind {kind!r}")


def _colour(rng: np.random.Generator, name: str) -> np.ndarray:
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    return np.clip(np.array(COLOURS[name]) + jitter, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4096)
def make_identity(identity_id: int) -> Identity:
    """The identity with this id: the same id gives the same identity in every process."""
    if identity_id < 0:
        raise ValueError(f"identity ids are non-negative, got {identity_id}")
    rng = np.random.default_rng([_IDENTITY_SALT, identity_id])
    family = FAMILIES[rng.integers(len(FAMILIES))]
    kind = KINDS[family][rng.integers(len(KINDS[family]))]
    parts = _silhouette(kind, lambda: float(rng.uniform(*PART_JITTER)))
    main_name, accent_name, detail_name = rng.choice(list(COLOURS), size=3, replace=False)
    accent = _colour(rng, accent_name)  # the pattern is painted in the accent colour too
    palette = np.stack(
        [np.zeros(3, np.uint8), _colour(rng, main_name), accent, accent, _colour(rng, detail_name)]
    )  # rows: NONE, MAIN, ACCENT, PATTERN, DETAIL
    pattern = PATTERNS[rng.integers(len(PATTERNS))]
    period = float(rng.uniform(*PATTERN_PERIOD))
    pattern_params = (float(rng.uniform(0, math.pi)), period, period * float(rng.uniform(*DOT_RADIUS)))
    # The detail sits inside the body's inner half at an identity-specific spot.
    bx0, by0, bx1, by1 = _bounds(parts[0])
    cx = (bx0 + bx1) / 2 + float(rng.uniform(-DETAIL_SPREAD, DETAIL_SPREAD)) * (bx1 - bx0)
    cy = (by0 + by1) / 2 + float(rng.uniform(-DETAIL_SPREAD, DETAIL_SPREAD)) * (by1 - by0)
    r = float(rng.uniform(*DETAIL_RADIUS))
    shape = DETAIL_SHAPES[rng.integers(len(DETAIL_SHAPES))]
    if shape == "disc":
        detail = Part("ellipse", (cx, cy, r, r), DETAIL)
    elif shape == "diamond":
        detail = Part("polygon", ((cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)), DETAIL)
    else:
        detail = Part("box", (cx, cy, r, r, 0.0), DETAIL)
    palette.flags.writeable = False  # identities are cached and shared: keep them immutable
    boxes = np.array([_bounds(p) for p in parts])
    bounds = (*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist())
    return Identity(
        identity_id,
        family,
        kind,
        tuple(parts),
        str(main_name),
        str(accent_name),
        palette,
        pattern,
        pattern_params,
        detail,
        tuple(bounds),
    )


def _pattern_mask(identity: Identity, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    angle, period, dot_radius = identity.pattern_params
    along = x * math.cos(angle) + y * math.sin(angle)  # coordinates in the pattern's rotated frame
    across = -x * math.sin(angle) + y * math.cos(angle)
    if identity.pattern == "stripes":  # parity of the half-period band
        return (np.floor(along / (period / 2)).astype(np.int64) & 1) == 0
    if identity.pattern == "checks":
        return ((np.floor(along / period).astype(np.int64) + np.floor(across / period).astype(np.int64)) & 1) == 0
    if identity.pattern == "dots":
        da = along - period * np.round(along / period)
        dc = across - period * np.round(across / period)
        return da * da + dc * dc <= dot_radius * dot_radius
    return np.zeros(x.shape, dtype=bool)  # plain


def shade(identity: Identity, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage (bool, x.shape) and colour (uint8, x.shape + (3,)) at local points (x, y)."""
    code = np.zeros(x.shape, dtype=np.uint8)
    for part in identity.parts:  # painter's order inside the subject
        code[_contains(part, x, y)] = part.paint
    covered = code != NONE
    code[(code == MAIN) & _pattern_mask(identity, x, y)] = PATTERN
    code[covered & _contains(identity.detail, x, y)] = DETAIL
    return covered, np.take(identity.palette, code, axis=0)  # np.take: much faster than palette[code]


def identity_split(identity_id: int) -> str:
    """'heldout' for HELDOUT_PERCENT of ids chosen by a keyed hash, else 'train'."""
    digest = hashlib.blake2b(str(identity_id).encode(), digest_size=8, key=_SPLIT_HASH_KEY).digest()
    return "heldout" if int.from_bytes(digest, "big") % 100 < HELDOUT_PERCENT else "train"
