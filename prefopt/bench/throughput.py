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

# A real checkpoint's shape: Qwen2.5-0.5B (hidden 896, intermediate 4864, 14 query / 2 key-value heads,
# 151,936-token vocabulary, tied embeddings) with 2 of its 24 decoder layers, so that a CPU run finishes;
# the [tokens × vocab] logits are then the largest tensors of a step, as with the real model.
REAL_VOCAB = 151_936
REAL_ARCH = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=2,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=512,
                 tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=1_000_000.0)
# LoRA on every linear layer of the decoder; embeddings (= the tied head) frozen.
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
REAL_DPO = dict(pairs_per_step=4, max_length=128, beta=0.1, lr=1e-5)
REAL_GRPO = dict(prompts_per_step=2, samples_per_prompt=4, max_new_tokens=32, temperature=1.0, lr=1e-5)

# name -> what a worker runs: the objective's kind, the world's shape, LoRA or full parameters, the
# hyperparameters; device/dtype default to CPU/fp32 (gpu-check runs the same workers on CUDA in bf16).
WORKLOADS = {
    "dpo": dict(kind="dpo", shape="small", lora=False, hp=DPO),
    "grpo": dict(kind="grpo", shape="small", lora=False, hp=GRPO),
    "real-dpo-lora": dict(kind="dpo", shape="real", lora=True, hp=REAL_DPO),
    "real-grpo-lora": dict(kind="grpo", shape="real", lora=True, hp=REAL_GRPO),
    "real-dpo-full": dict(kind="dpo", shape="real", lora=False, hp=REAL_DPO),
}
ALIASES = {"real": "real-dpo-lora,real-grpo-lora,real-dpo-full"}
MEMORY_BUDGET_GIB = 16.0  # the "largest DPO batch that fits" column


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


def _big_words(n: int) -> list:
    """``n`` distinct lower-case three-syllable words (a word-level vocabulary of a real model's size)."""
    syl = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]  # 90 syllables, 729,000 words
    rng = random.Random(0)
    picked = set()
    while len(picked) < n:
        picked.add(rng.choice(syl) + rng.choice(syl) + rng.choice(syl))
    return sorted(picked)


