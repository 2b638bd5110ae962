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


def paired_bootstrap(a: Sequence[float], b: Sequence[float], level: float = 0.95, resamples: int = 10_000, seed: int = 0,
                     exact_max: int = 5**5) -> Optional[dict]:
    """Paired comparison of two methods over the same seeds (seed i of ``a`` shares its SFT policy,
    pairs and reward model with seed i of ``b``): the seeds are resampled together, so what is
    resampled is the per-seed difference d_i = a_i − b_i.

    Returns {"p_a_beats_b": share of resamples whose mean difference is > 0 (ties count ½),
    "diff": Estimate of mean(d) with its percentile interval, "n": seeds}; None without a common seed.
    """
    d = [float(x) - float(y) for x, y in zip(a, b) if x is not None and y is not None]
    if not d:
        return None
    means = bootstrap_means(d, resamples, seed, exact_max) if len(d) > 1 else np.asarray(d, dtype=np.float64)
    p = float(np.mean((means > 0) + 0.5 * (means == 0)))
    est = bootstrap_ci(d, level, resamples, seed, exact_max)
    return {"p_a_beats_b": p, "diff": est, "n": len(d)}


def separated_ranks(names: Sequence[str], beats: dict) -> dict:
    """Ranks that only separate where the data do: ``beats[(a, b)]`` is True when a's paired interval
    of a − b lies above zero. rank(a) = 1 + the number of methods that beat a, so methods nobody
    separates share a rank (competition ranking: 1, 1, 3, …)."""
    return {a: 1 + sum(1 for b in names if b != a and beats.get((b, a), False)) for a in names}
