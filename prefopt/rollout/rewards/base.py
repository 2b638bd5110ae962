"""The reward-source registry: a reward kind is one class that registers itself by name.

A kind subclasses :class:`RewardSource` and declares

- ``Config``: a dataclass deriving from :class:`RewardConfig` with the kind's own keys (the
  structured config behind conf/reward/NAME.yaml);
- ``__init__(self, cfg, ctx)``: built from its config and a :class:`RewardContext` (the policy's
  tokenizer, the device, the placement, and the testbed's gold reward when the data has one);
- ``__call__(prompts, completions, **kw) -> Tensor[N]``: one reward per completion;

and may override the hooks, whose defaults do nothing: ``check(cfg)`` (cheap checks before anything
loads), ``terms()`` (the weighted terms it adds to the total; default: itself, weight 1), and those of
:class:`~prefopt.rollout.scoring.Scorer` (``uses_model``, ``last_parts``, ``label``, ``state_dict``,
``load_state_dict``).

Nothing outside this registry maps reward kinds to code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

from prefopt.core.registry import Registry
from prefopt.rollout.kinds import ConfigByKind
from prefopt.rollout.scoring import Scorer


@dataclass
class RewardConfig(metaclass=ConfigByKind):
    """The keys of every reward kind (conf/reward/*.yaml); a kind's ``Config`` adds its own.
    ``RewardConfig(kind=K, ...)`` builds kind K's config (:mod:`prefopt.rollout.kinds`)."""

    _kinds: ClassVar[dict]  # the registry below
    _default_kind: ClassVar[str] = "auto"

    name: str = "auto"
    kind: str = "auto"
    missing_eos_penalty: Optional[float] = None  # subtracted when a completion has no EOS
    clip: Optional[float] = None  # clip the total to [−clip, clip]


@dataclass
class RewardContext:
    """What a run hands every reward kind besides its config."""

    tokenizer: Any = None  # the policy's
    device: Any = None
    gold_fn: Optional[Callable] = None  # the testbed task's gold reward fn(prompts, completions) -> list[float]
    task: Optional[str] = None  # the testbed task's name
    placement: Any = None  # prefopt.distributed.placement: where frozen models go, sums over processes


class RewardSource(Scorer):
    """A registered reward kind (see the module docstring)."""

    Config: ClassVar[type] = RewardConfig
    kind: ClassVar[str] = ""

    def __init__(self, cfg: RewardConfig, ctx: RewardContext):
        self.cfg = cfg

    @classmethod
    def check(cls, cfg) -> None:
        """One-line UserErrors for what can be checked before any model loads."""

    def terms(self) -> list:
        """``[(weight, scorer)]``: what this source adds to the total, each reported as ``reward/NAME``."""
        return [(1.0, self)]


# Listed in the order they registered (the built-in ones first); the package's __init__ imports every
# kind's file (registering it) before this module is used.
REWARDS = Registry("reward kind", base=RewardSource, config_base=RewardConfig, name_attr="kind", sort=False,
                   key="reward.kind")
RewardConfig._kinds = REWARDS
register = REWARDS.register  # ``@register("model")``
available = REWARDS.available
get_reward_kind = REWARDS.lookup
