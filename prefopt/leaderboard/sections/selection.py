"""Selection: the picks the robust rule changed against the earlier rule (the highest mean validation gold
over the first two tuning seeds, diverged points eligible, no grid extension), computed on the same tuning
runs, and why; a change that the tie-break alone made (the rule's score ties, and the conservative point
replaces the first grid point) is listed apart from the changes the rule made."""

from __future__ import annotations

import math

from prefopt.leaderboard import select
from prefopt.leaderboard.section import Section, register
from prefopt.leaderboard.tables import fmt_point, md, point_key


def _first_of_tie(grid: list, best: dict):
    """The point the earlier tie-break (the first grid point) would take among ``best`` and the points tied with it."""
    tied = {point_key(best["point"])} | {point_key(p) for p in best.get("tied_with", [])}
    return next(g["point"] for g in grid if point_key(g["point"]) in tied)


def picks_changed(agg, spec=None) -> tuple[list, int, int, list]:
    """(lines, changed, compared, tie_lines): each row whose ``best`` pick differs from the earlier rule's (highest
    mean validation gold over the first two tuning seeds, diverged points eligible, no grid extension), and why;
    a change the tie-break alone made goes to ``tie_lines`` instead."""
    out, changed, n, ties = [], 0, 0, []
    lr_grid = spec.lr_grid if spec else {}
    for task, T in agg["tasks"].items():
        base = {float(x) for x in lr_grid.get(task, lr_grid.get("default", []))}
        for r in T.get("tuned", T["rows"]):
            best = select.choose(r.grid, None)["best"] if r.grid else None
            new = best["point"] if best else None
            old = r.chosen_mean.get("best")
            if not r.grid or new is None or old is None:
                continue
            n += 1
            if point_key(new) == point_key(old):
                continue
            if best.get("tie_broken") and point_key(_first_of_tie(r.grid, best)) == point_key(old):
                ties.append(f"{task}/{r.label}: {fmt_point(old)} → {fmt_point(new)}: tied at worst-seed validation gold "
                            f"{best['val_gold_worst']:.3f}; the conservative point replaces the first grid point")
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
    return out, changed, n, ties


def _changed(board) -> tuple[list, int, int, list]:
    lines, changed, n, ties = [], 0, 0, []
    for b in board.boards():
        lines_b, c, k, t = picks_changed(b.agg, b.spec)
        lines += [f"- {b.suite}: {md(x)}" for x in lines_b]
        ties += [f"- {b.suite}: {md(x)}" for x in t]
        changed, n = changed + c, n + k
    return lines, changed, n, ties


@register("selection")
class Selection(Section):
    order = 40

    def headlines(self, board) -> list:
        _, changed, n, ties = board.memo("selection", lambda: _changed(board))
        if not n:
            return []
        return [f"**Selection**: the robust rule (no diverged point, worst of three tuning seeds, grid edges extended) "
                f"changed {changed} of {n} picks against the earlier rule (mean of two tuning seeds) on the same "
                f"tuning runs, and the tie-break alone {len(ties)} more (see Selection)."]

    def markdown(self, board) -> list:
        lines, changed, n, ties = board.memo("selection", lambda: _changed(board))
        if not n:
            return []
        out = ["## Selection: what the robust rule changed", "",
               f"{changed} of {n} picks differ from the earlier rule's (the highest mean validation gold over "
               "the first two tuning seeds, diverged points eligible, no grid extension), computed on "
               "the same tuning runs, because of the rule:", ""] + lines + [""]
        if ties:
            out += [f"{len(ties)} more differ by the tie-break alone (scores equal within {select.TIE_TOLERANCE:g}: the "
                    "smaller learning rate, then the larger β, replaces the first grid point):", ""] + ties + [""]
        return out
