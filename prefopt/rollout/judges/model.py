r"""``judge=model judge.path=DIR``: a reward model r (a sequence classifier with one output):

    P(a ≻ b) = σ((r_a − r_b) / τ)          τ = 1: the Bradley–Terry probability the reward model was trained on
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch

from prefopt.core.errors import UserError
from prefopt.rollout.judges.base import JudgeContext, register
from prefopt.rollout.judges.pointwise import PointwiseJudge, PointwiseJudgeConfig
from prefopt.rollout.scoring import ModelReward


@dataclass
class ModelJudgeConfig(PointwiseJudgeConfig):
    path: Optional[str] = None  # a sequence-classifier directory


@register("model")
class ModelJudge(PointwiseJudge):
    Config = ModelJudgeConfig

    def __init__(self, cfg: ModelJudgeConfig, ctx: JudgeContext):
        super().__init__(cfg, ctx)
        self.rm = ModelReward(cfg.path, ctx.tokenizer, ctx.device, cfg.sequences_per_device, key=f"{ctx.key}.path")

    @classmethod
    def check(cls, cfg: ModelJudgeConfig, key: str = "judge") -> None:
        super().check(cfg, key)
        if not cfg.path:
            raise UserError(f"{key}={cfg.name} needs {key}.path=DIR, a reward model (e.g. the model/ of an algo=reward run)")
        if not os.path.isdir(os.path.expanduser(cfg.path)):
            raise UserError(f"{key}.path: '{cfg.path}' is not a directory; accepted: a sequence-classification "
                            "checkpoint directory (e.g. the model/ of an algo=reward run)")

    def score(self, prompts, completions, prompt_ids=None, completion_ids=None, **kw) -> torch.Tensor:
        return self.rm(prompts, completions, prompt_ids=prompt_ids, completion_ids=completion_ids)
