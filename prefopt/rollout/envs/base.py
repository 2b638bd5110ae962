"""The environment registry: a multi-turn environment is one class, in a file of its own, that
registers itself by name (config group ``env``, conf/env/NAME.yaml; ``env=none``, the default, keeps
rollouts single-turn and every run exactly as without this package).

An episode, run for all live episodes together by :mod:`prefopt.rollout.episodes`::

    messages = env.reset(row)                      # chat messages; the prompt the policy answers
    repeat:
        the policy samples one assistant turn      # its tokens: loss_mask = True
        messages += [{"role": "assistant", ...}]
        r = env.step(messages)                     # StepResult(messages | None, reward, info)
        R += r.reward                              # per-turn rewards optional; R is the episode's score
        stop when r.messages is None (done), after ``max_turns`` assistant turns, when the
        trajectory reaches ``max_episode_tokens``, or when a turn ends without EOS
        messages += r.messages                     # rendered by the chat template: loss_mask = False

A kind subclasses :class:`Environment` and declares ``Config`` (a dataclass deriving from
:class:`EnvConfig`), ``reset(row)`` and ``step(messages)``; it may override the hooks, whose defaults do
nothing: ``check(cfg)`` (one-line UserErrors before anything loads), ``describe()``, ``tools()``
(functions the policy may call; the episode runner describes them to it, :mod:`~prefopt.rollout.envs.tools`)
and ``demonstration(row)`` (a right episode, for a supervised warm start: :mod:`~prefopt.rollout.envs.demonstrations`). ``row`` is a
tokenized data row (``prompt_text``, ``prompt``, ``prompt_ids`` …); an environment reads what it
needs from it. Nothing outside this registry maps environment names to code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from prefopt.core.errors import UserError
from prefopt.core.registry import Registry


@dataclass
class EnvConfig:
    """The keys of every environment (conf/env/*.yaml); a kind's ``Config`` adds its own."""

    name: str = "none"  # a registered environment, or none: single-turn rollouts
    max_turns: int = 4  # assistant turns per episode at most
    max_episode_tokens: int = 64  # tokens after the prompt at most (the policy's and the environment's)


@dataclass
class StepResult:
    """What ``Environment.step`` returns: the environment's next messages (``None``: the episode is
    over), this step's reward (summed over the episode into its score), and free-form info."""

    messages: Optional[list]
    reward: float = 0.0
    info: dict = field(default_factory=dict)


class Environment:
    """A registered environment (see the module docstring)."""

    Config: ClassVar[type] = EnvConfig
    name: ClassVar[str] = ""

    def __init__(self, cfg: EnvConfig):
        self.cfg = cfg

    @classmethod
    def check(cls, cfg) -> None:
        """One-line UserErrors for what can be checked before any model loads."""

    def describe(self) -> str:
        return f"{self.name} (≤ {self.cfg.max_turns} turns, ≤ {self.cfg.max_episode_tokens} tokens per episode)"

    def tools(self) -> list:
        """Tool functions offered to the policy (:mod:`prefopt.rollout.envs.tools`): typed, with docstrings."""
        return []

    def demonstration(self, row: dict) -> Optional[list]:
        """A right episode for ``row``, as the messages after ``reset(row)``'s (assistant turns and the
        environment's replies), for a supervised warm start (``algo=sft`` with this env); None: no
        demonstration (the default; SFT with this env is then refused)."""
        return None

    def reset(self, row: dict) -> list:
        """The episode's opening messages for data row ``row``."""
        raise NotImplementedError

    def step(self, messages: list) -> StepResult:
        """The conversation so far, ending with the policy's assistant turn → the environment's reply."""
        raise NotImplementedError


ENVS = Registry("environment", base=Environment, config_base=EnvConfig, key="env",
                unknown="{key}='{name}' is not known; accepted: none, {names}")
register = ENVS.register  # ``@register("guess")``


def env_config(node: Any) -> EnvConfig:
    """The typed config of conf/env's choice (``None`` or name none: no environment). Unknown names,
    unknown keys and bad limits are one UserError line naming the key."""
    from omegaconf import OmegaConf

    from prefopt.core.config import typed

    raw = OmegaConf.to_container(node, resolve=True) if node is not None and not isinstance(node, dict) else dict(node or {})
    name = raw.get("name", "none")
    if name in (None, "none"):
        return EnvConfig(name="none")
    cfg = typed(ENVS.lookup(name).Config, raw, "env")
    for key in ("max_turns", "max_episode_tokens"):
        if getattr(cfg, key) <= 0:
            raise UserError(f"env.{key}={getattr(cfg, key)} must be a positive integer")
    ENVS[name].check(cfg)
    return cfg


def build_env(cfg: Optional[EnvConfig]) -> Optional[Environment]:
    """The configured environment, or None for ``env=none``."""
    if cfg is None or cfg.name == "none":
        return None
    return ENVS.lookup(cfg.name)(cfg)

