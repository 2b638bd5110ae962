"""Building blocks of a plan: a :class:`Job`, its identity, and :class:`Planner`, the list of jobs a
plan builds (each section of the board adds its own jobs through it, :mod:`prefopt.leaderboard.sections`).

Every training job is a list of Hydra overrides of conf/train.yaml; its identity is a hash of the composed
config, the code version and the CPU capability (:mod:`prefopt.leaderboard.identity`), computed here once
(the job recomputes and checks it), so a job whose identity already has a result is skipped. A best-of-n
job is identified by its spec instead (:func:`best_of_n_spec`).
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

from prefopt.core import files
from prefopt.leaderboard.store import BEST_OF_N
from prefopt.leaderboard.suite import BestOfN, Suite

# Raised in best_of_n_spec when the spec's meaning changes, so that a changed baseline is a new result.
BEST_OF_N_SPEC_VERSION = 2


@dataclass
class Job:
    id: str
    stage: int
    kind: str  # "train" | BEST_OF_N
    overrides: list
    meta: dict
    hash: str = ""
    spec: dict = field(default_factory=dict)  # best-of-n: its own settings


def compose(overrides: list):
    """conf/train.yaml composed with ``overrides``."""
    from hydra import compose as _compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return _compose("train", overrides=list(overrides))
    with initialize_config_module(config_module="prefopt.conf", version_base=None):
        return _compose("train", overrides=list(overrides))


_BASES: dict = {}  # group choices → their composed config (planning composes ~1000 jobs of few methods)


def compose_fast(overrides: list):
    """:func:`compose`, with the config of the overrides that choose config groups (``algo=dpo``,
    ``hydra/…``, ``+key``, ``~key``, anything with a package) composed once and reused: a plain
    ``key=value`` of a key that config has is then set on a copy as Hydra sets it after composing
    (``OmegaConf.update(…, merge=True)`` with the parser's value). Planning composes a config per job to
    hash it, and a full Hydra compose costs ~0.25 s; tests/test_leaderboard_protocol.py checks that every
    suite's jobs hash the same both ways."""
    import copy

    from hydra.core.override_parser.types import OverrideType
    from omegaconf import OmegaConf, open_dict

    from prefopt.run.config import GROUPS, parse_overrides

    parsed = parse_overrides(overrides)
    structural = [o.input_line for o in parsed
                  if o.type != OverrideType.CHANGE or o.package is not None or o.is_sweep_override()
                  or o.key_or_group in GROUPS or o.key_or_group.startswith("hydra")]
    key = tuple(structural)
    if key not in _BASES:
        _BASES[key] = compose(structural)
    base = _BASES[key]
    values = [o for o in parsed if o.input_line not in structural]
    if any(OmegaConf.select(base, o.key_or_group, default="__missing__") == "__missing__"
           and not _is_null(base, o.key_or_group) for o in values):
        return compose(overrides)  # Hydra's own message for a key the config lacks
    cfg = copy.deepcopy(base)
    with open_dict(cfg):
        for o in values:
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
    return cfg


def _is_null(cfg, key: str) -> bool:
    from omegaconf import OmegaConf

    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return node is not None and hasattr(node, "keys") and leaf in node.keys()


def compose_hash(overrides: list) -> str:
    from prefopt.run.resume import config_hash

    return config_hash(compose_fast(overrides))


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def result_identity(config_or_spec_hash: str, code: str, cpu: str) -> str:
    from prefopt.leaderboard.identity import result_id

    return result_id(config_or_spec_hash, code, cpu)


def job_identity(overrides: list, code: str, cpu: str) -> str:
    return result_identity(compose_hash(overrides), code, cpu)


def algo_fields(Obj) -> set:
    return {f.name for f in dataclasses.fields(Obj.Config)}


def applicable(overrides: list, Obj) -> list:
    """Drop ``algo.KEY=…`` overrides for keys this objective's Config does not have, so that a suite's
    per-kind overrides fit every method, including one registered later."""
    keys = algo_fields(Obj)
    out = []
    for o in overrides:
        k = o.split("=", 1)[0].lstrip("+~")
        if k.startswith("algo.") and k.split(".")[1] not in keys:
            continue
        out.append(o)
    return out


def fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-")


def best_of_n_spec(overrides: list, seed: int, bon: BestOfN, rm_hash: Optional[str], rm_path: Optional[str],
                   reward: Optional[dict] = None) -> dict:
    """A best-of-n job's settings (and identity): the testbed and evaluation of conf/train.yaml under
    ``overrides``, the n's, and what picks (a reward model's path, or a reward source of conf/reward)."""
    cfg = compose(overrides)
    spec = {"kind": BEST_OF_N, "testbed": OmegaConf.to_container(cfg.data.testbed, resolve=True),
            "eval": OmegaConf.to_container(cfg.eval, resolve=True), "seed": seed, "ns": list(bon.ns),
            "samples": int(bon.samples), "rm_hash": rm_hash, "rm_path": rm_path}
    if reward is not None:
        spec["reward"] = reward
    spec["v"] = BEST_OF_N_SPEC_VERSION
    return spec


class Planner:
    """The jobs of one plan, in the order they were added, each identity once; plus the plan's notes."""

    def __init__(self, suite: Suite, work_dir: str, results, code: str, cpu: str):
        self.suite, self.work_dir, self.results = suite, work_dir, results  # results: store.Loaded or None
        self.code, self.cpu = code, cpu
        self.jobs: list = []
        self.notes: list = []
        self._by_hash: dict = {}

    def add(self, job: Job) -> Job:
        """List a training job under its identity; a job whose identity is listed already joins it (in
        ``meta["also"]``) and the listed one is returned."""
        job.hash = job_identity(job.overrides, self.code, self.cpu)
        job.meta.update(code_version=self.code, cpu_capability=self.cpu)
        if job.hash in self._by_hash:
            # The same run serves another role too (the ablation's default pair count is the
            # standard reward model; a report pick can be the ablation's point): run it once.
            first = self._by_hash[job.hash]
            first.meta.setdefault("also", []).append({k: v for k, v in job.meta.items()
                                                      if k not in ("code_version", "cpu_capability")})
            return first
        self._by_hash[job.hash] = job
        self.jobs.append(job)
        return job

    def add_spec(self, job: Job) -> Job:
        """List a job identified by its spec (best-of-n)."""
        job.hash = result_identity(spec_hash(job.spec), self.code, self.cpu)
        job.meta.update(code_version=self.code, cpu_capability=self.cpu)
        self.jobs.append(job)
        return job

    def base(self, task: str, seed: int) -> list:
        """The overrides every run of ``task`` and ``seed`` starts from."""
        return [f"data={task}", *[f"{k}={seed}" for k in self.suite.seed_keys], *self.suite.common,
                *self.suite.common_task.get(task, [])]

    def run_dir(self, job: Job) -> str:
        return os.path.join(self.work_dir, "runs", job.hash)

    def model_path(self, job: Job) -> str:
        """Where a training job's model lands (a reward model's path for the runs that use it)."""
        return os.path.join(self.run_dir(job), "model")


def write_manifest(path: str, suite: Suite, jobs: list, results_dir: str, work_dir: str) -> None:
    files.write_json(path, {"suite": dataclasses.asdict(suite), "results_dir": results_dir, "work_dir": work_dir,
                            "jobs": [dataclasses.asdict(j) for j in jobs]}, indent=1)


def read_manifest(path: str) -> dict:
    with open(path) as f:
        m = json.load(f)
    m["jobs"] = {j["id"]: Job(**j) for j in m["jobs"]}
    return m
