"""Batch sources: what the trainer pulls micro-batches from. :class:`BatchSource` declares the
interface with do-nothing defaults; :class:`OfflineSource` serves a fixed dataset's micro-batches in
an order that depends only on (seed, epoch). The online counterpart, which samples its batches from
the policy, is :class:`prefopt.rollout.source.RolloutSource`."""

from __future__ import annotations

from types import MappingProxyType
from typing import Callable, Mapping

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


class BatchSource:
    """The trainer's side of a batch source. ``step_batches`` is the one method a source must
    define; the rest have defaults for a source that generates nothing and carries no state, so
    the trainer and the run read them unconditionally."""

    samples_generated: int = 0  # completions sampled so far (a cost column of the summary)
    last_gen_time_s: float = 0.0  # generation time inside the last step_batches call (not training time)
    # Metrics of the last step_batches call, logged with the step (an online source's rollout
    # statistics). Read-only here, since a class attribute is shared by every instance; a source
    # assigns its own dict.
    last_metrics: Mapping = MappingProxyType({})

    def step_batches(self, step: int) -> list:
        """The micro-batches of optimizer step ``step`` (0-based) for this process."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """State to checkpoint besides the weights; a source whose batches follow from the step alone has none."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class OfflineSource(BatchSource):
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
