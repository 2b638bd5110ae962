"""The main table's Markdown: per task, the table of each method at its validation-chosen configuration
in order of mean test gold, its KL-budget and cost/diagnostics tables, the tuning grids, the paired
comparisons and the sanity checks; and the formatting the other sections share (estimates, grid points, a ranking
comparison). Everything here reads an aggregate (:func:`prefopt.leaderboard.aggregate.aggregate`).
"""

from __future__ import annotations

import datetime
import html
import math
from collections import Counter

from prefopt.leaderboard import checks, transfer
from prefopt.leaderboard.aggregate import REWARD_LABEL
from prefopt.leaderboard.stats import ALPHA, CORRECTION, INTERVAL, LEVEL, mean_ci

# A fitted peak KL more than this many times the curve's largest KL is shown as "> K", not as a number.
EXTRAPOLATION = 2.0

def fmt_est(est, digits, ci=True):
    if est is None:
        return "—"
    s = f"{est.mean:.{digits}f}"
    if ci and est.n > 1 and est.hi > est.lo:
        s += f" [{est.lo:.{digits}f}, {est.hi:.{digits}f}]"
    return s


def fmt_point(point: dict) -> str:
    if not point:
        return "—"
    name = {"lr": "lr", "beta": "β", "kl_coef": "β", "samples_per_prompt": "n", "n": "n"}
    return " ".join(f"{name.get(k, k)}={v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{k}={v}"
                    for k, v in point.items() if k != "chosen")


def _edge(row, point: dict) -> str:
    """' (lr: top of its grid)' when a pick's learning rate is the largest (or smallest) of ≥ 3 tried: the
    optimum may lie beyond what was tried, and the reader should know."""
    lrs = sorted({g["point"]["lr"] for g in row.grid if isinstance(g["point"].get("lr"), (int, float))})
    lr = point.get("lr")
    if len(lrs) < 3 or lr is None:
        return ""
    return " (lr: top of its grid)" if lr == lrs[-1] else " (lr: bottom of its grid)" if lr == lrs[0] else ""


def headline_point(row):
    """(Point, chosen point) the row is ordered and compared by: the best pick, or best-of-n at its validation-chosen n."""
    if row.best is not None:
        return row.best, row.chosen.get("best", {})
    p = next((q for q in row.bon_points if q.point.get("chosen")), None)
    return p, ({"n": p.point["n"]} if p else {})

# (title, metric, direction of "better" for the bold best marker or None for none, digits). Only the outcome
# columns carry a best marker; diagnostics (gap, length, repetition) describe, they do not rank.
COLS = [("test gold", "gold", +1, 3), ("win vs π_SFT", "win", +1, 3), ("KL", "kl", None, 2),
        ("proxy−gold gap", "gap", None, 3), ("Δ length", "dlen", None, 1), ("repetition", "rep", None, 3)]
# The main table's comparison column: a row's standing against the best after the correction.
VS_BEST = {"best": "best", "indistinguishable": "≈ best", "below": "below", "not compared": "not compared", None: "—"}


def standing(row) -> str:
    """A row's "vs best" cell: its standing, or why it is not compared ("not compared: 4 of 5 seeds")."""
    if row.reward == "gold":
        return "oracle (no method)"
    return f"not compared: {row.short}" if row.short else VS_BEST[row.vs_best]
COST = [("labels", "labels", 0), ("samples", "samples", 0), ("policy tokens", "tokens", 0), ("wall s", "wall", 0),
        ("peak MB", "mem", 0)]


