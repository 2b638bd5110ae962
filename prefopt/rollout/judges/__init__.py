"""Judges: which of two completions of one prompt is better (config group ``judge``,
conf/judge/*.yaml; ``reward.judge`` inside ``reward=judge``). One file per kind, each registering
itself (:mod:`~prefopt.rollout.judges.base`):

    llm       a local instruct causal LM asked which answer better follows written principles, both
              orders averaged (:mod:`~prefopt.rollout.judges.llm`; judge=smollm2)
    model     a reward model (:mod:`~prefopt.rollout.judges.model`)
    function  a Python scorer (:mod:`~prefopt.rollout.judges.function`)
    gold      the testbed task's gold reward, a control (:mod:`~prefopt.rollout.judges.gold`)

A judge name (``judge=NAME``, ``reward.judge.name=NAME``) is a conf/judge file, which sets a kind and
its keys; a kind with no conf file of its own is also a name, with its ``Config``'s defaults. The
win rates of K completions: :mod:`~prefopt.rollout.judges.winrate`.
"""

from __future__ import annotations

from importlib.resources import files

from prefopt.core.errors import UserError
from prefopt.rollout.judges.base import (Judge, JudgeConfig, JudgeContext, available, get_judge_kind,  # noqa: F401
                                         register)
from prefopt.rollout.judges.llm import LLMJudge, LLMJudgeConfig, order_averaged  # noqa: F401
from prefopt.rollout.judges.model import ModelJudge, ModelJudgeConfig  # noqa: F401
from prefopt.rollout.judges.function import FunctionJudge, FunctionJudgeConfig  # noqa: F401
from prefopt.rollout.judges.gold import GoldJudge, GoldJudgeConfig  # noqa: F401
from prefopt.rollout.judges.pointwise import PointwiseJudge, PointwiseJudgeConfig, bradley_terry  # noqa: F401
from prefopt.rollout.judges.winrate import consecutive_groups, group_scores, preference_matrices, win_rates  # noqa: F401


def _conf_files() -> dict:
    """conf/judge/NAME.yaml → its kind."""
    from omegaconf import OmegaConf

    folder = files("prefopt.conf") / "judge"
    return {p.name[:-5]: OmegaConf.load(str(p)).get("kind") for p in folder.iterdir() if p.name.endswith(".yaml")}


def options() -> list:
    """The judge names: the conf/judge files, and the registered kinds that none of them uses."""
    conf = _conf_files()
    return sorted(set(conf) | {k for k in available() if k not in set(conf.values())})


def judge_config(node, key: str = "judge") -> JudgeConfig:
    """A composed ``judge`` section (or a dict) as its kind's typed config; an unknown kind or key is one line."""
    from prefopt.core.config import typed

    kind = (node or {}).get("kind", JudgeConfig._default_kind)
    return typed(get_judge_kind(kind, f"{key}.kind").Config, node, key)


def resolve(spec: dict, key: str = "reward.judge") -> JudgeConfig:
    """A judge named inside another section (``reward.judge``): conf/judge/<spec.name>.yaml (or the kind
    of that name, with its defaults) with the non-null keys of ``spec`` over it, so that
    ``reward.judge.name=model reward.judge.path=DIR`` reads like ``judge=model judge.path=DIR``."""
    from omegaconf import OmegaConf

    spec = dict(spec or {})
    name = spec.pop("name", None)
    if name not in options():
        raise UserError(f"{key}.name={name!r} is not a judge; accepted: {', '.join(options())}")
    path = files("prefopt.conf") / "judge" / f"{name}.yaml"
    base = OmegaConf.load(str(path)) if path.is_file() else OmegaConf.create({"name": name, "kind": name})
    return judge_config(OmegaConf.merge(base, {k: v for k, v in spec.items() if v is not None}), key)


def check(cfg: JudgeConfig, key: str = "judge") -> None:
    """Cheap checks that load nothing: run before any sampling."""
    kind = get_judge_kind(cfg.kind, f"{key}.kind")
    if cfg.sequences_per_device <= 0:
        raise UserError(f"{key}.sequences_per_device={cfg.sequences_per_device}; accepted: > 0")
    kind.check(cfg, key)


def build_judge(cfg: JudgeConfig, *, tokenizer=None, gold_fn=None, device=None, key: str = "judge", console=None) -> Judge:
    """The judge ``cfg`` names. ``tokenizer``: the policy's (a reward model with the same vocabulary
    scores the sampled ids); ``gold_fn``: the testbed task's gold reward (kind=gold)."""
    check(cfg, key)
    ctx = JudgeContext(tokenizer=tokenizer, gold_fn=gold_fn, device=device, console=console, key=key)
    return get_judge_kind(cfg.kind, f"{key}.kind")(cfg, ctx)
