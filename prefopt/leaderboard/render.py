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

from prefopt.leaderboard.aggregate import REWARD_LABEL, aggregate
from prefopt.leaderboard.store import load_results

# Column: (title, metric, direction for "best": +1 higher, -1 lower, 0 closest to zero, None unmarked, digits)
COLUMNS = [
    ("gold reward", "gold", +1, 3),
    ("win rate vs π_ref", "win", +1, 3),
    ("KL(π‖π_ref)", "kl", None, 2),
    ("proxy−gold gap", "gap", 0, 3),
    ("Δ length (tokens)", "dlen", 0, 1),
    ("repetition", "rep", -1, 3),
]
RESOURCE_COLUMNS = [("peak MB", "mem", -1, 0), ("tokens/s", "tps", +1, 0)]
PROTOCOL = """\
Per task and seed: π_SFT (the testbed's SFT policy) → K completions per training prompt → pairs
labelled by Bradley–Terry draws on the gold reward (optional label flips) → a proxy reward model
(the `reward` objective) trained on those pairs → every registered method on the same pairs and the
same optimizer-step budget: offline methods on the pairs; online methods and rejection sampling
against the proxy reward model (and, on arith, against the exact-match reward too); best-of-n from
π_SFT at its analytic KL log n − (n−1)/n → evaluation on held-out prompts (the same for every seed
and method): gold reward, win rate against π_SFT, exact KL(π‖π_SFT), proxy reward, length,
repetition. Seeds are independent replicates: seed s sets the training seed, the SFT policy's seed
and the pair-sampling seed. Table rows show each method at its best β of the sweep (by gold
reward); intervals are 95% percentile-bootstrap intervals over seeds (exact enumeration for ≤ 5
seeds); **bold** marks the best value of a column (KL is not ranked)."""


def suite_lines(suite) -> list:
    """The suite's settings as shipped in conf/leaderboard/SUITE.yaml (empty if it is not there)."""
    try:
        from prefopt.leaderboard.plan import load_suite

        c = load_suite(suite)
    except Exception:  # noqa: BLE001 — a suite known only from its results
        return []
    out = [f"seeds {c['seeds']}, tasks {c['tasks']}; seed s sets {', '.join(c['seed_keys'])}",
           f"every run: {' '.join(c['common'])}",
           f"reward model ({c['reward_model']}): {' '.join(c['stage1'])}",
           f"offline: {' '.join(c['offline'])}", f"online: {' '.join(c['online'])}"]
    out += [f"online on {t}: {' '.join(v)}" for t, v in (c.get("online_task") or {}).items()]
    out += [f"{k}: {' '.join(v)}" for k, v in (c.get("algo") or {}).items()]
    out += [f"sweep {k}: " + ", ".join(f"{kk}={vv}" for kk, vv in v.items()) for k, v in (c.get("sweep") or {}).items()]
    out.append(f"best-of-n: n in {c['best_of_n']['ns']} from {c['best_of_n']['samples']} samples per prompt")
    if c.get("exclude"):
        out.append(f"not run: {', '.join(c['exclude'])}")
    return out


def task_order(agg, suite) -> list:
    """The suite's task order (reviews before arith in the shipped suites), then any others."""
    have = set(agg["suites"].get(suite, {}))
    try:
        from prefopt.leaderboard.plan import load_suite

        listed = [t for t in load_suite(suite)["tasks"] if t in have]
    except Exception:  # noqa: BLE001 — a suite known only from its results
        listed = []
    return listed + sorted(have - set(listed))


def _fmt(est, digits, ci=True):
    if est is None:
        return "—"
    s = f"{est.mean:.{digits}f}"
    if ci and est.n > 1 and est.hi > est.lo:
        s += f" [{est.lo:.{digits}f}, {est.hi:.{digits}f}]"
    return s


