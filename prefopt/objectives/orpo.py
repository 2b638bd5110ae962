r"""ORPO: Monolithic Preference Optimization without Reference Model (Hong et al., 2024,
arXiv:2403.07691, eqs. 2–7).

No reference policy. With the per-token mean log-likelihood of a completion

    ℓ(x, y) = (1/|y|) Σ_t log π(y_t | x, y_<t)          P(y|x) = exp ℓ(x, y)
    log odds(y|x) = log [ P / (1 − P) ] = ℓ − log(1 − exp ℓ)

the loss of a pair is supervised fine-tuning on the chosen completion plus λ times an odds-ratio
term:

    L_SFT = −ℓ(x, y_w)
    L_OR  = −log σ( log odds(y_w|x) − log odds(y_l|x) )
    L     = L_SFT + λ · L_OR                                          λ = ``beta``

λ is called ``beta`` because that is its name in TRL's ``ORPOConfig`` (default 0.1, as here).
Difference from TRL: TRL's ``ORPOTrainer`` (trl.experimental.orpo) computes L_SFT as one
cross-entropy token mean over the prompt *and* chosen tokens of the whole batch together (its labels
mask only padding), so the prompt is trained on too and long sequences weigh more. prefopt follows
the paper (eq. 2: the NLL of the chosen completion y_w given x, a per-sequence mean over its tokens,
then the mean over pairs), so no gradient reaches the prompt tokens, a long chosen completion does
not weigh more than a short one, and the loss does not depend on how the batch is split. log(1 − exp ℓ) is computed stably (log(−expm1 ℓ) near 0, log1p(−exp ℓ) below −ln 2).

The loss is summed over pairs; the trainer divides by the step's pair count.

Fixed point (one pair {y_0, y_1} per prompt, y_0 preferred with probability p): s = logit π(y_0|x)
with σ(s) + 2λ σ(2s) = (1 + 2λ) p (λ = 0: π(y_0|x) = p, SFT on the chosen); no closed form with more
completions (checked in tests/test_fixed_points.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from prefopt.objectives.registry import Needs, Objective, register


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp x) for x < 0 (Mächler, 2012)."""
    x = x.clamp(max=-1e-7)  # ℓ = 0 (P = 1) has infinite odds; stay finite
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@register("orpo")
class ORPO(Objective):
    needs = Needs(data="paired")
    # The main coefficient (λ, the odds-ratio term's weight) and the values the leaderboard's tuning
    # grid tries (× its learning rates).
    tuning = {"beta": (0.05, 0.5)}

    @dataclass
    class Config:
        name: str = "orpo"
        beta: float = 0.1  # λ, the weight of the odds-ratio term

        def __post_init__(self):
            from prefopt.core.errors import UserError

            if self.beta < 0:
                raise UserError(f"algo.beta={self.beta} must be >= 0")

    def __init__(self, cfg: "ORPO.Config"):
        self.cfg = cfg

    def units(self, batch) -> int:
        return batch["chosen_input_ids"].shape[0]

    def loss(self, batch, scorer):
        λ = self.cfg.beta
        π_w, π_l = scorer.logps(batch, "chosen"), scorer.logps(batch, "rejected")
        ℓ_w, ℓ_l = π_w.seq_mean(), π_l.seq_mean()

        log_odds_w = ℓ_w - log1mexp(ℓ_w)
        log_odds_l = ℓ_l - log1mexp(ℓ_l)
        log_or = log_odds_w - log_odds_l
        L_SFT = -ℓ_w
        L_OR = -F.logsigmoid(log_or)
        L = L_SFT + λ * L_OR

        metrics = {
            "nll": L_SFT.detach().sum(),
            "or_loss": L_OR.detach().sum(),
            "log_odds_ratio": log_or.detach().sum(),
            "rewards/chosen": (λ * ℓ_w).detach().sum(),
            "rewards/rejected": (λ * ℓ_l).detach().sum(),
            "rewards/margin": (λ * (ℓ_w - ℓ_l)).detach().sum(),
            "rewards/accuracy": (log_or > 0).float().sum(),
            "logps/chosen": π_w.seq_sum().detach().sum(),
            "logps/rejected": π_l.seq_sum().detach().sum(),
        }
        return L.sum(), metrics
