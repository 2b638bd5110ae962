r"""VESPO: a smooth, asymmetric Gamma weight of the sequence ratio instead of a clip (``policy_loss=vespo``).

"Variational Sequence-Level Soft Policy Optimization", arXiv:2602.10693; TRL 1.16's
``loss_type="vespo"`` (``get_gamma_weights``). With the sequence ratio w_i = Π_t π(y_t)/π_old(y_t) and
(k, λ) chosen by the sign of the advantage,

    (k, λ) = (k_pos, λ_pos) if A ≥ 0 else (k_neg, λ_neg)          (2, 3) and (3, 2) by default
    φ(w) = e^λ · w^k · e^{−λ w}                                    (φ(1) = 1)
    pg_t = −sg[φ(w_i)] · A_t · log π(y_t)

so every token's gradient is φ(w_i) A_t ∇log π(y_t): 1 on-policy, falling smoothly for sequences whose
ratio left 1 on either side. log w_i = Σ_t clamp(log ρ_t, ±20), clamped to [log 1e-8, 20], as TRL.
TRL folds a vLLM importance ratio into w_i and skips its separate IS factor; prefopt's ``rollout_is``
multiplies pg_t afterwards, as for every family.
"""

from __future__ import annotations

import math

import torch

from prefopt.objectives.pg.losses.base import LOG_RATIO_MAX, PGTerms, PolicyLoss, register

_LOG_W_MIN = math.log(1e-8)


@register("vespo")
class VESPO(PolicyLoss):
    ratio_levels = ("token",)

    def __call__(self, logp, old, A, mask):
        c = self.cfg
        with torch.no_grad():
            log_w = ((logp - old).clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX) * mask).sum(-1, keepdim=True)
            log_w = log_w.clamp(_LOG_W_MIN, LOG_RATIO_MAX)
            nonneg = A >= 0
            k = torch.where(nonneg, A.new_tensor(c.vespo_k_pos), A.new_tensor(c.vespo_k_neg))  # A's dtype
            λ = torch.where(nonneg, A.new_tensor(c.vespo_lambda_pos), A.new_tensor(c.vespo_lambda_neg)).clamp(min=1e-4)
            φ = torch.exp(λ + k * log_w - λ * torch.exp(log_w)).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
            w = torch.exp(log_w).expand_as(mask) * mask
        pg = -φ * A * logp * mask
        return PGTerms(pg=pg, ratio=w, clipped=(φ < 0.5) & mask.bool())
