"""The reward-ensemble comparison (a suite's ``reward_ensemble`` section; ``prefopt-leaderboard run suite=ensemble``):
one proxy reward model against an ensemble of M under each aggregation, for best-of-n and one policy-gradient
method, on one task: the results' rows, table and plot. The section that plans its jobs and puts it on the
board is :mod:`prefopt.leaderboard.sections.ensemble`.

Jobs, per report seed s:

- stage 1: one ``algo=reward algo.ensemble_members=M`` job (its members at ``runs/<hash>/members/i/model``;
  member 0 has seed s, so it is the single proxy reward model the same suite would train);
- stage 3, for each variant: ``single`` (member 0 alone, ``reward=ensemble`` over one path with
  ``aggregate=mean``, so it is standardised exactly as the members are) and each aggregate over all M:
  the policy-gradient method at the section's fixed configuration (no tuning: its learning rate and small
  KL coefficient are declared in the suite), evaluated every k steps on the validation *and* the test
  prompts (``eval.periodic_test``); and best-of-n from π_SFT, picked by that reward.

Reported (validation chooses, test reports): the over-optimisation peak is the step (best-of-n: the n)
with the highest mean validation gold over the report seeds; the row's number is the test gold of the
same step (n) per seed, mean with a 95% bootstrap interval, and its paired difference to ``single``.
"""

from __future__ import annotations

import math
from collections import defaultdict

from prefopt.leaderboard.aggregate import DISPLAY, version_groups
from prefopt.leaderboard.stats import ALPHA, adjust, mean_ci, paired_test
from prefopt.leaderboard.store import BEST_OF_N

VARIANTS_SINGLE = "single"


def variants(sec) -> list:
    """The reward variants of a suite's ``reward_ensemble`` (:class:`prefopt.leaderboard.suite.RewardEnsemble`)."""
    return [VARIANTS_SINGLE] + list(sec.aggregates)


def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def label(v: str, members: int, lam: float = 1.0) -> str:
    if v == VARIANTS_SINGLE:
        return "single RM (member 0)"
    name = {"mean": "mean", "min": "min (worst case)", "mean_minus_std": f"mean − {lam:g}·std (uncertainty-weighted)"}
    return f"ensemble of {members}: {name.get(v, v)}"


def _pg_points(rec: dict) -> list:
    """[{step, val, kl, test, test_kl}] of one run: its validation curve with the test numbers of each step."""
    ev = rec.get("eval") or {}
    out = []
    for p in rec.get("trajectory") or []:
        if p.get("step") == 0:  # π_SFT itself: KL 0, its own gold on each split
            out.append({"step": 0, "val": _num(p.get("gold_reward")), "kl": 0.0, "test": _num(ev.get("gold_reward_ref")),
                        "test_kl": 0.0})
        else:
            out.append({"step": p.get("step"), "val": _num(p.get("gold_reward")), "kl": _num(p.get("kl_to_ref")),
                        "test": _num(p.get("test/gold_reward")), "test_kl": _num(p.get("test/kl_to_ref"))})
    return out


def _bon_points(rec: dict) -> list:
    by = rec.get("best_of_n_by_split") or {}
    test = {p["n"]: p for p in by.get("test", [])}
    return [{"step": p["n"], "val": _num(p.get("gold_reward")), "kl": _num(p.get("kl_to_ref")),
             "test": _num((test.get(p["n"]) or {}).get("gold_reward")), "test_kl": _num(p.get("kl_to_ref"))}
            for p in by.get("val", [])]


