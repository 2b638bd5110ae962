"""Typed configs. Hydra composes YAML from conf/; these dataclasses check it before anything loads.

conf/ is the only home of defaults users see; the dataclass defaults below mirror them so that the
library can also be driven from Python. A wrong type or an unknown key becomes a one-line
:class:`~prefopt.errors.UserError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from prefopt.errors import UserError


@dataclass
class LoraConfig:
    r: int = 0  # 0 disables LoRA
    alpha: int = 16
    dropout: float = 0.0
    target_modules: Any = "all-linear"  # peft's name for every linear layer except the output head


@dataclass
class ModelConfig:
    name: str = "tiny"
    # None: the testbed's tiny policy (built and SFT-trained on first use, cached on disk).
    name_or_path: Optional[str] = None
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
    examples_per_device: int = 32  # micro-batch per forward pass on one device
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
    tensorboard: bool = False
    progress: bool = True
    save_model: bool = True
    cpu: bool = False  # force CPU even when a GPU is visible


@dataclass
class EvalConfig:
    num_prompts: int = 128
    max_new_tokens: int = 32
    temperature: float = 1.0
    samples_per_prompt: int = 1
    prompts_per_batch: int = 128


OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "linear", "constant")


def _fmt(e: OmegaConfBaseException, section: str) -> str:
    key = getattr(e, "full_key", None) or ""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    key = f"{section}.{key}" if key and not key.startswith(section) else (key or section)
    return f"config key '{key}': {msg}"


def typed(schema: type, node: Any, section: str):
    """Merge a composed config section onto its dataclass schema; return the dataclass instance.

    Unknown keys and values of the wrong type raise UserError naming ``section.key``."""
    try:
        base = OmegaConf.structured(schema)
        merged = OmegaConf.merge(base, node if node is not None else {})
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise UserError(_fmt(e, section)) from None


def check_trainer(t: TrainerConfig, world_size: int = 1) -> int:
    """Validate the batch split; return micro-batches per device per optimizer step."""
    if t.optimizer not in OPTIMIZERS:
        raise UserError(f"trainer.optimizer='{t.optimizer}' is not known; accepted: {', '.join(OPTIMIZERS)}")
    if t.lr_schedule not in SCHEDULES:
        raise UserError(f"trainer.lr_schedule='{t.lr_schedule}' is not known; accepted: {', '.join(SCHEDULES)}")
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
    return t.examples_per_step // per_pass


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)
