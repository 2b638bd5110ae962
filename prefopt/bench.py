"""Trainer throughput, side by side with TRL: ``python -m prefopt.bench``.

Two fixed workloads on a Llama-architecture model built from a config (4 layers, hidden 256,
intermediate 512, 4 heads, ~500-word vocabulary, untied head, fp32) with a word-level tokenizer and
512 synthetic rows (prompts of 8–24 words, completions of 16–48 words):

- ``dpo``: 16 pairs per step, max length 128, β 0.1, reference model as a separate frozen copy;
- ``grpo``: 4 prompts × 4 samples per step, 32 new tokens, temperature 1, a cheap Python reward,
  no KL term (TRL's default β = 0), one optimizer step per rollout.

Each provider (prefopt, TRL) runs in its own fresh subprocess, so its peak RSS is its own high-water
mark; the providers alternate (prefopt, trl, prefopt, trl, ...) so that a change in the machine's
load hits both. Per run: warm-up steps, then at least 5 measured steps, each timed end to end
(batch building, generation, forward, backward, optimizer). Reported: seconds per step (median
over the measured steps of all rounds), real tokens per second (tokens of prompt + completion
per sequence, padding excluded; a DPO pair counts its prompt twice, as both providers see it),
completions per second, peak RSS, and prefopt / TRL ratios. The DPO workers also compute the loss
on the same first batch from the same weights, so the two numbers can be compared.

``--providers prefopt,prefopt-naive`` compares prefopt with itself with log-probs taken from
materialized logits (``PREFOPT_LOGPROBS_IMPL=naive``): the training step before and after the fused
kernel.

TRL is the optional ``bench`` extra (``pip install prefopt[bench]``), imported lazily: without it
the table says "not installed". Timings are never asserted by tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time

VOCAB_WORDS = 494  # + 6 special tokens + 10 digits ≈ 510 ids
N_ROWS = 512
MODEL_ARCH = dict(model_type="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                  tie_word_embeddings=False, rms_norm_eps=1e-6)
DPO = dict(pairs_per_step=16, max_length=128, beta=0.1, lr=1e-5)
GRPO = dict(prompts_per_step=4, samples_per_prompt=4, max_new_tokens=32, temperature=1.0, lr=1e-5)


# ---- the world: tokenizer, model, data (built once by the parent, read by every worker) ----------

def _words(n: int) -> list:
    cons, vows = "bcdfghjklmnprstvwz", "aeiou"
    out = []
    for a in cons:
        for b in vows:
            for c in cons:
                out.append(a + b + c)
    rng = random.Random(0)
    rng.shuffle(out)
    return sorted(out[:n])


def build_world(root: str, seed: int = 0, n_rows: int = N_ROWS) -> dict:
    """Tokenizer, model weights and rows under ``root``; returns the paths."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from prefopt.testbed.tokenizer import build_tokenizer

    words = _words(VOCAB_WORDS)
    tok = build_tokenizer(words)
    tok_dir = os.path.join(root, "tokenizer")
    tok.save_pretrained(tok_dir)
    arch = dict(MODEL_ARCH)
    mt = arch.pop("model_type")
    cfg = AutoConfig.for_model(mt, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, **arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model_dir = os.path.join(root, "model")
    model.save_pretrained(model_dir)
    rng = random.Random(seed)
    say = lambda lo, hi: " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    rows = [{"prompt": say(8, 24), "chosen": " " + say(16, 48), "rejected": " " + say(16, 48)} for _ in range(n_rows)]
    data = os.path.join(root, "rows.json")
    with open(data, "w") as f:
        json.dump(rows, f)
    return {"tokenizer": tok_dir, "model": model_dir, "rows": data}


def _load_world(world: dict):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world["tokenizer"])
    model = AutoModelForCausalLM.from_pretrained(world["model"], dtype=torch.float32, attn_implementation="sdpa")
    with open(world["rows"]) as f:
        rows = json.load(f)
    return tok, model, rows


