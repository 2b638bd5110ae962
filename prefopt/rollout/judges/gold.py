r"""``judge=gold``: the testbed task's gold reward g, a control:

    P(a ≻ b) = σ((g_a − g_b) / τ)          by default τ = 0, the hard comparison (1 when g_a > g_b, ½ on ties)

The gold reward arrives as a callable in the :class:`~prefopt.rollout.judges.base.JudgeContext`
(the caller's testbed world hands it in).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.errors import UserError
from prefopt.rollout.judges.base import JudgeContext, register
from prefopt.rollout.judges.pointwise import PointwiseJudge, PointwiseJudgeConfig


@dataclass
class GoldJudgeConfig(PointwiseJudgeConfig):
    temperature: float = 0.0


@register("gold")
class GoldJudge(PointwiseJudge):
    Config = GoldJudgeConfig

    def __init__(self, cfg: GoldJudgeConfig, ctx: JudgeContext):
        super().__init__(cfg, ctx)
        if ctx.gold_fn is None:
            raise UserError(f"{ctx.key}=gold needs a testbed task's gold reward; accepted: data=reviews, data=arith, "
                            "data=smol_arith (on a user's data: judge=smollm2, model or function)")
        self.gold_fn = ctx.gold_fn

    def score(self, prompts, completions, **kw) -> torch.Tensor:
        return torch.tensor(self.gold_fn(list(prompts), list(completions)), dtype=torch.float32)
