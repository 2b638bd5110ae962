"""The checkpoint store of a run directory: ``checkpoints/step_N`` written atomically, verified,
found, loaded; and ``metrics.jsonl`` cut back to a checkpoint's step on resume.

A checkpoint is complete only when its manifest.json (sizes and sha256 of every other file,
written last, after the files are fsynced) matches what is on disk: a checkpoint truncated or
damaged after it was renamed into place is told apart from a good one, and resume falls back to
the newest complete one. Every file is loaded with ``torch.load(weights_only=True)``: tensors and
plain types only, so a checkpoint directory handed over by someone else cannot run code.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Optional

import torch
from torch.distributed.tensor import DTensor

from prefopt.core import files
from prefopt.core.errors import RunStopped, TrainingDiverged, first_line
from prefopt.core.files import TMP_PREFIX, sha256_file
from prefopt.core.modules import is_sharded
from prefopt.core.processes import Processes
from prefopt.core.rng import rng_state, set_rng_state

MANIFEST = "manifest.json"
FORMAT = 2


class CheckpointInvalid(RuntimeError):
    """A checkpoint that is incomplete, damaged, of another model, or holds more than tensors and plain types."""


def _files_under(d: str) -> list:
    """Every file below ``d``, as sorted paths relative to it (a sharded checkpoint has subfolders)."""
    out = []
    for root, _, names in os.walk(d):
        out += [os.path.relpath(os.path.join(root, n), d) for n in names]
    return sorted(out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_partial(out_dir: str) -> list:
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

def verify(path: str) -> Optional[str]:
    """None if the checkpoint at ``path`` is complete and intact, else why it is not."""
    try:
        with open(os.path.join(path, MANIFEST)) as f:
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
        if sha256_file(p) != meta.get("sha256"):
            return f"{name} does not match its sha256 in the manifest"
    return None

def find(out_dir: str) -> tuple[Optional[str], list]:
    """(newest complete checkpoint or None, [(path, why skipped)] for newer ones that are not)."""
    d = os.path.join(out_dir, "checkpoints")
    if not os.path.isdir(d):
        return None, []
    skipped = []
    for name in sorted((x for x in os.listdir(d) if x.startswith("step_")), reverse=True):
        path = os.path.join(d, name)
        why = verify(path)
        if why is None:
            return path, skipped
        skipped.append((path, why))
    return None, skipped

def newest(out_dir: str) -> Optional[str]:
    return find(out_dir)[0]

def saved_config(path: str) -> Optional[dict]:
    """The run config a checkpoint was written under (None when it was written without one)."""
    p = os.path.join(path, "config.json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return json.load(f)


def truncate_metrics(metrics_path: str, step: int) -> int:
    """Keep only metrics.jsonl rows of steps <= ``step`` (0: none, a fresh start) and drop a torn
    line a crash or a full disk left; rewritten atomically. Returns the number of torn lines."""
    if not os.path.exists(metrics_path):
        return 0
    keep, torn = [], 0
    with open(metrics_path, "rb") as f:
        for raw in f:
            try:
                row = json.loads(raw)
            except ValueError:  # also a line cut inside a multi-byte character
                torn += 1
                continue
            if isinstance(row, dict) and row.get("step", 0) <= step:
                keep.append(json.dumps(row, allow_nan=False) + "\n")
    with files.atomic_open(metrics_path) as f:
        f.writelines(keep)
    return torn


class CheckpointStore:
    """Saves and loads one run's training state: the trainable weights (sharded under fsdp2), the
    optimizer and scheduler, every RNG, and ``parts``, the objects that carry state from step to
    step besides the weights (an online objective's adaptive KL coefficient, the rollout source's
    bookkeeping), each through its own ``state_dict()`` / ``load_state_dict()``."""

    def __init__(self, out_dir: str, place: Processes, *, policy, params: list, optimizer, scheduler, parts: dict, keep: int,
                 run_config: Optional[dict] = None):
        self.out_dir, self.place = out_dir, place
        self.ckpt_dir = os.path.join(out_dir, "checkpoints")
        self.policy, self.params, self.optimizer, self.scheduler = policy, params, optimizer, scheduler
        self.parts, self.keep = parts, keep
        # Stored in every checkpoint so that a resume under a different config can be refused.
        self.run_config = run_config
        self.sharded, self.is_main, self.rank, self.world = is_sharded(policy), place.is_main, place.rank, place.world

    def _trainable_state(self):
        names = {id(p): n for n, p in self.policy.named_parameters()}
        return {names[id(p)]: p.detach().cpu().clone() for p in self.params}

    def save(self, step: int, state: dict) -> Optional[str]:
        """Write checkpoints/step_N atomically: build it under a temporary name, manifest last, then
        rename. Non-finite weights are never written; a failed write (a full disk) removes its partial
        directory and leaves the earlier checkpoints as they were. Returns the checkpoint's path.

        Under fsdp2 every rank writes its own shards of the weights and optimizer state
        (torch.distributed.checkpoint, into ``shards/``) and its RNG state; rank 0 writes the rest and
        the manifest, after all shards are on disk, so the rename publishes a complete checkpoint or none."""
        if not self.sharded and not self.is_main:
            return None
        trainable = None if self.sharded else self._trainable_state()
        local = [p.detach() for p in self.params] if self.sharded else list(trainable.values())
        bad = [n for n, v in zip(self._param_names(), local)
               if not torch.isfinite(v.to_local() if isinstance(v, DTensor) else v).all()]
        if self.sharded and self.place.all_max(1.0 if bad else 0.0) > 0 and not bad:
            bad = ["a parameter shard of another process"]
        if bad:
            last = newest(self.out_dir)
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
                extras = {"scheduler": self.scheduler.state_dict(), "rng": rng_state(),
                          "parts": {name: part.state_dict() for name, part in self.parts.items()}}
                if not self.sharded:
                    extras["optimizer"] = self.optimizer.state_dict()
                torch.save(extras, os.path.join(tmp, "trainer.pt" if self.sharded else "optim.pt"))
                files.write_json(os.path.join(tmp, "state.json"), state)
                if self.run_config is not None:
                    files.write_json(os.path.join(tmp, "config.json"), self.run_config)
                listed = {}
                for name in _files_under(tmp):
                    p = os.path.join(tmp, name)
                    # Without it a power cut after the rename can leave a complete-looking name over empty files.
                    files.fsync_file(p)
                    listed[name] = {"bytes": os.path.getsize(p), "sha256": sha256_file(p)}
                # Written last (and fsynced with its directory): its presence marks the files above complete.
                files.write_json(os.path.join(tmp, MANIFEST), {"format": FORMAT, "step": step, "files": listed,
                                                               "layout": "sharded" if self.sharded else "full",
                                                               "world_size": self.world})
                if os.path.exists(final):
                    shutil.rmtree(final)
                os.replace(tmp, final)  # a directory: published whole by one rename
                files.fsync_dir(self.ckpt_dir)
        except OSError as e:
            error = e
        if self.sharded and self.place.all_max(1.0 if error else 0.0) > 0 and error is None:
            error = OSError("a write failed on another process")
        if error is not None:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            last = newest(self.out_dir)
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
        torch.save(rng_state(), os.path.join(tmp, "rng", f"rank_{self.rank}.pt"))  # each process draws its own
        self.place.barrier()  # every rank's files are on disk before rank 0 lists them

    def _prune(self):
        done = sorted(d for d in os.listdir(self.ckpt_dir) if d.startswith("step_"))
        for d in done[: max(0, len(done) - max(1, self.keep))]:
            shutil.rmtree(os.path.join(self.ckpt_dir, d), ignore_errors=True)
        remove_partial(self.out_dir)

    def load(self, path: str) -> dict:
        """Weights, optimizer, scheduler, RNG and the stateful parts from ``path``; returns the saved
        loop state (step, tokens, times) for the trainer."""
        why = verify(path)
        if why is not None:
            raise CheckpointInvalid(f"checkpoint {path}: {why}")
        with open(os.path.join(path, MANIFEST)) as f:
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
                f"checkpoint {path}: refused to load ({first_line(e)}); a prefopt checkpoint holds only "
                "tensors and plain types") from None
        if self.sharded:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            state = self._sharded_state()
            try:
                dcp.load(state, checkpoint_id=os.path.join(path, "shards"))
            except Exception as e:  # noqa: BLE001 — a checkpoint of another model: keys or shapes differ
                raise CheckpointInvalid(f"checkpoint {path}: its shards do not fit this model ({first_line(e)}); "
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
        set_rng_state(opt["rng"])
        saved = opt.get("parts", {})
        for name, part in self.parts.items():
            if name in saved:
                part.load_state_dict(saved[name])
        with open(os.path.join(path, "state.json")) as f:
            return json.load(f)
