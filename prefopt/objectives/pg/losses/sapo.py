r"""SAPO: a soft, sigmoid-gated trust region instead of the hard clip (``policy_loss=sapo``).

Qwen team 2025, "Soft Adaptive Policy Optimization", arXiv:2511.20347, eq. 5–7. With ρ_t from
``ratio_level`` (token; or GSPO's sequence ratio) and a temperature per sign of the advantage,

    τ_t = τ_pos if A_t > 0 else τ_neg                 (``sapo_tau_pos`` = 1.0, ``sapo_tau_neg`` = 1.05)
    f(ρ; τ) = σ(τ (ρ − 1)) · 4 / τ
    pg_t = −f(ρ_t; τ_t) · A_t

so ∇pg_t = −w_t A_t ∇log π(y_t) with the soft weight w_t = 4 σ(τ(ρ_t − 1)) (1 − σ(τ(ρ_t − 1))) ρ_t: 1 at
ρ = 1 (the on-policy gradient), decaying smoothly as ρ leaves 1, never cut to 0. τ_neg > τ_pos makes
the decay faster for negative advantages, whose updates the paper finds less stable.
Matches TRL 1.16's ``loss_type="sapo"`` (``sapo_temperature_pos/neg``) and verl's ``sapo``; both
aggregate seq-mean-token-mean, the preset's default.
"""

from __future__ import annotations

import torch

from prefopt.core.errors import UserError
from prefopt.objectives.pg.losses.base import LOG_RATIO_MAX, PGTerms, PolicyLoss, log_ratio, register


@register("sapo")
class SAPO(PolicyLoss):
    ratio_levels = ("token", "sequence", "sequence_token")

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        if cfg.sapo_tau_pos <= 0 or cfg.sapo_tau_neg <= 0:
            raise UserError(f"algo.sapo_tau_pos={cfg.sapo_tau_pos} and sapo_tau_neg={cfg.sapo_tau_neg} must be > 0")

    def __call__(self, logp, old, A, mask):
        c = self.cfg
        ρ = torch.exp(log_ratio(logp, old, mask, c.ratio_level).clamp(max=LOG_RATIO_MAX)) * mask
        τ = torch.where(A > 0, A.new_tensor(c.sapo_tau_pos), A.new_tensor(c.sapo_tau_neg))  # in A's dtype
        f = torch.sigmoid(τ * (ρ - 1)) * 4 / τ
        pg = -f * A * mask
        # Nothing is cut; "clipped" counts the tokens whose soft weight fell below one half.
        with torch.no_grad():
            σ = torch.sigmoid(τ * (ρ - 1))
            clipped = (4 * σ * (1 - σ) * ρ < 0.5) & mask.bool()
        return PGTerms(pg=pg, ratio=ρ.detach(), clipped=clipped)
