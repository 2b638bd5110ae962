"""The one training loop, shared by every objective.

The trainer knows nothing about methods. It gets micro-batches from a batch source, asks the
objective for a loss summed over its units (pairs, sequences or tokens), divides by the units of
the whole optimizer step (all micro-batches, all processes), backpropagates, sums gradients across
processes, clips, steps, logs, evaluates and checkpoints.

Why sum-then-divide: a token-mean loss averaged per micro-batch changes with the accumulation
split; dividing the step's summed loss by the step's unit count does not.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from prefopt.config import TrainerConfig
from prefopt.data import EpochOrder
from prefopt.logprobs import Scorer


class TrainingDiverged(RuntimeError):
    pass


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_mem_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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
            from prefopt.errors import UserError

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


def _to(batch, device):
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _real_tokens(batch) -> int:
    return int(sum(v.sum() for k, v in batch.items() if k.endswith("attention_mask") and isinstance(v, torch.Tensor)))


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    train_time_s: float = 0.0
    gen_time_s: float = 0.0
    history: list = field(default_factory=list)  # last logged metrics (for the summary)


class Trainer:
    def __init__(self, *, objective, policy, reference, source, cfg: TrainerConfig, out_dir: str,
                 total_steps: int, evaluator: Optional[Callable] = None, device=None, temperature: float = 1.0,
                 console=None):
        self.objective = objective
        self.policy = policy
        self.reference = reference
        self.source = source
        self.cfg = cfg
        self.out_dir = out_dir
        self.total_steps = total_steps
        self.evaluator = evaluator
        self.device = device or torch.device("cpu")
        self.scorer = Scorer(policy, reference, temperature=temperature)
        self.console = console
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        self.is_main = self.rank == 0
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler()
        self.state = TrainState()
        self.ckpt_dir = os.path.join(out_dir, "checkpoints")
        self.metrics_path = os.path.join(out_dir, "metrics.jsonl")
        self.tb = None

    # ---- setup -------------------------------------------------------------------------------
    def _make_optimizer(self):
        c = self.cfg
        if c.optimizer == "adamw":
            return torch.optim.AdamW(self.params, lr=c.lr, betas=tuple(c.adam_betas), eps=c.adam_eps, weight_decay=c.weight_decay)
        if c.optimizer == "adam":
            return torch.optim.Adam(self.params, lr=c.lr, betas=tuple(c.adam_betas), eps=c.adam_eps, weight_decay=c.weight_decay)
        return torch.optim.SGD(self.params, lr=c.lr, weight_decay=c.weight_decay)

    def _make_scheduler(self):
        from transformers import get_scheduler

        c = self.cfg
        name = {"cosine": "cosine_with_min_lr", "linear": "linear", "constant": "constant_with_warmup"}[c.lr_schedule]
        kw = {"min_lr_rate": c.min_lr_ratio} if c.lr_schedule == "cosine" else None
        return get_scheduler(name, self.optimizer, num_warmup_steps=c.warmup_steps,
                             num_training_steps=max(1, self.total_steps), scheduler_specific_kwargs=kw)

    # ---- checkpoints -------------------------------------------------------------------------
    def _trainable_state(self):
        names = {id(p): n for n, p in self.policy.named_parameters()}
        return {names[id(p)]: p.detach().cpu().clone() for p in self.params}

    def _stateful_parts(self) -> dict:
        # Parts that carry state from step to step besides the weights (an online objective's
        # adaptive KL coefficient, the rollout source's bookkeeping): checkpointed through their own
        # state_dict() / load_state_dict(), whatever method is running. Loaded in this order.
        return {name: part for name, part in (("objective", self.objective), ("source", self.source))
                if callable(getattr(part, "state_dict", None)) and callable(getattr(part, "load_state_dict", None))}

    def save_checkpoint(self):
        """Write checkpoints/step_N atomically: build it under a temporary name, then rename."""
        if not self.is_main:
            return
        step = self.state.step
        final = os.path.join(self.ckpt_dir, f"step_{step:07d}")
        tmp = os.path.join(self.ckpt_dir, f".tmp-step_{step:07d}-{os.getpid()}")
        os.makedirs(tmp, exist_ok=True)
        torch.save(self._trainable_state(), os.path.join(tmp, "trainable.pt"))
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "rng": {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()},
                    "parts": {name: part.state_dict() for name, part in self._stateful_parts().items()}},
                   os.path.join(tmp, "optim.pt"))
        with open(os.path.join(tmp, "state.json"), "w") as f:
            json.dump(self.state.__dict__, f)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        self._prune()

    def _prune(self):
        done = sorted(d for d in os.listdir(self.ckpt_dir) if d.startswith("step_"))
        for d in done[: max(0, len(done) - max(1, self.cfg.keep_checkpoints))]:
            shutil.rmtree(os.path.join(self.ckpt_dir, d), ignore_errors=True)

    @staticmethod
    def newest_checkpoint(out_dir) -> Optional[str]:
        d = os.path.join(out_dir, "checkpoints")
        if not os.path.isdir(d):
            return None
        done = sorted(x for x in os.listdir(d) if x.startswith("step_") and os.path.exists(os.path.join(d, x, "state.json")))
        return os.path.join(d, done[-1]) if done else None

    def load_checkpoint(self, path):
        trainable = torch.load(os.path.join(path, "trainable.pt"), map_location="cpu")
        named = dict(self.policy.named_parameters())
        with torch.no_grad():
            for n, v in trainable.items():
                named[n].copy_(v.to(named[n].device))
        opt = torch.load(os.path.join(path, "optim.pt"), map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        torch.set_rng_state(opt["rng"]["torch"])
        random.setstate(opt["rng"]["python"])
        np.random.set_state(opt["rng"]["numpy"])
        saved = opt.get("parts", {})
        for name, part in self._stateful_parts().items():
            if name in saved:
                part.load_state_dict(saved[name])
        with open(os.path.join(path, "state.json")) as f:
            self.state = TrainState(**json.load(f))
        # Metrics logged after this checkpoint belong to the interrupted attempt: drop them so the
        # resumed run's metrics.jsonl equals an uninterrupted run's.
        if self.is_main and os.path.exists(self.metrics_path):
            with open(self.metrics_path) as f:
                keep = [l for l in f if l.strip() and json.loads(l).get("step", 0) <= self.state.step]
            with open(self.metrics_path, "w") as f:
                f.writelines(keep)

    # ---- logging -----------------------------------------------------------------------------
    def log(self, row: dict):
        if not self.is_main:
            return
        os.makedirs(self.out_dir, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.cfg.tensorboard:
            if self.tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(self.out_dir, "tensorboard"))
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, row["step"])

    # ---- the loop ----------------------------------------------------------------------------
    def _all_sum(self, x: float) -> float:
        if not self.distributed:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    def train_step(self) -> dict:
        """One optimizer step over the step's micro-batches."""
        t0 = time.perf_counter()
        self.policy.train()
        micro = [_to(b, self.device) for b in self.source.step_batches(self.state.step)]
        gen_s = getattr(self.source, "last_gen_time_s", 0.0)
        units_total = self._all_sum(float(sum(self.objective.units(b) for b in micro)))
        if units_total <= 0:
            units_total = 1.0  # an all-empty step contributes no gradient rather than NaN
        loss_total, metric_sums, tokens = 0.0, {}, 0
        for b in micro:
            loss_sum, metrics = self.objective.loss(b, self.scorer)
            loss = loss_sum / units_total
            if not torch.isfinite(loss):
                last = self.newest_checkpoint(self.out_dir)
                raise TrainingDiverged(
                    f"loss is {loss.item()} at step {self.state.step + 1}; stopped before the update. "
                    f"Last good checkpoint: {last or 'none (set trainer.save_every_steps)'}. Try a lower trainer.lr."
                )
            loss.backward()
            loss_total += float(loss.detach())
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
            tokens += _real_tokens(b)
        if self.distributed:
            # Each process's loss is already divided by the global unit count: summing gradients
            # gives the gradient of the global mean.
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
        grad_norm = None
        if self.cfg.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        tokens = int(self._all_sum(tokens))
        loss_total = self._all_sum(loss_total)
        dt = time.perf_counter() - t0
        self.state.tokens += tokens
        self.state.train_time_s += dt - gen_s
        self.state.gen_time_s += gen_s
        row = {"step": self.state.step, "loss": loss_total, "lr": lr, "tokens": tokens, "step_time_s": dt}
        row.update(getattr(self.source, "last_metrics", None) or {})  # e.g. an online source's rollout statistics
        if grad_norm is not None:
            row["grad_norm"] = grad_norm
        for k, v in metric_sums.items():
            row[k] = self._all_sum(v) / units_total
        return row

    def fit(self):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        os.makedirs(self.out_dir, exist_ok=True)
        show = self.is_main and self.cfg.progress
        progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                            console=self.console, disable=not show, transient=False)
        with progress:
            task = progress.add_task("train", total=self.total_steps, completed=self.state.step, loss=float("nan"), tps=0.0)
            while self.state.step < self.total_steps:
                row = self.train_step()
                tps = row["tokens"] / max(row["step_time_s"], 1e-9)
                progress.update(task, completed=self.state.step, loss=row["loss"], tps=tps)
                s = self.state.step
                if s % max(1, self.cfg.log_every_steps) == 0 or s == self.total_steps or s == 1:
                    row["tokens_per_s"] = tps
                    self.log(row)
                    self.state.history = [row]
                if self.evaluator and self.cfg.eval_every_steps > 0 and s % self.cfg.eval_every_steps == 0 and s < self.total_steps:
                    ev = self.evaluate()
                    if ev is not None:
                        self.log({"step": s, **{f"eval/{k}": v for k, v in ev.items() if isinstance(v, (int, float))}})
                if self.cfg.save_every_steps > 0 and s % self.cfg.save_every_steps == 0:
                    self.save_checkpoint()
                    if self.distributed:
                        dist.barrier()
        if self.tb is not None:
            self.tb.close()

    def evaluate(self):
        if not self.is_main or self.evaluator is None:
            return None
        from prefopt.models import dropout_off

        with torch.no_grad(), dropout_off(self.policy):
            out = self.evaluator(self.policy)
        return out
