"""The one training loop, shared by every objective.

The trainer knows nothing about methods. It gets micro-batches from a batch source, asks the
objective for a loss summed over its units (pairs, sequences or tokens), divides by the units of
the whole optimizer step (all micro-batches, all processes), backpropagates, clips, steps, logs,
evaluates and checkpoints. How the processes share gradients and weights (none / DDP / FSDP2) is
:mod:`prefopt.distributed.placement`'s business: the loss runs through ``placement.call`` as the policy's
forward, so the engine's own gradient reduction (bucketed, overlapped) does the sync.

Why sum-then-divide: a token-mean loss averaged per micro-batch changes with the accumulation
split; dividing the step's summed loss by the step's unit count does not.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import resource
import shutil
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from prefopt.core.config import TrainerConfig
from prefopt.data.formats import EpochOrder
from prefopt.core.errors import Interrupted, RunStopped
from prefopt.models.logprobs import Scorer
from prefopt.distributed.placement import Placement, is_sharded

TMP_PREFIX = ".tmp-"


class TrainingDiverged(RuntimeError):
    pass


class CheckpointInvalid(RuntimeError):
    """A checkpoint that is incomplete, damaged, of another model, or holds more than tensors and plain types."""


def finite_or_none(x):
    """``x`` with every NaN / ±inf float replaced by None: strict JSON has no NaN, and a parser that
    rejects one line would lose the whole metrics file."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_or_none(v) for v in x]
    return x


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: str):
    # Without it a power cut after the rename can leave a complete-looking name over empty files.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _files_under(d: str) -> list:
    """Every file below ``d``, as sorted paths relative to it (a sharded checkpoint has subfolders)."""
    out = []
    for root, _, names in os.walk(d):
        out += [os.path.relpath(os.path.join(root, n), d) for n in names]
    return sorted(out)