def rows_of(records: list, boot_seed: int = 0) -> dict:
    """{"version", "rows": [...]} from the result records of reward_ensemble jobs (one code version and CPU
    capability: the one with the most of them). A row per (method, variant): the peak step (best-of-n: n)
    chosen on the mean validation curve over seeds, the test gold there per seed, its paired difference to
    the single reward model, and the mean validation curve."""
    recs = [r for r in records if r.get("status", "ok") == "ok" and (r.get("leaderboard") or {}).get("role") == "ensemble"]
    if not recs:
        return {"version": None, "rows": []}
    groups = version_groups(recs)
    version, recs = max(groups.items(), key=lambda kv: (len(kv[1]), max(str(r.get("finished_at") or "") for r in kv[1])))
    per = defaultdict(dict)  # (method, variant) -> seed -> points
    info = {}
    for r in recs:
        lb = r["leaderboard"]
        key = (lb["method"], lb["variant"])
        per[key][lb["seed"]] = _bon_points(r) if lb["method"] == BEST_OF_N else _pg_points(r)
        info[key] = (lb.get("members"),)
    rows = []
    for (method, variant), by_seed in per.items():
        steps = sorted(set.intersection(*[{p["step"] for p in pts} for pts in by_seed.values()]))
        at = {s: {seed: next(p for p in pts if p["step"] == s) for seed, pts in by_seed.items()} for s in steps}
        curve = []
        for s in steps:
            vals = [p["val"] for p in at[s].values() if p["val"] is not None]
            kls = [p["kl"] for p in at[s].values() if p["kl"] is not None]
            curve.append({"step": s, "val": sum(vals) / len(vals) if vals else None,
                          "kl": sum(kls) / len(kls) if kls else None})
        usable = [c for c in curve if c["val"] is not None]
        if not usable:
            continue
        peak = max(usable, key=lambda c: c["val"])  # max() keeps the first (earliest step, smallest n) on ties
        test = {seed: p["test"] for seed, p in at[peak["step"]].items() if p["test"] is not None}
        last = {seed: p["test"] for seed, p in at[steps[-1]].items() if p["test"] is not None}
        kl_test = [p["test_kl"] for p in at[peak["step"]].values() if p["test_kl"] is not None]
        rows.append({"method": method, "variant": variant, "members": info[(method, variant)][0], "peak": peak["step"],
                     "peak_val": peak["val"], "peak_kl": sum(kl_test) / len(kl_test) if kl_test else None,
                     "test": test, "gold": mean_ci(list(test.values())),
                     "last_step": steps[-1], "last": mean_ci(list(last.values())),
                     "curve": curve, "seeds": len(test)})
    order = {VARIANTS_SINGLE: 0, "mean": 1, "min": 2, "mean_minus_std": 3}
    rows.sort(key=lambda r: (r["method"] != BEST_OF_N, r["method"], order.get(r["variant"], 9), r["variant"]))
    for r in rows:
        single = next((q for q in rows if q["method"] == r["method"] and q["variant"] == VARIANTS_SINGLE), None)
        r["vs_single"] = None
        if single is not None and r is not single:
            common = sorted(set(r["test"]) & set(single["test"]))
            r["vs_single"] = paired_test([r["test"][s] for s in common], [single["test"][s] for s in common])
    # one family: every variant against its single RM, adjusted together
    tested = [r for r in rows if r["vs_single"] is not None]
    for r, q in zip(tested, adjust([r["vs_single"]["p"] for r in tested])):
        r["vs_single"]["p_adj"] = q
    return {"version": version, "rows": rows}


def _f(est, d=3):
    if est is None:
        return "—"
    s = f"{est.mean:.{d}f}"
    return s + (f" [{est.lo:.{d}f}, {est.hi:.{d}f}]" if est.n > 1 and est.hi > est.lo else "")


HEADER = ["method", "reward", "peak (chosen on validation)", "KL at the peak (test)", "test gold at the peak",
          "Δ vs single RM (paired)", "p (BH-adjusted)", "test gold at the end", "seeds"]


def table(agg: dict, lam: float = 1.0) -> list:
    """[[cell text]] under HEADER."""
    out = []
    for r in agg["rows"]:
        bon = r["method"] == BEST_OF_N
        vs = r["vs_single"]
        out.append([DISPLAY.get(r["method"], r["method"]), label(r["variant"], r["members"], lam),
                    (f"n={r['peak']}" if bon else f"step {r['peak']}") + f" (val gold {r['peak_val']:.3f})"
                    + (" = the last: no peak within the range" if r["peak"] == r["last_step"] else ""),
                    "—" if r["peak_kl"] is None else f"{r['peak_kl']:.2f}", _f(r["gold"]),
                    "—" if vs is None else _f(vs["diff"]) + ("*" if vs["p_adj"] < ALPHA else ""),
                    "—" if vs is None else f"{vs['p_adj']:.3f}",
                    _f(r["last"]) + (f" (n={r['last_step']})" if bon else f" (step {r['last_step']})"), str(r["seeds"])])
    return out


INTRO = ("One proxy reward model against an ensemble of its seed-siblings (Coste et al. 2023, arXiv:2310.02743), "
         "each member standardised on the first batch it scores (π_SFT's samples), for best-of-n from π_SFT and for "
         "a policy-gradient method at a fixed configuration with a small KL coefficient (not tuned). The single RM is "
         "member 0, through the same code path (reward=ensemble over one path, aggregate=mean). The over-optimisation "
         "peak is chosen on the mean *validation* curve over seeds (the step, or best-of-n's n); its *test* gold is "
         "reported (periodic evaluations on both prompt sets: eval.periodic_test), with the paired difference to the "
         "single RM over seeds (a paired t-test; * its Benjamini–Hochberg-adjusted p over the section's comparisons < 0.05). "
         "Intervals: 95% t-intervals over seeds (the seeds column is n). `prefopt-leaderboard run suite=ensemble` reproduces it.")
