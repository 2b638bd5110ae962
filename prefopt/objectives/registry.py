"""Objectives register by name and declare what they need; the trainer reads the declarations.

An objective is a subclass of :class:`Objective` (offline methods) or :class:`OnlineObjective`
(``needs.rollouts``: it trains on samples of the current policy and adds ``prepare``):

- ``needs``: a :class:`Needs`: the data kind, a reference policy, a reward source, a value model,
  rollouts, the trained head, and the rollout pipeline's flags (groups, whole groups per micro-batch,
  the sampler's log-probs, a greedy baseline, log π_old);
- ``Config``: a dataclass of its hyperparameters, the structured config behind conf/algo/NAME.yaml;
  ``cfg``: the instance the objective is built from (``__init__(self, cfg)``);
- ``units(batch)`` and ``loss(batch, scorer)``: see :class:`Objective`;
- ``prepare(roll) -> (roll, metrics)`` (online objectives): see :class:`OnlineObjective`.

Hooks with do-nothing defaults, called unconditionally and never by name, are listed in
:class:`Objective`'s docstring.
A preset (a named set of defaults of one objective, e.g. DAPO of the policy-gradient objective) is a
registered subclass built by :func:`preset`.

Declaration read by the leaderboard: ``tuning = {config key: (values…)}``, the method's main
coefficient (β, λ, kl_coef, n) and the values its tuning grid tries; ``{}`` (the default): the
learning rate alone is tuned.

Nothing outside this module maps algorithm names to code.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from prefopt.core.registry import Registry
from prefopt.data.formats import KINDS
from prefopt.data.tokenize import collate

if typing.TYPE_CHECKING:
    import torch

    from prefopt.models.logprobs import Scorer


@dataclass(frozen=True)
class Needs:
    """Everything the run and the rollout pipeline read about an objective; nothing else is read."""

    data: str  # one of prefopt.data.formats.KINDS
    reference: bool = False  # a frozen π_ref (or precomputed reference log-probs)
    reward: bool = False  # a reward source (conf/reward)
    value_head: bool = False  # a value model (critic or value head), handed to the loss through the scorer
    rollouts: bool = False  # trains on samples of the current policy (prefopt.rollout.source)
    # Trains on ranked data as it is (one example = one prompt's K ranked completions); otherwise
    # ranked data reaches a paired objective as the pairs of data.ranking_to_pairs.
    ranked: bool = False
    # What the trained model is: "lm" (a causal LM policy) or "scalar" (a sequence classifier with
    # one output, e.g. a reward model).
    head: str = "lm"
    # Rollout declarations (read by prefopt.rollout.source):
    groups: bool = False  # compares the samples of one prompt: samples_per_prompt >= 2
    whole_groups_per_micro_batch: bool = False  # a micro-batch holds whole groups (online DPO's pairs)
    sampler_logps: bool = False  # keeps the sampler's own log-probs μ (importance correction)
    greedy_baseline: bool = False  # also decodes each prompt greedily and scores it (ReMax)
    old_logps: bool = True  # reads log π_old (an importance ratio); False skips that pass
    reward_terms: bool = False  # reads each reward term apart (roll["reward_terms"] [N, R], "reward_weights"; GDPO)

    def __post_init__(self):
        if self.data not in KINDS:
            raise ValueError(f"Needs.data must be one of {KINDS}, got {self.data!r}")
        if self.head not in ("lm", "scalar"):
            raise ValueError(f"Needs.head must be 'lm' or 'scalar', got {self.head!r}")


class Objective:
    """The base of every objective: what the trainer (:mod:`prefopt.core.trainer`) and the run's
    stages (:mod:`prefopt.run.stages`) call. Built as ``Obj(cfg)`` with ``cfg`` an instance of
    ``Obj.Config``.

    Every objective defines ``needs``, ``Config``, ``units`` and ``loss``. The hooks below have
    defaults that do nothing, so callers call them unconditionally and an objective overrides only
    what it uses:

    - ``tuning``: the leaderboard's grid of the main coefficient, ``{config key: (values…)}``;
      ``{}``: the learning rate alone is tuned;
    - ``prepare_examples(examples, rows, source) -> examples``: checks and filters the tokenized
      examples before any model loads (raise UserError for bad input), or attaches per-example data;
    - ``collate(examples, kind, pad_token_id) -> batch``: turns examples into a batch (default:
      :func:`prefopt.data.tokenize.collate`; KTO adds its mismatched sequences);
    - ``ensemble_members() -> int``: how many complete runs one command trains (an ensemble of
      reward models, :mod:`prefopt.run.members`); 1: an ordinary run;
    - ``resample_examples(examples, seed) -> examples``: the training examples this run trains on
      after the held-out split (an ensemble member's bootstrap resample);
    - ``precomputes_reference() -> bool``: whether the reference log-probs are computed once before
      training and cached on disk instead of keeping π_ref in memory;
    - ``state_dict() -> dict`` and ``load_state_dict(state)``: state carried from step to step
      besides the weights (an adaptive KL coefficient, a running baseline), saved in checkpoints.
    """

    needs: Needs
    Config: type
    cfg: Any
    tuning: dict = {}

    def __init__(self, cfg):
        self.cfg = cfg

    def units(self, batch: dict) -> int:
        """How many loss units (pairs, sequences or tokens) a micro-batch holds. The trainer divides
        the summed loss of a whole optimizer step by the step's total units, so the loss does not
        depend on how the step is split into micro-batches or processes."""
        raise NotImplementedError

    def loss(self, batch: dict, scorer: Scorer) -> tuple[torch.Tensor, dict]:
        """``(loss_sum, metric_sums)``: the loss summed over units, and metrics summed over the same
        units (the trainer reports them divided by the unit count). ``scorer`` is what the
        objective sees of the models: the policy's log-probs (``logps``, ``pair_logps``) or a scalar
        head's ``scores``, the reference's log-probs (``ref_logps``) and, with ``needs.value_head``,
        the value model's V_t (``values``)."""
        raise NotImplementedError

    def prepare_examples(self, examples: list, rows: list, source: str) -> list:
        return examples

    def collate(self, examples: list, kind: str, pad_token_id: int) -> dict:
        return collate(examples, kind, pad_token_id)

    def ensemble_members(self) -> int:
        return 1

    def resample_examples(self, examples: list, seed: int) -> list:
        return examples

    def precomputes_reference(self) -> bool:
        return False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class OnlineObjective(Objective):
    """An objective with ``needs.rollouts``: :mod:`prefopt.rollout.source` samples a rollout, scores
    it, and hands it to ``prepare`` before the loss sees it."""

    def prepare(self, roll: dict) -> tuple[dict, dict]:
        """``(roll, metrics)``: the rollout with what the loss reads (advantages, selected pairs or
        winners; no gradient), and rollout metrics (``rollout/…``)."""
        raise NotImplementedError


def _check(name: str, cls: type) -> None:
    for attr in ("needs", "Config"):  # declarations (annotated on the base, never given a value there)
        if not hasattr(cls, attr):
            raise TypeError(f"objective {name!r} lacks {attr!r}")
    for attr in ("units", "loss"):
        if getattr(cls, attr) is getattr(Objective, attr):
            raise TypeError(f"objective {name!r} lacks {attr!r}")
    if not dataclasses.is_dataclass(cls.Config):
        raise TypeError(f"objective {name!r}: Config must be a dataclass")
    if cls.needs.rollouts and not issubclass(cls, OnlineObjective):
        raise TypeError(f"objective {name!r} declares needs.rollouts but is no OnlineObjective (which adds 'prepare')")


OBJECTIVES = Registry("objective", base=Objective, check=_check, unknown="unknown algo '{name}'; available: {names}")
register = OBJECTIVES.register  # ``@register("dpo")``


def preset(name: str, base: type, doc: str, **defaults) -> type:
    """Register ``name`` as a subclass of the objective ``base`` whose Config has ``name`` and the
    given ``defaults`` (the keys conf/algo/NAME.yaml sets on top of its base)."""
    hints = typing.get_type_hints(base.Config)
    fields = [(k, hints[k], dataclasses.field(default=v)) for k, v in defaults.items()]
    cfg = dataclasses.make_dataclass(f"{name.upper()}Config", [("name", str, dataclasses.field(default=name)), *fields],
                                     bases=(base.Config,))
    cfg.__module__ = base.__module__
    cls = type(name.upper(), (base,), {"Config": cfg, "__doc__": doc, "__module__": base.__module__})
    return register(name)(cls)


# The package's __init__ imports every method's file (registering it) before this module is used.
available = OBJECTIVES.available
get_objective = OBJECTIVES.lookup
