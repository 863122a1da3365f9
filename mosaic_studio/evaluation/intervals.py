"""The 95 % bootstrap interval of a mean, the one resampling every report of the project uses:
BOOTSTRAP_DRAWS resamples of the values with replacement, a fixed seed, the 2.5th and 97.5th
percentiles of the resampled means. Paired comparisons pass the per-case differences."""

from __future__ import annotations

import numpy as np

BOOTSTRAP_DRAWS = 2000


def bootstrap_interval(values, seed: int = 0) -> tuple[float, float]:
    """(low, high) of the 95 % bootstrap interval of the mean of `values` (at least one)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"bootstrap_interval needs a non-empty list of numbers, got shape {array.shape}")
    rng = np.random.default_rng(seed)
    means = array[rng.integers(0, len(array), (BOOTSTRAP_DRAWS, len(array)))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)
