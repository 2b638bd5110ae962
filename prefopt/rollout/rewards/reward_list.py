"""``reward=list reward.rewards=[NAME, ...] reward.weights=[w, ...]``: several reward sources of any kind,
Σ_k w_k · r_k, each term kept apart (``reward/NAME``) so an objective can normalise them one by one
(GDPO, ``algo.advantage=gdpo``).

An entry is the name of a conf/reward option (``reviews_gold``, ``arith_exact``, ``auto``, ``model``…)
or an inline section of any kind (``{kind: function, function: MODULE:FUNCTION}``, ``{kind: model, path:
DIR}``). ``weights``: one per entry (default: all 1), as TRL's ``reward_weights``. The entries' own
``missing_eos_penalty`` and ``clip`` are not read: this section's apply to the weighted total.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Optional

from omegaconf import OmegaConf

from prefopt.core.errors import UserError
from prefopt.rollout.rewards.base import RewardConfig, RewardContext, RewardSource, get_reward_kind, register


def _conf_reward_dir():
    return files("prefopt.conf") / "reward"


def entry_config(entry, key: str) -> RewardConfig:
    """One entry of ``reward.rewards`` as its kind's typed config."""
    from prefopt.core.config import typed

    if isinstance(entry, str):
        path = _conf_reward_dir() / f"{entry}.yaml"
        if not path.is_file():
            names = sorted(f.name[:-5] for f in _conf_reward_dir().iterdir() if f.name.endswith(".yaml")
                           and f.name != "list.yaml")
            raise UserError(f"{key}='{entry}' is not a conf/reward option; accepted: {', '.join(names)}, "
                            "or an inline section {kind: ..., ...}")
        entry = OmegaConf.create(path.read_text())
    node = OmegaConf.create(entry) if not OmegaConf.is_config(entry) else entry
    kind = node.get("kind", RewardConfig._default_kind)
    if kind == "list":
        raise UserError(f"{key}: a reward list cannot hold another list")
    return typed(get_reward_kind(kind, f"{key}.kind").Config, node, key)


@dataclass
class ListRewardConfig(RewardConfig):
    rewards: list[Any] = field(default_factory=list)  # conf/reward names or inline sections
    weights: Optional[list[float]] = None  # one per reward; null: all 1


@register("list")
class ListReward(RewardSource):
    Config = ListRewardConfig

    def __init__(self, cfg: ListRewardConfig, ctx: RewardContext):
        super().__init__(cfg, ctx)
        weights = cfg.weights if cfg.weights is not None else [1.0] * len(cfg.rewards)
        self._terms = []
        for i, (entry, w) in enumerate(zip(cfg.rewards, weights)):
            sub = entry_config(entry, f"reward.rewards[{i}]")
            src = get_reward_kind(sub.kind)(sub, ctx)
            self._terms += [(float(w) * w_in, s) for w_in, s in src.terms()]
        self.name = "list"
        self.uses_model = any(s.uses_model for _, s in self._terms)

    @classmethod
    def check(cls, cfg: ListRewardConfig) -> None:
        if not cfg.rewards:
            raise UserError("reward=list needs reward.rewards: conf/reward names or {kind: ...} sections")
        if cfg.weights is not None and len(cfg.weights) != len(cfg.rewards):
            raise UserError(f"reward.weights has {len(cfg.weights)} values for {len(cfg.rewards)} rewards; "
                            "accepted: one weight per reward, or null")
        for i, entry in enumerate(cfg.rewards):
            sub = entry_config(entry, f"reward.rewards[{i}]")
            get_reward_kind(sub.kind).check(sub)

    def terms(self) -> list:
        return list(self._terms)

    def __call__(self, prompts, completions, **kw):
        return sum(w * s(prompts, completions, **kw) for w, s in self._terms)
