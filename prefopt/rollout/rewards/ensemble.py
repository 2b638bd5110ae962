"""``reward=ensemble reward.paths=[DIR,...] reward.aggregate=mean|min|mean_minus_std``: M reward
models, standardised and aggregated (the equations: :mod:`prefopt.rollout.ensemble`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prefopt.rollout import ensemble
from prefopt.rollout.rewards.base import RewardConfig, RewardContext, RewardSource, register
from prefopt.rollout.rewards.model import check_batch
from prefopt.rollout.scoring import ModelReward


@dataclass
class EnsembleRewardConfig(RewardConfig):
    # Member directories, their aggregate, λ of mean − λ·std, and whether each member is standardised
    # on the first batch it scores.
    paths: list[str] = field(default_factory=list)
    aggregate: str = "mean"  # mean | min | mean_minus_std
    ensemble_lambda: float = 1.0
    ensemble_normalize: bool = True
    sequences_per_device: int = 64  # reward-model batch (per member)


@register("ensemble")
class EnsembleSource(RewardSource, ensemble.EnsembleReward):
    Config = EnsembleRewardConfig

    def __init__(self, cfg: EnsembleRewardConfig, ctx: RewardContext):
        RewardSource.__init__(self, cfg, ctx)
        members = [ModelReward(p, ctx.tokenizer, ctx.device, cfg.sequences_per_device, f"reward.paths[{i}]",
                               placement=ctx.placement) for i, p in enumerate(ensemble.check(cfg))]
        all_sum = ctx.placement.all_sum if ctx.placement is not None else None
        ensemble.EnsembleReward.__init__(self, members, cfg.aggregate, cfg.ensemble_lambda, cfg.ensemble_normalize,
                                         all_sum=all_sum)

    @classmethod
    def check(cls, cfg: EnsembleRewardConfig) -> None:
        ensemble.check(cfg)
        check_batch(cfg)
