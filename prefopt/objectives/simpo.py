r"""SimPO: Simple Preference Optimization with a Reference-Free Reward (Meng et al., 2024,
arXiv:2405.14734, eq. 6).

No reference policy. The implicit reward is the length-normalized log-likelihood,

    r(x, y) = (β / |y|) · log π(y|x)                                  |y| = completion tokens

and the loss is a Bradley–Terry loss with a target reward margin γ:

    h = r(x, y_w) − r(x, y_l) − γ                                    γ = gamma_beta_ratio · β
    L = −(1−ε) · log σ(h) − ε · log σ(−h)                            ε = label_smoothing (0 in the paper)

γ is set through γ/β (``gamma_beta_ratio``), the quantity the paper tunes and the parameter name
of the authors' trainer; the defaults (β = 2.0, γ/β = 0.5, so γ = 1.0) are the paper's.

Coming from TRL: ``CPOTrainer(loss_type="simpo")`` (trl.experimental.cpo) takes the margin itself,
``simpo_gamma`` = γ (default 0.5), and divides it by β internally. A TRL config with β = 2,
``simpo_gamma=0.5`` is prefopt's ``gamma_beta_ratio=0.25``; copying 0.5 into ``gamma_beta_ratio``
doubles the margin (γ = 1.0). TRL's ``CPOTrainer`` also adds a behaviour-cloning NLL term unless
``cpo_alpha=0``; prefopt's SimPO is the paper's loss alone.

The loss is summed over pairs; the trainer divides by the step's pair count.

Fixed point (one pair {y_0, y_1} per prompt, y_0 preferred with probability p):
log π(y_0|x)/π(y_1|x) = (1/β) log u, u the positive root of (1 − p) u² + e^γ (1 − 2p) u − p = 0
(γ = 0: logit(p)/β); no reference, so no π_ref in it (checked in tests/test_fixed_points.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefopt.objectives.registry import Needs, Objective, register


@register("simpo")
class SimPO(Objective):
    needs = Needs(data="paired")
    # The main coefficient and the values the leaderboard's tuning grid tries (× its learning rates);
    # γ follows β through gamma_beta_ratio.
    tuning = {"beta": (1.0, 2.5)}

    @dataclass
    class Config:
        name: str = "simpo"
        beta: float = 2.0
        gamma_beta_ratio: float = 0.5
        label_smoothing: float = 0.0

        def __post_init__(self):
            from prefopt.core.errors import UserError

            if self.beta <= 0:
                raise UserError(f"algo.beta={self.beta} must be > 0")
            if not 0.0 <= self.label_smoothing < 0.5:
                raise UserError(f"algo.label_smoothing={self.label_smoothing} must be in [0, 0.5)")

    def __init__(self, cfg: "SimPO.Config"):
        self.cfg = cfg

    def units(self, batch) -> int:
        return batch["chosen_input_ids"].shape[0]

    def loss(self, batch, scorer):
        β, ε = self.cfg.beta, self.cfg.label_smoothing
        γ = self.cfg.gamma_beta_ratio * β
        π_w, π_l = scorer.logps(batch, "chosen"), scorer.logps(batch, "rejected")

        r_w = β * π_w.seq_mean()
        r_l = β * π_l.seq_mean()
        h = r_w - r_l - γ
        L = -(1 - ε) * F.logsigmoid(h) - ε * F.logsigmoid(-h)

        metrics = {
            "rewards/chosen": r_w.detach().sum(),
            "rewards/rejected": r_l.detach().sum(),
            "rewards/margin": (r_w - r_l).detach().sum(),
            "rewards/accuracy": (r_w > r_l).float().sum(),
            "logps/chosen": π_w.seq_sum().detach().sum(),
            "logps/rejected": π_l.seq_sum().detach().sum(),
        }
        return L.sum(), metrics
