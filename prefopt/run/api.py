"""The run API: one training run from Python, exactly what one ``prefopt-train`` job runs.

    import prefopt

    run = prefopt.Run(["algo=ipo", "trainer.max_steps=20", "seed=1"], out_dir="runs/ipo")
    result = run.train()             # RunResult: summary (summary.json's dict), out_dir, model_dir, ...
    result.summary["eval"]["gold_reward"]

The overrides are the command line's (``key=value``, checked the same way: a mistake is one
:class:`~prefopt.core.errors.UserError` line, raised before anything is written); or pass a composed
config, ``Run(cfg=prefopt.compose([...]))``, edited as any OmegaConf config. :meth:`Run.train`
writes the run-output contract into ``out_dir`` (``.hydra/``, ``metrics.jsonl``, ``summary.json``,
``model/``, ``checkpoints/``) and returns where. A config whose objective asks for several members
(``algo=reward algo.ensemble_members=5``) trains each as a run of its own (:mod:`prefopt.run.members`).

:meth:`Run.data` and :meth:`Run.policy` give what the run would start from (its rows, tokenizer and
base policy) without training, e.g. to sample or to score before a run.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from prefopt.core.files import write_text
from prefopt.run.config import compose


@dataclass
class RunResult:
    """What :meth:`Run.train` returns: the summary (summary.json's content; None on a process other
    than rank 0) and the paths of the run's outputs."""

    summary: Optional[dict]
    out_dir: str
    model_dir: Optional[str]  # out_dir/model: the trained policy as HF artifacts (None when not saved)
    metrics_path: str  # out_dir/metrics.jsonl: one JSON object per logged step
    summary_path: str  # out_dir/summary.json


def default_out_dir(cfg: DictConfig) -> str:
    """outputs/DATE/TIME_ALGO_sSEED, the directory prefopt-train would pick (conf/train.yaml's hydra.run.dir)."""
    now = datetime.datetime.now()
    algo = cfg.algo.get("name", "run") if "algo" in cfg else "run"
    return os.path.join("outputs", now.strftime("%Y-%m-%d"), f"{now.strftime('%H-%M-%S-%f')}_{algo}_s{cfg.get('seed', 0)}")


def write_config_dir(out_dir: str, cfg: DictConfig, overrides: Optional[Sequence[str]] = None, hydra=None) -> None:
    """out_dir/.hydra/: config.yaml (as composed), resolved.yaml (interpolations resolved) and, when
    known, overrides.yaml (the overrides it was composed with) and hydra.yaml (Hydra's job config)."""
    d = os.path.join(out_dir, ".hydra")
    files = [("config.yaml", cfg, False), ("resolved.yaml", cfg, True)]
    if hydra is not None:
        files.append(("hydra.yaml", OmegaConf.create({"hydra": hydra}), False))
    if overrides is not None:
        files.append(("overrides.yaml", overrides if isinstance(overrides, DictConfig) or OmegaConf.is_list(overrides)
                      else OmegaConf.create(list(overrides)), False))
    for name, node, resolve in files:
        write_text(os.path.join(d, name), OmegaConf.to_yaml(node, resolve=resolve))


class Run:
    """One training run: ``Run(overrides, out_dir=...)`` or ``Run(cfg=composed_config, out_dir=...)``.

    ``overrides``: the command line's ``key=value`` strings (``["algo=dpo", "seed=1"]``), composed
    over conf/train.yaml; with ``cfg`` as well, they are only recorded (.hydra/overrides.yaml).
    ``out_dir``: where the outputs go (default: outputs/DATE/TIME_ALGO_sSEED, as prefopt-train);
    a directory that already holds a run is refused unless ``trainer.resume=auto``.
    ``console``: a rich Console for the start-up lines and the final table.
    """

    def __init__(self, overrides: Optional[Sequence[str]] = None, *, cfg: Optional[DictConfig] = None,
                 out_dir: Optional[str] = None, console=None, hydra=None):
        self.overrides = None if overrides is None else list(overrides)
        self.cfg = cfg if cfg is not None else compose(self.overrides or [])
        self.out_dir = str(out_dir) if out_dir is not None else default_out_dir(self.cfg)
        self.console = console
        self._hydra = hydra  # prefopt-train's Hydra job config, written as .hydra/hydra.yaml

    def __repr__(self) -> str:
        return f"Run(algo={self.cfg.algo.get('name')!r}, out_dir={self.out_dir!r})"

    # ---- what the run starts from ----

    def check(self):
        """Every section typed and checked (the run's first stage), nothing loaded or written; the typed
        configs (``.acfg``, ``.mcfg``, ``.dcfg``, ``.tcfg``, ...)."""
        from prefopt.run.stages import configs

        return configs(self.cfg)

    def data(self, kind: Optional[str] = None):
        """The run's data (:class:`prefopt.run.prepare.RunData`): rows of ``kind`` (default: the kind the
        objective trains on), the tokenizer and base weights they go with, and on testbed data the gold
        reward and held-out prompts."""
        from prefopt.run.prepare import prepare_data, quiet_libraries

        quiet_libraries()
        c = self.check()
        return prepare_data(c.mcfg, c.dcfg, kind or c.needs.data, ranked=kind is None and c.needs.ranked,
                            console=self.console)

    def policy(self, data=None):
        """The policy the run starts from (its base weights, LoRA adapters when model.lora.r > 0), for
        ``data`` (default: :meth:`data` of the prompts)."""
        from prefopt.run.prepare import base_policy

        c = self.check()
        return base_policy(c.mcfg, data if data is not None else self.data("prompt_only"), seed=c.seed)

    # ---- training ----

    def train(self) -> RunResult:
        """Train; returns the summary and the output paths (see :class:`RunResult`). Raises
        :class:`~prefopt.core.errors.UserError` (one line) for a mistake in the config or the data,
        before anything is written, and :class:`~prefopt.core.errors.Interrupted` on SIGINT / SIGTERM."""
        from prefopt.run import members

        n = members.count(self.cfg)
        if n > 1:  # N runs (an ensemble): members.run_members calls the single run below once per member
            summary = members.run_members(self.cfg, self.out_dir, n, self._train_member, self.console,
                                          on_start=self._write_config)
        else:
            summary = self._train_one(None)
        model_dir = os.path.join(self.out_dir, "model")
        return RunResult(summary=summary, out_dir=self.out_dir, model_dir=model_dir if os.path.isdir(model_dir) else None,
                         metrics_path=os.path.join(self.out_dir, "metrics.jsonl"),
                         summary_path=os.path.join(self.out_dir, "summary.json"))

    def _write_config(self) -> None:
        write_config_dir(self.out_dir, self.cfg, self.overrides, self._hydra)

    def _train_one(self, before_write: Optional[Callable[[], None]]) -> Optional[dict]:
        from prefopt.run.stages import run_one

        def on_start():
            if before_write is not None:
                before_write()
            self._write_config()

        return run_one(self.cfg, self.out_dir, self.console, on_start=on_start)

    def _train_member(self, cfg: DictConfig, out_dir: str, before_write: Callable[[], None]) -> dict:
        return Run(cfg=cfg, out_dir=out_dir, console=self.console)._train_one(before_write)


def train(cfg: DictConfig, out_dir: str, console=None) -> Optional[dict]:
    """``Run(cfg=cfg, out_dir=out_dir).train().summary``: one run of a composed config; its summary."""
    return Run(cfg=cfg, out_dir=out_dir, console=console).train().summary
