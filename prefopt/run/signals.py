"""Ctrl-C and SIGTERM end a run in one line that says what was saved and how to continue.

:class:`RunContext` is what the signal handler and the run's stages share: the trainer once it
exists, the phase the run is in, and whether model/ is written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from prefopt.core import checkpoint
from prefopt.core.errors import Interrupted

if TYPE_CHECKING:
    from prefopt.core.trainer import Trainer


@dataclass
class RunContext:
    trainer: Optional["Trainer"] = None  # set when the training loop starts
    phase: str = "training"  # what the run does after the loop: saving the model, evaluation
    model_saved: bool = False


@contextlib.contextmanager
def stop_on_signals(ctx: RunContext):
    """SIGINT and SIGTERM end a run in one line, never a traceback. Inside the training loop the first
    signal lets the step finish and be checkpointed; a second one, or one outside the loop, stops at
    once (:class:`Interrupted`). Handlers can only be set from the main thread; elsewhere this does
    nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        trainer = ctx.trainer
        if trainer is not None and trainer.request_stop(signum):
            return
        raise Interrupted(signum, step=trainer.state.step if trainer is not None else None)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def interrupted_line(e: Interrupted, out_dir: str, ctx: RunContext) -> str:
    """What was saved and how to go on, in one line."""
    trainer = ctx.trainer
    where = "before training started" if trainer is None else (
        f"after step {e.step}/{trainer.total_steps}" if e.checkpoint else
        f"at step {trainer.state.step}/{trainer.total_steps} ({ctx.phase})")
    saved = []
    if ctx.model_saved:
        saved.append(f"the model in {os.path.join(out_dir, 'model')}")
    ckpt = e.checkpoint or (checkpoint.newest(out_dir) if trainer is not None else None)
    if ckpt:
        saved.append(f"checkpoint {ckpt}")
    how = (f"; continue with trainer.resume=auto hydra.run.dir={out_dir}" if ckpt and not ctx.model_saved else "")
    return f"interrupted by {e.signame} {where}; saved: {', '.join(saved) or 'nothing'}{how}"
