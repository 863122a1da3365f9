"""Tests for the SCAL (Eq. 10) and MDL (Eq. 11–14) losses."""

import math

import pytest
import torch

from mosaic_studio.mosaic.losses import (
    PROB_FLOOR,
    mdl_loss,
    mdl_loss_batch,
    mosaic_losses,
    scal_loss,
    scal_loss_batch,
)

DIVERGENCE_NAMES = ("sym_kl", "jsd")
REDUCTION_NAMES = ("per_reference", "per_point")


# ---------------------------------------------------------------------------------------------
# A naive float64 reference: Python floats and explicit loops, straight from the equations


def _log(x):
    return math.log(max(x, PROB_FLOOR))


def naive_scal(attn, tgt_index, ref_index, num_refs, reduction="per_reference"):
    rows, tgts, refs = attn.tolist(), tgt_index.tolist(), ref_index.tolist()
    if not rows:
        return 0.0
    if reduction == "per_point":
        return -sum(_log(row[v]) for row, v in zip(rows, tgts)) / len(rows)
    per_ref = []
    for k in range(num_refs):
        logs = [_log(row[v]) for row, v, r in zip(rows, tgts, refs) if r == k]
        if logs:
            per_ref.append(sum(logs) / len(logs))
    return -sum(per_ref) / len(per_ref)


def naive_kl(p, q):
    return sum(pi * (_log(pi) - _log(qi)) for pi, qi in zip(p, q))


def naive_dist(p, q, divergence):
    if divergence == "sym_kl":
        return 0.5 * naive_kl(p, q) + 0.5 * naive_kl(q, p)
    m = [0.5 * (pi + qi) for pi, qi in zip(p, q)]
    return 0.5 * naive_kl(p, m) + 0.5 * naive_kl(q, m)


def naive_mdl(attn, ref_index, num_refs, divergence="sym_kl"):
    rows, refs = attn.tolist(), ref_index.tolist()
    aggregated = []
    for k in range(num_refs):
        mine = [row for row, r in zip(rows, refs) if r == k]
        if not mine:
            continue
        mean = [sum(column) / len(mine) for column in zip(*mine)]
        total = max(sum(mean), PROB_FLOOR)
        aggregated.append([m / total for m in mean])
    count = len(aggregated)
    if count < 2:
        return 0.0
    total = 0.0
    for i in range(count):
        for j in range(count):
            if i != j:
                total += naive_dist(aggregated[i], aggregated[j], divergence)
    return -total / (count * (count - 1))


def random_case(seed, num_refs, num_points, num_tgt=7, refs_used=None):
    """Rows = softmax of random logits; points drawn from `refs_used` (default: all refs)."""
    gen = torch.Generator().manual_seed(seed)
    attn = torch.randn(num_points, num_tgt, generator=gen, dtype=torch.float64).mul(2).softmax(-1)
    tgt_index = torch.randint(num_tgt, (num_points,), generator=gen)
    refs_used = torch.tensor(refs_used if refs_used is not None else list(range(num_refs)))
    ref_index = refs_used[torch.randint(len(refs_used), (num_points,), generator=gen)]
    return attn, tgt_index, ref_index


# K, points, and which references get points (None: any of them).
RANDOM_CASES = [
    (1, 5, None),
    (2, 6, None),
    (3, 9, [0, 2]),  # reference 1 has no points
    (5, 12, [1, 3, 4]),  # references 0 and 2 have no points
    (5, 20, None),
    (4, 3, [2]),  # a single reference with points: MDL is 0
    (3, 0, None),  # no points at all
]


# ---------------------------------------------------------------------------------------------
# Hand-computed cases


def _hand_attn():
    # Reference 0: two points; reference 1: one point. Three target tokens.
    attn = torch.tensor(
        [
            [0.50, 0.25, 0.25],  # ref 0, corresponds to target 0
            [0.20, 0.60, 0.20],  # ref 0, corresponds to target 1
            [0.10, 0.10, 0.80],  # ref 1, corresponds to target 2
        ],
        dtype=torch.float64,
    )
    return attn, torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1])


