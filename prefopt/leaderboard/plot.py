"""The board's plots: the frontier (gold reward against √KL along training; frontier.png and each
real-checkpoint tier's <suite>.png) and the reward-ensemble comparison (ensemble.png).

Rules that keep a plot from saying more than the results do:

- at most ``PANEL_MAX`` method curves per panel: a task's methods are drawn by family (offline on pairs,
  online against the proxy reward model, against an exact reward, against the gold reward), a family cut
  into consecutive panels of ``METHOD_ORDER``; best-of-n and π_SFT are drawn in every panel as references;
- a curve is the mean over report seeds at each validation step, its band the 95% t-interval of that mean
  (:func:`prefopt.leaderboard.stats.mean_ci`), never the min–max of the seeds; a curve of at most two
  points is drawn as points with that interval as error bars, not as a line through two points;
- a seed whose validation curve diverged is not averaged in: the mean is over the other seeds and the
  diverged seed is its own thin dashed line ending in ×;
- one colour and marker per method on every panel and every figure (:func:`method_style`); a marker never
  means anything else. A point outside the axes (a diverging run would otherwise stretch them until the
  methods are a thin band) is drawn on the edge as a hollow triangle pointing the way it left, and named with
  its extreme value in the panel's note;
- a legend names only what is drawn (every artist carries its kind as its gid, the legend is built from them);
- ensemble.png marks a peak (★) only where the curve rises and then falls: a maximum at either end of the
  range is no evidence of over-optimisation.
"""

from __future__ import annotations

import io
import math
import zlib
from dataclasses import dataclass, field
from typing import Optional

from prefopt.core import files
from prefopt.leaderboard.stats import INTERVAL, LEVEL, mean_ci
from prefopt.leaderboard.store import BEST_OF_N

FAMILIES = ("offline (pairs)", "online, proxy RM", "online, exact reward", "online, gold reward (oracle)")
PANEL_MAX = 6
PANEL_COLUMNS = 3
AXIS_FONT = 8
# Every method's colour and marker index, so a method looks the same wherever it is drawn. Related methods are
# adjacent: a family cut into panels keeps them together.
METHOD_ORDER = ("dpo", "ipo", "kto", "orpo", "simpo", "sft",
                "ppo", "rloo", "grpo", "dr_grpo", "dapo", "cispo",
                "reinforce_pp", "remax", "online_dpo", "iterative_dpo", "rejection_sampling")
# tab10 and Dark2 without their greys (grey and black are best-of-n's), then two dark ones.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
           "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#000080", "#800000")
# No triangle (the off-axis glyph), star (π_SFT, a peak), diamond (best-of-n) or cross (a diverged seed's end).
MARKERS = ("o", "s", "P", "h", "p")
CLIP_MARKER = {"below": "v", "beyond": ">"}
PROXY_STYLE = dict(ls="-.", lw=0.9, alpha=0.7)
DIVERGED_STYLE = dict(ls="--", lw=0.8, alpha=0.8)
BON_STYLE = {"proxy": dict(color="black", lw=2.0, marker="D", ms=3.5),
             "gold": dict(color="0.45", lw=1.3, ls=":", marker="d", ms=3.5)}
# What each kind of reference artist means; the figure's legend shows the kinds that were drawn.
KINDS = {
    "sft": "π_SFT (KL 0)",
    "bon-proxy": "best-of-n, proxy RM pick (validation; over n)",
    "bon-gold": "best-of-n, gold pick (oracle)",
    "band": f"band / error bars: {LEVEL:.0%} {INTERVAL}-interval of the mean gain over each seed's π_SFT, at each step",
    "proxy": "dash-dot: proxy RM, calibrated to gold units",
    "diverged": "thin dashed, ending ×: one diverged seed (not in the mean)",
    "clipped": "hollow triangle on an edge: a point outside the axes (value in the panel's note)",
}


def family(row) -> Optional[str]:
    """The panel a board row is drawn in; None for best-of-n, which is a reference in every panel."""
    if row.method == BEST_OF_N:
        return None
    if row.category == "offline" or row.reward is None:
        return FAMILIES[0]
    return {"proxy": FAMILIES[1], "exact": FAMILIES[2], "gold": FAMILIES[3]}.get(row.reward)


