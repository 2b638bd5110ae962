"""Objectives register by name and declare what they need; the trainer reads the declarations.

An objective is a class with:

- ``needs``: a :class:`Needs` (data kind, reference policy, reward, value head, rollouts);
- ``Config``: a dataclass of its hyperparameters (the structured config behind conf/algo/NAME.yaml);
- ``__init__(self, cfg)``;
- ``units(self, batch) -> int``: how many loss units (pairs, sequences or tokens) a micro-batch holds;
  the trainer divides the summed loss of a whole optimizer step by the step's total units, so the
  loss does not depend on how the step is split into micro-batches or processes;
- ``loss(self, batch, scorer) -> (loss_sum, metric_sums)``: the loss summed over units, and metrics
  summed over the same units (the trainer reports them divided by the unit count).

Optional hooks (train.py calls them when present, never by name):

- ``prepare_examples(self, examples, rows, source) -> examples``: checks and filters the tokenized
  examples before any model loads (raise UserError for bad input), or attaches per-example data;
- ``collate(self, examples, pad_token_id) -> batch``: replaces ``data.collate`` (e.g. to add extra
  sequences per example).

Optional declaration read by the leaderboard: ``tuning = {config key: (values…)}``, the method's main
coefficient (β, λ, kl_coef, n) and the values its tuning grid tries; ``{}`` or absent: the learning
rate alone is tuned.

Nothing outside this module maps algorithm names to code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prefopt.core.errors import UserError

DATA_KINDS = ("paired", "unpaired", "prompt_only", "demonstrations")


@dataclass(frozen=True)
class Needs:
    """Everything the run and the rollout pipeline read about an objective; nothing else is read."""

    data: str  # one of DATA_KINDS
    reference: bool = False  # a frozen π_ref (or precomputed reference log-probs)
    reward: bool = False  # a reward source (conf/reward)
    value_head: bool = False  # a value model (critic or value head), handed to the loss through the scorer
    rollouts: bool = False  # trains on samples of the current policy (prefopt.rollout.source)
    # What the trained model is: "lm" (a causal LM policy) or "scalar" (a sequence classifier with
    # one output, e.g. a reward model).
    head: str = "lm"
    # Rollout declarations (read by prefopt.rollout.source):
    groups: bool = False  # compares the samples of one prompt: samples_per_prompt >= 2
    whole_groups_per_micro_batch: bool = False  # a micro-batch holds whole groups (online DPO's pairs)
    sampler_logps: bool = False  # keeps the sampler's own log-probs μ (importance correction)
    greedy_baseline: bool = False  # also decodes each prompt greedily and scores it (ReMax)
    old_logps: bool = True  # reads log π_old (an importance ratio); False skips that pass

    def __post_init__(self):
        if self.data not in DATA_KINDS:
            raise ValueError(f"Needs.data must be one of {DATA_KINDS}, got {self.data!r}")
        if self.head not in ("lm", "scalar"):
            raise ValueError(f"Needs.head must be 'lm' or 'scalar', got {self.head!r}")


OBJECTIVES: dict[str, type] = {}


def register(name: str):
    """Class decorator: ``@register("dpo")``."""

    def wrap(cls):
        if name in OBJECTIVES:
            raise ValueError(f"objective {name!r} registered twice")
        for attr in ("needs", "Config", "units", "loss"):
            if not hasattr(cls, attr):
                raise TypeError(f"objective {name!r} lacks {attr!r}")
        if not dataclasses.is_dataclass(cls.Config):
            raise TypeError(f"objective {name!r}: Config must be a dataclass")
        cls.name = name
        OBJECTIVES[name] = cls
        return cls

    return wrap


def _load_builtin():
    # Importing the package registers every built-in objective (one file per method).
    import prefopt.objectives  # noqa: F401


def available() -> list[str]:
    _load_builtin()
    return sorted(OBJECTIVES)


def get_objective(name: str) -> type:
    _load_builtin()
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise UserError(f"unknown algo '{name}'; available: {', '.join(sorted(OBJECTIVES))}") from None
