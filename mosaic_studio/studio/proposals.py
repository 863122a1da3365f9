"""Attention-proposed correspondences: "send to Annotate" turns a generation into a review item.

For each reference, a few tokens inside its subject (non-white pixels of the preprocessed
reference), spread over it by farthest-point order, each paired with the target token its
attention row peaks at. A token's reference point is its centre when that pixel is on the
subject, else the token's subject pixel nearest the centre: a mostly covered token's centre can
still fall on white (between a quadruped's legs, say), the more so the smaller the tokens
(8 px with a 4x VAE). Eq. 2 (no target token claimed by two references) is kept by skipping
a candidate whose peak another reference already claimed. The images are written beside the
review store, and the sample is added to it for review like any other.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mosaic_studio.annotator.records import PointRecord, ReferenceRecord, SampleRecord
from mosaic_studio.mosaic.images import BBOX_TOLERANCE
from mosaic_studio.studio.session import Generation

SOURCE = "attention"  # the `source` of a proposed point in the store
POINTS_PER_REFERENCE = 6
# A token is inside the subject when this share of its pixels is not white: mostly-covered
# tokens, so proposals sit on the subject rather than on its outline.
SUBJECT_FRACTION = 0.75
ITEMS_FOLDER = "studio-items"  # beside the store: one folder of images per sent sample
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
    points = []
    for k, reference in enumerate(reference_images):
        taken, subject = 0, foreground(reference)
        for u in farthest_order(subject_tokens(reference, reference_grid), reference_grid):
            row = maps[k, u]  # (N_tgt,)
            v = int(row.argmax())
            if claimed.setdefault(v, k) != k:
                continue
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


def review_item(
    generation: Generation,
    image_index: int,
    maps: torch.Tensor,
    store_dir: str | Path,
    per_reference: int = POINTS_PER_REFERENCE,
) -> SampleRecord:
    """Write the generated image and its references under `store_dir`/studio-items/<id>/ and
    return the sample to add, its paths relative to `store_dir`. maps: (num_images, K, N_ref, N_tgt)."""
    if generation.record is None:
        raise ValueError("this generation has no references, so nothing to annotate")
    if not 0 <= image_index < len(generation.images):
        raise ValueError(f"there is no generated image {image_index + 1}")
    sample_id = new_sample_id()
    folder = Path(ITEMS_FOLDER) / sample_id
    (Path(store_dir) / folder).mkdir(parents=True, exist_ok=False)
    target = generation.images[image_index]
    target.save(Path(store_dir) / folder / "target.png")
    references = []
    for k, (image, category) in enumerate(zip(generation.reference_images, generation.categories)):
        image.save(Path(store_dir) / folder / f"ref_{k}.png")
        references.append(ReferenceRecord(k, str(folder / f"ref_{k}.png"), category))
    points = propose_points(
        maps[image_index],
        generation.reference_images,
        generation.record.reference_grid,
        generation.record.target_grid,
        target.size,
        per_reference,
    )
    return SampleRecord(
        sample_id, generation.settings.get("prompt", ""), str(folder / "target.png"), tuple(references), tuple(points)
    )
