"""What the trainer and the checkpoint store need from a placement, declared here so that the core
depends on nothing above it. The real placements (none / ddp / fsdp2) are
:class:`prefopt.distributed.placement.Placement`, which the run builds and hands to the trainer;
:class:`OneProcess` is the trivial one, used when none is given (tests, the testbed's SFT, benchmarks).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Protocol

import torch


class Processes(Protocol):
    """The processes of a run and how a training forward / backward runs across them."""

    strategy: str  # none | ddp | fsdp2
    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool: ...

    @property
    def distributed(self) -> bool:
        """Whether a process group with more than one process is running."""

    @property
    def grad_scale(self) -> float:
        """Factor on the loss before backward (the engine averages gradients; the trainer wants their sum)."""

    def barrier(self) -> None: ...

    def all_sum(self, x: float) -> float: ...

    def all_max(self, x: float) -> float: ...

    def broadcast_object(self, obj: Any) -> Any: ...

    def call(self, model, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` run as ``model``'s forward, so the engine syncs its gradients."""

    def accumulate(self, model, sync: bool) -> ContextManager:
        """Around one micro-batch's forward and backward; ``sync`` on the step's last one."""

    def gathered(self, *models) -> ContextManager:
        """Whole weights of ``models`` (default: every model placed) for the block."""


class OneProcess:
    """One process, whole models on ``device``: every collective is the identity."""

    strategy = "none"
    rank = 0
    world = 1
    is_main = True
    distributed = False
    grad_scale = 1.0

    def __init__(self, device: torch.device | None = None):
        self.device = device or torch.device("cpu")

    def barrier(self) -> None:
        pass

    def all_sum(self, x: float) -> float:
        return x

    def all_max(self, x: float) -> float:
        return x

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    def call(self, model, fn: Callable, *args, **kwargs):
        return fn(*args, **kwargs)

    def accumulate(self, model, sync: bool) -> ContextManager:
        return contextlib.nullcontext()

    def gathered(self, *models) -> ContextManager:
        return contextlib.nullcontext()
