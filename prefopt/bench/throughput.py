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
materialized logits (``PREFOPT_LOGPROBS_IMPL=naive``): the training step without and with the fused
kernel.

On the real-model workloads (``smol``, ``real``) the run also measures the machine's fp32 and bf16 GEMM
rates and its copy bandwidth, before and after the workloads at the workers' thread count, and prints
each prefopt workload's roofline after the TRL table: every phase of the step (generation, log-prob
passes, loss forward + backward, optimizer, other; timed by :mod:`prefopt.bench.phases`) with its
share of the step and the fraction of its bound it reaches (:mod:`prefopt.bench.roofline`).

TRL is the optional ``bench`` extra (``pip install prefopt[bench]``), imported lazily: without it
the table says "not installed". Timings are never asserted by tests.

This module is the parent: the command line, the alternation of runs, the summaries and the table.
The world the runs share is built by :mod:`prefopt.bench.world`; each run is a
:mod:`prefopt.bench.workers` subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from prefopt.bench import roofline
from prefopt.bench.host import load_average, machine, package_versions
from prefopt.bench.workers import WORKLOADS, workload_spec
from prefopt.bench.world import LORA, MODEL_ARCH, N_ROWS, REAL_ARCH, REAL_VOCAB, build_world
from prefopt.core import files

ALIASES = {"real": "real-dpo-lora,real-grpo-lora,real-dpo-full", "smol": "smol-dpo-lora,smol-grpo-lora"}
MEMORY_BUDGET_GIB = 16.0  # the "largest DPO batch that fits" column
ROOFLINE_SHAPES = ("smol", "real")  # worlds of a real checkpoint's shape: their workloads get a roofline


# ---- the parent: machine, alternation, table ---------------------------------------------------

def trl_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def dtype_of(workload: str, wanted: str) -> str:
    """The weights' dtype of ``workload`` under ``--dtype`` (``auto``: the rule of model.dtype=auto)."""
    if wanted != "auto":
        return wanted
    from prefopt.core.config import LoraConfig, ModelConfig
    from prefopt.models import precision

    lora = LoraConfig(r=16 if WORKLOADS[workload]["lora"] else 0)
    return precision.resolve(ModelConfig(dtype="auto", lora=lora)).dtype


def run_one(world: dict, provider: str, workload: str, warmup: int, steps: int, spec: dict = None,
            timeout: float = None) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1", PYTHONWARNINGS="ignore")
    if provider == "prefopt-naive":
        # prefopt with log-probs from materialized logits: the trainer without the fused op
        provider, env["PREFOPT_LOGPROBS_IMPL"] = "prefopt", "naive"
    elif provider == "prefopt-llamacpp":
        # GRPO's rollouts sampled by llama.cpp (rollout.engine=llamacpp) with the token_truncate correction
        provider, env["PREFOPT_BENCH_ENGINE"] = "prefopt", "llamacpp"
    elif provider == "prefopt-recompute":
        # the fused op without the Jacobian-in-forward route: its backward recomputes the logit tiles
        provider, env["PREFOPT_KERNELS_HIDDEN_GRAD"] = "prefopt", "recompute"
    cmd = [sys.executable, "-m", "prefopt.bench.workers", "--provider", provider, "--workload", workload,
           "--world", json.dumps(world), "--warmup", str(warmup), "--steps", str(steps),
           "--spec", json.dumps(spec or workload_spec(workload))]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
    return {"error": " | ".join(tail) or f"exit {p.returncode}"}


def summarize(runs: list) -> dict:
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
    mem = [r["step_mem_mb"] for r in ok if r.get("step_mem_mb") == r.get("step_mem_mb")]  # drop NaN
    if mem:
        s["step_mem_mb"] = max(mem)
        s["rss_before_first_step_mb"] = min(r["rss_before_first_step_mb"] for r in ok)
        hw = [r["step_peak_rss_mb"] for r in ok if r.get("step_peak_rss_mb") == r.get("step_peak_rss_mb")
              and r.get("step_peak_rss_mb") is not None]
        if hw:
            s["step_peak_rss_mb"] = max(hw)
    if any("peak_device_mb" in r for r in ok):
        s["peak_device_mb"] = max(r.get("peak_device_mb", 0.0) for r in ok)
    cpu = [t for r in ok for t in r.get("cpu_s", [])]
    if cpu:
        s["cpu_s_per_step_median"] = statistics.median(cpu)
    if "first_loss" in ok[0]:
        s["first_loss"] = ok[0]["first_loss"]
    if "gen_s" in ok[0]:
        s["gen_s_mean"] = statistics.mean(g for r in ok for g in r["gen_s"])
        s["gen_s_median"] = statistics.median(g for r in ok for g in r["gen_s"])
    return s


