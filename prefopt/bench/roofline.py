"""Roofline of the real-model workloads: the machine's rates, measured in the same run, against what
each phase of a training step does. ``python -m prefopt.bench roofline`` measures the rates alone.

**Machine rates** (at the workloads' thread count, ``torch.get_num_threads()``; best of a few repeats):

- GEMM rate R_dtype = 2·m·k·n / t for ``torch.matmul`` of [m, k]·[k, n] at SmolLM2-135M's shapes
  (m = 512 tokens; k, n from hidden 576, intermediate 1536, vocabulary 49,152), in fp32 and bf16;
  the bound is the best shape's rate. bf16 is native only where the CPU has AVX512_BF16 or AMX
  (``/proc/cpuinfo`` flags ``avx512_bf16`` / ``amx_bf16``; torch's own check recorded beside them);
  elsewhere torch emulates it and the bf16 rate is no bound worth reaching.
- Bandwidth BW = 2·S / t for ``b.copy_(a)`` of S bytes (S ≫ L3, 256 MiB by default): STREAM's copy,
  counting each byte read and written once (write-allocate traffic is not counted, as in STREAM).

**Model** (a Llama-style config: L layers, hidden d, intermediate I, H query / H_kv key-value heads of
size h, vocabulary V; LoRA rank r on target linears ℓ: in_ℓ → out_ℓ):

- matmul parameters of the decoder N_dec = L·(d·H·h + 2·d·H_kv·h + H·h·d + 3·d·I); head N_head = d·V
  (tied or not, the head is a matmul; the embedding lookup is not); N_lora = L·Σ_ℓ r·(in_ℓ + out_ℓ).
- A pass over *items* (a trunk of P tokens with branches b_j, :mod:`prefopt.models.packing`: a DPO pair
  is its prompt once plus both completions) computes T = Σ (P + Σ_j b_j) token positions and
  A = Σ [P(P+1)/2 + Σ_j (b_j·P + b_j(b_j+1)/2)] causal (query, key) pairs; the head runs only at the
  S scored positions (the fused log-prob op). Forward FLOPs
  F_fwd = 2·(N_dec + N_lora)·T + 4·H·h·L·A + 2·d·V·S   (QKᵀ and AV: 2·H·h each per pair and layer).
  Useful work only: padding and masked attention pairs are not counted, nor a DPO pair's second copy
  of its prompt (the scorer packs it once); a group's K samples are K sequences, as the scorer runs them.
- Backward rule. Full fine-tuning: F_bwd = 2·F_fwd (input and weight gradients), so fwd+bwd = 3·F_fwd.
  LoRA (base and head frozen): a frozen linear's backward is its input gradient only, 1× its forward;
  LoRA's linears and attention's two products (no weights: both operands need gradients) are 2×:
  F_bwd = 2·N_dec·T + 2·(2·N_lora·T) + 2·(4·H·h·L·A) + 2·d·V·S, so fwd+bwd ≈ 2·F_fwd plus the LoRA
  and attention terms. The input gradient is counted at every layer, also the first (needed there only
  for LoRA's own gradients): an overcount below 1/L of the base term. Work that an implementation adds
  (recomputation, the fused op's Jacobian computed in the forward) is not counted: it lowers the fraction.
- Generation of a call with prompts P_i, K samples each, completion lengths c_s: the prefill is the
  forward over the distinct prompts (shared by each prompt's K samples; head at each prompt's last
  position); decode step j = 1 … max(c) − 1 feeds one token per sequence still going (c_s − 1 ≥ j) at
  context P_s + j: F_j = Σ_s [2·(N_dec + N_lora) + 4·H·h·L·(P_s + j) + 2·d·V] and bytes
  B_j = (N_dec + N_lora + N_head)·e_w + Σ_s 2·L·H_kv·h·(P_s + j)·e_kv: every weight once per step at
  its element size e_w, plus each sequence's K and V cache read at e_kv (the compute dtype's).
- Optimizer (AdamW, one fused pass): reads parameter, gradient and both moments, writes parameter and
  moments: B = 7·n_trainable·e_w.

**Phase rows** (times from :mod:`prefopt.bench.phases`, summed over every measured step):
achieved FLOP/s = F / t and bytes/s = B / t; fraction of the GEMM bound = (F / t) / R; of the
bandwidth = (B / t) / BW; each pass's lower bound is max(F / R, B / BW) (training passes: F / R, as
their bytes are a small part; the optimizer: B / BW) and a phase's fraction of its bound is
Σ bounds / t. R is the bf16 rate where the run computed in bf16 (autocast or bf16 weights), else fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional

# SmolLM2-135M's GEMMs in a pass over 512 tokens: q/o projection, gate/up, down, the output head.
SMOL_SHAPES = ((512, 576, 576), (512, 576, 1536), (512, 1536, 576), (512, 576, 49152))
COPY_MIB = 256
EMULATED_MAX_FLOP = 2e9  # bf16 shapes measured where the CPU has no native bf16
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
PHASE_LABELS = {"generation": "generation (prefill + decode)", "logprob": "log-prob passes (no grad)",
                "loss": "loss forward + backward", "optimizer": "optimizer step", "other": "other", "step": "step"}


# ---- machine rates -----------------------------------------------------------------------------

def cpu_flags() -> dict:
    """The bf16 flags of /proc/cpuinfo, torch's CPU capability and its own bf16 checks."""
    import torch

    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    out = {f: f in flags for f in BF16_FLAGS}
    out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    for name, fn in (("torch_avx512_bf16", "_is_avx512_bf16_supported"), ("torch_amx_tile", "_is_amx_tile_supported")):
        try:
            out[name] = bool(getattr(torch.cpu, fn)())
        except (AttributeError, RuntimeError):
            out[name] = None
    out["native_bf16"] = any(out[f] for f in BF16_FLAGS)
    return out


