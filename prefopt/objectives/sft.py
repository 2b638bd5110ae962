r"""Supervised fine-tuning: maximum likelihood on demonstrations.

    L = −(1/N) Σ_{sequences} Σ_{t ∈ completion} log π(y_t | x, y_<t)         N = number of loss tokens

Token-level mean over the whole optimizer step (not a mean of per-sequence means), the same as
TRL's SFTTrainer and torchtune; the trainer divides by the step's token count, so the loss does
not change with the micro-batch split. ``completion_only=false`` also trains on prompt tokens
(TRL: ``completion_only_loss=False``); with conversational ``messages`` data the completion is the
final assistant turn (prefopt.data.formats splits it off), so earlier turns are context, not targets.
This is also the stage that makes the testbed's reference policy (``testbed.world.sft_policy_path``
runs this objective on the task's demonstrations): the SFT stage of RLHF (Ouyang et al., 2022,
arXiv:2203.02155).

Fixed point: π(y|x) = d(y|x), the demonstrations' distribution (checked in tests/test_fixed_points.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from prefopt.objectives.registry import Needs, Objective, register


@register("sft")
class SFT(Objective):
    needs = Needs(data="demonstrations")

    @dataclass
    class Config:
        name: str = "sft"
        completion_only: bool = True

    def __init__(self, cfg: "SFT.Config"):
        self.cfg = cfg

    def _batch(self, batch):
        if self.cfg.completion_only:
            return batch
        # Every real token after the first is a target (the first has no context to predict it).
        return dict(batch, loss_mask=batch["attention_mask"].bool())

    def units(self, batch) -> int:
        return int(self._batch(batch)["loss_mask"][:, 1:].sum())

    def loss(self, batch, scorer):
        stats = scorer.logps(self._batch(batch))
        nll_sum = -stats.logps.sum()
        return nll_sum, {"nll": nll_sum.detach()}
