"""``reward=auto``: the testbed task's gold reward on testbed data (the default; needs no trained
reward model), an error on a user's data. The gold reward reaches this module as a callable in the
run's :class:`~prefopt.rollout.rewards.base.RewardContext`, never through an import of the testbed."""

from __future__ import annotations

from dataclasses import dataclass

from prefopt.core.errors import UserError
from prefopt.rollout.rewards.base import RewardConfig, RewardContext, RewardSource, register
from prefopt.rollout.scoring import GoldReward


@dataclass
class AutoRewardConfig(RewardConfig):
    pass


@register("auto")
class AutoReward(RewardSource):
    Config = AutoRewardConfig

    def __init__(self, cfg: AutoRewardConfig, ctx: RewardContext):
        super().__init__(cfg, ctx)
        if ctx.gold_fn is None:
            raise UserError("this algo needs a reward and the data has no built-in one; accepted: "
                            "reward=model reward.path=DIR, reward=function reward.function=MODULE:FUNCTION, or reward=sum")
        self.gold = GoldReward(ctx.gold_fn, f"{ctx.task or 'task'}_gold")
        self.name = self.gold.name

    def __call__(self, prompts, completions, **kw):
        return self.gold(prompts, completions, **kw)
