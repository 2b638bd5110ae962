"""Two boards' rankings of the same methods, compared: the toy task against the real checkpoint
(does the testbed's ranking predict SmolLM2's?), and a board against its rerun on another CPU kind.

Each side is a task of an aggregate (:func:`prefopt.leaderboard.aggregate.aggregate`). Methods are
matched by their row label (method and reward source: ``grpo (exact)`` on toy arith is GRPO with the
exact-match reward, as on smol_arith); baselines without a trained policy (best-of-n) and the oracle
are left out. Each method's number is its headline test gold per report seed; the agreement is
Kendall's τ-b of the two boards' mean test gold (ties honoured) with its permutation p-value, the
number of methods and the smallest |τ| that many methods could show at p < 0.05
(:func:`prefopt.leaderboard.stats.tau_test`). Two boards over the same seeds (a rerun on another CPU
kind: ``paired=True``) add an interval that resamples the seeds jointly for both
(:func:`prefopt.leaderboard.stats.tau_paired`). Ranks shown side by side are within the common
methods, by mean (1 = best), next to each board's own standing against its best.
"""

from __future__ import annotations

from typing import Optional

from prefopt.leaderboard.stats import mean_ci, tau_paired, tau_test


def per_seed_gold(task_agg: dict, seeds: Optional[set] = None) -> dict:
    """label → {seed: test gold} of each trained method's headline configuration (``best`` pick)."""
    out = {}
    for r in task_agg["rows"]:
        if r.best is None or r.reward == "gold":
            continue
        vals = {s: v for s, v in r.best.per_seed.get("gold", {}).items() if seeds is None or s in seeds}
        if vals:
            out[r.label] = vals
    return out


def _mean_ranks(means: dict) -> dict:
    order = sorted(means, key=lambda m: -means[m])
    return {m: 1 + sum(1 for o in order if means[o] > means[m]) for m in order}


def compare(a_task: dict, b_task: dict, seeds_a: Optional[set] = None, seeds_b: Optional[set] = None,
            paired: bool = False) -> Optional[dict]:
    """{"tau": tau_test (paired: tau_paired) result, "rows": [...], "only_a": [...], "only_b": [...]}, or None
    without two common methods or with a constant side. A row: label, each side's Estimate of test gold,
    rank by mean among the common methods, the board's own standing (vs_best), the chosen configuration."""
    a, b = per_seed_gold(a_task, seeds_a), per_seed_gold(b_task, seeds_b)
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    est_a = {m: mean_ci(list(a[m].values())) for m in common}
    est_b = {m: mean_ci(list(b[m].values())) for m in common}
    if paired:
        tau = tau_paired({m: a[m] for m in common}, {m: b[m] for m in common})
    else:
        tau = tau_test([est_a[m].mean for m in common], [est_b[m].mean for m in common])
    if tau is None:
        return None
    rank_a, rank_b = _mean_ranks({m: est_a[m].mean for m in common}), _mean_ranks({m: est_b[m].mean for m in common})
    rows_a, rows_b = {r.label: r for r in a_task["rows"]}, {r.label: r for r in b_task["rows"]}
    rows = [{"label": m, "a": est_a[m], "b": est_b[m], "rank_a": rank_a[m], "rank_b": rank_b[m],
             "vs_best_a": rows_a[m].vs_best, "vs_best_b": rows_b[m].vs_best,
             "pick_a": dict(rows_a[m].chosen.get("best") or {}), "pick_b": dict(rows_b[m].chosen.get("best") or {})}
            for m in sorted(common, key=lambda m: (rank_a[m], m))]
    return {"tau": tau, "rows": rows, "only_a": sorted(set(a) - set(b)), "only_b": sorted(set(b) - set(a))}


def verdict(tau: dict) -> str:
    """The plain reading of a τ-b, its permutation p-value and what its number of methods can show."""
    n, t, p, tmin = tau["n_methods"], tau["tau"], tau["p"], tau["tau_min"]
    head = f"Kendall τ-b = {t:+.2f} over {n} methods, permutation p = {p:.3f}"
    if "lo" in tau:
        head += f", 95% interval [{tau['lo']:+.2f}, {tau['hi']:+.2f}] (percentile bootstrap of the {tau['n_seeds']} seeds, paired)"
    reach = (f"the smallest |τ| {n} methods can show at p < 0.05 is {tmin:.2f}" if tmin is not None
             else f"no τ over {n} methods can reach p < 0.05")
    if p < 0.05:
        return head + f" ({reach}): the rankings {'agree' if t > 0 else 'are reversed'} beyond chance"
    return head + f" ({reach}): these boards cannot tell agreement from chance"