def l3_bytes() -> Optional[int]:
    """Size of the L3 cache cpu0 sees (Linux sysfs), or None."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            s = f.read().strip().upper()
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(s[-1], 1)
        return int(s.rstrip("KMG")) * mult
    except (OSError, ValueError):
        return None


def gemm_gflop_per_s(dtype: str = "float32", shapes=SMOL_SHAPES, repeats: int = 3, budget_s: float = 2.0) -> dict:
    """Best-of-``repeats`` rate 2·m·k·n / t of ``torch.matmul`` per [m, k]·[k, n] shape, GFLOP/s; a shape
    stops repeating once it has spent ``budget_s`` (a slow machine still answers in seconds)."""
    import torch

    dt = getattr(torch, dtype)
    rows = []
    for m, k, n in shapes:
        a, b = torch.randn(m, k).to(dt), torch.randn(k, n).to(dt)
        out = torch.empty(m, n, dtype=dt)
        start = time.perf_counter()
        torch.matmul(a, b, out=out)  # warm-up: the library's first call allocates and picks kernels
        best, done = math.inf, 0
        while done < max(1, repeats) and (done == 0 or time.perf_counter() - start < budget_s):
            t0 = time.perf_counter()
            torch.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
            done += 1
        rows.append({"m": m, "k": k, "n": n, "gflop_per_s": 2 * m * k * n / best / 1e9, "repeats": done})
    return {"dtype": dtype, "shapes": rows, "best_gflop_per_s": max(r["gflop_per_s"] for r in rows)}


def copy_bytes_per_s(mib: float = COPY_MIB, repeats: int = 5) -> dict:
    """STREAM-style copy ``b.copy_(a)`` of ``mib`` MiB fp32 tensors: best of ``repeats``, 2·bytes / t."""
    import torch

    n = max(1, int(mib * 2**20) // 4)
    a = torch.ones(n)  # written once, so every page is resident before timing
    b = torch.zeros(n)
    b.copy_(a)
    best = math.inf
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - t0)
    nbytes = 4 * n
    l3 = l3_bytes()
    return {"tensor_bytes": nbytes, "bytes_per_s": 2 * nbytes / best, "repeats": repeats, "l3_bytes": l3,
            "tensor_over_l3": (nbytes / l3) if l3 else None}


def measure_rates(shapes=SMOL_SHAPES, copy_mib: float = COPY_MIB, repeats: int = 3,
                  dtypes=("float32", "bfloat16")) -> dict:
    """The machine's rates at this process's torch thread count."""
    import torch

    t0 = time.perf_counter()
    cpu = cpu_flags()
    gemm = {}
    for d in dtypes:
        sh = shapes
        if d == "bfloat16" and not cpu["native_bf16"]:
            # emulated bf16 runs far below fp32: the small shapes say so without a long wait
            sh = tuple(s for s in shapes if 2 * s[0] * s[1] * s[2] <= EMULATED_MAX_FLOP) or shapes[:1]
        gemm[d] = dict(gemm_gflop_per_s(d, sh, repeats), native=d != "bfloat16" or cpu["native_bf16"])
    out = {"torch_threads": torch.get_num_threads(), "cpu": cpu, "gemm": gemm,
           "copy": copy_bytes_per_s(copy_mib, max(repeats, 3))}
    out["seconds"] = time.perf_counter() - t0
    return out


def best_rates(*measurements: dict) -> dict:
    """One set of bounds from several measurements of the same run (before and after the workloads):
    the best rate of each, as a loaded machine only ever lowers a rate."""
    ms = [m for m in measurements if m]
    best = json.loads(json.dumps(ms[0]))
    for m in ms[1:]:
        for d, g in m["gemm"].items():
            if d in best["gemm"] and g["best_gflop_per_s"] > best["gemm"][d]["best_gflop_per_s"]:
                best["gemm"][d] = g
        if m["copy"]["bytes_per_s"] > best["copy"]["bytes_per_s"]:
            best["copy"] = m["copy"]
    return best


# ---- the model's counts ------------------------------------------------------------------------

@dataclass
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    lora_r: int = 0
    lora_targets: tuple = ()

    @classmethod
    def from_config(cls, cfg: dict, lora: Optional[dict] = None) -> "ModelShape":
        """From a transformers config dict (Llama, Qwen2, Mistral: the same fields)."""
        heads = cfg["num_attention_heads"]
        return cls(layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"], intermediate=cfg["intermediate_size"],
                   heads=heads, kv_heads=cfg.get("num_key_value_heads") or heads,
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads, vocab=cfg["vocab_size"],
                   tied=bool(cfg.get("tie_word_embeddings", False)),
                   lora_r=int(lora["r"]) if lora else 0, lora_targets=tuple(lora["target_modules"]) if lora else ())

    def linears(self) -> dict:
        """(in, out) of each decoder linear."""
        d, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                "gate_proj": (d, i), "up_proj": (d, i), "down_proj": (i, d)}

    @property
    def decoder_matmul_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linears().values())

    @property
    def head_params(self) -> int:
        return self.hidden * self.vocab

    @property
    def lora_params(self) -> int:
        lin = self.linears()
        return self.layers * sum(self.lora_r * sum(lin[t]) for t in self.lora_targets)

    def kv_elements_per_token(self) -> int:
        """K and V cache entries one token adds across the layers: 2·L·H_kv·h."""
        return 2 * self.layers * self.kv_heads * self.head_dim


def attention_pairs(items: list) -> int:
    """Causal (query, key) pairs of a pass: A = Σ [P(P+1)/2 + Σ_j (b_j·P + b_j(b_j+1)/2)]."""
    total = 0
    for P, branches in items:
        total += P * (P + 1) // 2 + sum(b * P + b * (b + 1) // 2 for b in branches)
    return total


def pass_flops(shape: ModelShape, items: list, scored: int, train: Optional[str] = None) -> dict:
    """FLOPs of one forward over ``items`` with the head at ``scored`` positions; with ``train``
    ("lora" or "full") also the backward by the rule in the module docstring."""
    T = sum(P + sum(br) for P, br in items)
    lin = 2 * shape.decoder_matmul_params * T
    lora = 2 * shape.lora_params * T
    attn = 4 * shape.heads * shape.head_dim * shape.layers * attention_pairs(items)
    head = 2 * shape.head_params * scored
    out = {"tokens": T, "forward": lin + lora + attn + head}
    if train == "full":
        out["backward"] = 2 * out["forward"]
    elif train == "lora":
        out["backward"] = lin + 2 * lora + 2 * attn + head
    elif train is not None:
        raise ValueError(f"train={train!r}: accepted 'lora', 'full' or None")
    return out


def weight_bytes(shape: ModelShape, weight_bytes_per_element: int) -> int:
    """Bytes of the matmul weights (decoder, LoRA, head) read once: a decode step's weight traffic."""
    return (shape.decoder_matmul_params + shape.lora_params + shape.head_params) * weight_bytes_per_element


