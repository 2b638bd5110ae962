"""``reward=model reward.path=DIR``: any HF sequence-classification checkpoint with one output (e.g.
the model/ of an ``algo=reward`` run), scored as :class:`~prefopt.rollout.scoring.ModelReward` does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from prefopt.core.errors import UserError
from prefopt.rollout.rewards.base import RewardConfig, RewardContext, RewardSource, register
from prefopt.rollout.scoring import ModelReward


@dataclass
class ModelRewardConfig(RewardConfig):
    path: Optional[str] = None  # sequence-classification checkpoint
    sequences_per_device: int = 64  # reward-model batch


def check_batch(cfg) -> None:
    if cfg.sequences_per_device <= 0:
        raise UserError(f"reward.sequences_per_device={cfg.sequences_per_device} must be positive")


@register("model")
class ModelSource(RewardSource, ModelReward):
    Config = ModelRewardConfig

    def __init__(self, cfg: ModelRewardConfig, ctx: RewardContext):
        RewardSource.__init__(self, cfg, ctx)
        ModelReward.__init__(self, cfg.path, ctx.tokenizer, ctx.device, cfg.sequences_per_device, placement=ctx.placement)

    @classmethod
    def check(cls, cfg: ModelRewardConfig) -> None:
        if not cfg.path:
            raise UserError("reward=model needs reward.path=DIR (a sequence-classification checkpoint, e.g. the model/ "
                            "directory of an algo=reward run)")
        check_batch(cfg)
