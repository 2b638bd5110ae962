"""A suite as a list of jobs: every registered board section adds its own (:mod:`prefopt.leaderboard.section`;
the protocol's reward models, tuning grid, report picks, best-of-n and ablation come from the main table's,
:mod:`prefopt.leaderboard.protocol`), through one :class:`~prefopt.leaderboard.jobs.Planner` that gives
every job its identity and lists each identity once.
"""

from __future__ import annotations

from typing import Optional

import prefopt.leaderboard.sections  # noqa: F401  (registers the built-in sections)
from prefopt.core.errors import UserError
from prefopt.leaderboard import section, store
from prefopt.leaderboard.jobs import Planner
from prefopt.leaderboard.suite import Suite


def plan(suite: Suite, work_dir: str, results_dir: Optional[str] = None) -> tuple[list, list]:
    """(jobs, notes): every job of the suite that can be planned now, in stage order, and notes (a
    line per method left off, and per method whose report runs wait for its tuning results)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return _plan(suite, work_dir, results_dir)
    with initialize_config_module(config_module="prefopt.conf", version_base=None):
        return _plan(suite, work_dir, results_dir)


def _plan(suite: Suite, work_dir: str, results_dir: Optional[str]) -> tuple[list, list]:
    from prefopt.run.summary import cpu_capability
    from prefopt.leaderboard.identity import code_version

    loaded = store.load_results(results_dir) if results_dir else None
    p = Planner(suite, work_dir, loaded, code_version(), cpu_capability())
    for s in section.ordered():
        s.jobs(suite, p)
    ids = [j.id for j in p.jobs]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise UserError(f"suite {suite.name}: job ids collide: {sorted(dup)}")
    return p.jobs, p.notes
