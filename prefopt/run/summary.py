"""A run's summary: :class:`RunSummary`, written as summary.json by :func:`write_summary` (what was
trained, how long, how much memory, the held-out evaluation, the versions and CPU kind that fix its
numbers), and the table printed at the end."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Optional

import torch
import transformers
from rich.table import Table

from prefopt.core.files import write_json
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
    if ev.get("gold_reward_greedy") is not None:
        t.add_row("gold reward, greedy", f(ev.get("gold_reward_greedy")), f(ev.get("gold_reward_greedy_ref")))
    t.add_row("win rate vs π_ref", f(ev.get("win_rate_vs_ref")), "0.500" if ev.get("win_rate_vs_ref") is not None else "—")
    t.add_row("KL(π‖π_ref)", f(ev.get("kl_to_ref")), "0.000")
    t.add_row("mean length (tokens)", f(ev.get("mean_length")), f(ev.get("mean_length_ref")))
    t.add_row("repetition rate", f(ev.get("repetition_rate")), "")
    # An env run's episodes (absent for single-turn runs): turns, and the environment's info keys per episode.
    env_keys = ["env_turns"] if "env_turns" in ev else []
    env_keys += sorted(k for k in ev if k.startswith("env_info/") and not k.endswith("_ref"))
    for k in env_keys:
        label = "turns per episode" if k == "env_turns" else f"{k.removeprefix('env_info/')} per episode"
        t.add_row(label, f(ev.get(k)), f(ev.get(f"{k}_ref")))
    if ev.get("pairwise_accuracy") is not None:  # a reward model
        t.add_row("held-out pairwise accuracy", f(ev.get("pairwise_accuracy")), "")
        t.add_row("… against the gold ordering", f(ev.get("pairwise_accuracy_gold")), "")
    console.print(t)
    console.print(f"  wall {s['wall_time_s']:.1f}s, {s['tokens_per_s']:,.0f} tokens/s, peak memory {s['peak_mem_mb']:,.0f} MB")


@dataclass
class RunSummary:
    """summary.json: the run-output contract (README, "Run outputs"). Fields that do not apply are
    None (null): no gold reward on a user's own data, no training time for the best-of-n baseline.

    Three kinds of run fill it: a training run (``kind="train"``, with ``memory`` and
    ``final_metrics``), an ensemble of members (``members`` and ``ensemble`` in ``details``) and the
    leaderboard's best-of-n baseline (its per-n points in ``details``). :meth:`to_dict` is the JSON
    object, with non-finite numbers as null; :func:`write_summary` writes it."""

    algo: str
    task: Optional[str]
    data: Optional[str]
    seed: int
    model: Optional[str]
    params: dict
    steps: int
    wall_time_s: float
    gen_time_s: float
    train_time_s: float
    peak_mem_mb: Optional[float]
    tokens_per_s: Optional[float]
    eval: Optional[dict]
    eval_split: Optional[str]
    eval_periodic: Optional[dict] = None  # the same evaluation on the periodic split (trainer.eval_every_steps > 0)
    cost: dict = field(default_factory=dict)  # examples, policy_tokens, samples_generated
    config_hash: Optional[str] = None
    versions: dict = field(default_factory=versions)
    # Float rounding (and so every trained number) depends on the kernels torch picked.
    cpu_capability: str = field(default_factory=cpu_capability)
    kind: str = "train"  # train | ensemble | best_of_n (not written: the keys say it)
    memory: Optional[dict] = None  # a training run's per-rank memory
    final_metrics: Optional[dict] = None  # a training run's last logged row
    details: dict = field(default_factory=dict)  # what an ensemble or the best-of-n baseline adds

    def to_dict(self) -> dict:
        out = {}
        for k in ("algo", "task", "data", "seed", "model", "params", "steps", "wall_time_s", "gen_time_s",
                  "train_time_s", "peak_mem_mb"):
            out[k] = getattr(self, k)
        if self.kind == "train":
            out["memory"] = self.memory
        out["tokens_per_s"] = self.tokens_per_s
        if self.kind == "train":
            out["final_metrics"] = self.final_metrics
        for k in ("eval", "eval_split", "eval_periodic", "cost"):
            out[k] = getattr(self, k)
        out.update(self.details)
        for k in ("config_hash", "versions", "cpu_capability"):
            out[k] = getattr(self, k)
        return finite_or_none(out)


def summarize(*, algo: str, params: dict, task: Optional[str], data: str, seed: int, model: str, state, t_start: float,
              memory: dict, ev: Optional[dict], eval_split: str, ev_periodic: Optional[dict], cost: dict,
              config_hash: str) -> RunSummary:
    """A training run's summary, from the trainer's state."""
    return RunSummary(
        algo=algo, task=task, data=data, seed=seed, model=model, params=params, steps=state.step,
        wall_time_s=round(time.perf_counter() - t_start, 3), gen_time_s=round(state.gen_time_s, 3),
        train_time_s=round(state.train_time_s, 3), peak_mem_mb=max(memory["peak_mem_mb_per_rank"]),
        tokens_per_s=round(state.tokens / max(state.train_time_s, 1e-9), 1), eval=ev, eval_split=eval_split,
        eval_periodic=ev_periodic, cost=cost, config_hash=config_hash, memory=memory,
        final_metrics=state.history[-1] if state.history else None)


def write_summary(summary: RunSummary, out_dir: str) -> dict:
    """out_dir/summary.json, replaced atomically; returns the JSON object written."""
    d = summary.to_dict()
    write_json(os.path.join(out_dir, "summary.json"), d, indent=2)
    return d