def perturb(model, seed: int = 1, std: float = 0.02):
    """Move the policy away from the reference (both providers, the same draw), so that the first-step
    DPO loss is not trivially log 2."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def tokenize_pairs(tok, rows: list) -> list:
    """prefopt examples with exactly TRL's token ids (prompt, prompt+completion+eos; completion =
    the ids after the prompt)."""
    out = []
    for i, r in enumerate(rows):
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        c = tok(r["prompt"] + r["chosen"] + tok.eos_token, add_special_tokens=False)["input_ids"]
        j = tok(r["prompt"] + r["rejected"] + tok.eos_token, add_special_tokens=False)["input_ids"]
        assert c[: len(p)] == p and j[: len(p)] == p
        out.append({"row": i, "prompt_ids": p, "chosen_ids": c[len(p):], "rejected_ids": j[len(p):]})
    return out


def cheap_reward(completions: list) -> list:
    """Distinct-word fraction of each completion (a cheap Python reward; the work is not the point)."""
    out = []
    for c in completions:
        w = c.split()
        out.append(len(set(w)) / max(1, len(w)))
    return out


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _torch_setup():
    import torch

    threads = int(os.environ.get("PREFOPT_BENCH_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch


# ---- prefopt workers ---------------------------------------------------------------------------

def _timed_steps(tr, warmup: int, steps: int) -> dict:
    """Wall and CPU time, real tokens and (online workloads) generation time of each step after
    ``warmup``, each step timed end to end (batch building, generation, forward, backward, optimizer)."""
    out = {"step_s": [], "cpu_s": [], "tokens": [], "gen_s": []}
    for k in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        row = tr.train_step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if k >= warmup:
            out["step_s"].append(dt)
            out["cpu_s"].append(dc)
            out["tokens"].append(row["tokens"])
            out["gen_s"].append(row.get("rollout/gen_time_s"))
    if all(g is None for g in out["gen_s"]):
        del out["gen_s"]  # an offline workload: nothing generated
    else:
        out["gen_s"] = [g or 0.0 for g in out["gen_s"]]
    return out


def _trainer_cfg(lr: float, steps: int):
    from prefopt.config import TrainerConfig

    return TrainerConfig(max_steps=steps, lr=lr, lr_schedule="constant", max_grad_norm=1.0, progress=False,
                         weight_decay=0.0, examples_per_step=DPO["pairs_per_step"],
                         examples_per_device=DPO["pairs_per_step"])


def prefopt_dpo(world: dict, warmup: int, steps: int) -> dict:
    torch = _torch_setup()
    import copy
    from functools import partial

    from prefopt.data import collate
    from prefopt.logprobs import Scorer
    from prefopt.models import FrozenReference
    from prefopt.objectives.dpo import DPO as DPOObjective
    from prefopt.trainer import OfflineSource, Trainer

    tok, model, rows = _load_world(world)
    examples = tokenize_pairs(tok, rows)
    reference = FrozenReference(copy.deepcopy(model))
    perturb(model)
    obj = DPOObjective(DPOObjective.Config(beta=DPO["beta"]))
    coll = partial(collate, kind="paired", pad_token_id=tok.pad_token_id)
    n = DPO["pairs_per_step"]
    model.train()
    loss0, _ = obj.loss(coll(examples[:n]), Scorer(model, reference))
    first_loss = float(loss0) / n
    src = OfflineSource(examples, coll, n, n, seed=0)
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(objective=obj, policy=model, reference=reference, source=src, cfg=_trainer_cfg(DPO["lr"], warmup + steps),
                     out_dir=out, total_steps=warmup + steps)
        res = _timed_steps(tr, warmup, steps)
    return {**res, "completions": [2 * n] * steps, "first_loss": first_loss}


class _BenchReward:
    """prefopt's reward interface around :func:`cheap_reward`."""

    uses_model = False

    def __call__(self, prompts, completions, *, prompt_ids=None, completion_ids=None, finished=None, with_terms=False):
        import torch

        s = torch.tensor(cheap_reward(completions), dtype=torch.float32)
        return (s, {}) if with_terms else s


def _prompt_examples(tok, rows):
    return [{"row": i, "prompt_text": r["prompt"], "prompt_ids": tok(r["prompt"], add_special_tokens=False)["input_ids"]}
            for i, r in enumerate(rows)]


