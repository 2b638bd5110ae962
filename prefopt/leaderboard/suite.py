"""A suite (conf/leaderboard/NAME.yaml) as a typed, checked :class:`Suite`: what the protocol runs
and how the board reads it. The keys are documented where they are set, in standard.yaml.

Loaded once, checked whole before anything is planned: an unknown key, a value of the wrong type, a
report seed that is also a tuning seed, or a task without learning rates is one line naming the file,
the key and what is accepted.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Optional, Union

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prefopt.core.errors import UserError
from prefopt.leaderboard import select

DEFAULT_NS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class BestOfN:
    """The best-of-n baseline: ``samples`` completions per prompt from π_SFT, the pick among each n of ``ns``."""

    ns: list = field(default_factory=lambda: list(DEFAULT_NS))
    samples: int = 16


@dataclass(frozen=True)
class Ablation:
    """More preference pairs should delay the gold peak: ``method`` against reward models on each ``pair_prompts``."""

    task: str
    method: str
    pair_prompts: list
    seeds: list


@dataclass(frozen=True)
class Transfer:
    """The toy task ``toy`` against the real-checkpoint tier ``suite``'s task ``task``."""

    toy: str
    suite: str
    task: str


@dataclass(frozen=True)
class EnsemblePG:
    """The policy-gradient method of the ensemble comparison, at a configuration fixed beforehand."""

    method: str
    overrides: list = field(default_factory=list)


@dataclass(frozen=True)
class RewardEnsemble:
    """One proxy reward model against an ensemble of ``members`` under each aggregate (the ensemble section)."""

    task: str
    members: int
    pg: EnsemblePG
    resample: str = "seed"
    aggregates: list = field(default_factory=lambda: ["mean", "min", "mean_minus_std"])
    lam: float = field(default=1.0, metadata={"key": "lambda"})
    best_of_n: BestOfN = field(default_factory=lambda: BestOfN(ns=list(DEFAULT_NS), samples=16))


Number = Union[int, float]
PerTask = Union[Number, dict, None]  # a number for every task, or {task: number, default: number}


@dataclass(frozen=True)
class Divergence:
    """A run diverged when, at some validation evaluation, its gold fell more than ``gold_drop`` below π_SFT's,
    or below ``accuracy_floor`` × π_SFT's (accuracy tasks), or its KL passed ``max_kl`` nats."""

    gold_drop: PerTask = None
    max_kl: PerTask = None
    accuracy_floor: PerTask = None

    def rule(self, task: str) -> tuple:
        """(gold_drop, max_kl, accuracy_floor) for ``task``; None where the suite sets none."""
        return select.divergence_rule(dataclasses.asdict(self), task)


@dataclass(frozen=True)
class Suite:
    name: str
    seeds: list
    tasks: list
    # The pre-registered block the report seeds belong to (the board finds the commit that wrote it)
    seed_block: Optional[str] = None
    seed_keys: list = field(default_factory=lambda: ["seed"])
    tuning_seeds: list = field(default_factory=list)
    exclude: list = field(default_factory=list)
    methods: Optional[list] = None
    reward_model: str = "reward"
    proxy_tasks: Optional[list] = None  # None: every task
    exact_reward: dict = field(default_factory=dict)
    lr_grid: dict = field(default_factory=dict)
    tune_coefficients: bool = True
    extend_grid_edges: bool = True
    pick_kl_budget: Optional[float] = None
    divergence: Divergence = field(default_factory=Divergence)
    common: list = field(default_factory=list)
    stage1: list = field(default_factory=list)
    offline: list = field(default_factory=list)
    online: list = field(default_factory=list)
    online_task: dict = field(default_factory=dict)
    algo: dict = field(default_factory=dict)
    best_of_n: Optional[BestOfN] = field(default_factory=BestOfN)  # null or {}: no best-of-n baseline
    kl_budgets: list = field(default_factory=list)
    ablation: Optional[Ablation] = None
    reward_ensemble: Optional[RewardEnsemble] = None
    tiers: list = field(default_factory=list)
    transfer: Optional[Transfer] = None
    board_notes: list = field(default_factory=list)
    budget_note: Optional[str] = None

    def lrs(self, task: str) -> list:
        """The learning rates of ``task``'s tuning grid."""
        return [float(lr) for lr in self.lr_grid.get(task, self.lr_grid.get("default"))]


