"""What every run reads before it trains: the rows, the tokenizer and the base weights they go with,
and (testbed data) the gold reward and the held-out prompts. One function, :func:`prepare_data`,
for training runs (:mod:`prefopt.run.stages`), ``prefopt-label``, best-of-n and the leaderboard's
best-of-n baseline; :func:`base_policy` loads the policy those weights make.

    data = prepare_data(mcfg, dcfg, "prompt_only")         # typed model.* and data.* sections
    policy = base_policy(mcfg, data, seed=0)
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import datasets
import transformers

from prefopt.core.config import DataConfig, ModelConfig
from prefopt.core.errors import UserError
from prefopt.data.formats import detect_kind, prepare_rows
from prefopt.data.load import load_rows
from prefopt.data.ranked import check_pair_budget, pairing_summary
from prefopt.models import gguf
from prefopt.models.load import load_policy, load_tokenizer
from prefopt.testbed import world as W

# The evaluation's samples are drawn with seed + EVAL_SEED_OFFSET (a prime): a stream of their own,
# the same for every method at one seed, so the leaderboard's best-of-n baseline and a trained run's
# evaluation sample π_SFT's side identically.
EVAL_SEED_OFFSET = 7919


# Pairs from rankings past this many are announced as they are made (tokenizing them takes a while).
MANY_PAIRS = 10_000


def available_memory() -> Optional[int]:
    """Bytes of memory this machine can still give (MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def data_schema(name: str) -> type:
    """data=hf: a user's data (DataConfig); testbed tasks add a ``testbed`` section."""
    return DataConfig if name == "hf" else W.TestbedDataConfig


def quiet_libraries():
    """Keep the console to prefopt's own lines: no weight-loading bars or optional-backend notices."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@dataclass
class RunData:
    """The rows of one data kind, ready for ``tokenize_rows(kind)``, and what goes with them."""

    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    rows: list
    kind: str  # the kind the rows were prepared as (ranked when the objective trains on rankings)
    source: str  # the rows' name in messages: a file, a dataset, or testbed:TASK
    base_path: Optional[str]  # the weights the policy starts from (None: model.arch, a model built from its config)
    gold_fn: Optional[Callable] = None  # testbed data: the gold reward (prompts, completions) -> scores
    task: Any = None  # testbed data: the task (prefopt.testbed.tasks)
    heldout: Optional[dict] = None  # testbed data: split ("val" | "test") -> evaluation prompts
    notes: list = field(default_factory=list)  # start-up lines about the data (e.g. pairs built from rankings)


def prepare_data(mcfg: ModelConfig, dcfg: Union[DataConfig, "W.TestbedDataConfig"], kind: str, *, ranked: bool = False,
                 console=None, place=None) -> RunData:
    """The rows of ``kind`` from the testbed (``dcfg`` a TestbedDataConfig) or a user's file / dataset,
    checked (a bad row is a UserError) before any weights are built, then the tokenizer and the base
    weights: a GGUF file dequantized once, ``model.name_or_path``, or the testbed's SFT policy.
    ``ranked``: the objective takes rankings, so ranked data stays ranked. ``place`` (a Placement):
    under several processes rank 0 builds the caches first."""
    first = place.main_first if place is not None else contextlib.nullcontext
    weights = mcfg.name_or_path
    if gguf.source_file(mcfg) is not None:
        with first():
            weights = gguf.checkpoint_dir(mcfg, console)
    gold_fn = task = heldout = tok = None
    if isinstance(dcfg, W.TestbedDataConfig):
        with first():
            world = W.build_world(dcfg.testbed, kind, console, base_path=weights)
        tok, task, heldout = world.tokenizer, world.task, world.heldout
        rows, source = world.rows_by_kind[kind], f"testbed:{dcfg.testbed.task}"
        if dcfg.num_rows:
            rows = rows[: dcfg.num_rows]
        base_path = weights or (None if mcfg.arch else world.policy_path)
        gold_fn = task.gold_reward
    else:
        if not dcfg.path:
            raise UserError("data=hf needs data.path=FILE_OR_NAME (a .json/.jsonl/.parquet/.csv file or a datasets name)")
        rows, source = load_rows(dcfg)
        base_path = weights
    found = detect_kind(rows, source)
    kind = "ranked" if found == "ranked" and ranked else kind
    notes = []
    if found == "ranked" and kind in ("ranked", "paired"):
        ranked_rows = prepare_rows(rows, "ranked", dcfg, source)
        note = pairing_summary(ranked_rows, dcfg.ranking_to_pairs, as_rankings=kind == "ranked")
        notes.append(note)
        if kind == "paired":
            n_pairs = check_pair_budget(ranked_rows, dcfg.ranking_to_pairs, source, available_memory())
            if console is not None and n_pairs >= MANY_PAIRS:
                # Said now: making and tokenizing this many pairs takes minutes before the start-up lines.
                console.print(f"{note}: making and tokenizing {n_pairs:,} pairs", soft_wrap=True, markup=False)
    rows = prepare_rows(rows, kind, dcfg, source)
    if base_path is None and mcfg.arch is None:
        # model=tiny on a user's data: the testbed's SFT policy and its word-level tokenizer.
        with first():
            base_path = W.sft_policy_path(W.TestbedConfig(), console)
    if tok is None:
        tok = load_tokenizer(mcfg.tokenizer or base_path or W.tokenizer_path(), mcfg.trust_remote_code)
    return RunData(tokenizer=tok, rows=rows, kind=kind, source=source, base_path=base_path, gold_fn=gold_fn, task=task,
                   heldout=heldout, notes=notes)


def base_policy(mcfg: ModelConfig, data: RunData, seed: int = 0, meta: bool = False):
    """The policy before training: ``data.base_path``'s weights (or ``model.arch``'s fresh model), with
    LoRA adapters when model.lora.r > 0, in the run's dtype."""
    return load_policy(mcfg, path=data.base_path, vocab_size=len(data.tokenizer), seed=seed, meta=meta)
