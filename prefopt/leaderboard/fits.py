"""Gao et al.'s over-optimization forms, fitted to gold reward along √KL (arXiv:2210.10760, §3).

With d = √KL(π ‖ π_SFT) and R(d) the gold reward gained over π_SFT's (R(0) = 0):

    best-of-n:  R_bon(d) = d (α − β d)          peak at d* = α / (2β),        R* = α² / (4β)
    RL:         R_RL(d)  = d (α − β log d)      peak at d* = exp(α/β − 1),    R* = β d*

Both are linear in (α, β) for known d: R = α·d − β·g(d) with g(d) = d² (best-of-n) or d·log d (RL), so
the fit is ordinary least squares on two columns, no iterative solver and no starting point; the
point d = 0, R = 0 carries no information (both columns vanish) and is dropped. A fit with β ≤ 0 has
no peak within the model (gold still rising as far as it goes): ``peak_kl`` is then None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

FORMS = ("bon", "rl")


@dataclass(frozen=True)
class Fit:
    form: str
    alpha: float
    beta: float
    n: int  # points used
    rmse: float

    def predict(self, d: float) -> float:
        return d * (self.alpha - self.beta * _g1(self.form, d))

    @property
    def peak_d(self) -> Optional[float]:
        if self.beta <= 0:
            return None
        if self.form == "bon":
            return self.alpha / (2 * self.beta)
        x = self.alpha / self.beta - 1.0
        return math.exp(x) if x < 700 else None

    @property
    def peak_kl(self) -> Optional[float]:
        d = self.peak_d
        return None if d is None else d * d

    @property
    def peak_gain(self) -> Optional[float]:
        d = self.peak_d
        return None if d is None else self.predict(d)

    def as_dict(self) -> dict:
        return {"form": self.form, "alpha": self.alpha, "beta": self.beta, "n": self.n, "rmse": self.rmse,
                "peak_kl": self.peak_kl, "peak_gain": self.peak_gain}


def _g1(form: str, d: float) -> float:
    """g(d) / d: d for best-of-n, log d for RL (0 at d = 0, the limit of d·log d / d·… for the RL form)."""
    if form == "bon":
        return d
    return math.log(d) if d > 0 else 0.0


def fit(kl: Sequence[float], gain: Sequence[float], form: str) -> Optional[Fit]:
    """Least-squares (α, β) of ``form`` to points (KL, gold − gold_SFT); None with fewer than 2 usable points."""
    if form not in FORMS:
        raise ValueError(f"form {form!r}; accepted: {', '.join(FORMS)}")
    pts = [(math.sqrt(k), float(r)) for k, r in zip(kl, gain)
           if k is not None and r is not None and math.isfinite(k) and math.isfinite(r) and k > 1e-12]
    if len(pts) < 2:
        return None
    d = np.array([p[0] for p in pts])
    y = np.array([p[1] for p in pts])
    X = np.stack([d, -d * (d if form == "bon" else np.log(d))], axis=1)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    return Fit(form, float(coef[0]), float(coef[1]), len(pts), float(np.sqrt(np.mean(resid ** 2))))
