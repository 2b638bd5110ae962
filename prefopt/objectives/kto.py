r"""KTO: Model Alignment as Prospect Theoretic Optimization (Ethayarajh et al., 2024,
arXiv:2402.01306, eq. 8).

Unpaired data: each example is (x, y) with a label, desirable (D) or undesirable (U). With the
log-ratio r(x, y) = log π(y|x) − log π_ref(y|x) (summed over completion tokens), the reference
point z is an estimate of KL(π ‖ π_ref) from *mismatched* pairs: prompt x_i with the completion
y'_i of another example,

    z = max(0, (1/B) Σ_i [ log π(y'_i|x_i) − log π_ref(y'_i|x_i) ])      detached (no gradient)

    v(x, y) = λ_D · σ(β · (r(x, y) − z))     if y is desirable
              λ_U · σ(β · (z − r(x, y)))     if y is undesirable
    L = (1/B) Σ_i [ λ_{y_i} − v(x_i, y_i) ]

Mismatched pairs: example i is paired with the completion of the example after it (i+1 mod N)
in a fixed, seeded shuffle of the whole dataset (``prepare_examples``), so every example carries
its own mismatched completion, as in TRL's KTOTrainer (which rotates completions by one within
chunks of the dataset before training). A fixed partner is what makes reference log-probs of the
mismatched sequences cacheable (``algo.precompute_ref=true``). Examples without a partner (the
objective used on its own, outside prefopt-train) fall back to the paper's in-batch rotation: prompt i
with completion i+1 mod B. z is estimated per micro-batch; TRL also averages it across processes,
prefopt per process.

λ_D, λ_U (``desirable_weight``, ``undesirable_weight``): the paper recommends
λ_D·n_D / (λ_U·n_U) ∈ [1, 4/3]; outside that range prefopt warns at start-up. A dataset with
only desirable or only undesirable examples is a user error (z and the loss would have no
contrast to learn from). Preference pairs need an explicit ``data.convert=paired_to_unpaired``
(chosen → desirable, rejected → undesirable); the testbed's unpaired data is exactly that.

Loss summed over examples; the trainer divides by the step's example count (TRL: the mean over
the batch, the same thing).

Fixed point: no closed form; the stationary point a(x, y) · σ'(β(r(x, y) − z)) = C(x) · π(y|x), with
a = λ_D q_D(x, y) − λ_U q_U(x, y) the net desirable weight of (x, y) in the data and z the reference
point at the same π; a completion with a < 0 is driven to probability 0 (solved and checked in
tests/test_fixed_points.py).
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass

import torch

from prefopt.core.errors import UserError, where
from prefopt.objectives.registry import Needs, Objective, register

RECOMMENDED_RATIO = (1.0, 4.0 / 3.0)
PARTNER_SEED = 0  # independent of the run seed, so cached reference log-probs serve every seed


@register("kto")
class KTO(Objective):
    needs = Needs(data="unpaired", reference=True)
    # The main coefficient and the values the leaderboard's tuning grid tries (× its learning rates).
    tuning = {"beta": (0.05, 0.2)}

    @dataclass
    class Config:
        name: str = "kto"
        beta: float = 0.1
        desirable_weight: float = 1.0  # λ_D
        undesirable_weight: float = 1.0  # λ_U
        precompute_ref: bool = False

        def __post_init__(self):
            if self.beta <= 0:
                raise UserError(f"algo.beta={self.beta} must be > 0")
            if self.desirable_weight <= 0 or self.undesirable_weight <= 0:
                raise UserError(f"algo.desirable_weight={self.desirable_weight} and algo.undesirable_weight="
                                f"{self.undesirable_weight} must both be > 0")

    def __init__(self, cfg: "KTO.Config"):
        self.cfg = cfg

    def precomputes_reference(self) -> bool:
        return self.cfg.precompute_ref

    # ---- data: checked before training, mismatched partners, batches ----------------------
    def prepare_examples(self, examples: list, rows: list, source: str) -> list:
        n_D = sum(bool(ex["label"]) for ex in examples)
        n_U = len(examples) - n_D
        if n_D == 0 or n_U == 0:
            only = "desirable (label true)" if n_U == 0 else "undesirable (label false)"
            raise UserError(f"{where(source, field='label')}: all {len(examples)} examples are {only}; KTO needs "
                            "both desirable and undesirable examples; accepted: data with both labels")
        ratio = self.cfg.desirable_weight * n_D / (self.cfg.undesirable_weight * n_U)
        lo, hi = RECOMMENDED_RATIO
        if not lo <= ratio <= hi:
            warnings.warn(
                f"KTO: λ_D·n_D / (λ_U·n_U) = {self.cfg.desirable_weight}·{n_D} / ({self.cfg.undesirable_weight}·{n_U}) "
                f"= {ratio:.3f} is outside the paper's recommended [1, 4/3]; e.g. algo.desirable_weight="
                f"{self.cfg.undesirable_weight * n_U / n_D:.3f} gives 1", stacklevel=2)
        # Fixed mismatched partners: i+1 mod N in a seeded shuffle of the dataset.
        order = list(range(len(examples)))
        random.Random(PARTNER_SEED).shuffle(order)
        out = [dict(ex) for ex in examples]
        for k, i in enumerate(order):
            out[i]["kl_completion_ids"] = examples[order[(k + 1) % len(order)]]["completion_ids"]
        return out

    def collate(self, examples: list, kind: str, pad_token_id: int) -> dict:
        from prefopt.data.tokenize import collate

        batch = collate(examples, "unpaired", pad_token_id)
        if all("kl_completion_ids" in ex for ex in examples):
            partners = [ex["kl_completion_ids"] for ex in examples]
        else:
            partners = [examples[(i + 1) % len(examples)]["completion_ids"] for i in range(len(examples))]
        mismatched = [{"row": ex["row"], "prompt_ids": ex["prompt_ids"], "completion_ids": y} for ex, y in zip(examples, partners)]
        kl = collate(mismatched, "demonstrations", pad_token_id)
        for k in ("input_ids", "attention_mask", "loss_mask"):
            batch[f"kl_{k}"] = kl[k]
        return batch

    # ---- loss --------------------------------------------------------------------------------
    def units(self, batch) -> int:
        return batch["input_ids"].shape[0]

    def loss(self, batch, scorer):
        β, λ_D, λ_U = self.cfg.beta, self.cfg.desirable_weight, self.cfg.undesirable_weight
        desirable = batch["label"].bool()

        logπ = scorer.logps(batch).seq_sum()
        r = logπ - scorer.ref_logps(batch).seq_sum()
        with torch.no_grad():
            kl_i = scorer.logps(batch, "kl").seq_sum() - scorer.ref_logps(batch, "kl").seq_sum()
            z = kl_i.mean().clamp(min=0)

        λ_y = torch.where(desirable, torch.as_tensor(λ_D, dtype=r.dtype), torch.as_tensor(λ_U, dtype=r.dtype))
        v = torch.where(desirable, λ_D * torch.sigmoid(β * (r - z)), λ_U * torch.sigmoid(β * (z - r)))
        L = λ_y - v

        sign = desirable.to(r.dtype) * 2 - 1
        n = r.shape[0]
        metrics = {
            "kl": z * n,  # the reference point, reported per example so the trainer's mean is z
            "rewards/signed": (sign * β * r).detach().sum(),  # β·r for desirable, −β·r for undesirable
            "rewards/accuracy": (sign * (r - z) > 0).float().sum(),
            "desirable_fraction": desirable.float().sum(),
            "logps/completion": logπ.detach().sum(),
        }
        return L.sum(), metrics
