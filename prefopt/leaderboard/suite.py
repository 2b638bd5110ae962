"""A suite (conf/leaderboard/NAME.yaml) as a typed, checked :class:`Suite`: what the protocol runs
and how the board reads it. The keys are documented where they are set, in standard.yaml.

Loaded once, checked whole before anything is planned: an unknown key, a value of the wrong type (each
item of a list or mapping too: ``lr_grid.reviews[1]``), an interpolation that does not resolve, an unknown
task, a seed out of range, a report seed that is also a tuning seed, or a task without learning rates is one
line naming the file, the key and what is accepted.
"""

from __future__ import annotations

import dataclasses
import math
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
# A run's seed must fit every consumer: prefopt-train seeds NumPy with it modulo 2**32 (a larger seed would share
# its NumPy stream with a smaller one) and derives torch generator seeds from it by multiplying it by up to ~3·10^7,
# which must stay below torch.manual_seed's limit of 2**64.
SEED_LIMIT = 2**32
SEEDS_ACCEPTED = f"whole numbers 0 <= seed < 2**32 ({SEED_LIMIT})"


@dataclass(frozen=True)
class BestOfN:
    """The best-of-n baseline: ``samples`` completions per prompt from π_SFT, the pick among each n of ``ns``."""

    ns: list[int] = field(default_factory=lambda: list(DEFAULT_NS))
    samples: int = 16


@dataclass(frozen=True)
class Ablation:
    """More preference pairs should delay the gold peak: ``method`` against reward models on each ``pair_prompts``."""

    task: str
    method: str
    pair_prompts: list[int]
    seeds: list[int]


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
    overrides: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RewardEnsemble:
    """One proxy reward model against an ensemble of ``members`` under each aggregate (the ensemble section)."""

    task: str
    members: int
    pg: EnsemblePG
    resample: str = "seed"
    aggregates: list[str] = field(default_factory=lambda: ["mean", "min", "mean_minus_std"])
    lam: float = field(default=1.0, metadata={"key": "lambda"})
    best_of_n: BestOfN = field(default_factory=lambda: BestOfN(ns=list(DEFAULT_NS), samples=16))


Number = Union[int, float]
PerTask = Union[Number, dict[str, Number], None]  # a number for every task, or {task: number, default: number}


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
    seeds: list[int]
    tasks: list[str]
    # The pre-registered block the report seeds belong to (the board finds the commit that wrote it)
    seed_block: Optional[str] = None
    seed_keys: list[str] = field(default_factory=lambda: ["seed"])
    tuning_seeds: list[int] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    methods: Optional[list[str]] = None
    reward_model: str = "reward"
    proxy_tasks: Optional[list[str]] = None  # None: every task
    exact_reward: dict[str, str] = field(default_factory=dict)
    lr_grid: dict[str, list[Number]] = field(default_factory=dict)
    tune_coefficients: bool = True
    extend_grid_edges: bool = True
    pick_kl_budget: Optional[float] = None
    divergence: Divergence = field(default_factory=Divergence)
    common: list[str] = field(default_factory=list)
    common_task: dict[str, list[str]] = field(default_factory=dict)  # every run of one task, after common
    stage1: list[str] = field(default_factory=list)
    offline: list[str] = field(default_factory=list)
    online: list[str] = field(default_factory=list)
    online_task: dict[str, list[str]] = field(default_factory=dict)
    algo: dict[str, list[str]] = field(default_factory=dict)
    best_of_n: Optional[BestOfN] = field(default_factory=BestOfN)  # null or {}: no best-of-n baseline
    kl_budgets: list[Number] = field(default_factory=list)
    ablation: Optional[Ablation] = None
    reward_ensemble: Optional[RewardEnsemble] = None
    tiers: list[str] = field(default_factory=list)
    transfer: Optional[Transfer] = None
    board_notes: list[str] = field(default_factory=list)
    budget_note: Optional[str] = None

    def lrs(self, task: str) -> list:
        """The learning rates of ``task``'s tuning grid."""
        return [float(lr) for lr in self.lr_grid.get(task, self.lr_grid.get("default"))]


def _key(f) -> str:
    return f.metadata.get("key", f.name)


# Singular and plural names of the leaf types, for "is not a list of whole numbers".
_NAMES = {list: ("a list", "lists"), dict: ("a mapping", "mappings"), str: ("a string", "strings"),
          bool: ("true/false", "true/false values"), int: ("a whole number", "whole numbers"),
          float: ("a number", "numbers")}


def _type_name(t, plural: bool = False) -> str:
    if t == Number:
        return _NAMES[float][plural]
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is Union:
        # a whole number is a number: "a number or null", not "a whole number or a number or null"
        kinds = [a for a in args if a is not type(None) and not (a is int and float in args)]
        names = " or ".join(_type_name(a, plural) for a in kinds)
        return names + (" or null" if len(kinds) < len(args) else "")
    if origin is list:
        return ("lists" if plural else "a list") + (f" of {_type_name(args[0], True)}" if args else "")
    if origin is dict:
        return ("mappings" if plural else "a mapping") + (f" of names to {_type_name(args[1], True)}" if args else "")
    if dataclasses.is_dataclass(t):
        return ("mappings" if plural else "a mapping") + " of " + ", ".join(_key(f) for f in dataclasses.fields(t))
    return _NAMES.get(t, (getattr(t, "__name__", str(t)),) * 2)[plural]


