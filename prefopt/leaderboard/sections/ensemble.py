"""Reward-model ensembles against reward hacking: a suite's ``reward_ensemble`` planned as jobs (one ensemble
reward model per seed; per reward variant, the policy-gradient method at its fixed configuration and
best-of-n), and its results as a board section with ensemble.png (:mod:`prefopt.leaderboard.ensemble`)."""

from __future__ import annotations

import os

from prefopt.leaderboard import ensemble, plot, preregistration
from prefopt.leaderboard.jobs import Job, applicable, best_of_n_spec
from prefopt.leaderboard.section import Section, register
from prefopt.leaderboard.store import BEST_OF_N
from prefopt.leaderboard.suite import find_suite, suite_files
from prefopt.leaderboard.tables import md

# The suite whose results the section shows, and whose λ labels the uncertainty-weighted aggregate.
SUITE = "ensemble"


def _board(board):
    """(rows_of result, λ, pre-registration check) of the ensemble jobs' results on the suite's seed block; rows
    empty without any."""
    spec = find_suite(SUITE)
    recs = [r for r in board.loaded.ok if r["leaderboard"].get("suite") == SUITE]
    if spec is not None:
        recs = [r for r in recs if r["leaderboard"].get("seed") in preregistration.shown_seeds(spec)]
    agg = ensemble.rows_of(recs)
    version = agg.get("version")
    shown = [r for r in recs if (r.get("code_version"), r.get("cpu_capability")) == tuple(version or ())]
    check = preregistration.check(spec, suite_files().get(SUITE), shown) if agg["rows"] else None
    return agg, spec.reward_ensemble.lam if spec and spec.reward_ensemble else 1.0, check


@register("ensemble")
class RewardEnsembles(Section):
    order = 50

    def jobs(self, suite, plan) -> None:
        """The training jobs in seed order, then the best-of-n jobs (identified by their spec)."""
        from prefopt.objectives.registry import get_objective

        sec = suite.reward_ensemble
        if sec is None:
            return
        task, M = sec.task, int(sec.members)
        RM, PG = get_objective(suite.reward_model), get_objective(sec.pg.method)
        bon_jobs = []
        for seed in suite.seeds:
            base = plan.base(task, seed)
            meta = {"suite": suite.name, "task": task, "seed": seed, "category": "ensemble", "point": {}}
            rm = plan.add(Job(id=f"{task}-s{seed}-{suite.reward_model}-ensemble{M}", stage=1, kind="train",
                              overrides=[f"algo={suite.reward_model}", *base, *applicable(suite.stage1, RM),
                                         f"algo.ensemble_members={M}", f"algo.ensemble_resample={sec.resample}"],
                              meta={**meta, "method": suite.reward_model, "algo": suite.reward_model, "reward": None,
                                    "role": "ensemble_rm", "members": M}))
            member = [os.path.join(plan.run_dir(rm), "members", str(i), "model") for i in range(M)]
            for v in ensemble.variants(sec):
                paths, how = ([member[0]], "mean") if v == ensemble.VARIANTS_SINGLE else (member, v)
                rw = {"kind": "ensemble", "paths": paths, "aggregate": how, "ensemble_lambda": sec.lam,
                      "ensemble_normalize": True}
                ovr = ["reward=ensemble", f"reward.paths=[{','.join(paths)}]", f"reward.aggregate={how}",
                       f"reward.ensemble_lambda={sec.lam:g}"]
                vmeta = {**meta, "reward": "ensemble", "rm_hash": rm.hash, "role": "ensemble", "variant": v,
                         "members": len(paths)}
                plan.add(Job(id=f"{task}-s{seed}-{sec.pg.method}-ens-{v}", stage=3, kind="train",
                             overrides=[f"algo={sec.pg.method}", *base, *applicable(suite.online, PG),
                                        *applicable(list(sec.pg.overrides), PG), "eval.periodic_test=true", *ovr],
                             meta={**vmeta, "method": sec.pg.method, "algo": sec.pg.method}))
                bon_jobs.append(Job(id=f"{task}-s{seed}-{BEST_OF_N}-ens-{v}", stage=3, kind=BEST_OF_N, overrides=[],
                                    meta={**vmeta, "method": BEST_OF_N, "algo": None},
                                    spec=best_of_n_spec(base, seed, sec.best_of_n, rm.hash, None, reward=rw)))
        for j in bon_jobs:
            plan.add_spec(j)

    def shown_suites(self, board) -> list:
        return [SUITE]

    def markdown(self, board) -> list:
        agg, lam, check = board.memo("ensemble", lambda: _board(board))
        if not agg["rows"]:
            return []
        code, cpu = agg["version"]
        header = ensemble.HEADER
        lines = ["## Reward-model ensembles against reward hacking (suite `ensemble`, reviews)", "", ensemble.INTRO, "",
                 f"Code version `{code}`, CPU capability **{cpu}**." + (f" {check['line']}" if check else ""), "",
                 "![gold against √KL: single RM vs ensembles](ensemble.png)", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in ensemble.table(agg, lam)]
        return lines + [""]

    def plots(self, board) -> dict:
        agg, lam, _ = board.memo("ensemble", lambda: _board(board))
        return {"ensemble.png": plot.ensemble_png(agg, lam)} if agg["rows"] else {}
