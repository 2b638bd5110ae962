r"""Direct Preference Optimization (Rafailov et al., 2023, arXiv:2305.18290).

For a prompt x with chosen completion y_w and rejected y_l, the implicit reward of a completion is

    r(x, y) = β · (log π(y|x) − log π_ref(y|x))                  log π(y|x) = Σ_t log π(y_t | x, y_<t)

and the logit of preferring y_w is  h = r(x, y_w) − r(x, y_l).  Losses, by ``loss_type``:

    sigmoid     L = −(1−ε) · log σ(h) − ε · log σ(−h)
                ε = label_smoothing; ε > 0 is conservative DPO (cDPO, Mitchell 2023): the labels are
                assumed flipped with probability ε.

The loss is summed over pairs here; the trainer divides by the number of pairs in the optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from prefopt.registry import Needs, register


@register("dpo")
class DPO:
    needs = Needs(data="paired", reference=True)

    @dataclass
    class Config:
        name: str = "dpo"
        beta: float = 0.1
        label_smoothing: float = 0.0
        loss_type: str = "sigmoid"
        precompute_ref: bool = False

        def __post_init__(self):
            from prefopt.errors import UserError

            if self.loss_type not in DPO.LOSS_TYPES:
                raise UserError(f"algo.loss_type='{self.loss_type}' is not known; accepted: {', '.join(DPO.LOSS_TYPES)}")
            if not 0.0 <= self.label_smoothing < 0.5:
                raise UserError(f"algo.label_smoothing={self.label_smoothing} must be in [0, 0.5)")
            if self.beta <= 0:
                raise UserError(f"algo.beta={self.beta} must be > 0")

    LOSS_TYPES = ("sigmoid",)

    def __init__(self, cfg: "DPO.Config"):
        self.cfg = cfg

    def units(self, batch) -> int:
        return batch["chosen_input_ids"].shape[0]

    def loss(self, batch, scorer):
        β, ε = self.cfg.beta, self.cfg.label_smoothing
        logπ_w = scorer.logps(batch, "chosen").seq_sum()
        logπ_l = scorer.logps(batch, "rejected").seq_sum()
        logπref_w = scorer.ref_logps(batch, "chosen").seq_sum()
        logπref_l = scorer.ref_logps(batch, "rejected").seq_sum()

        r_w = β * (logπ_w - logπref_w)
        r_l = β * (logπ_l - logπref_l)
        h = r_w - r_l
        L = -(1 - ε) * F.logsigmoid(h) - ε * F.logsigmoid(-h)

        metrics = {
            "rewards/chosen": r_w.detach().sum(),
            "rewards/rejected": r_l.detach().sum(),
            "rewards/margin": h.detach().sum(),
            "rewards/accuracy": (h > 0).float().sum(),
            "logps/chosen": logπ_w.detach().sum(),
            "logps/rejected": logπ_l.detach().sum(),
        }
        return L.sum(), metrics
