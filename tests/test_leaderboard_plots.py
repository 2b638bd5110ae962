"""The board's plots say no more than the results: ≤ 6 method curves a panel, t-interval bands, a diverged seed
drawn apart from the mean, no two-point lines, one colour per method everywhere, legends only for what is drawn,
a ★ peak only where the curve is interior."""

import math

import pytest
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer

from prefopt.leaderboard import plot
from prefopt.leaderboard.aggregate import MethodRow, Point
from prefopt.leaderboard.store import BEST_OF_N

PNG = b"\x89PNG\r\n\x1a\n"
T975_DF2 = 4.302652729911275  # scipy.stats.t.ppf(0.975, 2)
ONLINE = ["ppo", "rloo", "grpo", "dr_grpo", "dapo", "cispo", "reinforce_pp", "remax"]


def traj(golds, kls, steps=(0, 10, 20), proxy=None):
    return [{"step": s, "gold": g, "kl": k, "proxy_cal": None if proxy is None else proxy[i], "length": 10.0}
            for i, (s, g, k) in enumerate(zip(steps, golds, kls))]


def row(method, seeds, reward=None, category="offline", diverged=None, task="reviews"):
    """A board row whose ``best`` pick has the trajectories ``seeds`` ({seed: trajectory})."""
    pt = Point({"lr": 1e-3}, curves=dict(seeds), diverged={s: (diverged or {}).get(s) for s in seeds})
    return MethodRow(task, method, reward, category, best=pt)


def bon_row(reward="proxy", ns=(1, 2, 4, 8)):
    pts = [Point({"n": n}, per_seed={"val_gold": {s: 0.1 * n + 0.01 * s for s in range(3)}}) for n in ns]
    return MethodRow("reviews", BEST_OF_N, reward, "baseline", bon_points=pts)


def rising(offset, seeds=3, proxy=False):
    return {s: traj([0.0, offset + 0.1 * s, 2 * offset + 0.1 * s], [0.0, 1.0 + s, 4.0 + s],
                    proxy=[0.0, offset + 0.5, 2 * offset + 1.0] if proxy else None) for s in range(seeds)}


def board(rows):
    return {"tasks": {"reviews": {"rows": rows}}}


def standard_board():
    """Offline DPO (one diverged seed), eight online methods against the proxy RM, grpo again on an exact
    reward, best-of-n (proxy pick and oracle)."""
    dpo = rising(0.5)
    dpo[3] = traj([0.0, -4.0, -9.0], [0.0, 50.0, 300.0])
    rows = [row("dpo", dpo, diverged={3: "gold −9 < π_SFT's 0 − 1 at step 20"})]
    rows += [row(m, rising(0.1 * (i + 1), proxy=True), reward="proxy", category="online") for i, m in enumerate(ONLINE)]
    rows += [row("grpo", rising(0.3), reward="exact", category="online"), bon_row("proxy"), bon_row("gold")]
    return board(rows)


def named(ax, label):
    """The artists of ``ax`` (lines, error-bar containers) labelled ``label``."""
    return [a for a in [*ax.lines, *ax.containers] if a.get_label() == label]


def method_entries(ax) -> list:
    """The panel legend's entries, each with the one artist of the panel it names (an entry without one fails)."""
    out = []
    for text in legend_texts(ax.get_legend()):
        (artist,) = named(ax, text)
        out.append((text, artist))
    return out


def legend_texts(leg) -> list:
    return [] if leg is None else [t.get_text() for t in leg.get_texts()]


# ---------------------------------------------------------------- decisions, against hand-computed values


def test_split_panels_keeps_the_method_order_and_at_most_six_a_panel():
    assert plot.split_panels(ONLINE + ["online_dpo", "iterative_dpo", "rejection_sampling", "zeta", "alpha"]) == [
        ["ppo", "rloo", "grpo", "dr_grpo", "dapo"], ["cispo", "reinforce_pp", "remax", "online_dpo"],
        ["iterative_dpo", "rejection_sampling", "alpha", "zeta"]]  # 13: three panels of 5, 4, 4
    assert plot.split_panels(reversed(ONLINE[:7])) == [ONLINE[:4], ONLINE[4:7]]
    assert plot.split_panels(["ipo", "dpo"]) == [["dpo", "ipo"]] and plot.split_panels([]) == []
    assert all(len(p) <= 6 for n in range(1, 30) for p in plot.split_panels([f"m{i}" for i in range(n)]))


def test_method_style_is_one_global_map():
    styles = [plot.method_style(m) for m in plot.METHOD_ORDER]
    assert len({c for c, _ in styles}) == len(styles)  # every listed method its own colour
    assert plot.method_style("brand_new") == plot.method_style("brand_new")
    # the markers the plot gives other meanings never mark a method
    reserved = {*plot.CLIP_MARKER.values(), "*", "x", "X", "D", "d", "^", "<"}
    assert not {mk for _, mk in styles} & reserved


