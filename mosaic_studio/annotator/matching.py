"""Matching, intersection, disjointness and P_k sampling (paper §3 Eq. 1–2, appendix B).

For one (reference, target) pair and one extractor, every target token inside the subject's
target mask is a query; its match is the reference position inside the reference's subject mask
with the highest cosine similarity (`match_pair`). Several extractors' matches are then
intersected (`intersect`), claims of several references on one target token are resolved (`disjoint`,
Eq. 2) and at most P_k points are kept per reference (`sample_each`).

Tokens are row-major indices on the target's token grid at `token_size` pixels (as in
mosaic.semalign); points are (x, y) pixels. The functions are pure, except `extract_all`,
which runs an extractor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

import numpy as np

from mosaic_studio.mosaic.data.semalign import token_grid

DEFAULT_CANDIDATE_GRID = 32  # candidate reference positions along the reference's longer side


@dataclass(frozen=True)
class Matches:
    """Proposed correspondences of one reference: one per target token, sorted by token."""

    tokens: np.ndarray  # (Q,) int64 target token indices
    target_points: np.ndarray  # (Q, 2) v: a pixel centre inside the target mask, in that token
    ref_points: np.ndarray  # (Q, 2) u: the matched reference position
    confidence: np.ndarray  # (Q,) cosine similarity of the match (min over intersected extractors)
    source: str  # which extractor(s) proposed them, e.g. "dift+sift"

    def take(self, keep: np.ndarray) -> Matches:
        return Matches(
            self.tokens[keep], self.target_points[keep], self.ref_points[keep], self.confidence[keep], self.source
        )

    def __len__(self) -> int:
        return len(self.tokens)


def token_queries(mask: np.ndarray, token_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (Q,), points (Q, 2)): per token holding mask pixels, the mask pixel centre closest
    to the centroid of the token's mask pixels (so v lies in the mask, as the format requires)."""
    _, grid_w = token_grid(*mask.shape, token_size)
    ys, xs = np.nonzero(mask)
    tokens = (ys // token_size) * grid_w + xs // token_size
    unique, inverse, counts = np.unique(tokens, return_inverse=True, return_counts=True)
    centre_x = np.bincount(inverse, weights=xs) / counts
    centre_y = np.bincount(inverse, weights=ys) / counts
    distance = (xs - centre_x[inverse]) ** 2 + (ys - centre_y[inverse]) ** 2
    order = np.lexsort((distance, inverse))  # by token, then closest first
    chosen = order[np.unique(inverse[order], return_index=True)[1]]
    return unique.astype(np.int64), np.stack([xs[chosen] + 0.5, ys[chosen] + 0.5], axis=1)


def reference_candidates(mask: np.ndarray, grid: int = DEFAULT_CANDIDATE_GRID) -> np.ndarray:
    """(N, 2) pixel centres inside `mask` on a lattice of about `grid` steps per longer side;
    every mask pixel when the subject is too thin for the lattice to hit it."""
    stride = max(1, math.ceil(max(mask.shape) / grid))
    offset = stride // 2
    ys, xs = np.nonzero(mask[offset::stride, offset::stride])
    if len(ys) == 0:
        ys, xs = np.nonzero(mask)
        return np.stack([xs + 0.5, ys + 0.5], axis=1)
    return np.stack([xs * stride + offset + 0.5, ys * stride + offset + 0.5], axis=1)


def best_matches(queries: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and cosine similarity of the best candidate for each query (unit-norm rows)."""
    similarity = queries @ candidates.T  # (Q, N)
    best = similarity.argmax(axis=1)
    return best, similarity[np.arange(len(queries)), best]


def _mirror_x(points: np.ndarray, width: int) -> np.ndarray:
    mirrored = points.copy()
    mirrored[:, 0] = width - mirrored[:, 0]
    return mirrored


def extract_all(extractor, images: list[np.ndarray], masks: list[np.ndarray]) -> list:
    """Feature maps of many images: in one batch where the extractor can (`extract_many`)."""
    if hasattr(extractor, "extract_many"):
        return extractor.extract_many(images, masks)
    return [extractor.extract(image, mask) for image, mask in zip(images, masks)]


def reference_views(image: np.ndarray, mask: np.ndarray, mirror_test: bool) -> list[tuple]:
    """(image, mask, mirrored) views of a reference to describe: itself, and with the mirror
    test also its left-right mirror image (a subject seen flipped in the target then matches
    side to side instead of left to right)."""
    views = [(image, mask, False)]
    if mirror_test:
        views.append((np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1]), True))
    return views


def match_pair(
    target_features,
    tokens: np.ndarray,
    target_points: np.ndarray,
    views: list[tuple],
    reference_mask: np.ndarray,
    source: str,
    candidate_grid: int = DEFAULT_CANDIDATE_GRID,
) -> Matches:
    """Best cosine match in the reference subject for each target token (one extractor).

    views: (reference FeatureMap, mirrored) pairs; the view with the higher mean similarity
    wins, and points found on a mirror image are mapped back to the reference.
    """
    queries = target_features.at(target_points)  # (Q, C)
    candidates = reference_candidates(reference_mask, candidate_grid)
    if len(candidates) == 0:
        raise ValueError("the reference subject mask has no candidate positions")
    width = reference_mask.shape[1]
    best = None
    for features, mirrored in views:
        where = _mirror_x(candidates, width) if mirrored else candidates
        index, score = best_matches(queries, features.at(where))
        if best is None or score.mean() > best[1].mean():
            best = (index, score)
    index, score = best
    return Matches(tokens, target_points, candidates[index], score.astype(np.float64), source)


def intersect(matches: list[Matches], token_size: int, radius: int = 0) -> Matches:
    """Keep target tokens where all extractors' reference points lie within `radius` tokens of
    each other (Chebyshev distance of their reference token cells); radius 0 is the authors'
    rule: the same reference token. The kept point is the extractors' mean (order-free), its
    confidence the lowest of theirs."""
    if radius < 0:
        raise ValueError(f"intersection radius must be >= 0 tokens, got {radius}")
    common = reduce(np.intersect1d, [m.tokens for m in matches])
    rows = [np.searchsorted(m.tokens, common) for m in matches]  # tokens are sorted and unique
    points = np.stack([m.ref_points[r] for m, r in zip(matches, rows)])  # (E, Q, 2)
    cells = np.floor(points / token_size)
    agree = (cells.max(axis=0) - cells.min(axis=0)).max(axis=1) <= radius  # (Q,)
    first = matches[0].take(rows[0][agree])
    confidence = np.min([m.confidence[r][agree] for m, r in zip(matches, rows)], axis=0)
    return Matches(
        first.tokens,
        first.target_points,
        points[:, agree].mean(axis=0),
        confidence,
        "+".join(m.source for m in matches),
    )


def disjoint(per_reference: list[Matches]) -> list[Matches]:
    """Eq. 2: a target token claimed by several references goes to the most confident claim
    (ties: the lower reference index); the others drop it."""
    tokens = np.concatenate([m.tokens for m in per_reference])
    confidence = np.concatenate([m.confidence for m in per_reference])
    owner = np.concatenate([np.full(len(m), k) for k, m in enumerate(per_reference)])
    order = np.lexsort((owner, -confidence, tokens))  # per token: most confident, then lowest k
    winners = order[np.unique(tokens[order], return_index=True)[1]]
    won = np.zeros(len(tokens), dtype=bool)
    won[winners] = True
    starts = np.cumsum([0] + [len(m) for m in per_reference])
    return [m.take(won[starts[k] : starts[k + 1]]) for k, m in enumerate(per_reference)]


def sample_each(per_reference: list[Matches], p_k: int, rng: np.random.Generator) -> list[Matches]:
    """At most `p_k` correspondences per reference (the paper's P_k), drawn without
    replacement, kept in token order."""
    if p_k < 0:
        raise ValueError(f"P_k must be >= 0, got {p_k}")
    kept = []
    for matches in per_reference:
        index = np.arange(len(matches))
        if len(index) > p_k:
            index = np.sort(rng.choice(index, size=p_k, replace=False))
        kept.append(matches.take(index))
    return kept
