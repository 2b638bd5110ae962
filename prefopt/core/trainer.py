"""The one training loop, shared by every objective.

The trainer knows nothing about methods. It gets micro-batches from a batch source, asks the
objective for a loss summed over its units (pairs, sequences or tokens), divides by the units of
the whole optimizer step (all micro-batches, all processes), backpropagates, clips, steps, logs,
evaluates and checkpoints. How the processes share gradients and weights (none / DDP / FSDP2) is
the placement's business (:mod:`prefopt.distributed.placement`, seen here through
:class:`~prefopt.core.processes.Processes`): the loss runs through ``placement.call`` as the policy's
forward, so the engine's own gradient reduction (bucketed, overlapped) does the sync. What the
objective reads of the models (log-probs, a reference, values) comes through the ``scorer`` the
caller builds (:class:`prefopt.models.logprobs.Scorer`); the trainer only hands it to the loss.

Why sum-then-divide: a token-mean loss averaged per micro-batch changes with the accumulation
split; dividing the step's summed loss by the step's unit count does not.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from prefopt.core import checkpoint
from prefopt.core.checkpoint import CheckpointStore
from prefopt.core.config import TrainerConfig
from prefopt.core.errors import Interrupted, RunStopped, TrainingDiverged
from prefopt.core.modules import dropout_off
from prefopt.core.processes import OneProcess, Processes
from prefopt.core.records import finite_or_none
from prefopt.core.sources import BatchSource


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
    def __init__(self, *, objective, policy, source: BatchSource, scorer, cfg: TrainerConfig, out_dir: str,
                 total_steps: int, evaluator: Optional[Callable] = None, device=None, console=None,
                 run_config: Optional[dict] = None, placement: Optional[Processes] = None):
        self.objective = objective
        self.policy = policy
        self.source = source
        self.scorer = scorer  # passed to objective.loss as is
        self.cfg = cfg
        self.out_dir = out_dir
        self.total_steps = total_steps
        self.evaluator = evaluator
        self.place = placement or OneProcess(device)
        self.device = device or self.place.device
        self.console = console
        self.distributed = self.place.distributed
        self.rank, self.world = self.place.rank, self.place.world
        self.is_main = self.place.is_main
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler()
        self.state = TrainState()
        self.metrics_path = os.path.join(out_dir, "metrics.jsonl")
        self.tb = None
        self.store = CheckpointStore(out_dir, self.place, policy=policy, params=self.params, optimizer=self.optimizer,
                                     scheduler=self.scheduler, parts=self._stateful_parts(), keep=cfg.keep_checkpoints,
                                     run_config=run_config)
        # Under fsdp2 the checkpoints are sharded (torch.distributed.checkpoint): each rank writes its shards.
        self.sharded = self.store.sharded
        self._stop_signal: Optional[int] = None  # a SIGINT / SIGTERM that asked to stop after this step
        self._in_loop = False

    # ---- setup -------------------------------------------------------------------------------
    def _make_optimizer(self):
        c = self.cfg
        if c.optimizer == "adamw":
            return torch.optim.AdamW(self.params, lr=c.lr, betas=tuple(c.adam_betas), eps=c.adam_eps, weight_decay=c.weight_decay)
        if c.optimizer == "adam":
            return torch.optim.Adam(self.params, lr=c.lr, betas=tuple(c.adam_betas), eps=c.adam_eps, weight_decay=c.weight_decay)
        return torch.optim.SGD(self.params, lr=c.lr, weight_decay=c.weight_decay)

    def _make_scheduler(self):
        # transformers.optimization imports peft and bitsandbytes, whose import logs a CPU warning:
        # imported once the run has quieted the libraries (prefopt.run.prepare.quiet_libraries).
        from transformers import get_scheduler

        c = self.cfg
        name = {"cosine": "cosine_with_min_lr", "linear": "linear", "constant": "constant_with_warmup"}[c.lr_schedule]
        kw = {"min_lr_rate": c.min_lr_ratio} if c.lr_schedule == "cosine" else None
        return get_scheduler(name, self.optimizer, num_warmup_steps=c.warmup_steps,
                             num_training_steps=max(1, self.total_steps), scheduler_specific_kwargs=kw)

    # ---- checkpoints (prefopt.core.checkpoint) -------------------------------------------------
    def _stateful_parts(self) -> dict:
        # Parts that carry state from step to step besides the weights (an online objective's
        # adaptive KL coefficient, the rollout source's bookkeeping): checkpointed through their own
        # state_dict() / load_state_dict(), whatever method is running. Loaded in this order.
        return {"objective": self.objective, "source": self.source}

    def save_checkpoint(self) -> Optional[str]:
        """checkpoints/step_N of the current step (every rank calls it; see CheckpointStore.save)."""
        return self.store.save(self.state.step, asdict(self.state))

    def load_checkpoint(self, path: str):
        """Continue from checkpoint ``path``: the training state, and metrics.jsonl cut back to its step."""
        self.state = TrainState(**self.store.load(path))
        # Metrics logged after this checkpoint belong to the interrupted attempt: drop them so the
        # resumed run's metrics.jsonl equals an uninterrupted run's.
        self.truncate_metrics(self.state.step)

    def truncate_metrics(self, step: int) -> int:
        """metrics.jsonl rows of steps <= ``step`` only (0: none, a fresh start); rank 0 writes."""
        return checkpoint.truncate_metrics(self.metrics_path, step) if self.is_main else 0

    # ---- logging -----------------------------------------------------------------------------
    def log(self, row: dict):
        if not self.is_main:
            return
        os.makedirs(self.out_dir, exist_ok=True)
        line = json.dumps(finite_or_none(row), allow_nan=False) + "\n"
        with open(self.metrics_path, "a") as f:
            start = f.tell()
            try:
                f.write(line)
                f.flush()
            except OSError as e:
                # A full disk: cut the torn line off again (truncating needs no space) and stop in one line.
                try:
                    f.truncate(start)
                except OSError:
                    pass  # resume drops a torn last line anyway
                last = checkpoint.newest(self.out_dir)
                raise RunStopped(f"could not append to {self.metrics_path} ({e.strerror or e}) at step {row.get('step')}; "
                                 f"last complete checkpoint: {last or 'none'}. Free some space, then resume with "
                                 "trainer.resume=auto") from None
        if self.cfg.tensorboard:
            if self.tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(self.out_dir, "tensorboard"))
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, row["step"])

    # ---- stopping on a signal ----------------------------------------------------------------
    def request_stop(self, signum: int) -> bool:
        """Called from a SIGINT / SIGTERM handler. Inside the loop the first signal lets the current
        step finish and be checkpointed (True); a second one, or one outside the loop, is for the
        caller to act on at once (False)."""
        if self._in_loop and self._stop_signal is None:
            self._stop_signal = signum
            return True
        return False

    def _stop_now(self, saved: Optional[str]):
        signum, self._stop_signal = self._stop_signal, None
        if saved is None:
            saved = self.save_checkpoint()  # every rank: under fsdp2 each writes its shards
        if self.distributed:
            dist.barrier()
        raise Interrupted(signum, step=self.state.step, checkpoint=saved)

    # ---- the loop ----------------------------------------------------------------------------
    def _all_sum(self, x: float) -> float:
        return self.place.all_sum(x)

    def _aligned(self, micro: list) -> list:
        """(batch, weight) per micro-batch. Under ddp / fsdp2 every forward and backward is a
        collective, so every process must run as many as the others: a process with fewer
        micro-batches this step (an online rollout whose dynamic sampling kept fewer groups here)
        repeats its last one with weight 0, which adds nothing to the gradient."""
        pairs = [(b, 1.0) for b in micro]
        if not self.distributed or self.place.strategy == "none":
            return pairs
        most = int(self.place.all_max(float(len(micro))))
        if len(micro) < most:
            if not micro:
                raise RunStopped(f"process {self.rank} has no sequences at step {self.state.step + 1} while another has "
                                 f"{most} micro-batch(es); with several processes every one needs data each step. "
                                 "Accepted: more prompts per process (algo.prompts_per_step) or more generation rounds")
            pairs += [(micro[-1], 0.0)] * (most - len(micro))
        return pairs

    def train_step(self) -> dict:
        """One optimizer step over the step's micro-batches."""
        t0 = time.perf_counter()
        self.policy.train()
        micro = [_to(b, self.device) for b in self.source.step_batches(self.state.step)]
        gen_s = self.source.last_gen_time_s
        units_total = self._all_sum(float(sum(self.objective.units(b) for b in micro)))
        if units_total <= 0:
            units_total = 1.0  # an all-empty step contributes no gradient rather than NaN
        loss_total, metric_sums, tokens = 0.0, {}, 0
        plan = self._aligned(micro)
        for i, (b, weight) in enumerate(plan):
            with self.place.accumulate(self.policy, sync=i == len(plan) - 1):
                loss_sum, metrics = self.place.call(self.policy, self.objective.loss, b, self.scorer)
                loss = loss_sum / units_total
                if not torch.isfinite(loss):
                    last = checkpoint.newest(self.out_dir)
                    raise TrainingDiverged(
                        f"loss is {loss.item()} at step {self.state.step + 1}; stopped before the update. "
                        f"Last good checkpoint: {last or 'none (set trainer.save_every_steps)'}. Try a lower trainer.lr."
                    )
                # Each process's loss is divided by the global unit count: the gradient wanted is the
                # sum over processes, and DDP / FSDP2 average (grad_scale = world size there).
                (loss * (weight * self.place.grad_scale)).backward()
            if weight == 0.0:
                continue
            loss_total += float(loss.detach())
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v)
            tokens += _real_tokens(b)
        # A finite loss can still give a NaN / inf gradient (an overflow in the backward pass): the
        # update is checked here, before it reaches the weights and so any checkpoint.
        grads = [p.grad for p in self.params if p.grad is not None]
        total_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.tensor(0.0)
        # Under fsdp2 the gradients are shards (DTensors) and so is their norm: the global value
        # is its full tensor (the same on every rank).
        grad_norm = float(total_norm.full_tensor() if isinstance(total_norm, DTensor) else total_norm)
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            last = checkpoint.newest(self.out_dir)
            raise TrainingDiverged(
                f"gradient norm is {grad_norm} at step {self.state.step + 1} (loss {loss_total:.4g}); stopped before "
                f"the update. Last good checkpoint: {last or 'none (set trainer.save_every_steps)'}. "
                "Try a lower trainer.lr.")
        if self.cfg.max_grad_norm > 0:
            # What clip_grad_norm_ does, with the norm computed once above.
            torch.nn.utils.clip_grads_with_norm_(self.params, self.cfg.max_grad_norm, total_norm)
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
        row.update(self.source.last_metrics)  # e.g. an online source's rollout statistics
        row["grad_norm"] = grad_norm
        for k, v in metric_sums.items():
            row[k] = self._all_sum(v) / units_total
        return row

    def fit(self):
        os.makedirs(self.out_dir, exist_ok=True)
        show = self.is_main and self.cfg.progress
        progress = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                            TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                            console=self.console, disable=not show, transient=False)
        with progress:
            task = progress.add_task("train", total=self.total_steps, completed=self.state.step, loss=float("nan"), tps=0.0)
            self._in_loop = True
            try:
                self._loop(progress, task)
            finally:
                self._in_loop = False
        if self.tb is not None:
            self.tb.close()

    def _loop(self, progress, task):
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
            saved = None
            if self.cfg.save_every_steps > 0 and s % self.cfg.save_every_steps == 0:
                saved = self.save_checkpoint()
                if self.distributed:
                    dist.barrier()
            stop = self._stop_signal is not None
            if self.distributed:
                # Every process must stop after the same step, whichever of them got the signal first.
                flag = torch.tensor([1.0 if stop else 0.0])
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stop = bool(flag.item())
                if stop and self._stop_signal is None:
                    self._stop_signal = signal.SIGTERM
            if stop:
                self._stop_now(saved)

    def evaluate(self, evaluator: Optional[Callable] = None):
        """``evaluator`` (default: the periodic one given at construction) on the current policy."""
        evaluator = evaluator or self.evaluator
        if evaluator is None:
            return None
        out = None
        if self.sharded:
            # Every placed model (policy, reference, reward model) gathered once, and every rank runs
            # the same evaluation (same prompts, same seeds) in lockstep: any forward hook that still
            # talks to the other ranks then finds them doing the same. Only rank 0's result is kept.
            with self.place.gathered(), torch.no_grad(), dropout_off(self.policy):
                out = evaluator(self.policy)
            return out if self.is_main else None
        if self.is_main:  # whole models on every rank: rank 0 alone
            with torch.no_grad(), dropout_off(self.policy):
                out = evaluator(self.policy)
        self.place.barrier()
        return out