def method_style(method: str) -> tuple:
    """(colour, marker) of ``method``: fixed by ``METHOD_ORDER``; a method not listed there gets a pair from a
    hash of its name, so it too looks the same on every figure."""
    if method in METHOD_ORDER:
        i = METHOD_ORDER.index(method)
    else:
        i = len(METHOD_ORDER) + zlib.crc32(method.encode()) % len(PALETTE)
    return PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]


def _order_key(method: str) -> tuple:
    return (METHOD_ORDER.index(method), "") if method in METHOD_ORDER else (len(METHOD_ORDER), method)


def split_panels(methods, limit: int = PANEL_MAX) -> list:
    """``methods`` in ``METHOD_ORDER`` (others after, by name), cut into the fewest consecutive panels of at most
    ``limit``, their sizes differing by at most one (the larger first)."""
    ordered = sorted(set(methods), key=_order_key)
    if not ordered:
        return []
    k = math.ceil(len(ordered) / limit)
    size, extra = divmod(len(ordered), k)
    out, start = [], 0
    for i in range(k):
        end = start + size + (1 if i < extra else 0)
        out.append(ordered[start:end])
        start = end
    return out


def interior_peak(values) -> Optional[int]:
    """The index of the first maximum of ``values`` (None entries skipped) if it is neither the first nor the
    last value; None otherwise (a maximum at an end of the range is not a peak)."""
    idx = [i for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(idx) < 3:
        return None
    top = max(idx, key=lambda i: (values[i], -i))
    return top if idx[0] < top < idx[-1] else None


# ---------------------------------------------------------------- curves (no drawing)


@dataclass
class Curve:
    """One series of a panel: x (√KL), the mean over seeds and its interval at each point, the seeds it rests
    on (``n``), the calibrated proxy reward [(x, y)], and each diverged seed's own [(x, gold)] with why."""

    family: Optional[str]
    name: str
    xs: list
    golds: list
    lo: list
    hi: list
    n: int = 0
    steps: list = field(default_factory=list)
    proxy: list = field(default_factory=list)
    diverged: dict = field(default_factory=dict)  # seed -> (points [(x, gold)], why)

    def __iter__(self):
        """Unpacks as (family, name, xs, golds, proxy)."""
        return iter((self.family, self.name, self.xs, self.golds, self.proxy))


def _fin(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _sqrt_kl(kl: float) -> float:
    return math.sqrt(max(kl, 0.0))


def mean_band(curves: dict, diverged: Optional[dict] = None) -> dict:
    """The mean curve over the seeds that did not diverge, with a t-interval per step of the mean *gain over each
    seed's own π_SFT* (the curve's first step), placed around the mean curve: seeds differ in π_SFT (its own SFT
    run, its own pairs), and that shared offset is no uncertainty about how far the method moved.

    ``curves`` maps seed → [{step, gold, kl, proxy_cal}]; ``diverged`` maps seed → why (falsy: it did not).
    Only the steps at which every kept seed has gold and KL are used, so the mean never changes which
    seeds it averages along the curve. Returns {"steps", "x" (√ of the mean KL), "mean", "lo", "hi", "n",
    "proxy" ([(x, mean calibrated proxy)] at the steps where every kept seed has it), "diverged" (the
    excluded seeds, in order)}."""
    diverged = diverged or {}
    bad = sorted(s for s in curves if diverged.get(s))
    kept = {s: {p["step"]: p for p in traj} for s, traj in curves.items() if s not in bad}
    out = {"steps": [], "x": [], "mean": [], "lo": [], "hi": [], "n": len(kept), "proxy": [], "diverged": bad}
    if not kept:
        return out
    common = set.intersection(*(set(by_step) for by_step in kept.values()))
    first = min((s for s in common if s is not None), default=None)
    start = {s: by_step[first].get("gold") if first is not None else None for s, by_step in kept.items()}
    if not all(_fin(g) for g in start.values()):
        return out
    for step in sorted(s for s in common if s is not None):
        pts = [by_step[step] for by_step in kept.values()]
        if not all(_fin(p.get("gold")) and _fin(p.get("kl")) for p in pts):
            continue
        mean = sum(p["gold"] for p in pts) / len(pts)
        gain = mean_ci([p["gold"] - start[s] for s, p in zip(kept, pts)])
        x = _sqrt_kl(sum(p["kl"] for p in pts) / len(pts))
        out["steps"].append(step)
        out["x"].append(x)
        out["mean"].append(mean)
        out["lo"].append(mean - (gain.mean - gain.lo))
        out["hi"].append(mean + (gain.hi - gain.mean))
        if all(_fin(p.get("proxy_cal")) for p in pts):
            out["proxy"].append((x, sum(p["proxy_cal"] for p in pts) / len(pts)))
    return out


def _method_curve(row, fam: str) -> Optional[Curve]:
    pt = row.best
    band = mean_band(pt.curves, getattr(pt, "diverged", None))
    div = {}
    for s in band["diverged"]:
        pts = [(_sqrt_kl(p["kl"]), p["gold"]) for p in pt.curves[s] if _fin(p.get("gold")) and _fin(p.get("kl"))]
        if pts:
            div[s] = (pts, str(pt.diverged[s]))
    if not band["x"] and not div:
        return None
    return Curve(fam, row.method, band["x"], band["mean"], band["lo"], band["hi"], band["n"], band["steps"],
                 band["proxy"] if fam == FAMILIES[1] else [], div)


def _bon_curve(row) -> Optional[Curve]:
    """best-of-n's validation gold over n (its test numbers are in the table), a t-interval per n."""
    from prefopt.leaderboard.bon import best_of_n_kl

    ests = [(p.point["n"], mean_ci(list((p.per_seed.get("val_gold") or {}).values()))) for p in row.bon_points]
    ests = [(n, e) for n, e in ests if e is not None]
    if not ests:
        return None
    kind = "bon-proxy" if row.reward == "proxy" else "bon-gold"
    return Curve(None, kind, [_sqrt_kl(best_of_n_kl(n)) for n, _ in ests], [e.mean for _, e in ests],
                 [e.lo for _, e in ests], [e.hi for _, e in ests], min(e.n for _, e in ests), [n for n, _ in ests])


def _task_curves(rows) -> dict:
    """{"methods": [Curve], "bon": [Curve] (the proxy pick first), "sft": π_SFT's validation gold or None}."""
    out = {"methods": [], "bon": [], "sft": None}
    starts = []
    for row in rows:
        if row.method == BEST_OF_N:
            c = _bon_curve(row)
            if c is not None:
                out["bon"].append(c)
            continue
        fam = family(row)
        if fam is None or row.best is None:
            continue
        c = _method_curve(row, fam)
        if c is None:
            continue
        out["methods"].append(c)
        starts += [p["gold"] for traj in row.best.curves.values() for p in traj
                   if p.get("step") == 0 and _fin(p.get("gold"))]
    out["bon"].sort(key=lambda c: c.name != "bon-proxy")
    if starts:
        out["sft"] = sum(starts) / len(starts)
    return out


def task_panels(curves: dict) -> list:
    """[(family, part, parts, [Curve])]: the task's panels, each at most ``PANEL_MAX`` method curves."""
    out = []
    for fam in FAMILIES:
        mine = {c.name: c for c in curves["methods"] if c.family == fam}
        parts = split_panels(mine)
        out += [(fam, i + 1, len(parts), [mine[m] for m in chunk]) for i, chunk in enumerate(parts)]
    return out


# ---------------------------------------------------------------- axis limits


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


def _display(c: Curve) -> str:
    return c.name if c.family is not None else KINDS[c.name].split(" (")[0]


def _series_of(c: Curve) -> list:
    """[(name for the notes, xs, ys, counts for the √KL axis)] of what one curve draws and the axes follow: its
    mean, its proxy, its diverged seeds (its band is a shade, cut where it leaves the axes)."""
    name = _display(c)
    out = [(name, c.xs, c.golds, True)]
    if c.proxy:
        out.append((f"{name}'s proxy", [x for x, _ in c.proxy], [y for _, y in c.proxy], True))
    for s, (pts, _) in c.diverged.items():
        out.append((f"{name}, seed {s} (diverged)", [x for x, _ in pts], [y for _, y in pts], True))
    return out


def _limits(d: dict) -> dict:
    """One scale per task (its families are compared on the same axes): {"lo", "hi", "xhi", "notes": {name: text}}."""
    series = [s for c in d["methods"] + d["bon"] for s in _series_of(c)]
    lo, hi, yclip = y_limits({n: ys for n, _, ys, _ in series}, d["sft"])
    xhi, xclip = x_limit({n: xs for n, xs, _, on_x in series if on_x})
    notes = {}
    for n in dict.fromkeys([*yclip, *xclip]):
        parts = ([f"min {_fmt(yclip[n])}"] if n in yclip else []) + \
            ([f"KL {xclip[n] ** 2:.0f} nats"] if n in xclip else [])
        notes[n] = f"outside the axes: {n} ({', '.join(parts)})"
    return {"lo": lo, "hi": hi, "xhi": xhi, "notes": notes}


def _fmt(v: float, digits: int = 2) -> str:
    return f"{v:.{digits}f}".replace("-", "−")


# ---------------------------------------------------------------- drawing


def _mark_outside(ax, xs, ys, lim, color) -> None:
    """Draw the points outside the axes on the edge they left by, as a hollow triangle pointing out."""
    below = [(min(x, lim["xhi"]), lim["lo"]) for x, y in zip(xs, ys) if y < lim["lo"]]
    beyond = [(lim["xhi"], min(y, lim["hi"])) for x, y in zip(xs, ys) if x > lim["xhi"] and y >= lim["lo"]]
    for pts, where in ((below, "below"), (beyond, "beyond")):
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="none", marker=CLIP_MARKER[where], ms=7, mfc="white",
                    mec=color, mew=1.4, clip_on=False, zorder=5, gid="clipped")


def _draw_band(ax, c: Curve, color, marker, label: str, skip_start: bool, gid: Optional[str] = None, **line) -> list:
    """The curve as a line with its shaded interval, or (≤ 2 points) as points with error bars. Returns the
    artists drawn, the one to name in the legend first."""
    pts = [(x, m, lo, hi) for x, m, lo, hi, s in zip(c.xs, c.golds, c.lo, c.hi, c.steps or [None] * len(c.xs))
           if not (skip_start and s == 0 and len(c.xs) <= 2)]
    if not pts:
        return []
    xs, ms, los, his = (list(v) for v in zip(*pts))
    wide = any(h > lo for lo, h in zip(los, his))
    if len(pts) > 2:
        (ln,) = ax.plot(xs, ms, color=color, marker=marker, label=label, gid=gid, **line)
        out = [ln]
        if wide:
            out.append(ax.fill_between(xs, los, his, color=color, alpha=0.15, lw=0, zorder=1, gid="band"))
        return out
    cont = ax.errorbar(xs, ms, yerr=[[m - lo for m, lo in zip(ms, los)], [h - m for m, h in zip(ms, his)]],
                       fmt=marker, color=color, ms=6, capsize=3.5, elinewidth=1.3, label=label, zorder=4)
    cont.lines[0].set_gid(gid)
    if wide:
        for art in cont.lines[2]:
            art.set_gid("band")
    return [cont]


def _draw_method(ax, c: Curve, lim: dict) -> tuple:
    """(legend handle or None, legend label) of one method's mean, band, proxy and diverged seeds."""
    color, marker = method_style(c.name)
    label = f"{c.name} (n={c.n}" + (f"; {len(c.diverged)} diverged" if c.diverged else "") + ")"
    drawn = _draw_band(ax, c, color, marker, label, skip_start=True, ms=3.5, lw=1.5, zorder=4) if c.xs else []
    _mark_outside(ax, c.xs, c.golds, lim, color)
    if c.proxy:
        px, py = [x for x, _ in c.proxy], [y for _, y in c.proxy]
        ax.plot(px, py, color=color, zorder=2, gid="proxy", **PROXY_STYLE)
        _mark_outside(ax, px, py, lim, color)
    handle = drawn[0] if drawn else None
    for pts, _ in c.diverged.values():
        xs, ys = [x for x, _ in pts], [y for _, y in pts]
        (ln,) = ax.plot(xs, ys, color=color, zorder=3, gid="diverged", **DIVERGED_STYLE)
        ax.plot(xs[-1:], ys[-1:], ls="none", marker="x", ms=6, mew=1.5, color=color, zorder=3, gid="diverged")
        _mark_outside(ax, xs, ys, lim, color)
        if handle is None:  # every seed diverged: the legend names the first seed's line
            handle = ln
            ln.set_label(label)
    return handle, label


def _draw_panel(ax, task, fam, part, parts, members: list, d: dict, lim: dict, first_col: bool) -> None:
    for b in d["bon"]:
        st = BON_STYLE["proxy" if b.name == "bon-proxy" else "gold"]
        _draw_band(ax, b, st["color"], st["marker"], KINDS[b.name], skip_start=False, gid=b.name,
                   **{k: v for k, v in st.items() if k not in ("color", "marker")}, zorder=3)
        _mark_outside(ax, b.xs, b.golds, lim, st["color"])
    handles, labels = [], []
    for c in members:
        h, label = _draw_method(ax, c, lim)
        if h is not None:
            handles.append(h), labels.append(label)
    if d["sft"] is not None:
        ax.plot([0], [d["sft"]], marker="*", ms=13, color="gold", mec="black", ls="none", zorder=6, clip_on=False,
                gid="sft")
    names = {n for c in members + d["bon"] for n, *_ in _series_of(c)}
    notes = [t for n, t in lim["notes"].items() if n in names]
    _style_axes(ax, lim, f"{task}: {fam}" + (f" ({part}/{parts})" if parts > 1 else ""), first_col)
    if notes:
        _note_box(ax, notes)
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncols=2 if len(handles) > 3 else 1,
              fontsize=7.5, frameon=False, handlelength=2.2, columnspacing=1.2)


