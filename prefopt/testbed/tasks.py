"""Testbed tasks: what a task provides, and the registry that finds one by name.

A task is a tiny, fully known world: a prompt distribution with three disjoint prompt sets
(``train``: what methods train on; ``val``: what selection and training curves look at; ``test``:
what reported numbers come from), demonstrations for SFT, and a gold reward that the methods under test never see
directly (except online methods that are *given* it as their reward). Because the gold reward
is known exactly, method comparisons on the testbed are honest.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import random
from typing import Literal, Protocol, Sequence, runtime_checkable

from prefopt.core.errors import UserError

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")

# name -> "module:Class"; imported on first use so that importing the registry stays cheap.
# The toy tasks: the testbed's word-level tokenizer covers their vocabularies, an SFT stage makes π_ref.
_TASK_CLASSES = {
    "reviews": "prefopt.testbed.reviews:ReviewsTask",
    "arith": "prefopt.testbed.arith:ArithTask",
}
TASKS: tuple[str, ...] = tuple(_TASK_CLASSES)
# Tasks for a real checkpoint (``real_checkpoint``): its own tokenizer, and π_ref = the checkpoint.
_REAL_TASK_CLASSES = {
    "smol_arith": "prefopt.testbed.smol_arith:SmolArithTask",
    "smol_arith19": "prefopt.testbed.smol_arith19:SmolArith19Task",
    "smol_arith2d": "prefopt.testbed.smol_arith2d:SmolArith2dTask",
}
REAL_TASKS: tuple[str, ...] = tuple(_REAL_TASK_CLASSES)

# Of every 100 prompt keys (by hash): 10 test, 10 validation, 80 training. Validation and test split
# one held-out 20% between them, so the training set (and every SFT policy and preference pair cached
# from it) does not depend on how the held-out prompts are used.
TEST_PERCENT = 10
VAL_PERCENT = 10


@runtime_checkable
class Task(Protocol):
    """A testbed task.

    ``max_prompt_tokens`` bounds the length, in testbed-tokenizer tokens, of any prompt after
    the chat template (``<|user|> PROMPT <|assistant|>``); ``max_completion_tokens`` bounds any
    demonstration's completion including its ``</s>``. Use them as max prompt length and
    ``max_new_tokens``.
    """

    name: str
    real_checkpoint: bool  # prompts for a real model: no SFT stage, the model's own tokenizer
    max_prompt_tokens: int
    max_completion_tokens: int

    def vocabulary(self) -> list[str]:
        """Every word the task's prompts, demonstrations and rewarded completions use."""
        ...

    def sample_prompts(self, n: int, rng: random.Random, split: Split = "train") -> list[str]:
        """``n`` prompts (user-message text) from ``split``; distinct while ``n`` allows."""
        ...

    def demonstrations(self, n: int, rng: random.Random) -> list[tuple[str, str]]:
        """``n`` (prompt, completion) pairs for SFT, on train prompts only."""
        ...

    def gold_reward(self, prompts: list[str], completions: list[str]) -> list[float]:
        """The true reward of each completion (as decoded text or as normal text)."""
        ...


def get_task(name: str) -> Task:
    """The task registered as ``name`` (one shared instance per name)."""
    if name not in _TASK_CLASSES and name not in _REAL_TASK_CLASSES:
        raise UserError(f"unknown testbed task {name!r}; available: {', '.join(TASKS + REAL_TASKS)}")
    return _load(name)


@functools.cache
def _load(name: str) -> Task:
    module, cls = {**_TASK_CLASSES, **_REAL_TASK_CLASSES}[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def combined_vocabulary(names: Sequence[str] = TASKS) -> list[str]:
    """The sorted union of the named tasks' vocabularies: what ``build_tokenizer`` needs."""
    return sorted({w for name in names for w in get_task(name).vocabulary()})


def split_of(key: str, test_percent: int = TEST_PERCENT, val_percent: int = VAL_PERCENT) -> Split:
    """Stable train/val/test assignment of a prompt key (same on every machine and Python run,
    unlike ``hash``), so validation and test prompts are never trained on."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    if h % 100 < test_percent:
        return "test"
    return "val" if h % 100 < test_percent + val_percent else "train"


def check_split(split: str) -> Split:
    if split not in SPLITS:
        raise UserError(f"unknown prompt set {split!r}; accepted: {', '.join(SPLITS)}")
    return split  # type: ignore[return-value]


class PromptSets:
    """Disjoint train / val / test prompt lists: each prompt goes to the split of its key (split_of); a task
    with few problems holds out larger shares (``test_percent``, ``val_percent`` of the keys)."""

    def __init__(self, test_percent: int = TEST_PERCENT, val_percent: int = VAL_PERCENT):
        self.by_split: dict[Split, list[str]] = {"train": [], "val": [], "test": []}
        self.test_percent, self.val_percent = test_percent, val_percent

    def add(self, key: str, prompt: str) -> None:
        self.by_split[split_of(key, self.test_percent, self.val_percent)].append(prompt)

    def prompts(self, split: Split) -> list[str]:
        return list(self.by_split[check_split(split)])

    def sample(self, n: int, rng: random.Random, split: Split) -> list[str]:
        """``n`` prompts of ``split``, uniformly, distinct while ``n`` allows."""
        pool = self.by_split[check_split(split)]
        return sample_distinct(pool, [1.0] * len(pool), n, rng)


def sample_distinct(items: Sequence, weights: Sequence[float], n: int, rng: random.Random) -> list:
    """``n`` items drawn in proportion to ``weights`` without replacement; when ``n`` exceeds
    the pool, the pool is drawn whole again (so repeats appear only when unavoidable)."""
    out: list = []
    while len(out) < n:
        # Efraimidis–Spirakis: the k largest u ** (1 / w) are a weighted sample without
        # replacement.
        keys = [rng.random() ** (1.0 / w) for w in weights]
        order = sorted(range(len(items)), key=keys.__getitem__, reverse=True)
        out.extend(items[i] for i in order[: n - len(out)])
    return out
