"""The objectives: one file per method, holding its equations (with the paper) in the docstring and
code that matches them symbol for symbol. ``registry`` declares what an objective is (``Needs``,
the ``Objective`` / ``OnlineObjective`` protocols) and maps names to classes; ``pg/`` holds the
policy-gradient axes (advantages, KL, value) that ``policy_gradient`` composes into presets.
Importing this package registers every method."""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