def prefopt_grpo(world: dict, warmup: int, steps: int) -> dict:
    torch = _torch_setup()
    from prefopt.online import RolloutSource
    from prefopt.registry import get_objective
    from prefopt.rollout import HFSampler
    from prefopt.trainer import Trainer

    tok, model, rows = _load_world(world)
    G = GRPO
    cls = get_objective("grpo")
    obj = cls(cls.Config(prompts_per_step=G["prompts_per_step"], samples_per_prompt=G["samples_per_prompt"],
                         sequences_per_device=G["prompts_per_step"] * G["samples_per_prompt"],
                         max_new_tokens=G["max_new_tokens"], temperature=G["temperature"], kl_coef=0.0,
                         loss_agg="token-mean"))
    src = RolloutSource(examples=_prompt_examples(tok, rows), objective=obj, policy=model, reward=_BenchReward(),
                        sampler=HFSampler(tok.pad_token_id, tok.eos_token_id), tokenizer=tok,
                        max_new_tokens=G["max_new_tokens"], seed=0)
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(objective=obj, policy=model, reference=None, source=src, cfg=_trainer_cfg(G["lr"], warmup + steps),
                     out_dir=out, total_steps=warmup + steps, temperature=G["temperature"])
        res = _timed_steps(tr, warmup, steps)
    n = G["prompts_per_step"] * G["samples_per_prompt"]
    return {**res, "completions": [n] * steps}


# ---- TRL workers -------------------------------------------------------------------------------

def _trl_args(cls, out: str, lr: float, steps: int, **kw):
    return cls(output_dir=out, max_steps=steps, learning_rate=lr, lr_scheduler_type="constant", max_grad_norm=1.0,
               weight_decay=0.0, logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
               fp16=False, seed=0, dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=False, **kw)


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time between consecutive optimizer-step ends: everything a step costs."""

        def __init__(self):
            self.ends, self.cpu, self.gen = [], [], []
            self.gen_total = 0.0  # seconds inside model.generate so far (see _time_generate)

        def on_train_begin(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())
            self.cpu.append(time.process_time())
            self.gen.append(self.gen_total)

        def on_step_end(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())
            self.cpu.append(time.process_time())
            self.gen.append(self.gen_total)

    return StepTimer()


def _time_generate(model, timer):
    """Adds the wall time of every ``model.generate`` call to ``timer.gen_total`` (TRL's
    generation share of a step, reported next to prefopt's own rollout timer)."""
    orig = model.generate

    def generate(*a, **kw):
        t0 = time.perf_counter()
        try:
            return orig(*a, **kw)
        finally:
            timer.gen_total += time.perf_counter() - t0

    model.generate = generate


def _count_tokens(trainer, key="attention_mask"):
    counts = []
    orig = trainer.compute_loss

    def compute_loss(model, inputs, *a, **kw):
        m = inputs.get(key)
        if m is None and "prompt_mask" in inputs:
            m = [inputs["prompt_mask"], inputs["completion_mask"]]
        counts.append(int(sum(int(x.sum()) for x in (m if isinstance(m, list) else [m]))))
        return orig(model, inputs, *a, **kw)

    trainer.compute_loss = compute_loss
    return counts


def trl_dpo(world: dict, warmup: int, steps: int) -> dict:
    torch = _torch_setup()
    import copy

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tok, model, rows = _load_world(world)
    ref = copy.deepcopy(model)
    perturb(model)
    n = DPO["pairs_per_step"]
    with tempfile.TemporaryDirectory() as out:
        args = _trl_args(DPOConfig, out, DPO["lr"], warmup + steps, per_device_train_batch_size=n, beta=DPO["beta"],
                         max_length=DPO["max_length"], precompute_ref_log_probs=False)
        tr = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                        processing_class=tok)
        first = [tr.train_dataset[i] for i in range(n)]
        model.train()
        with torch.no_grad():
            first_loss = float(tr.compute_loss(model, tr.data_collator(first)))
        timer = _step_timer()
        tr.add_callback(timer)
        counts = _count_tokens(tr)
        tr.train()
    dts = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    cpu = [b - a for a, b in zip(timer.cpu, timer.cpu[1:])]
    return {"step_s": dts[warmup:], "cpu_s": cpu[warmup:], "tokens": counts[warmup:], "completions": [2 * n] * steps,
            "first_loss": first_loss}


