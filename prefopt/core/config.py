"""Typed configs. Hydra composes YAML from conf/; these dataclasses check it before anything loads.

conf/ is the only home of defaults users see; the dataclass defaults below mirror them so that the
library can also be driven from Python. A wrong type or an unknown key becomes a one-line
:class:`~prefopt.core.errors.UserError` naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from prefopt.core.errors import UserError


@dataclass
class LoraConfig:
    r: int = 0  # 0 disables LoRA
    alpha: int = 16
    dropout: float = 0.0
    target_modules: Any = "all-linear"  # peft's name for every linear layer except the output head


@dataclass
class ModelConfig:
    name: str = "tiny"
    # None: the testbed's tiny policy (built and SFT-trained on first use, cached on disk). A path
    # ending in .gguf is a llama.cpp file (prefopt.models.gguf).
    name_or_path: Optional[str] = None
    gguf_file: Optional[str] = None  # a .gguf file inside name_or_path (a folder) or inside gguf_package
    gguf_package: Optional[str] = None  # an installed package whose folder holds gguf_file (never imported)
    # Build a randomly initialized model of a family from an architecture config instead of loading
    # weights (tests and benchmarks: no hub access). Keys are passed to AutoConfig.for_model.
    arch: Optional[dict] = None
    tokenizer: Optional[str] = None  # defaults to name_or_path; the testbed tokenizer when arch is set
    dtype: str = "float32"
    trust_remote_code: bool = False
    load_in_4bit: bool = False
    bnb_4bit_compute_dtype: str = "float32"
    attn_implementation: Optional[str] = "sdpa"
    gradient_checkpointing: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class TrainerConfig:
    max_steps: int = 200  # optimizer steps; <= 0 means run `epochs` passes over the data
    epochs: int = 1
    # Batch sizes in the data kind's unit: pairs for paired data, sequences otherwise.
    examples_per_step: int = 32  # global batch per optimizer step, all processes together
    # Micro-batch per forward pass on one device; None: examples_per_step / processes (no accumulation).
    examples_per_device: Optional[int] = None
    optimizer: str = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    lr_schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0  # <= 0 disables clipping
    log_every_steps: int = 10
    eval_every_steps: int = 0  # periodic evaluation; 0: only at the end
    eval_at_end: bool = True
    save_every_steps: int = 0  # checkpoints; 0: none mid-run
    keep_checkpoints: int = 2
    resume: Optional[str] = None  # "auto" (newest checkpoint in the run dir) or a checkpoint path
    # A resume whose config differs from the checkpoint's (another algo, lr, data...) is refused
    # unless this is set: the summary would otherwise describe a run that never happened.
    resume_allow_config_change: bool = False
    tensorboard: bool = False
    progress: bool = True
    save_model: bool = True
    cpu: bool = False  # force CPU even when a GPU is visible
    # How the processes of a run share the work (prefopt.distributed.placement): auto | none | ddp | fsdp2.
    strategy: str = "auto"


@dataclass
class DataConfig:
    """The ``data`` config group. Typed so that OmegaConf.structured rejects an unknown key or a
    wrong type at start-up; value ranges are checked by prefopt.data.load.check_config."""

    name: str = "hf"  # "hf" for a user's data; testbed names are handled elsewhere
    path: Optional[str] = None  # local json/jsonl/parquet/csv file, a directory, or a datasets name
    split: str = "train"
    eval_split: Optional[str] = None
    eval_fraction: float = 0.0  # hold out this fraction (seeded) when no eval_split
    max_length: int = 512  # prompt + completion tokens
    max_prompt_length: int = 256  # a longer prompt is a user error
    truncation: str = "truncate"  # completions that overflow max_length: truncate | drop | error
    convert: Optional[str] = None  # explicit conversion, e.g. "paired_to_unpaired"
    num_rows: Optional[int] = None  # use the first N rows of each split loaded
    # Ranked data for a method that trains on pairs: all | best_vs_rest | adjacent (prefopt.data.ranked).
    ranking_to_pairs: str = "all"


@dataclass
class EvalConfig:
    # The testbed's held-out prompt sets: ``split`` is where the summary's eval block comes from;
    # ``periodic_split`` is what the evaluations every trainer.eval_every_steps (the training curve)
    # and a second evaluation at the end use, so that a curve or a selection never reads test prompts.
    split: str = "test"
    periodic_split: str = "val"
    # Also evaluate the test prompts at each periodic evaluation (logged as eval/test/...): the test number of
    # a step chosen on the validation curve. Never read by a selection.
    periodic_test: bool = False
    num_prompts: int = 128
    max_new_tokens: int = 32
    temperature: float = 1.0
    samples_per_prompt: int = 1
    prompts_per_batch: int = 128
    # Also one greedy (top-1) completion per prompt, of π and of π_ref: gold_reward_greedy(_ref), a second view
    # of the same prompts without sampling noise.
    greedy: bool = False


# model.dtype names; prefopt.models.load maps them to torch dtypes.
DTYPES = ("float32", "bfloat16", "float16", "auto")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "linear", "constant")


def _fmt(e: OmegaConfBaseException, section: str) -> str:
    key = getattr(e, "full_key", None) or ""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    key = f"{section}.{key}" if key and not key.startswith(section) else (key or section)
    return f"config key '{key}': {msg}"


def _schema_at(schema: type, path: list):
    """The dataclass reached from ``schema`` through the field names in ``path`` (None if not one)."""
    for name in path:
        f = {f.name: f for f in dataclasses.fields(schema)}.get(name) if dataclasses.is_dataclass(schema) else None
        if f is None:
            return None
        schema = f.default_factory().__class__ if f.default_factory is not dataclasses.MISSING else f.type
        if isinstance(schema, str):
            return None
    return schema if dataclasses.is_dataclass(schema) else None


def unknown_key_message(key: str, valid) -> str:
    """The one line for a key that is not in its section (Hydra's own hint, ``+key``, would fail too)."""
    section, _, name = key.rpartition(".")
    where = f"'{section}'" if section else "the top level"
    return f"unknown config key '{key}': {where} has no key '{name}'; valid keys of {where}: {', '.join(sorted(valid))}"


def typed(schema: type, node: Any, section: str):
    """Merge a composed config section onto its dataclass schema; return the dataclass instance.

    Unknown keys and values of the wrong type raise UserError naming ``section.key``."""
    try:
        base = OmegaConf.structured(schema)
        merged = OmegaConf.merge(base, node if node is not None else {})
        return OmegaConf.to_object(merged)
    except ConfigKeyError as e:
        key = getattr(e, "full_key", None) or ""
        parts = [p for p in key.split(".") if p]
        if parts and parts[0] == section:
            parts = parts[1:]
        sub = _schema_at(schema, parts[:-1])
        if sub is None or not parts:
            raise UserError(_fmt(e, section)) from None
        full = ".".join([section, *parts])
        raise UserError(unknown_key_message(full, [f.name for f in dataclasses.fields(sub)])) from None
    except OmegaConfBaseException as e:
        raise UserError(_fmt(e, section)) from None


def check_trainer(t: TrainerConfig, world_size: int = 1) -> int:
    """Validate the batch split; return micro-batches per device per optimizer step."""
    if t.optimizer not in OPTIMIZERS:
        raise UserError(f"trainer.optimizer='{t.optimizer}' is not known; accepted: {', '.join(OPTIMIZERS)}")
    if t.lr_schedule not in SCHEDULES:
        raise UserError(f"trainer.lr_schedule='{t.lr_schedule}' is not known; accepted: {', '.join(SCHEDULES)}")
    if t.examples_per_device is None:
        # As TRL derives it: the whole step in one micro-batch per process. Set here, printed at start-up.
        if t.examples_per_step <= 0 or t.examples_per_step % world_size:
            raise UserError(f"trainer.examples_per_step={t.examples_per_step} does not split over {world_size} "
                            f"process(es); accepted: a positive multiple of {world_size}, or set trainer.examples_per_device")
        t.examples_per_device = t.examples_per_step // world_size
    if t.examples_per_step <= 0 or t.examples_per_device <= 0:
        raise UserError("trainer.examples_per_step and trainer.examples_per_device must be positive")
    per_pass = t.examples_per_device * world_size
    if t.examples_per_step % per_pass:
        raise UserError(
            f"trainer.examples_per_step={t.examples_per_step} is not a multiple of "
            f"trainer.examples_per_device={t.examples_per_device} x {world_size} process(es); "
            f"accepted: a multiple of {per_pass}"
        )
    if t.max_steps <= 0 and t.epochs <= 0:
        raise UserError("set trainer.max_steps > 0 or trainer.epochs > 0")
    _at_least(t, "trainer", lr=(0.0, False), warmup_steps=(0, True), log_every_steps=(1, True),
              eval_every_steps=(0, True), save_every_steps=(0, True), keep_checkpoints=(1, True),
              weight_decay=(0.0, True), adam_eps=(0.0, False))
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        raise UserError(f"trainer.min_lr_ratio={t.min_lr_ratio}; accepted: a ratio in [0, 1]")
    if len(t.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in t.adam_betas):
        raise UserError(f"trainer.adam_betas={list(t.adam_betas)}; accepted: two numbers in [0, 1), e.g. [0.9, 0.999]")
    if t.resume is not None and t.resume != "auto" and not t.resume.strip():
        raise UserError("trainer.resume is empty; accepted: auto, a checkpoint directory, or null")
    return t.examples_per_step // per_pass


def _at_least(c, section: str, **bounds):
    """Raise UserError for the first field below its bound: name=(bound, inclusive)."""
    for name, (lo, inclusive) in bounds.items():
        v = getattr(c, name)
        if v < lo or (v == lo and not inclusive):
            raise UserError(f"{section}.{name}={v}; accepted: {'>=' if inclusive else '>'} {lo}")


def check_eval(e: EvalConfig) -> None:
    """The evaluation runs after training: a bad value found only then would cost the run."""
    _at_least(e, "eval", num_prompts=(1, True), max_new_tokens=(1, True), samples_per_prompt=(1, True),
              prompts_per_batch=(1, True), temperature=(0.0, False))
    for key in ("split", "periodic_split"):
        if getattr(e, key) not in ("val", "test"):
            raise UserError(f"eval.{key}={getattr(e, key)!r}; accepted: val, test (the testbed's held-out prompt sets)")


def check_model(m: ModelConfig) -> None:
    """Value checks for the model section that would otherwise surface (or be ignored) at load time."""
    for key in ("dtype", "bnb_4bit_compute_dtype"):
        v = getattr(m, key)
        if v not in DTYPES:
            raise UserError(f"model.{key}='{v}' is not known; accepted: {', '.join(DTYPES)}")
    if m.lora.r < 0:
        raise UserError(f"model.lora.r={m.lora.r}; accepted: 0 (no LoRA: the full model trains) or a positive rank")
    if m.lora.r > 0:
        if m.lora.alpha <= 0:
            raise UserError(f"model.lora.alpha={m.lora.alpha}; accepted: > 0")
        if not 0.0 <= m.lora.dropout < 1.0:
            raise UserError(f"model.lora.dropout={m.lora.dropout}; accepted: a probability in [0, 1)")


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