def fit_largest_batch(points: list, budget_mb: float) -> dict:
    """Least-squares line peak RSS = a + b·pairs through measured (pairs, peak MB) points and the largest
    whole number of pairs whose predicted peak stays within ``budget_mb``: an extrapolation from the points,
    reported with them."""
    pts = sorted({(int(p), float(m)) for p, m in points})
    if len({p for p, _ in pts}) < 2:
        return {"points": pts, "error": "needs peak RSS at two or more batch sizes"}
    n = len(pts)
    mx = sum(p for p, _ in pts) / n
    my = sum(m for _, m in pts) / n
    b = sum((p - mx) * (m - my) for p, m in pts) / sum((p - mx) ** 2 for p, _ in pts)
    a = my - b * mx
    out = {"points": pts, "mb_per_pair": b, "intercept_mb": a, "budget_mb": budget_mb}
    out["largest_pairs"] = int((budget_mb - a) // b) if b > 0 else None
    return out


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m prefopt.bench", description=__doc__.splitlines()[0],
                                 epilog="python -m prefopt.bench gpu-check [--dry]: the GPU check (see prefopt/bench/gpu.py); "
                                        "python -m prefopt.bench memory: fsdp2 memory per rank, 1 vs 2 processes "
                                        "(prefopt/bench/memory.py); python -m prefopt.bench kernels: the fused "
                                        "log-prob kernel against its alternatives (prefopt/bench/kernels.py); python -m "
                                        "prefopt.bench roofline: the machine's GEMM rates and copy bandwidth "
                                        "(prefopt/bench/roofline.py)")
    ap.add_argument("--workloads", default="dpo,grpo",
                    help=f"comma-separated, from {', '.join(WORKLOADS)}; 'real' = {ALIASES['real']}")
    ap.add_argument("--providers", default="prefopt,trl",
                    help="prefopt, trl, prefopt-naive (materialized logits), prefopt-recompute (the fused op's "
                         "generic backward instead of the Jacobian-in-forward route)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating subprocess runs per provider")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5, help="measured steps per run (>= 5)")
    ap.add_argument("--scan-pairs", default="",
                    help="extra DPO batch sizes (pairs per step, comma-separated) run for their peak RSS only, to "
                         f"fit the largest batch within {MEMORY_BUDGET_GIB:g} GiB (real-dpo-* workloads)")
    ap.add_argument("--only-providers-for", default="",
                    help="WORKLOAD:PROV+PROV,... restricts a workload to some providers (e.g. "
                         "real-dpo-full:prefopt+trl)")
    ap.add_argument("--out", default="prefopt_bench.json")
    ap.add_argument("--roofline", choices=("auto", "on", "off"), default="auto",
                    help="measure the machine's GEMM rates and copy bandwidth before and after the workloads and "
                         "print each prefopt workload's per-phase roofline (prefopt/bench/roofline.py); auto: for "
                         f"the real-model workloads ({', '.join(ROOFLINE_SHAPES)} worlds) only")
    ap.add_argument("--threads", default="auto",
                    help="torch threads per worker (both providers alike); auto: 1 when the 1-minute load average "
                         "exceeds the core count (oversubscribed OpenMP threads stall each other), else torch's default")
    ap.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                    help="model weights of both providers; auto: model.dtype=auto's rule (bf16 base weights for the LoRA "
                         "workloads where the CPU computes bf16 natively, else float32; prefopt/models/precision.py)")
    args = ap.parse_args(argv)
    steps = max(5, args.steps)
    providers = [p for p in args.providers.split(",") if p]
    workloads = [w for x in args.workloads.split(",") if x for w in ALIASES.get(x, x).split(",")]
    for w in workloads:
        if w not in WORKLOADS:
            raise SystemExit(f"--workloads: {w!r} is not known; accepted: {', '.join(WORKLOADS)}, real")
    only = {}
    for item in [x for x in args.only_providers_for.split(",") if x]:
        w, _, ps = item.partition(":")
        only[w] = ps.split("+")
    scan = [int(x) for x in args.scan_pairs.split(",") if x]
    missing = {p: "not installed" for p in providers if p == "trl" and not trl_available()}
    load_before = load_average()
    threads = args.threads
    if threads == "auto":
        threads = "1" if load_before and load_before[0] > (os.cpu_count() or 1) else "0"
    os.environ["PREFOPT_BENCH_THREADS"] = threads
    with_roofline = [w for w in workloads if "prefopt" in providers and args.roofline != "off"
                     and (args.roofline == "on" or WORKLOADS[w]["shape"] in ROOFLINE_SHAPES)]
    rates_before = rates_after = None
    if with_roofline:
        import torch

        if int(threads) > 0:
            torch.set_num_threads(int(threads))  # the rates at the workers' thread count
        print("[bench] measuring the machine's GEMM rates and copy bandwidth ...", file=sys.stderr, flush=True)
        rates_before = roofline.measure_rates()
    results, scans = {}, {}
    with tempfile.TemporaryDirectory() as root:
        worlds = {}
        for wl in workloads:
            shape = WORKLOADS[wl]["shape"]
            if shape not in worlds:
                print(f"[bench] building the {shape} world ...", file=sys.stderr, flush=True)
                worlds[shape] = build_world(os.path.join(root, shape), shape=shape)
            world = worlds[shape]
            provs = [p for p in providers if p in only.get(wl, providers)]
            runs = {p: [] for p in provs}
            for r in range(args.rounds):
                for p in provs:
                    if p in missing:
                        continue
                    print(f"[bench] {wl} {p} round {r + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
                    runs[p].append(run_one(world, p, wl, args.warmup, steps, workload_spec(wl, dtype=dtype_of(wl, args.dtype))))
            results[wl] = {p: ({"error": missing[p]} if p in missing else {**summarize(runs[p]), "runs": runs[p]})
                           for p in provs}
            if scan and WORKLOADS[wl]["kind"] == "dpo" and WORKLOADS[wl]["shape"] == "real":
                scans[wl] = {}
                for p in provs:
                    if p in missing or "error" in results[wl][p]:
                        continue
                    key = "step_peak_rss_mb" if "step_peak_rss_mb" in results[wl][p] else "peak_rss_mb"
                    pts = [(WORKLOADS[wl]["hp"]["pairs_per_step"], results[wl][p][key])]
                    extra = []
                    for k in scan:
                        print(f"[bench] {wl} {p} memory scan at {k} pairs ...", file=sys.stderr, flush=True)
                        res = run_one(world, p, wl, 0, 2, workload_spec(wl, pairs=k))
                        extra.append({"pairs": k, **{x: res.get(x) for x in ("peak_rss_mb", "step_peak_rss_mb",
                                                                              "step_mem_mb", "error")}})
                        if "error" not in res:
                            pts.append((k, res.get(key) or res["peak_rss_mb"]))
                    scans[wl][p] = {**fit_largest_batch(pts, MEMORY_BUDGET_GIB * 1024), "scan_runs": extra}
    if with_roofline:
        print("[bench] measuring the machine's rates again ...", file=sys.stderr, flush=True)
        rates_after = roofline.measure_rates()
    load_after = load_average()
    rates = roofline.best_rates(rates_before, rates_after) if with_roofline else None
    rooflines = roofline.workload_rooflines({w: results[w] for w in with_roofline}, rates) if with_roofline else {}
    report = {"machine": machine(), "load_average_before": load_before, "load_average_after": load_after,
              "versions": package_versions(), "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "workloads": {w: WORKLOADS[w] for w in workloads},
              "dtypes": {w: dtype_of(w, args.dtype) for w in workloads},  # the weights of both providers
              "models": {"small": MODEL_ARCH, "real": dict(REAL_ARCH, vocab_size=REAL_VOCAB)}, "lora": LORA,
              "rows": N_ROWS,
              "settings": {"rounds": args.rounds, "warmup": args.warmup, "steps": steps,
                           "torch_threads": int(threads) or "default"}, "results": results,
              "largest_dpo_batch": scans,
              "ratios": ratios(results), "ratios_vs_naive_logprobs": ratios(results, "prefopt-naive"),
              "ratios_vs_recompute": ratios(results, "prefopt-recompute"),
              "rates": {"before": rates_before, "after": rates_after, "bounds": rates}, "roofline": rooflines}
    with files.atomic_open(args.out) as f:
        json.dump(report, f, indent=1)
    print(table(report))
    if rates is not None:
        print("\n" + roofline.report_tables(rates, rooflines))
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
        if a.get("step_mem_mb") and b.get("step_mem_mb"):
            out[wl]["step_mem"] = a["step_mem_mb"] / b["step_mem_mb"]
        if "first_loss" in a and "first_loss" in b:
            out[wl]["first_loss_abs_diff"] = abs(a["first_loss"] - b["first_loss"])
    return out


def table(rep: dict) -> str:
    m = rep["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, torch CPU capability {m.get('cpu_capability')} (torch threads "
             f"per worker: {rep['settings']['torch_threads']}), no GPU; "
             f"load average before {rep['load_average_before']} after {rep['load_average_after']}",
             f"versions: {rep['versions']}",
             "weights (both providers): " + ", ".join(f"{w} {d}" for w, d in (rep.get("dtypes") or {}).items()), "",
             "| workload | provider | s/step (median) | of which generation | CPU s/step | real tokens/s | completions/s | "
             "peak RSS MB | step memory MB | first-step loss |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for wl, r in rep["results"].items():
        for p, s in r.items():
            if "error" in s:
                lines.append(f"| {wl} | {p} | {s['error']} | | | | | | | |")
                continue
            fl = f"{s['first_loss']:.6f}" if "first_loss" in s else ""
            gen = f"{s['gen_s_median']:.3f}" if "gen_s_median" in s else ""
            sm = f"{s['step_mem_mb']:.0f}" if "step_mem_mb" in s else ""
            lines.append(f"| {wl} | {p} | {s['step_s_median']:.3f} | {gen} | {s.get('cpu_s_per_step_median', float('nan')):.3f} | "
                         f"{s['tokens_per_s']:,.0f} | "
                         f"{s['completions_per_s']:.1f} | {s['peak_rss_mb']:.0f} | {sm} | {fl} |")
        for key, name in (("ratios", "prefopt/TRL"), ("ratios_vs_naive_logprobs", "prefopt/naive log-probs"),
                          ("ratios_vs_recompute", "prefopt/recompute backward")):
            q = rep.get(key, {}).get(wl)
            if q:
                extra = f" Δloss {q['first_loss_abs_diff']:.1e}" if "first_loss_abs_diff" in q else ""
                sm = f"×{q['step_mem']:.2f}" if "step_mem" in q else ""
                lines.append(f"| {wl} | {name} | ×{1 / q['step_time']:.2f} faster | | | ×{q['tokens_per_s']:.2f} | "
                             f"×{q['completions_per_s']:.2f} | ×{q['peak_rss']:.2f} | {sm} |{extra} |")
    for wl, per in rep.get("largest_dpo_batch", {}).items():
        for p, f in per.items():
            pts = ", ".join(f"{k} pairs: {mb:,.0f} MB" for k, mb in f["points"])
            if "largest_pairs" in f:
                lines.append(f"\n{wl} {p}: largest batch within {f['budget_mb'] / 1024:g} GiB ≈ {f['largest_pairs']} "
                             f"pairs per step (estimated: a line through the peak RSS measured during the steps, {pts}; "
                             f"{f['mb_per_pair']:,.0f} MB per pair)")
            else:
                lines.append(f"\n{wl} {p}: {f['error']} ({pts})")
    la = rep["load_average_before"]
    if la and la[0] > (m["cores"] or 1):
        lines.append(f"\nnote: the 1-minute load average ({la[0]}) exceeds the core count ({m['cores']}): other processes "
                     "shared the CPU; the alternating runs share that noise, absolute times do not generalize.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
