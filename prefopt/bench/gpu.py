"""The one-command GPU check: ``python -m prefopt.bench gpu-check`` (``--dry``: the same code at tiny
shapes on CPU, which is how CI tests this script).

On a CUDA machine, sized for ≤ 8 minutes on one H100/H200:

(a) correctness of ``prefopt_kernels.fused_logprobs`` against a float64 reference (row-chunked, so
    the largest case fits), fp32 and bf16, both implementations (Triton, chunked torch), at shapes up
    to N = 16384, H = 4096, V = 128256: log-probs, entropy, ∂h and ∂W for random upstream gradients,
    next to torch's own path on materialized logits in the same dtype (the error a user already
    accepts); a row passes when ours is within 1.5× of that (or of a small floor);
(b) forward + backward time and peak memory above the inputs against naive materialized logits, torch's
    chunked ``linear_cross_entropy`` (where this torch has it) and Liger's fused linear cross-entropy
    (``liger-kernel``, imported lazily, skipped when absent), with the measured bf16 matmul rate and the
    fraction of it each provider reaches (ours and the fused providers do 8·N·H·V FLOPs, naive 6·N·H·V);
(c) one DPO and one GRPO trainer step (LoRA r = 16, after one warm-up step) of a Qwen2.5-0.5B-shaped bf16
    model built from a config (all 24 layers, 151,936-token vocabulary) against TRL, through the same
    workers as ``python -m prefopt.bench``;
(d) writes ``gpu_check.json`` and ``gpu_check.md`` (a Markdown table headed by the device name) into
    ``--out-dir``.

Before (a), the guard of ``impl="auto"`` (prefopt_kernels.api) runs for fp32 and bf16 and its verdict
is recorded. Every section catches its own failures and records them, so one broken provider does not
lose the rest of the report.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

from prefopt.core import files

FULL = dict(
    correctness=[(1024, 896, 151936, {}), (4096, 2048, 32000, dict(temperature=0.7, bias=True)),
                 (16384, 4096, 128256, {})],
    timing=[(4096, 4096, 128256), (16384, 4096, 128256)],
    matmul=8192, reps=5, trainer_layers=24, trainer_vocab=None, trainer_warmup=1, trainer_steps=1,
)
DRY = dict(
    correctness=[(64, 32, 1000, {}), (96, 48, 3001, dict(temperature=0.7, bias=True))],
    timing=[(128, 64, 2000)],
    matmul=256, reps=2, trainer_layers=2, trainer_vocab=1000, trainer_warmup=0, trainer_steps=1,
)
TINY_ARCH = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)


def _line(msg):
    print(f"[gpu-check] {msg}", file=sys.stderr, flush=True)


def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def device_name(dev) -> str:
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    from prefopt.bench.host import machine

    m = machine()
    return f"CPU: {m['cpu']}, {m['cores']} cores, {m['cpu_capability']} (dry run, not a GPU)"


# ---- (a) correctness against float64 ---------------------------------------------------------

def random_problem(N, H, V, dtype, dev, bias, seed=0):
    """Hidden states, head, bias (or None), targets with a tenth padding rows, upstream gradients."""
    import torch

    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, H, generator=g).to(dev, dtype)
    w = (torch.randn(V, H, generator=g) / H ** 0.5).to(dev, dtype)
    b = torch.randn(V, generator=g).to(dev, dtype) if bias else None
    t = torch.randint(0, V, (N,), generator=g)
    t[torch.randperm(N, generator=g)[: N // 10]] = -100  # padding rows
    g_lp = torch.randn(N, generator=g).to(dev)
    g_ent = torch.randn(N, generator=g).to(dev)
    return h, w, b, t.to(dev), g_lp, g_ent


def reference64(h, w, b, t, g_lp, g_ent, temperature=1.0, rows=2048):
    """float64 log-probs, entropy and the gradients of Σ g_lp·log p + g_ent·H w.r.t. h and W, row chunk by
    row chunk (the [N, V] logits never exist at once): dl_v = g_lp(δ_vt − p_v) − g_ent·p_v(log p_v + H)."""
    import torch

    W = w.double()
    B = None if b is None else b.double()
    N = h.shape[0]
    lp = torch.zeros(N, dtype=torch.float64, device=h.device)
    ent = torch.zeros_like(lp)
    gh = torch.zeros(N, h.shape[1], dtype=torch.float64, device=h.device)
    gw = torch.zeros_like(W)
    for s in range(0, N, rows):
        hs = h[s:s + rows].double()
        ts = t[s:s + rows]
        valid = ts != -100
        l = hs @ W.T
        if B is not None:
            l += B
        l /= temperature
        logp = torch.log_softmax(l, -1)
        del l
        p = logp.exp()
        e = -(p * logp).sum(-1)
        tt = torch.where(valid, ts, 0)
        lp[s:s + rows] = torch.where(valid, logp.gather(1, tt[:, None]).squeeze(1), 0.0)
        ent[s:s + rows] = torch.where(valid, e, 0.0)
        a = torch.where(valid, g_lp[s:s + rows].double(), 0.0)
        c = torch.where(valid, g_ent[s:s + rows].double(), 0.0)
        logp.add_(e[:, None]).mul_(p).mul_(-c[:, None])  # −g_ent·p(log p + H)
        dl = logp.sub_(p.mul_(a[:, None]))
        del p
        dl.scatter_add_(1, tt[:, None], a[:, None])
        dl /= temperature
        gh[s:s + rows] = dl @ W
        gw.addmm_(dl.T, hs)
        del dl
    return lp, ent, gh, gw


def _ours(h, w, b, t, g_lp, g_ent, impl, temperature):
    import torch

    import prefopt_kernels as pk

    hh, ww = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    out = pk.fused_logprobs(hh, ww, t, bias=b, temperature=temperature, return_entropy=True, impl=impl)
    (out.logprobs * g_lp + out.entropy * g_ent).sum().backward()
    return out.logprobs.detach(), out.entropy.detach(), hh.grad, ww.grad


def _naive_same_dtype(h, w, b, t, g_lp, g_ent, temperature):
    """What a user gets without the op: logits in the input dtype, log_softmax in fp32."""
    import torch

    hh, ww = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    z = hh @ ww.T
    if b is not None:
        z = z + b
    logp = torch.log_softmax(z.float() / temperature, -1)
    valid = t != -100
    tt = torch.where(valid, t, 0)
    lp = torch.where(valid, logp.gather(1, tt[:, None]).squeeze(1), 0.0)
    ent = torch.where(valid, -(logp.exp() * logp).sum(-1), 0.0)
    (lp * g_lp + ent * g_ent).sum().backward()
    return lp.detach(), ent.detach(), hh.grad, ww.grad


def _errors(got, want):
    lp, ent, gh, gw = (x.double() for x in got)
    rlp, rent, rgh, rgw = want
    rel = lambda a, e: ((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item()  # noqa: E731
    return {"logp_abs": (lp - rlp).abs().max().item(), "entropy_abs": (ent - rent).abs().max().item(),
            "grad_h_rel": rel(gh, rgh), "grad_w_rel": rel(gw, rgw)}


FLOORS = {"float32": dict(logp_abs=1e-4, entropy_abs=1e-4, grad_h_rel=1e-5, grad_w_rel=1e-5),
          "bfloat16": dict(logp_abs=1e-2, entropy_abs=1e-2, grad_h_rel=1e-2, grad_w_rel=1e-2)}


def correctness(dev, cfg) -> list:
    import torch

    out = []
    impls = ["triton", "torch"]
    for N, H, V, opt in cfg["correctness"]:
        T = opt.get("temperature", 1.0)
        for dt in ("float32", "bfloat16"):
            dtype = getattr(torch, dt)
            h, w, b, t, g_lp, g_ent = random_problem(N, H, V, dtype, dev, opt.get("bias", False))
            t0 = time.perf_counter()
            want = reference64(h, w, b, t, g_lp, g_ent, T)
            _sync(dev)
            base = _errors(_naive_same_dtype(h, w, b, t, g_lp, g_ent, T), want)
            row0 = dict(N=N, H=H, V=V, dtype=dt, temperature=T, bias=opt.get("bias", False),
                        reference_s=time.perf_counter() - t0, naive_errors=base)
            for impl in impls:
                row = dict(row0, impl=impl)
                if impl == "triton" and dev.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
                    row["skipped"] = "Triton needs CUDA (or TRITON_INTERPRET=1)"
                    out.append(row)
                    continue
                try:
                    err = _errors(_ours(h, w, b, t, g_lp, g_ent, impl, T), want)
                    row["errors"] = err
                    row["passed"] = all(err[k] <= max(1.5 * base[k], FLOORS[dt][k]) for k in err)
                except Exception as e:  # recorded, the rest of the check goes on
                    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    row["passed"] = False
                out.append(row)
                _line(f"correctness N={N} H={H} V={V} {dt} {impl}: "
                      f"{'pass' if row.get('passed') else 'FAIL'} {row.get('errors') or row.get('error')}")
            del h, w, b, want
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    return out


# ---- (b) time and memory against the alternatives ----------------------------------------------

def matmul_rate(dev, n, reps) -> dict:
    """Measured matmul rate (bf16 on CUDA; fp32 on the CPU of a dry run), TFLOP/s."""
    import torch

    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(dev)
    ts = []
    for _ in range(max(reps, 3)):
        t0 = time.perf_counter()
        a @ b
        _sync(dev)
        ts.append(time.perf_counter() - t0)
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "tflops": 2 * n ** 3 / min(ts) / 1e12}


def _providers():
    import torch

    import prefopt_kernels as pk

    def ours(impl):
        def f(h, w, t):
            return pk.fused_logprobs(h, w, t, impl=impl)
        return f

    def naive(h, w, t):
        lp = torch.log_softmax((h @ w.T).float(), -1)
        return torch.where(t != -100, lp.gather(1, torch.where(t != -100, t, 0)[:, None]).squeeze(1), 0.0)

    provs = {"naive": (naive, 6), "ours (auto)": (ours("auto"), 8), "ours (torch path)": (ours("torch"), 8)}
    lce = getattr(torch.nn.functional, "linear_cross_entropy", None)
    if lce is not None:
        def torch_lce(h, w, t):
            kw = {}
            if hasattr(torch.nn, "LinearCrossEntropyOptions"):
                kw["options"] = torch.nn.LinearCrossEntropyOptions()
            return -lce(h, w, t, reduction="none", ignore_index=-100, **kw)
        provs["torch linear_cross_entropy"] = (torch_lce, 8)
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        liger = LigerFusedLinearCrossEntropyLoss(reduction="none")

        def liger_f(h, w, t):
            return -liger(w, h, t)
        provs["Liger fused linear CE"] = (liger_f, 8)
    except Exception as e:  # absent or not importable here: skipped, and said so
        provs["Liger fused linear CE"] = (None, f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
    return provs


def timing(dev, cfg, rate) -> list:
    import torch

    out = []
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    for N, H, V in cfg["timing"]:
        for name, (fn, flops) in _providers().items():
            row = dict(N=N, H=H, V=V, dtype=str(dtype).replace("torch.", ""), provider=name)
            if fn is None:
                row["skipped"] = flops
                out.append(row)
                continue
            h, w, _, t, g_lp, _ = random_problem(N, H, V, dtype, dev, False)
            h.requires_grad_()
            w.requires_grad_()
            try:
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                ts = []
                for k in range(cfg["reps"] + 1):  # the first is warm-up (compilation, autotuning)
                    h.grad = w.grad = None
                    _sync(dev)
                    t0 = time.perf_counter()
                    (fn(h, w, t) * g_lp).sum().backward()
                    _sync(dev)
                    if k:
                        ts.append(time.perf_counter() - t0)
                s = statistics.median(ts)
                row.update(fwd_bwd_s=s, tflops=flops * N * H * V / s / 1e12, flops_per_nhv=flops)
                row["fraction_of_matmul_rate"] = row["tflops"] / rate["tflops"]
                if dev.type == "cuda":
                    row["peak_mb_above_inputs"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            out.append(row)
            _line(f"timing N={N} H={H} V={V} {name}: {row.get('fwd_bwd_s', row.get('error'))}")
            del h, w
    return out


# ---- (c) trainer steps against TRL --------------------------------------------------------------

def trainer_steps(dev, cfg, root, workloads=("real-dpo-lora", "real-grpo-lora"), providers=None) -> dict:
    from prefopt.bench import throughput as bench
    from prefopt.bench.workers import workload_spec
    from prefopt.bench.world import REAL_ARCH, REAL_VOCAB, build_world

    arch = dict(REAL_ARCH, num_hidden_layers=cfg["trainer_layers"])
    if dev.type != "cuda":
        arch.update(TINY_ARCH)
    world = build_world(os.path.join(root, "world"), n_rows=64, shape="real", arch=arch, vocab=cfg["trainer_vocab"])
    device, dtype = ("cuda", "bfloat16") if dev.type == "cuda" else ("cpu", "float32")
    out = {"model": dict(arch, vocab_size=cfg["trainer_vocab"] or REAL_VOCAB, dtype=dtype), "results": {}}
    everyone = ["prefopt"] + (["trl"] if bench.trl_available() else [])
    for wl in workloads:
        spec = workload_spec(wl, device=device, dtype=dtype)
        res = {}
        for p in (providers or {}).get(wl, everyone):
            _line(f"trainer {wl} {p} ...")
            run = bench.run_one(world, p, wl, cfg["trainer_warmup"], cfg["trainer_steps"], spec, timeout=240)
            res[p] = {**bench.summarize([run]), "runs": [run]}
        if not bench.trl_available():
            res["trl"] = {"error": "not installed"}
        out["results"][wl] = res
    out["ratios"] = bench.ratios(out["results"])
    return out


# ---- (d) the report -----------------------------------------------------------------------------

def markdown(rep: dict) -> str:
    L = [f"# prefopt gpu-check: {rep['device']}", "",
         f"{rep['time_utc']} UTC; torch {rep['versions'].get('torch')}, triton {rep['versions'].get('triton')}, "
         f"liger-kernel {rep['versions'].get('liger-kernel')}, trl {rep['versions'].get('trl')}; "
         f"{'DRY RUN at tiny shapes on CPU: these are not GPU figures' if rep['dry'] else 'measured on this GPU'}; "
         f"{rep['wall_s']:.0f} s in all ("
         + ", ".join(f"{k} {v:.0f} s" for k, v in rep.get("section_s", {}).items()) + ").", "",
         f"Guard of impl='auto' (Triton vs torch path): {rep['guard']}", "",
         "## Correctness against float64", "",
         "| N | H | V | dtype | impl | max abs Δlog p | max abs Δentropy | rel. err ∂h | rel. err ∂W | naive same-dtype (log p / ∂h / ∂W) | pass |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["correctness"]:
        nb = r["naive_errors"]
        naive = f"{nb['logp_abs']:.1e} / {nb['grad_h_rel']:.1e} / {nb['grad_w_rel']:.1e}"
        if "errors" in r:
            e = r["errors"]
            L.append(f"| {r['N']} | {r['H']} | {r['V']} | {r['dtype']} | {r['impl']} | {e['logp_abs']:.1e} | "
                     f"{e['entropy_abs']:.1e} | {e['grad_h_rel']:.1e} | {e['grad_w_rel']:.1e} | {naive} | "
                     f"{'yes' if r['passed'] else '**no**'} |")
        else:
            L.append(f"| {r['N']} | {r['H']} | {r['V']} | {r['dtype']} | {r['impl']} | "
                     f"{r.get('skipped') or r.get('error')} | | | | {naive} | {'—' if 'skipped' in r else '**no**'} |")
    m = rep["matmul"]
    L += ["", f"## Time and memory, forward + backward (measured {m['dtype']} matmul rate: {m['tflops']:.2f} TFLOP/s "
          f"at {m['n']}³)", "",
          "| N | H | V | provider | fwd+bwd s | TFLOP/s | fraction of matmul rate | peak MB above inputs |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rep["timing"]:
        if "fwd_bwd_s" in r:
            mem = f"{r['peak_mb_above_inputs']:,.0f}" if "peak_mb_above_inputs" in r else "n/a (CPU)"
            L.append(f"| {r['N']} | {r['H']} | {r['V']} | {r['provider']} | {r['fwd_bwd_s']:.4f} | {r['tflops']:.3f} | "
                     f"{r['fraction_of_matmul_rate']:.1%} | {mem} |")
        else:
            L.append(f"| {r['N']} | {r['H']} | {r['V']} | {r['provider']} | {r.get('skipped') or r.get('error')} | | | |")
    tr = rep.get("trainer", {})
    if "error" in tr:
        L += ["", f"## Trainer steps: {tr['error']}"]
    elif tr:
        mm = tr["model"]
        L += ["", f"## Trainer steps (Qwen2.5-0.5B shapes, {mm['num_hidden_layers']} layers, hidden {mm['hidden_size']}, "
              f"vocabulary {mm['vocab_size']:,}, {mm['dtype']}, LoRA r=16)", "",
              "| workload | provider | s/step | real tokens/s | peak RSS MB | peak device MB | first-step loss |",
              "|---|---|---|---|---|---|---|"]
        for wl, per in tr["results"].items():
            for p, s in per.items():
                if "error" in s:
                    L.append(f"| {wl} | {p} | {s['error']} | | | | |")
                    continue
                dm = f"{s['peak_device_mb']:,.0f}" if "peak_device_mb" in s else ""
                fl = f"{s['first_loss']:.6f}" if "first_loss" in s else ""
                L.append(f"| {wl} | {p} | {s['step_s_median']:.3f} | {s['tokens_per_s']:,.0f} | {s['peak_rss_mb']:,.0f} | "
                         f"{dm} | {fl} |")
    if rep.get("errors"):
        L += ["", "## Errors", ""] + [f"- {e}" for e in rep["errors"]]
    return "\n".join(L) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m prefopt.bench gpu-check", description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="tiny shapes on CPU (tests the script itself; no GPU figures)")
    ap.add_argument("--out-dir", default="gpu_check")
    ap.add_argument("--skip-trainer", action="store_true", help="sections (a), (b) only")
    args = ap.parse_args(argv)
    import torch

    from prefopt.bench.host import package_versions
    from prefopt_kernels import api

    if not args.dry and not torch.cuda.is_available():
        raise SystemExit("gpu-check: no CUDA device here; `--dry` runs the same code at tiny shapes on CPU")
    dev = torch.device("cuda" if not args.dry else "cpu")
    cfg = DRY if args.dry else FULL
    t_start = time.perf_counter()
    versions = package_versions()
    try:
        import triton

        versions["triton"] = triton.__version__
    except Exception:
        versions["triton"] = None
    rep = {"device": device_name(dev), "dry": args.dry, "versions": versions,
           "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), "errors": []}
    # the guard first: it decides what impl="auto" runs below (on CPU "auto" is the torch path)
    if dev.type == "cuda":
        for dtype in (torch.float32, torch.bfloat16):
            reason = api.check_triton(dev, dtype)
            rep.setdefault("guard_results", {})[str(dtype)] = reason
        rep["guard"] = "; ".join(f"{k.replace('torch.', '')}: {'pass' if v is None else 'FAIL: ' + v}"
                                 for k, v in rep["guard_results"].items())
    else:
        rep["guard"] = "not run (CPU: impl='auto' is the torch path)"
    sections = [("correctness", lambda: correctness(dev, cfg)),
                ("matmul", lambda: matmul_rate(dev, cfg["matmul"], cfg["reps"]))]
    rep["section_s"] = {}
    for name, fn in sections:
        t0 = time.perf_counter()
        try:
            rep[name] = fn()
        except Exception:
            rep["errors"].append(f"{name}: {traceback.format_exc().strip().splitlines()[-1]}")
            rep[name] = [] if name == "correctness" else {"dtype": "?", "n": 0, "tflops": float("nan")}
        rep["section_s"][name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        rep["timing"] = timing(dev, cfg, rep["matmul"])
    except Exception:
        rep["errors"].append(f"timing: {traceback.format_exc().strip().splitlines()[-1]}")
        rep["timing"] = []
    rep["section_s"]["timing"] = time.perf_counter() - t0
    if not args.skip_trainer:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as root:
            try:
                rep["trainer"] = trainer_steps(dev, cfg, root)
            except Exception:
                rep["errors"].append(f"trainer: {traceback.format_exc().strip().splitlines()[-1]}")
                rep["trainer"] = {"error": rep["errors"][-1]}
        rep["section_s"]["trainer"] = time.perf_counter() - t0
    rep["wall_s"] = time.perf_counter() - t_start
    rep["all_correct"] = all(r.get("passed", True) for r in rep["correctness"]) and bool(rep["correctness"])
    os.makedirs(args.out_dir, exist_ok=True)
    with files.atomic_open(os.path.join(args.out_dir, "gpu_check.json")) as f:
        json.dump(rep, f, indent=1, default=str)
    md = markdown(rep)
    files.write_text(os.path.join(args.out_dir, "gpu_check.md"), md)
    print(md)
    print(f"wrote {args.out_dir}/gpu_check.json and gpu_check.md")
    return 0 if rep["all_correct"] and not rep["errors"] else 1
