"""Render the board: leaderboard/LEADERBOARD.md, frontier.png and index.html from results/*.json.

Everything is derived from the result files (nothing is re-run), so the three outputs always agree.
index.html is one self-contained file: the plot inlined as base64, a few lines of inline script
to sort the tables, no network access; every string that comes from a result is escaped.
"""

from __future__ import annotations

import html
import math
import os
from collections import Counter

from prefopt.leaderboard import checks, ensemble, select, transfer
from prefopt.leaderboard.aggregate import REWARD_LABEL, aggregate
from prefopt.leaderboard.store import atomic_write as _atomic_write
from prefopt.leaderboard.store import load_results

PROTOCOL = """\
Per task and seed: π_SFT (the testbed's SFT policy; on the real-checkpoint tier, the checkpoint itself) →
K completions per training prompt → pairs labelled by the gold reward (Bradley–Terry draws on the toy
tasks, exact match on smol_arith) → a proxy reward model (the `reward` objective) on those pairs where
the suite lists the task in `proxy_tasks` → every method on the same pairs / prompts: offline methods on
the pairs; online methods against the proxy reward model and, where the task has one, the verifiable
reward. Three disjoint prompt sets per task: training, validation, test. **Tuning**: each method runs
its grid (the suite's learning rates × its own declared main coefficient) on tuning seeds that are never
report seeds. A grid point whose validation curve **diverged** on any tuning seed (gold below π_SFT's by
more than the suite's margin, or KL past its bound, at any evaluation) is not eligible; among the rest,
the pick maximises the **worst tuning seed's** final validation gold (with two tuning seeds, exactly
mean − std), so a configuration at the edge of divergence that one seed happened to survive is not
picked; a second pick does the same among the points within the suite's validation-KL budget on every
tuning seed. A pick on the top or bottom learning rate extends the grid one step that way, once.
**Reported numbers are test-prompt numbers of the picks' report runs only.** Every run evaluates on the
validation prompts every k steps: the curves (gold reward against √KL, proxy dashed in gold units) and
Gao et al.'s fits come from those, and a report run counts as diverged by the same rule. Seeds share
π_SFT, pairs and reward model across methods, so comparisons are paired: the matrix gives P(row beats
column) by a paired bootstrap over seeds, and a method's rank counts only the methods whose paired 95%
interval lies above it (ties share a rank); rows are in rank order. Intervals: 95% percentile
bootstrap over report seeds (exact enumeration for ≤ 5 seeds); **bold**: best mean of a column (KL is
not ranked)."""

REPRO = """\
Reproduces exactly: the same code version on the same CPU capability (and the same torch threads per
job): every number is a deterministic function of config, code and machine. Reproduces only
statistically: another CPU kind (AVX2 vs AVX-512 round differently and RL amplifies it; single runs
moved by up to ±0.2 gold on the earlier board), which is why results carry their CPU capability and
the board never mixes them in one row. A rerun on another CPU should give rankings within the
intervals shown; a rank that depends on one seed is not separated here in the first place."""


# A fitted peak KL more than this many times the curve's largest KL is shown as "> K", not as a number.
EXTRAPOLATION = 2.0


def suite_lines(suite) -> list:
    """The suite's settings as shipped in conf/leaderboard/SUITE.yaml (empty if it is not there)."""
    try:
        from prefopt.leaderboard.plan import load_suite

        c = load_suite(suite)
    except Exception:  # noqa: BLE001 — a suite known only from its results
        return []
    out = [f"report seeds {c['seeds']}, tuning seeds {c['tuning_seeds']}, tasks {c['tasks']}; seed s sets "
           f"{', '.join(c['seed_keys'])}",
           "learning-rate grid: " + "; ".join(f"{t}: {v}" for t, v in c["lr_grid"].items())
           + f"; second pick at validation KL ≤ {c['pick_kl_budget']}",
           f"every run: {' '.join(c['common'])}",
           f"reward model ({c['reward_model']}) on {c['proxy_tasks']}: {' '.join(c['stage1'])}",
           f"offline: {' '.join(c['offline'])}", f"online: {' '.join(c['online'])}"]
    out += [f"online on {t}: {' '.join(v)}" for t, v in (c.get("online_task") or {}).items()]
    out += [f"{k}: {' '.join(v)}" for k, v in (c.get("algo") or {}).items()]
    if c.get("best_of_n"):
        out.append(f"best-of-n: n in {c['best_of_n']['ns']} from {c['best_of_n']['samples']} samples per prompt")
    if c.get("ablation"):
        a = c["ablation"]
        out.append(f"pairs ablation: {a['method']} on {a['task']} against reward models on {a['pair_prompts']} pair "
                   f"prompts, seeds {a['seeds']}")
    if c.get("exclude"):
        out.append(f"not run: {', '.join(c['exclude'])}")
    return out


