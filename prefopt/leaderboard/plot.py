"""The board's frontier plot: gold reward against √KL along training, one row of panels per task.

Why small multiples: ~30 methods in one panel are unreadable, so each task gets one panel per family
(offline on pairs, online against the proxy reward model, online against an exact reward), each with a
short legend of its own; best-of-n and π_SFT are drawn in every panel as the common reference, and a
method has the same colour in every panel.

Why clipped axes: a diverging run (gold −6.6 at KL 270 nats) would stretch the axes until the region
where methods actually differ is a thin band. The limits are set by the bulk of the curves and
π_SFT (:func:`y_limits`, :func:`x_limit`); a curve that leaves them is drawn up to the edge, marked there
(▼ below, ▶ beyond) and named with its extreme value in the panel's note, so nothing is hidden.
"""

from __future__ import annotations

import io
import math
from typing import Optional

from prefopt.core import files
from prefopt.leaderboard.store import BEST_OF_N

FAMILIES = ("offline (pairs)", "online, proxy RM", "online, exact reward", "online, gold reward (oracle)")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h", "<", ">", "p")
AXIS_FONT = 8
PROXY = " (proxy RM, calibrated)"


def family(row) -> Optional[str]:
    """The panel a board row is drawn in; None for best-of-n, which is a reference in every panel."""
    if row.method == BEST_OF_N:
        return None
    if row.category == "offline" or row.reward is None:
        return FAMILIES[0]
    return {"proxy": FAMILIES[1], "exact": FAMILIES[2], "gold": FAMILIES[3]}.get(row.reward)


def _finite(vs) -> list:
    return [float(v) for v in vs if v is not None and math.isfinite(v)]


def _quantile(sorted_vals: list, q: float) -> float:
    """The q-quantile rounded to an observed value towards the median: one outlier among a few curves never sets it."""
    i = q * (len(sorted_vals) - 1)
    return sorted_vals[math.ceil(i) if q < 0.5 else math.floor(i)]


def y_limits(values: dict, reference: Optional[float] = None, margin: float = 0.5, pad: float = 0.05):
    """(lo, hi, clipped) for the gold axis, from curves {name: values in training order} and π_SFT's gold.

    The region where methods differ reaches down to ``base``: π_SFT's gold or the lower quartile of the
    curves' final values, whichever is lower (so when most methods end below π_SFT they are all in view,
    while one or two collapsing curves are not). The axis goes ``margin`` × (top − base) below that; a
    curve reaching further down is clipped, and ``clipped`` maps its name to its minimum. ``lo`` is the
    clip level (clipped points are drawn on it); ``hi`` is the largest value plus a small pad.
    """
    curves = {k: v for k, v in ((k, _finite(vs)) for k, vs in values.items()) if v}
    pooled = [v for vs in curves.values() for v in vs] + _finite([reference])
    if not pooled:
        return 0.0, 1.0, {}
    top = max(pooled)
    base = _quantile(sorted(vs[-1] for vs in curves.values()), 0.25) if curves else top
    if _finite([reference]):
        base = min(base, reference)
    span = top - base if top > base else max(abs(top), 1.0) * 0.1
    floor = base - margin * span
    clipped = {k: min(vs) for k, vs in curves.items() if min(vs) < floor}
    lo = floor if clipped else min(pooled) - pad * span
    return lo, top + pad * (top - lo), clipped


def x_limit(values: dict, factor: float = 2.0, pad: float = 0.04):
    """(hi, clipped) for the √KL axis (which starts at 0), from curves {name: √KL values}.

    The axis reaches ``factor`` × the upper quartile of the curves' largest √KL, or the largest of all if
    that is within it; ``clipped`` maps each curve reaching further to its largest √KL."""
    curves = {k: v for k, v in ((k, _finite(vs)) for k, vs in values.items()) if v}
    if not curves:
        return 1.0, {}
    ends = sorted(max(vs) for vs in curves.values())
    cap = factor * _quantile(ends, 0.75)
    if ends[-1] <= cap or cap <= 0:
        return max(ends[-1] * (1 + pad), 1e-3), {}
    return cap, {k: max(vs) for k, vs in curves.items() if max(vs) > cap}


