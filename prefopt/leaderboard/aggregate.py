"""Results → the board: per task, one row per (method, reward source) at its validation-chosen
configuration, test-prompt numbers as means over report seeds with 95% t-intervals (:mod:`.stats`).

Rules, in the order they apply:

- one code version and one CPU capability per board: the records shown are those of the
  (code_version, cpu_capability) with the most report results (ties: the newest); the others are
  counted in ``other_versions`` and named by ``render`` — a row never mixes them;
- a record serves each role its job had (``leaderboard.role`` and ``leaderboard.also``): reward model,
  tuning grid point, report pick (``best`` and/or ``at_budget``), ablation point, best-of-n;
- a method's row is its ``best`` pick on the report seeds (the pick itself was made on validation
  prompts by :mod:`prefopt.leaderboard.select`); its ``at_budget`` pick is shown beside it;
- per-seed values are paired across methods (a seed's methods share π_SFT, pairs, reward model), so
  method-vs-method comparisons are paired t-tests over seeds, Benjamini–Hochberg-adjusted over every pair
  of the task (:func:`stats.compare_all`); each row says whether it is the best (highest mean), statistically
  indistinguishable from it, or separated below it; rows are in order of mean test gold;
- every column of a row is over the seeds of its test gold (a seed whose gold is unusable, a NaN on file, leaves
  every column; a metric missing on one of them is named in the task's ``seed_notes``); a row short of a report
  seed that other rows of its task have (a deleted or unusable result) is left out of the comparisons, and its
  "vs best" says so (:func:`mark_short`);
- a report seed counts as *below π_SFT* when its test gold is below π_SFT's test gold on the same seed;
- trajectories: the validation evaluations every k steps of the report runs, averaged over seeds per
  step; Gao et al.'s RL form is fitted to each method's curve, the best-of-n form to best-of-n's;
- proxy reward, calibrated in gold units: gold_ref + label_temperature · (proxy − proxy_ref). An ideal
  Bradley–Terry reward model learns gold / label_temperature up to a constant; the gap to the gold
  reward is what the proxy claims beyond the real gain;
- cost: labels (preference labels the method drew on, directly or through its reward model),
  samples generated, policy tokens trained on, wall time, peak memory.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from prefopt.leaderboard import fits, select
from prefopt.leaderboard.store import BEST_OF_N
from prefopt.leaderboard.stats import Estimate, compare_all, mean_ci

METRICS = ("gold", "win", "kl", "proxy", "proxy_cal", "gap", "dlen", "rep", "wall", "gen", "train", "mem", "tps",
           "labels", "samples", "tokens", "kl_emp")
# The board's names of METRICS, for notes that name a column.
METRIC_NAMES = {"gold": "test gold", "win": "win vs π_SFT", "kl": "KL", "proxy": "proxy reward",
                "proxy_cal": "calibrated proxy reward", "gap": "proxy−gold gap", "dlen": "Δ length", "rep": "repetition",
                "wall": "wall s", "gen": "generation s", "train": "training s", "mem": "peak MB", "tps": "tokens/s",
                "labels": "labels", "samples": "samples", "tokens": "policy tokens", "kl_emp": "empirical KL"}
RM_METRICS = ("pairwise_accuracy", "pairwise_accuracy_gold", "label_accuracy_gold")
REWARD_LABEL = {None: "pairs", "proxy": "proxy RM", "exact": "exact reward", "gold": "gold (oracle)"}
# A row's method as the board prints it.
DISPLAY = {BEST_OF_N: "best-of-n"}
# best-of-n's per-n keys of the proxy pick -> those of the gold reward's own pick (the oracle row)
ORACLE_KEY = {"win_rate_vs_ref": "win_rate_oracle", "mean_length": "mean_length_oracle",
              "repetition_rate": "repetition_rate_oracle", "kl_empirical": "kl_empirical_oracle"}


# The range of a bounded metric: a t-interval is cut to it (the cut removes only impossible values).
BOUNDS = {"win": (0.0, 1.0), "rep": (0.0, 1.0), "kl": (0.0, math.inf), "kl_emp": (0.0, math.inf)}


def _clip(est: Optional[Estimate], metric: str) -> Optional[Estimate]:
    lo, hi = BOUNDS.get(metric, (-math.inf, math.inf))
    if est is None or (est.lo >= lo and est.hi <= hi):
        return est
    return Estimate(est.mean, max(est.lo, lo), min(est.hi, hi), est.n, est.method)


def _num(v):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


@dataclass
class Point:
    """Per-seed values of one configuration of one method, and their estimates."""

    point: dict
    per_seed: dict = field(default_factory=lambda: defaultdict(dict))  # metric -> {seed: value}
    curves: dict = field(default_factory=dict)  # seed -> trajectory [{step, gold, kl, proxy_cal, length}]
    first_last: dict = field(default_factory=dict)  # seed -> {metric: [first, last]}
    diverged: dict = field(default_factory=dict)  # seed -> why its validation curve diverged, or None
    below_sft: dict = field(default_factory=dict)  # seed -> its test gold is below π_SFT's on that seed
    est: dict = field(default_factory=dict)
    # metric -> the gold seeds it has no usable value on (a NaN on file); its column averages the others
    gaps: dict = field(default_factory=dict)
    no_gold: list = field(default_factory=list)  # seeds with other values but no usable test gold: left out

    def estimate(self, seed: int = 0):
        """Every column over the seeds of the test gold: a seed whose gold is unusable (a NaN, a missing key) leaves
        every column, so that no row averages different seeds in different columns. A metric missing on a gold
        seed is counted in ``gaps`` (the board names it)."""
        gold = self.per_seed.get("gold") or {}
        self.est, self.gaps = {}, {}
        seen = set().union(*(set(self.per_seed.get(m) or {}) for m in METRICS))
        self.no_gold = sorted(seen - set(gold)) if gold else []
        for m in METRICS:
            vals = dict(self.per_seed.get(m) or {})
            if gold and m != "gold":
                vals = {s: v for s, v in vals.items() if s in gold}
                if vals and len(vals) < len(gold):
                    self.gaps[m] = sorted(set(gold) - set(vals))
            self.est[m] = _clip(mean_ci(list(vals.values())), m) if vals else None
        return self

    @property
    def seeds(self) -> int:
        return len(self.per_seed.get("gold", {})) or max((len(v) for v in self.per_seed.values()), default=0)

    def mean_curve(self) -> list:
        """[{step, gold, kl, proxy_cal, length, n}] averaged over seeds at each step all of them reached."""
        steps = defaultdict(list)
        for traj in self.curves.values():
            for p in traj:
                steps[p["step"]].append(p)
        out = []
        for s in sorted(steps):
            pts = steps[s]
            row = {"step": s, "n": len(pts)}
            for k in ("gold", "kl", "proxy_cal", "length"):
                vals = [p[k] for p in pts if p.get(k) is not None]
                row[k] = sum(vals) / len(vals) if vals else None
            out.append(row)
        return out


@dataclass
class MethodRow:
    task: str
    method: str
    reward: Optional[str]
    category: str
    best: Optional[Point] = None  # the "best" pick's report runs
    at_budget: Optional[Point] = None  # the "at_budget" pick's report runs
    grid: list = field(default_factory=list)  # select.grid_scores of the tuning runs
    chosen: dict = field(default_factory=dict)  # pick -> grid point
    chosen_mean: dict = field(default_factory=dict)  # pick -> grid point under the earlier rule (mean, two tuning seeds)
    budget_gold: dict = field(default_factory=dict)  # KL budget -> Estimate (best gold on the curve within it)
    fit: Optional[fits.Fit] = None
    fit_kl_max: Optional[float] = None  # the largest KL on the fitted curve: a peak far beyond it is extrapolation
    # "best" (highest mean test gold), "indistinguishable" (from the best, after the adjustment), "below"
    # (separated below the best), "not compared" (short of report seeds: see ``short``), or None (the oracle,
    # a row without report runs)
    vs_best: Optional[str] = None
    short: Optional[str] = None  # "4 of 5 seeds": the headline's report seeds, when some seed of the task is missing
    bon_points: list = field(default_factory=list)  # best-of-n: a Point per n (test), curve on validation
    # pick -> grid point key -> Point: every report run on file. Only the one the grid's rule chooses now
    # becomes row.best / row.at_budget, so a report run of an earlier pick (before the grid grew) never
    # mixes into a row.
    candidates: dict = field(default_factory=lambda: defaultdict(dict))

    @property
    def label(self) -> str:
        name = DISPLAY.get(self.method, self.method)
        return name if self.reward in (None, "proxy") else f"{name} ({self.reward})"


def _metrics(rec: dict, ev: dict, temp: Optional[float], labels: Optional[float]) -> dict:
    g, gr = _num(ev.get("gold_reward")), _num(ev.get("gold_reward_ref"))
    p, pr = _num(ev.get("proxy_reward")), _num(ev.get("proxy_reward_ref"))
    cost = rec.get("cost") or {}
    m = {"gold": g, "win": _num(ev.get("win_rate_vs_ref")), "kl": _num(ev.get("kl_to_ref")), "proxy": p,
         "rep": _num(ev.get("repetition_rate")), "wall": _num(rec.get("wall_time_s")),
         "gen": _num(rec.get("gen_time_s")), "train": _num(rec.get("train_time_s")),
         "mem": _num(rec.get("peak_mem_mb")), "tps": _num(rec.get("tokens_per_s")),
         "labels": labels, "samples": _num(cost.get("samples_generated")), "tokens": _num(cost.get("policy_tokens")),
         "kl_emp": _num(ev.get("kl_empirical"))}
    L, Lr = _num(ev.get("mean_length")), _num(ev.get("mean_length_ref"))
    m["dlen"] = L - Lr if L is not None and Lr is not None else None
    if None not in (p, pr, temp, g, gr):
        m["proxy_cal"] = gr + temp * (p - pr)
        m["gap"] = m["proxy_cal"] - g
    else:
        m["proxy_cal"] = m["gap"] = None
    return m


def _curve(rec: dict, temp: Optional[float]) -> list:
    traj = rec.get("trajectory") or []
    g0 = next((_num(p.get("gold_reward")) for p in traj if p.get("step") == 0), None)
    p0 = next((_num(p.get("proxy_reward")) for p in traj if p.get("step") == 0), None)
    out = []
    for p in traj:
        pr = _num(p.get("proxy_reward"))
        cal = g0 + temp * (pr - p0) if None not in (g0, p0, pr, temp) else None
        out.append({"step": p.get("step"), "gold": _num(p.get("gold_reward")), "kl": _num(p.get("kl_to_ref")),
                    "proxy_cal": cal, "length": _num(p.get("mean_length"))})
    return out


def roles(rec: dict) -> list:
    lb = rec["leaderboard"]
    return [lb] + [{**lb, **a} for a in (lb.get("also") or [])]


def version_groups(records: list) -> dict:
    """(code_version, cpu_capability) -> records."""
    out = defaultdict(list)
    for r in records:
        out[(r.get("code_version") or "not recorded", r.get("cpu_capability") or "not recorded")].append(r)
    return out


def pick_version(records: list):
    groups = version_groups(records)
    if not groups:
        return None, []
    score = lambda kv: (sum(any(x.get("role") == "report" for x in roles(r)) for r in kv[1]),  # noqa: E731
                        max(str(r.get("finished_at") or "") for r in kv[1]))
    key, recs = max(groups.items(), key=score)
    return key, recs


def _key(point: dict) -> tuple:
    return tuple(sorted(point.items()))


def _current(cands: dict, want: Optional[dict], grid_known: bool):
    """The candidate Point at the grid point ``want`` (the rule's choice now); without a grid to choose
    from, the only candidate there is."""
    if want is not None:
        return cands.get(_key(want))
    return next(iter(cands.values())) if not grid_known and len(cands) == 1 else None


def aggregate(records: list, kl_budgets=(), boot_seed: int = 0, pick_kl_budget: Optional[float] = None,
              divergence: Optional[dict] = None, report_seeds: Optional[list] = None) -> dict:
    """{"version": (code, cpu), "other_versions": {(code, cpu): n}, "tasks": {task: {...}}}.

    A row's picks are chosen again here from its grid by the plan's own rule (select.choose, with the
    suite's ``pick_kl_budget`` and ``divergence``), and only the report runs of those points are shown.
    Rows are in rank order, then by mean test gold. A row short of a report seed that other rows of its task
    have (``report_seeds``: the suite's; a deleted or unusable result) is not compared (:func:`mark_short`)."""
    rule_of = lambda task: select.divergence_rule(divergence, task)  # noqa: E731
    version, recs = pick_version(records)
    others = {k: len(v) for k, v in version_groups(records).items() if k != version}
    rm_by_id = {}
    for r in recs:
        if any(x.get("role") == "reward_model" for x in roles(r)):
            rm_by_id[r.get("result_id") or r["config_hash"]] = r
    tasks = defaultdict(lambda: {"rows": {}, "reference": Point({}), "rm": defaultdict(dict), "tuning": defaultdict(dict),
                                 "ablation": defaultdict(lambda: Point({})), "rm_by_pairs": defaultdict(dict),
                                 "proxy_length_corr": {}})
    for rec in recs:
        temp = _num(_get(rec, "testbed", "label_temperature"))
        for lb in roles(rec):
            task, method, reward, seed, role = lb.get("task"), lb.get("method"), lb.get("reward"), lb.get("seed"), lb.get("role")
            if role in ("ensemble", "ensemble_rm"):
                continue  # the reward-ensemble comparison has its own section (prefopt.leaderboard.ensemble)
            T = tasks[task]
            if role == "reward_model":
                for k in RM_METRICS:
                    v = _num(_get(rec, "eval", k))
                    if v is not None:
                        if lb.get("pair_prompts") is None:
                            T["rm"][k][seed] = v
                        if k == "pairwise_accuracy_gold":
                            T["rm_by_pairs"][lb.get("pair_prompts") or _get(rec, "testbed", "pair_prompts")][seed] = v
                continue
            rm = rm_by_id.get(lb.get("rm_hash"))
            labels = _num(_get(rm, "cost", "examples")) if rm else None
            if lb.get("category") == "offline":
                labels = _num(_get(rec, "cost", "examples"))
            elif reward == "exact":
                labels = 0.0
            key = (method, reward)
            if role == "tuning":
                T["tuning"][key].setdefault(tuple(sorted(lb.get("point", {}).items())), []).append(rec)
                T["rows"].setdefault(key, MethodRow(task, method, reward, lb.get("category", "")))
                continue
            if role == "ablation":
                pt = T["ablation"][(key, lb.get("pair_prompts"), _key(lb.get("point", {})))]
                pt.curves[seed] = _curve(rec, temp)
                continue
            ev = rec.get("eval") or {}
            ref = T["reference"]
            if _num(ev.get("gold_reward_ref")) is not None and (method != BEST_OF_N or seed not in ref.per_seed["gold"]):
                ref.per_seed["gold"][seed] = _num(ev["gold_reward_ref"])
                ref.per_seed["win"][seed], ref.per_seed["kl"][seed], ref.per_seed["dlen"][seed] = 0.5, 0.0, 0.0
            if method == BEST_OF_N:
                _add_best_of_n(T, rec, lb, seed, temp, labels)
                continue
            row = T["rows"].setdefault(key, MethodRow(task, method, reward, lb.get("category", "")))
            for pick in lb.get("picks") or ["best"]:
                pt = row.candidates[pick].setdefault(_key(lb.get("point", {})), Point(dict(lb.get("point", {}))))
                for m, v in _metrics(rec, ev, temp, labels).items():
                    if v is not None:
                        pt.per_seed[m][seed] = v
                pt.curves[seed] = _curve(rec, temp)
                pt.first_last[seed] = rec.get("train_first_last") or {}
                pt.diverged[seed] = select.divergence_of(rec, *rule_of(task))
                g, g_ref = _num(ev.get("gold_reward")), _num(ev.get("gold_reward_ref"))
                if g is not None and g_ref is not None:
                    pt.below_sft[seed] = g < g_ref - select.TIE_TOLERANCE
    out = {}
    for task, T in tasks.items():
        rows, tuned = [], []
        for key, row in T["rows"].items():
            grid_recs = T["tuning"].get(key, {})
            # The plan's grid order (plan.grid_of: learning rate outer, coefficient inner, both ascending as
            # declared), not the order the files were read: select.choose breaks a tie by it.
            order = sorted(grid_recs, key=lambda p: [dict(p).get("lr", 0.0)] + [str(v) if not isinstance(v, (int, float))
                                                                                 else v for k, v in p if k != "lr"])
            row.grid = select.grid_scores([dict(p) for p in order], [grid_recs[p] for p in order], *rule_of(task))
            choice = select.choose(row.grid, pick_kl_budget) if row.grid else {}
            if row.grid:
                # The earlier rule as it was run: the highest mean validation gold over the first two tuning seeds,
                # diverged points eligible; the board lists the picks the robust rule changed, and why.
                seeds2 = sorted({r["leaderboard"].get("seed") for p in order for r in grid_recs[p]})[:2]
                grid2 = select.grid_scores([dict(p) for p in order],
                                           [[r for r in grid_recs[p] if r["leaderboard"].get("seed") in seeds2] for p in order])
                row.chosen_mean = {k: dict(v["point"]) for k, v in select.choose(grid2, pick_kl_budget, "mean").items()
                                   if v is not None}
            for pick in ("best", "at_budget"):
                want = (choice.get(pick) or {}).get("point")
                pt = _current(row.candidates.get(pick, {}), want, bool(row.grid))
                setattr(row, pick, pt)
                if pt is not None:
                    row.chosen[pick] = dict(pt.point)
                    pt.estimate(boot_seed)
            if row.grid:
                tuned.append(row)
            if row.best is None and not row.bon_points:
                continue  # tuned but not (yet) reported
            if row.best is not None:
                curve = row.best.mean_curve()
                g0 = curve[0]["gold"] if curve and curve[0]["step"] == 0 else None
                if g0 is not None:
                    row.fit = fits.fit([c["kl"] for c in curve[1:]], [c["gold"] - g0 if c["gold"] is not None else None
                                                                       for c in curve[1:]], "rl")
                    row.fit_kl_max = max((c["kl"] for c in curve[1:] if c["kl"] is not None), default=None)
                for b in kl_budgets:
                    row.budget_gold[b] = _curve_best_within(row.best, b, boot_seed)
            rows.append(row)
        for row in rows:
            for p in row.bon_points:
                p.estimate(boot_seed)
        ref = T["reference"].estimate(boot_seed)
        # The order of the shown statistic: mean test gold (the oracle included, marked as no method).
        rows.sort(key=lambda r: -(_row_gold(r).mean if _row_gold(r) else float("-inf")))
        seed_notes = mark_short(rows, report_seeds)
        comparison = compare_rows(rows)
        for r in rows:
            r.vs_best = ("not compared" if r.short else "best" if r.label in comparison["best"] else "indistinguishable"
                         if r.label in comparison["indistinguishable"] else "below" if r.label in comparison["means"]
                         else None)
        abl = _ablation_now(T, rows)
        out[task] = {"rows": rows, "tuned": tuned, "reference": ref, "comparison": comparison, "seed_notes": seed_notes,
                     "rm": {k: mean_ci(list(v.values())) for k, v in T["rm"].items()},
                     "rm_by_pairs": {n: mean_ci(list(v.values())) for n, v in T["rm_by_pairs"].items()},
                     "ablation": abl, "proxy_length_corr": mean_ci(list(T["proxy_length_corr"].values()))}
    return {"version": version, "other_versions": others, "tasks": out}


def _ablation_now(T, rows) -> dict:
    """pair count -> Point of the ablation runs at the point the plan's rule gives now: the method's chosen
    learning rate with each declared coefficient at its weakest (smallest) grid value."""
    by_key = {(r.method, r.reward): r for r in rows}
    out = {}
    for (mkey, n, pkey), pt in sorted(T["ablation"].items(), key=lambda kv: kv[0][1] or 0):
        row = by_key.get(mkey)
        if row is not None and row.grid and row.chosen.get("best"):
            want = {"lr": row.chosen["best"].get("lr")}
            for k in row.chosen["best"]:
                if k != "lr":
                    want[k] = min(g["point"][k] for g in row.grid if k in g["point"])
            if pkey != _key(want):
                continue
        out[n] = pt
    return out


def _row_gold(row) -> Optional[Estimate]:
    if row.best is not None:
        return row.best.est.get("gold")
    chosen = next((p for p in row.bon_points if p.point.get("chosen")), None)
    return chosen.est.get("gold") if chosen else None


def _add_best_of_n(T, rec, lb, seed, temp, labels):
    """best-of-n's record → two rows (proxy pick, gold-pick oracle), a Point per n (test numbers) with a
    validation curve over n; the n chosen on validation is the row's headline."""
    by_split = rec.get("best_of_n_by_split") or {"test": rec.get("best_of_n") or []}
    refs = rec.get("reference_by_split") or {}
    pick_n = _get(rec, "eval", "best_n")
    T["proxy_length_corr"][seed] = _num(_get(refs, "val", "proxy_length_corr"))
    has_proxy = lb.get("reward") == "proxy"
    for reward, gkey in ((("proxy", "gold_reward"), ("gold", "gold_reward_oracle")) if has_proxy else (("gold", "gold_reward_oracle"),)):
        row = T["rows"].setdefault((BEST_OF_N, reward), MethodRow(lb["task"], BEST_OF_N, reward, "baseline"))
        val = {p["n"]: p for p in by_split.get("val", [])}
        for p in by_split.get("test", []):
            pt = next((q for q in row.bon_points if q.point.get("n") == p["n"]), None)
            if pt is None:
                pt = Point({"n": p["n"]})
                row.bon_points.append(pt)
                row.bon_points.sort(key=lambda q: q.point["n"])
            ev = {**(rec.get("eval") or {}), **p, "gold_reward": p.get(gkey),
                  "gold_reward_ref": _get(refs, "test", "gold_reward_ref") or _get(rec, "eval", "gold_reward_ref"),
                  "mean_length_ref": _get(refs, "test", "mean_length_ref")}
            if reward == "gold":
                # the oracle row's own pick: its win rate, length, repetition (absent on file: shown as absent)
                ev.pop("proxy_reward", None)
                for k in ("win_rate_vs_ref", "mean_length", "repetition_rate", "kl_empirical"):
                    ev[k] = p.get(ORACLE_KEY[k])
            for m, v in _metrics({**rec, "train_time_s": 0.0}, ev, temp, labels if reward == "proxy" else 0.0).items():
                if v is not None:
                    pt.per_seed[m][seed] = v
            vp = val.get(p["n"])
            if vp is not None:
                pt.per_seed["val_gold"] = pt.per_seed.get("val_gold") or {}
                pt.per_seed["val_gold"][seed] = _num(vp.get(gkey))
        # the headline n: chosen on validation (by the proxy pick's gold; the oracle row by its own)
        val_means = {q.point["n"]: sum(q.per_seed.get("val_gold", {}).values()) / max(1, len(q.per_seed.get("val_gold", {})))
                     for q in row.bon_points if q.per_seed.get("val_gold")}
        if val_means:
            n_star = max(sorted(val_means), key=lambda n: val_means[n])
        else:
            n_star = pick_n
        for q in row.bon_points:
            q.point["chosen"] = q.point["n"] == n_star
        row.chosen["best"] = {"n": n_star}


def _curve_best_within(pt: Point, budget: float, boot_seed: int) -> Optional[Estimate]:
    """Best mean validation gold over the curve's steps whose mean KL ≤ budget, with that step's
    per-seed interval (a read-off of the trajectory, not a test-set number)."""
    curve = pt.mean_curve()
    ok = [c for c in curve if c["kl"] is not None and c["gold"] is not None and c["kl"] <= budget and c["n"] == len(pt.curves)]
    if not ok:
        return None
    best = max(ok, key=lambda c: c["gold"])
    vals = [next((p["gold"] for p in traj if p["step"] == best["step"]), None) for traj in pt.curves.values()]
    return mean_ci([v for v in vals if v is not None])


def _headline(row) -> Optional[Point]:
    """The Point a row is ordered and compared by: its ``best`` pick, or best-of-n at its chosen n."""
    if row.best is not None:
        return row.best
    return next((p for p in row.bon_points if p.point.get("chosen")), None)


def headline_seeds(row) -> dict:
    """{seed: test gold} of a row's headline configuration: its ``best`` pick, or best-of-n at its chosen n."""
    p = _headline(row)
    return dict(p.per_seed.get("gold", {})) if p is not None else {}


def mark_short(rows: list, report_seeds: Optional[list] = None) -> list:
    """Set ``row.short`` ("4 of 5 seeds") on each method row whose headline lacks a report seed that another row
    of the task has (a deleted or unusable result: comparing it would rank it on other seeds than the rest);
    returns the task's notes on seeds: those rows, seeds with no usable test gold, metrics missing on a seed,
    and report seeds no row has yet. ``report_seeds``: the suite's (None: every seed a row has)."""
    have = {s for r in rows if r.reward != "gold" for s in headline_seeds(r)}
    expected = have & set(report_seeds) if report_seeds else have
    notes = []
    if report_seeds and have and set(report_seeds) - have:
        notes.append(f"report seed(s) {', '.join(map(str, sorted(set(report_seeds) - have)))}: no usable result for "
                     "any method yet (every row is compared over the other seeds)")
    for r in rows:
        p = _headline(r)
        if p is None:
            continue
        mine = set(headline_seeds(r))
        lost = sorted(expected - mine)
        if lost and mine and r.reward != "gold":
            r.short = f"{len(mine & expected)} of {len(expected)} seeds"
            notes.append(f"{r.label}: not compared, {r.short} (no usable test gold on seed(s) "
                         f"{', '.join(map(str, lost))}: a result deleted, failed or unusable)")
        if p.no_gold:
            notes.append(f"{r.label}: seed(s) {', '.join(map(str, p.no_gold))} have results but no usable test gold, "
                         "and are left out of every column of the row")
        for m, seeds in sorted(p.gaps.items()):
            notes.append(f"{r.label}: {METRIC_NAMES.get(m, m)} has no usable value on seed(s) {', '.join(map(str, seeds))}; its column is "
                         f"the mean of the other {len(mine) - len(seeds)}")
    return notes


def compare_rows(rows: list) -> dict:
    """:func:`stats.compare_all` of the rows' headline test gold, paired by seed; the oracle (best-of-n picked
    by the gold reward itself) is a ceiling, not a method, and stays out of the family, and so does a row short
    of a report seed (``row.short``, :func:`mark_short`)."""
    per = {r.label: headline_seeds(r) for r in rows if r.reward != "gold" and not r.short}
    return compare_all({k: v for k, v in per.items() if v})