def _convert(value, t, where: str, src: str):
    """``value`` as type ``t`` (a dataclass is built from a mapping, a list or mapping has each item checked), or a
    one-line UserError naming the key (``lr_grid.reviews[1]``) and what it accepts."""
    bad = lambda: UserError(f"suite {src}: {where}: {value!r} is not {_type_name(t)}")  # noqa: E731
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        # a mapping for a section, a list for a list: the item's own error names the item
        mapping = lambda a: dataclasses.is_dataclass(a) or typing.get_origin(a) is dict  # noqa: E731
        shaped = [a for a in args if (mapping(a) and isinstance(value, dict))
                  or (typing.get_origin(a) is list and isinstance(value, list))]
        if shaped:
            return _convert(value, shaped[0], where, src)
        numeric = []  # a number that is not finite says so, not "is not a number"
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, where, src)
            except UserError as e:
                if a in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
                    numeric.append(e)
        raise numeric[-1] if numeric else bad()
    if origin is list:
        if not isinstance(value, list):
            raise bad()
        return [_convert(v, args[0], f"{where}[{i}]", src) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad()
        for k in value:
            if not isinstance(k, str):
                raise UserError(f"suite {src}: {where}: the key {k!r} is not a name; accepted: {_type_name(t)}")
        return {k: _convert(v, args[1], f"{where}.{k}", src) for k, v in value.items()}
    if dataclasses.is_dataclass(t):
        if not isinstance(value, dict):
            raise bad()
        return build(t, value, src, where + ".")
    ok = {float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool)}.get(t, lambda v: isinstance(v, t))
    if not ok(value):
        raise bad()
    if t in (int, float) and not math.isfinite(value):
        raise UserError(f"suite {src}: {where}: {value!r} is not a finite number; accepted: {_type_name(t)}")
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
        conf = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        raise UserError(f"suite {src}: not a YAML suite ({str(e).strip().splitlines()[0]})") from None
    try:
        data = OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise UserError(f"suite {src}: {key or 'an interpolation'}: cannot resolve its ${{...}} interpolation "
                        f"({str(e).strip().splitlines()[0]}); accepted: a literal value, or an interpolation that "
                        "resolves (e.g. ${oc.env:NAME} with NAME set)") from None
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
    check_tasks(suite.tasks, f"suite {src}: tasks")
    for task in suite.common_task:
        if task not in suite.tasks:
            raise UserError(f"suite {src}: common_task.{task}: not one of the suite's tasks; accepted: "
                            f"{', '.join(suite.tasks)}")
    seeds = [("seeds", suite.seeds), ("tuning_seeds", suite.tuning_seeds),
             ("ablation.seeds", suite.ablation.seeds if suite.ablation else [])]
    for key, values in seeds:
        for i, seed in enumerate(values):
            if not 0 <= seed < SEED_LIMIT:
                raise UserError(f"suite {src}: {key}[{i}]: {seed} is out of range; accepted: {SEEDS_ACCEPTED}")
    for task, lrs in suite.lr_grid.items():
        for i, lr in enumerate(lrs):
            if lr <= 0:
                raise UserError(f"suite {src}: lr_grid.{task}[{i}]: {lr!r} is not a learning rate; accepted: numbers > 0")
    for task in suite.tasks:
        if not suite.lr_grid.get(task, suite.lr_grid.get("default")):
            raise UserError(f"suite {src}: lr_grid has no learning rates for task {task}; accepted: "
                            f"lr_grid: {{{task}: [..], default: [..]}}")
    return suite


def available_tasks() -> list:
    """The tasks a suite can run: the configs of conf/data/ with a gold reward (a ``testbed`` block)."""
    from importlib.resources import files

    out = []
    for p in (files("prefopt.conf") / "data").iterdir():
        if p.name.endswith(".yaml"):
            try:
                cfg = yaml.safe_load(p.read_text())
            except yaml.YAMLError:
                continue
            if isinstance(cfg, dict) and cfg.get("testbed"):
                out.append(p.name[:-5])
    return sorted(out)


def check_tasks(tasks: list, where: str, listed: Optional[list] = None) -> None:
    """A task no conf/data/ config provides would fail in Hydra's composition of every run: one line instead,
    naming the suite's own tasks (``listed``) and every available one."""
    known = available_tasks()
    for t in tasks:
        if t not in known:
            own = f"the suite's tasks {', '.join(listed)}; " if listed else ""
            raise UserError(f"{where}: unknown task '{t}'; accepted: {own}available tasks (conf/data/ with a gold "
                            f"reward): {', '.join(known)}")


def find_suite(name: str) -> Optional[Suite]:
    """The shipped suite ``name``, or None for a suite known only from its results (the board still renders it)."""
    return load_suite(name) if name in suite_files() else None