def table(task_agg, budgets):
    """(header, [cells]) for one task: [(text, sort value, bold)]."""
    rows = task_agg["rows"]
    header = (["vs best", "method", "signal", "chosen (validation)"] + [c[0] for c in COLS]
              + [f"val. gold @ KL≤{b:g}" for b in budgets] + ["peak KL (fit)", "peak gain (fit)", "pick @ KL budget",
                                                            "its test gold", "its KL"]
              + [c[0] for c in COST] + ["diverged", "below π_SFT", "seeds"])
    heads = [headline_point(r) for r in rows]
    best = {}
    for title, m, d, _ in COLS:
        vals = [(p.est.get(m).mean, i) for i, (p, _) in enumerate(heads)
                if p is not None and p.est.get(m) and rows[i].reward != "gold"]  # the oracle is no method
        if d is None or not vals:
            best[title] = set()
            continue
        key = (lambda v: v) if d > 0 else (lambda v: -v) if d < 0 else (lambda v: -abs(v))
        top = max(key(v) for v, _ in vals)
        best[title] = {i for v, i in vals if math.isclose(key(v), top, rel_tol=1e-9, abs_tol=1e-12)}
    out = []
    ref = task_agg["reference"]
    cells = [("—", None, False), ("π_SFT (reference)", "π_SFT", False), ("—", "", False), ("—", "", False)]
    for title, m, d, dg in COLS:
        e = ref.est.get(m) if ref is not None else None
        cells.append((fmt_est(e, dg), e.mean if e else None, False))
    # the curve read-offs are validation numbers: π_SFT's own is its validation gold (the curves' step 0)
    val0 = reference_validation(rows)
    cells += [(fmt_est(val0, 3), val0.mean if val0 else None, False)] * len(budgets)
    cells += [("—", None, False)] * 2 + [("π_SFT", None, False), (fmt_est(ref.est.get("gold"), 3), None, False),
                                         ("0", 0.0, False)]
    cells += [("—", None, False)] * len(COST) + [("—", None, False)] * 2 + [(str(ref.seeds), ref.seeds, False)]
    out.append(cells)
    for i, (r, (p, chosen)) in enumerate(zip(rows, heads)):
        sig = REWARD_LABEL.get(r.reward, str(r.reward))
        stand = standing(r)
        cells = [(stand, stand, False), (r.label, r.label, False), (sig, sig, False),
                 (fmt_point(chosen) + _edge(r, chosen), fmt_point(chosen), False)]
        for title, m, d, dg in COLS:
            e = p.est.get(m) if p is not None else None
            cells.append((fmt_est(e, dg), e.mean if e else None, i in best[title]))
        for b in budgets:
            e = r.budget_gold.get(b)
            cells.append((fmt_est(e, 3), e.mean if e else None, False))
        f = r.fit
        pk = f.peak_kl if f else None
        if pk is not None and r.fit_kl_max is not None and pk > EXTRAPOLATION * r.fit_kl_max:
            # The fitted form is bent by the curve's start; a peak far past the last measured KL is not a reading.
            cells.append((f"> {r.fit_kl_max:.2f}", None, False))
            cells.append(("—", None, False))
        else:
            cells.append(("—" if pk is None else f"{pk:.2f}", pk, False))
            pg = f.peak_gain if f and pk is not None else None
            cells.append(("—" if pg is None else f"{pg:+.3f}", pg, False))
        ab = r.at_budget
        cells.append((fmt_point(r.chosen["at_budget"]) + _edge(r, r.chosen["at_budget"]) if ab else "—", None, False))
        cells.append((fmt_est(ab.est.get("gold"), 3) if ab else "—", ab.est["gold"].mean if ab and ab.est.get("gold") else None, False))
        cells.append((fmt_est(ab.est.get("kl"), 2, ci=False) if ab else "—", ab.est["kl"].mean if ab and ab.est.get("kl") else None, False))
        for title, m, dg in COST:
            e = p.est.get(m) if p is not None else None
            cells.append(("—" if e is None else f"{e.mean:,.{dg}f}", e.mean if e else None, False))
        n = p.seeds if p is not None else 0
        dv = diverged_count(p)
        cells.append((f"{dv}/{len(p.diverged)}" if p is not None and p.diverged else "—", dv, False))
        below = sum(1 for v in (p.below_sft if p is not None else {}).values() if v)
        cells.append((f"{below}/{len(p.below_sft)}" if p is not None and p.below_sft else "—", below, False))
        cells.append((str(n), n, False))
        out.append(cells)
    return header, out


def diverged_count(p) -> int:
    """Report seeds whose validation curve diverged (select.divergence_of, the rule that makes a tuning
    point ineligible)."""
    return sum(1 for why in (p.diverged if p is not None else {}).values() if why)


def reference_validation(rows):
    """π_SFT's validation gold: the step-0 point of the report runs' curves (every run starts at π_SFT), as an
    interval over seeds; None without curves."""
    by_seed = {}
    for r in rows:
        for s, traj in (r.best.curves.items() if r.best is not None else ()):
            g0 = next((p["gold"] for p in traj if p.get("step") == 0 and p.get("gold") is not None), None)
            if g0 is not None:
                by_seed.setdefault(s, g0)
    return mean_ci(list(by_seed.values())) if by_seed else None


# The main table: what a reader compares. The rest of table()'s columns go to the task's "cost and
# diagnostics" table, so that neither is 23 columns wide.
MAIN_COLS = ("vs best", "method", "signal", "chosen (validation)", "test gold", "win vs π_SFT", "KL", "diverged",
             "below π_SFT", "seeds")
