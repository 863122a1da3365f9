"""Verification statistics for the correspondence annotations (paper appendix B; docs/DESIGN.md §6).

The paper checks its automatic correspondences by "stratified sampling on 10% of the full
dataset" over single/multi-reference scenes and object categories, and reports an error rate.
This module holds the pure parts of that study, with no I/O:

- `stratified_sample`: which samples humans review;
- `wilson_interval` and `error_report`: the point error rate with a 95% interval, per stratum
  and overall;
- `cohens_kappa`: agreement between two annotators on points both judged.

A stratum is (subject count, sorted category combination): a sample with references
["person", "chair"] is in stratum (2, ("chair", "person")). Categories are a multiset, so two
people stay ("person", "person").
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import Enum
from fractions import Fraction
from typing import NamedTuple

DEFAULT_FRACTION = 0.10  # appendix B: "stratified sampling on 10% of the full dataset"
Z_95 = 1.959963984540054  # two-sided 95% standard-normal quantile, Φ⁻¹(0.975)

Stratum = tuple[int, tuple[str, ...]]


class Verdict(str, Enum):
    """An annotator's judgement of one correspondence point."""

    CORRECT = "correct"
    WRONG = "wrong"
    UNSURE = "unsure"


class VerdictRow(NamedTuple):
    """One judged point, as `error_report` consumes it."""

    sample_id: str
    stratum: Stratum
    verdict: str


# --- strata -----------------------------------------------------------------------------------


def stratum_of(categories: Iterable[str]) -> Stratum:
    """The stratum of a sample from its per-reference category tags."""
    combination = tuple(sorted(categories))
    return (len(combination), combination)


def stratum_to_text(stratum: Stratum) -> str:
    """Canonical text form (JSON), used as the store's stratum key; any category name survives."""
    count, combination = stratum
    return json.dumps([count, list(combination)], ensure_ascii=False)


def stratum_from_text(text: str) -> Stratum:
    count, combination = json.loads(text)
    return (int(count), tuple(combination))


def format_stratum(stratum: Stratum) -> str:
    """A stratum in words, each category once with its count: `3 × object`, `animal + human`,
    `2 × human + object` (the subject count is the sum; tables may give it a column of its own)."""
    _, combination = stratum
    counts = sorted(Counter(combination).items())
    return " + ".join(category if count == 1 else f"{count} × {category}" for category, count in counts)


# --- sampling ---------------------------------------------------------------------------------


def sample_size(population: int, fraction: float) -> int:
    """Rounding rule: ceil(fraction · population), so every non-empty stratum gets at least one.

    `fraction` is read as the decimal the user wrote (Fraction(str(0.1)) == 1/10): in binary
    floating point 0.1 · 30 is 3.0000000000000004, which a plain ceil would turn into 4.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if population < 0:
        raise ValueError(f"population must be >= 0, got {population}")
    return math.ceil(Fraction(str(fraction)) * population)


def _priority(seed: int, sample_id: str) -> bytes:
    # A per-sample pseudo-random key from (seed, id) alone. Taking the lowest keys in a stratum is
    # a uniform sample without replacement, and it does not depend on any other stratum, on input
    # order, or (beyond the size of its own stratum) on which other samples exist.
    return hashlib.sha256(f"{seed}\x1f{sample_id}".encode()).digest()


def stratified_sample(
    samples: Iterable[tuple[str, Stratum]], fraction: float = DEFAULT_FRACTION, seed: int = 0
) -> list[str]:
    """Choose ceil(fraction · n_s) samples from each stratum s (see `sample_size`).

    samples: (sample_id, stratum) pairs. Returns the chosen ids, sorted. The same seed and
    population always give the same choice; adding a new stratum leaves the others unchanged.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    strata: dict[Stratum, list[str]] = {}
    seen: set[str] = set()
    for sample_id, stratum in samples:
        if sample_id in seen:
            raise ValueError(f"sample id {sample_id!r} appears twice")
        seen.add(sample_id)
        strata.setdefault(stratum, []).append(sample_id)
    chosen: list[str] = []
    for members in strata.values():
        members.sort(key=lambda sample_id: (_priority(seed, sample_id), sample_id))
        chosen.extend(members[: sample_size(len(members), fraction)])
    return sorted(chosen)


# --- error rate -------------------------------------------------------------------------------


