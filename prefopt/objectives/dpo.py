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

Loss types the peers have (TRL 1.16's names; r_w = β ρ(x, y_w), r_l = β ρ(x, y_l)):

    exo_pair  L = σ(h)(log σ(h) − log(1−ε)) + σ(−h)(log σ(−h) − log ε)
              EXO (Ji et al., 2024, arXiv:2402.00856, eq. 16 with K = 2): KL(p_θ ‖ p_label) between
              the model's and the (ε-smoothed) label's distributions over {y_w, y_l}. Needs ε > 0
              (the paper uses 1e-3).
    nca_pair  L = −log σ(r_w) − ½ log σ(−r_w) − ½ log σ(−r_l)
              NCA (Chen et al., 2024, arXiv:2402.05369, eq. 12 with K = 2): absolute likelihoods, so
              the chosen log-ratio cannot fall as in DPO.
    bco_pair  L = −log σ(r_w − δ) − log σ(−(r_l − δ))
              BCO (Jung et al., 2024, arXiv:2404.04656, eq. 8): a binary classifier of chosen vs
              rejected with the reward shift δ = the running mean of sg[(r_w + r_l)/2] over all pairs
              seen so far, this micro-batch included (as TRL's BCOTrainer's RunningMoments). δ is
              objective state (state_dict(), checkpointed). TRL 1.16's DPOTrainer(bco_pair) drops
              the shift (δ = 0); the paper and TRL's BCOTrainer keep it.
    sppo_hard L = (ρ(x, y_w) − 1/(2β))² + (ρ(x, y_l) + 1/(2β))²
              SPPO (Wu et al., 2024, arXiv:2405.00675, eq. 4.7, η = 1/β) with hard win
              probabilities P̂(y_w ≻ y_l) = 1, P̂(y_l ≻ y_w) = 0.
    aot       L_i = −(1−ε) log σ(β(u_(i) − v_(i))) − ε log σ(−β(u_(i) − v_(i)))
              AOT (Melnyk et al., 2024, arXiv:2406.05882, paired form): u = log π(y_w) − log π(y_l),
              v = the same under π_ref, each sorted over the micro-batch (u_(i): i-th smallest):
              first-order stochastic dominance of the policy's margins over the reference's.
    aot_unpaired  as aot with u = ρ(x, y_w), v = ρ(x, y_l) sorted separately (the unpaired form).
              Both sort within a micro-batch (TRL: within its per-device batch), so their value
              depends on the micro-batch size; keep trainer.examples_per_device fixed when comparing.
    apo_zero  L = 1 − σ(r_w) + σ(r_l)
              APO-zero (D'Oosterlinck et al., 2024, arXiv:2408.06266, eq. 7): chosen up, rejected down.
    apo_down  L = σ(r_w) + 1 − σ(r_w − r_l)
              APO-down (eq. 8): both down, the rejected more (chosen worse than the policy's own).
    discopop  L = (1 − m) · (−log σ(h)) + m · exp(−h),   m = σ(h / τ)          τ = ``discopop_tau``
              DiscoPOP's log-ratio modulated loss (Chris Lu et al., 2024, arXiv:2406.08414, eq. 5).
              Non-convex: at the paper's τ = 0.05 its slope at h = 0 is +0.78 (a local minimum
              near h ≈ −0.1), so a run that starts at π = π_ref first *lowers* the margins; for
              τ ≳ 0.11 the slope at 0 is negative (−0.49 at τ = 0.3).
    sft       L = −(1/|y_w|) log π(y_w | x)          the chosen completion's per-token NLL
              (TRL's ``sft`` is one token mean over the batch's chosen tokens; prefopt's is a mean per
              pair, so it does not depend on the micro-batch split; the two agree when all chosen
              completions have the same length).

Several losses (``loss_type: [sigmoid, bco_pair, sft]`` with ``loss_weights: [0.8, 0.2, 1.0]``,
MPO, Wang et al. 2024, arXiv:2411.10442; TRL's ``loss_weights``) are summed per pair:
L = Σ_k w_k L_k (weights 1 when unset).

RPO (Pang et al., 2024, "Iterative Reasoning Preference Optimization", arXiv:2404.19733, eq. 1)
adds the chosen completion's NLL:  L ← L + α · (−(1/|y_w|) log π(y_w | x)),  α = ``rpo_alpha``
(the same term as ``sft`` with weight α).

The loss is summed over pairs here; the trainer divides by the number of pairs in the optimizer step.
A ``margin`` column in the data is ignored by DPO (it is used by the reward model).

Fixed point (sigmoid; preferences p(y ≻ y'|x) = σ(r(x, y) − r(x, y'))):
π*(y|x) ∝ π_ref(y|x) · exp(r(x, y)/β), i.e. π*(y)/π*(y') = π_ref(y)/π_ref(y') · (p/(1 − p))^{1/β};
``robust`` on labels flipped at its rate ε: the same clean π* (checked in tests/test_fixed_points.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Optional

import torch
import torch.nn.functional as F

from prefopt.core.errors import UserError
from prefopt.objectives.registry import Needs, Objective, register

LOSS_TYPES = ("sigmoid", "robust", "hinge", "ln", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft")
SMOOTHED = ("sigmoid", "robust", "ln", "exo_pair", "aot", "aot_unpaired")  # the types that read ε


@dataclass
class DPOLossFields:
    """The DPO-family loss keys (conf/algo/dpo.yaml; online_dpo.yaml has the same)."""

    beta: float = 0.1
    label_smoothing: float = 0.0  # ε: cDPO smoothing, robust's noise rate, EXO's label smoothing, AOT's
    loss_type: Any = "sigmoid"  # one of LOSS_TYPES, or a list of them (summed with loss_weights)
    loss_weights: Optional[List[float]] = None  # one weight per loss_type entry; null: all 1
    discopop_tau: float = 0.05  # τ of discopop
    rpo_alpha: float = 0.0  # α: RPO's NLL term on the chosen completion; 0: off

    def check_loss_fields(self) -> None:
        types = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type or [])
        if not types or not all(isinstance(t, str) for t in types):
            raise UserError(f"algo.loss_type={self.loss_type!r} must be a loss name or a list of them; accepted: "
                            f"{', '.join(LOSS_TYPES)}")
        for t in types:
            if t not in LOSS_TYPES:
                raise UserError(f"algo.loss_type='{t}' is not known; accepted: {', '.join(LOSS_TYPES)}")
        if self.loss_weights is not None:
            if len(self.loss_weights) != len(types):
                raise UserError(f"algo.loss_weights has {len(self.loss_weights)} weights for {len(types)} loss types "
                                f"({', '.join(types)}); accepted: one weight per loss_type entry, or null")
            if not all(math.isfinite(float(w)) for w in self.loss_weights):
                raise UserError(f"algo.loss_weights={list(self.loss_weights)} must be finite numbers")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise UserError(f"algo.label_smoothing={self.label_smoothing} must be in [0, 0.5)")
        if self.label_smoothing > 0 and not any(t in SMOOTHED for t in types):
            raise UserError(f"algo.label_smoothing={self.label_smoothing} has no meaning for loss_type="
                            f"{'|'.join(types)}; accepted: 0, or a loss_type among {', '.join(SMOOTHED)}")
        if "exo_pair" in types and self.label_smoothing == 0:
            raise UserError("algo.loss_type=exo_pair needs algo.label_smoothing > 0 (log ε); the EXO paper uses 1e-3")
        if self.beta <= 0:
            raise UserError(f"algo.beta={self.beta} must be > 0")
        if self.discopop_tau <= 0:
            raise UserError(f"algo.discopop_tau={self.discopop_tau} must be > 0")
        if self.rpo_alpha < 0:
            raise UserError(f"algo.rpo_alpha={self.rpo_alpha} must be >= 0")
        self.loss_type = types[0] if len(types) == 1 else types

    @property
    def loss_types(self) -> list:
        return [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)


class DPOLoss:
    """The per-pair losses of the module docstring, for DPO and online DPO; holds BCO's shift δ."""

    def __init__(self, cfg: DPOLossFields):
        self.cfg = cfg
        self.types = cfg.loss_types
        self.weights = [float(w) for w in cfg.loss_weights] if cfg.loss_weights is not None else [1.0] * len(self.types)
        self.shift_mean, self.shift_count = 0.0, 0  # BCO's δ: running mean of sg[(r_w + r_l)/2] over pairs

    def state_dict(self) -> dict:
        return {"bco_shift": self.shift_mean, "bco_count": self.shift_count}

    def load_state_dict(self, state: dict) -> None:
        self.shift_mean, self.shift_count = float(state["bco_shift"]), int(state["bco_count"])

    def _bco_shift(self, r_w: torch.Tensor, r_l: torch.Tensor) -> float:
        n = r_w.numel()
        if n:
            s = float(((r_w + r_l) / 2).detach().double().sum())
            self.shift_count += n
            self.shift_mean += (s - n * self.shift_mean) / self.shift_count
        return self.shift_mean

    def __call__(self, π_w, π_l, ref_w_sum: torch.Tensor, ref_l_sum: torch.Tensor):
        """(per-pair loss [P], metrics); π_w, π_l: TokenStats of the policy on each side."""
        β, ε, τ = self.cfg.beta, self.cfg.label_smoothing, self.cfg.discopop_tau
        logπ_w, logπ_l = π_w.seq_sum(), π_l.seq_sum()
        ρ_w, ρ_l = logπ_w - ref_w_sum, logπ_l - ref_l_sum
        h = β * (ρ_w - ρ_l)
        r_w, r_l = β * ρ_w, β * ρ_l
        nll_w = -π_w.seq_mean()
        L = torch.zeros_like(h)
        extra = {}
        for kind, w in zip(self.types, self.weights):
            if kind == "sigmoid":
                ℓ = -(1 - ε) * F.logsigmoid(h) - ε * F.logsigmoid(-h)
            elif kind == "robust":
                ℓ = ((1 - ε) * -F.logsigmoid(h) - ε * -F.logsigmoid(-h)) / (1 - 2 * ε)
            elif kind == "hinge":
                ℓ = F.relu(1 - h)
            elif kind == "ln":
                h̄ = β * (ρ_w / π_w.lengths().clamp(min=1) - ρ_l / π_l.lengths().clamp(min=1))
                ℓ = -(1 - ε) * F.logsigmoid(h̄) - ε * F.logsigmoid(-h̄)
            elif kind == "exo_pair":
                ℓ = (torch.sigmoid(h) * (F.logsigmoid(h) - math.log1p(-ε))
                     + torch.sigmoid(-h) * (F.logsigmoid(-h) - math.log(ε)))
            elif kind == "nca_pair":
                ℓ = -F.logsigmoid(r_w) - 0.5 * F.logsigmoid(-r_w) - 0.5 * F.logsigmoid(-r_l)
            elif kind == "bco_pair":
                δ = self._bco_shift(r_w, r_l)
                ℓ = -F.logsigmoid(r_w - δ) - F.logsigmoid(-(r_l - δ))
                extra["bco/shift"] = torch.tensor(δ * h.numel(), dtype=torch.float64)  # summed over pairs, like every metric
            elif kind == "sppo_hard":
                ℓ = (ρ_w - 0.5 / β) ** 2 + (ρ_l + 0.5 / β) ** 2
            elif kind == "aot":
                u = torch.sort(logπ_w - logπ_l).values
                v = torch.sort(ref_w_sum - ref_l_sum).values
                ℓ = -(1 - ε) * F.logsigmoid(β * (u - v)) - ε * F.logsigmoid(-β * (u - v))
            elif kind == "aot_unpaired":
                d = torch.sort(ρ_w).values - torch.sort(ρ_l).values
                ℓ = -(1 - ε) * F.logsigmoid(β * d) - ε * F.logsigmoid(-β * d)
            elif kind == "apo_zero":
                ℓ = 1 - torch.sigmoid(r_w) + torch.sigmoid(r_l)
            elif kind == "apo_down":
                ℓ = torch.sigmoid(r_w) + 1 - torch.sigmoid(r_w - r_l)
            elif kind == "discopop":
                m = torch.sigmoid(h / τ)
                ℓ = (1 - m) * -F.logsigmoid(h) + m * torch.exp(-h)
            else:  # sft
                ℓ = nll_w
            L = L + w * ℓ
        if self.cfg.rpo_alpha > 0:
            L = L + self.cfg.rpo_alpha * nll_w
            extra["nll"] = nll_w.detach().sum()
        metrics = {
            "rewards/chosen": r_w.detach().sum(),
            "rewards/rejected": r_l.detach().sum(),
            "rewards/margin": h.detach().sum(),
            "rewards/accuracy": (h > 0).float().sum(),
            "logps/chosen": logπ_w.detach().sum(),
            "logps/rejected": logπ_l.detach().sum(),
            **extra,
        }
        return L, metrics


@register("dpo")
class DPO(Objective):
    needs = Needs(data="paired", reference=True)
    # The main coefficient and the values the leaderboard's tuning grid tries (× its learning rates).
    tuning = {"beta": (0.05, 0.2)}

    @dataclass
    class Config(DPOLossFields):
        name: str = "dpo"
        precompute_ref: bool = False

        def __post_init__(self):
            self.check_loss_fields()

    LOSS_TYPES = LOSS_TYPES

    def __init__(self, cfg: "DPO.Config"):
        self.cfg = cfg
        self.pair_loss = DPOLoss(cfg)

    # BCO's running shift δ is the only state; checkpointed by the trainer through these.
    def state_dict(self) -> dict:
        return self.pair_loss.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.pair_loss.load_state_dict(state)

    def precomputes_reference(self) -> bool:
        return self.cfg.precompute_ref

    def units(self, batch) -> int:
        return batch["chosen_input_ids"].shape[0]

    def loss(self, batch, scorer):
        # Both sides in one forward over each shared prompt (same numbers as one forward per side).
        (π_w, π_l), (ref_w, ref_l) = scorer.pair_logps(batch), scorer.pair_ref_logps(batch)
        L, metrics = self.pair_loss(π_w, π_l, ref_w.seq_sum(), ref_l.seq_sum())
        return L.sum(), metrics
