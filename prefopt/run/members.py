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
n draws with replacement from its n pairs, seeded by its own seed
(:func:`prefopt.data.resample.resample`). The member's config is the run's with ``ensemble_members=1``
and that seed, so its directory, summary and config hash are exactly those of the single run it is:
:func:`run_members` is handed that single run (:class:`prefopt.run.Run`'s) and calls it once per member.

Interrupt and rerun: each member writes its own checkpoints; ``trainer.resume=auto`` on the same
output directory keeps every member whose summary.json matches its config (not retrained) and
resumes the one that was interrupted from its newest checkpoint. Without it, an output directory
that already holds members is refused and nothing is changed.
"""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Callable, Optional

from omegaconf import DictConfig, open_dict
from rich.console import Console

from prefopt.core.config import TrainerConfig, typed
from prefopt.core.errors import UserError
from prefopt.core.files import write_jsonl
from prefopt.objectives.registry import get_objective
from prefopt.run.resume import config_hash
from prefopt.run.summary import RunSummary, write_summary

SEED_STRIDE = 1000  # member i's seed: S + 1000·i (far from the neighbouring report seeds S ± 1)

# The single run the members are: (member config, member directory, called right before its first write) -> summary.
TrainOne = Callable[[DictConfig, str, Callable[[], None]], dict]


def count(cfg: DictConfig) -> int:
    """How many members the run's objective config asks for (1: an ordinary run)."""
    if "algo" not in cfg or "name" not in cfg.algo:
        return 1  # the run's own checks name what is missing
    Obj = get_objective(cfg.algo.name)
    return Obj(typed(Obj.Config, cfg.algo, "algo")).ensemble_members()


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


def override_line(paths: list) -> str:
    return f"reward=ensemble reward.paths=[{','.join(paths)}]"


def run_members(cfg: DictConfig, out_dir: str, n: int, train_one: TrainOne, console=None,
                on_start: Optional[Callable] = None) -> dict:
    """Train the n members into ``out_dir/members/i`` with ``train_one``; returns (and writes) the ensemble's summary."""
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
            console.print(f"  member {i} of {n}: seed {mcfg.seed}", soft_wrap=True, markup=False)
            s = train_one(mcfg, d, start_parent)
        summaries.append(s)
        ev = s.get("eval") or {}
        rows.append({"member": i, "seed": s.get("seed"), "steps": s.get("steps"), "wall_time_s": s.get("wall_time_s"),
                     **{k: v for k, v in ev.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}})
        # metrics.jsonl of the ensemble: one row per finished member, rewritten whole (atomically)
        write_jsonl(os.path.join(out_dir, "metrics.jsonl"), rows)
    paths = [os.path.join(members_dir, str(i), "model") for i in range(n)]
    have_models = all(os.path.isdir(p) for p in paths)
    evals = [s.get("eval") or {} for s in summaries]
    keys = [k for k, v in evals[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    mean_eval = {k: sum(e[k] for e in evals if isinstance(e.get(k), (int, float))) / n for k in keys}
    first = summaries[0]
    train_s = sum(s.get("train_time_s") or 0.0 for s in summaries)
    tokens = sum((s.get("cost") or {}).get("policy_tokens") or 0 for s in summaries)
    summary = write_summary(RunSummary(
        kind="ensemble", algo=first.get("algo"), task=first.get("task"), data=first.get("data"), seed=seed,
        model=first.get("model"), params={**(first.get("params") or {}), "ensemble_members": n},
        steps=sum(s.get("steps") or 0 for s in summaries), wall_time_s=round(time.perf_counter() - t0, 3),
        gen_time_s=sum(s.get("gen_time_s") or 0.0 for s in summaries), train_time_s=round(train_s, 3),
        peak_mem_mb=max((s.get("peak_mem_mb") or 0.0) for s in summaries),
        tokens_per_s=round(tokens / max(train_s, 1e-9), 1),
        # the members' mean; each member's own is in members[i].eval
        eval=mean_eval, eval_split=first.get("eval_split"), eval_periodic=None,
        cost={"examples": (first.get("cost") or {}).get("examples"), "policy_tokens": tokens, "samples_generated": 0},
        details={"members": [{"dir": os.path.join("members", str(i)), "seed": s.get("seed"), "resample": resample_kind,
                              "config_hash": s.get("config_hash"), "eval": s.get("eval")} for i, s in enumerate(summaries)],
                 "ensemble": {"paths": paths if have_models else None,
                              "override": override_line(paths) if have_models else None}},
        config_hash=config_hash(cfg)), out_dir)
    acc = mean_eval.get("pairwise_accuracy_gold", mean_eval.get("pairwise_accuracy"))
    console.print(f"  ensemble: {n} members" + (f", mean held-out accuracy {acc:.3f}" if acc is not None else ""))
    if have_models:
        console.print(f"  use it:  {override_line(paths)} reward.aggregate=min\n"
                      f"      or:  reward=ensemble reward.paths=[{members_dir}] reward.aggregate=mean_minus_std",
                      soft_wrap=True, markup=False)
    else:
        console.print("  no model/ in the members (trainer.save_model=false): nothing for reward=ensemble to load")
    return summary