def _write_json(path: str, obj):
    with open(path, "w") as f:
        json.dump(finite_or_none(obj), f, allow_nan=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rng_state() -> dict:
    """Every RNG the loop draws from, as tensors and plain types (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}


def _set_rng_state(s: dict):
    torch.set_rng_state(s["torch"])
    version, internal, gauss = s["python"]
    random.setstate((version, tuple(internal), gauss))
    n = s["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_mem_mb(device) -> float:
    """This process's peak memory (the summary reports the max over processes)."""
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
            from prefopt.core.errors import UserError

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
                 console=None, run_config: Optional[dict] = None, placement: Optional[Placement] = None,
                 value_model=None):
        self.objective = objective
        self.policy = policy
        self.reference = reference
        self.source = source
        self.cfg = cfg
        self.out_dir = out_dir
        self.total_steps = total_steps
        self.evaluator = evaluator
        self.place = placement or Placement(device=device or torch.device("cpu"))
        self.device = device or self.place.device
        self.scorer = Scorer(policy, reference, temperature=temperature, value_model=value_model)
        self.console = console
        self.distributed = self.place.distributed
        self.rank, self.world = self.place.rank, self.place.world
        self.is_main = self.place.is_main
        # Under fsdp2 the checkpoints are sharded (torch.distributed.checkpoint): each rank writes its shards.
        self.sharded = is_sharded(policy)
        self.params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = self._make_optimizer()
        self.scheduler = self._make_scheduler()
        self.state = TrainState()
        self.ckpt_dir = os.path.join(out_dir, "checkpoints")
        self.metrics_path = os.path.join(out_dir, "metrics.jsonl")
        self.tb = None
        # Stored in every checkpoint so that a resume under a different config can be refused.
        self.run_config = run_config
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
        from transformers import get_scheduler

        c = self.cfg
        name = {"cosine": "cosine_with_min_lr", "linear": "linear", "constant": "constant_with_warmup"}[c.lr_schedule]
        kw = {"min_lr_rate": c.min_lr_ratio} if c.lr_schedule == "cosine" else None
        return get_scheduler(name, self.optimizer, num_warmup_steps=c.warmup_steps,
                             num_training_steps=max(1, self.total_steps), scheduler_specific_kwargs=kw)

    # ---- checkpoints -------------------------------------------------------------------------
    # A checkpoint is complete only when its manifest.json (sizes and sha256 of every other file,
    # written last, after the files are fsynced) matches what is on disk: a checkpoint truncated or
    # damaged after it was renamed into place is told apart from a good one, and resume falls back
    # to the newest complete one. Every file is loaded with torch.load(weights_only=True): tensors
    # and plain types only, so a checkpoint directory handed over by someone else cannot run code.
    MANIFEST = "manifest.json"
    FORMAT = 2

    def _trainable_state(self):
        names = {id(p): n for n, p in self.policy.named_parameters()}
        return {names[id(p)]: p.detach().cpu().clone() for p in self.params}

    def _stateful_parts(self) -> dict:
        # Parts that carry state from step to step besides the weights (an online objective's
        # adaptive KL coefficient, the rollout source's bookkeeping): checkpointed through their own
        # state_dict() / load_state_dict(), whatever method is running. Loaded in this order.
        return {name: part for name, part in (("objective", self.objective), ("source", self.source))
                if callable(getattr(part, "state_dict", None)) and callable(getattr(part, "load_state_dict", None))}

    def save_checkpoint(self) -> Optional[str]:
        """Write checkpoints/step_N atomically: build it under a temporary name, manifest last, then
        rename. Non-finite weights are never written; a failed write (a full disk) removes its partial
        directory and leaves the earlier checkpoints as they were. Returns the checkpoint's path.

        Under fsdp2 every rank writes its own shards of the weights and optimizer state
        (torch.distributed.checkpoint, into ``shards/``) and its RNG state; rank 0 writes the rest and
        the manifest, after all shards are on disk, so the rename publishes a complete checkpoint or none."""
        if not self.sharded and not self.is_main:
            return None
        step = self.state.step
        trainable = None if self.sharded else self._trainable_state()
        local = [p.detach() for p in self.params] if self.sharded else list(trainable.values())
        bad = [n for n, v in zip(self._param_names(), local) if not torch.isfinite(getattr(v, "_local_tensor", v)).all()]
        if self.sharded and self.place.all_max(1.0 if bad else 0.0) > 0 and not bad:
            bad = ["a parameter shard of another process"]
        if bad:
            last = self.newest_checkpoint(self.out_dir)
            raise TrainingDiverged(f"weights are not finite after step {step} ({bad[0]}); not checkpointed. "
                                   f"Last good checkpoint: {last or 'none'}. Try a lower trainer.lr.")
        final = os.path.join(self.ckpt_dir, f"step_{step:07d}")
        tmp = os.path.join(self.ckpt_dir, f"{TMP_PREFIX}step_{step:07d}-{os.getpid()}")
        if self.sharded:
            tmp = self.place.broadcast_object(tmp)  # rank 0's name: its pid marks a live writer
        error = None
        try:
            if self.is_main:
                os.makedirs(tmp, exist_ok=True)
            if self.sharded:
                self.place.barrier()
                self._save_shards(tmp)
            else:
                torch.save(trainable, os.path.join(tmp, "trainable.pt"))
        except OSError as e:
            error = e
        if self.sharded and self.place.all_max(1.0 if error else 0.0) > 0 and error is None:
            error = OSError("a write failed on another process")
        try:
            if error is None and self.is_main:
                extras = {"scheduler": self.scheduler.state_dict(), "rng": _rng_state(),
                          "parts": {name: part.state_dict() for name, part in self._stateful_parts().items()}}
                if not self.sharded:
                    extras["optimizer"] = self.optimizer.state_dict()
                torch.save(extras, os.path.join(tmp, "trainer.pt" if self.sharded else "optim.pt"))
                _write_json(os.path.join(tmp, "state.json"), self.state.__dict__)
                if self.run_config is not None:
                    _write_json(os.path.join(tmp, "config.json"), self.run_config)
                files = {}
                for name in _files_under(tmp):
                    p = os.path.join(tmp, name)
                    _fsync(p)
                    files[name] = {"bytes": os.path.getsize(p), "sha256": _sha256(p)}
                _write_json(os.path.join(tmp, self.MANIFEST), {"format": self.FORMAT, "step": step, "files": files,
                                                               "layout": "sharded" if self.sharded else "full",
                                                               "world_size": self.world})
                _fsync(tmp)
                if os.path.exists(final):
                    shutil.rmtree(final)
                os.replace(tmp, final)
                _fsync(self.ckpt_dir)
        except OSError as e:
            error = e
        if self.sharded and self.place.all_max(1.0 if error else 0.0) > 0 and error is None:
            error = OSError("a write failed on another process")
        if error is not None:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            last = self.newest_checkpoint(self.out_dir)
            raise RunStopped(
                f"could not write checkpoint {final} ({getattr(error, 'strerror', None) or error}); the partial write was "
                f"removed; last complete checkpoint: {last or 'none'}. Free some space, then resume with trainer.resume=auto"
            ) from None
        if self.is_main:
            self._prune()
        return final

    def _param_names(self) -> list:
        names = {id(p): n for n, p in self.policy.named_parameters()}
        return [names[id(p)] for p in self.params]

    def _sharded_state(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        # Only what trains (LoRA: the adapters): frozen base weights are read again from model.*.
        msd, osd = get_state_dict(self.policy, self.optimizer, options=StateDictOptions(ignore_frozen_params=True))
        return {"model": msd, "optim": osd}

    def _save_shards(self, tmp: str):
        import torch.distributed.checkpoint as dcp

        dcp.save(self._sharded_state(), checkpoint_id=os.path.join(tmp, "shards"))
        os.makedirs(os.path.join(tmp, "rng"), exist_ok=True)
        torch.save(_rng_state(), os.path.join(tmp, "rng", f"rank_{self.rank}.pt"))  # each process draws its own
        self.place.barrier()  # every rank's files are on disk before rank 0 lists them

    def _prune(self):
        done = sorted(d for d in os.listdir(self.ckpt_dir) if d.startswith("step_"))
        for d in done[: max(0, len(done) - max(1, self.cfg.keep_checkpoints))]:
            shutil.rmtree(os.path.join(self.ckpt_dir, d), ignore_errors=True)
        self.remove_partial_checkpoints(self.out_dir)

    @staticmethod
    def remove_partial_checkpoints(out_dir) -> list:
        """Delete what interrupted checkpoint writes left behind (``.tmp-step_N-PID``), except the
        directories of a writer that is still alive; returns the names removed."""
        d = os.path.join(out_dir, "checkpoints")
        removed = []
        if not os.path.isdir(d):
            return removed
        for name in os.listdir(d):
            if not name.startswith(TMP_PREFIX):
                continue
            pid = name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
                continue
            shutil.rmtree(os.path.join(d, name), ignore_errors=True)
            removed.append(name)
        return removed

    @classmethod
    def verify_checkpoint(cls, path) -> Optional[str]:
        """None if the checkpoint at ``path`` is complete and intact, else why it is not."""
        try:
            with open(os.path.join(path, cls.MANIFEST)) as f:
                manifest = json.load(f)
            files = manifest["files"]
        except FileNotFoundError:
            return "no manifest.json (an interrupted write, or a checkpoint of an older prefopt)"
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"unreadable manifest.json ({type(e).__name__})"
        layout = manifest.get("layout", "full")
        needed = ("trainer.pt", "state.json", "shards/.metadata") if layout == "sharded" else \
            ("trainable.pt", "optim.pt", "state.json")
        for name in needed:
            if name not in files:
                return f"manifest.json does not list {name}"
        for name, meta in files.items():
            p = os.path.join(path, name)
            if not os.path.isfile(p):
                return f"{name} is missing"
            if os.path.getsize(p) != meta.get("bytes"):
                return f"{name} has {os.path.getsize(p)} bytes, the manifest says {meta.get('bytes')}"
            if _sha256(p) != meta.get("sha256"):
                return f"{name} does not match its sha256 in the manifest"
        return None

    @classmethod
    def find_checkpoint(cls, out_dir) -> tuple[Optional[str], list]:
        """(newest complete checkpoint or None, [(path, why skipped)] for newer ones that are not)."""
        d = os.path.join(out_dir, "checkpoints")
        if not os.path.isdir(d):
            return None, []
        skipped = []
        for name in sorted((x for x in os.listdir(d) if x.startswith("step_")), reverse=True):
            path = os.path.join(d, name)
            why = cls.verify_checkpoint(path)
            if why is None:
                return path, skipped
            skipped.append((path, why))
        return None, skipped

    @classmethod
    def newest_checkpoint(cls, out_dir) -> Optional[str]:
        return cls.find_checkpoint(out_dir)[0]

    @staticmethod
    def checkpoint_config(path) -> Optional[dict]:
        """The run config a checkpoint was written under (None when it was written without one)."""
        p = os.path.join(path, "config.json")
        if not os.path.exists(p):
            return None
        with open(p) as f:
            return json.load(f)

    def load_checkpoint(self, path):
        why = self.verify_checkpoint(path)
        if why is not None:
            raise CheckpointInvalid(f"checkpoint {path}: {why}")
        with open(os.path.join(path, self.MANIFEST)) as f:
            layout = json.load(f).get("layout", "full")
        if (layout == "sharded") != self.sharded:
            raise CheckpointInvalid(
                f"checkpoint {path} holds {'sharded (fsdp2)' if layout == 'sharded' else 'whole (none/ddp)'} weights and this "
                f"run is {'sharded' if self.sharded else 'not sharded'}; accepted: the trainer.strategy it was written under")
        try:
            if self.sharded:
                opt = torch.load(os.path.join(path, "trainer.pt"), map_location="cpu", weights_only=True)
                rng_path = os.path.join(path, "rng", f"rank_{self.rank}.pt")
                if os.path.exists(rng_path):
                    opt["rng"] = torch.load(rng_path, map_location="cpu", weights_only=True)
            else:
                trainable = torch.load(os.path.join(path, "trainable.pt"), map_location="cpu", weights_only=True)
                opt = torch.load(os.path.join(path, "optim.pt"), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 — weights_only refuses anything but tensors and plain types
            raise CheckpointInvalid(
                f"checkpoint {path}: refused to load ({_first_line(e)}); a prefopt checkpoint holds only "
                "tensors and plain types") from None
        if self.sharded:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            state = self._sharded_state()
            try:
                dcp.load(state, checkpoint_id=os.path.join(path, "shards"))
            except Exception as e:  # noqa: BLE001 — a checkpoint of another model: keys or shapes differ
                raise CheckpointInvalid(f"checkpoint {path}: its shards do not fit this model ({_first_line(e)}); "
                                        "accepted: a checkpoint of the same model and adapter settings") from None
            set_state_dict(self.policy, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                           options=StateDictOptions(ignore_frozen_params=True))
        else:
            named = dict(self.policy.named_parameters())
            unknown = [n for n in trainable if n not in named]
            if unknown:
                raise CheckpointInvalid(f"checkpoint {path}: parameter '{unknown[0]}' is not in this model; "
                                        "accepted: a checkpoint of the same model and adapter settings")
            with torch.no_grad():
                for n, v in trainable.items():
                    named[n].copy_(v.to(named[n].device))
            self.optimizer.load_state_dict(opt["optimizer"])
        self.scheduler.load_state_dict(opt["scheduler"])
        _set_rng_state(opt["rng"])
        saved = opt.get("parts", {})
        for name, part in self._stateful_parts().items():
            if name in saved:
                part.load_state_dict(saved[name])
        with open(os.path.join(path, "state.json")) as f:
            self.state = TrainState(**json.load(f))
        # Metrics logged after this checkpoint belong to the interrupted attempt: drop them so the
        # resumed run's metrics.jsonl equals an uninterrupted run's.
        self.truncate_metrics(self.state.step)

    def truncate_metrics(self, step: int) -> int:
        """Keep only metrics.jsonl rows of steps <= ``step`` (0: none, a fresh start) and drop a torn
        line a crash or a full disk left; rewritten atomically. Returns the number of torn lines."""
        if not self.is_main or not os.path.exists(self.metrics_path):
            return 0
        keep, torn = [], 0
        with open(self.metrics_path, "rb") as f:
            for raw in f:
                try:
                    row = json.loads(raw)
                except ValueError:  # also a line cut inside a multi-byte character
                    torn += 1
                    continue
                if isinstance(row, dict) and row.get("step", 0) <= step:
                    keep.append(json.dumps(row, allow_nan=False) + "\n")
        tmp = self.metrics_path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, self.metrics_path)
        return torn

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
                last = self.newest_checkpoint(self.out_dir)
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
        gen_s = getattr(self.source, "last_gen_time_s", 0.0)
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
                    last = self.newest_checkpoint(self.out_dir)
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
        grad_norm = float(total_norm.full_tensor() if hasattr(total_norm, "full_tensor") else total_norm)
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            last = self.newest_checkpoint(self.out_dir)
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
        row.update(getattr(self.source, "last_metrics", None) or {})  # e.g. an online source's rollout statistics
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
        from prefopt.models.load import dropout_off

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