def wilson_interval(wrong: int, judged: int, z: float = Z_95) -> tuple[float, float, float]:
    """(rate, low, high): the observed rate wrong/judged and its Wilson score interval.

    With p = wrong/n: centre = (p + z²/2n) / (1 + z²/n),
    half-width = z/(1 + z²/n) · sqrt(p(1−p)/n + z²/4n²). Unlike the normal (Wald) interval it
    stays inside [0, 1] and is not zero-width at 0 errors, which is exactly the case of a
    low-error dataset ("error rate within 3%").
    judged == 0: no evidence, so the rate is NaN and the interval the whole [0, 1].
    """
    if judged < 0 or not 0 <= wrong <= judged:
        raise ValueError(f"need 0 <= wrong <= judged, got wrong={wrong}, judged={judged}")
    if not z > 0:
        raise ValueError(f"z must be positive, got {z}")
    if judged == 0:
        return (math.nan, 0.0, 1.0)
    n = judged
    p = wrong / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half_width = z / denominator * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # Clamp rounding noise only: mathematically low = 0 at p = 0 and high = 1 at p = 1.
    return (p, max(0.0, centre - half_width), min(1.0, centre + half_width))


@dataclass(frozen=True)
class ErrorRate:
    """Counts and error rate of one group of judged points.

    judged = correct + wrong: "unsure" points are counted but left out of the rate, because an
    annotator who cannot tell says nothing about whether the point is right.
    """

    samples: int
    correct: int
    wrong: int
    unsure: int
    judged: int
    rate: float  # NaN when judged == 0
    low: float
    high: float

    @classmethod
    def of(cls, rows: list[VerdictRow]) -> ErrorRate:
        counts = Counter(Verdict(row.verdict) for row in rows)
        correct, wrong = counts[Verdict.CORRECT], counts[Verdict.WRONG]
        rate, low, high = wilson_interval(wrong, correct + wrong)
        return cls(
            samples=len({row.sample_id for row in rows}),
            correct=correct,
            wrong=wrong,
            unsure=counts[Verdict.UNSURE],
            judged=correct + wrong,
            rate=rate,
            low=low,
            high=high,
        )

    def as_dict(self) -> dict:
        """JSON-ready: NaN (no judged point) becomes None."""
        return {
            key: (None if isinstance(value, float) and math.isnan(value) else value)
            for key, value in asdict(self).items()
        }


@dataclass(frozen=True)
class ErrorReport:
    strata: dict[Stratum, ErrorRate]  # in sorted stratum order
    overall: ErrorRate


def error_report(verdicts: Iterable[VerdictRow | tuple[str, Stratum, str]]) -> ErrorReport:
    """Point error rate = wrong / judged per stratum and overall, with Wilson 95% intervals.

    The overall rate pools all judged points (it is not re-weighted by stratum size). Points of
    one sample are judged together and may share errors, so the intervals, which treat points as
    independent, are optimistic; the per-sample count is reported to make that visible.
    """
    rows = [VerdictRow(*row) for row in verdicts]
    for row in rows:
        _check_verdict(row.verdict, row.sample_id)
    by_stratum: dict[Stratum, list[VerdictRow]] = {}
    for row in rows:
        by_stratum.setdefault(row.stratum, []).append(row)
    return ErrorReport(
        strata={stratum: ErrorRate.of(by_stratum[stratum]) for stratum in sorted(by_stratum)},
        overall=ErrorRate.of(rows),
    )


def _check_verdict(value: str, sample_id: str) -> None:
    allowed = [verdict.value for verdict in Verdict]
    if value not in allowed:
        raise ValueError(f"sample {sample_id!r}: verdict {value!r} is not one of {allowed}")


# --- agreement --------------------------------------------------------------------------------


def observed_agreement(pairs: Iterable[tuple[str, str]]) -> float:
    """Fraction of pairs where both annotators gave the same label."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no doubly-judged pairs")
    return sum(a == b for a, b in pairs) / len(pairs)


def cohens_kappa(pairs: Iterable[tuple[str, str]]) -> float:
    """Cohen's κ = (p_o − p_e) / (1 − p_e) for (annotator A label, annotator B label) pairs.

    p_o is the observed agreement, p_e = Σ_k p_A(k) · p_B(k) the agreement expected by chance
    from each annotator's own label frequencies. Computed in integers, so p_e == 1 is detected
    exactly.
    Degenerate case p_e == 1 (both annotators used one and the same label for every pair, so
    p_o == 1 too): κ is 0/0 and NaN is returned, because agreement that chance alone explains
    carries no evidence either way; report `observed_agreement` beside it.
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no doubly-judged pairs")
    n = len(pairs)
    agree = sum(a == b for a, b in pairs)
    counts_a = Counter(a for a, _ in pairs)
    counts_b = Counter(b for _, b in pairs)
    chance = sum(counts_a[label] * counts_b[label] for label in counts_a)  # n² · p_e
    if chance == n * n:
        return math.nan
    return (n * agree - chance) / (n * n - chance)
