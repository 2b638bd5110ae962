"""The protocol as a list of jobs, derived from the registry and a suite (conf/leaderboard/NAME.yaml).

Per task and seed:

- stage 1: the proxy reward model: the suite's ``reward_model`` objective (its ``needs.head`` is
  "scalar") trained on the testbed's preference pairs; its ``model/`` directory is a
  sequence-classification checkpoint at a path fixed by its config hash;
- stage 2: every other registered objective, read by its declarations, never by its name:
  ``needs.rollouts`` or ``needs.reward`` → online, against the proxy reward model
  (``reward=model reward.path=…``) and, on tasks listed in ``exact_reward``, against the
  verifiable reward too; ``paired`` / ``unpaired`` data → offline on the same pairs;
  ``demonstrations`` → SFT (left off unless the suite asks: see standard.yaml's ``exclude``);
  plus the best-of-n baseline.

Every job is a list of Hydra overrides of conf/train.yaml; its identity is ``config_hash`` of the
composed config, computed here once (the job recomputes and checks it), so a job whose hash
already has a result is skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import OmegaConf

from prefopt.errors import UserError


@dataclass
class Job:
    id: str
    stage: int
    kind: str  # "train" | "best_of_n"
    overrides: list
    meta: dict
    hash: str = ""
    spec: dict = field(default_factory=dict)  # best_of_n: its own settings


def load_suite(name_or_path: str) -> dict:
    """A suite by name (conf/leaderboard/NAME.yaml) or a path to a YAML file."""
    from importlib.resources import files

    if os.path.isfile(name_or_path):
        cfg = OmegaConf.load(name_or_path)
    else:
        d = files("prefopt.conf") / "leaderboard"
        names = sorted(p.name[:-5] for p in d.iterdir() if p.name.endswith(".yaml"))
        if name_or_path not in names:
            raise UserError(f"unknown suite '{name_or_path}'; available: {', '.join(names)} (or a path to a YAML file)")
        cfg = OmegaConf.create((d / f"{name_or_path}.yaml").read_text())
    suite = OmegaConf.to_container(cfg, resolve=True)
    for key in ("name", "seeds", "tasks"):
        if key not in suite:
            raise UserError(f"suite {name_or_path}: missing key '{key}'")
    defaults = dict(seed_keys=["seed"], exclude=[], reward_model="reward", exact_reward={}, common=[], stage1=[],
                    offline=[], online=[], online_task={}, algo={}, sweep={}, best_of_n={"ns": [1, 2, 4, 8, 16], "samples": 16},
                    kl_budgets=[])
    return {**defaults, **suite}


def _algo_fields(Obj) -> set:
    return {f.name for f in dataclasses.fields(Obj.Config)}


def _applicable(overrides: list, Obj) -> list:
    """Drop ``algo.KEY=…`` overrides for keys this objective's Config does not have."""
    keys = _algo_fields(Obj)
    out = []
    for o in overrides:
        k = o.split("=", 1)[0].lstrip("+~")
        if k.startswith("algo.") and k.split(".")[1] not in keys:
            continue
        out.append(o)
    return out


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")


def _conf_has(group: str, name: str) -> bool:
    from importlib.resources import files

    return (files("prefopt.conf") / group / f"{name}.yaml").is_file()


def classify(needs) -> str:
    """The leaderboard's view of an objective's declarations."""
    if needs.head == "scalar":
        return "reward_model"
    if needs.rollouts or needs.reward:
        return "online"
    if needs.data in ("paired", "unpaired"):
        return "offline"
    if needs.data == "demonstrations":
        return "sft"
    return "other"


