"""Synthetic multi-subject world: SemAlign-MS samples whose masks and correspondences are exact.

A scene draws 1-6 distinct identities (mosaic_studio/world/shapes.py) of one split, places each with a
random scale, small rotation and horizontal flip (the viewpoint change from its reference) on
a solid, gradient, striped or checked background. Subjects are drawn in order and a later one
occludes an earlier one; a placement is retried while it would leave any subject less than
MIN_VISIBLE_FRACTION visible, and the identity is dropped after PLACEMENT_TRIES failures.
Masks are the visible regions (the front-most subject owns a pixel), hence disjoint.
Eq. 2 at the model's `token_size`: a target token seen by several subjects keeps the points
of the subject owning most of its pixels (ties: the front-most), so correspondences are
disjoint per token at that size and at every divisor of it (those grids nest in it); a
placement is also retried while any subject would own no token at all.

References show each subject alone and upright on white, cropped to its box and scaled so the
longer side fills REFERENCE_FILL of a square `ref_size` canvas: the official preprocessing,
done analytically. Correspondences start from visible target pixels (centres, so v is in the
mask by construction and covers the visible region evenly) in tokens the subject owns, go back
through the inverse of the subject's target transform to the subject-local point, then forward through its reference
transform to u: u and v are the same local point, exactly. Both transforms are in
`sample.meta["subjects"]` (aligned with the references) so anyone can re-check that.

Captions name each subject's kind (which implies its family) and coarse main colour, never its
pattern, accent or detail: identity has to come from the reference. Reference order is
shuffled relative to drawing order, so it says nothing about occlusion.

Every sample depends only on (seed, split, index): same inputs, identical bytes; generation is
resumable and can be split across processes. CLI:
    python -m mosaic_studio.world.synthetic --out DIR --num N --seed S --split train|heldout
"""

from __future__ import annotations

import argparse
import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mosaic_studio.mosaic.data.semalign import (
    DEFAULT_TOKEN_SIZE,
    MAX_REFERENCES,
    Reference,
    Sample,
    check_manifest,
    list_sample_dirs,
    remove_partial_writes,
    save_sample,
    token_grid,
)
from mosaic_studio.mosaic.images import REFERENCE_FILL
from mosaic_studio.world.shapes import Identity, identity_split, make_identity, shade

SPLITS = ("train", "heldout")
GENERATOR_VERSION = 1  # bump when the same (seed, split, index) would give different bytes
MANIFEST = "world.json"
_WORLD_SALT = 0x5CE7E  # separates scene streams from identity streams
MAX_ROTATION_DEG = 15.0  # small in-plane rotation: a viewpoint change, not a new pose
FLIP_PROBABILITY = 0.5
# Longer side of a subject as a fraction of the target side in a one-subject scene; crowded
# scenes shrink subjects by K ** -CROWDING_EXPONENT so that six still fit with partial overlap.
SUBJECT_SIZE = (0.4, 0.75)
CROWDING_EXPONENT = 0.45
MIN_VISIBLE_FRACTION = 0.45  # of a subject's own area, after all later subjects are drawn
MIN_VISIBLE_AREA = 0.004  # of the target area: no sliver-sized subject survives occlusion
PLACEMENT_TRIES = 16
MAX_IDENTITY_DRAWS = 100_000  # an identity pool with too few ids of a split fails loudly
BACKGROUNDS = {
    "solid": "a plain background",
    "gradient": "a gradient background",
    "stripes": "a striped background",
    "checks": "a checked background",
}
BACKGROUND_LEVELS = (70, 235)  # background colour channels: mid to light, never pure white
TEXTURE_CONTRAST = 22  # +- per channel between the two tones of a striped/checked background
TEXTURE_PERIOD = (0.05, 0.15)  # of the target side
GRADIENT_STEPS = 256  # colour levels of a gradient: finer than 8-bit channels can show


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and densities of generated samples (all in pixels or counts)."""

    target_size: int = 128  # square targets; FLUX needs a multiple of 16 for training
    ref_size: int = 64  # square reference canvas
    min_subjects: int = 1
    max_subjects: int = MAX_REFERENCES
    points_per_subject: int = 256  # stored correspondences per reference (more than P_k = 150)
    identity_pool: int = 1_000_000  # identity ids are drawn from [0, identity_pool)
    token_size: int = DEFAULT_TOKEN_SIZE  # pixels per model token: Eq. 2 holds at this size

    def __post_init__(self):
        if not 1 <= self.min_subjects <= self.max_subjects <= MAX_REFERENCES:
            raise ValueError(f"need 1 <= min_subjects <= max_subjects <= {MAX_REFERENCES}")
        if min(self.target_size, self.ref_size, self.points_per_subject, self.identity_pool, self.token_size) < 1:
            raise ValueError("sizes, points_per_subject, identity_pool and token_size must be positive")


@dataclass
class _Placement:
    identity: Identity
    matrix: np.ndarray  # (2, 3) affine, local (x, y, 1) -> target pixels
    box: tuple[int, int, int, int]  # target pixel rows/cols it touches: (y0, x0, y1, x1)
    covered: np.ndarray  # (y1-y0, x1-x0) bool coverage inside `box`
    colour: np.ndarray  # (y1-y0, x1-x0, 3) uint8
    flipped: bool
    rotation_deg: float


def _pixel_centres(y0: int, x0: int, y1: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[y0:y1, x0:x1]
    return xs + 0.5, ys + 0.5  # (x, y) centres, (rows, cols) each


def _to_local(matrix: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of a (2, 3) affine applied to pixel points (x, y)."""
    inverse = np.linalg.inv(matrix[:, :2])
    dx, dy = x - matrix[0, 2], y - matrix[1, 2]
    return inverse[0, 0] * dx + inverse[0, 1] * dy, inverse[1, 0] * dx + inverse[1, 1] * dy


