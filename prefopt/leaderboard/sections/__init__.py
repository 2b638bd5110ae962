"""The board's built-in sections, one file each, registered on import (:mod:`prefopt.leaderboard.section`):
the main table (:mod:`.main`), transfer toy → real checkpoint (:mod:`.transfer`), the cross-CPU rerun
(:mod:`.cross_cpu`), what the robust selection rule changed (:mod:`.selection`) and the reward-model
ensembles (:mod:`.ensemble`). Importing this package registers every one."""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
