"""Reward sources for online methods (config group ``reward``, conf/reward/*.yaml). One file per
kind, each registering itself (:mod:`~prefopt.rollout.rewards.base`):

    reward=auto                      the testbed task's gold reward on testbed data (the default;
                                     needs no trained reward model); an error on a user's data
    reward=arith_exact | reviews_gold  the testbed's gold rewards as callables (kind function)
    reward=function reward.function=MODULE:FUNCTION
                                     fn(prompts: list[str], completions: list[str], **kw) -> list[float]
                                     kw: prompt_ids, completion_ids, finished (and reward.kwargs)
    reward=model reward.path=DIR     any HF sequence-classification checkpoint with one output
                                     (e.g. the model/ of an ``algo=reward`` run)
    reward=sum reward.terms=[...]    Σ_i weight_i · term_i, each term a function or a model
    reward=ensemble reward.paths=[DIR,...] reward.aggregate=mean|min|mean_minus_std
                                     M reward models, standardised and aggregated (prefopt.rollout.ensemble)
    reward=judge reward.judge.name=smollm2|model|function|gold
                                     a pairwise judge (prefopt.rollout.judges): each sample's win rate
                                     against the other samples of its prompt
    reward=list reward.rewards=[NAME, ...] reward.weights=[w, ...]
                                     several sources of any kind (conf/reward names or inline sections),
                                     weighted; each term kept apart for GDPO (algo.advantage=gdpo)

The total is Σ weight · term over the terms of the source, then ``missing_eos_penalty`` is
subtracted from completions that hit max_new_tokens without EOS (TRL's option of the same name),
and the total is clipped to [−clip, clip] when ``clip`` is set. A source returns a float32 tensor [N].
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from prefopt.core.errors import UserError
from prefopt.rollout.rewards.base import (REWARDS, RewardConfig, RewardContext, RewardSource, available,  # noqa: F401
                                          get_reward_kind, register)
from prefopt.rollout.rewards.auto import AutoReward, AutoRewardConfig  # noqa: F401
from prefopt.rollout.rewards.function import FunctionRewardConfig, FunctionSource  # noqa: F401
from prefopt.rollout.rewards.model import ModelRewardConfig, ModelSource  # noqa: F401
from prefopt.rollout.rewards.sum import RewardTerm, SumReward, SumRewardConfig  # noqa: F401
from prefopt.rollout.rewards.ensemble import EnsembleRewardConfig, EnsembleSource  # noqa: F401
from prefopt.rollout.rewards.judge import JudgeReward, JudgeRewardConfig  # noqa: F401
from prefopt.rollout.rewards.reward_list import ListReward, ListRewardConfig  # noqa: F401
from prefopt.rollout.scoring import FunctionReward, GoldReward, ModelReward, Scorer, load_function  # noqa: F401


class Reward:
    """Σ weight · term, then the missing-EOS penalty, then clipping."""

    def __init__(self, source: RewardSource, cfg: RewardConfig):
        self.source, self.cfg = source, cfg
        self.terms = source.terms()  # [(weight, scorer)]
        seen: dict = {}
        for _, src in self.terms:  # unique metric names when a sum has two terms of one kind
            n = seen[src.name] = seen.get(src.name, 0) + 1
            if n > 1:
                src.name = f"{src.name}_{n}"

    @property
    def uses_model(self) -> bool:
        return any(src.uses_model for _, src in self.terms)

    @property
    def weights(self) -> list:
        """w_k of the terms, in order (GDPO's reward weights)."""
        return [float(w) for w, _ in self.terms]

    def __call__(self, prompts, completions, *, prompt_ids=None, completion_ids=None, finished=None, with_terms=False):
        """The total; with ``with_terms`` also the metrics of the terms. ``last_term_values`` [N, R]: every
        term's raw value r_k of this call (before the weights), for per-term normalisation (GDPO)."""
        total = torch.zeros(len(completions))
        parts, values = {}, []
        for w, src in self.terms:
            v = src(prompts, completions, prompt_ids=prompt_ids, completion_ids=completion_ids,
                    finished=None if finished is None else finished.tolist())
            parts[f"reward/{src.name}"] = v
            parts.update(src.last_parts)  # e.g. an ensemble's members and their std
            values.append(v.float())
            total = total + w * v
        self.last_term_values = torch.stack(values, -1) if values else torch.zeros(len(completions), 0)
        if self.cfg.missing_eos_penalty is not None and finished is not None:
            total = total - self.cfg.missing_eos_penalty * (~finished).float()
        if self.cfg.clip is not None:
            total = total.clamp(-self.cfg.clip, self.cfg.clip)
        return (total, parts) if with_terms else total

    def state_dict(self) -> dict:
        """Every term's state (an ensemble's frozen standardisation; ``{}`` for most), for checkpoints."""
        return {str(i): src.state_dict() for i, (_, src) in enumerate(self.terms)}

    def load_state_dict(self, state: dict) -> None:
        for i, (_, src) in enumerate(self.terms):
            if str(i) in state:
                src.load_state_dict(state[str(i)])

    def describe(self) -> str:
        s = " + ".join(f"{w:g}·{src.label}" for w, src in self.terms)
        if self.cfg.missing_eos_penalty is not None:
            s += f" − {self.cfg.missing_eos_penalty:g}·[no EOS]"
        if self.cfg.clip is not None:
            s = f"clip({s}, ±{self.cfg.clip:g})"
        return s


def reward_config(node, key: str = "reward") -> RewardConfig:
    """A composed ``reward`` section (or a dict) as its kind's typed config; an unknown kind or key is one line."""
    from prefopt.core.config import typed

    kind = (node or {}).get("kind", RewardConfig._default_kind)
    return typed(get_reward_kind(kind, f"{key}.kind").Config, node, key)


def check(cfg: RewardConfig) -> None:
    """Cheap checks that need no model: run before anything loads."""
    kind = get_reward_kind(cfg.kind)
    kind.check(cfg)
    if cfg.clip is not None and cfg.clip <= 0:
        raise UserError(f"reward.clip={cfg.clip} must be > 0 (or null)")


def build_reward(cfg: RewardConfig, tokenizer=None, device=None, gold_fn: Optional[Callable] = None,
                 task: Optional[str] = None, placement=None) -> Reward:
    """The reward source of a run. ``gold_fn``/``task``: the testbed task's gold reward (kind=auto,
    judge=gold), handed in by the caller."""
    check(cfg)
    ctx = RewardContext(tokenizer=tokenizer, device=device, gold_fn=gold_fn, task=task, placement=placement)
    return Reward(get_reward_kind(cfg.kind)(cfg, ctx), cfg)
