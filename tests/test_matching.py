"""Matching helpers: token queries, intersection, Eq. 2 disjointness, P_k sampling."""

import numpy as np
import pytest

from mosaic_studio.annotator.matching import (
    Matches,
    disjoint,
    intersect,
    reference_candidates,
    sample_each,
    token_queries,
)
from mosaic_studio.mosaic.data.semalign import pixel_to_token

T = 16  # pixels per token


def matches(tokens, ref_points, confidence=None, source="a"):
    tokens = np.asarray(tokens)
    target = np.stack([(tokens % 8) * T + 8.5, (tokens // 8) * T + 8.5], axis=1)
    confidence = np.full(len(tokens), 0.5) if confidence is None else np.asarray(confidence, float)
    return Matches(tokens, target, np.asarray(ref_points, float), confidence, source)


def test_token_queries_give_one_mask_pixel_per_token():
    mask = np.zeros((64, 64), dtype=bool)
    mask[5:40, 10:20] = True  # touches tokens in columns 0 and 1, rows 0..2
    mask[50, 63] = True  # a single pixel in the last token
    tokens, points = token_queries(mask, T)
    assert np.array_equal(tokens, np.unique(pixel_to_token(np.argwhere(mask)[:, ::-1] + 0.5, T, 4)))
    assert np.array_equal(pixel_to_token(points, T, 4), tokens)
    assert mask[np.floor(points[:, 1]).astype(int), np.floor(points[:, 0]).astype(int)].all()
    assert tuple(points[-1]) == (63.5, 50.5)


def test_reference_candidates_lie_in_the_mask():
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:30, 20:50] = True
    points = reference_candidates(mask, grid=32)
    assert len(points) == 10 * 15  # stride 2
    assert mask[np.floor(points[:, 1]).astype(int), np.floor(points[:, 0]).astype(int)].all()
    thin = np.zeros((64, 64), dtype=bool)
    thin[10, 4:40] = True  # a one-pixel line between the lattice rows: every pixel is a candidate
    assert len(reference_candidates(thin, grid=32)) == 36


def test_intersection_keeps_only_agreeing_points():
    a = matches([0, 1, 2, 3], [[5, 5], [20, 5], [40, 40], [1, 1]], [0.9, 0.8, 0.7, 0.6], "dift")
    b = matches([0, 1, 2, 4], [[10, 12], [37, 5], [60, 60], [1, 1]], [0.5, 0.9, 0.9, 0.9], "sift")
    exact = intersect([a, b], T, radius=0)
    assert exact.tokens.tolist() == [0]  # same reference token (0, 0); token 3/4 in one only
    assert exact.ref_points.tolist() == [[7.5, 8.5]]  # the mean of the two
    assert exact.confidence.tolist() == [0.5] and exact.source == "dift+sift"
    near = intersect([a, b], T, radius=1)
    assert near.tokens.tolist() == [0, 1, 2]  # cells (1,0) vs (2,0); (2,2) vs (3,3): one apart
    with pytest.raises(ValueError, match="radius"):
        intersect([a, b], T, radius=-1)


def test_intersection_of_three_needs_all_to_agree():
    a = matches([0, 1], [[5, 5], [5, 5]])
    b = matches([0, 1], [[6, 6], [6, 6]])
    c = matches([0, 1], [[7, 7], [40, 40]])
    assert intersect([a, b, c], T).tokens.tolist() == [0]


def test_disjointness_gives_a_shared_token_to_the_more_confident_reference():
    first = matches([0, 1, 2], np.ones((3, 2)), [0.9, 0.2, 0.5])
    second = matches([1, 2, 3], np.ones((3, 2)), [0.8, 0.5, 0.1])
    kept = disjoint([first, second])
    assert kept[0].tokens.tolist() == [0, 2]  # token 2 is a tie: the lower index keeps it
    assert kept[1].tokens.tolist() == [1, 3]
    assert not set(kept[0].tokens) & set(kept[1].tokens)


def test_sample_each_respects_p_k_and_is_seeded():
    many = matches(np.arange(40), np.ones((40, 2)))
    few = matches([3, 5], np.ones((2, 2)))
    drawn = sample_each([many, few], 7, np.random.default_rng(0))
    assert [len(m) for m in drawn] == [7, 2]
    assert np.all(np.diff(drawn[0].tokens) > 0)
    again = sample_each([many, few], 7, np.random.default_rng(0))
    assert np.array_equal(drawn[0].tokens, again[0].tokens)
    with pytest.raises(ValueError, match="P_k"):
        sample_each([many], -1, np.random.default_rng(0))
