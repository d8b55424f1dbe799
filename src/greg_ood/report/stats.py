"""Statistics of the claims table: paired differences, a t interval, a bootstrap interval and the verdict rule.

Small pure functions on plain arrays; no pandas, no I/O. The unit is whatever the caller pairs (seeds, or images).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as _st

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def t_interval(d: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided t interval of the mean of paired differences ``d``:

        d̄ ± t_{(1+level)/2, n−1} · s / √n,   s = sample std (ddof = 1).

    Returns ``(mean, low, high)``. Degenerate cases: n = 0 → all NaN; n = 1 → (d₁, NaN, NaN) (no spread to
    estimate); s = 0 with n ≥ 2 → the interval is the point (mean, mean, mean); any NaN in ``d`` → NaN throughout
    (the caller drops unpaired or missing values first)."""
    x = np.asarray(d, dtype=float)
    n = x.size
    if n == 0 or np.isnan(x).any():
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if n < 2:
        return mean, math.nan, math.nan
    half = float(_st.t.ppf((1 + level) / 2, n - 1)) * float(x.std(ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half


def bootstrap_interval(d: Sequence[float], level: float = 0.95, *, n_resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``d``: draw ``n_resamples`` samples of size n with replacement
    (``numpy.random.default_rng(seed)``), take each sample's mean, and return the ``(1−level)/2`` and
    ``(1+level)/2`` quantiles of those means (numpy's default linear quantile). A cross-check of
    :func:`t_interval` that assumes no normality; with few seeds it is narrower than the t interval. n < 2 or any
    NaN → (NaN, NaN); zero spread → the point."""
    x = np.asarray(d, dtype=float)
    if x.size < 2 or np.isnan(x).any():
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def verdict(low: float, high: float, direction: int, threshold: float = 0.0) -> str:
    """The verdict of an interval [low, high] of a difference whose claimed side of ``threshold`` is ``direction``
    (−1: the claim says the difference is below the threshold, e.g. a lower FPR95; +1: above it):

    * supported    — the whole interval lies strictly on the claimed side of the threshold;
    * contradicted — the whole interval lies strictly on the other side;
    * inconclusive — the interval contains the threshold, or is NaN (fewer than 2 pairs, or a missing value).

    A superiority claim uses threshold 0; a non-inferiority claim ("within 1 point") uses the margin (−1, direction
    +1): supported when the lower bound is above −1, contradicted when the upper bound is below −1."""
    if direction not in (-1, 1):
        raise ValueError(f"direction: must be -1 or +1, got {direction!r}")
    if math.isnan(low) or math.isnan(high):
        return INCONCLUSIVE
    a, b = direction * (low - threshold), direction * (high - threshold)
    if a > 0 and b > 0:
        return SUPPORTED
    if a < 0 and b < 0:
        return CONTRADICTED
    return INCONCLUSIVE


def wins(d: Sequence[float], direction: int, threshold: float = 0.0) -> int:
    """Number of pairs whose difference lies strictly on the claimed side of ``threshold``."""
    x = np.asarray(d, dtype=float)
    return int(np.sum(direction * (x - threshold) > 0))