def build_world(root: str, seed: int = 0, n_rows: int = N_ROWS, shape: str = "small", arch: dict = None,
                vocab: int = None) -> dict:
    """Tokenizer, model weights and rows under ``root``; returns the paths.

    ``shape="small"``: the 510-token testbed-like world; ``"real"``: Qwen2.5-0.5B's shapes with 2
    layers, and a word-level tokenizer of exactly 151,936 ids (so that every id a randomly initialized
    model samples decodes to a word), the rows' words drawn uniformly from all of it. ``arch``/``vocab`` replace the real
    shape's (gpu-check: all 24 layers; its dry run: a tiny model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from prefopt.testbed.tokenizer import build_tokenizer

    if shape == "real":
        vocab = vocab or REAL_VOCAB
        words = _big_words(vocab - 16)  # + 6 special tokens + 10 digits
        arch = dict(arch or REAL_ARCH)
    else:
        words = _words(VOCAB_WORDS)
        arch = dict(arch or MODEL_ARCH)
    tok = build_tokenizer(words)
    if shape == "real":
        assert len(tok) == vocab, len(tok)
    tok_dir = os.path.join(root, "tokenizer")
    tok.save_pretrained(tok_dir)
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
    return {"tokenizer": tok_dir, "model": model_dir, "rows": data, "shape": shape}


def _load_world(world: dict, dtype: str = "float32", device: str = "cpu"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world["tokenizer"])
    model = AutoModelForCausalLM.from_pretrained(world["model"], dtype=getattr(torch, dtype),
                                                 attn_implementation="sdpa").to(device)
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


def lora_config():
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **LORA)


def perturb_lora(model, seed: int = 2, std: float = 0.05):
    """Give the adapters (both providers, the same draw, by sorted name) values away from peft's
    B = 0 initialization, so that policy ≠ reference and the first-step loss is not log 2."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name:
                p.copy_((torch.randn(p.shape, generator=g) * std).to(p.dtype))
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
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_now_mb() -> float:
    """Current resident memory (MB): the baseline of "step memory" = peak − RSS before the first step."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def _reset_peak_rss() -> bool:
    """Reset this process's resident high-water mark (Linux ≥ 4.0: "5" into /proc/self/clear_refs), so
    that the peak after it is the steps' own and not the model loading's (which on a real-shape world
    briefly holds the checkpoint and the model at once and can exceed a LoRA step)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm_mb() -> float:
    """Resident high-water mark since the last :func:`_reset_peak_rss` (MB), from /proc/self/status."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


def _device_memory(device: str) -> dict:
    import torch

    if device.startswith("cuda"):
        return {"peak_device_mb": torch.cuda.max_memory_allocated() / 2**20}
    return {}


def _torch_setup():
    import torch

    threads = int(os.environ.get("PREFOPT_BENCH_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch


# ---- prefopt workers ---------------------------------------------------------------------------

def _timed_steps(tr, warmup: int, steps: int, device: str = "cpu") -> dict:
    """Wall and CPU time, real tokens and (online workloads) generation time of each step after
    ``warmup``, each step timed end to end (batch building, generation, forward, backward, optimizer)."""
    out = {"step_s": [], "cpu_s": [], "tokens": [], "gen_s": []}
    for k in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        row = tr.train_step()
        _cuda_sync(device)
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


def _trainer_cfg(lr: float, steps: int, per_step: int = DPO["pairs_per_step"], bf16: bool = False):
    from prefopt.core.config import TrainerConfig

    return TrainerConfig(max_steps=steps, lr=lr, lr_schedule="constant", max_grad_norm=1.0, progress=False,
                         weight_decay=0.0, examples_per_step=per_step, examples_per_device=per_step)


def _cuda_sync(device: str):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prefopt_dpo(world: dict, warmup: int, steps: int, spec: dict) -> dict:
    torch = _torch_setup()
    import copy
    from functools import partial

    from prefopt.data.formats import collate
    from prefopt.models.logprobs import Scorer
    from prefopt.models.load import AdapterDisabledReference, FrozenReference
    from prefopt.objectives.dpo import DPO as DPOObjective
    from prefopt.core.trainer import OfflineSource, Trainer

    hp, dev = spec["hp"], spec.get("device", "cpu")
    tok, model, rows = _load_world(world, spec.get("dtype", "float32"), dev)
    examples = tokenize_pairs(tok, rows)
    if spec["lora"]:
        from peft import get_peft_model

        model = perturb_lora(get_peft_model(model, lora_config()))
        reference = AdapterDisabledReference(model)  # one copy in memory: the base with adapters off
    else:
        reference = FrozenReference(copy.deepcopy(model))
        perturb(model)
    obj = DPOObjective(DPOObjective.Config(beta=hp["beta"]))
    coll = partial(collate, kind="paired", pad_token_id=tok.pad_token_id)
    n = hp["pairs_per_step"]
    model.train()
    with torch.no_grad():
        loss0, _ = obj.loss({k: (v.to(dev) if hasattr(v, "to") else v) for k, v in coll(examples[:n]).items()},
                            Scorer(model, reference))
    first_loss = float(loss0) / n
    src = OfflineSource(examples, coll, n, n, seed=0)
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(objective=obj, policy=model, reference=reference, source=src,
                     cfg=_trainer_cfg(hp["lr"], warmup + steps, n), out_dir=out, total_steps=warmup + steps,
                     device=torch.device(dev))
        _cuda_sync(dev)
        rss0 = _rss_now_mb()
        reset = _reset_peak_rss()
        res = _timed_steps(tr, warmup, steps, dev)
        res["step_peak_rss_mb"] = _hwm_mb() if reset else float("nan")
    return {**res, "completions": [2 * n] * steps, "first_loss": first_loss, "rss_before_first_step_mb": rss0}


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


def prefopt_grpo(world: dict, warmup: int, steps: int, spec: dict) -> dict:
    torch = _torch_setup()
    from prefopt.rollout.source import RolloutSource
    from prefopt.objectives.registry import get_objective
    from prefopt.rollout.sampler import HFSampler
    from prefopt.core.trainer import Trainer

    G, dev = spec["hp"], spec.get("device", "cpu")
    tok, model, rows = _load_world(world, spec.get("dtype", "float32"), dev)
    if spec["lora"]:
        from peft import get_peft_model

        model = perturb_lora(get_peft_model(model, lora_config()))
    n = G["prompts_per_step"] * G["samples_per_prompt"]
    cls = get_objective("grpo")
    obj = cls(cls.Config(prompts_per_step=G["prompts_per_step"], samples_per_prompt=G["samples_per_prompt"],
                         sequences_per_device=n, max_new_tokens=G["max_new_tokens"], temperature=G["temperature"],
                         kl_coef=0.0, loss_agg="token-mean"))
    src = RolloutSource(examples=_prompt_examples(tok, rows), objective=obj, policy=model, reward=_BenchReward(),
                        sampler=HFSampler(tok.pad_token_id, tok.eos_token_id), tokenizer=tok,
                        max_new_tokens=G["max_new_tokens"], seed=0)
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(objective=obj, policy=model, reference=None, source=src,
                     cfg=_trainer_cfg(G["lr"], warmup + steps, G["prompts_per_step"]), out_dir=out,
                     total_steps=warmup + steps, temperature=G["temperature"], device=torch.device(dev))
        _cuda_sync(dev)
        rss0 = _rss_now_mb()
        reset = _reset_peak_rss()
        res = _timed_steps(tr, warmup, steps, dev)
        res["step_peak_rss_mb"] = _hwm_mb() if reset else float("nan")
    return {**res, "completions": [n] * steps, "rss_before_first_step_mb": rss0}


# ---- TRL workers -------------------------------------------------------------------------------

def _trl_args(cls, out: str, lr: float, steps: int, spec: dict = None, **kw):
    spec = spec or {}
    cuda = spec.get("device", "cpu").startswith("cuda")
    return cls(output_dir=out, max_steps=steps, learning_rate=lr, lr_scheduler_type="constant", max_grad_norm=1.0,
               weight_decay=0.0, logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=not cuda,
               bf16=spec.get("dtype") == "bfloat16", fp16=False, seed=0, dataloader_num_workers=0, disable_tqdm=True,
               gradient_checkpointing=False, **kw)


def _step_timer(device: str = "cpu"):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Wall time between consecutive optimizer-step ends: everything a step costs."""

        def __init__(self):
            self.cuda = device.startswith("cuda")
            self.rss0 = self.hwm = float("nan")
            self.reset = False
            self.ends, self.cpu, self.gen = [], [], []
            self.gen_total = 0.0  # seconds inside model.generate so far (see _time_generate)

        def on_train_begin(self, args, state, control, **kw):
            self.rss0 = _rss_now_mb()
            self.reset = _reset_peak_rss()
            self.ends.append(time.perf_counter())
            self.cpu.append(time.process_time())
            self.gen.append(self.gen_total)

        def on_step_end(self, args, state, control, **kw):
            if self.cuda:
                import torch

                torch.cuda.synchronize()
            self.hwm = _hwm_mb() if self.reset else float("nan")
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