def task_order(agg, suite) -> list:
    have = set(agg["tasks"])
    try:
        from prefopt.leaderboard.plan import load_suite

        listed = [t for t in load_suite(suite)["tasks"] if t in have]
    except Exception:  # noqa: BLE001
        listed = []
    return listed + sorted(have - set(listed))


def _fmt(est, digits, ci=True):
    if est is None:
        return "—"
    s = f"{est.mean:.{digits}f}"
    if ci and est.n > 1 and est.hi > est.lo:
        s += f" [{est.lo:.{digits}f}, {est.hi:.{digits}f}]"
    return s



def _pt(point: dict) -> str:
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


def _headline(row):
    """(Point, chosen point) the row is ranked by: the best pick, or best-of-n at its validation-chosen n."""
    if row.best is not None:
        return row.best, row.chosen.get("best", {})
    p = next((q for q in row.bon_points if q.point.get("chosen")), None)
    return p, ({"n": p.point["n"]} if p else {})


COLS = [("test gold", "gold", +1, 3), ("win vs π_SFT", "win", +1, 3), ("KL", "kl", None, 2),
        ("proxy−gold gap", "gap", 0, 3), ("Δ length", "dlen", None, 1), ("repetition", "rep", -1, 3)]
COST = [("labels", "labels", 0), ("samples", "samples", 0), ("policy tokens", "tokens", 0), ("wall s", "wall", 0),
        ("peak MB", "mem", 0)]


def table(task_agg, budgets):
    """(header, [cells]) for one task: [(text, sort value, bold)]."""
    rows = task_agg["rows"]
    header = (["rank", "method", "signal", "chosen (validation)"] + [c[0] for c in COLS]
              + [f"gold @ KL≤{b:g} (curve)" for b in budgets] + ["peak KL (fit)", "peak gain (fit)", "pick @ KL budget",
                                                                  "its test gold", "its KL"]
              + [c[0] for c in COST] + ["diverged", "seeds"])
    heads = [_headline(r) for r in rows]
    best = {}
    for title, m, d, _ in COLS:
        vals = [(p.est.get(m).mean, i) for i, (p, _) in enumerate(heads) if p is not None and p.est.get(m)]
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
        cells.append((_fmt(e, dg), e.mean if e else None, False))
    cells += [(_fmt(ref.est.get("gold"), 3), None, False)] * len(budgets) + [("—", None, False)] * 5
    cells += [("—", None, False)] * len(COST) + [("—", None, False), (str(ref.seeds), ref.seeds, False)]
    out.append(cells)
    for i, (r, (p, chosen)) in enumerate(zip(rows, heads)):
        sig = REWARD_LABEL.get(r.reward, str(r.reward))
        cells = [(str(r.rank) if r.rank else "—", r.rank, False), (r.label, r.label, False), (sig, sig, False),
                 (_pt(chosen) + _edge(r, chosen), _pt(chosen), False)]
        for title, m, d, dg in COLS:
            e = p.est.get(m) if p is not None else None
            cells.append((_fmt(e, dg), e.mean if e else None, i in best[title]))
        for b in budgets:
            e = r.budget_gold.get(b)
            cells.append((_fmt(e, 3), e.mean if e else None, False))
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
        cells.append((_pt(r.chosen["at_budget"]) + _edge(r, r.chosen["at_budget"]) if ab else "—", None, False))
        cells.append((_fmt(ab.est.get("gold"), 3) if ab else "—", ab.est["gold"].mean if ab and ab.est.get("gold") else None, False))
        cells.append((_fmt(ab.est.get("kl"), 2, ci=False) if ab else "—", ab.est["kl"].mean if ab and ab.est.get("kl") else None, False))
        for title, m, dg in COST:
            e = p.est.get(m) if p is not None else None
            cells.append(("—" if e is None else f"{e.mean:,.{dg}f}", e.mean if e else None, False))
        n = p.seeds if p is not None else 0
        dv = diverged_count(p)
        cells.append((f"{dv}/{n}" if p is not None and p.diverged else "—", dv, False))
        cells.append((str(n), n, False))
        out.append(cells)
    return header, out


