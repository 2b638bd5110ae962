r"""The clipped surrogate: PPO, GRPO, DAPO, GSPO, GSPO-token, LUSPO (``policy_loss=clip``).

Schulman et al. 2017, arXiv:1707.06347, eq. 7; asymmetric ε_low/ε_high from DAPO (Yu et al. 2025,
arXiv:2503.14476, eq. 10). Per completion token t of sequence i, with ρ_t from ``ratio_level``
(:mod:`prefopt.objectives.pg.losses.base`: token, GSPO's sequence, GSPO-token's sequence_token):

    pg_t = −min(ρ_t A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high) A_t)

GSPO (Zheng et al. 2025, arXiv:2507.18071, eq. 5) is this with ratio_level=sequence and
seq-mean-token-mean: (1/N) Σ_i (1/|y_i|) Σ_t pg_t = −(1/N) Σ_i min(s_i A_i, clip(s_i) A_i) when A_t = A_i;
its paper's clip range is ε_low = 3e-4, ε_high = 4e-4 (§5.1). LUSPO (arXiv:2602.05261; TRL's
``loss_type="luspo"``) is the same sequence ratio with seq-mean-token-sum: each sequence's loss is
|y_i| · pg_i, which removes GSPO's preference for short sequences.

ratio_level=sequence_sum treats the whole completion as one action (RLOO, Ahmadian et al. 2024,
arXiv:2402.14740, eq. 7). A_i is the sequence's advantage (the mean of A_t over y_i), and the surrogate
is one number pg_i per sequence, spread evenly over its |y_i| tokens so that Σ_t pg_t = pg_i:

    ρ_i = π(y_i|x) / π_old(y_i|x) = exp(Σ_t log(π(y_t)/π_old(y_t)))
    pg_i = −min(ρ_i A_i, clip(ρ_i, 1 − ε_low, 1 + ε_high) A_i)       pg_t = pg_i / |y_i|   (t ∈ y_i)
"""

from __future__ import annotations

import torch

from prefopt.objectives.pg.losses.base import LOG_RATIO_MAX, PGTerms, PolicyLoss, log_ratio, register, sequence_mean


@register("clip")
class ClipSurrogate(PolicyLoss):
    ratio_levels = ("token", "sequence", "sequence_token", "sequence_sum")

    def __call__(self, logp, old, A, mask):
        c = self.cfg
        ε_low, ε_high = c.clip_eps_low, c.clip_eps_high
        if c.ratio_level == "sequence_sum":
            n_tok = mask.sum(-1).clamp(min=1)
            log_ρ_i = ((logp - old) * mask).sum(-1)
            A_i = sequence_mean(A, mask)
            ρ_i = torch.exp(log_ρ_i.clamp(max=LOG_RATIO_MAX))
            pg_i = torch.maximum(-A_i * ρ_i, -A_i * ρ_i.clamp(1 - ε_low, 1 + ε_high))
            pg = (pg_i / n_tok)[:, None] * mask
            ρ = ρ_i.detach()[:, None] * mask
            A_for_clip = A_i[:, None] * mask
        else:
            ρ = torch.exp(log_ratio(logp, old, mask, c.ratio_level).clamp(max=LOG_RATIO_MAX)) * mask
            pg = torch.maximum(-A * ρ, -A * ρ.clamp(1 - ε_low, 1 + ε_high))
            A_for_clip = A
        ρ = ρ.detach()
        clipped = ((ρ < 1 - ε_low) & (A_for_clip < 0)) | ((ρ > 1 + ε_high) & (A_for_clip > 0))
        return PGTerms(pg=pg, ratio=ρ, clipped=clipped & mask.bool())
