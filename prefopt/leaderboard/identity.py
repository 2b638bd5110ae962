"""A leaderboard result's identity: what fixes its numbers, beyond its config.

    result_id = sha256(config_hash, code_version, cpu_capability)[:16]

- ``config_hash``: the composed conf/train.yaml of the run (prefopt.run.resume.config_hash);
- ``code_version``: a hash of the source that trains and evaluates: every ``.py`` file of the
  ``prefopt`` package and of ``prefopt_kernels``, and every YAML file of conf/ (its defaults), except
  the files that only plan, aggregate and render the board (``NOT_TRAINING``) and the benchmarks. The
  rule for when an old result stays valid is therefore mechanical: exactly when none of those files
  changed. A change anywhere else (a sampler fix, a new default) makes every result a new one, so the
  board never shows a row computed before a behaviour-changing change next to rows computed after it;
- ``cpu_capability``: the kernels torch picked (AVX-512 and AVX2 round differently, and RL amplifies
  it): results of another CPU kind are other results, reproduced statistically, not exactly.
"""

from __future__ import annotations

import functools
import hashlib
import os

# Files that never change a trained or evaluated number: the board's own planning, statistics and
# rendering (the benchmarks, prefopt/bench/, are left out by _files). Paths relative to the package root;
# one ending in "/" stands for the whole directory. Of leaderboard/, job.py and bon.py train and evaluate.
NOT_TRAINING = ("leaderboard/__init__.py", "leaderboard/aggregate.py", "leaderboard/board.py", "leaderboard/checks.py",
                "leaderboard/cli.py", "leaderboard/ensemble.py", "leaderboard/fits.py", "leaderboard/identity.py",
                "leaderboard/jobs.py", "leaderboard/manifest.py", "leaderboard/page.py", "leaderboard/plan.py",
                "leaderboard/plot.py", "leaderboard/preregistration.py",
                "leaderboard/protocol.py", "leaderboard/render.py", "leaderboard/section.py", "leaderboard/sections/",
                "leaderboard/select.py", "leaderboard/stats.py", "leaderboard/store.py", "leaderboard/suite.py",
                "leaderboard/tables.py", "leaderboard/transfer.py")


def _skipped(rel: str, skip) -> bool:
    return any(rel == s or (s.endswith("/") and rel.startswith(s)) for s in skip)


def _roots() -> list:
    """(package, directory, suffixes, files to leave out) of each source tree that trains or evaluates."""
    import prefopt
    import prefopt.conf
    import prefopt_kernels

    here = lambda m: os.path.dirname(os.path.abspath(m.__file__))  # noqa: E731
    return [("prefopt", here(prefopt), (".py",), NOT_TRAINING),
            ("prefopt_kernels", here(prefopt_kernels), (".py",), ()),
            # conf/leaderboard/: a suite's effect on a run is in the run's config hash
            ("prefopt.conf", list(prefopt.conf.__path__)[0], (".yaml",), ()), ]


def _files() -> list:
    out = []
    for name, root, suffixes, skip in _roots():
        for d, dirs, files in os.walk(root):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            for f in sorted(files):
                rel = os.path.relpath(os.path.join(d, f), root).replace(os.sep, "/")
                if not f.endswith(suffixes) or _skipped(rel, skip) or (name == "prefopt" and rel.startswith("bench")):
                    continue
                if name == "prefopt.conf" and rel.startswith("leaderboard/"):
                    continue
                out.append((f"{name}/{rel}", os.path.join(d, f)))
    return sorted(out)


@functools.cache
def code_version() -> str:
    """Hash of the training and evaluation source (see the module docstring)."""
    h = hashlib.sha256()
    for rel, path in _files():
        with open(path, "rb") as f:
            data = f.read()
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()[:12]


def result_id(config_hash: str, code: str, cpu: str) -> str:
    return hashlib.sha256(f"{config_hash}\0{code}\0{cpu}".encode()).hexdigest()[:16]