def _best(rows, metric, direction, get):
    vals = [(get(r), r) for r in rows]
    vals = [(e.mean, r) for e, r in vals if e is not None]
    if direction is None or not vals:
        return set()
    key = (lambda v: v) if direction > 0 else (lambda v: -v) if direction < 0 else (lambda v: -abs(v))
    top = max(key(v) for v, _ in vals)
    return {id(r) for v, r in vals if math.isclose(key(v), top, rel_tol=1e-9, abs_tol=1e-12)}


def _beta(row) -> str:
    if row.best is None:
        return "—"
    sweep = row.best.sweep or {}
    if sweep:
        k, v = next(iter(sweep.items()))
        others = sorted({p.sweep.get(k) for p in row.points if p.sweep.get(k) is not None})
        name = {"beta": "β", "kl_coef": "β", "n": "n"}.get(k, k)
        return f"{name}={v:g}" + (f" (of {', '.join(f'{o:g}' for o in others)})" if len(others) > 1 else "")
    for k in ("beta", "kl_coef"):
        if isinstance(row.params.get(k), (int, float)):
            return f"β={row.params[k]:g}"
    return "—"


def table_rows(rows, ref, budgets):
    """[(cells: list[(text, sort_value, is_best)], row)] plus the header, for one task."""
    header = ["method", "signal", "β / n"] + [c[0] for c in COLUMNS[:3]] + [f"gold @ KL≤{b:g}" for b in budgets] \
        + [c[0] for c in COLUMNS[3:]] + ["wall s (gen / train)"] + [c[0] for c in RESOURCE_COLUMNS] + ["seeds"]
    getters = {}
    for title, m, d, dg in COLUMNS + RESOURCE_COLUMNS:
        getters[title] = (lambda r, m=m: r.best.est.get(m), d, dg)
    for b in budgets:
        getters[f"gold @ KL≤{b:g}"] = (lambda r, b=b: r.at_budget.get(b), +1, 3)
    best = {t: _best(rows, None, d, g) for t, (g, d, _) in getters.items()}
    out = []
    all_rows = [("ref", None)] + [("row", r) for r in rows]
    for kind, r in all_rows:
        cells = []
        if kind == "ref":
            cells += [("π_SFT (reference)", "π_SFT (reference)", False), ("—", "", False), ("—", "", False)]
        else:
            sig = REWARD_LABEL.get(r.reward, str(r.reward))
            cells += [(r.label, r.label, False), (sig, sig, False), (_beta(r), _beta(r), False)]
        for t in header[3:-4]:
            g, d, dg = getters[t]
            if kind == "ref":
                m = next((c[1] for c in COLUMNS + RESOURCE_COLUMNS if c[0] == t), None)
                est = ref.est.get(m) if (ref is not None and m) else None
                if t.startswith("gold @"):
                    est = ref.est.get("gold") if ref is not None else None
                cells.append((_fmt(est, dg), est.mean if est else None, False))
            else:
                est = g(r)
                cells.append((_fmt(est, dg), est.mean if est else None, id(r) in best[t]))
        if kind == "ref":
            cells += [("—", None, False)] * (1 + len(RESOURCE_COLUMNS))
            n = ref.seeds if ref is not None else 0
        else:
            w, gn, tr = (r.best.est.get(k) for k in ("wall", "gen", "train"))
            txt = "—" if w is None else f"{w.mean:.0f} ({gn.mean if gn else 0:.0f} / {tr.mean if tr else 0:.0f})"
            cells.append((txt, w.mean if w else None, False))
            for title, m, d, dg in RESOURCE_COLUMNS:
                est = r.best.est.get(m)
                cells.append((_fmt(est, dg, ci=False), est.mean if est else None, id(r) in best[title]))
            n = r.best.seeds
        cells.append((str(n), n, False))
        out.append((cells, r))
    return header, out


