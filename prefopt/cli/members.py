"""N members in one command: a run whose objective's config declares ``ensemble_members`` (the reward
model's does) trains that many complete runs, one per member, each an ordinary run directory:

    prefopt-train algo=reward algo.ensemble_members=5 algo.ensemble_resample=seed|bootstrap
    OUT/members/0/  .hydra/ metrics.jsonl summary.json model/   (seed S: the run's own, so member 0 is
    OUT/members/1/  …                                            the single model the same command
    …                                                            with ensemble_members=1 trains)
    OUT/.hydra/ metrics.jsonl (one row per member) summary.json (the members' summaries and the
    ready-to-paste ``reward=ensemble reward.paths=[…]``)

Member i trains with seed S + 1000·i (initialisation, batch order, held-out split); under
``ensemble_resample=bootstrap`` it also trains on a bootstrap resample of its training pairs:
n draws with replacement from its n pairs, seeded by its own seed (:func:`resample`). The member's
config is the run's with ``ensemble_members=1`` and that seed, so its directory, summary and
config hash are exactly those of the single run it is.

Interrupt and rerun: each member writes its own checkpoints; ``trainer.resume=auto`` on the same
output directory keeps every member whose summary.json matches its config (not retrained) and
resumes the one that was interrupted from its newest checkpoint. Without it, an output directory
that already holds members is refused and nothing is changed.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from typing import Callable, Optional

from omegaconf import DictConfig, OmegaConf, open_dict

from prefopt.core.errors import UserError

SEED_STRIDE = 1000  # member i's seed: S + 1000·i (far from the neighbouring report seeds S ± 1)


def count(cfg: DictConfig) -> int:
    """How many members the run's objective config asks for (1: an ordinary run)."""
    from prefopt.core.config import typed
    from prefopt.objectives.registry import get_objective

    if "algo" not in cfg or "name" not in cfg.algo:
        return 1  # the run's own checks name what is missing
    acfg = typed(get_objective(cfg.algo.name).Config, cfg.algo, "algo")
    return int(getattr(acfg, "ensemble_members", 1) or 1)


def resample(examples: list, acfg, seed: int) -> list:
    """A bootstrap resample of the training examples (n draws with replacement) when the objective's
    config says ``ensemble_resample=bootstrap``; the examples unchanged otherwise."""
    if getattr(acfg, "ensemble_resample", None) != "bootstrap" or not examples:
        return examples
    rng = random.Random(f"bootstrap-{seed}")  # its own stream: the seed also fixes initialisation and batch order
    return [examples[rng.randrange(len(examples))] for _ in examples]


def member_seed(seed: int, i: int) -> int:
    return seed + SEED_STRIDE * i


def member_config(cfg: DictConfig, i: int, resume: bool) -> DictConfig:
    c = copy.deepcopy(cfg)
    with open_dict(c):
        c.algo.ensemble_members = 1
        c.seed = member_seed(int(cfg.get("seed", 0)), i)
        c.trainer.resume = "auto" if resume else None
    return c


def _finished(d: str, h: str) -> Optional[dict]:
    p = os.path.join(d, "summary.json")
    if not os.path.exists(p):
        return None
    with open(p) as f:
        s = json.load(f)
    return s if s.get("config_hash") == h else None


def _write_hydra(d: str, cfg: DictConfig) -> None:
    os.makedirs(os.path.join(d, ".hydra"), exist_ok=True)
    for name, resolve in (("config.yaml", False), ("resolved.yaml", True)):
        with open(os.path.join(d, ".hydra", name), "w", encoding="utf-8") as f:
            f.write(OmegaConf.to_yaml(cfg, resolve=resolve))


def override_line(paths: list) -> str:
    return f"reward=ensemble reward.paths=[{','.join(paths)}]"