def _apply(matrix: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (matrix[0, 0] * x + matrix[0, 1] * y + matrix[0, 2], matrix[1, 0] * x + matrix[1, 1] * y + matrix[1, 2])


def _local_box(identity: Identity) -> tuple[np.ndarray, float]:
    x0, y0, x1, y1 = identity.bounds
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2]), max(x1 - x0, y1 - y0)


def _place(rng: np.random.Generator, identity: Identity, size: int, crowd: int) -> _Placement:
    """Random scale, rotation, flip and position, then the subject shaded over its box."""
    centre, extent = _local_box(identity)
    scale = rng.uniform(*SUBJECT_SIZE) * crowd**-CROWDING_EXPONENT * size / extent
    rotation = float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    flipped = bool(rng.random() < FLIP_PROBABILITY)
    c, s = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    linear = scale * np.array([[c, -s], [s, c]]) @ np.diag([-1.0 if flipped else 1.0, 1.0])
    x0, y0, x1, y1 = identity.bounds
    corners = linear @ (np.array([[x0, x1, x0, x1], [y0, y0, y1, y1]]) - centre[:, None])
    low, high = -corners.min(axis=1), size - corners.max(axis=1)  # keeps the whole box in frame
    position = np.where(low <= high, rng.uniform(np.minimum(low, high), np.maximum(low, high)), size / 2)
    matrix = np.concatenate([linear, (position - linear @ centre)[:, None]], axis=1)
    (left, top), (right, bottom) = corners.min(axis=1) + position, corners.max(axis=1) + position
    box = (max(0, math.floor(top)), max(0, math.floor(left)), min(size, math.ceil(bottom)), min(size, math.ceil(right)))
    covered, colour = shade(identity, *_to_local(matrix, *_pixel_centres(*box)))
    return _Placement(identity, matrix, box, covered, colour, flipped, rotation)


def _owner_map(placements: list[_Placement], size: int) -> np.ndarray:
    """Index of the front-most subject at each target pixel, -1 for background."""
    owner = np.full((size, size), -1, dtype=np.int8)
    for k, p in enumerate(placements):  # later subjects are in front
        y0, x0, y1, x1 = p.box
        owner[y0:y1, x0:x1][p.covered] = k
    return owner


@functools.lru_cache(maxsize=8)
def _pixel_tokens(size: int, token_size: int) -> np.ndarray:
    """(size, size) row-major token index of every target pixel."""
    _, grid_w = token_grid(size, size, token_size)
    cells = np.arange(size) // token_size
    return cells[:, None] * grid_w + cells[None, :]


def _token_owner(owner: np.ndarray, token_size: int, count: int) -> np.ndarray:
    """Per token, the subject owning most of its pixels (ties: front-most); -1 if none."""
    tokens = _pixel_tokens(owner.shape[0], token_size)
    n_tokens = int(tokens[-1, -1]) + 1
    votes = np.bincount((tokens * (count + 1) + owner + 1).ravel(), minlength=n_tokens * (count + 1))
    votes = votes.reshape(n_tokens, count + 1)[:, 1:]  # (tokens, subjects): background dropped
    best = count - 1 - np.argmax(votes[:, ::-1], axis=1)  # reversed so ties go to the later subject
    return np.where(votes.max(axis=1) > 0, best, -1)