def trl_dpo(world: dict, warmup: int, steps: int, spec: dict) -> dict:
    torch = _torch_setup()
    import copy

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    hp, dev = spec["hp"], spec.get("device", "cpu")
    tok, model, rows = _load_world(world, spec.get("dtype", "float32"), dev)
    n = hp["pairs_per_step"]
    kw = {}
    if spec["lora"]:
        # TRL wraps the model with the same LoraConfig; without a ref_model its reference is the base with
        # the adapters disabled, as prefopt's
        ref, kw["peft_config"] = None, lora_config()
    else:
        ref = copy.deepcopy(model)
        perturb(model)
    with tempfile.TemporaryDirectory() as out:
        args = _trl_args(DPOConfig, out, hp["lr"], warmup + steps, spec, per_device_train_batch_size=n,
                         beta=hp["beta"], max_length=hp["max_length"], precompute_ref_log_probs=False)
        tr = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                        processing_class=tok, **kw)
        if spec["lora"]:
            perturb_lora(tr.model)
        first = [tr.train_dataset[i] for i in range(n)]
        tr.model.train()
        with torch.no_grad():
            batch = {k: (v.to(dev) if hasattr(v, "to") else v) for k, v in tr.data_collator(first).items()}
            first_loss = float(tr.compute_loss(tr.model, batch))
        timer = _step_timer(dev)
        tr.add_callback(timer)
        counts = _count_tokens(tr)
        tr.train()
    dts = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    cpu = [b - a for a, b in zip(timer.cpu, timer.cpu[1:])]
    return {"step_s": dts[warmup:], "cpu_s": cpu[warmup:], "tokens": counts[warmup:], "completions": [2 * n] * steps,
            "first_loss": first_loss, "rss_before_first_step_mb": timer.rss0, "step_peak_rss_mb": timer.hwm}


