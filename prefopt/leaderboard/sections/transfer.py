"""Transfer: does the toy task's ranking predict the real checkpoint's? The suite's ``transfer`` names the toy
task and the tier's task; the methods both boards have are compared (:mod:`prefopt.leaderboard.transfer`).

Two variants, each shown where its results exist:

- **matched budgets**: the tier's own rows of the toy task, run under the tier's design (steps, batch, grid,
  evaluation, labelling), so that the two rankings differ in the model and the task, not in the budget;
- **the main board's toy rows**: the toy task under its own (larger, tuned) budget, as published.
"""

from __future__ import annotations

from prefopt.leaderboard import transfer
from prefopt.leaderboard.section import Section, register
from prefopt.leaderboard.sections.main import provenance
from prefopt.leaderboard.tables import transfer_lines


def _compared(board) -> list:
    """[(variant label, transfer settings, comparison, provenance note of each side)] for the variants whose
    boards have both sides."""
    tr = board.main.spec.transfer if board.main.spec else None
    if tr is None:
        return []
    real = next((t for t in board.tiers if t.suite == tr.suite), None)
    if real is None or tr.task not in real.agg["tasks"]:
        return []
    out = []
    if tr.toy in real.agg["tasks"]:
        out.append((f"matched budgets: both from suite `{tr.suite}`", tr,
                    transfer.compare(real.agg["tasks"][tr.toy], real.agg["tasks"][tr.task]), provenance(board, real)))
    if tr.toy in board.main.agg["tasks"]:
        out.append((f"`{tr.toy}` from suite `{board.main.suite}`, under its own budget", tr,
                    transfer.compare(board.main.agg["tasks"][tr.toy], real.agg["tasks"][tr.task]), provenance(board, real)))
    return out


@register("transfer")
class Transfer(Section):
    order = 20

    def headlines(self, board) -> list:
        return [f"**Transfer** ({tr.toy} → {tr.task}; {variant}{note}): {transfer.verdict(res['tau'])}."
                for variant, tr, res, note in board.memo("transfer", lambda: _compared(board)) if res is not None]

    def markdown(self, board) -> list:
        out = []
        for variant, tr, res, note in board.memo("transfer", lambda: _compared(board)):
            title = f"## Transfer: does the toy `{tr.toy}` ranking predict `{tr.task}` on the real checkpoint? ({variant})"
            where = f" The `{tr.task}` side comes from {note[2:]}." if note else ""
            out += transfer_lines(res, tr.toy, tr.task, title,
                                  "Each method at its own validation-chosen configuration on each board." + where)
        return out
