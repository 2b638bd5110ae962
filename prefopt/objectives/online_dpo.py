r"""Online DPO: Direct Language Model Alignment from Online AI Feedback (Guo et al., 2024,
arXiv:2402.04792, Algorithm 1), and iterative ("rounds") DPO.

Per rollout (:mod:`prefopt.rollout.source`), for each prompt x, sample K = ``samples_per_prompt``
completions y_1..y_K from the *current* policy π_θ (K = 2 in the paper), score them with the reward
source r (a reward model, a function, or the testbed's gold reward: the paper's annotator), and
form one pair per prompt:

    y_w = y_argmax_k r(x, y_k)        y_l = y_argmin_k r(x, y_k)            (first sampled on ties)

(for K = 2: the better of the two is chosen). A prompt whose K rewards are all equal carries no
preference and is dropped (``rollout/pairs_kept_frac``). The pairs are then trained on with the
DPO-family loss of :mod:`prefopt.objectives.dpo` (any ``loss_type``, weighted sums, ``rpo_alpha``),
against the fixed reference π_ref:

    ρ(x, y) = log π_θ(y|x) − log π_ref(y|x)          L = ℓ_type(ρ(x, y_w), ρ(x, y_l), …)

mean over pairs. With one optimizer step per rollout (the default) every pair is on-policy, as in
the paper. Iterative / "rounds" DPO (``algo=iterative_dpo``; Xu et al. 2023, arXiv:2312.16682;
Xiong et al. 2024, arXiv:2312.11456) samples a larger batch of pairs and trains on it for
R = ``epochs_per_rollout × minibatches_per_rollout`` optimizer steps before sampling fresh pairs
from the updated policy: the same objective, a different split of the same rollout axes. π_ref stays
the initial policy in both (Guo et al.; the iterative variants that reset π_ref each round are not
implemented).

log π_ref comes from the rollout (one no-grad pass); log π_θ from the loss's forward. Micro-batches
hold whole pairs (``Needs.whole_groups_per_micro_batch``). The objective's state (BCO's running shift) is checkpointed.

Fixed point: with labels drawn by Bradley–Terry of r (a reward source with Gumbel noise),
π*(y|x) ∝ π_ref(y|x) · exp(r(x, y)/β), as offline DPO, for ``iterative_dpo`` too; with a noiseless reward
(labels always the better sample) none: π goes to the best completion and its KL grows without bound
(checked in tests/test_fixed_points.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.errors import UserError
from prefopt.models.logprobs import TokenStats
from prefopt.objectives.dpo import DPOLoss, DPOLossFields
from prefopt.rollout.source import RolloutFields, select
from prefopt.objectives.registry import Needs, OnlineObjective, preset, register


@dataclass
class OnlineDPOConfig(RolloutFields, DPOLossFields):
    name: str = "online_dpo"
    prompts_per_step: int = 16
    samples_per_prompt: int = 2  # the paper's two samples per prompt; > 2: best vs worst

    def __post_init__(self):
        self.check_loss_fields()
        if self.samples_per_prompt < 2:
            raise UserError(f"algo.samples_per_prompt={self.samples_per_prompt}: online DPO pairs samples of the "
                            "same prompt; accepted: samples_per_prompt >= 2")
        if self.dynamic_sampling:
            raise UserError("algo.dynamic_sampling is for policy-gradient groups; online DPO already drops tied "
                            "pairs; accepted: dynamic_sampling=false")


@register("online_dpo")
class OnlineDPO(OnlineObjective):
    # Samples of one prompt stay together in a rollout and in a micro-batch: rows (2p, 2p+1) are
    # pair p. No importance ratio: the rollout's π_old pass is skipped.
    needs = Needs(data="prompt_only", reference=True, reward=True, rollouts=True, groups=True,
                  whole_groups_per_micro_batch=True, old_logps=False)
    Config = OnlineDPOConfig
    # The main coefficient and the values the leaderboard's tuning grid tries (× its learning rates).
    tuning = {"beta": (0.05, 0.2)}

    def __init__(self, cfg: OnlineDPOConfig):
        self.cfg = cfg
        self.pair_loss = DPOLoss(cfg)

    def state_dict(self) -> dict:
        return self.pair_loss.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.pair_loss.load_state_dict(state)

    # ---- rollout → pairs (no gradient) --------------------------------------------------------
    def prepare(self, roll: dict):
        r = roll["scores"]
        if r.numel() == 0:
            return roll, {"rollout/pairs_kept_frac": 0.0}
        K = roll["group_size"]
        g = r.view(-1, K)
        # argmax / argmin with the first sampled winning ties (torch's are not guaranteed stable)
        order = torch.sort(g, dim=-1, descending=True, stable=True).indices
        w = order[:, 0]
        l = torch.sort(g, dim=-1, stable=True).indices[:, 0]
        keep = g.max(-1).values > g.min(-1).values
        base = torch.arange(g.shape[0]) * K
        idx = torch.stack([base + w, base + l], 1)[keep].reshape(-1)
        out = select(roll, idx)
        P = int(keep.sum())
        out["group"] = torch.arange(P).repeat_interleave(2)
        out["group_size"] = 2
        m = {"rollout/pairs_kept_frac": P / g.shape[0]}
        if P:
            rw, rl = out["scores"][0::2], out["scores"][1::2]
            m.update({"rollout/chosen_reward_mean": float(rw.mean()), "rollout/rejected_reward_mean": float(rl.mean()),
                      "rollout/pair_reward_gap": float((rw - rl).mean())})
        return out, m

    # ---- loss ---------------------------------------------------------------------------------
    def units(self, batch) -> int:
        return batch["input_ids"].shape[0] // 2

    def loss(self, batch, scorer):
        stats = scorer.logps(batch)
        ref = batch["ref_logps"] * stats.mask  # from the rollout's no-grad reference pass
        π_w = TokenStats(logps=stats.logps[0::2], mask=stats.mask[0::2])
        π_l = TokenStats(logps=stats.logps[1::2], mask=stats.mask[1::2])
        L, metrics = self.pair_loss(π_w, π_l, ref[0::2].sum(-1), ref[1::2].sum(-1))
        return L.sum(), metrics


ITERATIVE_DPO = preset("iterative_dpo", OnlineDPO, "Rounds of DPO: fresh on-policy pairs every R optimizer steps.",
                       prompts_per_step=64, minibatches_per_rollout=4)