def _acceptable(placements: list[_Placement], size: int, token_size: int) -> bool:
    """Every subject stays visible enough and owns at least one token."""
    owner = _owner_map(placements, size)
    counts = np.bincount(owner.ravel() + 1, minlength=len(placements) + 1)[1:]
    areas = np.array([p.covered.sum() for p in placements])
    if np.any(counts < np.maximum(MIN_VISIBLE_FRACTION * areas, MIN_VISIBLE_AREA * size * size)):
        return False
    owned = np.bincount(_token_owner(owner, token_size, len(placements)) + 1, minlength=len(placements) + 1)
    return bool(np.all(owned[1:] > 0))


def _background(rng: np.random.Generator, size: int) -> tuple[str, np.ndarray]:
    kind = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    base = rng.integers(*BACKGROUND_LEVELS, size=3)
    angle = rng.uniform(0, 2 * math.pi)
    centres = np.arange(size, dtype=np.float32) + 0.5
    # Coordinates along and across `angle`, in target sides: (size, size) by broadcasting.
    along = (centres[None, :] * math.cos(angle) + centres[:, None] * math.sin(angle)) / size
    # Each kind picks per pixel a row of a small colour table: np.take is far cheaper than
    # arithmetic on the (size, size, 3) image, and than fancy indexing.
    if kind == "gradient":
        other = rng.integers(*BACKGROUND_LEVELS, size=3)
        steps = np.linspace(0.0, 1.0, GRADIENT_STEPS)[:, None]
        table = np.rint(base + steps * (other - base)).astype(np.uint8)
        t = (along - along.min()) / (along.max() - along.min())
        return kind, np.take(table, np.rint(t * (GRADIENT_STEPS - 1)).astype(np.intp), axis=0)
    if kind in ("stripes", "checks"):
        period = rng.uniform(*TEXTURE_PERIOD)
        band = np.floor(along / period).astype(np.intp)
        if kind == "checks":
            across = (-centres[None, :] * math.sin(angle) + centres[:, None] * math.cos(angle)) / size
            band += np.floor(across / period).astype(np.intp)
        table = np.clip(base + np.array([[-TEXTURE_CONTRAST], [TEXTURE_CONTRAST]]), 0, 255).astype(np.uint8)
        return kind, np.take(table, band & 1, axis=0)  # parity of the band: alternate tones
    image = np.empty((size, size, 3), dtype=np.uint8)
    image[:] = base
    return kind, image


