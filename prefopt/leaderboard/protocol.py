"""The protocol as jobs, derived from the registry and a suite (the main table's part of a plan).

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
"""

from __future__ import annotations

import fnmatch
from importlib.resources import files
from typing import Optional

from prefopt.core.errors import UserError
from prefopt.leaderboard import select
from prefopt.leaderboard.jobs import Job, Planner, algo_fields, applicable, best_of_n_spec, fmt, slug
from prefopt.leaderboard.store import BEST_OF_N
from prefopt.leaderboard.suite import Suite


def _conf_has(group: str, name: str) -> bool:
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


def methods_of(suite: Suite) -> tuple[list, list]:
    """([(name, Objective, kind)], notes): the registered objectives the suite runs."""
    from prefopt.objectives.registry import available, get_objective

    notes, methods = [], []
    rm_algo = suite.reward_model
    if rm_algo not in available() or classify(get_objective(rm_algo).needs) != "reward_model":
        raise UserError(f"suite {suite.name}: reward_model '{rm_algo}' is not a registered objective with a scalar head")
    only = suite.methods
    if only is not None:
        unknown = [m for m in only if m not in available()]
        if unknown:
            raise UserError(f"suite {suite.name}: methods {unknown} are not registered objectives; accepted: "
                            f"{', '.join(available())}")
    for name in available():
        Obj = get_objective(name)
        kind = classify(Obj.needs)
        if only is not None and name not in only and name != rm_algo:
            notes.append(f"{name}: not in the suite's methods ({kind})")
        elif any(fnmatch.fnmatchcase(name, pat) for pat in suite.exclude):  # names or patterns ("*": none)
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


def grid_of(suite: Suite, task: str, Obj, lrs: Optional[list] = None) -> list:
    """The tuning grid of one method on one task: [{override key: value}] in grid order: the suite's
    learning rates (or ``lrs``) × the values of the method's declared coefficient (unless the suite
    sets ``tune_coefficients: false``: then the preset's value)."""
    points = [{"trainer.lr": float(lr)} for lr in (suite.lrs(task) if lrs is None else lrs)]
    if not suite.tune_coefficients:
        return points
    for key, values in Obj.tuning.items():
        if key not in algo_fields(Obj):
            raise UserError(f"{Obj.__name__}.tuning names '{key}', which its Config does not have")
        points = [{**p, f"algo.{key}": v} for p in points for v in values]
    return points


def _short(point: dict) -> dict:
    return {k.split(".")[-1]: v for k, v in point.items()}


