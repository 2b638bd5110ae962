"""``reward=function reward.function=MODULE:FUNCTION``: a Python callable
``fn(prompts: list[str], completions: list[str], **kw) -> list[float]``; kw: prompt_ids,
completion_ids, finished, and ``reward.kwargs``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from prefopt.rollout.rewards.base import RewardConfig, RewardContext, RewardSource, register
from prefopt.rollout.scoring import FunctionReward, load_function


@dataclass
class FunctionRewardConfig(RewardConfig):
    function: Optional[str] = None  # MODULE:FUNCTION
    kwargs: dict = field(default_factory=dict)  # extra keyword arguments of the function


@register("function")
class FunctionSource(RewardSource, FunctionReward):
    Config = FunctionRewardConfig

    def __init__(self, cfg: FunctionRewardConfig, ctx: RewardContext):
        RewardSource.__init__(self, cfg, ctx)
        FunctionReward.__init__(self, cfg.function, cfg.kwargs, "reward.function")

    @classmethod
    def check(cls, cfg: FunctionRewardConfig) -> None:
        load_function(cfg.function, "reward.function")
