"""Sanity checks from the literature, computed from the aggregated results (shown on the board as
pass / fail with their numbers; never asserted by tests, never tuned to: a failed check is a finding).

Each check returns {"name", "expect", "status": "pass" | "fail" | "n/a", "detail"}.
"""

from __future__ import annotations

from prefopt.leaderboard.bon import best_of_n_kl
from prefopt.leaderboard.store import BEST_OF_N


def _c(name, expect, status, detail):
    return {"name": name, "expect": expect, "status": status, "detail": detail}


def bon_kl(task_agg: dict, samples: int) -> dict:
    name = "best-of-n KL"
    expect = "empirical KL of the pick (over π_SFT's own samples) ≈ log n − (n−1)/n, for n ≪ samples"
    rows = [r for r in task_agg["rows"] if r.method == BEST_OF_N and r.reward in ("proxy", "gold")]
    pts = [(p.point["n"], p.est.get("kl_emp"), best_of_n_kl(p.point["n"])) for r in rows[:1] for p in r.bon_points]
    pts = [(n, e.mean if e else None, a) for n, e, a in pts if n > 1 and n * 4 <= max(samples, 1)]
    pts = [x for x in pts if x[1] is not None]
    if not pts:
        return _c(name, expect, "n/a", "no best-of-n point with n ≤ samples/4 and an empirical KL")
    rel = max(abs(e - a) / a for _, e, a in pts)
    det = "; ".join(f"n={n}: {e:.3f} vs {a:.3f}" for n, e, a in pts)
    return _c(name, expect, "pass" if rel <= 0.25 else "fail", f"{det} (largest relative difference {rel:.0%}; limit 25%)")


def _peak(curve):
    g = [(c["step"], c["gold"], c.get("proxy_cal"), c["kl"]) for c in curve if c["gold"] is not None]
    if len(g) < 3:
        return None
    i = max(range(len(g)), key=lambda k: g[k][1])
    return {"i": i, "n": len(g), "step": g[i][0], "gold": g[i][1], "kl": g[i][3], "last_gold": g[-1][1],
            "proxy_peak": g[i][2], "proxy_last": g[-1][2]}


def overoptimization(task_agg: dict) -> dict:
    name = "over-optimization"
    expect = "against a proxy reward model at the weakest coefficient, proxy keeps rising while gold peaks and falls"
    curves = []
    for n, pt in task_agg.get("ablation", {}).items():
        curves.append((f"{n} pairs (ablation)", pt.mean_curve()))
    for r in task_agg["rows"]:
        if r.reward == "proxy" and r.best is not None:
            curves.append((r.label, r.best.mean_curve()))
    if not curves:
        return _c(name, expect, "n/a", "no proxy-reward curve")
    found, dets = [], []
    for lab, curve in curves:
        pk = _peak(curve)
        if pk is None:
            continue
        falls = pk["i"] < pk["n"] - 1 and pk["gold"] - pk["last_gold"] >= 0.05
        rises = pk["proxy_peak"] is not None and pk["proxy_last"] is not None and pk["proxy_last"] >= pk["proxy_peak"]
        if falls and rises:
            found.append(lab)
        dets.append(f"{lab}: gold peak {pk['gold']:.3f} at step {pk['step']} (KL {pk['kl']:.2f}), last {pk['last_gold']:.3f}"
                    + (f"; proxy (cal.) {pk['proxy_peak']:.3f} → {pk['proxy_last']:.3f}" if rises or pk['proxy_last'] is not None
                       and pk['proxy_peak'] is not None else ""))
    return _c(name, expect, "pass" if found else "fail",
              (f"seen in {', '.join(found)}. " if found else "not seen on any curve. ") + "; ".join(dets[:6]))