def diverged_count(p) -> int:
    """Report seeds whose validation curve diverged (select.divergence_of, the rule that makes a tuning
    point ineligible)."""
    return sum(1 for why in (getattr(p, "diverged", None) or {}).values() if why)


# The main table: what a reader compares. The rest of table()'s columns go to the task's "cost and
# diagnostics" table, so that neither is 23 columns wide.
MAIN_COLS = ("rank", "method", "signal", "chosen (validation)", "test gold", "win vs π_SFT", "KL", "diverged")
DIAG_COLS = ("method", "proxy−gold gap", "Δ length", "repetition", "peak KL (fit)", "peak gain (fit)", "labels",
             "samples", "policy tokens", "wall s", "peak MB", "seeds")


def md_table(header, rows, cols) -> list:
    keep = [header.index(c) for c in cols if c in header]
    out = ["| " + " | ".join(_md(header[i]) for i in keep) + " |", "|" + "---|" * len(keep)]
    return out + ["| " + " | ".join(_md(cells[i][0], cells[i][2]) for i in keep) + " |" for cells in rows]


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
            parts.append(f"{_pt(g['point'])}: {val}{mark}")
        out.append(f"{r.label}: " + "; ".join(parts))
    return out


def matrix_table(task_agg):
    rows = [r for r in task_agg["rows"] if _headline(r)[0] is not None and r.reward != "gold"]  # the oracle is no method
    labels = [r.label for r in rows]
    header = ["P(row beats column)"] + labels
    body = []
    for a in labels:
        cells = [a]
        for b in labels:
            if a == b:
                cells.append("·")
                continue
            res = task_agg["matrix"].get((a, b))
            if not res:
                cells.append("—")
            else:
                sep = res["n"] > 1 and res["diff"].lo > 0
                cells.append(f"{res['p_a_beats_b']:.2f}" + ("*" if sep else ""))
        body.append(cells)
    return header, body


def check_rows(agg, suite, budgets) -> dict:
    samples = 16
    try:
        from prefopt.leaderboard.plan import load_suite

        samples = int(load_suite(suite)["best_of_n"]["samples"])
    except Exception:  # noqa: BLE001
        pass
    return {t: checks.run_all(agg["tasks"][t], budgets, samples) for t in agg["tasks"]}


def _md(text, bold=False) -> str:
    t = html.escape(str(text), quote=False).replace("|", "\\|")
    return f"**{t}**" if bold else t


def rm_line(task_agg) -> str:
    rm = task_agg.get("rm") or {}
    if not rm:
        return "No proxy reward model on this task (see the suite's proxy_tasks)."
    f = lambda k: _fmt(rm.get(k), 3)  # noqa: E731
    return (f"Proxy reward model (held-out pairs): accuracy {f('pairwise_accuracy')} against the labels, "
            f"{f('pairwise_accuracy_gold')} against the gold ordering (the noisy labels themselves agree with "
            f"the gold ordering {f('label_accuracy_gold')}).")


def header_lines(agg, records) -> list:
    code, cpu = agg["version"] or ("—", "—")
    commits = Counter(r.get("git_commit") or "unknown" for r in records)
    out = [f"Code version `{code}` (hash of the training and evaluation source; git commit(s): "
           + ", ".join(f"`{c}` ×{n}" for c, n in commits.most_common()) + f"), CPU capability **{cpu}**, "
           f"{len(records)} result(s)."]
    for (c, p), n in sorted(agg["other_versions"].items()):
        out.append(f"Not shown: {n} result(s) of code version `{c}` on CPU capability {p} (a row never mixes versions "
                   "or machines).")
    return out


