r"""Direct Preference Optimization (Rafailov et al., 2023, arXiv:2305.18290) and its loss variants.

For a prompt x with chosen completion y_w and rejected y_l, the log-ratio of a completion is

    ρ(x, y) = log π(y|x) − log π_ref(y|x)                       log π(y|x) = Σ_t log π(y_t | x, y_<t)

the implicit reward is r(x, y) = β · ρ(x, y), and the logit of preferring y_w is

    h' = ρ(x, y_w) − ρ(x, y_l)          h = β · h' = r(x, y_w) − r(x, y_l)

Losses, by ``loss_type`` (ε = ``label_smoothing``):

    sigmoid   L = −(1−ε) · log σ(h) − ε · log σ(−h)
              DPO eq. 7; ε > 0 is conservative DPO (cDPO, Mitchell 2023): labels assumed flipped
              with probability ε. TRL 1.16's ``loss_type="sigmoid"`` silently ignores
              ``label_smoothing`` (it computes −log σ(h) whatever ε is); prefopt applies it, as cDPO
              defines it, so a TRL config with label_smoothing > 0 trains differently here.
    robust    L = [ (1−ε) · (−log σ(h)) − ε · (−log σ(−h)) ] / (1 − 2ε)
              Provably robust DPO (Chowdhury et al., 2024, arXiv:2403.00409, eq. 9): an unbiased
              estimate of the clean-label loss when labels flip with known rate ε. ε = 0 is sigmoid.
    hinge     L = max(0, 1 − β · h')
              SLiC-HF's calibration hinge (Zhao et al., 2023, arXiv:2305.10425) in its
              reference-normalized form (Liu et al., 2023, RSO, arXiv:2309.06657), exactly as TRL's
              ``loss_type="hinge"``: β plays the role of 1/δ (δ = SLiC's margin). SLiC itself compares
              raw log π(y_w|x) − log π(y_l|x); prefopt, like TRL and RSO, uses the log-ratios.
    ln        the sigmoid loss (with cDPO smoothing) on length-normalized log-ratios
              ρ̄(x, y) = ρ(x, y) / |y|         (|y| = completion tokens)
              This is LN-DPO (Ahrabian et al., 2024, arXiv:2407.15229). It is *not* R-DPO (Park et
              al., 2024, arXiv:2403.19159), which keeps summed log-ratios and subtracts a length
              penalty α(|y_w| − |y_l|) from h. β for ``ln`` lives on a per-token scale, so it wants
              values ~|y| times larger than sigmoid's (the LN-DPO paper sweeps β ∈ [1, 10]).

The loss is summed over pairs here; the trainer divides by the number of pairs in the optimizer step.
A ``margin`` column in the data is ignored by DPO (it is used by the reward model).
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
        label_smoothing: float = 0.0  # ε: cDPO smoothing (sigmoid, ln) or the noise rate (robust)
        loss_type: str = "sigmoid"  # sigmoid | robust | hinge | ln
        precompute_ref: bool = False

        def __post_init__(self):
            from prefopt.errors import UserError

            if self.loss_type not in DPO.LOSS_TYPES:
                raise UserError(f"algo.loss_type='{self.loss_type}' is not known; accepted: {', '.join(DPO.LOSS_TYPES)}")
            if not 0.0 <= self.label_smoothing < 0.5:
                raise UserError(f"algo.label_smoothing={self.label_smoothing} must be in [0, 0.5)")
            if self.loss_type == "hinge" and self.label_smoothing > 0:
                raise UserError(f"algo.label_smoothing={self.label_smoothing} has no meaning for loss_type=hinge; "
                                "accepted: 0, or loss_type=sigmoid|robust|ln")
            if self.beta <= 0:
                raise UserError(f"algo.beta={self.beta} must be > 0")

    LOSS_TYPES = ("sigmoid", "robust", "hinge", "ln")

    def __init__(self, cfg: "DPO.Config"):
        self.cfg = cfg

    def units(self, batch) -> int:
        return batch["chosen_input_ids"].shape[0]

    def loss(self, batch, scorer):
        β, ε, kind = self.cfg.beta, self.cfg.label_smoothing, self.cfg.loss_type
        # Both sides in one forward over each shared prompt (same numbers as one forward per side);
        # a scorer without the paired calls (a test double, say) is asked side by side.
        if hasattr(scorer, "pair_logps"):
            (π_w, π_l), (ref_w, ref_l) = scorer.pair_logps(batch), scorer.pair_ref_logps(batch)
        else:
            π_w, π_l = scorer.logps(batch, "chosen"), scorer.logps(batch, "rejected")
            ref_w, ref_l = scorer.ref_logps(batch, "chosen"), scorer.ref_logps(batch, "rejected")
        logπ_w, logπ_l = π_w.seq_sum(), π_l.seq_sum()

        ρ_w = logπ_w - ref_w.seq_sum()
        ρ_l = logπ_l - ref_l.seq_sum()
        if kind == "ln":
            ρ_w = ρ_w / π_w.lengths().clamp(min=1)
            ρ_l = ρ_l / π_l.lengths().clamp(min=1)
        h_ = ρ_w - ρ_l
        h = β * h_
        if kind in ("sigmoid", "ln"):
            L = -(1 - ε) * F.logsigmoid(h) - ε * F.logsigmoid(-h)
        elif kind == "robust":
            L = ((1 - ε) * -F.logsigmoid(h) - ε * -F.logsigmoid(-h)) / (1 - 2 * ε)
        else:  # hinge
            L = F.relu(1 - β * h_)

        r_w, r_l = (β * ρ_w).detach(), (β * ρ_l).detach()
        metrics = {
            "rewards/chosen": r_w.sum(),
            "rewards/rejected": r_l.sum(),
            "rewards/margin": h.detach().sum(),
            "rewards/accuracy": (h > 0).float().sum(),
            "logps/chosen": logπ_w.detach().sum(),
            "logps/rejected": logπ_l.detach().sum(),
        }
        return L.sum(), metrics