def test_scal_hand_computed_per_reference():
    attn, tgt, ref = _hand_attn()
    expected = -((math.log(0.5) + math.log(0.6)) / 2 + math.log(0.8)) / 2
    assert scal_loss(attn, tgt, ref, num_refs=2).item() == pytest.approx(expected, abs=1e-12)


def test_scal_hand_computed_per_point():
    attn, tgt, ref = _hand_attn()
    expected = -(math.log(0.5) + math.log(0.6) + math.log(0.8)) / 3
    assert scal_loss(attn, tgt, ref, 2, reduction="per_point").item() == pytest.approx(expected, abs=1e-12)


def test_scal_excludes_references_without_points():
    attn, tgt, ref = _hand_attn()
    with_two = scal_loss(attn, tgt, ref, num_refs=2)
    with_four = scal_loss(attn, tgt, ref, num_refs=4)  # references 2 and 3 have no points
    assert with_four.item() == pytest.approx(with_two.item(), abs=1e-15)


def _hand_mdl_attn():
    # a_0 = mean([.6,.2,.2], [.4,.3,.3]) = [.5,.25,.25];  a_1 = [.25,.25,.5].
    attn = torch.tensor([[0.6, 0.2, 0.2], [0.4, 0.3, 0.3], [0.25, 0.25, 0.5]], dtype=torch.float64)
    return attn, torch.tensor([0, 0, 1])


def test_mdl_hand_computed_sym_kl():
    attn, ref = _hand_mdl_attn()
    # KL(a0||a1) = .5 ln2 + .25 ln(1/2) = .25 ln2 = KL(a1||a0), so dist = .25 ln2 for both
    # ordered pairs and L = -(2 · .25 ln2) / (2 · 1).
    expected = -0.25 * math.log(2)
    assert mdl_loss(attn, ref, 2).item() == pytest.approx(expected, abs=1e-12)


def test_mdl_hand_computed_jsd():
    attn, ref = _hand_mdl_attn()
    # m = [.375, .25, .375]; KL(a0||m) = .5 ln(4/3) + .25 ln(2/3) = KL(a1||m) = JSD.
    expected = -(0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3))
    assert mdl_loss(attn, ref, 2, divergence="jsd").item() == pytest.approx(expected, abs=1e-12)


def test_mdl_renormalises_the_mean():
    attn, ref = _hand_mdl_attn()
    scaled = attn * torch.tensor([[2.0], [2.0], [0.5]], dtype=torch.float64)  # rows no longer sum to 1
    for divergence in DIVERGENCE_NAMES:
        assert mdl_loss(scaled, ref, 2, divergence).item() == pytest.approx(
            mdl_loss(attn, ref, 2, divergence).item(), abs=1e-12
        )


def test_mdl_excludes_references_without_points():
    attn, ref = _hand_mdl_attn()
    for divergence in DIVERGENCE_NAMES:
        assert mdl_loss(attn, ref, 5, divergence).item() == pytest.approx(
            mdl_loss(attn, ref, 2, divergence).item(), abs=1e-15
        )


def test_mdl_identical_references_give_zero():
    attn = torch.tensor([[0.2, 0.3, 0.5]] * 3, dtype=torch.float64)
    for divergence in DIVERGENCE_NAMES:
        assert mdl_loss(attn, torch.tensor([0, 1, 2]), 3, divergence).item() == pytest.approx(0.0, abs=1e-15)


# ---------------------------------------------------------------------------------------------
# Against the naive implementation


@pytest.mark.parametrize("case", range(len(RANDOM_CASES)))
@pytest.mark.parametrize("reduction", REDUCTION_NAMES)
def test_scal_matches_naive(case, reduction):
    num_refs, num_points, refs_used = RANDOM_CASES[case]
    attn, tgt, ref = random_case(case, num_refs, num_points, refs_used=refs_used)
    got = scal_loss(attn, tgt, ref, num_refs, reduction=reduction)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(naive_scal(attn, tgt, ref, num_refs, reduction), abs=1e-10, rel=1e-10)