def pairs_delay_peak(task_agg: dict) -> dict:
    name = "more pairs delay the peak"
    expect = "the gold peak moves to larger KL as the reward model's pairs grow"
    abl = {n: pt for n, pt in task_agg.get("ablation", {}).items() if n is not None}
    peaks = []
    for n in sorted(abl):
        pk = _peak(abl[n].mean_curve())
        if pk is not None:
            acc = task_agg.get("rm_by_pairs", {}).get(n)
            peaks.append((n, pk, acc))
    if len(peaks) < 2:
        return _c(name, expect, "n/a", "the ablation has fewer than two pair counts with a curve")
    kls = [pk["kl"] for _, pk, _ in peaks]
    ok = all(b >= a for a, b in zip(kls, kls[1:]))
    det = "; ".join(f"{n} pairs: peak KL {pk['kl']:.2f} (gold {pk['gold']:.3f})"
                    + (f", RM gold-order accuracy {acc.mean:.3f}" if acc else "") for n, pk, acc in peaks)
    return _c(name, expect, "pass" if ok else "fail", det)


def dpo_chosen_logps(task_agg: dict) -> dict:
    name = "DPO's chosen log-probs fall while its margin rises"
    expect = "logps/chosen: last < first and rewards/margin: last > first (majority of report seeds)"
    row = next((r for r in task_agg["rows"] if r.method == "dpo" and r.best is not None), None)
    if row is None:
        return _c(name, expect, "n/a", "no DPO row")
    fl = [v for v in row.best.first_last.values() if "logps/chosen" in v and "rewards/margin" in v]
    if not fl:
        return _c(name, expect, "n/a", "no training metrics recorded")
    falls = sum(v["logps/chosen"][1] < v["logps/chosen"][0] for v in fl)
    rises = sum(v["rewards/margin"][1] > v["rewards/margin"][0] for v in fl)
    ok = falls * 2 > len(fl) and rises * 2 > len(fl)
    mean = lambda k, i: sum(v[k][i] for v in fl) / len(fl)  # noqa: E731
    return _c(name, expect, "pass" if ok else "fail",
              f"chosen log-prob fell on {falls}/{len(fl)} seeds ({mean('logps/chosen', 0):.2f} → {mean('logps/chosen', 1):.2f}), "
              f"margin rose on {rises}/{len(fl)} ({mean('rewards/margin', 0):.3f} → {mean('rewards/margin', 1):.3f})")


def online_vs_offline(task_agg: dict, budgets) -> dict:
    name = "online ≥ offline at equal KL"
    expect = "the best online method's gold at KL ≤ B (on its curve) at least matches the best offline method's"
    dets, ok_all, any_b = [], True, False
    for b in budgets:
        best = {}
        for cat in ("online", "offline"):
            vals = [(r.budget_gold.get(b), r.label) for r in task_agg["rows"] if r.category == cat and r.budget_gold.get(b)]
            if vals:
                best[cat] = max(vals, key=lambda v: v[0].mean)
        if len(best) < 2:
            continue
        any_b = True
        (on, onl), (off, offl) = best["online"], best["offline"]
        ok = on.mean >= off.mean
        ok_all &= ok
        dets.append(f"KL ≤ {b:g}: {onl} {on.mean:.3f} vs {offl} {off.mean:.3f}")
    if not any_b:
        return _c(name, expect, "n/a", "no budget with both an online and an offline curve point")
    return _c(name, expect, "pass" if ok_all else "fail", "; ".join(dets))


def length_direction(task_agg: dict) -> dict:
    name = "length follows the reward model"
    expect = "methods against the proxy RM change length in the sign of the RM's length preference on π_SFT samples"
    corr = task_agg.get("proxy_length_corr")
    rows = [r for r in task_agg["rows"] if r.reward == "proxy" and r.best is not None and r.best.est.get("dlen")]
    if corr is None or not rows:
        return _c(name, expect, "n/a", "no proxy-RM length preference or no proxy-RM row")
    sign = 1 if corr.mean > 0 else -1
    agree = [r.label for r in rows if r.best.est["dlen"].mean * sign > 0]
    ok = len(agree) * 2 > len(rows)
    moves = ", ".join(f"{r.label} {r.best.est['dlen'].mean:+.1f}" for r in rows)
    return _c(name, expect, "pass" if ok else "fail",
              f"RM length correlation {corr.mean:+.3f}; {len(agree)}/{len(rows)} methods moved length that way ({moves})")


def run_all(task_agg: dict, budgets, samples: int) -> list:
    return [bon_kl(task_agg, samples), overoptimization(task_agg), pairs_delay_peak(task_agg),
            dpo_chosen_logps(task_agg), online_vs_offline(task_agg, budgets), length_direction(task_agg)]
