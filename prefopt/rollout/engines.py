"""The built-in rollout engines, registered by importing their files, and ``rollout.engine`` resolved
to one of them (the registry and the base class: :mod:`prefopt.rollout.engine`)."""

from __future__ import annotations

from prefopt.core.config import ModelConfig
from prefopt.core.errors import UserError
from prefopt.rollout import llamacpp, sampler  # noqa: F401 (registers the torch and llamacpp engines)
from prefopt.rollout.engine import ENGINES, Engine, RolloutConfig


def check(cfg: RolloutConfig, model_cfg: ModelConfig, world_size: int = 1) -> str:
    """The engine name ``cfg`` resolves to (``auto`` chosen here); one line where it cannot run.
    Loads nothing: run with the other config checks."""
    if cfg.base_type not in ("auto", "f16", "bf16", "f32"):
        raise UserError(f"rollout.base_type={cfg.base_type!r}; accepted: auto, f16, bf16, f32")
    if cfg.threads is not None and cfg.threads <= 0:
        raise UserError(f"rollout.threads={cfg.threads}; accepted: a positive integer, or null")
    if cfg.engine == "auto":
        for name in ("llamacpp", "torch"):
            kind = ENGINES[name]
            if kind.unavailable() is None and kind.unsupported(model_cfg, world_size) is None:
                return name
    kind = ENGINES.lookup(cfg.engine)
    why = kind.unavailable() or kind.unsupported(model_cfg, world_size)
    if why:
        raise UserError(f"rollout.engine={cfg.engine}: {why}")
    return cfg.engine


def build_engine(name: str, cfg: RolloutConfig, *, tokenizer, policy, model_cfg: ModelConfig, console=None) -> Engine:
    """The engine ``name`` (as :func:`check` resolved it) for ``policy``."""
    return ENGINES.lookup(name).build(cfg, tokenizer=tokenizer, policy=policy, model_cfg=model_cfg, console=console)
