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


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Kendall's τ-b between two score vectors over the same items (ties in either count against
    neither order): τ_b = (C − D) / √((n₀ − n₁)(n₀ − n₂)), n₀ = n(n−1)/2, n₁ / n₂ the tied pairs of x / y.
    None when either vector is constant (or has < 2 items): no order to compare."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    i, j = np.triu_indices(len(x), k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    n0 = len(i)
    n1, n2 = int(np.sum(sx == 0)), int(np.sum(sy == 0))
    den = math.sqrt((n0 - n1) * (n0 - n2))
    return float(np.sum(sx * sy) / den) if den > 0 else None


def tau_bootstrap(a: dict, b: dict, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> Optional[dict]:
    """Kendall τ between two boards' rankings of the same methods, with a bootstrap interval over seeds.

    ``a`` and ``b`` map method → {seed: test gold}. Each board's seeds are resampled with replacement,
    jointly across its methods (a seed's methods share π_SFT, pairs, reward model), the two boards
    independently (their seeds share nothing); each method's mean over the resampled seeds gives one τ.
    Returns {"tau", "lo", "hi", "n_methods", "resamples"}, or None with fewer than 2 common methods."""
    names = sorted(set(a) & set(b))
    if len(names) < 2:
        return None
    rng = np.random.default_rng(seed)

    def matrix(board):
        # the seeds every method has: the point estimate and each resample average the same seeds
        seeds = sorted(set.intersection(*(set(board[m]) for m in names)))
        return np.array([[board[m][s] for s in seeds] for m in names], dtype=np.float64)

    A, B = matrix(a), matrix(b)
    if A.shape[1] == 0 or B.shape[1] == 0:
        return None
    tau = kendall_tau(A.mean(axis=1), B.mean(axis=1))
    taus = []
    for _ in range(resamples):
        ia, ib = rng.integers(0, A.shape[1], A.shape[1]), rng.integers(0, B.shape[1], B.shape[1])
        t = kendall_tau(A[:, ia].mean(axis=1), B[:, ib].mean(axis=1))
        if t is not None:
            taus.append(t)
    q = (1.0 - level) / 2.0
    lo, hi = (np.quantile(taus, [q, 1.0 - q], method="inverted_cdf") if taus else (float("nan"), float("nan")))
    return {"tau": tau, "lo": float(lo), "hi": float(hi), "n_methods": len(names), "resamples": len(taus),
            "seeds": (A.shape[1], B.shape[1])}
