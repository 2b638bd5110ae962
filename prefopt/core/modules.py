"""Generic helpers over torch modules that the trainer, the checkpoint store and every inference
pass share: switching dropout off without ``eval()``, and telling a sharded (FSDP2) model apart."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def dropout_disable(model) -> list:
    """Switch off the model's active dropout layers; returns them for :func:`dropout_restore`.

    Why not ``model.eval()``: bitsandbytes repacks 4-bit CPU weights the first time a Linear4bit
    runs in eval mode, and its repacked path adds the bias in place, which breaks autograd for
    every later training step. Decoder LMs have no other train/eval-dependent layers."""
    flipped = [m for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.training]
    for m in flipped:
        m.training = False
    return flipped


def dropout_restore(flipped: list) -> None:
    for m in flipped:
        m.training = True


@contextmanager
def dropout_off(model):
    """Inference behaviour for the duration of a block (see :func:`dropout_disable`)."""
    flipped = dropout_disable(model)
    try:
        yield model
    finally:
        dropout_restore(flipped)


def is_sharded(model) -> bool:
    """Whether any part of ``model`` is sharded by FSDP2 (``fully_shard``)."""
    if model is None:
        return False
    # Imported here: torch.distributed.fsdp is slow to import and most runs never shard.
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())