def markdown(agg, suite, budgets, loaded, versions) -> str:
    lines = [f"# prefopt leaderboard — suite `{suite}`", "",
             "Generated by `prefopt-leaderboard render` from `leaderboard/results/*.json`; do not edit by hand.", "",
             "![reward–KL frontier](frontier.png)", "", "## Protocol", "", PROTOCOL, ""]
    tasks = agg["suites"].get(suite, {})
    for task in task_order(agg, suite):
        header, rows = table_rows(tasks[task], agg["reference"].get(suite, {}).get(task), budgets)
        lines += [f"## {task}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for cells, _ in rows:
            lines.append("| " + " | ".join(_md_cell(t, b) for t, _, b in cells) + " |")
        lines += ["", rm_line(agg, suite, task), ""]
    lines += ["## Suite", ""] + [f"- {html.escape(x, quote=False)}" for x in suite_lines(suite)] + [""]
    lines += ["## Notes", ""] + [f"- {html.escape(n, quote=False)}" for n in notes(agg, loaded, suite)] + [""]
    lines += ["## Versions", ""] + [f"- {v}" for v in versions] + [""]
    return "\n".join(lines)


def rm_line(agg, suite, task) -> str:
    rm = agg.get("reward_models", {}).get(suite, {}).get(task) or {}
    f = lambda k: _fmt(rm.get(k), 3)  # noqa: E731
    return (f"Proxy reward model (held-out pairs): accuracy {f('pairwise_accuracy')} against the labels, "
            f"{f('pairwise_accuracy_gold')} against the gold ordering (the noisy labels themselves agree with "
            f"the gold ordering {f('label_accuracy_gold')}).")


def _md_cell(text, best) -> str:
    t = html.escape(text, quote=False).replace("|", "\\|")
    return f"**{t}**" if best else t


def notes(agg, loaded, suite) -> list:
    out = []
    other = Counter(r["leaderboard"].get("suite") for r in loaded.ok if r["leaderboard"].get("suite") != suite)
    for s, n in sorted(other.items(), key=lambda kv: str(kv[0])):
        out.append(f"{n} result(s) of suite `{s}` not shown (`prefopt-leaderboard render suite={s}`)")
    for r in loaded.failed:
        lb = r["leaderboard"]
        if lb.get("suite") == suite:
            out.append(f"failed: {lb.get('job')} ({r['config_hash']}): {str(r.get('error', ''))[:300]}")
    for name, why in loaded.problems:
        out.append(f"skipped file {name}: {why}")
    if agg["superseded"]:
        out.append(f"{agg['superseded']} older result(s) superseded by a newer one of the same method, β and seed")
    out.append("Peak memory is the RSS high-water mark of the job's process during the run (CPU); wall time, "
               "tokens/s and memory depend on the machine and on how many jobs ran at once.")
    out.append("Gold @ KL≤B: the best mean gold reward among a method's sweep points whose mean KL is at most B "
               "(— if none); best-of-n's KL is analytic.")
    out.append("Proxy−gold gap = label_temperature·(proxy − proxy_ref) − (gold − gold_ref), in gold units: positive "
               "when the reward model claims more than the real gain (over-optimization). A reward model that "
               "learned a compressed scale (smaller logits than gold/label_temperature) makes it negative for "
               "methods that do not exploit it; compare methods with each other, not with zero.")
    out.append("π_SFT's row is the evaluator's sample (one completion per held-out prompt, the same for every "
               "method of a seed); best-of-n's n=1 point estimates the same quantity from its own samples.")
    return out


def frontier_png(agg, suite, path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = task_order(agg, suite)
    n = max(1, len(tasks))
    fig, axes = plt.subplots(1, n, figsize=(7.2 * n, 5.6), squeeze=False)
    palette = list(plt.get_cmap("tab10").colors) + list(plt.get_cmap("Dark2").colors) + list(plt.get_cmap("tab20b").colors)
    # one colour per method (its runs against the proxy RM and the exact reward share it; the
    # marker and line style tell them apart), stable across tasks
    methods = sorted({r.method for t in tasks for r in agg["suites"][suite][t] if r.method != "best-of-n"})
    mcolor = {m: palette[i % len(palette)] for i, m in enumerate(methods)}
    color = {r.label: mcolor[r.method] for t in tasks for r in agg["suites"][suite][t] if r.method != "best-of-n"}
    marker = {"offline": "o", "online": "s", "baseline": "D"}
    for ax, task in zip(axes[0], tasks):
        ref = agg["reference"].get(suite, {}).get(task)
        plotted = [ref.est["gold"].mean] if ref is not None and ref.est.get("gold") else []
        for row in agg["suites"][suite][task]:
            pts = [p for p in row.points if p.est.get("gold") and p.est.get("kl")]
            if not pts:
                continue
            x = [math.sqrt(max(p.est["kl"].mean, 0.0)) for p in pts]
            y = [p.est["gold"].mean for p in pts]
            yerr = [[p.est["gold"].mean - p.est["gold"].lo for p in pts], [p.est["gold"].hi - p.est["gold"].mean for p in pts]]
            plotted += y
            if row.method == "best-of-n":
                style = dict(color="black", lw=2.2) if row.reward == "proxy" else dict(color="gray", lw=1.4, ls=":")
                lab = "best-of-n (proxy RM pick)" if row.reward == "proxy" else "best-of-n (gold pick, oracle)"
                ax.plot(x, y, marker="D", ms=4, label=lab, **style)
                for xi, yi, p in zip(x, y, pts):
                    if row.reward == "proxy":
                        ax.annotate(f"n={p.sweep.get('n')}", (xi, yi), fontsize=7, xytext=(3, -9), textcoords="offset points")
            else:
                c = color[row.label]
                m = "^" if row.reward == "exact" else marker.get(row.category, "o")
                ax.errorbar(x, y, yerr=yerr, color=c, marker=m, ms=6, lw=1.6, capsize=2, label=row.label,
                            ls=":" if row.reward == "exact" else "-")
            pp = [p for p in pts if p.est.get("proxy_cal")]
            plotted += [p.est["proxy_cal"].mean for p in pp]
            if pp:
                ax.plot([math.sqrt(max(p.est["kl"].mean, 0.0)) for p in pp], [p.est["proxy_cal"].mean for p in pp],
                        ls="--", lw=1.1, marker="o", ms=4, mfc="none", alpha=0.8,
                        color="black" if row.method == "best-of-n" else color[row.label])
        if ref is not None and ref.est.get("gold"):
            ax.plot([0], [ref.est["gold"].mean], marker="*", ms=14, color="gold", mec="black", ls="none",
                    label="π_SFT (reference)", zorder=5)
        # y range from the plotted means (not the error bars): one seed that blew up must not flatten
        # every other curve; the table carries the full intervals; the title says so
        ys = [v for v in plotted if math.isfinite(v)]
        if ys:
            lo, hi = min(ys), max(ys)
            pad = 0.08 * (hi - lo or 1.0)
            ax.set_ylim(lo - pad, hi + pad)
        ax.set_xlabel("√KL(π ‖ π_SFT)   (√nats, held-out prompts)")
        ax.set_ylabel("gold reward (held-out prompts)")
        ax.set_title(f"{task}: gold reward vs √KL (dashed: proxy reward, calibrated)")
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
    h, l = axes[0][-1].get_legend_handles_labels()
    seen = {}
    for a in axes[0]:
        for hh, ll in zip(*a.get_legend_handles_labels()):
            seen.setdefault(ll, hh)
    first = ["π_SFT (reference)", "best-of-n (proxy RM pick)", "best-of-n (gold pick, oracle)"]
    order = [k for k in first if k in seen] + sorted(k for k in seen if k not in first)
    fig.legend([seen[k] for k in order], order, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=9,
               frameon=False, title="● offline   ■ proxy RM   ▲ exact reward", title_fontsize=8)
    fig.suptitle(f"prefopt leaderboard ({suite}): means over seeds, bars: 95% bootstrap CI (the y axis fits the means; "
                 "longer bars run off it); β-sweep points joined", fontsize=11)
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


def html_page(agg, suite, budgets, loaded, versions, png: bytes) -> str:
    e = html.escape
    parts = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>prefopt leaderboard — {e(suite)}</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1600px}"
             "table{border-collapse:collapse;font-size:13px;margin-bottom:2em}"
             "th,td{border:1px solid #ccc;padding:4px 7px;text-align:right;white-space:nowrap}"
             "th{background:#f3f3f3;cursor:pointer}td:first-child,td:nth-child(2){text-align:left}"
             "td.best{font-weight:bold;background:#e8f5e9}img{max-width:100%}pre{white-space:pre-wrap}</style>",
             "</head><body>", f"<h1>prefopt leaderboard — suite <code>{e(suite)}</code></h1>",
             "<p>Click a column title to sort. Values: mean over seeds [95% bootstrap interval]; bold: best of the column.</p>",
             f"<img alt='reward–KL frontier' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"]
    tasks = agg["suites"].get(suite, {})
    for task in task_order(agg, suite):
        header, rows = table_rows(tasks[task], agg["reference"].get(suite, {}).get(task), budgets)
        parts.append(f"<h2>{e(task)}</h2><table class='board'><thead><tr>")
        parts += [f"<th>{e(h)}</th>" for h in header]
        parts.append("</tr></thead><tbody>")
        for cells, _ in rows:
            best_attr = " class='best'"
            parts.append("<tr>" + "".join(
                f"<td data-v='{e('' if v is None else str(v), quote=True)}'{best_attr if b else ''}>{e(t)}</td>"
                for t, v, b in cells) + "</tr>")
        parts.append(f"</tbody></table><p>{e(rm_line(agg, suite, task))}</p>")
    parts += ["<h2>Protocol</h2>", f"<pre>{e(PROTOCOL)}</pre>", "<h2>Suite</h2><ul>"]
    parts += [f"<li><code>{e(x)}</code></li>" for x in suite_lines(suite)]
    parts += ["</ul><h2>Notes</h2><ul>"]
    parts += [f"<li>{e(n)}</li>" for n in notes(agg, loaded, suite)]
    parts += ["</ul><h2>Versions</h2><ul>"] + [f"<li>{e(v)}</li>" for v in versions] + ["</ul>"]
    parts += [f"<script>{SORT_JS}</script>", "</body></html>"]
    return "\n".join(parts)