def _reference(identity: Identity, ref_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The subject alone on white, padded as the official preprocessing; and its affine."""
    centre, extent = _local_box(identity)
    scale = REFERENCE_FILL * ref_size / extent
    matrix = np.array([[scale, 0.0, ref_size / 2 - scale * centre[0]], [0.0, scale, ref_size / 2 - scale * centre[1]]])
    covered, colour = shade(identity, *_to_local(matrix, *_pixel_centres(0, 0, ref_size, ref_size)))
    image = np.full((ref_size, ref_size, 3), 255, dtype=np.uint8)
    image[covered] = colour[covered]
    return image, matrix


def _caption(identities: list[Identity], background: str) -> str:
    names = [f"{'an' if i.main_name[0] in 'aeiou' else 'a'} {i.main_name} {i.kind}" for i in identities]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{listed} on {BACKGROUNDS[background]}"


def _draw_identity_ids(rng: np.random.Generator, split: str, count: int, pool: int) -> list[int]:
    chosen: list[int] = []
    for _ in range(MAX_IDENTITY_DRAWS):  # rejection: ~100/HELDOUT_PERCENT draws per held-out id
        candidate = int(rng.integers(pool))
        if identity_split(candidate) == split and candidate not in chosen:
            chosen.append(candidate)
            if len(chosen) == count:
                return chosen
    raise ValueError(f"identity pool of {pool} ids has too few {split!r} identities for {count} subjects")


def _compose(rng: np.random.Generator, split: str, config: WorldConfig) -> list[_Placement]:
    """Draw 1-6 identities and place them back to front; see the module docstring."""
    wanted = int(rng.integers(config.min_subjects, config.max_subjects + 1))
    placements: list[_Placement] = []
    for identity_id in _draw_identity_ids(rng, split, wanted, config.identity_pool):
        identity = make_identity(identity_id)
        for _ in range(PLACEMENT_TRIES):  # after that many failures the identity is left out
            candidate = _place(rng, identity, config.target_size, wanted)
            if _acceptable(placements + [candidate], config.target_size, config.token_size):
                placements.append(candidate)
                break
    return placements


def sample_id(seed: int, split: str, index: int) -> str:
    return f"{split}-{seed}-{index:07d}"


def generate_sample(seed: int, index: int, split: str = "train", config: WorldConfig = WorldConfig()) -> Sample:
    """Sample `index` of the world (seed, split): a pure function of its arguments."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if seed < 0 or index < 0:
        raise ValueError("seed and index must be non-negative")
    rng = np.random.default_rng([_WORLD_SALT, seed, SPLITS.index(split), index])
    size = config.target_size
    background, target = _background(rng, size)
    placements = _compose(rng, split, config)
    owner = _owner_map(placements, size)
    token_owner = _token_owner(owner, config.token_size, len(placements))[_pixel_tokens(size, config.token_size)]
    for p in placements:  # composite back to front
        y0, x0, y1, x1 = p.box
        target[y0:y1, x0:x1][p.covered] = p.colour[p.covered]

    references, subjects = [], []
    for k in rng.permutation(len(placements)).tolist():
        p = placements[k]
        image, ref_matrix = _reference(p.identity, config.ref_size)
        mask = owner == k
        rows, cols = np.nonzero(mask & (token_owner == k))  # Eq. 2: only tokens this subject owns
        if len(rows) > config.points_per_subject:
            keep = np.sort(rng.choice(len(rows), size=config.points_per_subject, replace=False))
            rows, cols = rows[keep], cols[keep]
        vx, vy = cols + 0.5, rows + 0.5  # visible pixel centres in the target
        ux, uy = _apply(ref_matrix, *_to_local(p.matrix, vx, vy))  # same local point in the reference
        references.append(
            Reference(image, mask, np.stack([ux, uy], 1), np.stack([vx, vy], 1), p.identity.family, p.identity.kind)
        )
        subjects.append(
            {
                "identity": p.identity.identity_id,
                "kind": p.identity.kind,
                "colour": p.identity.main_name,
                "draw_order": k,
                "flipped": p.flipped,
                "rotation_deg": p.rotation_deg,
                "local_to_target": p.matrix.tolist(),
                "local_to_reference": ref_matrix.tolist(),
            }
        )
    meta = {
        "generator": "mosaic_studio.world.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "split": split,
        "index": index,
        "background": background,
        "subjects": subjects,
    }
    caption = _caption([make_identity(s["identity"]) for s in subjects], background)
    return Sample(sample_id(seed, split, index), target, caption, references, True, meta)


def main(argv: list[str] | None = None) -> None:
    from tqdm import tqdm

    parser = argparse.ArgumentParser(
        prog="python -m mosaic_studio.world.synthetic", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset folder (created; resumable)")
    parser.add_argument("--num", type=int, required=True, help="number of samples in the dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=SPLITS, default="train")
    defaults = WorldConfig()
    for name in (
        "target_size",
        "ref_size",
        "min_subjects",
        "max_subjects",
        "points_per_subject",
        "identity_pool",
        "token_size",
    ):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    args = parser.parse_args(argv)
    config = WorldConfig(
        args.target_size,
        args.ref_size,
        args.min_subjects,
        args.max_subjects,
        args.points_per_subject,
        args.identity_pool,
        args.token_size,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        check_manifest(
            args.out / MANIFEST,
            {"generator_version": GENERATOR_VERSION, "seed": args.seed, "split": args.split, "config": asdict(config)},
        )
    except ValueError as error:
        raise SystemExit(str(error)) from None
    removed = remove_partial_writes(args.out)  # leftovers of an interrupted run
    done = {path.name for path in list_sample_dirs(args.out)}
    todo = [i for i in range(args.num) if sample_id(args.seed, args.split, i) not in done]
    print(
        f"{args.out}: {args.num - len(todo)} samples present, {len(todo)} to write"
        + (f", removed {removed} partial writes" if removed else "")
    )
    for index in tqdm(todo, desc="samples", unit="sample"):
        sample = generate_sample(args.seed, index, args.split, config)
        save_sample(sample, args.out / sample.sample_id, token_size=config.token_size)


if __name__ == "__main__":
    main()
