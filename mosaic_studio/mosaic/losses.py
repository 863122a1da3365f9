"""The two MOSAIC attention losses: SCAL (Eq. 10) and MDL (Eq. 11–14).

Both read probe rows `attn` (Eq. 8): row j is the attention of one reference token over the
target tokens, a probability distribution (softmax over target tokens, averaged over heads and
blocks), see `mosaic_studio.mosaic.probe`. Each row belongs to a reference (`ref_index`) and, for SCAL, has
the target token it corresponds to (`tgt_index`). The loss in Eq. 15 is
L = L_diff + α·L_SCA + β·L_MD; the weights and their schedule belong to the trainer.

Paper and the authors' public code, side by side (the paper's form is the default here):

    choice                  paper                              authors' code (train.py)
    ----------------------  ---------------------------------  ----------------------------------
    MDL divergence          symmetric KL, Eq. 13               Jensen–Shannon divergence
                            -> divergence="sym_kl"             -> divergence="jsd"
    rows forming a_k        reference k's correspondence       every token of reference k
                            points, Eq. 12                     (black padding references too)
    SCAL averaging          mean over references of the        one mean over all points
                            per-reference means, Eq. 10
                            -> reduction="per_reference"       -> reduction="per_point"
    a_k normalisation       explicit ||.||, Eq. 12             none: the plain mean of the rows
    log safety              not stated                         log(p + ε), ε = 1e-9 / 1e-8
    α (SCAL weight)         0.4                                0.1
    β (MDL weight)          0.6                                0 until step 10k, linear to 1
                                                               at step 11k, then 1
    supervised blocks       early blocks (Table 10)            every double-stream block

The "all reference tokens" variant needs no other formula: pass one row per reference token
and let `ref_index` say which reference each row belongs to (for example
`torch.arange(K).repeat_interleave(N_ref)`); a_k is then the mean over all of reference k's
tokens. The SCAL rows (correspondence points) and the MDL rows may then differ, so call
`scal_loss_batch` and `mdl_loss_batch` separately instead of `mosaic_losses`. The authors'
code averages over the K(K-1)/2 unordered pairs; with a symmetric divergence that equals the
mean over the K(K-1) ordered pairs of Eq. 14.

A reference with no rows (no correspondence points in this sample) takes no part: K' below is
the number of references that have rows. Precision: float64 input is computed in float64,
everything else (bf16, fp16, float32) in float32 with autocast disabled, and the losses are
returned in that dtype. Nothing here loops in Python over points or reference pairs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Floor for probabilities under a log and for the normalising sum of a_k. It only changes
# values that are (numerically) zero, so log(0) and 0·log(0) stay finite; realistic attention
# values are far above it. Values below the floor get no gradient.
PROB_FLOOR = 1e-12

REDUCTIONS = ("per_reference", "per_point")


def _safe_log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x.clamp_min(PROB_FLOOR))


def _kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p‖q) over the last dimension (broadcasting); the floor makes 0·log 0 = 0."""
    return (p * (_safe_log(p) - _safe_log(q))).sum(-1)


def symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """dist of Eq. 13: ½KL(p‖q) + ½KL(q‖p)."""
    return 0.5 * _kl(p, q) + 0.5 * _kl(q, p)


