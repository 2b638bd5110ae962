"""Selection: the picks the robust rule changed against the earlier rule (the highest mean validation gold
over the first two tuning seeds, diverged points eligible, no grid extension), computed on the same tuning
runs, and why."""

from __future__ import annotations

import math

from prefopt.leaderboard import select
from prefopt.leaderboard.section import Section, register
from prefopt.leaderboard.tables import fmt_point, md, point_key


def picks_changed(agg, spec=None) -> tuple[list, int, int]:
    """(lines, changed, compared): each row whose ``best`` pick differs from the earlier rule's (highest mean
    validation gold over the first two tuning seeds, diverged points eligible, no grid extension), and why."""
    out, changed, n = [], 0, 0
    lr_grid = spec.lr_grid if spec else {}
    for task, T in agg["tasks"].items():
        base = {float(x) for x in lr_grid.get(task, lr_grid.get("default", []))}
        for r in T.get("tuned", T["rows"]):
            new = next((x["point"] for x in [select.choose(r.grid, None)["best"]] if x), None) if r.grid else None
            old = r.chosen_mean.get("best")
            if not r.grid or new is None or old is None:
                continue
            n += 1
            if point_key(new) == point_key(old):
                continue
            changed += 1
            g = {point_key(x["point"]): x for x in r.grid}
            go, gn = g.get(point_key(old)), g.get(point_key(new))
            if go and go.get("diverged"):
                why = f"the earlier pick diverged on {go['diverged']}/{go['seeds']} tuning seeds ({go['why']})"
            elif go and gn:
                why = (f"its worst tuning seed scored {go['val_gold_worst']:.3f} (mean {go['val_gold']:.3f}) against "
                       f"{gn['val_gold_worst']:.3f} (mean {gn['val_gold']:.3f})")
            else:
                why = "no score for the earlier pick"
            if base and new.get("lr") is not None and all(not math.isclose(new["lr"], x) for x in base):
                why += f"; lr {new['lr']:g} is the grid's extension"
            out.append(f"{task}/{r.label}: {fmt_point(old)} → {fmt_point(new)}: {why}")
    return out, changed, n


def _changed(board) -> tuple[list, int, int]:
    lines, changed, n = [], 0, 0
    for b in board.boards():
        lines_b, c, k = picks_changed(b.agg, b.spec)
        lines += [f"- {b.suite}: {md(x)}" for x in lines_b]
        changed, n = changed + c, n + k
    return lines, changed, n


@register("selection")
class Selection(Section):
    order = 40

    def headlines(self, board) -> list:
        _, changed, n = board.memo("selection", lambda: _changed(board))
        if not n:
            return []
        return [f"**Selection**: the robust rule (no diverged point, worst of three tuning seeds, grid edges extended) "
                f"changed {changed} of {n} picks against the earlier rule (mean of two tuning seeds) on the same "
                "tuning runs (see Selection)."]

    def markdown(self, board) -> list:
        lines, changed, n = board.memo("selection", lambda: _changed(board))
        if not n:
            return []
        return (["## Selection: what the robust rule changed", "",
                 f"{changed} of {n} picks differ from the earlier rule's (the highest mean validation gold over "
                 "the first two tuning seeds, diverged points eligible, no grid extension), computed on "
                 "the same tuning runs:", ""] + lines + [""])