def plan_jobs(plan: Planner) -> None:
    """Add the protocol's jobs of ``plan.suite`` to ``plan``, in stage order, seed-major within a stage (an
    interrupted run leaves whole seeds, not a method missing everywhere)."""
    from prefopt.objectives.registry import get_objective

    suite = plan.suite
    methods, notes = methods_of(suite)
    plan.notes += notes
    notes = plan.notes
    rm_algo = suite.reward_model
    RM = get_objective(rm_algo)
    abl = suite.ablation
    report_seeds, tuning_seeds = list(suite.seeds), list(suite.tuning_seeds) or list(suite.seeds)
    if not suite.tuning_seeds and methods:
        notes.append("no tuning seeds: the grid runs on the report seeds (selection and report share seeds)")

    def rm_job(task, seed, pair_prompts=None):
        extra = [] if pair_prompts is None else [f"data.testbed.pair_prompts={pair_prompts}"]
        suffix = "" if pair_prompts is None else f"-pairs{pair_prompts}"
        return plan.add(Job(id=f"{task}-s{seed}-{rm_algo}{suffix}", stage=1, kind="train",
                            overrides=[f"algo={rm_algo}", *plan.base(task, seed), *applicable(suite.stage1, RM), *extra],
                            meta={"suite": suite.name, "task": task, "seed": seed, "method": rm_algo, "algo": rm_algo,
                                  "category": "reward_model", "reward": None, "role": "reward_model", "point": {},
                                  "pair_prompts": pair_prompts}))

    def method_job(task, seed, name, Obj, kind, rw, point, role, rm, stage, extra_meta=None, tag=""):
        extra = applicable(suite.offline if kind != "online" else suite.online, Obj)
        if kind == "online":
            extra += applicable(suite.online_task.get(task, []), Obj)
        extra += applicable(suite.algo.get(name, []), Obj)
        rw_ovr = []
        if rw == "proxy":
            rw_ovr = ["reward=model", f"reward.path={plan.model_path(rm)}"]
        elif rw == "exact":
            rw_ovr = [f"reward={suite.exact_reward[task]}"]
        pt = [f"{k}={fmt(v)}" for k, v in point.items()]
        label = name + ("" if rw in (None, "proxy") else f"-{rw}")
        jid = slug(f"{task}-s{seed}-{label}" + "".join(f"-{k}{fmt(v)}" for k, v in _short(point).items()) + tag)
        return plan.add(Job(id=jid, stage=stage, kind="train",
                            overrides=[f"algo={name}", *plan.base(task, seed), *extra, *rw_ovr, *pt],
                            meta={"suite": suite.name, "task": task, "seed": seed, "method": name, "algo": name,
                                  "category": kind, "reward": rw, "rm_hash": rm.hash if rw == "proxy" else None,
                                  "role": role, "point": _short(point), **(extra_meta or {})}))

    def rewards_of(task, kind):
        if kind != "online":
            return [None]
        out = ["proxy"] if task in suite.proxy_tasks else []
        return out + (["exact"] if task in suite.exact_reward else [])

    rms = {}
    for seed in tuning_seeds + [s for s in report_seeds if s not in tuning_seeds]:
        for task in suite.tasks:
            if task in suite.proxy_tasks:
                rms[(task, seed)] = rm_job(task, seed)
    if abl:
        for seed in abl.seeds:
            for n in abl.pair_prompts:
                rms[(abl.task, seed, n)] = rm_job(abl.task, seed, n)
    # stage 2: the grid on the tuning seeds
    grids = {}
    for seed in tuning_seeds:
        for task in suite.tasks:
            for name, Obj, kind in methods:
                for rw in rewards_of(task, kind):
                    grid = grid_of(suite, task, Obj)
                    for i, point in enumerate(grid):
                        j = method_job(task, seed, name, Obj, kind, rw, point, "tuning", rms.get((task, seed)), 2)
                        grids.setdefault((task, name, rw), (grid, [[] for _ in grid]))[1][i].append(j)
    # stage 3: the picks on the report seeds (once the grid's results are in), best-of-n, the ablation.
    # A failed tuning run counts as in (select treats it as diverged), so that one crash does not hold a
    # method's report runs back; `run` retries it next time.
    loaded = plan.results
    by_id = {r.get("result_id") or r["config_hash"]: r for r in ((loaded.failed + loaded.ok) if loaded else [])}
    objs = {name: (Obj, kind) for name, Obj, kind in methods}

    def scored_of(task, grid, grid_jobs, label):
        recs = [[by_id[j.hash] for j in js if j.hash in by_id] for js in grid_jobs]
        if any(len(r) < len(js) for r, js in zip(recs, grid_jobs)):
            done = sum(len(r) for r in recs)
            notes.append(f"{label}: report runs wait for its tuning results ({done}/{sum(len(js) for js in grid_jobs)} in)")
            return None
        return select.grid_scores(grid, recs, *suite.divergence.rule(task))

    picks_of = {}
    for (task, name, rw), (grid, grid_jobs) in grids.items():
        label = f"{task}/{name}{'' if rw in (None, 'proxy') else '-' + rw}"
        scored = scored_of(task, grid, grid_jobs, label)
        if scored is None:
            continue
        chosen = select.choose(scored, suite.pick_kl_budget)
        side = select.edge_of(chosen, scored, suite.lrs(task)) if suite.extend_grid_edges else None
        if side is not None:
            # One more learning rate beyond the edge the pick sits on, on the tuning seeds; then choose again
            # over the whole grid (the extension is not extended again).
            Obj, kind = objs[name]
            lr = select.extend_lr(suite.lrs(task), side)
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
            chosen = select.choose(scored, suite.pick_kl_budget)
        if chosen["best"] is None:
            why = "every grid point diverged on a tuning seed" if any(s["seeds"] for s in scored) else \
                "no grid point has a validation score"
            notes.append(f"{label}: {why}; nothing to report")
            continue
        picks_of[(task, name, rw)] = (scored, chosen)
    for seed in report_seeds:
        for task in suite.tasks:
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
            if not suite.best_of_n:
                continue
            rm = rms.get((task, seed))
            rm_hash = rm.hash if rm else None
            spec = best_of_n_spec(plan.base(task, seed), seed, suite.best_of_n, rm_hash,
                                  plan.model_path(rm) if rm else None)
            plan.add_spec(Job(id=f"{task}-s{seed}-{BEST_OF_N}", stage=3, kind=BEST_OF_N, overrides=[],
                              meta={"suite": suite.name, "task": task, "seed": seed, "method": BEST_OF_N, "algo": None,
                                    "category": "baseline", "reward": "proxy" if rm else "gold", "rm_hash": rm_hash,
                                    "role": "report", "point": {}}, spec=spec))
    if abl:
        key = (abl.task, abl.method, "proxy")
        if key in picks_of:
            _, chosen = picks_of[key]
            Obj = get_objective(abl.method)
            point = {"trainer.lr": chosen["best"]["point"]["trainer.lr"]}
            for k, vals in Obj.tuning.items():
                point[f"algo.{k}"] = min(vals)  # the weakest regularisation: where a peak shows first
            for seed in abl.seeds:
                for n in abl.pair_prompts:
                    # Only the reward model differs (trained on n pairs); the policy's prompts do not.
                    method_job(abl.task, seed, abl.method, Obj, "online", "proxy", point, "ablation",
                               rms[(abl.task, seed, n)], 3, {"pair_prompts": n}, tag=f"-rmpairs{n}")
        elif abl.method not in [m[0] for m in methods]:
            notes.append(f"ablation: method {abl.method} is not run by the suite")