def jensen_shannon(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The authors' code's dist: ½KL(p‖m) + ½KL(q‖m), m = (p + q) / 2."""
    m = 0.5 * (p + q)
    return 0.5 * _kl(p, m) + 0.5 * _kl(q, m)


DIVERGENCES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "sym_kl": symmetric_kl,
    "jsd": jensen_shannon,
}


# ---------------------------------------------------------------------------------------------
# Public API: one sample


def scal_loss(
    attn: torch.Tensor,
    tgt_index: torch.Tensor,
    ref_index: torch.Tensor,
    num_refs: int,
    reduction: str = "per_reference",
) -> torch.Tensor:
    """SCAL, Eq. 10: −(1/K') Σ_k (1/P_k) Σ_j log A[G(u_kj), v_kj].

    attn: (R, N_tgt) probe rows of the R correspondence points; tgt_index: (R,) the target
    token v of each point; ref_index: (R,) its reference in [0, num_refs). The mean runs over
    the K' references that have points. reduction="per_point" is the authors' code: one mean
    over all R points. R == 0 gives 0 (still attached to the graph of `attn`).
    """
    _check_choice("reduction", reduction, REDUCTIONS)
    attn, tgt_index, ref_index, valid = _check_inputs(attn, tgt_index, ref_index, num_refs, None)
    with _full_precision(attn):
        attn = attn.to(_compute_dtype(attn.dtype))
        return _scal_per_sample(attn[None], tgt_index[None], ref_index[None], valid[None], num_refs, reduction)[0]


def mdl_loss(
    attn: torch.Tensor,
    ref_index: torch.Tensor,
    num_refs: int,
    divergence: str = "sym_kl",
) -> torch.Tensor:
    """MDL, Eq. 11–14: −1/(K'(K'−1)) Σ_{i≠j} dist(a_i, a_j), a_k = normalise(mean of k's rows).

    attn: (R, N_tgt) probe rows; ref_index: (R,) the reference of each row in [0, num_refs).
    dist is the symmetric KL of Eq. 13 ("sym_kl") or the Jensen–Shannon divergence ("jsd").
    K' counts the references that have rows; the loss is exactly 0 when K' < 2.
    """
    _check_choice("divergence", divergence, tuple(DIVERGENCES))
    attn, _, ref_index, valid = _check_inputs(attn, None, ref_index, num_refs, None)
    with _full_precision(attn):
        attn = attn.to(_compute_dtype(attn.dtype))
        return _mdl_per_sample(attn[None], ref_index[None], valid[None], num_refs, divergence)[0]


# ---------------------------------------------------------------------------------------------
# Public API: a padded batch (samples with different numbers of points)


def scal_loss_batch(
    attn: torch.Tensor,
    tgt_index: torch.Tensor,
    ref_index: torch.Tensor,
    num_refs: int,
    valid: torch.Tensor | None = None,
    reduction: str = "per_reference",
) -> torch.Tensor:
    """`scal_loss` of each sample, averaged over the samples that have at least one point.

    attn: (B, R, N_tgt); tgt_index, ref_index, valid: (B, R). valid (bool) marks real points;
    padded points are ignored whatever their rows and indices hold. None means all valid.
    """
    _check_choice("reduction", reduction, REDUCTIONS)
    attn, tgt_index, ref_index, valid = _check_inputs(attn, tgt_index, ref_index, num_refs, valid, batched=True)
    with _full_precision(attn):
        attn = attn.to(_compute_dtype(attn.dtype))
        per_sample = _scal_per_sample(attn, tgt_index, ref_index, valid, num_refs, reduction)  # (B,)
        return _mean_over_samples(per_sample, valid.any(-1))


def mdl_loss_batch(
    attn: torch.Tensor,
    ref_index: torch.Tensor,
    num_refs: int,
    valid: torch.Tensor | None = None,
    divergence: str = "sym_kl",
) -> torch.Tensor:
    """`mdl_loss` of each sample, averaged over the samples that have at least one row.

    Samples with a single reference count (their MDL is 0), so the value is the mean of the
    per-sample losses a batch-size-1 trainer would see. Shapes as in `scal_loss_batch`.
    """
    _check_choice("divergence", divergence, tuple(DIVERGENCES))
    attn, _, ref_index, valid = _check_inputs(attn, None, ref_index, num_refs, valid, batched=True)
    with _full_precision(attn):
        attn = attn.to(_compute_dtype(attn.dtype))
        per_sample = _mdl_per_sample(attn, ref_index, valid, num_refs, divergence)  # (B,)
        return _mean_over_samples(per_sample, valid.any(-1))


def mosaic_losses(
    attn: torch.Tensor,
    tgt_index: torch.Tensor,
    ref_index: torch.Tensor,
    num_refs: int,
    valid: torch.Tensor | None = None,
    divergence: str = "sym_kl",
    reduction: str = "per_reference",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(SCAL, MDL) of a padded batch whose rows are the correspondence points (the paper's form).

    attn: (B, R, N_tgt); tgt_index, ref_index, valid: (B, R). Each loss is the mean of the
    per-sample losses over the samples that have points.
    """
    scal = scal_loss_batch(attn, tgt_index, ref_index, num_refs, valid, reduction=reduction)
    mdl = mdl_loss_batch(attn, ref_index, num_refs, valid, divergence=divergence)
    return scal, mdl


# ---------------------------------------------------------------------------------------------
# The formulas, vectorised over a padded batch


def _membership(ref_index: torch.Tensor, valid: torch.Tensor, num_refs: int, dtype: torch.dtype) -> torch.Tensor:
    """One-hot reference of every point, all zeros for padded points: (B, R, K)."""
    refs = torch.arange(num_refs, device=ref_index.device)
    return ((ref_index[..., None] == refs) & valid[..., None]).to(dtype)  # (B, R, K)


def _scal_per_sample(attn, tgt_index, ref_index, valid, num_refs, reduction) -> torch.Tensor:
    """Eq. 10 for each sample: (B, R, N_tgt) rows -> (B,)."""
    attn = torch.where(valid[..., None], attn, 0.0)  # padded rows may hold anything
    picked = attn.gather(-1, tgt_index[..., None]).squeeze(-1)  # (B, R): A[G(u_j), v_j]
    nll = torch.where(valid, -_safe_log(picked), 0.0)  # (B, R)
    if reduction == "per_point":
        return nll.sum(-1) / valid.sum(-1).clamp_min(1)
    member = _membership(ref_index, valid, num_refs, nll.dtype)  # (B, R, K)
    points = member.sum(1)  # (B, K): P_k
    per_ref = torch.einsum("brk,br->bk", member, nll) / points.clamp_min(1)  # (B, K), 0 without points
    refs_with_points = (points > 0).sum(-1)  # (B,): K'
    return per_ref.sum(-1) / refs_with_points.clamp_min(1)


def _mdl_per_sample(attn, ref_index, valid, num_refs, divergence) -> torch.Tensor:
    """Eq. 11–14 for each sample: (B, R, N_tgt) rows -> (B,)."""
    attn = torch.where(valid[..., None], attn, 0.0)  # padded rows may hold anything
    member = _membership(ref_index, valid, num_refs, attn.dtype)  # (B, R, K)
    points = member.sum(1)  # (B, K): P_k
    mean = member.transpose(1, 2) @ attn / points.clamp_min(1)[..., None]  # (B, K, N_tgt), Eq. 12
    a = mean / mean.sum(-1, keepdim=True).clamp_min(PROB_FLOOR)  # (B, K, N_tgt): ||.|| of Eq. 12
    dist = DIVERGENCES[divergence](a[:, :, None, :], a[:, None, :, :])  # (B, K, K): dist(a_i, a_j)
    present = points > 0  # (B, K)
    off_diagonal = ~torch.eye(num_refs, dtype=torch.bool, device=attn.device)  # (K, K)
    pairs = present[:, :, None] & present[:, None, :] & off_diagonal  # (B, K, K): i ≠ j, both present
    refs_with_points = present.sum(-1)  # (B,): K'
    ordered_pairs = refs_with_points * (refs_with_points - 1)  # (B,): K'(K'−1), 0 when K' < 2
    return torch.where(pairs, -dist, 0.0).sum((1, 2)) / ordered_pairs.clamp_min(1)


def _mean_over_samples(per_sample: torch.Tensor, has_points: torch.Tensor) -> torch.Tensor:
    """Mean of (B,) losses over the samples with points; 0 (on the graph) when there are none."""
    return torch.where(has_points, per_sample, 0.0).sum() / has_points.sum().clamp_min(1)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64 (exact tests, gradcheck); everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _full_precision(attn: torch.Tensor):
    """Keep an enclosing autocast from lowering the matmuls here to bf16/fp16."""
    return torch.autocast(device_type=attn.device.type, enabled=False)


# ---------------------------------------------------------------------------------------------
# Input checks


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, allowed))}")


