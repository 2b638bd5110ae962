"""Means over seeds with 95% percentile-bootstrap intervals.

The bootstrap resamples the per-seed values with replacement and takes the mean of each resample;
the interval is the 2.5th and 97.5th percentile of those means ("inverted CDF": the smallest
resample mean whose cumulative share reaches the level, so every bound is an attained value).
With few seeds (n**n ≤ ``exact_max`` resamples, n ≤ 5 by default) every resample is enumerated, so
the interval is exact and reproducible by hand; otherwise ``resamples`` draws from a generator
seeded with ``seed``. One seed gives a degenerate interval [x, x]: the table shows it as a single
value and the seed count says why.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class Estimate:
    mean: float
    lo: float
    hi: float
    n: int

    def as_dict(self) -> dict:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n}


def bootstrap_means(values: Sequence[float], resamples: int = 10_000, seed: int = 0, exact_max: int = 5**5) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n ** n <= exact_max:
        idx = np.array(list(itertools.product(range(n), repeat=n)), dtype=np.int64)
    else:
        idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    return x[idx].mean(axis=1)


def bootstrap_ci(values: Sequence[float], level: float = 0.95, resamples: int = 10_000, seed: int = 0,
                 exact_max: int = 5**5) -> Optional[Estimate]:
    """Mean and percentile-bootstrap interval of ``values`` (None entries dropped); None if empty."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return None
    mean = float(np.mean(vals))
    if len(vals) == 1:
        return Estimate(mean, mean, mean, 1)
    means = bootstrap_means(vals, resamples, seed, exact_max)
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a], method="inverted_cdf")
    return Estimate(mean, float(lo), float(hi), len(vals))
