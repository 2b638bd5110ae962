"""The board's statistics, each a scipy.stats method (tested for its coverage or error rate by simulation
in tests/test_leaderboard_stats.py at the board's number of seeds).

- **Interval of a mean over seeds**: Student's t-interval, x̄ ± t_{0.975, n−1} · s / √n
  (``scipy.stats.ttest_1samp(...).confidence_interval``), labelled with its method and n ("95% t, n=5").
  A percentile bootstrap over 3–5 seeds is not used: its 2.5% quantile is the sample minimum once
  P(all draws = min) = n⁻ⁿ > 0.025, so it reads the min–max and covers the mean about 75% of the time.
- **Method against method**: paired by seed (seed s of every method shares π_SFT, pairs and reward model),
  a two-sided paired t-test of the per-seed differences d_s = a_s − b_s (``scipy.stats.ttest_rel``) and
  the t-interval of mean(d). Over every pair of a task's rows, the p-values are adjusted by
  Benjamini–Hochberg (``scipy.stats.false_discovery_control``): a pair is *separated* when its adjusted
  p < α = 0.05. Under the global null (no method differs) the false-discovery rate is the family-wise
  error rate, so the chance that the board separates any pair at all is ≤ 5%.
- **The best and those indistinguishable from it**: the best is the highest mean; a method is
  *indistinguishable from the best* when its pair with the best is not separated after the adjustment.
- **Two rankings**: Kendall's τ-b (``scipy.stats.kendalltau``: ties in either ranking count for neither
  order), its permutation p-value (``scipy.stats.permutation_test`` over the pairings; exact for up to 8
  methods), the number of methods, and the smallest |τ| that many methods can show at p < 0.05 at all.
- **Two boards over the same seeds** (a rerun on another CPU kind): τ-b with a percentile interval from
  ``scipy.stats.bootstrap`` resampling the seeds jointly for both boards (paired).

Means that are equal up to ``TIE_TOLERANCE`` are equal: float summation makes 45/81 and 45/81 differ in
the last bit, and an accuracy's ties are ties of integer answer counts.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats as st

LEVEL = 0.95
ALPHA = 0.05
TIE_TOLERANCE = 1e-9
INTERVAL = "t"  # the method of every interval of a mean on the board
CORRECTION = "Benjamini–Hochberg"


@dataclass(frozen=True)
class Estimate:
    mean: float
    lo: float
    hi: float
    n: int
    method: str = INTERVAL

    def as_dict(self) -> dict:
        return {"mean": self.mean, "lo": self.lo, "hi": self.hi, "n": self.n, "method": self.method}

    @property
    def label(self) -> str:
        """"95% t, n=5": what the interval is and how many values it rests on."""
        return f"{LEVEL:.0%} {self.method}, n={self.n}"


def _clean(values) -> list:
    return [float(v) for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Optional[Estimate]:
    """Mean and t-interval of ``values`` (None / non-finite entries dropped); None if empty. One value,
    or values all equal, give the degenerate interval [x̄, x̄] (the table shows n, which says why)."""
    x = _clean(values)
    if not x:
        return None
    mean = float(np.mean(x))
    if len(x) == 1 or max(x) - min(x) <= TIE_TOLERANCE:
        return Estimate(mean, mean, mean, len(x))
    ci = st.ttest_1samp(x, 0.0).confidence_interval(level)
    return Estimate(mean, float(ci.low), float(ci.high), len(x))


def _paired(A: np.ndarray, B: np.ndarray, level: float) -> list:
    """Paired tests of the rows of A against those of B ([pairs, seeds], one scipy call): [{"diff", "p", "n"}]."""
    pairs, n = A.shape
    D = A - B
    out = []
    if n >= 2:
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore")
            res = st.ttest_rel(A, B, axis=1)
            ci = res.confidence_interval(level)
    for i in range(pairs):
        d = D[i]
        mean = float(d.mean())
        flat = n < 2 or float(d.max() - d.min()) <= TIE_TOLERANCE
        if flat:
            est = Estimate(mean, mean, mean, n)
            # one seed: no test; no spread: an exact tie (p = 1) or the same nonzero difference on every seed (t = ±∞)
            p = 1.0 if n < 2 or abs(mean) <= TIE_TOLERANCE else 0.0
        else:
            est = Estimate(mean, float(ci.low[i]), float(ci.high[i]), n)
            p = float(res.pvalue[i])
        out.append({"diff": est, "p": p, "n": n})
    return out


def paired_test(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Optional[dict]:
    """Paired comparison of two methods over the same seeds (position i of ``a`` and of ``b`` is seed i):
    {"diff": Estimate of mean(a − b) (its paired t-interval), "p": two-sided paired t-test p-value, "n": seeds};
    None without a common seed. Differences all equal to 0 (an exact tie) give p = 1; one seed gives p = 1."""
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None]
    if not pairs:
        return None
    A, B = np.array([[x for x, _ in pairs]]), np.array([[y for _, y in pairs]])
    return _paired(A, B, level)[0]


def adjust(pvalues: Sequence[float]) -> list:
    """Benjamini–Hochberg adjusted p-values (scipy.stats.false_discovery_control)."""
    if not len(pvalues):
        return []
    return [float(q) for q in st.false_discovery_control(np.asarray(pvalues, dtype=np.float64), method="bh")]


def compare_all(per_seed: dict, alpha: float = ALPHA) -> dict:
    """Every pair of ``per_seed`` ({name: {seed: value}}) compared, paired over their common seeds, with the
    p-values adjusted over all pairs. Returns {"pairs": {(a, b): {"diff", "p", "p_adj", "n", "separated"}}
    (both orders; diff of a − b), "best": the names with the highest mean (several where means tie within
    TIE_TOLERANCE: which of them is "the" best would be arbitrary), "means": {name: mean},
    "indistinguishable": the names not separated from some best name (the best included), "tested": the
    number of pairs in the family}."""
    names = [m for m in per_seed if per_seed[m]]
    means = {m: float(np.mean(list(per_seed[m].values()))) for m in names}
    out = {"pairs": {}, "best": [], "means": means, "indistinguishable": [], "tested": 0}
    if not names:
        return out
    # pairs over the same common seeds are tested in one call (the usual case: every row has every report seed)
    groups = {}
    for a, b in itertools.combinations(names, 2):
        common = tuple(sorted(set(per_seed[a]) & set(per_seed[b])))
        if common:
            groups.setdefault(common, []).append((a, b))
    tests = {}
    for common, pairs in groups.items():
        A = np.array([[per_seed[a][s] for s in common] for a, _ in pairs], dtype=np.float64)
        B = np.array([[per_seed[b][s] for s in common] for _, b in pairs], dtype=np.float64)
        tests.update(zip(pairs, _paired(A, B, LEVEL)))
    q = adjust([r["p"] for r in tests.values()])
    for ((a, b), r), qa in zip(tests.items(), q):
        sep = qa < alpha
        d = r["diff"]
        out["pairs"][(a, b)] = {**r, "p_adj": qa, "separated": sep}
        out["pairs"][(b, a)] = {**r, "diff": Estimate(-d.mean, -d.hi, -d.lo, d.n, d.method), "p_adj": qa, "separated": sep}
    top = max(means.values())
    best = [m for m in names if means[m] >= top - TIE_TOLERANCE]
    out["best"] = best
    out["indistinguishable"] = [m for m in names if m in best
                                or any(not out["pairs"].get((b, m), {}).get("separated") for b in best)]
    out["tested"] = len(tests)
    return out


def _tie_rounded(x) -> np.ndarray:
    # values equal up to TIE_TOLERANCE compare equal in τ-b
    return np.round(np.asarray(x, dtype=np.float64) / TIE_TOLERANCE) * TIE_TOLERANCE


def tau_b(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    """Kendall's τ-b (scipy.stats.kendalltau); None when either side is constant or has < 2 items."""
    x, y = _tie_rounded(x), _tie_rounded(y)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = st.kendalltau(x, y).statistic
    return None if not math.isfinite(t) else float(t)


