"""Resuming a run: which checkpoint to continue from, and the refusal of a resume under another
config. A run's identity is its resolved config minus the keys that only say how it is driven or
shown (:data:`NOT_HASHED`); the summary's ``config_hash`` and the leaderboard read the same."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from prefopt.core import checkpoint
from prefopt.core.config import TrainerConfig
from prefopt.core.errors import UserError


# Keys that say how a run is driven or shown, not what it computes: they may change on a resume.
NOT_HASHED = ("resume", "resume_allow_config_change", "progress", "tensorboard", "log_every_steps")


def hashed_config(cfg: DictConfig) -> dict:
    """The resolved config without the keys in NOT_HASHED: what fixes a run's numbers."""
    c = OmegaConf.to_container(cfg, resolve=True)
    tr = c.get("trainer", {})
    for k in NOT_HASHED:
        tr.pop(k, None)
    c.pop("output_dir", None)
    # Keys at a value that computes what a config without them computes hash as their absence, so results and
    # checkpoints made before the key existed keep their identity: env=none (single-turn runs), eval.greedy=false.
    if (c.get("env") or {}).get("name", "none") == "none":
        c.pop("env", None)
    if (c.get("eval") or {}).get("greedy") is False:
        c["eval"].pop("greedy")
    return c


def config_hash(cfg: DictConfig) -> str:
    c = hashed_config(cfg)
    return hashlib.sha256(json.dumps(c, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_diff(old: dict, new: dict, prefix: str = "") -> list:
    """Dotted keys whose values differ between two config dicts (a key in one only counts)."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b, key = old.get(k, "<absent>"), new.get(k, "<absent>"), f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, key + ".")
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append((key, a, b))
    return out


def resume_point(tcfg: TrainerConfig, out_dir: str, run_config: dict, console) -> Optional[str]:
    """The checkpoint to resume from (None: start at step 0), checked before anything is loaded or
    written: a resume that would be refused must leave out_dir as it is."""
    if not tcfg.resume:
        if os.path.exists(os.path.join(out_dir, "metrics.jsonl")):
            raise UserError(f"output directory {out_dir} already holds a run; nothing was changed. "
                            "Accepted: a new hydra.run.dir, or trainer.resume=auto to continue it")
        return None
    if tcfg.resume == "auto":
        path, skipped = checkpoint.find(out_dir)
        for p, why in skipped:
            if console is not None:
                console.print(f"  skipping checkpoint {p}: {why}" + (f"; resuming from {path}" if path else ""),
                              soft_wrap=True)
        if path is None:
            if os.path.exists(os.path.join(out_dir, "summary.json")):
                raise UserError(f"trainer.resume=auto: {out_dir} holds a finished run (summary.json) and no complete "
                                "checkpoint to continue from; nothing was changed. Accepted: a new hydra.run.dir")
            if console is not None and os.path.exists(os.path.join(out_dir, "metrics.jsonl")):
                console.print(f"  no complete checkpoint in {out_dir}: starting from step 0 "
                              "(the earlier attempt's metrics.jsonl rows are dropped)", soft_wrap=True)
            return None
    else:
        path = tcfg.resume
        if not os.path.isdir(path):
            raise UserError(f"trainer.resume: '{path}' is not a checkpoint directory; accepted: auto or a path")
        why = checkpoint.verify(path)
        if why is not None:
            raise UserError(f"trainer.resume: checkpoint {path}: {why}; accepted: a complete prefopt checkpoint "
                            "(checkpoints/step_N with its manifest.json)")
    saved = checkpoint.saved_config(path)
    if saved is not None and not tcfg.resume_allow_config_change:
        diff = config_diff(saved, run_config)
        # Most telling first: a changed preset's name, then changed values, then keys only one side has.
        diff.sort(key=lambda d: (not d[0].endswith(".name"), "<absent>" in (d[1], d[2])))
        if diff:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff[:5]) + ("; ..." if len(diff) > 5 else "")
            raise UserError(f"trainer.resume: the config differs from the one checkpoint {path} was written under "
                            f"({len(diff)} key(s): {shown}); nothing was changed. Accepted: the original values, or "
                            "trainer.resume_allow_config_change=true to continue under the new ones")
    return path
