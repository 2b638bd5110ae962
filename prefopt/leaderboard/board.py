"""The board, built once from the results store: the shown suite's aggregate, its tiers' (other suites shown
on the same board, e.g. the real checkpoint's), and what the sections compute from them. The renderer
(:mod:`prefopt.leaderboard.render`) writes it as Markdown, HTML and plots; nothing here writes a file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

from prefopt.leaderboard import preregistration
from prefopt.leaderboard.aggregate import aggregate, pick_version
from prefopt.leaderboard.store import Loaded
from prefopt.leaderboard.suite import Suite, find_suite, suite_files


@dataclass
class SuiteBoard:
    """One suite's results on the board: its aggregate (one code version and CPU capability) and its settings."""

    suite: str
    spec: Optional[Suite]  # None: a suite known only from its results
    agg: dict
    budgets: list
    records: list  # every successful result of the suite
    shown: list  # those of the version the aggregate shows
    versions: list  # the library versions of the shown results
    other_blocks: int = 0  # results of seeds outside the suite's block (earlier boards), not shown
    protocol: Optional[dict] = None  # preregistration.check of the shown results

    def aggregate_of(self, records: list) -> dict:
        """An aggregate of other records of this suite (a rerun), under the suite's own rules."""
        spec = self.spec
        return aggregate(records, self.budgets, pick_kl_budget=spec.pick_kl_budget if spec else None,
                         divergence=_divergence(spec), report_seeds=spec.seeds if spec else None)

    def task_order(self) -> list:
        """The suite's tasks in the order it lists them, then any other task its results have."""
        have = set(self.agg["tasks"])
        listed = [t for t in (self.spec.tasks if self.spec else []) if t in have]
        return listed + sorted(have - set(listed))


def _divergence(spec: Optional[Suite]) -> Optional[dict]:
    import dataclasses

    return dataclasses.asdict(spec.divergence) if spec else None


def suite_board(loaded: Loaded, suite: str, kl_budgets: Optional[list] = None) -> SuiteBoard:
    spec = find_suite(suite)
    budgets = kl_budgets if kl_budgets is not None else list(spec.kl_budgets if spec else [])
    records = [r for r in loaded.ok if r["leaderboard"].get("suite") == suite]
    other_blocks = 0
    if spec is not None:
        # only the suite's seed block (and its tuning and ablation seeds): earlier blocks' report seeds served
        # rules revised after their numbers were seen
        keep = preregistration.shown_seeds(spec)
        other_blocks = sum(1 for r in records if r["leaderboard"].get("seed") not in keep)
        records = [r for r in records if r["leaderboard"].get("seed") in keep]
    agg = aggregate(records, budgets, pick_kl_budget=spec.pick_kl_budget if spec else None,
                    divergence=_divergence(spec), report_seeds=spec.seeds if spec else None)
    _, shown = pick_version(records)
    versions = sorted({", ".join(f"{k} {v}" for k, v in sorted((r.get("versions") or {}).items())) for r in shown
                       if r.get("versions")})
    protocol = preregistration.check(spec, suite_files().get(suite), shown)
    return SuiteBoard(suite, spec, agg, budgets, records, shown, versions, other_blocks, protocol)


@dataclass
class Board:
    loaded: Loaded
    main: SuiteBoard
    tiers: list  # [SuiteBoard]
    _memo: dict = field(default_factory=dict)

    @property
    def suite(self) -> str:
        return self.main.suite

    def boards(self) -> list:
        """The main suite's board, then its tiers'."""
        return [self.main, *self.tiers]

    def memo(self, key: str, compute: Callable):
        """``compute()``, once per board: what a section computes for more than one of its hooks."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]


def pick_suite(loaded: Loaded, wanted: Optional[str] = None) -> Optional[str]:
    counts = Counter(r["leaderboard"].get("suite") for r in loaded.ok)
    if wanted:
        return wanted
    if "standard" in counts:
        return "standard"
    return counts.most_common(1)[0][0] if counts else None


def build(loaded: Loaded, suite: str, kl_budgets: Optional[list] = None) -> Board:
    """The board of ``suite`` (and of the tiers its settings name that have results)."""
    main = suite_board(loaded, suite, kl_budgets)
    have = {r["leaderboard"].get("suite") for r in loaded.ok}
    tiers = [suite_board(loaded, t) for t in (main.spec.tiers if main.spec else []) if t in have]
    return Board(loaded, main, tiers)