def run_members(cfg: DictConfig, out_dir: str, n: int, console=None, on_start: Optional[Callable] = None) -> dict:
    """Train the n members into ``out_dir/members/i``; returns (and writes) the ensemble's summary."""
    from rich.console import Console

    from prefopt.cli.resume import config_hash
    from prefopt.cli.stages import run
    from prefopt.cli.summary import cpu_capability, versions, write_summary
    from prefopt.core.config import TrainerConfig, typed
    from prefopt.core.records import finite_or_none

    console = console or Console(stderr=False)
    t0 = time.perf_counter()
    tcfg = typed(TrainerConfig, cfg.get("trainer"), "trainer")
    if tcfg.resume not in (None, "auto"):
        raise UserError(f"trainer.resume={tcfg.resume} with algo.ensemble_members={n}: each member has its own "
                        "checkpoints; accepted: trainer.resume=auto (finished members are kept, the rest resume)")
    members_dir = os.path.join(out_dir, "members")
    if not tcfg.resume and (os.path.isdir(members_dir) or os.path.exists(os.path.join(out_dir, "metrics.jsonl"))):
        raise UserError(f"output directory {out_dir} already holds an ensemble (members/); nothing was changed. "
                        "Accepted: a new hydra.run.dir, or trainer.resume=auto to continue it (finished members are kept)")
    seed = int(cfg.get("seed", 0))
    resample_kind = cfg.algo.get("ensemble_resample", "seed")
    console.print(f"prefopt ensemble of {n} members ({resample_kind}; seeds "
                  f"{[member_seed(seed, i) for i in range(n)]}) → {members_dir}/0..{n - 1}", soft_wrap=True, markup=False)
    started = [False]

    def start_parent():
        if not started[0]:
            started[0] = True
            if on_start is not None:
                on_start()

    summaries, rows = [], []
    for i in range(n):
        d = os.path.join(members_dir, str(i))
        mcfg = member_config(cfg, i, resume=bool(tcfg.resume) and os.path.isdir(d))
        done = _finished(d, config_hash(mcfg)) if tcfg.resume else None
        if done is not None:
            start_parent()
            console.print(f"  member {i}: finished earlier ({d}/summary.json), kept", soft_wrap=True, markup=False)
            s = done
        else:
            def member_start(d=d, mcfg=mcfg):
                start_parent()
                _write_hydra(d, mcfg)

            console.print(f"  member {i} of {n}: seed {mcfg.seed}", soft_wrap=True, markup=False)
            s = run(mcfg, d, console, on_start=member_start)
        summaries.append(s)
        ev = s.get("eval") or {}
        rows.append({"member": i, "seed": s.get("seed"), "steps": s.get("steps"), "wall_time_s": s.get("wall_time_s"),
                     **{k: v for k, v in ev.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}})
        _write_rows(out_dir, rows)
    paths = [os.path.join(members_dir, str(i), "model") for i in range(n)]
    have_models = all(os.path.isdir(p) for p in paths)
    evals = [s.get("eval") or {} for s in summaries]
    keys = [k for k, v in evals[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    mean_eval = {k: sum(e[k] for e in evals if isinstance(e.get(k), (int, float))) / n for k in keys}
    first = summaries[0]
    train_s = sum(s.get("train_time_s") or 0.0 for s in summaries)
    tokens = sum((s.get("cost") or {}).get("policy_tokens") or 0 for s in summaries)
    summary = finite_or_none({
        "algo": first.get("algo"), "task": first.get("task"), "data": first.get("data"), "seed": seed,
        "model": first.get("model"), "params": {**(first.get("params") or {}), "ensemble_members": n},
        "steps": sum(s.get("steps") or 0 for s in summaries), "wall_time_s": round(time.perf_counter() - t0, 3),
        "gen_time_s": sum(s.get("gen_time_s") or 0.0 for s in summaries), "train_time_s": round(train_s, 3),
        "peak_mem_mb": max((s.get("peak_mem_mb") or 0.0) for s in summaries),
        "tokens_per_s": round(tokens / max(train_s, 1e-9), 1),
        # the members' mean; each member's own is in members[i].eval
        "eval": mean_eval, "eval_split": first.get("eval_split"), "eval_periodic": None,
        "cost": {"examples": (first.get("cost") or {}).get("examples"), "policy_tokens": tokens, "samples_generated": 0},
        "members": [{"dir": os.path.join("members", str(i)), "seed": s.get("seed"), "resample": resample_kind,
                     "config_hash": s.get("config_hash"), "eval": s.get("eval")} for i, s in enumerate(summaries)],
        "ensemble": {"paths": paths if have_models else None, "override": override_line(paths) if have_models else None},
        "config_hash": config_hash(cfg), "versions": versions(), "cpu_capability": cpu_capability(),
    })
    write_summary(summary, out_dir)
    acc = mean_eval.get("pairwise_accuracy_gold", mean_eval.get("pairwise_accuracy"))
    console.print(f"  ensemble: {n} members" + (f", mean held-out accuracy {acc:.3f}" if acc is not None else ""))
    if have_models:
        console.print(f"  use it:  {override_line(paths)} reward.aggregate=min\n"
                      f"      or:  reward=ensemble reward.paths=[{members_dir}] reward.aggregate=mean_minus_std",
                      soft_wrap=True, markup=False)
    else:
        console.print("  no model/ in the members (trainer.save_model=false): nothing for reward=ensemble to load")
    return summary


def _write_rows(out_dir: str, rows: list) -> None:
    """metrics.jsonl of the ensemble: one row per finished member, rewritten whole (atomically)."""
    from prefopt.core.records import finite_or_none

    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, ".metrics.jsonl.tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(finite_or_none(r), allow_nan=False, default=str) + "\n")
    os.replace(tmp, os.path.join(out_dir, "metrics.jsonl"))
