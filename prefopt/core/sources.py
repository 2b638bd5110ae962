"""Batch sources for offline methods: a fixed dataset's micro-batches in an order that depends only
on (seed, epoch). The online counterpart, which samples its batches from the policy, is
:class:`prefopt.rollout.source.RolloutSource`; the trainer asks either for ``step_batches(step)``."""

from __future__ import annotations

from typing import Callable

import torch

from prefopt.core.errors import UserError


class EpochOrder:
    """The example order of each epoch: a permutation of ``range(n)`` seeded by (seed, epoch), the
    same on every process (each then takes its strided share). Keeps the current epoch's only."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._cache: dict = {}

    def __call__(self, epoch: int) -> list:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._cache[epoch]


class OfflineSource:
    """Micro-batches for a fixed dataset. The order depends only on (seed, epoch), and step k reads
    examples [k·G, (k+1)·G) of the concatenated epoch permutations, so a resumed run sees exactly
    the batches an uninterrupted run would. Each process takes a strided share of the step."""

    def __init__(self, examples, collate: Callable, examples_per_step: int, examples_per_device: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.examples = examples
        self.collate = collate
        self.G = examples_per_step
        self.micro = examples_per_device
        self.seed = seed
        self.rank, self.world = rank, world_size
        self._order = EpochOrder(len(examples), seed)
        if len(examples) < self.G:
            raise UserError(
                f"the dataset has {len(examples)} examples, fewer than trainer.examples_per_step={self.G}; "
                "accepted: a smaller examples_per_step or more data"
            )

    @property
    def steps_per_epoch(self) -> int:
        return len(self.examples) // self.G

    def step_batches(self, step: int) -> list:
        epoch, k = divmod(step, self.steps_per_epoch)
        idx = self._order(epoch)[k * self.G : (k + 1) * self.G]
        mine = idx[self.rank :: self.world]
        return [self.collate([self.examples[i] for i in mine[j : j + self.micro]]) for j in range(0, len(mine), self.micro)]