def task_section(T, task, budgets, task_checks, level="##", title=None) -> list:
    """One task's sections: headline, main table, cost and diagnostics, grids, paired matrix, checks."""
    header, rows = table(T, budgets)
    lines = [f"{level} {title or task}", "", headline(T), ""] + md_table(header, rows, MAIN_COLS) + [""]
    side = [c for c in header if c.startswith("gold @ KL") or c in ("pick @ KL budget", "its test gold", "its KL")]
    if any(cells[header.index(c)][0] != "—" for cells in rows[1:] for c in side):
        lines += [f"{level}# {task}: at a KL budget (validation curve read-offs; the second pick's test numbers)", ""]
        lines += md_table(header, rows, ("method", *side)) + [""]
    lines += [f"{level}# {task}: cost and diagnostics", ""] + md_table(header, rows, DIAG_COLS) + [""]
    lines += [rm_line(T), "", f"{level}# {task}: tuning grids (validation gold of the worst tuning seed; ★ best, "
              "◆ best at the KL budget)", ""]
    lines += [f"- {_md(x)}" for x in grid_lines(T)] + [""]
    mh, mb = matrix_table(T)
    if len(mh) > 2:
        lines += [f"{level}# {task}: paired comparison (test gold; * the paired 95% interval of the difference "
                  "excludes 0)", "", "| " + " | ".join(_md(h) for h in mh) + " |", "|" + "---|" * len(mh)]
        lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in mb] + [""]
    if task_checks:
        lines += [f"{level}# {task}: sanity checks from the literature", "", "| check | expected | result | numbers |",
                  "|---|---|---|---|"]
        lines += [f"| {_md(c['name'])} | {_md(c['expect'])} | {_md(c['status'].upper(), c['status'] == 'fail')} | "
                  f"{_md(c['detail'])} |" for c in task_checks] + [""]
    return lines


def _cost(p) -> str:
    if p is None:
        return ""
    e = lambda m: p.est.get(m)  # noqa: E731
    parts = [f"{e(m).mean:,.0f} {name}" for m, name in (("labels", "labels"), ("samples", "samples"), ("wall", "s/run"))
             if e(m) is not None and (e(m).mean or m == "wall")]
    return ", ".join(parts)


def headline(T) -> str:
    """The task in one paragraph: the methods tied for best (rank 1), the best offline method, and what
    each of them costs (labels, samples generated, wall seconds per run)."""
    rows = [r for r in T["rows"] if r.reward != "gold" and _headline(r)[0] is not None]
    if not rows:
        return "No method has report results yet."
    g = lambda r: _headline(r)[0].est.get("gold")  # noqa: E731
    desc = lambda r: f"{r.label} {_fmt(g(r), 2, ci=False)} ({_cost(_headline(r)[0])})"  # noqa: E731
    top = [r for r in rows if r.rank == 1]
    ref = T["reference"].est.get("gold")
    out = ["**Tied for best** (rank 1): " + "; ".join(desc(r) for r in top) + "."]
    off = [r for r in rows if r.category == "offline"]
    if off:
        b = off[0]
        out.append(f"**Best offline**: {desc(b)}, rank {b.rank}.")
    if ref is not None:
        out.append(f"π_SFT: {_fmt(ref, 2, ci=False)}.")
    div = [f"{r.label} {diverged_count(r.best)}/{r.best.seeds}" for r in rows if r.best is not None and diverged_count(r.best)]
    out.append("Report seeds diverged: " + (", ".join(div) if div else "none") + ".")
    return " ".join(out)


def picks_changed(agg, spec=None) -> tuple[list, int, int]:
    """(lines, changed, compared): each row whose ``best`` pick differs from the earlier rule's (highest mean
    validation gold over the first two tuning seeds, diverged points eligible, no grid extension), and why."""
    out, changed, n = [], 0, 0
    lr_grid = (spec or {}).get("lr_grid") or {}
    for task, T in agg["tasks"].items():
        base = {float(x) for x in lr_grid.get(task, lr_grid.get("default", []))}
        for r in T.get("tuned", T["rows"]):
            new = next((x["point"] for x in [select.choose(r.grid, None)["best"]] if x), None) if r.grid else None
            old = r.chosen_mean.get("best")
            if not r.grid or new is None or old is None:
                continue
            n += 1
            if _key(new) == _key(old):
                continue
            changed += 1
            g = {_key(x["point"]): x for x in r.grid}
            go, gn = g.get(_key(old)), g.get(_key(new))
            if go and go.get("diverged"):
                why = f"the earlier pick diverged on {go['diverged']}/{go['seeds']} tuning seeds ({go['why']})"
            elif go and gn:
                why = (f"its worst tuning seed scored {go['val_gold_worst']:.3f} (mean {go['val_gold']:.3f}) against "
                       f"{gn['val_gold_worst']:.3f} (mean {gn['val_gold']:.3f})")
            else:
                why = "no score for the earlier pick"
            if base and new.get("lr") is not None and all(not math.isclose(new["lr"], x) for x in base):
                why += f"; lr {new['lr']:g} is the grid's extension"
            out.append(f"{task}/{r.label}: {_pt(old)} → {_pt(new)}: {why}")
    return out, changed, n


