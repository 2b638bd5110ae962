r"""CISPO: the clipped IS weight times log π, for every token (``policy_loss=cispo``).

MiniMax-M1, arXiv:2506.13585, eq. 4–5: every token keeps its gradient, only the weight is clipped,

    pg_t = −sg[clip(ρ_t, 1 − ε_low, 1 + ε_high)] · A_t · log π(y_t)

(ε_low = 1: no lower bound, as the paper; TRL's ``loss_type="cispo"`` clamps ρ_t at ``epsilon_high``
itself, the ratio bound ε_max = 1 + prefopt's ε_high; ScaleRL's ε_max = 5). With
ratio_level=sequence|sequence_token the weight is GSPO's sequence ratio s_i (the two are equal under sg).
"""

from __future__ import annotations

import torch

from prefopt.core.errors import UserError
from prefopt.objectives.pg.losses.base import LOG_RATIO_MAX, PGTerms, PolicyLoss, log_ratio, register


@register("cispo")
class CISPO(PolicyLoss):
    ratio_levels = ("token", "sequence", "sequence_token")
    eps_low_may_be_1 = True  # ε_low = 1 is the paper's "no lower bound"

    @classmethod
    def check(cls, cfg):
        if cfg.ratio_level == "sequence_sum":
            raise UserError("algo.policy_loss=cispo weights each token; accepted: ratio_level=token|sequence")
        super().check(cfg)

    def __call__(self, logp, old, A, mask):
        c = self.cfg
        ρ = torch.exp(log_ratio(logp, old, mask, c.ratio_level).clamp(max=LOG_RATIO_MAX)).detach() * mask
        w = ρ.clamp(1 - c.clip_eps_low, 1 + c.clip_eps_high)
        pg = -w * A * logp * mask
        clipped = ((ρ < 1 - c.clip_eps_low) & (A < 0)) | ((ρ > 1 + c.clip_eps_high) & (A > 0))
        return PGTerms(pg=pg, ratio=ρ, clipped=clipped & mask.bool())
