"""The protocol as a list of jobs, derived from the registry and a suite (conf/leaderboard/NAME.yaml).

Per task and seed (tuning seeds and report seeds alike; seeds share nothing but the code):

- stage 1: the proxy reward model on tasks listed in ``proxy_tasks``: the suite's ``reward_model``
  objective (its ``needs.head`` is "scalar") trained on the testbed's preference pairs; its
  ``model/`` directory is a sequence-classification checkpoint at a path fixed by its identity;
  plus, for the pairs ablation, reward models trained on other numbers of pairs;
- stage 2, tuning: every other registered objective, read by its declarations, never by its name
  (``needs.rollouts`` or ``needs.reward`` → online, against the proxy reward model where the task has
  one and against the verifiable reward on tasks listed in ``exact_reward``; ``paired`` / ``unpaired``
  data → offline on the same pairs), over its grid — the suite's learning rates for the task × the
  values of the coefficient the objective declares (``Objective.tuning``) — on the tuning seeds;
- stage 3, report: the picks of :mod:`prefopt.leaderboard.select` (validation numbers only) on the
  report seeds, the best-of-n baseline, and the pairs ablation. Planned once the tuning results of a
  method are in (``run`` plans again after every stage).

Every job is a list of Hydra overrides of conf/train.yaml; its identity is a hash of the composed
config, the code version and the CPU capability (:mod:`prefopt.leaderboard.identity`), computed here
once (the job recomputes and checks it), so a job whose identity already has a result is skipped.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Optional

from omegaconf import OmegaConf

from prefopt.core.errors import UserError


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
    defaults = dict(seed_keys=["seed"], tuning_seeds=[], exclude=[], reward_model="reward", proxy_tasks=None,
                    exact_reward={}, lr_grid={}, pick_kl_budget=None, common=[], stage1=[], offline=[], online=[],
                    online_task={}, algo={}, best_of_n={"ns": [1, 2, 4, 8, 16], "samples": 16}, kl_budgets=[],
                    ablation=None, board_notes=[], reward_ensemble=None, methods=None, tune_coefficients=True,
                    extend_grid_edges=True, divergence={}, budget_note=None, tiers=[], transfer=None)
    suite = {**defaults, **suite}
    if suite["proxy_tasks"] is None:
        suite["proxy_tasks"] = list(suite["tasks"])
    overlap = set(suite["seeds"]) & set(suite["tuning_seeds"])
    if overlap:
        raise UserError(f"suite {name_or_path}: seeds {sorted(overlap)} are both tuning and report seeds; accepted: "
                        "disjoint lists (a number that chose a configuration is never reported as its result)")
    for task in suite["tasks"]:
        lrs = suite["lr_grid"].get(task, suite["lr_grid"].get("default"))
        if not lrs:
            raise UserError(f"suite {name_or_path}: lr_grid has no learning rates for task {task}; accepted: "
                            f"lr_grid: {{{task}: [..], default: [..]}}")
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


def plan(suite: dict, work_dir: str, results_dir: Optional[str] = None) -> tuple[list, list]:
    """(jobs, notes): every job of the suite that can be planned now, in stage order, and notes (a
    line per method left off, and per method whose report runs wait for its tuning results)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return _plan(suite, work_dir, results_dir)
    with initialize_config_module(config_module="prefopt.conf", version_base=None):
        return _plan(suite, work_dir, results_dir)


def methods_of(suite: dict) -> tuple[list, list]:
    """([(name, Objective, kind)], notes): the registered objectives the suite runs."""
    from prefopt.objectives.registry import available, get_objective

    notes, methods = [], []
    rm_algo = suite["reward_model"]
    if rm_algo not in available() or classify(get_objective(rm_algo).needs) != "reward_model":
        raise UserError(f"suite {suite['name']}: reward_model '{rm_algo}' is not a registered objective with a scalar head")
    only = suite.get("methods")
    if only is not None:
        unknown = [m for m in only if m not in available()]
        if unknown:
            raise UserError(f"suite {suite['name']}: methods {unknown} are not registered objectives; accepted: "
                            f"{', '.join(available())}")
    for name in available():
        Obj = get_objective(name)
        kind = classify(Obj.needs)
        if only is not None and name not in only and name != rm_algo:
            notes.append(f"{name}: not in the suite's methods ({kind})")
        elif any(fnmatch.fnmatchcase(name, pat) for pat in suite["exclude"]):  # names or patterns ("*": none)
            notes.append(f"{name}: excluded by the suite ({kind})")
        elif name == rm_algo:
            continue
        elif kind in ("reward_model", "other"):
            notes.append(f"{name}: not run (needs {Obj.needs}; the board compares policies)")
        elif not _conf_has("algo", name):
            notes.append(f"{name}: not run (no conf/algo/{name}.yaml preset)")
        else:
            methods.append((name, Obj, kind))
    return methods, notes