def _key(point: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in point.items() if k != "chosen"))


def tier_cost(records) -> str:
    """What a suite's results (tuning and report) cost: the sum of their job times, and the elapsed time
    from the first job's start to the last one's end (jobs run in parallel, and other suites may have
    shared the machine: the note says which)."""
    import datetime

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
        out += f", {(max(e for _, e in spans) - min(s for s, _ in spans)).total_seconds() / 60:.0f} min elapsed"
    return out


def transfer_lines(result, a_name, b_name, title, note="") -> list:
    """A comparison of two boards' rankings (:mod:`prefopt.leaderboard.transfer`) as Markdown."""
    if result is None:
        return [title, "", f"Not enough common methods with report results between {a_name} and {b_name}.", ""]
    lines = [title, "", (note + " " if note else "") + f"**{transfer.verdict(result['tau'])}** ({result['tau']['resamples']} "
             f"bootstrap resamples of each board's seeds: {result['tau']['seeds'][0]} and {result['tau']['seeds'][1]}).", "",
             f"| method | {a_name}: test gold | rank | board rank | {a_name}: pick | {b_name}: test gold | rank | board rank "
             f"| {b_name}: pick |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {_md(r['label'])} | {_fmt(r['a'], 3)} | {r['rank_a']} | {r['board_rank_a'] or '—'} | "
                     f"{_md(_pt(r['pick_a']))} | {_fmt(r['b'], 3)} | {r['rank_b']} | {r['board_rank_b'] or '—'} | "
                     f"{_md(_pt(r['pick_b']))} |")
    if result["only_a"] or result["only_b"]:
        lines += ["", f"Not compared (on one board only): {', '.join(result['only_a'] + result['only_b'])}."]
    return lines + [""]


README_COLS = ("rank", "method", "signal", "chosen (validation)", "test gold", "win vs π_SFT", "KL", "diverged", "seeds")


def readme_block(board) -> str:
    """The README's compact copy of the board: per task of every tier, the columns of README_COLS, and the
    headlines (transfer, cross-CPU, selection)."""
    agg, suite = board["agg"], board["suite"]
    code, cpu = agg["version"] or ("—", "—")
    lines = [f"Suite `{suite}`" + "".join(f" + `{t['suite']}`" for t in board["tiers"]) + f", code version `{code}`, "
             f"CPU capability **{cpu}**; test-prompt numbers of each method's validation-chosen configuration, means over "
             "report seeds with 95% intervals; rows in rank order (a rank counts only the methods whose paired interval "
             "lies above; ties share a rank); diverged: report seeds whose validation curve diverged. The whole board "
             "(grids, curves, fits, paired matrix, checks, cost): [`leaderboard/LEADERBOARD.md`](leaderboard/LEADERBOARD.md).",
             ""]
    for b in [board] + board["tiers"]:
        for task in task_order(b["agg"], b["suite"]):
            header, rows = table(b["agg"]["tasks"][task], b["budgets"])
            lines += [f"**{task}** (suite `{b['suite']}`)", ""] + md_table(header, rows, README_COLS) + [""]
    lines += [f"- {x}" for x in board["headlines"]]
    return "\n".join(lines).rstrip() + "\n"


README_BEGIN, README_END = "<!-- leaderboard:begin", "<!-- leaderboard:end -->"


def write_readme_block(readme: str, block: str) -> bool:
    """Replace what lies between the README's leaderboard markers with ``block``; False if there are no markers."""
    if not os.path.exists(readme):
        return False
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    i, j = text.find(README_BEGIN), text.find(README_END)
    if i < 0 or j < i:
        return False
    start = text.index("\n", i) + 1  # the begin marker's own line stays
    _atomic_write(readme, text[:start] + block + text[j:])
    return True