def _style_axes(ax, lim, title: str, first_col: bool) -> None:
    ax.set_ylim(lim["lo"] - 0.015 * (lim["hi"] - lim["lo"]), lim["hi"])
    ax.set_xlim(0, lim["xhi"] * 1.015)
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=AXIS_FONT)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("√KL(π ‖ π_SFT)   (√nats; validation prompts along training)", fontsize=AXIS_FONT)
    if first_col:
        ax.set_ylabel("gold reward (validation prompts, mean over seeds)", fontsize=AXIS_FONT)


def _note_box(ax, notes: list) -> None:
    """A handle-less legend, so that matplotlib places it where it covers the fewest points."""
    from matplotlib.lines import Line2D

    box = ax.legend([Line2D([], [], ls="none")] * len(notes), notes, loc="best", fontsize=6.5, handlelength=0,
                    handletextpad=0, framealpha=0.85, borderpad=0.4, labelcolor="0.2")
    box.set_zorder(7)
    ax.add_artist(box)


def drawn_kinds(fig) -> list:
    """The kinds of reference artist (``KINDS``) drawn on ``fig``'s axes, in ``KINDS`` order."""
    found = {a.get_gid() for ax in fig.axes for a in [*ax.lines, *ax.collections]}
    return [k for k in KINDS if k in found]


