"""Two boards' rankings of the same methods, compared: the toy task against the real checkpoint
(does the testbed's ranking predict SmolLM2's?), and a board against its rerun on another CPU kind.

Each side is a task of an aggregate (:func:`prefopt.leaderboard.aggregate.aggregate`). Methods are
matched by their row label (method and reward source: ``grpo (exact)`` on toy arith is GRPO with the
exact-match reward, as on smol_arith); baselines without a trained policy (best-of-n) and the oracle
are left out. Each method's number is its headline test gold per report seed; the agreement is
Kendall's τ-b of the two boards' mean test gold, with a bootstrap interval that resamples each
board's seeds (:func:`prefopt.leaderboard.stats.tau_bootstrap`). Ranks shown side by side are
within the common methods, by mean (1 = best), next to each board's own separated rank.
"""

from __future__ import annotations

from typing import Optional

from prefopt.leaderboard.stats import bootstrap_ci, tau_bootstrap


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


def compare(a_task: dict, b_task: dict, boot_seed: int = 0, seeds_a: Optional[set] = None,
            seeds_b: Optional[set] = None) -> Optional[dict]:
    """{"tau": tau_bootstrap result, "rows": [...], "only_a": [...], "only_b": [...]}, or None without two
    common methods. A row: label, each side's Estimate of test gold, rank by mean among the common methods,
    the board's own rank, and the chosen configuration."""
    a, b = per_seed_gold(a_task, seeds_a), per_seed_gold(b_task, seeds_b)
    common = sorted(set(a) & set(b))
    tau = tau_bootstrap({m: a[m] for m in common}, {m: b[m] for m in common}, seed=boot_seed)
    if tau is None:
        return None
    est_a = {m: bootstrap_ci(list(a[m].values()), seed=boot_seed) for m in common}
    est_b = {m: bootstrap_ci(list(b[m].values()), seed=boot_seed) for m in common}
    rank_a, rank_b = _mean_ranks({m: est_a[m].mean for m in common}), _mean_ranks({m: est_b[m].mean for m in common})
    rows_a, rows_b = {r.label: r for r in a_task["rows"]}, {r.label: r for r in b_task["rows"]}
    rows = [{"label": m, "a": est_a[m], "b": est_b[m], "rank_a": rank_a[m], "rank_b": rank_b[m],
             "board_rank_a": rows_a[m].rank, "board_rank_b": rows_b[m].rank,
             "pick_a": dict(rows_a[m].chosen.get("best") or {}), "pick_b": dict(rows_b[m].chosen.get("best") or {})}
            for m in sorted(common, key=lambda m: (rank_a[m], m))]
    return {"tau": tau, "rows": rows, "only_a": sorted(set(a) - set(b)), "only_b": sorted(set(b) - set(a))}


def verdict(tau: dict) -> str:
    """The plain reading of a τ and its interval."""
    t, lo, hi = tau["tau"], tau["lo"], tau["hi"]
    if t is None:
        return f"Kendall τ undefined over {tau['n_methods']} methods: a board scores them all equal"
    head = f"Kendall τ = {t:+.2f} [{lo:+.2f}, {hi:+.2f}] over {tau['n_methods']} methods"
    if lo > 0:
        return head + ": the rankings agree beyond chance"
    if hi < 0:
        return head + ": the rankings are reversed beyond chance"
    return head + ": the interval includes 0, so these seeds cannot tell agreement from chance"
