"""The judge registry: a judge kind is one class that registers itself by name.

A judge answers ``compare(prompts, completions_a, completions_b) -> P`` with P[n] = P(a_n ≻ b_n)
in [0, 1] (float32 [N]). A kind subclasses :class:`Judge` and declares

- ``Config``: a dataclass deriving from :class:`JudgeConfig` with the kind's own keys (the
  structured config behind conf/judge/NAME.yaml and ``reward.judge``);
- ``__init__(self, cfg, ctx)``: built from its config and a :class:`JudgeContext`;
- ``compare``;

and may override the hooks, whose defaults are :meth:`Judge.check` (nothing to check) and
:meth:`Judge.matrices` (every unordered pair compared once). A judge that scores each completion on
its own derives from :class:`~prefopt.rollout.judges.pointwise.PointwiseJudge` instead and defines
``score``.

Nothing outside this registry maps judge kinds to code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional

import torch

from prefopt.core.errors import UserError
from prefopt.core.registry import Registry
from prefopt.rollout.kinds import ConfigByKind


@dataclass
class JudgeConfig(metaclass=ConfigByKind):
    """The keys of every judge kind; a kind's ``Config`` adds its own. ``JudgeConfig(kind=K, ...)``
    builds kind K's config (:mod:`prefopt.rollout.kinds`)."""

    _kinds: ClassVar[dict]  # the registry below
    _default_kind: ClassVar[str] = "llm"

    name: str = "smollm2"
    kind: str = "llm"
    sequences_per_device: int = 64  # completions (an LLM judge: judge prompts) per call or forward pass


@dataclass
class JudgeContext:
    """What a caller hands every judge kind besides its config."""

    tokenizer: Any = None  # the policy's: a reward model with its vocabulary scores the sampled ids
    gold_fn: Optional[Callable] = None  # the testbed task's gold reward, when the data has one
    device: Any = None
    console: Any = None  # where a slow first load (a dequantized .gguf) reports progress
    key: str = "judge"  # the config key errors name (judge, reward.judge)


def group_starts(sizes: list) -> list:
    return [sum(sizes[:g]) for g in range(len(sizes))]


class Judge:
    """A registered judge kind (see the module docstring)."""

    Config: ClassVar[type] = JudgeConfig
    kind: ClassVar[str] = ""
    name: str = "judge"

    def __init__(self, cfg: JudgeConfig, ctx: JudgeContext):
        self.name, self.batch = cfg.name, cfg.sequences_per_device
        self.key = ctx.key

    @classmethod
    def check(cls, cfg, key: str = "judge") -> None:
        """One-line UserErrors for what can be checked before anything loads."""

    def compare(self, prompts, completions_a, completions_b, **kw) -> torch.Tensor:
        raise NotImplementedError

    def matrices(self, prompts: list, completions: list, sizes: list, **kw) -> tuple:
        """(one [K, K] matrix P_ij = P(y_i ≻ y_j) per group, stats) for flat lists laid out in
        consecutive groups of ``sizes``. By default ``compare`` of every unordered pair i < j, in calls
        of ``sequences_per_device`` pairs, with P_ji = 1 − P_ij (a judge's P(b ≻ a) is the complement
        of its P(a ≻ b))."""
        idx = [(a + i, a + j) for a, K in zip(group_starts(sizes), sizes) for i in range(K) for j in range(i + 1, K)]
        mats = [torch.full((K, K), 0.5) for K in sizes]
        if not idx:
            return mats, {}
        B = self.batch
        p = torch.cat([self.compare([prompts[i] for i, _ in idx[s : s + B]], [completions[i] for i, _ in idx[s : s + B]],
                                    [completions[j] for _, j in idx[s : s + B]]).float() for s in range(0, len(idx), B)])
        fill_pairs(mats, sizes, p)
        return mats, {}


class JudgeRowError(UserError):
    """A judge cannot judge one prompt's completions. ``template`` holds ``{place}``, which names
    prompt ``group`` of the caller: "prompt g" by default, a data row or a rollout prompt once the
    caller's :meth:`at` names them."""

    def __init__(self, template: str, group: int, names=None):
        self.template, self.group = template, group
        super().__init__(template.replace("{place}", names[group] if names is not None else f"prompt {group}"))

    def at(self, names) -> "JudgeRowError":
        return type(self)(self.template, self.group, names)


class NonFiniteJudgment(JudgeRowError):
    """A judge gave NaN or ±inf. A pair it cannot order must stop the run: NaN compares false both
    ways, so it would become a silent tie (or "rejected wins"), and σ(±inf) a silent certainty."""


def refuse_nonfinite(judge: "Judge", values: torch.Tensor, what: str, where: Callable) -> None:
    """NonFiniteJudgment for the first NaN or ±inf in the flat ``values``; ``where(n)`` -> (group, detail)."""
    bad = torch.nonzero(~torch.isfinite(values.reshape(-1))).flatten()
    if len(bad):
        n = int(bad[0])
        group, detail = where(n)
        more = f" ({len(bad)} non-finite values in all)" if len(bad) > 1 else ""
        raise NonFiniteJudgment(f"{judge.key}={judge.name} gave {what} {float(values.reshape(-1)[n])} for {detail} of "
                                f"{{place}}{more}; accepted: a judge that gives a finite number for every completion",
                                group)


def locate(sizes: list, n: int) -> tuple:
    """(group, index within it) of flat position ``n`` in consecutive groups of ``sizes``."""
    for g, K in enumerate(sizes):
        if n < K:
            return g, n
        n -= K
    raise IndexError(n)


def fill_pairs(mats: list, sizes: list, p: torch.Tensor) -> None:
    """Write P(y_i ≻ y_j) = p[n] and its complement into each group's matrix, pairs i < j in order."""
    n = 0
    for g, K in enumerate(sizes):
        for i in range(K):
            for j in range(i + 1, K):
                mats[g][i, j], mats[g][j, i] = p[n], 1 - p[n]
                n += 1


# Listed in the order they registered (the built-in ones first); the package's __init__ imports every
# kind's file (registering it) before this module is used.
JUDGES = Registry("judge kind", base=Judge, config_base=JudgeConfig, name_attr="kind", sort=False,
                  key="judge.kind")
JudgeConfig._kinds = JUDGES
register = JUDGES.register  # ``@register("model")``
available = JUDGES.available
get_judge_kind = JUDGES.lookup