DIAG_COLS = ("method", "proxy−gold gap", "Δ length", "repetition", "peak KL (fit)", "peak gain (fit)", "labels",
             "samples", "policy tokens", "wall s", "peak MB", "seeds")


def md_table(header, rows, cols) -> list:
    keep = [header.index(c) for c in cols if c in header]
    out = ["| " + " | ".join(md(header[i]) for i in keep) + " |", "|" + "---|" * len(keep)]
    return out + ["| " + " | ".join(md(cells[i][0], cells[i][2]) for i in keep) + " |" for cells in rows]


def grid_lines(task_agg) -> list:
    """One line per tuned method: its grid with validation gold (KL) per point, the picks marked."""
    out = []
    for r in task_agg["rows"]:
        if not r.grid:
            continue
        picks = {k: tuple(sorted(v.items())) for k, v in r.chosen.items()}
        parts = []
        for g in r.grid:
            key = tuple(sorted(g["point"].items()))
            mark = "".join(s for k, s in (("best", "★"), ("at_budget", "◆")) if picks.get(k) == key)
            if g["val_gold"] is None:
                val = "—"
            elif g.get("diverged"):
                val = f"diverged on {g['diverged']}/{g['seeds']} ({g['why']})"
            else:
                val = f"{g['val_gold_worst']:.3f} (mean {g['val_gold']:.3f}, KL {g['val_kl']:.2f})"
            parts.append(f"{fmt_point(g['point'])}: {val}{mark}")
        out.append(f"{r.label}: " + "; ".join(parts))
    return out


def matrix_table(task_agg):
    """(header, body) of the paired comparisons: the mean test-gold difference row − column over common seeds,
    * where its Benjamini–Hochberg-adjusted p < ALPHA. Columns are numbered by the rows (the table fits a page)."""
    rows = [r for r in task_agg["rows"] if headline_point(r)[0] is not None and r.reward != "gold"]  # the oracle is no method
    labels = [r.label for r in rows]
    pairs = (task_agg.get("comparison") or {}).get("pairs", {})
    header = ["row − column"] + [str(i + 1) for i in range(len(labels))]
    body = []
    for i, a in enumerate(labels):
        cells = [f"{i + 1} {a}"]
        for b in labels:
            res = pairs.get((a, b))
            cells.append("·" if a == b else "—" if not res else f"{res['diff'].mean:+.2f}" + ("*" if res["separated"] else ""))
        body.append(cells)
    return header, body


def check_rows(agg, budgets, samples: int) -> dict:
    """{task: the sanity checks of :mod:`prefopt.leaderboard.checks`}; ``samples``: best-of-n's samples per prompt."""
    return {t: checks.run_all(agg["tasks"][t], budgets, samples) for t in agg["tasks"]}


def md(text, bold=False) -> str:
    t = html.escape(str(text), quote=False).replace("|", "\\|")
    return f"**{t}**" if bold else t


def rm_line(task_agg) -> str:
    rm = task_agg.get("rm") or {}
    if not rm:
        return "No proxy reward model on this task (see the suite's proxy_tasks)."
    f = lambda k: fmt_est(rm.get(k), 3) + (f" ({rm[k].label})" if rm.get(k) is not None else "")  # noqa: E731
    return (f"Proxy reward model (held-out pairs): accuracy {f('pairwise_accuracy')} against the labels, "
            f"{f('pairwise_accuracy_gold')} against the gold ordering (the noisy labels themselves agree with "
            f"the gold ordering {f('label_accuracy_gold')}).")

