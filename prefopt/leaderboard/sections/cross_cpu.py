"""Cross-CPU: the board's suite rerun under the same code version on another CPU capability, each task
compared with the board over the methods and report seeds the rerun has, paired by seed.

The claim is made only for a rerun that could have come out otherwise: from scratch (π_SFT is cached per
CPU kind, so a rerun of this code version on another CPU trains its own π_SFT, pairs, reward models, tuning
grid and picks) and including the methods that move with the CPU, the online ones (``ONLINE``: at least
these on the task). Without such a rerun the section and its headline are absent."""

from __future__ import annotations

from prefopt.leaderboard import transfer
from prefopt.leaderboard.section import Section, register
from prefopt.leaderboard.tables import point_key, transfer_lines


# The online methods a rerun must include on a task before the board compares it: RL amplifies rounding,
# an offline-only subset agrees by construction.
ONLINE = ("rloo", "grpo", "ppo")


def complete(T) -> bool:
    """Whether a rerun's task has report results of every method in ONLINE (any reward source)."""
    have = {r.method for r in T["rows"] if r.best is not None}
    return all(m in have for m in ONLINE)


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
            if task in main.agg["tasks"] and seeds and complete(T):
                out.append((other_cpu, task, transfer.compare(main.agg["tasks"][task], T, seeds_a=seeds, paired=True),
                            len(recs)))
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
        md = ["## Cross-CPU: a from-scratch rerun on another CPU kind", "",
              "The same code version rerun under another CPU capability from scratch: its own π_SFT, pairs, reward "
              f"models, tuning grid, picks and report runs, the online methods ({', '.join(ONLINE)}) included; compared "
              "with this board over the methods and report seeds the rerun has, the seeds resampled jointly (paired).", ""]
        for other_cpu, task, res, n in cc:
            md += transfer_lines(res, cpu, other_cpu, f"### {task}: {cpu} board vs {other_cpu} rerun ({n} runs)",
                                 f"Picks the same: {_same(res)} of {len(res['rows']) if res else 0}.")
        return md