def _check_inputs(attn, tgt_index, ref_index, num_refs, valid, batched: bool = False):
    """Validate shapes, dtypes and index ranges; return (attn, tgt_index, ref_index, valid)
    with integer indices as int64 (padded entries set to 0) and a bool `valid`."""
    ndim, layout, points = (3, "(B, R, N_tgt)", "(B, R)") if batched else (2, "(R, N_tgt)", "(R,)")
    if not isinstance(attn, torch.Tensor) or attn.ndim != ndim:
        shape = tuple(attn.shape) if isinstance(attn, torch.Tensor) else type(attn).__name__
        raise ValueError(f"attn must be a {ndim}-D tensor {layout}, got {shape}")
    if not attn.is_floating_point():
        raise ValueError(f"attn must be a floating-point tensor, got dtype {attn.dtype}")
    if isinstance(num_refs, bool) or not isinstance(num_refs, int) or num_refs < 0:
        raise ValueError(f"num_refs must be a non-negative int, got {num_refs!r}")
    point_shape = attn.shape[:-1]
    if valid is None:
        valid = torch.ones(point_shape, dtype=torch.bool, device=attn.device)
    elif not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or valid.shape != point_shape:
        got = (valid.dtype, tuple(valid.shape)) if isinstance(valid, torch.Tensor) else type(valid).__name__
        raise ValueError(f"valid must be a bool tensor {points} = {tuple(point_shape)} matching attn, got {got}")
    ref_index = _check_index("ref_index", ref_index, point_shape, points, num_refs, "num_refs", valid)
    if tgt_index is not None:
        tgt_index = _check_index("tgt_index", tgt_index, point_shape, points, attn.shape[-1], "N_tgt", valid)
    return attn, tgt_index, ref_index, valid


def _check_index(name, index, shape, layout, upper, upper_name, valid) -> torch.Tensor:
    if not isinstance(index, torch.Tensor) or index.shape != shape:
        got = tuple(index.shape) if isinstance(index, torch.Tensor) else type(index).__name__
        raise ValueError(f"{name} must have shape {layout} = {tuple(shape)} to match attn, got {got}")
    if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {index.dtype}")
    index = index.to(device=valid.device, dtype=torch.long)
    used = index[valid]
    if used.numel() and (used.min() < 0 or used.max() >= upper):
        low, high = used.min().item(), used.max().item()
        raise ValueError(f"{name} must lie in [0, {upper_name}={upper}), got values in [{low}, {high}]")
    return torch.where(valid, index, 0)
