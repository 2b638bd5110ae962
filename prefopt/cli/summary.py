"""A run's summary: summary.json (what was trained, how long, how much memory, the held-out
evaluation, the versions and CPU kind that fix its numbers) and the table printed at the end."""

from __future__ import annotations

import json
import os
import resource
import time
from importlib.metadata import version
from typing import Optional

import torch
import transformers
from rich.table import Table

from prefopt.core.records import finite_or_none


def versions() -> dict:
    return {"prefopt": version("prefopt"), "torch": torch.__version__, "transformers": transformers.__version__}


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels use (AVX512, AVX2, DEFAULT; ATEN_CPU_CAPABILITY
    lowers it): results trained under different ones agree only statistically, not bit for bit."""
    return torch.backends.cpu.get_cpu_capability()


def peak_mem_mb(device) -> float:
    """This process's peak memory (the summary reports the max over processes)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def print_summary(s: dict, console):
    ev = s.get("eval") or {}
    t = Table(title=f"{s['algo']} on {s.get('task') or s.get('data')} (seed {s['seed']}, {s['steps']} steps)")
    t.add_column("")
    t.add_column("policy π", justify="right")
    t.add_column("reference π_ref", justify="right")
    f = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    t.add_row("gold reward", f(ev.get("gold_reward")), f(ev.get("gold_reward_ref")))
    t.add_row("win rate vs π_ref", f(ev.get("win_rate_vs_ref")), "0.500" if ev.get("win_rate_vs_ref") is not None else "—")
    t.add_row("KL(π‖π_ref)", f(ev.get("kl_to_ref")), "0.000")
    t.add_row("mean length (tokens)", f(ev.get("mean_length")), f(ev.get("mean_length_ref")))
    t.add_row("repetition rate", f(ev.get("repetition_rate")), "")
    if ev.get("pairwise_accuracy") is not None:  # a reward model
        t.add_row("held-out pairwise accuracy", f(ev.get("pairwise_accuracy")), "")
        t.add_row("… against the gold ordering", f(ev.get("pairwise_accuracy_gold")), "")
    console.print(t)
    console.print(f"  wall {s['wall_time_s']:.1f}s, {s['tokens_per_s']:,.0f} tokens/s, peak memory {s['peak_mem_mb']:,.0f} MB")


def summarize(*, algo: str, params: dict, task: Optional[str], data: str, seed: int, model: str, state, t_start: float,
              memory: dict, ev: Optional[dict], eval_split: str, ev_periodic: Optional[dict], cost: dict,
              config_hash: str) -> dict:
    """summary.json's content (the run-output contract in DESIGN.md), non-finite numbers as null."""
    return finite_or_none({
        "algo": algo,
        "task": task,
        "data": data,
        "seed": seed,
        "model": model,
        "params": params,
        "steps": state.step,
        "wall_time_s": round(time.perf_counter() - t_start, 3),
        "gen_time_s": round(state.gen_time_s, 3),
        "train_time_s": round(state.train_time_s, 3),
        "peak_mem_mb": max(memory["peak_mem_mb_per_rank"]),
        "memory": memory,
        "tokens_per_s": round(state.tokens / max(state.train_time_s, 1e-9), 1),
        "final_metrics": state.history[-1] if state.history else None,
        "eval": ev,
        "eval_split": eval_split,
        # The same evaluation on the periodic split (null unless trainer.eval_every_steps > 0).
        "eval_periodic": ev_periodic,
        "cost": cost,
        "config_hash": config_hash,
        "versions": versions(),
        # Float rounding (and so every trained number) depends on the kernels torch picked.
        "cpu_capability": cpu_capability(),
    })


def write_summary(summary: dict, out_dir: str) -> None:
    """summary.json, replaced atomically."""
    tmp = os.path.join(out_dir, ".summary.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2, allow_nan=False)
    os.replace(tmp, os.path.join(out_dir, "summary.json"))
