"""The run API: one training run as a library call, what every command and the leaderboard use.

    run = prefopt.Run(["algo=dpo", "trainer.max_steps=20"], out_dir="runs/dpo")
    result = run.train()   # RunResult(summary, out_dir, model_dir, metrics_path, summary_path)

- ``api``: :class:`Run`, :class:`RunResult`, :func:`train` (a composed config in, the summary out);
- ``config``: :func:`compose` (conf/train.yaml with command-line overrides, one-line errors);
- ``prepare``: what a run reads before training (rows, tokenizer, base weights; gold reward and
  held-out prompts on the testbed), shared by training, ``prefopt-label`` and best-of-n;
- ``stages``: one run in named stages, configs → placement → data → models → … → outputs;
- ``members``: an ensemble's N members, each one run of its own;
- ``resume``, ``signals``, ``summary``: resuming, Ctrl-C / SIGTERM, summary.json (:class:`RunSummary`).
"""

from prefopt.run.api import Run, RunResult, train
from prefopt.run.config import compose

__all__ = ["Run", "RunResult", "RunSummary", "compose", "train"]


def __getattr__(name: str):
    if name == "RunSummary":  # imports torch: only when asked for
        from prefopt.run.summary import RunSummary

        return RunSummary
    raise AttributeError(f"module 'prefopt.run' has no attribute {name!r}")