def notes(agg, loaded, suite, shown_suites=()) -> list:
    out = []
    if agg.get("v1_results"):
        out.append(f"{agg['v1_results']} result(s) of the first protocol (result_version 1: β picked on the reported "
                   "prompts, one learning rate for all, no code version) are in results/ and not shown")
    other = Counter(r["leaderboard"].get("suite") for r in loaded.ok
                    if r["leaderboard"].get("suite") not in (suite, "ensemble", *shown_suites))
    for s, n in sorted(other.items(), key=lambda kv: str(kv[0])):
        out.append(f"{n} result(s) of suite `{s}` not shown (`prefopt-leaderboard render suite={s}`)")
    for r in loaded.failed:
        lb = r["leaderboard"]
        if lb.get("suite") in (suite, *shown_suites):
            out.append(f"failed: {lb.get('job')} ({r.get('result_id') or r.get('config_hash')}): {str(r.get('error', ''))[:300]}")
    for name, why in loaded.problems:
        out.append(f"skipped file {name}: {why}")
    try:
        from prefopt.leaderboard.plan import load_suite

        out += list(load_suite(suite).get("board_notes") or [])
    except Exception:  # noqa: BLE001 — a suite known only from its results
        pass
    out.append("Selection reads validation numbers only (the `eval_periodic` block of the tuning runs); the table's test "
               "numbers come from the report seeds' runs, which chose nothing. `gold @ KL≤B (curve)` reads the report runs' "
               "validation curves (the best step within the budget), so it is a curve read-off, not a test number.")
    out.append("Peak KL / peak gain: Gao et al.'s RL form d(α − β log d), d = √KL, fitted by least squares to the mean "
               "validation curve (gain over π_SFT); — when the fit has no peak, and \"> K\" when its peak lies more than "
               f"{EXTRAPOLATION:g}× beyond the curve's largest KL K (gold still rising at the end of the budget: the peak "
               "would be an extrapolation, not a reading).")
    out.append("Cost: labels = preference labels the method drew on (its pairs, or its reward model's training pairs; 0 "
               "for a verifiable reward); samples = completions generated during training; policy tokens = tokens the "
               "policy was trained on; peak MB = RSS high-water mark of the job (CPU). Wall time and memory depend on "
               "the machine and on how many jobs ran at once.")
    out.append("Proxy−gold gap = label_temperature·(proxy − proxy_ref) − (gold − gold_ref), in gold units: positive "
               "when the reward model claims more than the real gain (over-optimization).")
    return out


def pick_suite(loaded, wanted=None):
    counts = Counter(r["leaderboard"].get("suite") for r in loaded.ok)
    if wanted:
        return wanted
    if "standard" in counts:
        return "standard"
    return counts.most_common(1)[0][0] if counts else None


def _suite_board(loaded, suite, kl_budgets, report) -> dict:
    """One suite's aggregate and what its sections need."""
    from prefopt.leaderboard.aggregate import pick_version
    from prefopt.leaderboard.plan import load_suite

    spec = {}
    try:
        spec = load_suite(suite)
    except Exception:  # noqa: BLE001 — a suite defined only by its results
        pass
    budgets = kl_budgets if kl_budgets is not None else list(spec.get("kl_budgets") or [])
    records = [r for r in loaded.ok if r["leaderboard"].get("suite") == suite]
    # Records of the first protocol (β picked on the reported prompts, no tuning grid, no code version)
    # answer another question: counted, never shown next to this protocol's rows.
    v1 = [r for r in records if (r.get("result_version") or 1) < 2]
    records = [r for r in records if r not in v1]
    if v1:
        report.append(f"  {len(v1)} result(s) of the first protocol (result_version 1) not shown")
    agg = aggregate(records, budgets, pick_kl_budget=spec.get("pick_kl_budget"), divergence=spec.get("divergence"))
    agg["v1_results"] = len(v1)
    _, shown = pick_version(records)
    versions = sorted({", ".join(f"{k} {v}" for k, v in sorted((r.get("versions") or {}).items())) for r in shown
                       if r.get("versions")})
    return {"suite": suite, "spec": spec, "agg": agg, "budgets": budgets, "records": records, "shown": shown,
            "versions": versions, "tiers": [], "headlines": []}


def cross_cpu(board) -> list:
    """[(cpu, task, transfer.compare result, runs)]: the suite's results of the board's code version on another
    CPU capability (a rerun of a subset), each task compared with the board over the seeds the rerun has."""
    code, cpu = board["agg"]["version"] or (None, None)
    others = {}
    for r in board["records"]:
        if r.get("code_version") == code and r.get("cpu_capability") not in (None, cpu):
            others.setdefault(r["cpu_capability"], []).append(r)
    out = []
    for other_cpu, recs in sorted(others.items()):
        spec = board["spec"]
        agg = aggregate(recs, board["budgets"], pick_kl_budget=spec.get("pick_kl_budget"), divergence=spec.get("divergence"))
        for task, T in agg["tasks"].items():
            seeds = {s for r in T["rows"] if r.best is not None for s in r.best.per_seed.get("gold", {})}
            if task in board["agg"]["tasks"] and seeds:
                res = transfer.compare(board["agg"]["tasks"][task], T, seeds_a=seeds)
                out.append((other_cpu, task, res, len(recs)))
    return out


