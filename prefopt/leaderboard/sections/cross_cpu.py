"""Cross-CPU: the board's suite rerun (a subset) under the same code version on another CPU capability,
each task compared with the board over the methods and report seeds the rerun has."""

from __future__ import annotations

from prefopt.leaderboard import transfer
from prefopt.leaderboard.section import Section, register
from prefopt.leaderboard.tables import point_key, transfer_lines


def reruns(board) -> list:
    """[(cpu, task, transfer.compare result, runs)]: the suite's results of the board's code version on another
    CPU capability, each task compared with the board over the seeds the rerun has."""
    main = board.main
    code, cpu = main.agg["version"] or (None, None)
    others = {}
    for r in main.records:
        if r.get("code_version") == code and r.get("cpu_capability") not in (None, cpu):
            others.setdefault(r["cpu_capability"], []).append(r)
    out = []
    for other_cpu, recs in sorted(others.items()):
        agg = main.aggregate_of(recs)
        for task, T in agg["tasks"].items():
            seeds = {s for r in T["rows"] if r.best is not None for s in r.best.per_seed.get("gold", {})}
            if task in main.agg["tasks"] and seeds:
                out.append((other_cpu, task, transfer.compare(main.agg["tasks"][task], T, seeds_a=seeds), len(recs)))
    return out


def _same(res) -> int:
    return sum(1 for r in res["rows"] if point_key(r["pick_a"]) == point_key(r["pick_b"])) if res else 0


@register("cross_cpu")
class CrossCPU(Section):
    order = 30

    def headlines(self, board) -> list:
        return [f"**Cross-CPU** ({task}, {other_cpu} rerun, {len(res['rows'])} methods): {_same(res)} of "
                f"{len(res['rows'])} picks the same; {transfer.verdict(res['tau'])}."
                for other_cpu, task, res, _ in board.memo("cross_cpu", lambda: reruns(board)) if res is not None]

    def markdown(self, board) -> list:
        cc = board.memo("cross_cpu", lambda: reruns(board))
        if not cc:
            return []
        cpu = board.main.agg["version"][1]
        md = ["## Cross-CPU: a subset rerun on another CPU kind", "",
              "The same code version rerun under another CPU capability: its own reward models, tuning grid, picks and "
              "report runs (whether π_SFT and the pairs were rebuilt too is in the Notes); compared with this board over "
              "the methods and report seeds the rerun has.", ""]
        for other_cpu, task, res, n in cc:
            md += transfer_lines(res, cpu, other_cpu, f"### {task}: {cpu} board vs {other_cpu} rerun ({n} runs)",
                                 f"Picks the same: {_same(res)} of {len(res['rows']) if res else 0}.")
        return md