def _reference_handle(kind: str):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if kind == "band":
        return Patch(color="0.3", alpha=0.25)
    return {"sft": Line2D([], [], marker="*", ms=11, color="gold", mec="black", ls="none"),
            "bon-proxy": Line2D([], [], **BON_STYLE["proxy"]), "bon-gold": Line2D([], [], **BON_STYLE["gold"]),
            "proxy": Line2D([], [], color="0.3", **PROXY_STYLE),
            "diverged": Line2D([0, 1], [0, 0], color="0.3", marker="x", markevery=[1], mew=1.5, **DIVERGED_STYLE),
            "clipped": Line2D([], [], ls="none", marker="v", ms=7, mfc="white", mec="0.3", mew=1.4)}[kind]


def frontier_figure(agg, tasks: list, title: str):
    """The frontier plot of ``tasks`` (keys of ``agg["tasks"]``) as a matplotlib Figure (Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = {t: _task_curves(agg["tasks"][t]["rows"]) for t in tasks}
    layout = {t: task_panels(data[t]) for t in tasks}
    ncols = max([min(PANEL_COLUMNS, len(p)) for p in layout.values()] + [1])
    task_rows = {t: max(1, math.ceil(len(layout[t]) / ncols)) for t in tasks}
    nrows = max(1, sum(task_rows.values()))
    fig = Figure(figsize=(5.6 * ncols, 4.9 * nrows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    r0 = 0
    for task in tasks:
        lim = _limits(data[task])
        for i in range(task_rows[task] * ncols):
            ax = axes[r0 + i // ncols][i % ncols]
            if i >= len(layout[task]):
                ax.set_visible(False)
                continue
            fam, part, parts, members = layout[task][i]
            _draw_panel(ax, task, fam, part, parts, members, data[task], lim, i % ncols == 0)
        r0 += task_rows[task]
    for ax in axes.flat[r0 * ncols:]:
        ax.set_visible(False)
    kinds = drawn_kinds(fig)
    if kinds:
        fig.legend([_reference_handle(k) for k in kinds], [KINDS[k] for k in kinds], loc="outside lower center",
                   ncols=min(len(kinds), 3), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig


def _png(fig, path: Optional[str] = None, **save) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **save)
    png = buf.getvalue()
    if path is not None:
        files.write_bytes(path, png)
    return png


def frontier_png(agg, tasks: list, title: str, path: Optional[str] = None) -> bytes:
    """The frontier plot of ``tasks`` as PNG bytes, also written to ``path`` if given (frontier.png, <suite>.png)."""
    return _png(frontier_figure(agg, tasks, title), path, dpi=110)


# ---------------------------------------------------------------- ensemble.png

ENSEMBLE_COLORS = {"single": "black", "mean": "tab:blue", "min": "tab:red", "mean_minus_std": "tab:green"}
PEAK_LABEL = "interior peak: highest mean validation gold, before the end of the range"


def ensemble_figure(agg: dict, lam: float = 1.0):
    """ensemble.png as a Figure: mean validation gold against √KL, best-of-n (over n) and the PG method (over
    steps), a line per reward variant (rows of :func:`prefopt.leaderboard.ensemble.rows_of`); ★ marks a
    variant's peak only where it is interior (:func:`interior_peak`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = sorted({r["method"] for r in agg["rows"]}, key=lambda m: m != BEST_OF_N)
    # a panel per method against √KL, and each training method again against its step (its KL is not monotone)
    panels = [(m, "kl") for m in methods] + [(m, "step") for m in methods if m != BEST_OF_N]
    fig = Figure(figsize=(6.0 * max(1, len(panels)), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False)[0]
    for ax, (m, xkey) in zip(axes, panels):
        _ensemble_panel(ax, [q for q in agg["rows"] if q["method"] == m], m, xkey, lam)
    fig.suptitle("Reward-model ensembles against over-optimisation (reviews)", fontsize=11)
    return fig


def _ensemble_panel(ax, rows: list, method: str, xkey: str, lam: float) -> None:
    from matplotlib.lines import Line2D

    from prefopt.leaderboard.ensemble import label

    handles, labels = [], []
    for r in rows:
        pts = [c for c in r["curve"] if _fin(c.get("val")) and _fin(c.get("kl"))]
        if not pts:
            continue
        xs = [_sqrt_kl(c["kl"]) if xkey == "kl" else c["step"] for c in pts]
        ys = [c["val"] for c in pts]
        color = ENSEMBLE_COLORS.get(r["variant"])
        peak = interior_peak(ys)
        text = label(r["variant"], r["members"], lam) + ("" if peak is not None else " (no interior peak)")
        (ln,) = ax.plot(xs, ys, marker="o", ms=3, lw=1.6, color=color)
        handles.append(ln), labels.append(text)
        if peak is not None:
            ax.plot([xs[peak]], [ys[peak]], marker="*", ms=13, color=color, mec="black", ls="none", gid="peak")
    if any(a.get_gid() == "peak" for a in ax.lines):
        handles.append(Line2D([], [], marker="*", ms=11, color="white", mec="black", ls="none"))
        labels.append(PEAK_LABEL)
    ax.set_title("best-of-n (n = 1 … N)" if method == BEST_OF_N else f"{method} (along training)", fontsize=10)
    ax.set_xlabel("√KL(π ‖ π_SFT)  (√nats)" if xkey == "kl" else "optimizer step")
    ax.set_ylabel("gold reward (validation prompts, mean over seeds)")
    ax.grid(alpha=0.3)
    if handles:
        ax.legend(handles, labels, fontsize=8)


def ensemble_png(agg: dict, lam: float = 1.0, path: Optional[str] = None) -> bytes:
    """ensemble.png as PNG bytes (see :func:`ensemble_figure`), also written to ``path`` if given."""
    return _png(ensemble_figure(agg, lam), path, dpi=100)
