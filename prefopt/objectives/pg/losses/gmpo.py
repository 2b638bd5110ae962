r"""GMPO: the geometric mean of token ratios, clipped token by token in log space (``policy_loss=gmpo``).

"Geometric-Mean Policy Optimization", arXiv:2507.20673, eq. 4 (verl's ``geo_mean``,
TRL's experimental ``GMPOTrainer``). Per sequence i with advantage A_i (the mean of A_t over y_i) and
sgn = sign(A_i):

    ℓ_t = log π(y_t) − log π_old(y_t)
    ℓ̃_t = sgn · min(sgn · ℓ_t, sgn · clip(ℓ_t, −ε_low, ε_high))     (PPO's one-sided clip, in log space)
    s_i = exp((1/|y_i|) Σ_t ℓ̃_t)                                   (the geometric mean of the clipped ratios)
    pg_i = −s_i · A_i

The paper's range is ε_low = ε_high = 0.4, i.e. ratios in (e^−0.4, e^0.4) (the preset's default). The
family writes pg_t = pg_i on every token of y_i, so seq-mean-token-mean gives the paper's
(1/N) Σ_i pg_i (the preset's aggregation). An entropy control acts on pg_t after the family, so
top_entropy_quantile scales each sequence's loss by its kept share of tokens; TRL's GMPOTrainer instead
drops the low-entropy tokens from the geometric mean.
"""

from __future__ import annotations

import torch

from prefopt.objectives.pg.losses.base import LOG_RATIO_MAX, PGTerms, PolicyLoss, register, sequence_mean


@register("gmpo")
class GMPO(PolicyLoss):
    ratio_levels = ("token",)

    def __call__(self, logp, old, A, mask):
        c = self.cfg
        ℓ = (logp - old) * mask
        A_i = sequence_mean(A, mask)
        sgn = torch.sign(A_i)[:, None]
        ℓ_clip = ℓ.clamp(-c.clip_eps_low, c.clip_eps_high)
        ℓ_tilde = sgn * torch.minimum(sgn * ℓ, sgn * ℓ_clip)
        s_i = torch.exp(sequence_mean(ℓ_tilde, mask).clamp(max=LOG_RATIO_MAX))
        pg = (-s_i * A_i)[:, None] * mask
        with torch.no_grad():
            clipped = (((ℓ > c.clip_eps_high) & (sgn > 0)) | ((ℓ < -c.clip_eps_low) & (sgn < 0))) & mask.bool()
            ρ = s_i[:, None] * mask
        return PGTerms(pg=pg, ratio=ρ, clipped=clipped)