def plan(suite: dict, work_dir: str) -> tuple[list, list]:
    """(jobs, notes): every job of the suite in stage order, and a line per method left off."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return _plan(suite, work_dir)
    with initialize_config_module(config_module="prefopt.conf", version_base=None):
        return _plan(suite, work_dir)


def _plan(suite: dict, work_dir: str) -> tuple[list, list]:
    from prefopt.registry import available, get_objective

    notes, jobs = [], []
    names = available()
    rm_algo = suite["reward_model"]
    if rm_algo not in names or classify(get_objective(rm_algo).needs) != "reward_model":
        raise UserError(f"suite {suite['name']}: reward_model '{rm_algo}' is not a registered objective with a scalar head")
    methods = []
    for name in names:
        Obj = get_objective(name)
        kind = classify(Obj.needs)
        if name in suite["exclude"]:
            notes.append(f"{name}: excluded by the suite ({kind})")
        elif name == rm_algo:
            continue
        elif kind in ("reward_model", "other"):
            notes.append(f"{name}: not run (needs {Obj.needs}; the board compares policies)")
        elif not _conf_has("algo", name):
            notes.append(f"{name}: not run (no conf/algo/{name}.yaml preset)")
        else:
            methods.append((name, Obj, kind))

    # Seed-major: an interrupted run leaves whole seeds, not a method missing everywhere.
    for seed in suite["seeds"]:
        for task in suite["tasks"]:
            base = [f"data={task}", *[f"{k}={seed}" for k in suite["seed_keys"]], *suite["common"]]
            meta0 = {"suite": suite["name"], "task": task, "seed": seed}
            # stage 1: the proxy reward model
            RM = get_objective(rm_algo)
            rm = Job(id=f"{task}-s{seed}-{rm_algo}", stage=1, kind="train",
                     overrides=[f"algo={rm_algo}", *base, *_applicable(suite["stage1"], RM)],
                     meta={**meta0, "method": rm_algo, "algo": rm_algo, "category": "reward_model", "reward": None,
                           "sweep": {}})
            jobs.append(rm)
            rm.hash = compose_hash(rm.overrides)
            rm_path = os.path.join(work_dir, "runs", rm.hash, "model")
            # stage 2: every method
            for name, Obj, kind in methods:
                extra = _applicable(suite["offline"] if kind != "online" else suite["online"], Obj)
                if kind == "online":
                    extra += _applicable(suite["online_task"].get(task, []), Obj)
                extra += _applicable(suite["algo"].get(name, []), Obj)
                rewards = [None]
                if kind == "online":
                    rewards = [("proxy", [f"reward=model", f"reward.path={rm_path}"])]
                    if task in suite["exact_reward"]:
                        rewards.append(("exact", [f"reward={suite['exact_reward'][task]}"]))
                sweep = suite["sweep"].get(name) or {}
                swept = [{}]
                for key, values in sweep.items():
                    swept = [{**p, key: v} for p in swept for v in values]
                for rw in rewards:
                    # the sweep applies to the pairs / proxy-reward runs; the exact-reward run uses the preset
                    for point in (swept if rw is None or rw[0] == "proxy" else [{}]):
                        sw = [f"{k}={_fmt(v)}" for k, v in point.items()]
                        label = name + ("" if rw is None or rw[0] == "proxy" else f"-{rw[0]}")
                        jid = _slug(f"{task}-s{seed}-{label}" + "".join(f"-{k.split('.')[-1]}{_fmt(v)}" for k, v in point.items()))
                        j = Job(id=jid, stage=2, kind="train",
                                overrides=[f"algo={name}", *base, *extra, *(rw[1] if rw else []), *sw],
                                meta={**meta0, "method": name, "algo": name, "category": kind,
                                      "reward": rw[0] if rw else None, "rm_hash": rm.hash if rw and rw[0] == "proxy" else None,
                                      "sweep": {k.split(".")[-1]: v for k, v in point.items()}})
                        j.hash = compose_hash(j.overrides)
                        jobs.append(j)
            # the best-of-n baseline
            cfg = compose(base)
            bon = suite["best_of_n"]
            spec = {"kind": "best_of_n", "testbed": OmegaConf.to_container(cfg.data.testbed, resolve=True),
                    "eval": OmegaConf.to_container(cfg.eval, resolve=True), "seed": seed, "ns": list(bon["ns"]),
                    "samples": int(bon["samples"]), "rm_hash": rm.hash, "rm_path": rm_path, "v": 1}
            jobs.append(Job(id=f"{task}-s{seed}-best_of_n", stage=2, kind="best_of_n", overrides=[],
                            meta={**meta0, "method": "best_of_n", "algo": None, "category": "baseline",
                                  "reward": "proxy", "rm_hash": rm.hash, "sweep": {}},
                            hash=spec_hash(spec), spec=spec))
    ids = [j.id for j in jobs]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise UserError(f"suite {suite['name']}: job ids collide: {sorted(dup)}")
    return jobs, notes


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def compose(overrides: list):
    from hydra import compose as _compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return _compose("train", overrides=list(overrides))
    with initialize_config_module(config_module="prefopt.conf", version_base=None):
        return _compose("train", overrides=list(overrides))


def compose_hash(overrides: list) -> str:
    from prefopt.train import config_hash

    return config_hash(compose(overrides))


def write_manifest(path: str, suite: dict, jobs: list) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump({"suite": suite, "jobs": [dataclasses.asdict(j) for j in jobs]}, f, indent=1)
    os.replace(tmp, path)


def read_manifest(path: str) -> dict:
    with open(path) as f:
        m = json.load(f)
    m["jobs"] = {j["id"]: Job(**j) for j in m["jobs"]}
    return m
