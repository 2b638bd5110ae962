"""Rollout engines: what samples an online method's completions (``rollout.engine``).

An engine is one class, in a file of its own, registered under a name:

    torch     prefopt's own batched decode loop over the live policy (:mod:`prefopt.rollout.sampler`)
    llamacpp  llama.cpp: the base as a GGUF written from the trainer's weights, the current LoRA
              adapter written as a GGUF LoRA and swapped in before every rollout
              (:mod:`prefopt.rollout.llamacpp`; the extra ``pip install -e ".[llamacpp]"``)
    auto      llama.cpp where it is installed and serves the model, else torch

Every engine implements the :class:`~prefopt.rollout.sampler.Sampler` protocol (``sample`` with the
sampled tokens' log-probs, ``generate``, ``sync_weights``). The trainer recomputes the log-probs that
enter a loss; what an engine's own log-probs differ by is the importance-sampling correction's to
absorb (``algo.rollout_is``). Only rollouts use the engine: evaluation always samples with the torch
engine, so a run's held-out numbers do not depend on which engine trained it.

:mod:`prefopt.rollout.engines` imports the built-in kinds and resolves ``rollout.engine``. A kind
subclasses :class:`Engine` and may override its hooks: :meth:`Engine.unavailable` (why it
cannot run here: a missing extra; None when it can), :meth:`Engine.unsupported` (why it cannot serve
this model: an architecture, full fine-tuning, 4-bit; None when it can), :meth:`Engine.build`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from prefopt.core.config import ModelConfig
from prefopt.core.registry import Registry


@dataclass
class RolloutConfig:
    """The ``rollout`` section of conf/train.yaml."""

    engine: str = "torch"  # torch | llamacpp | auto
    threads: Optional[int] = None  # llama.cpp decode threads; None: every core the process may use
    # llama.cpp's copy of the trainer's base weights: auto (bf16 when the trainer's base is bf16, so the copy
    # is exact, else f16) | f16 | bf16 | f32
    base_type: str = "auto"
    # A GGUF served instead of the trainer's weights (a quantized Q4/Q8 file, say): faster decoding,
    # more mismatch; the measured mismatch is printed at start-up.
    base_file: Optional[str] = None


class Engine:
    """A registered rollout engine (see the module docstring); defaults for every hook."""

    name: ClassVar[str] = ""
    # True where the sampled tokens' log-probs are the trainer's own up to float rounding (the online
    # pipeline then takes them as π_old); an engine with its own copy of the weights returns μ.
    exact_logprobs: ClassVar[bool] = False

    @classmethod
    def unavailable(cls) -> Optional[str]:
        """Why this engine cannot run on this machine (one line with the fix), or None."""
        return None

    @classmethod
    def unsupported(cls, model_cfg: ModelConfig, world_size: int) -> Optional[str]:
        """Why this engine cannot serve this model (one line naming what is accepted), or None."""
        return None

    @classmethod
    def build(cls, cfg: RolloutConfig, *, tokenizer, policy, model_cfg: ModelConfig, console=None) -> "Engine":
        raise NotImplementedError

    def sync_weights(self, model) -> None:
        """Bring the engine's copy of the weights up to ``model`` (called before every rollout)."""

    def describe(self) -> str:
        return self.name


ENGINES = Registry("rollout engine", base=Engine, key="rollout.engine",
                   unknown="rollout.engine='{name}' is not known; accepted: auto, {names}")
