r"""``reward=judge reward.judge.name=smollm2|model|function|gold``: a pairwise judge
(:mod:`prefopt.rollout.judges`) as a per-completion reward, the win rate of y_i among the K samples
of its prompt:

    score_i = 1/(K − 1) Σ_{j≠i} P(y_i ≻ y_j)       (K = 2: P(y_1 ≻ y_2) and its complement; a lone sample: ½)

A rollout lays a prompt's samples out consecutively, so a group is a run of equal prompts
(:func:`prefopt.rollout.judges.consecutive_groups`; by token ids when the caller has them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from prefopt.rollout import judges
from prefopt.rollout.judges.base import group_starts
from prefopt.rollout.rewards.base import RewardConfig, RewardContext, RewardSource, register

KEY = "reward.judge"


@dataclass
class JudgeRewardConfig(RewardConfig):
    # ``name``, a judge name (conf/judge), plus any of its keys to override (null: its default).
    judge: dict = field(default_factory=dict)


@register("judge")
class JudgeReward(RewardSource):
    Config = JudgeRewardConfig

    def __init__(self, cfg: JudgeRewardConfig, ctx: RewardContext):
        super().__init__(cfg, ctx)
        self.judge = judges.build_judge(judges.resolve(cfg.judge, KEY), tokenizer=ctx.tokenizer, gold_fn=ctx.gold_fn,
                                        device=ctx.device, key=KEY)
        self.name = f"judge_{self.judge.name}"

    @classmethod
    def check(cls, cfg: JudgeRewardConfig) -> None:
        judges.check(judges.resolve(cfg.judge, KEY), KEY)

    def __call__(self, prompts, completions, prompt_ids=None, completion_ids=None, **kw) -> torch.Tensor:
        keys = [tuple(p) for p in prompt_ids] if prompt_ids is not None else list(prompts)
        sizes = judges.consecutive_groups(keys)
        return judges.group_scores(self.judge, list(prompts), list(completions), sizes,
                                   names=[f"rollout prompt {g} ('{prompts[a][:40]}')" for g, a in
                                          enumerate(group_starts(sizes))],
                                   prompt_ids=prompt_ids, completion_ids=completion_ids)
