"""Render the board: leaderboard/LEADERBOARD.md, frontier.png and index.html from results/*.json.

Everything is derived from the result files (nothing is re-run), so the three outputs always agree.
index.html is one self-contained file: the plot inlined as base64, a few lines of inline script
to sort the tables, no network access; every string that comes from a result is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections import Counter

from prefopt.leaderboard import checks, ensemble
from prefopt.leaderboard.aggregate import REWARD_LABEL, aggregate
from prefopt.leaderboard.bon import best_of_n_kl
from prefopt.leaderboard.store import load_results

PROTOCOL = """\
Per task and seed: π_SFT (the testbed's SFT policy) → K completions per training prompt → pairs
labelled by Bradley–Terry draws on the gold reward → a proxy reward model (the `reward` objective) on
those pairs → every registered method on the same pairs / prompts: offline methods on the pairs;
online methods against the proxy reward model (and, where the task has one, the verifiable reward).
Three disjoint prompt sets per task: training, validation, test. **Tuning**: each method runs its grid
(the suite's learning rates × its own declared main coefficient) on tuning seeds that are never
report seeds; the configuration with the best mean *validation* gold reward (and a second pick: the
best at validation KL ≤ the suite's budget) then runs on the report seeds. **Reported numbers are
test-prompt numbers of those report runs only.** Every run evaluates on the validation prompts
every k steps: the curves (gold reward against √KL, proxy dashed in gold units) and Gao et al.'s
fits come from those. Seeds share π_SFT, pairs and reward model across methods, so comparisons are
paired: the matrix gives P(row beats column) by a paired bootstrap over seeds, and a method's rank
counts only the methods whose paired 95% interval lies above it (ties share a rank). Intervals:
95% percentile bootstrap over report seeds (exact enumeration for ≤ 5 seeds); **bold**: best mean of
a column (KL is not ranked)."""

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
              + [c[0] for c in COST] + ["seeds"])
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
    cells += [("—", None, False)] * len(COST) + [(str(ref.seeds), ref.seeds, False)]
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
        cells.append((str(n), n, False))
        out.append(cells)
    return header, out


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
            val = "—" if g["val_gold"] is None else f"{g['val_gold']:.3f} (KL {g['val_kl']:.2f})"
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


def markdown(agg, suite, budgets, loaded, versions, records, extra=()) -> str:
    lines = [f"# prefopt leaderboard — suite `{suite}`", "",
             "Generated by `prefopt-leaderboard render` from `leaderboard/results/*.json`; do not edit by hand.", ""]
    lines += header_lines(agg, records) + ["", "![gold reward against √KL along training](frontier.png)", "",
                                           "## Protocol", "", PROTOCOL, ""]
    all_checks = check_rows(agg, suite, budgets)
    for task in task_order(agg, suite):
        T = agg["tasks"][task]
        header, rows = table(T, budgets)
        lines += [f"## {task}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for cells in rows:
            lines.append("| " + " | ".join(_md(t, b) for t, _, b in cells) + " |")
        lines += ["", rm_line(T), "", f"### {task}: tuning grids (validation gold, KL; ★ best, ◆ best at the KL budget)", ""]
        lines += [f"- {_md(x)}" for x in grid_lines(T)] + [""]
        mh, mb = matrix_table(T)
        if len(mh) > 2:
            lines += [f"### {task}: paired comparison (test gold; * the paired 95% interval of the difference excludes 0)", "",
                      "| " + " | ".join(_md(h) for h in mh) + " |", "|" + "---|" * len(mh)]
            lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in mb] + [""]
        lines += [f"### {task}: sanity checks from the literature", "", "| check | expected | result | numbers |",
                  "|---|---|---|---|"]
        lines += [f"| {_md(c['name'])} | {_md(c['expect'])} | {_md(c['status'].upper(), c['status'] == 'fail')} | "
                  f"{_md(c['detail'])} |" for c in all_checks.get(task, [])] + [""]
    lines += list(extra)  # sections of other suites shown on this board (the reward-ensemble comparison)
    lines += ["## Reproducibility", "", REPRO, ""]
    lines += ["## Suite", ""] + [f"- {html.escape(x, quote=False)}" for x in suite_lines(suite)] + [""]
    lines += ["## Notes", ""] + [f"- {html.escape(n, quote=False)}" for n in notes(agg, loaded, suite)] + [""]
    lines += ["## Versions", ""] + [f"- {v}" for v in versions] + [""]
    return "\n".join(lines)


README_BEGIN, README_END = "<!-- leaderboard:begin", "<!-- leaderboard:end -->"
README_COLS = ("rank", "method", "signal", "chosen (validation)", "test gold", "win vs π_SFT", "KL", "seeds")


def readme_block(agg, suite, budgets, records) -> str:
    """The README's compact copy of the board: per task, the columns of README_COLS of the main table."""
    code, cpu = agg["version"] or ("—", "—")
    lines = [f"Suite `{suite}`, code version `{code}`, CPU capability **{cpu}**, {len(records)} results; test-prompt "
             "numbers of each method's validation-chosen configuration, means over report seeds with 95% intervals; "
             "a rank counts only the methods whose paired interval lies above (ties share a rank). The whole board "
             "(grids, curves, fits, paired matrix, checks, cost): [`leaderboard/LEADERBOARD.md`](leaderboard/LEADERBOARD.md).",
             ""]
    for task in task_order(agg, suite):
        header, rows = table(agg["tasks"][task], budgets)
        keep = [header.index(c) for c in README_COLS]
        lines += [f"**{task}**", "", "| " + " | ".join(README_COLS) + " |", "|" + "---|" * len(keep)]
        lines += ["| " + " | ".join(_md(cells[i][0], cells[i][2]) for i in keep) + " |" for cells in rows] + [""]
    return "\n".join(lines).rstrip() + "\n"


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


def notes(agg, loaded, suite) -> list:
    out = []
    if agg.get("v1_results"):
        out.append(f"{agg['v1_results']} result(s) of the first protocol (result_version 1: β picked on the reported "
                   "prompts, one learning rate for all, no code version) are in results/ and not shown")
    other = Counter(r["leaderboard"].get("suite") for r in loaded.ok if r["leaderboard"].get("suite") != suite)
    for s, n in sorted(other.items(), key=lambda kv: str(kv[0])):
        out.append(f"{n} result(s) of suite `{s}` not shown (`prefopt-leaderboard render suite={s}`)")
    for r in loaded.failed:
        lb = r["leaderboard"]
        if lb.get("suite") == suite:
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


def frontier_png(agg, suite, path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = task_order(agg, suite)
    n = max(1, len(tasks))
    fig, axes = plt.subplots(1, n, figsize=(7.2 * n, 5.6), squeeze=False)
    palette = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors) + list(plt.get_cmap("tab20b").colors)
    methods = sorted({r.method for t in tasks for r in agg["tasks"][t]["rows"] if r.method != "best-of-n"})
    mcolor = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    for ax, task in zip(axes[0], tasks):
        T = agg["tasks"][task]
        ys = []
        for row in T["rows"]:
            if row.method == "best-of-n":
                # validation numbers, like the training curves (its test numbers are in the table)
                pts = [p for p in row.bon_points if p.per_seed.get("val_gold")]
                x = [math.sqrt(max(best_of_n_kl(p.point["n"]), 0.0)) for p in pts]
                y = [sum(p.per_seed["val_gold"].values()) / len(p.per_seed["val_gold"]) for p in pts]
                style = dict(color="black", lw=2.2) if row.reward == "proxy" else dict(color="gray", lw=1.4, ls=":")
                ax.plot(x, y, marker="D", ms=4, label=f"best-of-n ({'proxy RM' if row.reward == 'proxy' else 'gold, oracle'} pick)",
                        **style)
                ys += y
                continue
            if row.best is None:
                continue
            curve = [c for c in row.best.mean_curve() if c["gold"] is not None and c["kl"] is not None]
            if not curve:
                continue
            c = mcolor[row.method]
            x = [math.sqrt(max(p["kl"], 0.0)) for p in curve]
            y = [p["gold"] for p in curve]
            ys += y
            ax.plot(x, y, color=c, marker="^" if row.reward == "exact" else ("s" if row.category == "online" else "o"), ms=4,
                    lw=1.6, ls=":" if row.reward == "exact" else "-", label=row.label)
            pc = [p for p in curve if p["proxy_cal"] is not None]
            if pc:
                ax.plot([math.sqrt(max(p["kl"], 0.0)) for p in pc], [p["proxy_cal"] for p in pc], color=c, ls="--", lw=1.0,
                        alpha=0.7)
                ys += [p["proxy_cal"] for p in pc]
        # π_SFT on the validation prompts: the curves' common step 0
        starts = [c[0]["gold"] for c in (r.best.mean_curve() for r in T["rows"] if r.best is not None)
                  if c and c[0]["step"] == 0 and c[0]["gold"] is not None]
        if starts:
            ax.plot([0], [sum(starts) / len(starts)], marker="*", ms=14, color="gold", mec="black", ls="none",
                    label="π_SFT (reference)", zorder=5)
        ys = [v for v in ys if math.isfinite(v)]
        if ys:
            lo, hi = min(ys), max(ys)
            pad = 0.08 * (hi - lo or 1.0)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("√KL(π ‖ π_SFT)   (√nats; validation prompts along training)")
        ax.set_ylabel("gold reward (validation prompts)")
        ax.set_title(f"{task}: gold vs √KL along training (dashed: proxy RM, calibrated)")
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
    seen = {}
    for a in axes[0]:
        for hh, ll in zip(*a.get_legend_handles_labels()):
            seen.setdefault(ll, hh)
    first = [k for k in seen if k.startswith(("π_SFT", "best-of-n"))]
    order = first + sorted(k for k in seen if k not in first)
    if order:
        fig.legend([seen[k] for k in order], order, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9,
                   frameon=False, title="● offline   ■ proxy RM   ▲ exact reward", title_fontsize=8)
    fig.suptitle(f"prefopt leaderboard ({suite}): each method's chosen configuration, mean over report seeds, "
                 "validation evaluations every k steps", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    _atomic_write(path, data)
    return data


SORT_JS = """
document.querySelectorAll('table.board th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var tb = th.closest('table').tBodies[0], rows = Array.prototype.slice.call(tb.rows);
    var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
      var nx = parseFloat(x), ny = parseFloat(y);
      if (x === '' || isNaN(nx)) { if (y === '' || isNaN(ny)) return (x || '').localeCompare(y || '') * (asc ? 1 : -1); return 1; }
      if (y === '' || isNaN(ny)) return -1;
      return (nx - ny) * (asc ? 1 : -1);
    });
    rows.forEach(function (r) { tb.appendChild(r); });
  });
});
"""



def html_page(agg, suite, budgets, loaded, versions, png: bytes, records, extra=()) -> str:
    e = html.escape
    parts = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>prefopt leaderboard — {e(suite)}</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1700px}"
             "table{border-collapse:collapse;font-size:13px;margin-bottom:2em}"
             "th,td{border:1px solid #ccc;padding:4px 7px;text-align:right;white-space:nowrap}"
             "th{background:#f3f3f3;cursor:pointer}td:nth-child(2),td:nth-child(3),td:nth-child(4){text-align:left}"
             "td.best{font-weight:bold;background:#e8f5e9}td.fail{color:#b00;font-weight:bold}img{max-width:100%}"
             "pre{white-space:pre-wrap}</style>",
             "</head><body>", f"<h1>prefopt leaderboard — suite <code>{e(suite)}</code></h1>"]
    parts += [f"<p>{e(x)}</p>" for x in header_lines(agg, records)]
    parts += ["<p>Click a column title to sort. Values: mean over report seeds [95% bootstrap interval] on test prompts.</p>",
              f"<img alt='gold reward against sqrt KL' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"]
    all_checks = check_rows(agg, suite, budgets)
    for task in task_order(agg, suite):
        T = agg["tasks"][task]
        header, rows = table(T, budgets)
        parts.append(f"<h2>{e(task)}</h2><table class='board'><thead><tr>")
        parts += [f"<th>{e(h)}</th>" for h in header]
        parts.append("</tr></thead><tbody>")
        for cells in rows:
            parts.append("<tr>" + "".join(
                f"<td data-v='{e('' if v is None else str(v), quote=True)}'{' class=best' if b else ''}>{e(t)}</td>"
                for t, v, b in cells) + "</tr>")
        parts.append(f"</tbody></table><p>{e(rm_line(T))}</p><h3>tuning grids</h3><ul>")
        parts += [f"<li>{e(x)}</li>" for x in grid_lines(T)]
        parts.append("</ul>")
        mh, mb = matrix_table(T)
        if len(mh) > 2:
            parts.append("<h3>paired comparison: P(row beats column)</h3><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in mh)
                         + "</tr>" + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in mb)
                         + "</table>")
        parts.append("<h3>sanity checks</h3><table><tr><th>check</th><th>expected</th><th>result</th><th>numbers</th></tr>")
        parts += [f"<tr><td>{e(c['name'])}</td><td>{e(c['expect'])}</td><td{' class=fail' if c['status'] == 'fail' else ''}>"
                  f"{e(c['status'])}</td><td>{e(c['detail'])}</td></tr>" for c in all_checks.get(task, [])]
        parts.append("</table>")
    parts += list(extra)
    parts += ["<h2>Protocol</h2>", f"<pre>{e(PROTOCOL)}</pre>", "<h2>Reproducibility</h2>", f"<p>{e(REPRO)}</p>",
              "<h2>Suite</h2><ul>"]
    parts += [f"<li><code>{e(x)}</code></li>" for x in suite_lines(suite)]
    parts += ["</ul><h2>Notes</h2><ul>"]
    parts += [f"<li>{e(n)}</li>" for n in notes(agg, loaded, suite)]
    parts += ["</ul><h2>Versions</h2><ul>"] + [f"<li>{e(v)}</li>" for v in versions] + ["</ul>"]
    parts += [f"<script>{SORT_JS}</script>", "</body></html>"]
    return "\n".join(parts)


def _atomic_write(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") if isinstance(data, bytes) else open(tmp, "w", encoding="utf-8") as f:
        f.write(data)
    os.replace(tmp, path)


def pick_suite(loaded, wanted=None):
    counts = Counter(r["leaderboard"].get("suite") for r in loaded.ok)
    if wanted:
        return wanted
    if "standard" in counts:
        return "standard"
    return counts.most_common(1)[0][0] if counts else None


def render(out_dir: str = "leaderboard", suite: str = None, kl_budgets=None) -> list:
    """Write LEADERBOARD.md, frontier.png, index.html into ``out_dir``; returns report lines."""
    loaded = load_results(os.path.join(out_dir, "results"))
    suite = pick_suite(loaded, suite)
    report = [f"prefopt-leaderboard: {len(loaded.ok)} result(s), {len(loaded.failed)} failed run(s), "
              f"{len(loaded.problems)} unreadable file(s)"]
    report += [f"  skipped {n}: {why}" for n, why in loaded.problems]
    if suite is None:
        report.append("  nothing to render: no successful results")
        return report
    budgets, pick_budget = kl_budgets, None
    from prefopt.leaderboard.plan import load_suite

    try:
        spec = load_suite(suite)
        pick_budget = spec["pick_kl_budget"]
        budgets = spec["kl_budgets"] if budgets is None else budgets
    except Exception:  # noqa: BLE001 — a suite defined only by its results
        budgets = [] if budgets is None else budgets
    records = [r for r in loaded.ok if r["leaderboard"].get("suite") == suite]
    # Records of the first protocol (β picked on the reported prompts, no tuning grid, no code version)
    # answer another question: counted, never shown next to this protocol's rows.
    v1 = [r for r in records if (r.get("result_version") or 1) < 2]
    records = [r for r in records if r not in v1]
    if v1:
        report.append(f"  {len(v1)} result(s) of the first protocol (result_version 1) not shown")
    agg = aggregate(records, budgets, pick_kl_budget=pick_budget)
    agg["v1_results"] = len(v1)
    from prefopt.leaderboard.aggregate import pick_version

    _, shown = pick_version(records)
    versions = sorted({", ".join(f"{k} {v}" for k, v in sorted((r.get("versions") or {}).items())) for r in shown
                       if r.get("versions")})
    os.makedirs(out_dir, exist_ok=True)
    png = frontier_png(agg, suite, os.path.join(out_dir, "frontier.png"))
    ens_md, ens_html = ensemble.board(loaded.ok, out_dir)  # the reward-ensemble suite's section, when it has results
    _atomic_write(os.path.join(out_dir, "LEADERBOARD.md"), markdown(agg, suite, budgets, loaded, versions, shown, ens_md))
    _atomic_write(os.path.join(out_dir, "index.html"), html_page(agg, suite, budgets, loaded, versions, png, shown,
                                                                 ens_html))
    report.append(f"  suite {suite}: wrote {out_dir}/LEADERBOARD.md, frontier.png, index.html")
    # The README next to the board's directory keeps a compact copy between its markers, so it follows the board.
    readme = os.path.join(os.path.dirname(os.path.abspath(out_dir)), "README.md")
    if suite == "standard" and write_readme_block(readme, readme_block(agg, suite, budgets, shown)):
        report.append(f"  updated the compact table in {readme}")
    return report