def method_colors(members: dict) -> dict:
    """{method: (colour, marker)} so that the methods of one panel never share a colour, whatever panel.

    ``members`` maps a panel to its methods; greedy colouring of the graph 'appear in the same panel',
    most-connected first, so a method keeps one colour across tasks and families."""
    from matplotlib import colormaps

    palette = [*colormaps["tab10"].colors, *colormaps["Dark2"].colors, *colormaps["Set1"].colors,
               *colormaps["tab20b"].colors]
    neighbours = {}
    for ms in members.values():
        for m in ms:
            neighbours.setdefault(m, set()).update(x for x in ms if x != m)
    index = {}
    for m in sorted(neighbours, key=lambda m: (-len(neighbours[m]), m)):
        taken = {index[n] for n in neighbours[m] if n in index}
        index[m] = next(i for i in range(len(neighbours) + 1) if i not in taken)
    return {m: (palette[i % len(palette)], MARKERS[i % len(MARKERS)]) for m, i in index.items()}


def _legend_columns(entries: int) -> int:
    """Columns of a panel's legend (it sits below the panel): at most ~5 rows."""
    return 1 if entries <= 3 else (2 if entries <= 10 else 3)


def _fmt(v: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}".replace("-", "−")


def _task_curves(rows) -> dict:
    """The task's curves: {"methods": [(family, name, xs, golds, proxy_cals)], "bon": [(label, style, xs, golds)],
    "sft": π_SFT's validation gold or None}."""
    from prefopt.leaderboard.bon import best_of_n_kl

    out = {"methods": [], "bon": [], "sft": None}
    starts = []
    for row in rows:
        if row.method == BEST_OF_N:
            # validation numbers, like the training curves (its test numbers are in the table)
            pts = [p for p in row.bon_points if p.per_seed.get("val_gold")]
            if not pts:
                continue
            xs = [math.sqrt(max(best_of_n_kl(p.point["n"]), 0.0)) for p in pts]
            ys = [sum(p.per_seed["val_gold"].values()) / len(p.per_seed["val_gold"]) for p in pts]
            if row.reward == "proxy":
                out["bon"].append(("best-of-n (proxy RM pick)", dict(color="black", lw=2.0, marker="D", ms=3.5), xs, ys))
            else:
                out["bon"].append(("best-of-n (gold pick, oracle)", dict(color="0.45", lw=1.3, ls=":", marker="d", ms=3.5),
                                   xs, ys))
            continue
        fam = family(row)
        if fam is None or row.best is None:
            continue
        curve = [c for c in row.best.mean_curve() if c["gold"] is not None and c["kl"] is not None]
        if not curve:
            continue
        if curve[0]["step"] == 0:
            starts.append(curve[0]["gold"])
        xs = [math.sqrt(max(c["kl"], 0.0)) for c in curve]
        proxy = [(math.sqrt(max(c["kl"], 0.0)), c["proxy_cal"]) for c in curve if c["proxy_cal"] is not None]
        out["methods"].append((fam, row.method, xs, [c["gold"] for c in curve], proxy if fam == FAMILIES[1] else []))
    out["bon"].sort(key=lambda b: b[0], reverse=True)  # the proxy pick first
    if starts:
        out["sft"] = sum(starts) / len(starts)
    return out