def markdown(board, loaded, ensemble_md=()) -> str:
    agg, suite, budgets = board["agg"], board["suite"], board["budgets"]
    lines = ["# prefopt leaderboard", "",
             "Generated by `prefopt-leaderboard render` from `leaderboard/results/*.json`; do not edit by hand.", "",
             "## Headlines", ""] + [f"- {x}" for x in board["headlines"]] + [""]
    lines += header_lines(agg, board["shown"]) + ["", "![gold reward against √KL along training](frontier.png)", "",
                                                  "## Protocol", "", PROTOCOL, ""]
    checks_of = check_rows(agg, suite, budgets)
    lines += [f"## Toy tier (suite `{suite}`)", "", f"Cost: {tier_cost(board['shown'])}.", ""]
    for task in task_order(agg, suite):
        lines += task_section(agg["tasks"][task], task, budgets, checks_of.get(task), level="###")
    for t in board["tiers"]:
        ta = t["agg"]
        lines += [f"## Real-checkpoint tier (suite `{t['suite']}`)", ""]
        lines += header_lines(ta, t["shown"]) + [""]
        if t["spec"].get("budget_note"):
            lines += [t["spec"]["budget_note"], ""]
        lines += [f"Cost: {tier_cost(t['shown'])}.", "", f"![gold against √KL on the real checkpoint]({t['suite']}.png)", ""]
        tchecks = check_rows(ta, t["suite"], t["budgets"])
        for task in task_order(ta, t["suite"]):
            lines += task_section(ta["tasks"][task], task, t["budgets"], tchecks.get(task), level="###")
    lines += board.get("transfer_md", [])
    lines += board.get("cross_cpu_md", [])
    lines += board.get("selection_md", [])
    lines += list(ensemble_md)  # the reward-ensemble suite's section
    lines += ["## Reproducibility", "", REPRO, ""]
    for b in [board] + board["tiers"]:
        lines += [f"## Suite `{b['suite']}`", ""] + [f"- {html.escape(x, quote=False)}" for x in suite_lines(b["suite"])] + [""]
    lines += ["## Notes", ""] + [f"- {html.escape(n, quote=False)}" for n in notes(agg, loaded, suite, [t["suite"] for t in board["tiers"]])]
    for t in board["tiers"]:
        lines += [f"- {t['suite']}: {html.escape(n, quote=False)}" for n in (t["spec"].get("board_notes") or [])]
    lines += [""]
    lines += ["## Versions", ""] + [f"- {v}" for v in board["versions"]] + [""]
    return "\n".join(lines)


