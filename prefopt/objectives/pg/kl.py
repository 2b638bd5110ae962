r"""KL(π‖π_ref) estimators from sampled tokens, and the adaptive KL coefficient.

For a token y ~ π with log-ratio  δ = log π(y) − log π_ref(y)  (Schulman, "Approximating KL
divergence", 2020):

    k1 = δ                              unbiased, can be negative, high variance
    k2 = ½ δ²                           biased, ≥ 0, low variance
    k3 = exp(−δ) − 1 + δ                unbiased (E_π[exp(−δ)] = 1), ≥ 0, low variance

A sequence's KL estimate is the sum over its tokens. The KL can enter the *reward*
(r ← r − β·Σ_t k_t, PPO-style, Ziegler et al. 2019) or the *loss* (L ← L + β·k_t, GRPO-style,
Shao et al. 2024; GRPO uses k3).

Adaptive coefficient (Ziegler et al., 2019, arXiv:1909.08593, §2.2): after each rollout with
observed sequence KL  KL_obs,

    e = clip(KL_obs / KL_target − 1, −0.2, 0.2)          β ← β · (1 + e · n / horizon)

with n the number of sequences in the rollout.
"""

from __future__ import annotations

import torch

ESTIMATORS = ("k1", "k2", "k3")


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from log π and log π_ref of tokens sampled from π."""
    δ = logp - ref_logp
    if estimator == "k1":
        return δ
    if estimator == "k2":
        return 0.5 * δ**2
    if estimator == "k3":
        # exp(−δ) with δ clamped: a token π_ref finds far likelier than π would overflow to inf.
        return torch.exp(-δ.clamp(min=-20.0)) - 1 + δ
    raise ValueError(f"unknown KL estimator {estimator!r}; accepted: {', '.join(ESTIMATORS)}")


class KLController:
    """β: fixed, or adapted towards ``target`` (Ziegler et al.) when ``target`` is set."""

    def __init__(self, coef: float, target=None, horizon: int = 10000):
        self.value = float(coef)
        self.target = target
        self.horizon = horizon

    def update(self, observed_kl: float, n_sequences: int) -> None:
        if self.target is None or self.target <= 0:
            return
        e = max(-0.2, min(0.2, observed_kl / self.target - 1.0))
        self.value *= 1.0 + e * n_sequences / self.horizon