def trl_grpo(world: dict, warmup: int, steps: int) -> dict:
    _torch_setup()
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    tok, model, rows = _load_world(world)
    G = GRPO
    n = G["prompts_per_step"] * G["samples_per_prompt"]

    def reward(completions, **kw):
        return cheap_reward(completions)

    with tempfile.TemporaryDirectory() as out:
        args = _trl_args(GRPOConfig, out, G["lr"], warmup + steps, per_device_train_batch_size=n,
                         num_generations=G["samples_per_prompt"], max_completion_length=G["max_new_tokens"],
                         temperature=G["temperature"], beta=0.0, top_k=0, top_p=1.0)
        tr = GRPOTrainer(model=model, reward_funcs=reward, args=args,
                         train_dataset=Dataset.from_list([{"prompt": r["prompt"]} for r in rows]), processing_class=tok)
        timer = _step_timer()
        tr.add_callback(timer)
        _time_generate(model, timer)
        counts = _count_tokens(tr)
        tr.train()
    dts = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    cpu = [b - a for a, b in zip(timer.cpu, timer.cpu[1:])]
    gen = [b - a for a, b in zip(timer.gen, timer.gen[1:])]
    return {"step_s": dts[warmup:], "cpu_s": cpu[warmup:], "tokens": counts[warmup:], "completions": [n] * steps,
            "gen_s": gen[warmup:]}


WORKERS = {("prefopt", "dpo"): prefopt_dpo, ("trl", "dpo"): trl_dpo,
           ("prefopt", "grpo"): prefopt_grpo, ("trl", "grpo"): trl_grpo}


def _worker(args):
    world = json.loads(args.world)
    fn = WORKERS[(args.provider, args.workload)]
    res = fn(world, args.warmup, args.steps)
    res["peak_rss_mb"] = _rss_mb()
    print("BENCH_RESULT " + json.dumps(res), flush=True)


# ---- the parent: machine, alternation, table ---------------------------------------------------

def trl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "python": platform.python_version(), "gpu": None}