def render(out_dir: str = "leaderboard", suite: str = None, kl_budgets=None) -> list:
    """Write LEADERBOARD.md, frontier.png, index.html into ``out_dir``; returns report lines."""
    from prefopt.leaderboard import page, plot

    loaded = load_results(os.path.join(out_dir, "results"))
    suite = pick_suite(loaded, suite)
    report = [f"prefopt-leaderboard: {len(loaded.ok)} result(s), {len(loaded.failed)} failed run(s), "
              f"{len(loaded.problems)} unreadable file(s)"]
    report += [f"  skipped {n}: {why}" for n, why in loaded.problems]
    if suite is None:
        report.append("  nothing to render: no successful results")
        return report
    board = _suite_board(loaded, suite, kl_budgets, report)
    have = {r["leaderboard"].get("suite") for r in loaded.ok}
    board["tiers"] = [_suite_board(loaded, t, None, report) for t in (board["spec"].get("tiers") or []) if t in have]
    heads = board["headlines"]
    for b in [board] + board["tiers"]:
        for task in task_order(b["agg"], b["suite"]):
            heads.append(f"**{task}** (suite `{b['suite']}`): {headline(b['agg']['tasks'][task])}")
    # Transfer: the toy task's ranking against the real checkpoint's, over the methods both boards have.
    tr = board["spec"].get("transfer") or {}
    real = next((t for t in board["tiers"] if t["suite"] == tr.get("suite")), None)
    if tr and real is not None and tr.get("toy") in board["agg"]["tasks"] and tr.get("task") in real["agg"]["tasks"]:
        res = transfer.compare(board["agg"]["tasks"][tr["toy"]], real["agg"]["tasks"][tr["task"]])
        title = f"## Transfer: does the toy `{tr['toy']}` ranking predict `{tr['task']}` on the real checkpoint?"
        board["transfer_md"] = transfer_lines(res, tr["toy"], tr["task"], title,
                                              "Each method at its own validation-chosen configuration on each board.")
        if res is not None:
            heads.append(f"**Transfer** ({tr['toy']} → {tr['task']}): {transfer.verdict(res['tau'])}.")
    cc = cross_cpu(board)
    if cc:
        md = ["## Cross-CPU: a subset rerun on another CPU kind", "",
              "The same code version rerun under another CPU capability: its own reward models, tuning grid, picks and "
              "report runs (whether π_SFT and the pairs were rebuilt too is in the Notes); compared with this board over "
              "the methods and report seeds the rerun has.", ""]
        for other_cpu, task, res, n in cc:
            same = sum(1 for r in res["rows"] if _key(r["pick_a"]) == _key(r["pick_b"])) if res else 0
            md += transfer_lines(res, board["agg"]["version"][1], other_cpu,
                                 f"### {task}: {board['agg']['version'][1]} board vs {other_cpu} rerun ({n} runs)",
                                 f"Picks the same: {same} of {len(res['rows']) if res else 0}.")
            if res is not None:
                heads.append(f"**Cross-CPU** ({task}, {other_cpu} rerun, {len(res['rows'])} methods): {same} of "
                             f"{len(res['rows'])} picks the same; {transfer.verdict(res['tau'])}.")
        board["cross_cpu_md"] = md
    sel, changed, n = [], 0, 0
    for b in [board] + board["tiers"]:
        lines_b, c, k = picks_changed(b["agg"], b["spec"])
        sel += [f"- {b['suite']}: {_md(x)}" for x in lines_b]
        changed, n = changed + c, n + k
    if n:
        board["selection_md"] = (["## Selection: what the robust rule changed", "",
                                  f"{changed} of {n} picks differ from the earlier rule's (the highest mean validation gold over "
                                  "the first two tuning seeds, diverged points eligible, no grid extension), computed on "
                                  "the same tuning runs:", ""] + sel + [""])
        heads.append(f"**Selection**: the robust rule (no diverged point, worst of three tuning seeds, grid edges extended) "
                     f"changed {changed} of {n} picks against the earlier rule (mean of two tuning seeds) on the same "
                     "tuning runs (see Selection).")
    os.makedirs(out_dir, exist_ok=True)
    images = {"frontier.png": plot.frontier_png(board["agg"], task_order(board["agg"], suite),
                                                f"prefopt leaderboard ({suite})", os.path.join(out_dir, "frontier.png"))}
    for t in board["tiers"]:
        images[f"{t['suite']}.png"] = plot.frontier_png(t["agg"], task_order(t["agg"], t["suite"]),
                                                        f"prefopt leaderboard ({t['suite']})",
                                                        os.path.join(out_dir, f"{t['suite']}.png"))
    ens_md, _ = ensemble.board(loaded.ok, out_dir)  # the reward-ensemble suite's section, when it has results
    if ens_md and os.path.exists(os.path.join(out_dir, "ensemble.png")):
        with open(os.path.join(out_dir, "ensemble.png"), "rb") as f:
            images["ensemble.png"] = f.read()
    md = markdown(board, loaded, ens_md)
    _atomic_write(os.path.join(out_dir, "LEADERBOARD.md"), md)
    _atomic_write(os.path.join(out_dir, "index.html"), page.html_page(md, f"prefopt leaderboard — {suite}", images))
    report.append(f"  suite {suite}: wrote {out_dir}/LEADERBOARD.md, {', '.join(images)}, index.html")
    # The README next to the board's directory keeps a compact copy between its markers, so it follows the board.
    readme = os.path.join(os.path.dirname(os.path.abspath(out_dir)), "README.md")
    if suite == "standard" and write_readme_block(readme, readme_block(board)):
        report.append(f"  updated the compact table in {readme}")
    return report