def task_section(T, task, budgets, task_checks, level="##", title=None) -> list:
    """One task's sections: headline, main table, KL budget, cost and diagnostics, grids, paired comparisons, checks."""
    header, rows = table(T, budgets)
    lines = [f"{level} {title or task}", "", headline(T), "",
             f"Test-prompt means over report seeds with {LEVEL:.0%} {INTERVAL}-intervals (n = the seeds column); rows in "
             f"order of mean test gold; vs best: paired t-tests, {CORRECTION}-adjusted over every pair of this task; a "
             "row short of a report seed that other rows have is not compared (the Notes name it).", ""]
    lines += md_table(header, rows, MAIN_COLS) + [""]
    side_tables = [
        (("pick @ KL budget", "its test gold", "its KL"), "the pick within the KL budget (test prompts)",
         "The second pick of each method (the best validation score among grid points within the suite's validation-KL "
         "budget on every tuning seed), on the test prompts, beside π_SFT's test gold; means over report seeds with "
         f"{LEVEL:.0%} {INTERVAL}-intervals."),
        (tuple(c for c in header if c.startswith("val. gold @ KL")), "gold within a KL budget along the validation curves",
         "Read off the report runs' validation curves (the best step whose mean KL is within the budget), beside π_SFT's "
         f"validation gold: validation numbers compared with validation numbers; {LEVEL:.0%} {INTERVAL}-intervals over "
         "report seeds at that step.")]
    for cols, heading, caption in side_tables:
        if any(cells[header.index(c)][0] != "—" for cells in rows[1:] for c in cols):
            lines += [f"{level}# {task}: {heading}", "", caption, ""] + md_table(header, rows, ("method", *cols)) + [""]
    lines += [f"{level}# {task}: cost and diagnostics", ""] + md_table(header, rows, DIAG_COLS) + [""]
    lines += [rm_line(T), "", f"{level}# {task}: tuning grids (validation gold of the worst tuning seed; ★ best, "
              "◆ best at the KL budget; a tie-broken pick says so)", ""]
    lines += [f"- {md(x)}" for x in grid_lines(T)] + [""]
    mh, mb = matrix_table(T)
    if len(mh) > 2:
        n = (T.get("comparison") or {}).get("tested", 0)
        lines += [f"{level}# {task}: paired comparisons (test gold)", "",
                  f"Mean difference row − column over common report seeds; * a paired t-test's p, {CORRECTION}-adjusted "
                  f"over all {n} pairs of this table, is below {ALPHA:g}.", "",
                  "| " + " | ".join(md(h) for h in mh) + " |", "|" + "---|" * len(mh)]
        lines += ["| " + " | ".join(md(c) for c in row) + " |" for row in mb] + [""]
    if task_checks:
        lines += [f"{level}# {task}: sanity checks from the literature", "", "| check | expected | result | numbers |",
                  "|---|---|---|---|"]
        lines += [f"| {md(c['name'])} | {md(c['expect'])} | {md(c['status'].upper())} | "
                  f"{md(c['detail'])} |" for c in task_checks] + [""]
    return lines


def _cost(p) -> str:
    if p is None:
        return ""
    e = lambda m: p.est.get(m)  # noqa: E731
    parts = [f"{e(m).mean:,.0f} {name}" for m, name in (("labels", "labels"), ("samples", "samples"), ("wall", "s/run"))
             if e(m) is not None and (e(m).mean or m == "wall")]
    return ", ".join(parts)


def _diverged_note(r) -> str:
    """A row statistically indistinguishable from the best only because a report seed collapsed (a wide
    interval, not a good method) says so where it is named."""
    k = diverged_count(r.best) if r.best is not None else 0
    return f" ({k}/{len(r.best.diverged)} diverged)" if k else ""


def headline(T) -> str:
    """The task in one paragraph: the best method by mean test gold with its interval, the methods
    statistically indistinguishable from it, the best offline method, π_SFT, and the seeds that diverged or
    ended below π_SFT; what each named method costs (labels, samples generated, wall seconds per run)."""
    rows = [r for r in T["rows"] if r.reward != "gold" and headline_point(r)[0] is not None]
    if not rows:
        return "No method has report results yet."
    g = lambda r: headline_point(r)[0].est.get("gold")  # noqa: E731
    cost = lambda r: _cost(headline_point(r)[0])  # noqa: E731
    bests = [r for r in rows if r.vs_best == "best"]
    if not bests:
        return "No method is compared: every row is short of a report seed (see the Notes)."
    tied = " (tied: equal means)" if len(bests) > 1 else ""
    out = ["**Best by mean test gold**" + tied + ": "
           + "; ".join(f"{b.label} {fmt_est(g(b), 2)} ({g(b).label}; {cost(b)})" for b in bests) + "."]
    same = [r for r in rows if r.vs_best == "indistinguishable"]
    n = (T.get("comparison") or {}).get("tested", 0)
    test = f"paired t-tests, {CORRECTION}-adjusted over {n} pairs, p ≥ {ALPHA:g}"
    out.append(f"**Statistically indistinguishable from {'one of them' if tied else 'it'}** ({test}): "
               + ("; ".join(f"{r.label} {fmt_est(g(r), 2, ci=False)}{_diverged_note(r)}" for r in same) if same else "none")
               + ".")
    off = [r for r in rows if r.category == "offline"]
    if off:
        b = off[0]
        out.append(f"**Best offline**: {b.label} {fmt_est(g(b), 2)} ({cost(b)}), {standing(b)}.")
    ref = T["reference"].est.get("gold")
    if ref is not None:
        out.append(f"π_SFT: {fmt_est(ref, 2, ci=False)}.")
    div = [f"{r.label} {diverged_count(r.best)}/{len(r.best.diverged)}" for r in rows if r.best is not None and diverged_count(r.best)]
    out.append("Report seeds diverged: " + (", ".join(div) if div else "none") + ".")
    low = [f"{r.label} {sum(r.best.below_sft.values())}/{len(r.best.below_sft)}" for r in rows
           if r.best is not None and any(r.best.below_sft.values())]
    out.append("Ended below π_SFT: " + (", ".join(low) if low else "none") + ".")
    return " ".join(out)


