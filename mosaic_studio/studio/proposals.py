"""Attention-proposed correspondences: "send to Annotate" turns a generation into a review item.

For each reference, a few tokens inside its subject (non-white pixels of the preprocessed
reference), spread over it by farthest-point order, each paired with the target token its
attention row peaks at. A token's reference point is its centre when that pixel is on the
subject, else the token's subject pixel nearest the centre: a mostly covered token's centre can
still fall on white (between a quadruped's legs, say), the more so the smaller the tokens
(8 px with a 4x VAE). Eq. 2 (no target token claimed by two references) is kept by skipping
a candidate whose peak another reference already claimed, at the model's tokens and at the
SemAlign-MS token size (16 px, what the training export validates): a model with smaller tokens
could otherwise propose two references' points inside one 16 px token.

The item is a complete SemAlign-MS sample folder (mosaic.data.semalign, written and validated by
`save_sample`) inside the store's folder, registered as imports register theirs
(`annotator.imports.record_from_sample`) with paths relative to the store's folder, so the
training export reads it from any current directory. Target: the generated image; references:
the preprocessed references the model saw; caption: the prompt; the proposed points as the
correspondences (meta["point_info"]: source and confidence).

Categories: the store (its strata) gets each user's tag as the family it names ("cat" → animal,
"man" → human), the tag itself when it names none, and "unknown" when it is blank, so a missing
category is visible rather than counted as an object. The folder's format allows only the three
families, so there a tag of no known family is an object with the tag as its label.

Subject masks (`subject_masks`): the target tokens each reference's attention claims. A
reference's heat over the target is the mean attention row of its subject tokens; each target
token goes to the reference of highest heat, except that a token holding a proposed point goes
to that point's reference (the same disjoint, Eq. 2 assignment as the points); a reference's
mask is its tokens where its heat is above uniform attention (1 / N_tgt), plus its points'
tokens, upsampled to pixels. So the masks are disjoint (masks_exclusive) and every proposed
point lies in its own mask; they are coarse (token-sized), for the annotator to judge.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mosaic_studio.annotator.imports import record_from_sample
from mosaic_studio.annotator.propose import POINT_INFO
from mosaic_studio.annotator.records import UNKNOWN_CATEGORY, PointRecord, SampleRecord
from mosaic_studio.mosaic.data.semalign import CATEGORIES, DEFAULT_TOKEN_SIZE, Reference, Sample, save_sample
from mosaic_studio.mosaic.images import BBOX_TOLERANCE
from mosaic_studio.studio.session import Generation

SOURCE = "attention"  # the `source` of a proposed point in the store
POINTS_PER_REFERENCE = 6
# A token is inside the subject when this share of its pixels is not white: mostly-covered
# tokens, so proposals sit on the subject rather than on its outline.
SUBJECT_FRACTION = 0.75
ITEMS_FOLDER = "studio-items"  # beside the store: one SemAlign-MS sample folder per sent sample
STUDIO_META = "studio"  # meta key: how the item was made (generation settings, mask rule)
COVERAGE_SAMPLES = 16  # pixels per token side at which a token's subject share is measured


def subject_tokens(reference: Image.Image, grid: tuple[int, int], tolerance: int = BBOX_TOLERANCE) -> np.ndarray:
    """Row-major indices of the tokens mostly covered by the subject; when none is, every token
    with any subject pixel; when there is none, all tokens."""
    rows, cols = grid
    n = COVERAGE_SAMPLES
    subject = foreground(reference.convert("RGB").resize((cols * n, rows * n)), tolerance)  # (rows·n, cols·n)
    share = subject.reshape(rows, n, cols, n).mean(axis=(1, 3))  # (rows, cols)
    for threshold in (SUBJECT_FRACTION, 1e-9):
        inside = np.flatnonzero(share.reshape(-1) >= threshold)
        if inside.size:
            return inside
    return np.arange(rows * cols)


def foreground(reference: Image.Image, tolerance: int = BBOX_TOLERANCE) -> np.ndarray:
    """(H, W) bool: the pixels that are not white (within `tolerance`), i.e. the subject."""
    pixels = np.asarray(reference.convert("RGB"), dtype=np.int16)
    return (np.abs(pixels - 255) > tolerance).any(axis=2)


def _interior(mask: np.ndarray) -> np.ndarray:
    """The pixels of `mask` whose four neighbours are in it too: the subject without its
    (anti-aliased, paler) outline."""
    padded = np.pad(mask, 1)
    return mask & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]


def subject_point(token: int, grid: tuple[int, int], subject: np.ndarray) -> tuple[float, float]:
    """The reference point (x, y) proposed for `token`: its centre when that pixel is on the
    subject, else the centre of the token's subject pixel nearest it, inner pixels before
    outline ones; the centre when the token has no subject pixel. subject: (H, W) bool."""
    height, width = subject.shape
    rows, cols = grid
    row, col = divmod(token, cols)
    cx, cy = _centre(token, grid, (width, height))
    x0, y0 = int(np.floor(col * width / cols)), int(np.floor(row * height / rows))
    x1 = max(x0 + 1, int(np.ceil((col + 1) * width / cols)))
    y1 = max(y0 + 1, int(np.ceil((row + 1) * height / rows)))
    for mask in (_interior(subject), subject):
        cell = mask[y0:y1, x0:x1]
        if not cell.any():
            continue
        if mask[min(int(cy), height - 1), min(int(cx), width - 1)]:
            return (cx, cy)
        ys, xs = np.nonzero(cell)  # row-major: ties go to the first, deterministically
        nearest = int(np.argmin((x0 + xs + 0.5 - cx) ** 2 + (y0 + ys + 0.5 - cy) ** 2))
        return (x0 + float(xs[nearest]) + 0.5, y0 + float(ys[nearest]) + 0.5)
    return (cx, cy)


def farthest_order(tokens: np.ndarray, grid: tuple[int, int]) -> list[int]:
    """`tokens` reordered so each next one is farthest from those before (start: nearest the
    centroid): the first n cover the subject evenly. Deterministic."""
    cols = grid[1]
    xy = np.stack([tokens % cols, tokens // cols], axis=1).astype(np.float64)  # (T, 2)
    first = int(np.argmin(((xy - xy.mean(axis=0)) ** 2).sum(axis=1)))
    order, distance = [first], ((xy - xy[first]) ** 2).sum(axis=1)
    while len(order) < len(tokens):
        nxt = int(np.argmax(distance))
        order.append(nxt)
        distance = np.minimum(distance, ((xy - xy[nxt]) ** 2).sum(axis=1))
    return [int(tokens[i]) for i in order]


def _centre(token: int, grid: tuple[int, int], size: tuple[int, int]) -> tuple[float, float]:
    rows, cols = grid
    row, col = divmod(token, cols)
    return ((col + 0.5) * size[0] / cols, (row + 0.5) * size[1] / rows)


def propose_points(
    maps: torch.Tensor,
    reference_images: list[Image.Image],
    reference_grid,
    target_grid,
    target_size: tuple[int, int],
    per_reference: int = POINTS_PER_REFERENCE,
) -> list[PointRecord]:
    """maps: (K, N_ref, N_tgt) of one image. Up to `per_reference` points per reference."""
    claimed: dict[int, int] = {}  # target token → reference that claimed it (Eq. 2)
    cells: dict[tuple[int, int], int] = {}  # the same at the SemAlign-MS token size
    points = []
    for k, reference in enumerate(reference_images):
        taken, subject = 0, foreground(reference)
        for u in farthest_order(subject_tokens(reference, reference_grid), reference_grid):
            row = maps[k, u]  # (N_tgt,)
            v = int(row.argmax())
            x, y = _centre(v, target_grid, target_size)
            cell = (int(y // DEFAULT_TOKEN_SIZE), int(x // DEFAULT_TOKEN_SIZE))
            if claimed.get(v, k) != k or cells.get(cell, k) != k:
                continue
            claimed[v], cells[cell] = k, k
            points.append(
                PointRecord(
                    ref_index=k,
                    point_index=taken,
                    ref_xy=subject_point(u, reference_grid, subject),
                    target_xy=_centre(v, target_grid, target_size),
                    source=SOURCE,
                    confidence=float(row[v]),
                )
            )
            taken += 1
            if taken == per_reference:
                break
    return points


def new_sample_id() -> str:
    return f"studio-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def subject_masks(
    maps: torch.Tensor,
    reference_images: list[Image.Image],
    reference_grid,
    target_grid,
    target_size: tuple[int, int],
    points: list[PointRecord],
) -> list[np.ndarray]:
    """Per reference, its subject's (H, W) bool mask in the target: the tokens its attention
    claims (module docstring). maps: (K, N_ref, N_tgt) of one image."""
    rows, cols = target_grid
    heat = torch.stack(
        [
            maps[k, torch.as_tensor(subject_tokens(reference, reference_grid))].float().mean(dim=0)
            for k, reference in enumerate(reference_images)
        ]
    )  # (K, N_tgt)
    heat = (heat / heat.sum(dim=1, keepdim=True).clamp_min(1e-12)).numpy()
    owner = heat.argmax(axis=0)  # (N_tgt,): ties go to the first reference
    forced = {}  # target token of a proposed point → its reference
    for point in points:
        x, y = point.target_xy
        forced[int(y * rows / target_size[1]) * cols + int(x * cols / target_size[0])] = point.ref_index
    for token, k in forced.items():
        owner[token] = k
    tokens = []
    for k in range(len(reference_images)):
        mine = (owner == k) & (heat[k] > 1.0 / heat.shape[1])
        mine[[token for token, j in forced.items() if j == k]] = True
        if not mine.any():  # no proposed point and never the strongest: its hottest free token
            free = [int(t) for t in np.argsort(-heat[k], kind="stable") if int(t) not in forced]
            if free:  # taken from whichever reference had it, so the masks stay disjoint
                owner[free[0]] = k
                mine[free[0]] = True
                for other in tokens:
                    other[free[0]] = False
        tokens.append(mine)
    # token (r, c) covers pixels [c·W/cols, (c+1)·W/cols) × [r·H/rows, (r+1)·H/rows)
    width, height = target_size
    pixel_rows = (np.arange(height) * rows) // height
    pixel_cols = (np.arange(width) * cols) // width
    return [mine.reshape(rows, cols)[pixel_rows][:, pixel_cols] for mine in tokens]


# Words for the two families a tag must be recognised as: any other subject is an object. A tag
# outside these lists keeps its own stratum (it is not guessed into "object"), and the sample
# folder, whose format requires a family, gets "object" with the tag as its label.
HUMAN_WORDS = frozenset(
    "human person people man men woman women boy girl child children kid baby lady guy player".split()
)
ANIMAL_WORDS = frozenset(
    "animal cat kitten dog puppy bird horse cow sheep goat pig rabbit bear lion tiger elephant "
    "monkey mouse deer fox wolf panda duck owl parrot fish quadruped".split()
)
FALLBACK_FAMILY = "object"  # the folder's family of a subject not known to be human or animal


def _tag(text: str) -> str:
    return " ".join((text or "").split()).lower()


def family(tag: str) -> str | None:
    """The SemAlign-MS family (human / animal / object) a category tag names, or None when the
    tag is none of them and no word of the lists above (a plural "s" aside)."""
    tag = _tag(tag)
    if tag in CATEGORIES:
        return tag
    for word in (tag, tag[:-1] if tag.endswith("s") else tag):
        if word in HUMAN_WORDS:
            return "human"
        if word in ANIMAL_WORDS:
            return "animal"
    return None


def store_category(tag: str) -> str:
    """The review store's category (its strata) of a user's tag: the family it names, the tag
    itself when it names none, UNKNOWN_CATEGORY when it is blank."""
    tag = _tag(tag)
    if not tag or tag == UNKNOWN_CATEGORY:
        return UNKNOWN_CATEGORY
    return family(tag) or tag


def folder_category(tag: str) -> tuple[str, str]:
    """(SemAlign-MS category, label) of a user's tag in the sample folder, which allows only the
    families: the family, with the tag as the finer label when it is more than the family."""
    tag = _tag(tag)
    if not tag or tag == UNKNOWN_CATEGORY:
        return (FALLBACK_FAMILY, "")  # the store marks it unknown; the folder format needs a family
    named = family(tag)
    return (tag, "") if named == tag else (named or FALLBACK_FAMILY, tag)


def _json_safe(value):
    return json.loads(json.dumps(value, default=str))


def review_item(
    generation: Generation,
    image_index: int,
    maps: torch.Tensor,
    store_dir: str | Path,
    per_reference: int = POINTS_PER_REFERENCE,
) -> SampleRecord:
    """Write the sample folder `store_dir`/studio-items/<id>/ (a validated SemAlign-MS sample)
    and return the sample to add, its paths relative to `store_dir` (the store's folder).
    maps: (num_images, K, N_ref, N_tgt). ValueError (a SampleError) when the sample breaks a
    SemAlign-MS rule; nothing is written then."""
    if generation.record is None:
        raise ValueError("this generation has no references, so nothing to annotate")
    if not 0 <= image_index < len(generation.images):
        raise ValueError(f"there is no generated image {image_index + 1}")
    sample_id = new_sample_id()
    target = generation.images[image_index].convert("RGB")
    record = generation.record
    points = propose_points(
        maps[image_index],
        generation.reference_images,
        record.reference_grid,
        record.target_grid,
        target.size,
        per_reference,
    )
    masks = subject_masks(
        maps[image_index], generation.reference_images, record.reference_grid, record.target_grid, target.size, points
    )
    references, info = [], []
    for k, (image, mask, tag) in enumerate(zip(generation.reference_images, masks, generation.categories)):
        mine = [p for p in points if p.ref_index == k]
        references.append(
            Reference(
                np.asarray(image.convert("RGB")),
                mask,
                [p.ref_xy for p in mine],
                [p.target_xy for p in mine],
                *folder_category(tag),
            )
        )
        info.append({"source": [p.source for p in mine], "confidence": [p.confidence for p in mine]})
    meta = {
        POINT_INFO: info,
        STUDIO_META: {
            "image": image_index + 1,
            "settings": _json_safe(generation.settings),
            "mask": "attention-claimed target tokens",
        },
    }
    sample = Sample(sample_id, np.asarray(target), generation.settings.get("prompt", ""), references, True, meta)
    folder = save_sample(sample, Path(store_dir) / ITEMS_FOLDER / sample_id, DEFAULT_TOKEN_SIZE)
    record = record_from_sample(sample, folder, SOURCE, root=store_dir)
    # The store's strata get the user's categories (store_category), not the folder's families:
    # a blank one is "unknown" rather than "object".
    references = tuple(
        replace(ref, category=store_category(tag)) for ref, tag in zip(record.references, generation.categories)
    )
    return replace(record, references=references)