def trl_grpo(world: dict, warmup: int, steps: int, spec: dict) -> dict:
    _torch_setup()
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    G, dev = spec["hp"], spec.get("device", "cpu")
    tok, model, rows = _load_world(world, spec.get("dtype", "float32"), dev)
    n = G["prompts_per_step"] * G["samples_per_prompt"]

    def reward(completions, **kw):
        return cheap_reward(completions)

    kw = {"peft_config": lora_config()} if spec["lora"] else {}
    with tempfile.TemporaryDirectory() as out:
        args = _trl_args(GRPOConfig, out, G["lr"], warmup + steps, spec, per_device_train_batch_size=n,
                         num_generations=G["samples_per_prompt"], max_completion_length=G["max_new_tokens"],
                         temperature=G["temperature"], beta=0.0, top_k=0, top_p=1.0)
        tr = GRPOTrainer(model=model, reward_funcs=reward, args=args,
                         train_dataset=Dataset.from_list([{"prompt": r["prompt"]} for r in rows]), processing_class=tok,
                         **kw)
        if spec["lora"]:
            perturb_lora(tr.model)
        timer = _step_timer(dev)
        tr.add_callback(timer)
        _time_generate(tr.model, timer)
        counts = _count_tokens(tr)
        tr.train()
    dts = [b - a for a, b in zip(timer.ends, timer.ends[1:])]
    cpu = [b - a for a, b in zip(timer.cpu, timer.cpu[1:])]
    gen = [b - a for a, b in zip(timer.gen, timer.gen[1:])]
    return {"step_s": dts[warmup:], "cpu_s": cpu[warmup:], "tokens": counts[warmup:], "completions": [n] * steps,
            "gen_s": gen[warmup:], "rss_before_first_step_mb": timer.rss0, "step_peak_rss_mb": timer.hwm}


WORKERS = {("prefopt", "dpo"): prefopt_dpo, ("trl", "dpo"): trl_dpo,
           ("prefopt", "grpo"): prefopt_grpo, ("trl", "grpo"): trl_grpo}


def workload_spec(name: str, pairs: int = 0, device: str = "cpu", dtype: str = "float32") -> dict:
    spec = dict(WORKLOADS[name], device=device, dtype=dtype)
    if pairs:
        spec["hp"] = dict(spec["hp"], pairs_per_step=pairs)
    return spec


def _worker(args):
    world = json.loads(args.world)
    spec = json.loads(args.spec) if args.spec else workload_spec(args.workload)
    fn = WORKERS[(args.provider, spec["kind"])]
    res = fn(world, args.warmup, args.steps, spec)
    res["peak_rss_mb"] = _rss_mb()
    # what the steps add: their own high-water mark (reset just before the first step) minus the RSS then;
    # without the reset (not Linux) the process's lifetime peak, which may be the model loading's
    step_peak = res.get("step_peak_rss_mb", float("nan"))
    if step_peak != step_peak:
        step_peak = res["peak_rss_mb"]
    res["step_mem_mb"] = step_peak - res.get("rss_before_first_step_mb", float("nan"))
    res.update(_device_memory(spec.get("device", "cpu")))
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
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
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


def run_one(world: dict, provider: str, workload: str, warmup: int, steps: int, spec: dict = None,
            timeout: float = None) -> dict:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1", PYTHONWARNINGS="ignore")
    if provider == "prefopt-naive":
        # prefopt with log-probs from materialized logits: the trainer before the fused op.
        provider, env["PREFOPT_LOGPROBS_IMPL"] = "prefopt", "naive"
    elif provider == "prefopt-recompute":
        # the fused op without the Jacobian-in-forward route: its backward recomputes the logit tiles
        provider, env["PREFOPT_KERNELS_HIDDEN_GRAD"] = "prefopt", "recompute"
    cmd = [sys.executable, "-m", "prefopt.bench.throughput", "--worker", "--provider", provider, "--workload", workload,
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
                                        "(prefopt/bench/memory.py)")
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
    ap.add_argument("--threads", default="auto",
                    help="torch threads per worker (both providers alike); auto: 1 when the 1-minute load average "
                         "exceeds the core count (oversubscribed OpenMP threads stall each other), else torch's default")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--provider", help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    ap.add_argument("--world", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)
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
                    runs[p].append(run_one(world, p, wl, args.warmup, steps))
            results[wl] = {p: ({"error": missing[p]} if p in missing else {**_summ(runs[p]), "runs": runs[p]})
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
    load_after = load_average()
    report = {"machine": machine(), "load_average_before": load_before, "load_average_after": load_after,
              "versions": _versions(), "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
              "workloads": {w: WORKLOADS[w] for w in workloads},
              "models": {"small": MODEL_ARCH, "real": dict(REAL_ARCH, vocab_size=REAL_VOCAB)}, "lora": LORA,
              "rows": N_ROWS,
              "settings": {"rounds": args.rounds, "warmup": args.warmup, "steps": steps,
                           "torch_threads": int(threads) or "default"}, "results": results,
              "largest_dpo_batch": scans,
              "ratios": ratios(results), "ratios_vs_naive_logprobs": ratios(results, "prefopt-naive"),
              "ratios_vs_recompute": ratios(results, "prefopt-recompute")}
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
             f"versions: {rep['versions']}", "",
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
