"""``reward=sum reward.terms=[...]``: Σ_i weight_i · term_i, each term a function or a reward model
(each reported on its own as ``reward/NAME``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from prefopt.core.errors import UserError
from prefopt.rollout.rewards.base import RewardConfig, RewardContext, RewardSource, register
from prefopt.rollout.rewards.model import check_batch
from prefopt.rollout.scoring import FunctionReward, ModelReward, load_function

TERM_KINDS = ("function", "model")


@dataclass
class RewardTerm:
    kind: str = "function"  # function | model
    function: Optional[str] = None  # MODULE:FUNCTION
    path: Optional[str] = None  # sequence-classification checkpoint
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)  # extra keyword arguments of the function


@dataclass
class SumRewardConfig(RewardConfig):
    terms: list[RewardTerm] = field(default_factory=list)
    sequences_per_device: int = 64  # reward-model batch of the model terms


@register("sum")
class SumReward(RewardSource):
    Config = SumRewardConfig

    def __init__(self, cfg: SumRewardConfig, ctx: RewardContext):
        super().__init__(cfg, ctx)
        self._terms = []
        for i, t in enumerate(cfg.terms):
            if t.kind == "function":
                src = FunctionReward(t.function, t.kwargs, f"reward.terms[{i}].function")
            else:
                src = ModelReward(t.path, ctx.tokenizer, ctx.device, cfg.sequences_per_device, f"reward.terms[{i}].path",
                                  placement=ctx.placement)
            self._terms.append((float(t.weight), src))
        self.name = "sum"
        self.uses_model = any(s.uses_model for _, s in self._terms)

    @classmethod
    def check(cls, cfg: SumRewardConfig) -> None:
        if not cfg.terms:
            raise UserError("reward=sum needs reward.terms: a list of {kind: function|model, function|path, weight}")
        for i, t in enumerate(cfg.terms):
            if t.kind not in TERM_KINDS:
                raise UserError(f"reward.terms[{i}].kind='{t.kind}' is not known; accepted: {', '.join(TERM_KINDS)}")
            if t.kind == "function":
                load_function(t.function, f"reward.terms[{i}].function")
            elif not t.path:
                raise UserError(f"reward.terms[{i}] is a model and needs a path")
        check_batch(cfg)

    def terms(self) -> list:
        return list(self._terms)

    def __call__(self, prompts, completions, **kw) -> torch.Tensor:
        return sum(w * s(prompts, completions, **kw) for w, s in self._terms)
