r"""``judge=function judge.function=MODULE:FUNCTION``: a Python scorer s = fn(prompts, completions, **kw)
with the ``reward=function`` signature (one score per completion), so any reward function is a judge:

    P(a ≻ b) = σ((s_a − s_b) / τ)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from prefopt.rollout.judges.base import JudgeContext, register
from prefopt.rollout.judges.pointwise import PointwiseJudge, PointwiseJudgeConfig
from prefopt.rollout.scoring import FunctionReward, load_function


@dataclass
class FunctionJudgeConfig(PointwiseJudgeConfig):
    function: Optional[str] = None  # MODULE:FUNCTION, fn(prompts, completions, **kw) -> list[float]
    kwargs: dict = field(default_factory=dict)  # extra keyword arguments


@register("function")
class FunctionJudge(PointwiseJudge):
    Config = FunctionJudgeConfig

    def __init__(self, cfg: FunctionJudgeConfig, ctx: JudgeContext):
        super().__init__(cfg, ctx)
        self.fn = FunctionReward(cfg.function, cfg.kwargs, key=f"{ctx.key}.function")

    @classmethod
    def check(cls, cfg: FunctionJudgeConfig, key: str = "judge") -> None:
        super().check(cfg, key)
        load_function(cfg.function, f"{key}.function")

    def score(self, prompts, completions, **kw) -> torch.Tensor:
        return self.fn(prompts, completions, **kw)