def generation_passes(shape: ModelShape, call: dict, weight_bytes_per_element: int, kv_bytes_per_element: int) -> list:
    """(FLOPs, bytes) of each pass of one sampling call: the prefill, then every decode step."""
    prompts, K, comps = call["prompts"], call["samples_per_prompt"], call["completions"]
    w = weight_bytes(shape, weight_bytes_per_element)
    passes = [(pass_flops(shape, [[P, []] for P in prompts], len(prompts))["forward"], w)]
    ctx0 = [prompts[s // K] for s in range(len(comps))]
    per_token = 2 * (shape.decoder_matmul_params + shape.lora_params) + 2 * shape.head_params
    attn = 4 * shape.heads * shape.head_dim * shape.layers
    kv = shape.kv_elements_per_token() * kv_bytes_per_element
    for j in range(1, max(comps, default=0)):
        live = [P + j for P, c in zip(ctx0, comps) if c - 1 >= j]
        keys = sum(live)
        passes.append((len(live) * per_token + attn * keys, w + kv * keys))
    return passes


# ---- phases against the bounds -----------------------------------------------------------------

def _row(phase: str, t: float, steps: int, step_s: float, flops: float = None, nbytes: float = None,
         bound_s: float = None, gemm: float = None, bw: float = None, **extra) -> dict:
    """One phase: time per step, share of the step, achieved rates, their fractions of the bounds."""
    r = {"phase": phase, "s_per_step": t / steps, "share": t / step_s if step_s > 0 else float("nan")}
    if flops is not None:
        r["gflop_per_step"] = flops / steps / 1e9
        r["gflop_per_s"] = flops / t / 1e9 if t > 0 else float("nan")
        r["gemm_fraction"] = fraction(flops / t if t > 0 else float("nan"), gemm)
    if nbytes is not None:
        r["gbyte_per_step"] = nbytes / steps / 1e9
        r["gbyte_per_s"] = nbytes / t / 1e9 if t > 0 else float("nan")
        r["bandwidth_fraction"] = fraction(nbytes / t if t > 0 else float("nan"), bw)
    if bound_s is not None:
        r["bound_s_per_step"] = bound_s / steps
        r["bound_fraction"] = fraction(bound_s, t)
    r.update(extra)
    return r


def fraction(achieved: float, bound: float) -> float:
    """achieved / bound; NaN when either is missing or the bound is not positive."""
    if achieved is None or bound is None or not bound > 0 or achieved != achieved:
        return float("nan")
    return achieved / bound


def phase_roofline(ph: dict, step_s: list, rates: dict) -> dict:
    """The roofline of one workload from its phases (a worker's ``phases``: the measured steps' phase
    times and work, the model's config, LoRA, dtypes, trainable parameters) and its steps' wall times."""
    from prefopt.bench.phases import totals

    shape = ModelShape.from_config(ph["model"], ph.get("lora"))
    train = "lora" if ph.get("lora") else "full"
    tot = totals(ph["steps"])
    s, work = tot["s"], tot["work"]
    n, step_total = len(step_s), sum(step_s)
    dtype = ph.get("compute_dtype", "float32")
    gemm_rate = rates["gemm"].get(dtype, rates["gemm"]["float32"])["best_gflop_per_s"] * 1e9
    bw = rates["copy"]["bytes_per_s"]
    e_w, e_kv = ph.get("weight_bytes_per_element", 4), ph.get("compute_bytes_per_element", 4)
    rows = []
    gen = work.get("generation", {}).get("calls", [])
    if gen or s.get("generation", 0.0) > 0:
        passes = [p for call in gen for p in generation_passes(shape, call, e_w, e_kv)]
        F, B = sum(f for f, _ in passes), sum(b for _, b in passes)
        mem_s = sum(b / bw for f, b in passes if b / bw >= f / gemm_rate)
        bound = sum(max(f / gemm_rate, b / bw) for f, b in passes)
        calls = max(1, len(gen))
        rows.append(_row("generation", s["generation"], n, step_total, F, B, bound, gemm_rate, bw,
                         bound_by="bandwidth" if mem_s >= bound / 2 else "GEMM",
                         decode_steps_per_call=(len(passes) - len(gen)) / calls,
                         sequences_per_call=sum(len(c["completions"]) for c in gen) / calls))
    lp = work.get("logprob")
    if lp or s.get("logprob", 0.0) > 0:
        F = pass_flops(shape, lp["items"], lp["scored"])["forward"] if lp else 0
        rows.append(_row("logprob", s["logprob"], n, step_total, F, None, F / gemm_rate, gemm_rate, bw, bound_by="GEMM"))
    loss = work.get("loss_forward")
    t_loss = s.get("loss_forward", 0.0) + s.get("loss_backward", 0.0)
    if loss or t_loss > 0:
        f = pass_flops(shape, loss["items"], loss["scored"], train) if loss else {"forward": 0, "backward": 0}
        F = f["forward"] + f["backward"]
        rows.append(_row("loss", t_loss, n, step_total, F, None, F / gemm_rate, gemm_rate, bw, bound_by="GEMM",
                         forward_s_per_step=s.get("loss_forward", 0.0) / n,
                         backward_s_per_step=s.get("loss_backward", 0.0) / n,
                         forward_gflop_per_step=f["forward"] / n / 1e9, backward_gflop_per_step=f["backward"] / n / 1e9,
                         tokens_per_step=(f.get("tokens", 0)) / n))
    if s.get("optimizer", 0.0) > 0:
        B = 7 * ph["trainable_params"] * e_w * n
        rows.append(_row("optimizer", s["optimizer"], n, step_total, None, B, B / bw, gemm_rate, bw, bound_by="bandwidth"))
    rest = step_total - sum(s.values())
    rows.append(_row("other", rest, n, step_total))
    rows.append(_row("step", step_total, n, step_total))
    return {"model": asdict(shape), "train": train, "compute_dtype": dtype, "steps": n,
            "gemm_bound_gflop_per_s": gemm_rate / 1e9, "bandwidth_gbyte_per_s": bw / 1e9,
            "weight_bytes_per_element": e_w, "kv_bytes_per_element": e_kv,
            "trainable_params": ph.get("trainable_params"), "rows": rows}


def workload_rooflines(results: dict, rates: dict, provider: str = "prefopt") -> dict:
    """``phase_roofline`` for every workload whose ``provider`` runs recorded phases (all rounds pooled)."""
    from prefopt.bench.phases import PHASES

    out = {}
    for wl, per in results.items():
        runs = [r for r in per.get(provider, {}).get("runs", []) if "error" not in r and r.get("phases")]
        if not runs:
            continue
        steps = [st for r in runs for st in r["phases"]["steps"]]
        step_s = [t for r in runs for t in r["step_s"]]
        ph = dict(runs[0]["phases"], steps=steps)
        try:
            out[wl] = phase_roofline(ph, step_s, rates)
        except (KeyError, ValueError, ZeroDivisionError) as e:
            out[wl] = {"error": f"{type(e).__name__}: {e}", "phases": list(PHASES)}
    return out


# ---- tables ------------------------------------------------------------------------------------

def _pct(x) -> str:
    return "" if x is None or x != x else f"{100 * x:.0f}%"


def _num(x, fmt: str) -> str:
    return "" if x is None or x != x else format(x, fmt)


def rates_table(rates: dict) -> str:
    c = rates["cpu"]
    lines = [f"machine rates at {rates['torch_threads']} torch thread(s), best of repeats, measured in "
             f"{rates.get('seconds', float('nan')):.1f} s; torch CPU capability {c['cpu_capability']}; "
             + ", ".join(f"{f} {'yes' if c[f] else 'no'}" for f in BF16_FLAGS)
             + f" (torch: avx512_bf16 {c.get('torch_avx512_bf16')}, AMX tiles {c.get('torch_amx_tile')})"
             + ("" if c["native_bf16"] else "; bf16 is emulated here, its rate is no bound"), "",
             "| rate | shape | value |", "|---|---|---|"]
    for d, g in rates["gemm"].items():
        for r in g["shapes"]:
            lines.append(f"| {d} GEMM | [{r['m']}, {r['k']}]·[{r['k']}, {r['n']}] | {r['gflop_per_s']:.1f} GFLOP/s |")
        lines.append(f"| **{d} GEMM bound** | best shape | **{g['best_gflop_per_s']:.1f} GFLOP/s** |")
    cp = rates["copy"]
    over = f", {cp['tensor_over_l3']:.1f}× L3" if cp.get("tensor_over_l3") else ""
    lines.append(f"| **copy bandwidth** (read + write) | {cp['tensor_bytes'] / 2**20:.0f} MiB fp32{over} | "
                 f"**{cp['bytes_per_s'] / 1e9:.1f} GB/s** |")
    return "\n".join(lines)


def roofline_table(name: str, rf: dict) -> str:
    if "error" in rf:
        return f"{name}: roofline not computed ({rf['error']})"
    head = (f"roofline of {name} (prefopt, {rf['train']} training, compute {rf['compute_dtype']}; "
            f"bounds: GEMM {rf['gemm_bound_gflop_per_s']:.1f} GFLOP/s, copy {rf['bandwidth_gbyte_per_s']:.1f} GB/s; "
            f"{rf['steps']} measured steps)")
    lines = [head, "",
             "| phase | s/step | share of step | GFLOP/step | GFLOP/s | of GEMM bound | GB/step | GB/s | of bandwidth | "
             "bound s/step | fraction of bound (by) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rf["rows"]:
        by = f" ({r['bound_by']})" if "bound_by" in r and "bound_fraction" in r else ""
        lines.append(f"| {PHASE_LABELS.get(r['phase'], r['phase'])} | {r['s_per_step']:.3f} | {_pct(r['share'])} | "
                     f"{_num(r.get('gflop_per_step'), '.2f')} | {_num(r.get('gflop_per_s'), '.1f')} | "
                     f"{_pct(r.get('gemm_fraction'))} | {_num(r.get('gbyte_per_step'), '.3f')} | "
                     f"{_num(r.get('gbyte_per_s'), '.1f')} | {_pct(r.get('bandwidth_fraction'))} | "
                     f"{_num(r.get('bound_s_per_step'), '.3f')} | {_pct(r.get('bound_fraction'))}{by} |")
    return "\n".join(lines)


def report_tables(rates: dict, rooflines: dict) -> str:
    parts = [rates_table(rates)] + [roofline_table(wl, rf) for wl, rf in rooflines.items()]
    return "\n\n".join(parts)


# ---- ``python -m prefopt.bench roofline`` ------------------------------------------------------

def _shape(s: str) -> tuple:
    m, k, n = (int(x) for x in s.lower().split("x"))
    return m, k, n


def main(argv=None):
    from prefopt.bench.host import load_average, machine
    from prefopt.core import files

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m prefopt.bench roofline",
                                 description="the machine's fp32/bf16 GEMM rates and copy bandwidth (the roofline's "
                                             "bounds); the throughput run on real-model workloads measures them too "
                                             "and adds the per-phase table")
    ap.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SMOL_SHAPES),
                    help="GEMM shapes MxKxN, comma-separated (default: SmolLM2-135M's at 512 tokens)")
    ap.add_argument("--copy-mib", type=float, default=COPY_MIB, help="bytes of each copied tensor, MiB (≫ L3)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="", help="also write the JSON here")
    args = ap.parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    load_before = load_average()
    rates = measure_rates(tuple(_shape(s) for s in args.shapes.split(",") if s), args.copy_mib, args.repeats,
                          tuple(d for d in args.dtypes.split(",") if d))
    report = {"machine": machine(), "load_average_before": load_before, "load_average_after": load_average(),
              "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "rates": rates}
    m = report["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores; load average before {load_before} after "
          f"{report['load_average_after']}\n")
    print(rates_table(rates))
    if args.out:
        with files.atomic_open(args.out) as f:
            json.dump(report, f, indent=1)
        print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