@pytest.mark.parametrize("case", range(len(RANDOM_CASES)))
@pytest.mark.parametrize("divergence", DIVERGENCE_NAMES)
def test_mdl_matches_naive(case, divergence):
    num_refs, num_points, refs_used = RANDOM_CASES[case]
    attn, _, ref = random_case(100 + case, num_refs, num_points, refs_used=refs_used)
    got = mdl_loss(attn, ref, num_refs, divergence=divergence)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(naive_mdl(attn, ref, num_refs, divergence), abs=1e-10, rel=1e-10)


@pytest.mark.parametrize("divergence", DIVERGENCE_NAMES)
def test_mdl_matches_naive_with_zero_entries(divergence):
    attn = torch.tensor(
        [[0.0, 0.5, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0], [0.7, 0.0, 0.0, 0.3], [0.25, 0.25, 0.25, 0.25]],
        dtype=torch.float64,
    )
    ref = torch.tensor([0, 0, 1, 2])
    got = mdl_loss(attn, ref, 3, divergence)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(naive_mdl(attn, ref, 3, divergence), abs=1e-10, rel=1e-10)


def test_all_reference_tokens_variant():
    """The authors' a_k over every token of a reference: one row per token, ref_index per row."""
    num_refs, tokens_per_ref, num_tgt = 3, 4, 6
    gen = torch.Generator().manual_seed(7)
    attn = torch.randn(num_refs * tokens_per_ref, num_tgt, generator=gen, dtype=torch.float64).softmax(-1)
    ref = torch.arange(num_refs).repeat_interleave(tokens_per_ref)
    a = attn.view(num_refs, tokens_per_ref, num_tgt).mean(1)  # (K, N_tgt)
    m = 0.5 * (a[:, None] + a[None, :])  # (K, K, N_tgt)
    kl = lambda p, q: (p * (p.log() - q.log())).sum(-1)  # noqa: E731
    jsd = 0.5 * kl(a[:, None], m) + 0.5 * kl(a[None, :], m)  # (K, K), zero diagonal
    expected = -jsd.sum() / (num_refs * (num_refs - 1))
    assert mdl_loss(attn, ref, num_refs, "jsd").item() == pytest.approx(expected.item(), abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Degenerate inputs: exactly zero, still on the graph


def test_mdl_is_exactly_zero_below_two_references():
    attn = torch.rand(4, 5, dtype=torch.float64).softmax(-1).requires_grad_()
    for divergence in DIVERGENCE_NAMES:
        for ref, num_refs in ((torch.tensor([1, 1, 1, 1]), 3), (torch.zeros(4, dtype=torch.long), 1)):
            loss = mdl_loss(attn, ref, num_refs, divergence)
            assert loss.item() == 0.0
            assert loss.requires_grad
            (grad,) = torch.autograd.grad(loss, attn)
            assert torch.equal(grad, torch.zeros_like(attn))


def test_losses_without_points_are_zero_and_differentiable():
    attn = torch.rand(0, 5, dtype=torch.float64, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    for loss in (
        scal_loss(attn, empty, empty, 3),
        scal_loss(attn, empty, empty, 3, reduction="per_point"),
        mdl_loss(attn, empty, 3),
    ):
        assert loss.item() == 0.0
        assert loss.requires_grad and loss.ndim == 0
        loss.backward()
    assert attn.grad.shape == (0, 5)


# ---------------------------------------------------------------------------------------------
# Gradients


def _gradcheck_case():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(7, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    tgt = torch.randint(5, (7,), generator=gen)
    ref = torch.tensor([0, 0, 1, 1, 1, 3, 3])  # reference 2 has no points
    return logits, tgt, ref


@pytest.mark.parametrize("reduction", REDUCTION_NAMES)
def test_scal_gradcheck(reduction):
    logits, tgt, ref = _gradcheck_case()
    assert torch.autograd.gradcheck(lambda x: scal_loss(x.softmax(-1), tgt, ref, 4, reduction), (logits,))


@pytest.mark.parametrize("divergence", DIVERGENCE_NAMES)
def test_mdl_gradcheck(divergence):
    logits, _, ref = _gradcheck_case()
    assert torch.autograd.gradcheck(lambda x: mdl_loss(x.softmax(-1), ref, 4, divergence), (logits,))


def test_batched_gradcheck():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    tgt = torch.randint(5, (2, 4), generator=gen)
    ref = torch.tensor([[0, 1, 1, 2], [2, 0, 0, 0]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])

    def both(x):
        return mosaic_losses(x.softmax(-1), tgt, ref, 3, valid, divergence="jsd")

    assert torch.autograd.gradcheck(both, (logits,))


# ---------------------------------------------------------------------------------------------
# The batched form


def _padded_batch():
    """Three samples with 5, 0 and 3 points, padded to R = 5 with NaN rows and junk indices."""
    num_refs, num_tgt, width = 3, 6, 5
    samples = [
        random_case(11, num_refs, 5, num_tgt, refs_used=[0, 2]),
        random_case(12, num_refs, 0, num_tgt),
        random_case(13, num_refs, 3, num_tgt, refs_used=[1]),
    ]
    attn = torch.full((len(samples), width, num_tgt), float("nan"), dtype=torch.float64)
    tgt = torch.full((len(samples), width), -1, dtype=torch.long)
    ref = torch.full((len(samples), width), 99, dtype=torch.long)
    valid = torch.zeros(len(samples), width, dtype=torch.bool)
    for b, (rows, t, r) in enumerate(samples):
        n = rows.shape[0]
        attn[b, :n], tgt[b, :n], ref[b, :n], valid[b, :n] = rows, t, r, True
    return samples, num_refs, attn, tgt, ref, valid


@pytest.mark.parametrize("divergence", DIVERGENCE_NAMES)
@pytest.mark.parametrize("reduction", REDUCTION_NAMES)
def test_batched_equals_mean_of_per_sample_calls(divergence, reduction):
    samples, num_refs, attn, tgt, ref, valid = _padded_batch()
    attn.requires_grad_()
    scal, mdl = mosaic_losses(attn, tgt, ref, num_refs, valid, divergence=divergence, reduction=reduction)
    with_points = [s for s in samples if s[0].shape[0] > 0]
    expected_scal = sum(scal_loss(a, t, r, num_refs, reduction) for a, t, r in with_points) / len(with_points)
    expected_mdl = sum(mdl_loss(a, r, num_refs, divergence) for a, _, r in with_points) / len(with_points)
    assert scal.item() == pytest.approx(expected_scal.item(), abs=1e-12)
    assert mdl.item() == pytest.approx(expected_mdl.item(), abs=1e-12)
    (grad,) = torch.autograd.grad(scal + mdl, attn)
    assert torch.isfinite(grad).all()
    assert torch.equal(grad[~valid], torch.zeros_like(grad[~valid]))


def test_batched_single_loss_functions_match_wrapper():
    _, num_refs, attn, tgt, ref, valid = _padded_batch()
    scal, mdl = mosaic_losses(attn, tgt, ref, num_refs, valid, divergence="jsd")
    assert scal_loss_batch(attn, tgt, ref, num_refs, valid).item() == scal.item()
    assert mdl_loss_batch(attn, ref, num_refs, valid, divergence="jsd").item() == mdl.item()


def test_batched_without_valid_mask_means_all_valid():
    attn, tgt, ref = random_case(21, 3, 6)
    scal, mdl = mosaic_losses(attn[None], tgt[None], ref[None], 3)
    assert scal.item() == pytest.approx(scal_loss(attn, tgt, ref, 3).item(), abs=1e-14)
    assert mdl.item() == pytest.approx(mdl_loss(attn, ref, 3).item(), abs=1e-14)


def test_batched_without_any_point_is_zero_on_the_graph():
    attn = torch.rand(2, 3, 4, requires_grad=True)
    index = torch.zeros(2, 3, dtype=torch.long)
    scal, mdl = mosaic_losses(attn, index, index, 2, torch.zeros(2, 3, dtype=torch.bool))
    assert scal.item() == 0.0 and mdl.item() == 0.0
    (scal + mdl).backward()
    assert torch.equal(attn.grad, torch.zeros_like(attn))


# ---------------------------------------------------------------------------------------------
# Precision


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_low_precision_input_is_computed_in_float32(dtype):
    attn, tgt, ref = random_case(31, 3, 9)
    low = attn.to(dtype)
    reference = low.float()  # same rounded values, computed in float32
    scal, mdl = scal_loss(low, tgt, ref, 3), mdl_loss(low, ref, 3)
    assert scal.dtype == mdl.dtype == torch.float32
    assert scal.item() == pytest.approx(scal_loss(reference, tgt, ref, 3).item(), abs=1e-6)
    assert mdl.item() == pytest.approx(mdl_loss(reference, ref, 3).item(), abs=1e-6)


def test_autocast_does_not_lower_precision():
    attn, tgt, ref = random_case(32, 3, 9)
    attn = attn.float()
    expected = mosaic_losses(attn[None], tgt[None], ref[None], 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mosaic_losses(attn[None], tgt[None], ref[None], 3)
    for g, e in zip(got, expected):
        assert g.dtype == torch.float32
        assert g.item() == pytest.approx(e.item(), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad inputs


def test_bad_inputs_raise_with_the_argument_named():
    attn, tgt, ref = _hand_attn()
    cases = [
        (lambda: scal_loss(attn[0], tgt, ref, 2), "attn must be a 2-D"),
        (lambda: mdl_loss(attn[None], ref, 2), "attn must be a 2-D"),
        (lambda: scal_loss(attn, tgt[:2], ref, 2), "tgt_index must have shape"),
        (lambda: scal_loss(attn, tgt, ref[:2], 2), "ref_index must have shape"),
        (lambda: mdl_loss(attn, ref[None], 2), "ref_index must have shape"),
        (lambda: scal_loss(attn, tgt, torch.tensor([0, 0, 2]), 2), r"ref_index must lie in \[0, num_refs=2\)"),
        (lambda: mdl_loss(attn, torch.tensor([0, -1, 1]), 2), "ref_index must lie in"),
        (lambda: scal_loss(attn, torch.tensor([0, 1, 3]), ref, 2), r"tgt_index must lie in \[0, N_tgt=3\)"),
        (lambda: scal_loss(attn, tgt.double(), ref, 2), "tgt_index must be an integer"),
        (lambda: mdl_loss(attn.long(), ref, 2), "attn must be a floating-point"),
        (lambda: mdl_loss(attn, ref, -1), "num_refs must be a non-negative int"),
        (lambda: mdl_loss(attn, ref, 2, divergence="kl"), r"unknown divergence 'kl'.*'sym_kl', 'jsd'"),
        (lambda: scal_loss(attn, tgt, ref, 2, reduction="sum"), r"unknown reduction 'sum'.*'per_reference'"),
        (lambda: mosaic_losses(attn, tgt, ref, 2), "attn must be a 3-D"),
        (
            lambda: mosaic_losses(attn[None], tgt[None], ref[None], 2, torch.ones(1, 3)),
            "valid must be a bool tensor",
        ),
        (
            lambda: mosaic_losses(attn[None], tgt[None], ref[None], 2, torch.ones(1, 2, dtype=torch.bool)),
            "valid must be a bool tensor",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_padded_points_are_not_range_checked():
    attn, tgt, ref = _hand_attn()
    valid = torch.tensor([[True, True, False]])
    bad_ref = torch.tensor([[0, 1, 7]])
    bad_tgt = torch.tensor([[0, 1, -5]])
    scal, mdl = mosaic_losses(attn[None], bad_tgt, bad_ref, 2, valid)
    assert scal.item() == pytest.approx(scal_loss(attn[:2], tgt[:2], torch.tensor([0, 1]), 2).item(), abs=1e-12)
    assert mdl.item() == pytest.approx(mdl_loss(attn[:2], torch.tensor([0, 1]), 2).item(), abs=1e-12)