def test_interior_peak_never_at_an_end():
    assert plot.interior_peak([0.1, 0.3, 0.2]) == 1
    assert plot.interior_peak([0.1, 0.3, 0.3, 0.2]) == 1  # the first maximum
    assert plot.interior_peak([0.3, 0.2, 0.1]) is None and plot.interior_peak([0.1, 0.2, 0.3]) is None
    assert plot.interior_peak([0.3, 0.1, 0.3]) is None  # tied with the start: the first maximum is the start
    assert plot.interior_peak([None, 0.1, 0.5, 0.2, None]) == 2
    assert plot.interior_peak([None, 0.1, 0.5, None]) is None and plot.interior_peak([0.1, 0.5]) is None


def test_mean_band_is_a_t_interval_over_the_seeds_that_did_not_diverge():
    curves = {0: traj([0.0, 1.0, 2.0], [0.0, 1.0, 4.0]), 1: traj([0.0, 2.0, 3.0], [0.0, 2.0, 5.0]),
              2: traj([0.0, 3.0], [0.0, 3.0], steps=(0, 10)),  # ended early: step 20 is not everyone's
              7: traj([0.0, -5.0, -9.0], [0.0, 90.0, 300.0])}
    band = plot.mean_band(curves, {7: "KL 300 > 100 at step 20", 0: None})
    assert band["steps"] == [0, 10] and band["n"] == 3 and band["diverged"] == [7]
    half = T975_DF2 * 1.0 / math.sqrt(3)  # golds 1, 2, 3 at step 10: s = 1
    assert band["mean"][1] == pytest.approx(2.0) and band["lo"][1] == pytest.approx(2.0 - half)
    assert band["hi"][1] == pytest.approx(2.0 + half) and band["x"][1] == pytest.approx(math.sqrt(2.0))
    assert band["lo"][0] == band["hi"][0] == 0.0  # all seeds equal: a degenerate interval, not a fake one
    assert plot.mean_band({0: curves[7]}, {0: "diverged"})["n"] == 0
    # seeds that start apart (each its own π_SFT) and gain alike: the band is the gain's, here none at all
    apart = {s: traj([float(s), s + 1.0], [0.0, 1.0], steps=(0, 10)) for s in range(3)}
    band = plot.mean_band(apart)
    assert band["mean"] == pytest.approx([1.0, 2.0])
    assert band["lo"] == pytest.approx([1.0, 2.0]) and band["hi"] == pytest.approx([1.0, 2.0])


# ---------------------------------------------------------------- the frontier figure


def test_frontier_panels_bands_and_the_diverged_seed(tmp_path):
    fig = plot.frontier_figure(standard_board(), ["reviews"], "test board")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title() for ax in panels]
    assert titles == ["reviews: offline (pairs)", "reviews: online, proxy RM (1/2)", "reviews: online, proxy RM (2/2)",
                      "reviews: online, exact reward"]
    for ax in panels:
        assert 1 <= len(method_entries(ax)) <= plot.PANEL_MAX  # and each entry is an artist of this panel
        # a band per multi-seed curve, a t-interval (shaded polygon), and the best-of-n references
        assert any(isinstance(c, PolyCollection) and c.get_gid() == "band" for c in ax.collections)
        assert {a.get_gid() for a in ax.lines} >= {"bon-proxy", "bon-gold", "sft"}
    offline = panels[0]
    [mean] = [ln for ln in offline.lines if ln.get_label().startswith("dpo")]
    assert mean.get_label() == "dpo (n=3; 1 diverged)"
    # the mean is over seeds 0–2 only: step 20's golds are 1.0, 1.1, 1.2
    assert list(mean.get_ydata()) == pytest.approx([0.0, 0.6, 1.1])
    diverged = [ln for ln in offline.lines if ln.get_gid() == "diverged"]
    assert any(ln.get_linestyle() == "--" for ln in diverged) and any(ln.get_marker() == "x" for ln in diverged)
    assert not any(ln.get_gid() == "diverged" for ax in panels[1:] for ln in ax.lines)
    # the diverged seed leaves the axes (gold −9, KL 300): drawn on the edge, hollow, named in the note
    clipped = [ln for ln in offline.lines if ln.get_gid() == "clipped"]
    assert clipped and all(ln.get_markerfacecolor() == "white" for ln in clipped)
    notes = [t for leg in offline.artists for t in legend_texts(leg)]
    assert any("dpo, seed 3 (diverged)" in t and "min −9.00" in t for t in notes)
    # the figure's legend: exactly the kinds drawn
    assert legend_texts(fig.legends[0]) == [plot.KINDS[k] for k in
                                            ("sft", "bon-proxy", "bon-gold", "band", "proxy", "diverged", "clipped")]
    png = plot.frontier_png(standard_board(), ["reviews"], "test board", str(tmp_path / "frontier.png"))
    assert png[:8] == PNG and (tmp_path / "frontier.png").read_bytes() == png


