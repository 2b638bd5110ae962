"""Transfer: does the toy task's ranking predict the real checkpoint's? The suite's ``transfer`` names the toy
task and the tier's task; the methods both boards have are compared (:mod:`prefopt.leaderboard.transfer`)."""

from __future__ import annotations

from prefopt.leaderboard import transfer
from prefopt.leaderboard.section import Section, register
from prefopt.leaderboard.sections.main import provenance
from prefopt.leaderboard.tables import transfer_lines


def _compared(board):
    """(transfer settings, comparison, provenance note) or None when the board lacks either side."""
    tr = board.main.spec.transfer if board.main.spec else None
    if tr is None:
        return None
    real = next((t for t in board.tiers if t.suite == tr.suite), None)
    if real is None or tr.toy not in board.main.agg["tasks"] or tr.task not in real.agg["tasks"]:
        return None
    return tr, transfer.compare(board.main.agg["tasks"][tr.toy], real.agg["tasks"][tr.task]), provenance(board, real)


@register("transfer")
class Transfer(Section):
    order = 20

    def headlines(self, board) -> list:
        got = board.memo("transfer", lambda: _compared(board))
        if got is None or got[1] is None:
            return []
        tr, res, note = got
        return [f"**Transfer** ({tr.toy} → {tr.task}{note}): {transfer.verdict(res['tau'])}."]

    def markdown(self, board) -> list:
        got = board.memo("transfer", lambda: _compared(board))
        if got is None:
            return []
        tr, res, note = got
        title = f"## Transfer: does the toy `{tr.toy}` ranking predict `{tr.task}` on the real checkpoint?"
        where = f" The `{tr.task}` side comes from {note[2:]}." if note else ""
        return transfer_lines(res, tr.toy, tr.task, title,
                              "Each method at its own validation-chosen configuration on each board." + where)