def _atomic_write(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
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
    budgets = kl_budgets
    if budgets is None:
        from prefopt.leaderboard.plan import load_suite

        try:
            budgets = load_suite(suite)["kl_budgets"]
        except Exception:  # noqa: BLE001 — a suite defined only by its results
            budgets = []
    records = [r for r in loaded.ok if r["leaderboard"].get("suite") == suite]
    agg = aggregate(records, budgets)
    versions = sorted({", ".join(f"{k} {v}" for k, v in sorted((r.get("versions") or {}).items())) for r in records
                       if r.get("versions")})
    # Which machines the numbers come from: same capability reproduces exactly, another only statistically.
    caps = {}
    for r in records:
        caps[r.get("cpu_capability") or "not recorded"] = caps.get(r.get("cpu_capability") or "not recorded", 0) + 1
    versions += [f"CPU capability {c}: {n} result(s)" + (" (made before results recorded it)" if c == "not recorded" else "")
                 for c, n in sorted(caps.items())]
    os.makedirs(out_dir, exist_ok=True)
    png = frontier_png(agg, suite, os.path.join(out_dir, "frontier.png"))
    _atomic_write(os.path.join(out_dir, "LEADERBOARD.md"), markdown(agg, suite, budgets, loaded, versions))
    _atomic_write(os.path.join(out_dir, "index.html"), html_page(agg, suite, budgets, loaded, versions, png))
    report.append(f"  suite {suite}: wrote {out_dir}/LEADERBOARD.md, frontier.png, index.html")
    return report