def test_frontier_legend_names_nothing_that_is_not_drawn():
    fig = plot.frontier_figure(board([row("dpo", rising(0.5)), row("ipo", rising(0.4))]), ["reviews"], "t")
    assert legend_texts(fig.legends[0]) == [plot.KINDS["sft"], plot.KINDS["band"]]
    markers = {ln.get_marker() for ax in fig.axes for ln in ax.lines}
    assert not markers & {"v", ">"}  # nothing off the axes, so no edge glyph


def test_colours_agree_across_panels_and_figures():
    def colour(fig, name):
        return {ln.get_color() for ax in fig.axes for ln in ax.lines if ln.get_label().startswith(name + " (")}

    a = plot.frontier_figure(standard_board(), ["reviews"], "a")
    b = plot.frontier_figure(board([row("grpo", rising(0.2), reward="exact", category="online"),
                                    row("dapo", rising(0.3), reward="exact", category="online")]), ["reviews"], "b")
    # grpo on the proxy RM and on the exact reward, in two figures: one colour
    assert colour(a, "grpo") == colour(b, "grpo") == {plot.method_style("grpo")[0]}
    assert colour(b, "dapo") == {plot.method_style("dapo")[0]} != colour(b, "grpo")


def test_a_two_point_tier_is_points_with_error_bars():
    """The real-checkpoint tier (smol.png): π_SFT and the end of training only; no line through two points."""
    seeds = {s: traj([0.2, 0.5 + 0.02 * s], [0.0, 9.0 + s], steps=(0, 40)) for s in range(3)}
    fig = plot.frontier_figure({"tasks": {"smol_arith": {"rows": [
        row("dpo", seeds, task="smol_arith"),
        row("grpo", {s: traj([0.2, 0.38 + 0.01 * s], [0.0, 4.0], steps=(0, 40)) for s in range(3)},
            reward="exact", category="online", task="smol_arith")]}}}, ["smol_arith"], "smol")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 2
    for ax in panels:
        [bars] = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert [a for _, a in method_entries(ax)] == [bars]
        data = bars.lines[0]
        assert data.get_linestyle() == "None" and len(data.get_xdata()) == 1  # the end point; π_SFT is the star
        assert not [ln for ln in ax.lines if ln.get_gid() is None and len(ln.get_xdata()) == 2]
    offline = panels[0]
    (bars,) = offline.containers
    seg = bars.lines[2][0].get_segments()[0]
    half = T975_DF2 * 0.02 / math.sqrt(3)
    assert seg[0][1] == pytest.approx(0.52 - half) and seg[1][1] == pytest.approx(0.52 + half)
    assert legend_texts(offline.get_legend()) == ["dpo (n=3)"]
    assert plot.KINDS["band"] in legend_texts(fig.legends[0])


def test_a_method_whose_every_seed_diverged_is_only_its_seeds():
    dead = {s: traj([0.0, -2.0, -6.0], [0.0, 30.0, 200.0]) for s in range(2)}
    fig = plot.frontier_figure(board([row("dpo", rising(0.5)), row("kto", dead, diverged={0: "x", 1: "y"})]),
                               ["reviews"], "t")
    (ax,) = [a for a in fig.axes if a.get_visible()]
    labels = legend_texts(ax.get_legend())
    assert labels == ["dpo (n=3)", "kto (n=0; 2 diverged)"]
    kto = method_entries(ax)[1][1]
    assert kto.get_gid() == "diverged" and kto.get_linestyle() == "--"
    assert not [ln for ln in ax.lines if ln.get_label().startswith("kto") and ln.get_gid() != "diverged"]


# ---------------------------------------------------------------- ensemble.png


def ens_row(variant, vals, method="rloo"):
    return {"method": method, "variant": variant, "members": 4,
            "curve": [{"step": 10 * i, "val": v, "kl": float(i)} for i, v in enumerate(vals)]}


def test_ensemble_star_only_at_an_interior_peak(tmp_path):
    rows = [ens_row("single", [0.1, 0.5, 0.3]), ens_row("mean", [0.1, 0.2, 0.4]),  # peak at the end: no star
            ens_row("single", [0.4, 0.3, 0.2], method=BEST_OF_N), ens_row("min", [0.1, 0.2, 0.3], method=BEST_OF_N)]
    fig = plot.ensemble_figure({"rows": rows})
    bon_ax, kl_ax, step_ax = fig.axes
    assert not [ln for ln in bon_ax.lines if ln.get_marker() == "*"]
    assert plot.PEAK_LABEL not in legend_texts(bon_ax.get_legend())
    assert all("(no interior peak)" in t for t in legend_texts(bon_ax.get_legend()))
    for ax, x in ((kl_ax, 1.0), (step_ax, 10)):
        [star] = [ln for ln in ax.lines if ln.get_marker() == "*"]
        assert list(star.get_xdata()) == [x] and list(star.get_ydata()) == [0.5]
        texts = legend_texts(ax.get_legend())
        assert texts[-1] == plot.PEAK_LABEL
        assert "(no interior peak)" in texts[1] and "(no interior peak)" not in texts[0]
    assert plot.ensemble_png({"rows": rows}, path=str(tmp_path / "ensemble.png"))[:8] == PNG