def load_average() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("prefopt", "torch", "transformers", "trl", "liger-kernel"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def run_one(world: dict, provider: str, workload: str, warmup: int, steps: int) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1", PYTHONWARNINGS="ignore")
    if provider == "prefopt-naive":
        # prefopt with log-probs from materialized logits: the trainer before the fused op.
        provider, env["PREFOPT_LOGPROBS_IMPL"] = "prefopt", "naive"
    cmd = [sys.executable, "-m", "prefopt.bench", "--worker", "--provider", provider, "--workload", workload,
           "--world", json.dumps(world), "--warmup", str(warmup), "--steps", str(steps)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in p.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
    return {"error": " | ".join(tail) or f"exit {p.returncode}"}


def _summ(runs: list) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0].get("error") if runs else "no runs"}
    step_s = [t for r in ok for t in r["step_s"]]
    tok = sum(sum(r["tokens"]) for r in ok)
    comp = sum(sum(r["completions"]) for r in ok)
    total = sum(step_s)
    s = {"steps": len(step_s), "step_s_median": statistics.median(step_s), "step_s_mean": total / len(step_s),
         "step_s_min": min(step_s), "tokens_per_s": tok / total, "completions_per_s": comp / total,
         "peak_rss_mb": max(r["peak_rss_mb"] for r in ok), "rounds": len(ok)}
    cpu = [t for r in ok for t in r.get("cpu_s", [])]
    if cpu:
        s["cpu_s_per_step_median"] = statistics.median(cpu)
    if "first_loss" in ok[0]:
        s["first_loss"] = ok[0]["first_loss"]
    if "gen_s" in ok[0]:
        s["gen_s_mean"] = statistics.mean(g for r in ok for g in r["gen_s"])
        s["gen_s_median"] = statistics.median(g for r in ok for g in r["gen_s"])
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m prefopt.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="dpo,grpo")
    ap.add_argument("--providers", default="prefopt,trl")
    ap.add_argument("--rounds", type=int, default=2, help="alternating subprocess runs per provider")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="measured steps per run (>= 5)")
    ap.add_argument("--out", default="prefopt_bench.json")
    ap.add_argument("--threads", default="auto",
                    help="torch threads per worker (both providers alike); auto: 1 when the 1-minute load average "
                         "exceeds the core count (oversubscribed OpenMP threads stall each other), else torch's default")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--provider", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    ap.add_argument("--world", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)
    steps = max(5, args.steps)
    providers = [p for p in args.providers.split(",") if p]
    missing = {p: "not installed" for p in providers if p == "trl" and not trl_available()}
    load_before = load_average()
    threads = args.threads
    if threads == "auto":
        threads = "1" if load_before and load_before[0] > (os.cpu_count() or 1) else "0"
    os.environ["PREFOPT_BENCH_THREADS"] = threads
    results = {}
    with tempfile.TemporaryDirectory() as root:
        world = build_world(root)
        for wl in [w for w in args.workloads.split(",") if w]:
            runs = {p: [] for p in providers}
            for r in range(args.rounds):
                for p in providers:
                    if p in missing:
                        continue
                    print(f"[bench] {wl} {p} round {r + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
                    runs[p].append(run_one(world, p, wl, args.warmup, steps))
            results[wl] = {p: ({"error": missing[p]} if p in missing else {**_summ(runs[p]), "runs": runs[p]})
                           for p in providers}
    load_after = load_average()
    report = {"machine": machine(), "load_average_before": load_before, "load_average_after": load_after,
              "versions": _versions(), "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "workloads": {"dpo": DPO, "grpo": GRPO, "model": MODEL_ARCH, "rows": N_ROWS},
              "settings": {"rounds": args.rounds, "warmup": args.warmup, "steps": steps,
                           "torch_threads": int(threads) or "default"}, "results": results,
              "ratios": ratios(results), "ratios_vs_naive_logprobs": ratios(results, "prefopt-naive")}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(table(report))
    print(f"\nwrote {args.out}")


def ratios(results: dict, other: str = "trl") -> dict:
    """prefopt / ``other`` per workload (TRL, or prefopt with naive log-probs)."""
    out = {}
    for wl, r in results.items():
        a, b = r.get("prefopt", {}), r.get(other, {})
        if "error" in a or "error" in b or not a or not b:
            continue
        out[wl] = {"tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
                   "completions_per_s": a["completions_per_s"] / b["completions_per_s"],
                   "peak_rss": a["peak_rss_mb"] / b["peak_rss_mb"],
                   "step_time": a["step_s_median"] / b["step_s_median"]}
        if "first_loss" in a and "first_loss" in b:
            out[wl]["first_loss_abs_diff"] = abs(a["first_loss"] - b["first_loss"])
    return out


def table(rep: dict) -> str:
    m = rep["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores (torch threads per worker: "
             f"{rep['settings']['torch_threads']}), no GPU; "
             f"load average before {rep['load_average_before']} after {rep['load_average_after']}",
             f"versions: {rep['versions']}", "",
             "| workload | provider | s/step (median) | of which generation | CPU s/step | real tokens/s | completions/s | "
             "peak RSS MB | first-step loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for wl, r in rep["results"].items():
        for p, s in r.items():
            if "error" in s:
                lines.append(f"| {wl} | {p} | {s['error']} | | | | | | |")
                continue
            fl = f"{s['first_loss']:.6f}" if "first_loss" in s else ""
            gen = f"{s['gen_s_median']:.3f}" if "gen_s_median" in s else ""
            lines.append(f"| {wl} | {p} | {s['step_s_median']:.3f} | {gen} | {s.get('cpu_s_per_step_median', float('nan')):.3f} | "
                         f"{s['tokens_per_s']:,.0f} | "
                         f"{s['completions_per_s']:.1f} | {s['peak_rss_mb']:.0f} | {fl} |")
        for key, name in (("ratios", "prefopt/TRL"), ("ratios_vs_naive_logprobs", "prefopt/naive log-probs")):
            q = rep.get(key, {}).get(wl)
            if q:
                extra = f" Δloss {q['first_loss_abs_diff']:.1e}" if "first_loss_abs_diff" in q else ""
                lines.append(f"| {wl} | {name} | ×{1 / q['step_time']:.2f} faster | | | ×{q['tokens_per_s']:.2f} | "
                             f"×{q['completions_per_s']:.2f} | ×{q['peak_rss']:.2f} |{extra} |")
    la = rep["load_average_before"]
    if la and la[0] > (m["cores"] or 1):
        lines.append(f"\nnote: the 1-minute load average ({la[0]}) exceeds the core count ({m['cores']}): other processes "
                     "shared the CPU; the alternating runs share that noise, absolute times do not generalize.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