def point_key(point: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in point.items() if k != "chosen"))


# Runs of one suite closer than this in time belong to one stretch of running; a longer pause is where one
# session ended and a later one resumed the suite.
STRETCH_GAP_S = 30 * 60


def tier_cost(records) -> str:
    """What a suite's results (tuning and report) cost: the sum of their job times, and the elapsed time while
    they ran: the union of their [start, end] spans, in stretches separated by pauses over STRETCH_GAP_S (a suite
    resumed across sessions: one stretch per session). Jobs run in parallel, and other suites may have shared
    the machine: the note says which."""
    wall = sum(float(r.get("wall_time_s") or 0.0) for r in records)
    spans = []
    for r in records:
        try:
            end = datetime.datetime.fromisoformat(str(r.get("finished_at")))
        except ValueError:
            continue
        spans.append((end - datetime.timedelta(seconds=float(r.get("wall_time_s") or 0.0)), end))
    out = f"{len(records)} runs, {wall / 60:.0f} min of job time"
    if spans:
        stretches = []
        for start, end in sorted(spans):
            if stretches and (start - stretches[-1][1]).total_seconds() <= STRETCH_GAP_S:
                stretches[-1][1] = max(stretches[-1][1], end)
            else:
                stretches.append([start, end])
        elapsed = sum((e - s).total_seconds() for s, e in stretches) / 60
        out += f", {elapsed:.0f} min elapsed"
        if len(stretches) > 1:
            out += (f" in {len(stretches)} stretches (pauses over {STRETCH_GAP_S // 60} min between them: the "
                    "sessions it was resumed in)")
    return out


def transfer_lines(result, a_name, b_name, title, note="") -> list:
    """A comparison of two boards' rankings (:mod:`prefopt.leaderboard.transfer`) as Markdown."""
    if result is None:
        return [title, "", f"Not enough common methods with report results between {a_name} and {b_name}.", ""]
    lines = [title, "", (note + " " if note else "") + f"**{transfer.verdict(result['tau'])}**. Test gold: means over "
             f"each board's report seeds with {LEVEL:.0%} {INTERVAL}-intervals.", "",
             f"| method | {a_name}: test gold | rank | vs best | {a_name}: pick | {b_name}: test gold | rank | vs best "
             f"| {b_name}: pick |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {md(r['label'])} | {fmt_est(r['a'], 3)} | {r['rank_a']} | {VS_BEST[r['vs_best_a']]} | "
                     f"{md(fmt_point(r['pick_a']))} | {fmt_est(r['b'], 3)} | {r['rank_b']} | {VS_BEST[r['vs_best_b']]} | "
                     f"{md(fmt_point(r['pick_b']))} |")
    if result["only_a"] or result["only_b"]:
        lines += ["", f"Not compared (on one board only): {', '.join(result['only_a'] + result['only_b'])}."]
    return lines + [""]


def header_lines(agg, records, protocol=None) -> list:
    """The code version, the one git commit the shown results ran from (others of the same code version are
    counted), the CPU capability, and the pre-registration check (``protocol``: preregistration.check)."""
    code, cpu = agg["version"] or ("—", "—")
    commits = Counter((r.get("git_commit") or "unknown") for r in records)
    (commit, n), *rest = commits.most_common() or [("unknown", 0)]
    line = (f"Code version `{code}` (hash of the training and evaluation source), git commit `{commit}`"
            + (f" ({sum(k for _, k in rest)} more result(s) from {len(rest)} other commit(s) of the same code version)"
               if rest else "") + f", CPU capability **{cpu}**, {len(records)} result(s).")
    out = [line]
    if protocol is not None:
        out.append(protocol["line"])
    for (c, p), n in sorted(agg["other_versions"].items()):
        out.append(f"Not shown: {n} result(s) of code version `{c}` on CPU capability {p} (a row never mixes versions "
                   "or machines).")
    return out
