"""The main table: the protocol's jobs (:mod:`prefopt.leaderboard.protocol`) and, per tier (the board's own
suite, then each real-checkpoint tier it names), every task's tables (:mod:`prefopt.leaderboard.tables`) and
the frontier plot."""

from __future__ import annotations

from prefopt.leaderboard import plot, protocol
from prefopt.leaderboard.section import Section, register
from prefopt.leaderboard.tables import check_rows, header_lines, headline, task_section, tier_cost

# best-of-n's samples per prompt where a suite has no best-of-n baseline (its check then has no points).
DEFAULT_SAMPLES = 16


def _checks(b) -> dict:
    bon = b.spec.best_of_n if b.spec else None
    return check_rows(b.agg, b.budgets, int(bon.samples) if bon else DEFAULT_SAMPLES)


def _tasks(b) -> list:
    lines = []
    checks_of = _checks(b)
    for task in b.task_order():
        lines += task_section(b.agg["tasks"][task], task, b.budgets, checks_of.get(task), level="###")
    return lines


def provenance(board, b) -> str:
    """Where a tier's numbers differ in origin from the main suite's: another code version, or report
    seeds outside the main suite's pre-registered block (a reader must not take them for one run)."""
    if b is board.main:
        return ""
    parts = []
    code, main_code = b.agg["version"][0], board.main.agg["version"][0]
    if code != main_code:
        parts.append(f"code version `{code}`, not `{main_code}`")
    block, main_block = (b.spec.seed_block if b.spec else None), (board.main.spec.seed_block if board.main.spec else None)
    if block != main_block:
        seeds = ", ".join(str(x) for x in b.spec.seeds) if b.spec else "?"
        parts.append(f"report seeds {seeds}, " + (f"block {block}" if block else "not a pre-registered block"))
    return "; " + "; ".join(parts) if parts else ""


@register("main")
class MainTable(Section):
    order = 10

    def jobs(self, suite, plan) -> None:
        protocol.plan_jobs(plan)

    def headlines(self, board) -> list:
        return [f"**{task}** (suite `{b.suite}`{provenance(board, b)}): {headline(b.agg['tasks'][task])}"
                for b in board.boards() for task in b.task_order()]

    def markdown(self, board) -> list:
        main = board.main
        lines = [f"## Toy tier (suite `{main.suite}`)", "", f"Cost: {tier_cost(main.shown)}.", ""] + _tasks(main)
        for t in board.tiers:
            lines += [f"## Real-checkpoint tier (suite `{t.suite}`)", ""]
            lines += header_lines(t.agg, t.shown) + [""]
            if t.spec and t.spec.budget_note:
                lines += [t.spec.budget_note, ""]
            lines += [f"Cost: {tier_cost(t.shown)}.", "", f"![gold against √KL on the real checkpoint]({t.suite}.png)", ""]
            lines += _tasks(t)
        return lines

    def plots(self, board) -> dict:
        out = {"frontier.png": plot.frontier_png(board.main.agg, board.main.task_order(),
                                                 f"prefopt leaderboard ({board.suite})")}
        for t in board.tiers:
            out[f"{t.suite}.png"] = plot.frontier_png(t.agg, t.task_order(), f"prefopt leaderboard ({t.suite})")
        return out