def tau_test(x: Sequence[float], y: Sequence[float], seed: int = 0) -> Optional[dict]:
    """{"tau": τ-b, "p": two-sided permutation p-value, "n_methods", "tau_min": the smallest |τ| these n
    methods can show at p < 0.05}; None when τ is undefined."""
    t = tau_b(x, y)
    if t is None:
        return None
    n = len(x)
    xr, yr = _tie_rounded(x), _tie_rounded(y)
    # one sample: 'pairings' permutes y against the fixed x (n! pairings; exact up to 8 methods)
    res = st.permutation_test((yr,), lambda b: st.kendalltau(xr, b).statistic, permutation_type="pairings",
                              alternative="two-sided", n_resamples=9999 if n > 8 else np.inf,
                              rng=np.random.default_rng(seed))
    return {"tau": t, "p": float(res.pvalue), "n_methods": n, "tau_min": min_detectable_tau(n)}


def _with_inversions(n: int, d: int) -> list:
    """A permutation of range(n) with exactly d inversions (Lehmer code, greedy from the front)."""
    left, out = list(range(n)), []
    for i in range(n):
        c = min(d, n - 1 - i)
        out.append(left.pop(c))
        d -= c
    return out


def min_detectable_tau(n: int, alpha: float = ALPHA) -> Optional[float]:
    """The smallest |τ| that n untied items can reach with an exact two-sided p < alpha (scipy's exact
    null distribution of Kendall's τ); None when even τ = ±1 cannot (n ≤ 4 at alpha 0.05)."""
    n0 = n * (n - 1) // 2
    best = None
    for d in range(0, n0 // 2 + 1):
        p = st.kendalltau(range(n), _with_inversions(n, d), method="exact").pvalue
        if p >= alpha:
            break
        best = 1.0 - 2.0 * d / n0
    return best


def tau_paired(a: dict, b: dict, level: float = LEVEL, seed: int = 0) -> Optional[dict]:
    """τ-b between two boards of the same methods over the same seeds (a rerun of one board), with a
    percentile interval from scipy.stats.bootstrap resampling seeds jointly for both boards. ``a`` and ``b``
    map method → {seed: value}. Returns {"tau", "lo", "hi", "n_methods", "n_seeds", "p", "tau_min"}."""
    names = sorted(set(a) & set(b))
    if len(names) < 2:
        return None
    seeds = sorted(set.intersection(*(set(a[m]) & set(b[m]) for m in names)))
    if not seeds:
        return None
    A = np.array([[a[m][s] for s in seeds] for m in names], dtype=np.float64)
    B = np.array([[b[m][s] for s in seeds] for m in names], dtype=np.float64)
    test = tau_test(A.mean(axis=1), B.mean(axis=1), seed=seed)
    if test is None:
        return None
    lo = hi = test["tau"]
    if len(seeds) > 1:
        def stat(i):
            t = tau_b(A[:, i.astype(int)].mean(axis=1), B[:, i.astype(int)].mean(axis=1))
            return np.nan if t is None else t

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ci = st.bootstrap((np.arange(len(seeds), dtype=np.float64),), stat, vectorized=False, method="percentile",
                              confidence_level=level, n_resamples=2000, rng=np.random.default_rng(seed)).confidence_interval
        lo, hi = float(ci.low), float(ci.high)
    return {**test, "lo": lo, "hi": hi, "n_seeds": len(seeds)}