def _key(f) -> str:
    return f.metadata.get("key", f.name)


def _type_name(t) -> str:
    if typing.get_origin(t) is Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        names = " or ".join(_type_name(a) for a in args)
        return names + (" or null" if len(args) < len(typing.get_args(t)) else "")
    if dataclasses.is_dataclass(t):
        return "a mapping of " + ", ".join(_key(f) for f in dataclasses.fields(t))
    return {list: "a list", dict: "a mapping", str: "a string", bool: "true/false", int: "a whole number",
            float: "a number"}.get(t, getattr(t, "__name__", str(t)))


def _convert(value, t, where: str, src: str):
    """``value`` as type ``t`` (a dataclass is built from a mapping), or a one-line UserError."""
    if typing.get_origin(t) is Union:
        args = typing.get_args(t)
        if value is None and type(None) in args:
            return None
        shaped = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and shaped:  # a mapping for a section: its own errors name its keys
            return _convert(value, shaped[0], where, src)
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where, src)
            except UserError:
                continue
        raise UserError(f"suite {src}: {where}: {value!r} is not {_type_name(t)}")
    if dataclasses.is_dataclass(t):
        if not isinstance(value, dict):
            raise UserError(f"suite {src}: {where}: {value!r} is not {_type_name(t)}")
        return build(t, value, src, where + ".")
    ok = {float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool)}.get(t, lambda v: isinstance(v, t))
    if not ok(value):
        raise UserError(f"suite {src}: {where}: {value!r} is not {_type_name(t)}")
    return float(value) if t is float else value


def build(cls, data: dict, src: str, prefix: str = ""):
    """An instance of the dataclass ``cls`` from the mapping ``data``: every key known and of its type."""
    fields = {_key(f): f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise UserError(f"suite {src}: unknown key '{prefix}{unknown[0]}'; accepted: {', '.join(sorted(fields))}")
    missing = [k for k, f in fields.items() if k not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"suite {src}: missing key '{prefix}{missing[0]}'")
    return cls(**{f.name: _convert(data[k], hints[f.name], prefix + k, src) for k, f in fields.items() if k in data})


def suite_files() -> dict:
    """{name: path} of the suites shipped in conf/leaderboard/."""
    from importlib.resources import files

    d = files("prefopt.conf") / "leaderboard"
    return {p.name[:-5]: str(p) for p in d.iterdir() if p.name.endswith(".yaml")}


def load_suite(name_or_path: str) -> Suite:
    """A suite by name (conf/leaderboard/NAME.yaml) or a path to a YAML file."""
    if os.path.isfile(name_or_path):
        path = name_or_path
    else:
        shipped = suite_files()
        if name_or_path not in shipped:
            raise UserError(f"unknown suite '{name_or_path}'; available: {', '.join(sorted(shipped))} (or a path to a "
                            "YAML file)")
        path = shipped[name_or_path]
    src = path if os.path.isfile(name_or_path) else f"conf/leaderboard/{name_or_path}.yaml"
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        raise UserError(f"suite {src}: not a YAML suite ({str(e).strip().splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"suite {src}: not a mapping of keys; accepted: the keys of conf/leaderboard/standard.yaml")
    if data.get("best_of_n") == {}:
        data["best_of_n"] = None  # `best_of_n: {}` reads as "no baseline", like null
    suite = build(Suite, data, src)
    if suite.proxy_tasks is None:
        suite = dataclasses.replace(suite, proxy_tasks=list(suite.tasks))
    overlap = set(suite.seeds) & set(suite.tuning_seeds)
    if overlap:
        raise UserError(f"suite {src}: seeds {sorted(overlap)} are both tuning and report seeds; accepted: "
                        "disjoint lists (a number that chose a configuration is never reported as its result)")
    for task in suite.tasks:
        if not suite.lr_grid.get(task, suite.lr_grid.get("default")):
            raise UserError(f"suite {src}: lr_grid has no learning rates for task {task}; accepted: "
                            f"lr_grid: {{{task}: [..], default: [..]}}")
    return suite


def find_suite(name: str) -> Optional[Suite]:
    """The shipped suite ``name``, or None for a suite known only from its results (the board still renders it)."""
    return load_suite(name) if name in suite_files() else None
