"""Results → rows of the board: per suite and task, one row per (method, reward source) at its best
β, means over seeds with 95% bootstrap intervals.

Rules, in the order they apply:

- records are grouped by suite, task, method, reward source and sweep point (β, n); a later result
  of the same group and seed (the suite's config changed) replaces an earlier one, and is counted in
  ``superseded``;
- the best-of-n record expands into one sweep point per n (picked by the proxy reward model), plus
  an oracle method (picked by the gold reward);
- a method's row is its sweep point with the highest mean gold reward (best of the sweep: an
  optimistic choice made on the evaluation prompts, as in the papers the board imitates);
- "gold reward at KL ≤ B": the best mean gold reward among the method's sweep points whose mean KL
  is at most B;
- proxy−gold gap, in gold units: label_temperature · (proxy − proxy_ref) − (gold − gold_ref). An ideal
  Bradley–Terry reward model learns gold / label_temperature up to a constant, so the gap is what
  the proxy claims beyond the real gain; proxy_ref is π_SFT's mean proxy reward on the same prompts
  (from the best-of-n job of the same task and seed);
- a missing or null field is left out of that column's mean; the seed count shows how many counted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from prefopt.leaderboard.stats import Estimate, bootstrap_ci

METRICS = ("gold", "win", "kl", "proxy", "proxy_cal", "gap", "dlen", "rep", "wall", "gen", "train", "mem", "tps")
# The proxy reward model's own evaluation (held-out pairs; prefopt.evaluate.PairwiseEvaluator).
RM_METRICS = ("pairwise_accuracy", "pairwise_accuracy_gold", "label_accuracy_gold")
REWARD_LABEL = {None: "pairs", "proxy": "proxy RM", "exact": "exact reward", "gold": "gold (oracle)"}


@dataclass
class Point:
    """One sweep point of one method on one task: per-seed values and their estimates."""

    sweep: dict
    per_seed: dict = field(default_factory=lambda: defaultdict(dict))  # metric -> {seed: value}
    est: dict = field(default_factory=dict)  # metric -> Estimate | None

    def estimate(self, seed: int = 0):
        self.est = {m: bootstrap_ci(list(self.per_seed[m].values()), seed=seed) if self.per_seed.get(m) else None
                    for m in METRICS}
        return self

    @property
    def seeds(self) -> int:
        return len(self.per_seed.get("gold", {})) or max((len(v) for v in self.per_seed.values()), default=0)


@dataclass
class MethodRow:
    task: str
    method: str
    reward: Optional[str]
    category: str
    points: list  # [Point], sorted by mean KL
    best: Optional[Point] = None
    at_budget: dict = field(default_factory=dict)  # budget -> Estimate | None
    beta_key: Optional[str] = None
    params: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.method if self.reward in (None, "proxy") else f"{self.method} ({self.reward})"


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _metrics(rec: dict, ev: dict, proxy_ref: Optional[float], temp: Optional[float]) -> dict:
    g, gr = _num(ev.get("gold_reward")), _num(ev.get("gold_reward_ref"))
    p = _num(ev.get("proxy_reward"))
    pr = _num(ev.get("proxy_reward_ref", proxy_ref))
    m = {"gold": g, "win": _num(ev.get("win_rate_vs_ref")), "kl": _num(ev.get("kl_to_ref")), "proxy": p,
         "rep": _num(ev.get("repetition_rate")), "wall": _num(rec.get("wall_time_s")),
         "gen": _num(rec.get("gen_time_s")), "train": _num(rec.get("train_time_s")),
         "mem": _num(rec.get("peak_mem_mb")), "tps": _num(rec.get("tokens_per_s"))}
    L, Lr = _num(ev.get("mean_length")), _num(ev.get("mean_length_ref"))
    m["dlen"] = L - Lr if L is not None and Lr is not None else None
    if None not in (p, pr, temp, g, gr):
        m["proxy_cal"] = gr + temp * (p - pr)
        m["gap"] = m["proxy_cal"] - g
    else:
        m["proxy_cal"] = m["gap"] = None
    return m


def _temperature(rec: dict) -> Optional[float]:
    return _num(_get(rec, "testbed", "label_temperature"))


def aggregate(records: list, kl_budgets=(), boot_seed: int = 0) -> dict:
    """{"suites": {suite: {task: [MethodRow]}}, "reference": {suite: {task: Point}}, "superseded": int}."""
    # Latest record per (suite, task, method, reward, sweep, seed).
    latest, superseded = {}, 0
    for rec in sorted(records, key=lambda r: (str(r.get("finished_at") or ""), r["config_hash"])):
        lb = rec["leaderboard"]
        key = (lb.get("suite"), lb.get("task") or rec.get("task"), lb.get("method") or rec.get("algo"),
               lb.get("reward"), tuple(sorted((lb.get("sweep") or {}).items())), lb.get("seed", rec.get("seed")))
        if key in latest:
            superseded += 1
        latest[key] = rec
    # π_SFT's proxy reward per (suite, task, seed), from the best-of-n job (n = 1).
    proxy_ref = {}
    for (suite, task, method, _, _, seed), rec in latest.items():
        if method == "best_of_n":
            proxy_ref[(suite, task, seed)] = _num(_get(rec, "eval", "proxy_reward_ref"))
    groups = defaultdict(dict)  # (suite, task, method, reward) -> {sweep: Point}
    meta = {}
    ref = defaultdict(lambda: defaultdict(lambda: Point({})))
    rm_vals = defaultdict(lambda: defaultdict(dict))  # (suite, task) -> metric -> {seed: value}
    for (suite, task, method, reward, sweep, seed), rec in sorted(latest.items(), key=lambda kv: kv[0][2] == "best_of_n"):
        lb = rec["leaderboard"]
        if lb.get("category") == "reward_model":
            for k in RM_METRICS:
                v = _num(_get(rec, "eval", k))
                if v is not None:
                    rm_vals[(suite, task)][k][seed] = v
            continue
        ev = rec.get("eval") or {}
        temp = _temperature(rec)
        pref = proxy_ref.get((suite, task, seed))
        rp = ref[suite][task]
        # π_SFT's gold reward: the evaluator's (the same samples for every method of a seed); the
        # best-of-n job's own estimate (its n = 1 point) only where no training run has one.
        if _num(ev.get("gold_reward_ref")) is not None and (method != "best_of_n" or seed not in rp.per_seed["gold"]):
            rp.per_seed["gold"][seed] = _num(ev["gold_reward_ref"])
            rp.per_seed["win"][seed] = 0.5
            rp.per_seed["kl"][seed] = 0.0
            rp.per_seed["dlen"][seed] = 0.0
        if pref is not None:
            rp.per_seed["proxy"][seed] = pref
        if method == "best_of_n":
            for pt in rec.get("best_of_n") or []:
                e = {**ev, **pt, "proxy_reward_ref": ev.get("proxy_reward_ref")}
                r2 = {**rec, "train_time_s": 0.0}
                _add(groups, meta, (suite, task, "best-of-n", "proxy"), (("n", pt["n"]),), seed,
                     _metrics(r2, e, pref, temp), "baseline", {"n": pt["n"]})
                e2 = {k: v for k, v in e.items() if k not in ("proxy_reward", "win_rate_vs_ref")}
                e2["gold_reward"] = pt.get("gold_reward_oracle")
                _add(groups, meta, (suite, task, "best-of-n", "gold"), (("n", pt["n"]),), seed,
                     _metrics(r2, e2, pref, temp), "baseline", {"n": pt["n"]})
                if pt["n"] == 1:
                    rp.per_seed["rep"][seed] = _num(pt.get("repetition_rate"))
            continue
        _add(groups, meta, (suite, task, method, reward), sweep, seed, _metrics(rec, ev, pref, temp),
             lb.get("category", ""), rec.get("params") or {})
    out = defaultdict(lambda: defaultdict(list))
    for (suite, task, method, reward), pts in groups.items():
        points = [p.estimate(boot_seed) for p in pts.values()]
        points.sort(key=lambda p: (p.est["kl"].mean if p.est.get("kl") else float("inf")))
        cat, params = meta[(suite, task, method, reward)]
        row = MethodRow(task=task, method=method, reward=reward, category=cat, points=points, params=params)
        scored = [p for p in points if p.est.get("gold")]
        row.best = max(scored, key=lambda p: p.est["gold"].mean) if scored else points[0]
        for b in kl_budgets:
            ok = [p for p in scored if p.est.get("kl") and p.est["kl"].mean <= b]
            row.at_budget[b] = max((p.est["gold"] for p in ok), key=lambda e: e.mean, default=None)
        row.beta_key = next((k for k in ("beta", "kl_coef", "n") if k in (row.best.sweep or {}) or k in params), None)
        out[suite][task].append(row)
    for suite in out:
        for task in out[suite]:
            out[suite][task].sort(key=lambda r: -(r.best.est["gold"].mean if r.best.est.get("gold") else float("-inf")))
    refs = {s: {t: p.estimate(boot_seed) for t, p in d.items()} for s, d in ref.items()}
    rms = defaultdict(dict)
    for (suite, task), d in rm_vals.items():
        rms[suite][task] = {k: bootstrap_ci(list(v.values()), seed=boot_seed) for k, v in d.items()}
    return {"suites": out, "reference": refs, "superseded": superseded, "reward_models": rms}


def _add(groups, meta, key, sweep, seed, metrics, category, params):
    pt = groups[key].setdefault(sweep, Point(dict(sweep)))
    for m, v in metrics.items():
        if v is not None:
            pt.per_seed[m][seed] = v
    meta.setdefault(key, (category, dict(params)))