def frontier_png(agg, tasks: list, title: str, path: Optional[str] = None) -> bytes:
    """The frontier plot of ``tasks`` (rows of ``agg["tasks"]``) as PNG bytes, also written to ``path`` if given."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    data = {t: _task_curves(agg["tasks"][t]["rows"]) for t in tasks}
    fams = [f for f in FAMILIES if any(m[0] == f for d in data.values() for m in d["methods"])]
    members = {(t, f): sorted({m[1] for m in d["methods"] if m[0] == f}) for t, d in data.items() for f in fams}
    style = method_colors(members)
    # panels fill each task's row from the left: the panel titles name the family
    ncols = max([sum(1 for f in fams if members[(t, f)]) for t in tasks] + [1])
    nrows = max(1, len(tasks))
    longest = max((len(ms) for ms in members.values()), default=1)
    legend_in = 0.17 * math.ceil(longest / _legend_columns(longest))
    fig = Figure(figsize=(5.6 * ncols, (4.3 + legend_in) * nrows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for r, task in enumerate(tasks or [None]):
        d = data.get(task) or {"methods": [], "bon": [], "sft": None}
        # one scale per task: the families of a task are compared on the same axes
        ycurves = {name + (PROXY if proxy else ""): vals for fam, name, _, g, pc in d["methods"]
                   for proxy, vals in ((False, g), (True, [v for _, v in pc])) if vals}
        ycurves.update({label: ys for label, _, _, ys in d["bon"]})
        lo, hi, yclip = y_limits(ycurves, d["sft"])
        xcurves = {name: xs for _, name, xs, _, _ in d["methods"]}
        xcurves.update({label: xs for label, _, xs, _ in d["bon"]})
        xhi, xclip = x_limit(xcurves)
        here = [f for f in fams if members.get((task, f))]
        for ax in axes[r][len(here):]:
            ax.set_visible(False)
        for c, fam in enumerate(here):
            ax = axes[r][c]
            rows = [m for m in d["methods"] if m[0] == fam]
            notes = []
            for label, st, xs, ys in d["bon"]:
                ax.plot(xs, ys, zorder=3, **st)
                notes += _mark_clipped(ax, xs, ys, lo, xhi, st["color"], label, yclip, xclip)
            for _, name, xs, ys, proxy in rows:
                color, marker = style[name]
                ax.plot(xs, ys, color=color, marker=marker, ms=3.5, lw=1.5, label=name, zorder=4)
                notes += _mark_clipped(ax, xs, ys, lo, xhi, color, name, yclip, xclip)
                if proxy:
                    px, py = [p[0] for p in proxy], [p[1] for p in proxy]
                    ax.plot(px, py, color=color, ls="--", lw=0.9, alpha=0.6, zorder=2)
                    if name + PROXY in yclip:
                        notes.append(f"clipped: {name}'s proxy (min {_fmt(yclip[name + PROXY])})")
            if d["sft"] is not None:
                ax.plot([0], [d["sft"]], marker="*", ms=13, color="gold", mec="black", ls="none", zorder=6,
                        clip_on=False)
            ax.set_ylim(lo - 0.015 * (hi - lo), hi)
            ax.set_xlim(0, xhi * 1.015)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=AXIS_FONT)
            ax.set_title(f"{task}: {fam}" if task else fam, fontsize=10)
            ax.set_xlabel("√KL(π ‖ π_SFT)   (√nats; validation prompts along training)", fontsize=AXIS_FONT)
            if c == 0:
                ax.set_ylabel("gold reward (validation prompts)", fontsize=AXIS_FONT)
            if notes:  # a handle-less legend, so that matplotlib places it where it covers the fewest points
                notes = list(dict.fromkeys(notes))
                box = ax.legend([Line2D([], [], ls="none")] * len(notes), notes, loc="best", fontsize=6.5, handlelength=0,
                                handletextpad=0, framealpha=0.85, borderpad=0.4, labelcolor="0.2")
                box.set_zorder(7)
                ax.add_artist(box)
            n = len(rows)
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=_legend_columns(n),
                      fontsize=7.5, frameon=False, handlelength=2.2, columnspacing=1.2)
    ref = [Line2D([], [], marker="*", ms=11, color="gold", mec="black", ls="none"),
           Line2D([], [], color="black", lw=2.0, marker="D", ms=3.5),
           Line2D([], [], color="0.45", lw=1.3, ls=":", marker="d", ms=3.5),
           Line2D([], [], color="0.3", lw=0.9, ls="--"),
           Line2D([], [], color="0.3", marker="v", ls="none", ms=6)]
    fig.legend(ref, ["π_SFT (KL 0)", "best-of-n, proxy RM pick", "best-of-n, gold pick (oracle)",
                     "dashed: proxy RM, calibrated to gold units", "▼ ▶ at the edge: clipped (see the panel's note)"],
               loc="outside lower center", ncols=5, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    png = buf.getvalue()
    if path is not None:
        files.write_bytes(path, png)
    return png


def _mark_clipped(ax, xs, ys, lo, xhi, color, name, yclip, xclip) -> list:
    """Draw the points outside the axes on its edge (▼ below, ▶ beyond) and return the panel's note lines."""
    below = [(min(x, xhi), lo) for x, y in zip(xs, ys) if y < lo]
    beyond = [(xhi, max(y, lo)) for x, y in zip(xs, ys) if x > xhi and y >= lo]
    for pts, marker in ((below, "v"), (beyond, ">")):
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="none", marker=marker, ms=6, color=color, mec="black",
                    mew=0.5, clip_on=False, zorder=5)
    parts = ([f"min {_fmt(yclip[name])}"] if name in yclip else []) + \
        ([f"KL {xclip[name] ** 2:.0f} nats"] if name in xclip else [])
    marks = ("▼" if name in yclip else "") + ("▶" if name in xclip else "")
    return [f"{marks} clipped: {name} ({', '.join(parts)})"] if parts else []