def lrs_of(suite: dict, task: str) -> list:
    return [float(lr) for lr in suite["lr_grid"].get(task, suite["lr_grid"].get("default"))]


def grid_of(suite: dict, task: str, Obj, lrs: Optional[list] = None) -> list:
    """The tuning grid of one method on one task: [{override key: value}] in grid order: the suite's
    learning rates (or ``lrs``) × the values of the method's declared coefficient (unless the suite
    sets ``tune_coefficients: false``: then the preset's value)."""
    points = [{"trainer.lr": float(lr)} for lr in (lrs_of(suite, task) if lrs is None else lrs)]
    if not suite.get("tune_coefficients", True):
        return points
    for key, values in (getattr(Obj, "tuning", None) or {}).items():
        if key not in _algo_fields(Obj):
            raise UserError(f"{Obj.__name__}.tuning names '{key}', which its Config does not have")
        points = [{**p, f"algo.{key}": v} for p in points for v in values]
    return points


def _short(point: dict) -> dict:
    return {k.split(".")[-1]: v for k, v in point.items()}


def _plan(suite: dict, work_dir: str, results_dir: Optional[str]) -> tuple[list, list]:
    from prefopt.leaderboard import select, store
    from prefopt.leaderboard.identity import code_version
    from prefopt.objectives.registry import get_objective
    from prefopt.cli.summary import cpu_capability

    code, cpu = code_version(), cpu_capability()
    methods, notes = methods_of(suite)
    jobs = []
    rm_algo = suite["reward_model"]
    RM = get_objective(rm_algo)
    abl = suite.get("ablation") or None
    report_seeds, tuning_seeds = list(suite["seeds"]), list(suite["tuning_seeds"]) or list(suite["seeds"])
    if not suite["tuning_seeds"] and methods:
        notes.append("no tuning seeds: the grid runs on the report seeds (selection and report share seeds)")

    by_hash = {}

    def add(job: Job) -> Job:
        job.hash = job_identity(job.overrides, code, cpu)
        job.meta.update(code_version=code, cpu_capability=cpu)
        if job.hash in by_hash:
            # The same run serves another role too (the ablation's default pair count is the
            # standard reward model; a report pick can be the ablation's point): run it once.
            first = by_hash[job.hash]
            first.meta.setdefault("also", []).append({k: v for k, v in job.meta.items()
                                                      if k not in ("code_version", "cpu_capability")})
            return first
        by_hash[job.hash] = job
        jobs.append(job)
        return job

    def base_of(task, seed):
        return [f"data={task}", *[f"{k}={seed}" for k in suite["seed_keys"]], *suite["common"]]

    def rm_job(task, seed, pair_prompts=None):
        extra = [] if pair_prompts is None else [f"data.testbed.pair_prompts={pair_prompts}"]
        suffix = "" if pair_prompts is None else f"-pairs{pair_prompts}"
        return add(Job(id=f"{task}-s{seed}-{rm_algo}{suffix}", stage=1, kind="train",
                       overrides=[f"algo={rm_algo}", *base_of(task, seed), *_applicable(suite["stage1"], RM), *extra],
                       meta={"suite": suite["name"], "task": task, "seed": seed, "method": rm_algo, "algo": rm_algo,
                             "category": "reward_model", "reward": None, "role": "reward_model", "point": {},
                             "pair_prompts": pair_prompts}))

    def method_job(task, seed, name, Obj, kind, rw, point, role, rm, stage, extra_meta=None, tag=""):
        extra = _applicable(suite["offline"] if kind != "online" else suite["online"], Obj)
        if kind == "online":
            extra += _applicable(suite["online_task"].get(task, []), Obj)
        extra += _applicable(suite["algo"].get(name, []), Obj)
        rw_ovr = []
        if rw == "proxy":
            rw_ovr = ["reward=model", f"reward.path={os.path.join(work_dir, 'runs', rm.hash, 'model')}"]
        elif rw == "exact":
            rw_ovr = [f"reward={suite['exact_reward'][task]}"]
        pt = [f"{k}={_fmt(v)}" for k, v in point.items()]
        label = name + ("" if rw in (None, "proxy") else f"-{rw}")
        jid = _slug(f"{task}-s{seed}-{label}" + "".join(f"-{k}{_fmt(v)}" for k, v in _short(point).items())
                    + tag)
        return add(Job(id=jid, stage=stage, kind="train",
                       overrides=[f"algo={name}", *base_of(task, seed), *extra, *rw_ovr, *pt],
                       meta={"suite": suite["name"], "task": task, "seed": seed, "method": name, "algo": name,
                             "category": kind, "reward": rw, "rm_hash": rm.hash if rw == "proxy" else None,
                             "role": role, "point": _short(point), **(extra_meta or {})}))

    def rewards_of(task, kind):
        if kind != "online":
            return [None]
        out = ["proxy"] if task in suite["proxy_tasks"] else []
        return out + (["exact"] if task in suite["exact_reward"] else [])

    # Seed-major within each stage: an interrupted run leaves whole seeds, not a method missing everywhere.
    rms = {}
    for seed in tuning_seeds + [s for s in report_seeds if s not in tuning_seeds]:
        for task in suite["tasks"]:
            if task in suite["proxy_tasks"]:
                rms[(task, seed)] = rm_job(task, seed)
    if abl:
        for seed in abl["seeds"]:
            for n in abl["pair_prompts"]:
                rms[(abl["task"], seed, n)] = rm_job(abl["task"], seed, n)
    # stage 2: the grid on the tuning seeds
    grids = {}
    for seed in tuning_seeds:
        for task in suite["tasks"]:
            for name, Obj, kind in methods:
                for rw in rewards_of(task, kind):
                    grid = grid_of(suite, task, Obj)
                    for i, point in enumerate(grid):
                        j = method_job(task, seed, name, Obj, kind, rw, point, "tuning", rms.get((task, seed)), 2)
                        grids.setdefault((task, name, rw), (grid, [[] for _ in grid]))[1][i].append(j)
    # stage 3: the picks on the report seeds (once the grid's results are in), best-of-n, the ablation
    loaded = store.load_results(results_dir) if results_dir else None
    # A failed tuning run counts as in (select treats it as diverged), so that one crash does not hold a
    # method's report runs back; `run` retries it next time.
    by_id = {r.get("result_id") or r["config_hash"]: r for r in ((loaded.failed + loaded.ok) if loaded else [])}
    objs = {name: (Obj, kind) for name, Obj, kind in methods}

    def scored_of(task, grid, grid_jobs, label):
        recs = [[by_id[j.hash] for j in js if j.hash in by_id] for js in grid_jobs]
        if any(len(r) < len(js) for r, js in zip(recs, grid_jobs)):
            done = sum(len(r) for r in recs)
            notes.append(f"{label}: report runs wait for its tuning results ({done}/{sum(len(js) for js in grid_jobs)} in)")
            return None
        return select.grid_scores(grid, recs, *select.divergence_rule(suite, task))

    picks_of = {}
    for (task, name, rw), (grid, grid_jobs) in grids.items():
        label = f"{task}/{name}{'' if rw in (None, 'proxy') else '-' + rw}"
        scored = scored_of(task, grid, grid_jobs, label)
        if scored is None:
            continue
        chosen = select.choose(scored, suite["pick_kl_budget"])
        side = select.edge_of(chosen, scored, lrs_of(suite, task)) if suite.get("extend_grid_edges", True) else None
        if side is not None:
            # One more learning rate beyond the edge the pick sits on, on the tuning seeds; then choose again
            # over the whole grid (the extension is not extended again).
            Obj, kind = objs[name]
            lr = select.extend_lr(lrs_of(suite, task), side)
            ext = grid_of(suite, task, Obj, lrs=[lr])
            ext_jobs = [[] for _ in ext]
            for seed in tuning_seeds:
                for i, point in enumerate(ext):
                    ext_jobs[i].append(method_job(task, seed, name, Obj, kind, rw, point, "tuning",
                                                  rms.get((task, seed)), 2, {"extension": side}))
            whole = sorted(zip(grid + ext, grid_jobs + ext_jobs), key=lambda gj: gj[0]["trainer.lr"])
            scored = scored_of(task, [g for g, _ in whole], [js for _, js in whole], label + f" (grid extended {side} "
                               f"to lr {lr:g})")
            if scored is None:
                continue
            chosen = select.choose(scored, suite["pick_kl_budget"])
        if chosen["best"] is None:
            why = "every grid point diverged on a tuning seed" if any(s["seeds"] for s in scored) else \
                "no grid point has a validation score"
            notes.append(f"{label}: {why}; nothing to report")
            continue
        picks_of[(task, name, rw)] = (scored, chosen)
    for seed in report_seeds:
        for task in suite["tasks"]:
            for name, Obj, kind in methods:
                for rw in rewards_of(task, kind):
                    if (task, name, rw) not in picks_of:
                        continue
                    scored, chosen = picks_of[(task, name, rw)]
                    made = {}
                    for pick in ("best", "at_budget"):
                        c = chosen[pick]
                        if c is None:
                            continue
                        pkey = tuple(sorted(c["point"].items()))
                        if pkey in made:  # both picks chose the same point: one run serves both
                            made[pkey].meta["picks"].append(pick)
                            continue
                        made[pkey] = method_job(task, seed, name, Obj, kind, rw, c["point"], "report",
                                                rms.get((task, seed)), 3,
                                                {"picks": [pick], "grid": [{**g, "point": _short(g["point"])} for g in scored]})
            # the best-of-n baseline (from π_SFT; n chosen on validation inside the job)
            bon = suite["best_of_n"]
            if not bon:
                continue
            cfg = compose(base_of(task, seed))
            rm = rms.get((task, seed))
            rm_path = os.path.join(work_dir, "runs", rm.hash, "model") if rm else None
            spec = {"kind": "best_of_n", "testbed": OmegaConf.to_container(cfg.data.testbed, resolve=True),
                    "eval": OmegaConf.to_container(cfg.eval, resolve=True), "seed": seed, "ns": list(bon["ns"]),
                    "samples": int(bon["samples"]), "rm_hash": rm.hash if rm else None, "rm_path": rm_path, "v": 2}
            j = Job(id=f"{task}-s{seed}-best_of_n", stage=3, kind="best_of_n", overrides=[],
                    meta={"suite": suite["name"], "task": task, "seed": seed, "method": "best_of_n", "algo": None,
                          "category": "baseline", "reward": "proxy" if rm else "gold", "rm_hash": rm.hash if rm else None,
                          "role": "report", "point": {}, "code_version": code, "cpu_capability": cpu},
                    spec=spec)
            j.hash = result_identity(spec_hash(spec), code, cpu)
            jobs.append(j)
    if abl:
        key = (abl["task"], abl["method"], "proxy")
        if key in picks_of:
            _, chosen = picks_of[key]
            Obj = get_objective(abl["method"])
            point = {"trainer.lr": chosen["best"]["point"]["trainer.lr"]}
            for k, vals in (getattr(Obj, "tuning", None) or {}).items():
                point[f"algo.{k}"] = min(vals)  # the weakest regularisation: where a peak shows first
            for seed in abl["seeds"]:
                for n in abl["pair_prompts"]:
                    # Only the reward model differs (trained on n pairs); the policy's prompts do not.
                    method_job(abl["task"], seed, abl["method"], Obj, "online", "proxy", point, "ablation",
                               rms[(abl["task"], seed, n)], 3, {"pair_prompts": n}, tag=f"-rmpairs{n}")
        elif abl["method"] not in [m[0] for m in methods]:
            notes.append(f"ablation: method {abl['method']} is not run by the suite")
    if suite.get("reward_ensemble"):
        from prefopt.leaderboard import ensemble

        jobs += ensemble.plan_jobs(suite, work_dir, add, base_of, code, cpu)
    ids = [j.id for j in jobs]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise UserError(f"suite {suite['name']}: job ids collide: {sorted(dup)}")
    return jobs, notes


def result_identity(config_or_spec_hash: str, code: str, cpu: str) -> str:
    from prefopt.leaderboard.identity import result_id

    return result_id(config_or_spec_hash, code, cpu)


def job_identity(overrides: list, code: str, cpu: str) -> str:
    return result_identity(compose_hash(overrides), code, cpu)


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
    from prefopt.cli.resume import config_hash

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
