r"""DPPO: a trust region on the divergence of the sampled token's probability, not on the ratio
(``policy_loss=dppo_tv`` | ``dppo_kl``).

"Rethinking the Trust Region in LLM Reinforcement Learning" (Divergence Proximal Policy
Optimization), arXiv:2602.04879, eq. 12 (Binary-TV) and 14 (Binary-KL); verl's ``dppo_tv`` / ``dppo_kl``,
prime-rl's default loss. With p_t = π(y_t), q_t = π_old(y_t), ρ_t = p_t / q_t, C = ``is_ratio_max``
(verl's clip_ratio_c = 20) and δ_low / δ_high = ``clip_eps_low`` / ``clip_eps_high`` read as divergence
thresholds:

    tv   valid_t = [p_t − q_t ≤ δ_high]                            if A_t > 0
                   [p_t − q_t ≥ −δ_low]                            otherwise
    kl   D_t = q_t log(q_t / p_t) + (1 − q_t) log((1 − q_t) / (1 − p_t))      (binary KL of the token)
         valid_t = [D_t ≤ δ_high or p_t ≤ q_t]                     if A_t > 0
                   [D_t ≤ δ_low or p_t ≥ q_t]                      otherwise
    pg_t = −A_t · sg[min(ρ_t, C)] · log π(y_t) · sg[valid_t]

A token whose probability has already moved too far in the direction its advantage pushes gets no
gradient; moves back are always allowed. Unlike the ratio clip, a rare token (small q_t) may change its
ratio a lot and a frequent one little. The binary KL's log terms carry verl's 1e-8 guard against
p or q = 1. Presets: dppo (kl, δ = 0.05) and dppo_tv (tv, δ = 0.2), the thresholds of public recipes.
"""

from __future__ import annotations

import torch

from prefopt.core.errors import UserError
from prefopt.objectives.pg.losses.base import LOG_RATIO_MAX, PGTerms, PolicyLoss, register

_GUARD = 1e-8


class _DPPO(PolicyLoss):
    ratio_levels = ("token",)

    @classmethod
    def check(cls, cfg):
        super().check(cfg)
        if cfg.is_ratio_max <= 0:
            raise UserError(f"algo.is_ratio_max={cfg.is_ratio_max} must be > 0")

    def valid(self, logp, old, A):
        raise NotImplementedError

    def __call__(self, logp, old, A, mask):
        c = self.cfg
        with torch.no_grad():
            ρ = torch.exp((logp - old).clamp(-LOG_RATIO_MAX, LOG_RATIO_MAX)) * mask
            valid = self.valid(logp.detach(), old, A) & mask.bool()
        pg = -A * ρ.clamp(max=c.is_ratio_max) * logp * valid * mask
        return PGTerms(pg=pg, ratio=ρ, clipped=~valid & mask.bool())


@register("dppo_tv")
class DPPOBinaryTV(_DPPO):
    def valid(self, logp, old, A):
        Δ = torch.exp(logp) - torch.exp(old)
        return torch.where(A > 0, Δ <= self.cfg.clip_eps_high, Δ >= -self.cfg.clip_eps_low)


@register("dppo_kl")
class DPPOBinaryKL(_DPPO):
    def valid(self, logp, old, A):
        p, q = torch.exp(logp), torch.exp(old)
        D = q * (old - logp) + (1 - q) * torch.log((1 - q + _GUARD) / (1 - p + _GUARD))
        return torch.where(A > 0, (D <= self.cfg.clip_eps_high) | (p <= q), (D <= self.cfg.clip_eps_low) | (p >= q))
