"""Benchmark: per-token log-probs of a linear head, forward and forward+backward.

    python -m prefopt.bench kernels [--quick] [--cases N:H:V,...] [--providers ...] [--out FILE]

Providers
    naive   matmul → float → log_softmax → gather (materializes [N, V])
    lce     torch.nn.functional.linear_cross_entropy(..., reduction="none",
            options=torch.nn.LinearCrossEntropyOptions()), negated (torch's chunked op)
    liger   liger_kernel LigerFusedLinearCrossEntropyLoss(reduction="none"), negated
    ours    prefopt_kernels.fused_logprobs (impl="auto": Triton on CUDA, chunked torch on CPU)

Each (case, provider) runs in a fresh subprocess, so one provider's allocations cannot hide
another's.  Memory is the peak above what the process held after the inputs were built:
    CPU   peak resident set size (VmHWM from /proc/self/status, reset through
          /proc/self/clear_refs once the inputs exist) minus the RSS at that moment, measured on
          the second call (after a warm-up).  torch's CPU allocator is plain malloc; the child
          runs with MALLOC_MMAP_THRESHOLD_=131072 so that every block over 128 KiB is an mmap
          returned to the OS on free, and freed memory cannot hide in glibc's heap.
    CUDA  torch.cuda.max_memory_allocated() minus memory_allocated() after the inputs.
Gradients w.r.t. hidden and weight count as memory above inputs for every provider alike.
Time is the median of --repeats runs after one warm-up; forward is timed with autograd
recording (as in training).  Error is max |log p − log p_float64| over the tokens, and for
the gradient max |∂/∂h − float64| / max|float64 ∂/∂h| with a fixed random upstream gradient,
where the float64 reference is computed in row chunks.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from prefopt.core import files

PROVIDERS = ("naive", "lce", "liger", "ours")
CPU_CASES = [(n, 512, v) for v in (32000, 128256) for n in (1024, 4096, 16384)]
GPU_CASES = [(n, h, v) for (h, v) in ((4096, 128256), (2048, 151936)) for n in (4096, 16384)]
NAIVE_LIMIT_BYTES = 16e9


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _hwm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_hwm() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _loadavg() -> float:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return float("nan")


def _provider_fn(name, torch, device):
    F = torch.nn.functional
    if name == "naive":
        def fn(h, W, t):
            return torch.log_softmax((h @ W.T).float(), -1).gather(1, t[:, None]).squeeze(1)
        return fn
    if name == "lce":
        opts = torch.nn.LinearCrossEntropyOptions()

        def fn(h, W, t):
            return -F.linear_cross_entropy(h, W, t, reduction="none", options=opts)
        return fn
    if name == "liger":
        from liger_kernel.transformers.fused_linear_cross_entropy import (
            LigerFusedLinearCrossEntropyLoss,
        )
        loss = LigerFusedLinearCrossEntropyLoss(reduction="none")

        def fn(h, W, t):
            return -loss(W, h, t).float()
        return fn
    if name == "ours":
        import prefopt_kernels

        def fn(h, W, t):
            return prefopt_kernels.fused_logprobs(h, W, t)
        return fn
    raise ValueError(name)


def _reference(torch, h, W, t, g, chunk=256):
    """float64 log-probs and ∂(Σ g·logp)/∂h, row-chunked so that it fits in memory."""
    W64 = W.double()
    lp = torch.empty(h.shape[0], dtype=torch.float64, device=h.device)
    gh = torch.empty(h.shape, dtype=torch.float64, device=h.device)
    for i in range(0, h.shape[0], chunk):
        l = h[i:i + chunk].double() @ W64.T
        ls = torch.log_softmax(l, -1)
        tt = t[i:i + chunk]
        lp[i:i + chunk] = ls.gather(1, tt[:, None]).squeeze(1)
        p = ls.exp_()
        gg = g[i:i + chunk].double()
        gh[i:i + chunk] = gg[:, None] * (W64[tt] - p @ W64)
    return lp, gh


def child(args) -> dict:
    import torch

    N, H, V = args.case
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    res = dict(provider=args.provider, N=N, H=H, V=V, dtype=args.dtype, device=args.device)
    try:
        fn = _provider_fn(args.provider, torch, device)
    except Exception as e:  # missing optional dependency
        return dict(res, status="n/a", reason=f"{type(e).__name__}: {e}")
    gen = torch.Generator(device="cpu").manual_seed(0)
    h = torch.randn(N, H, generator=gen).to(device, dtype).requires_grad_()
    W = (torch.randn(V, H, generator=gen) / H**0.5 * 4).to(device, dtype).requires_grad_()
    t = torch.randint(0, V, (N,), generator=gen).to(device)
    g = torch.randn(N, generator=gen).to(device)
    cuda = device.type == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def fwd_bwd():
        h.grad = W.grad = None
        lp = fn(h, W, t)
        lp.backward(g.to(lp.dtype))
        return lp

    # memory: one cold-ish run (after a warm-up that also catches unsupported providers)
    try:
        fwd_bwd()
        sync()
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        return dict(res, status="n/a", reason=f"{type(e).__name__}: {msg}")
    h.grad = W.grad = None
    import gc
    gc.collect()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes()
        _reset_hwm()
    lp = fn(h, W, t)
    sync()
    peak_fwd = (torch.cuda.max_memory_allocated() if cuda else _hwm_bytes()) - base
    lp.backward(g.to(lp.dtype))
    sync()
    peak = (torch.cuda.max_memory_allocated() if cuda else _hwm_bytes()) - base
    lp_val = lp.detach().float()
    gh = h.grad.detach().double()
    del lp

    def timed(f):
        ts = []
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    res.update(status="ok", peak_fwd_mb=peak_fwd / 2**20, peak_mb=peak / 2**20)
    if args.memory_only:
        return res
    res.update(fwd_s=timed(lambda: fn(h, W, t)), fwd_bwd_s=timed(fwd_bwd))
    if not args.no_error:
        ref_lp, ref_gh = _reference(torch, h.detach(), W.detach(), t, g)
        res["max_err_logp"] = (lp_val.double() - ref_lp).abs().max().item()
        res["max_rel_err_grad_h"] = ((gh - ref_gh).abs().max() / ref_gh.abs().max()).item()
    return res


def paired(args) -> dict:
    """Alternate providers' forward+backward in one process, round after round.

    On a shared machine the load drifts between the isolated runs above; alternating within
    one process exposes every provider to the same drift, so the per-round time ratio to the
    first provider is the robust number.  Memory is not measured here.
    """
    import torch

    N, H, V = args.case
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    provs = args.providers.split(",")
    fns = {p: _provider_fn(p, torch, device) for p in provs}
    gen = torch.Generator(device="cpu").manual_seed(0)
    h = torch.randn(N, H, generator=gen).to(device, dtype).requires_grad_()
    W = (torch.randn(V, H, generator=gen) / H**0.5 * 4).to(device, dtype).requires_grad_()
    t = torch.randint(0, V, (N,), generator=gen).to(device)
    g = torch.randn(N, generator=gen).to(device)

    def run(fn):
        h.grad = W.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        lp = fn(h, W, t)
        lp.backward(g.to(lp.dtype))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    load0 = _loadavg()
    for p in provs:
        run(fns[p])
    times = {p: [] for p in provs}
    for _ in range(args.paired_rounds):
        for p in provs:
            times[p].append(run(fns[p]))
    base = provs[0]
    return dict(N=N, H=H, V=V, rounds=args.paired_rounds,
                fwd_bwd_s={p: statistics.median(v) for p, v in times.items()},
                ratio_to_first={p: statistics.median([a / b for a, b in zip(v, times[base])])
                                for p, v in times.items()},
                times=times, loadavg_1min_start=load0, loadavg_1min_end=_loadavg())


def device_name(device: str) -> str:
    if device == "cuda":
        import torch
        return torch.cuda.get_device_name()
    from prefopt.bench.host import cpu_model

    return f"CPU: {os.cpu_count()} cores, {cpu_model('unknown CPU')}"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m prefopt.bench kernels", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    ap.add_argument("--cases", default=None, help="comma list of N:H:V, e.g. 4096:512:32000")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="N=1024 and N=4096 at V=32000, 1 repeat")
    ap.add_argument("--no-error", action="store_true", help="skip the float64 error columns")
    ap.add_argument("--memory-only", action="store_true", help="peak memory only: no timing, no error")
    ap.add_argument("--paired-rounds", type=int, default=0,
                    help="instead of the sweep: alternate the providers' fwd+bwd in one process "
                         "for this many rounds per case and report per-round time ratios to the "
                         "first provider (robust to load drift on a shared machine)")
    ap.add_argument("--out", default="bench_results.json")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--provider", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        args.case = tuple(int(x) for x in args.case.split(":"))
        print("RESULT " + json.dumps(child(args)), flush=True)
        return

    import torch

    if args.paired_rounds:
        args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
        out = []
        for c in (args.cases or "4096:512:32000").split(","):
            args.case = tuple(int(x) for x in c.split(":"))
            r = paired(args)
            out.append(r)
            print(json.dumps({k: r[k] for k in ("N", "H", "V", "rounds", "fwd_bwd_s",
                                                 "ratio_to_first")}), flush=True)
        with files.atomic_open(args.out) as f:
            json.dump(dict(device=device_name(args.device), torch=torch.__version__,
                           date=datetime.date.today().isoformat(), paired=out), f, indent=1)
        print(f"wrote {args.out}")
        return

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    if args.cases:
        cases = [tuple(int(x) for x in c.split(":")) for c in args.cases.split(",")]
    elif args.quick:
        cases = [(1024, 512, 32000), (4096, 512, 32000)] if device == "cpu" else GPU_CASES[:1]
    else:
        cases = CPU_CASES if device == "cpu" else GPU_CASES
    repeats = 1 if args.quick and args.repeats == 3 else args.repeats
    esize = 4 if dtype == "float32" else 2
    rows = []
    print(f"device: {device_name(device)}; dtype {dtype}; torch {torch.__version__}", flush=True)
    hdr = (f"{'N':>6} {'H':>5} {'V':>7} {'provider':>8} {'fwd s':>8} {'fwd+bwd s':>10} "
           f"{'peak MB':>9} {'fwd MB':>8} {'err logp':>9} {'rel err dh':>10}")
    print(hdr)
    for case in cases:
        N, H, V = case
        for prov in args.providers.split(","):
            # naive holds about three [N, V] fp32 tensors at its peak (logits, log_softmax
            # output, its gradient; measured 1500 MB at 4096 × 32000) plus the input-dtype logits
            naive_bytes = N * V * (8 + esize)
            limit = NAIVE_LIMIT_BYTES
            if device == "cuda":
                limit = 0.8 * torch.cuda.get_device_properties(0).total_memory
            if prov == "naive" and naive_bytes > limit:
                r = dict(provider=prov, N=N, H=H, V=V, dtype=dtype, device=device, status="skipped",
                         reason=f"naive would need ~{naive_bytes / 1e9:.0f} GB")
            else:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", "--provider", prov,
                       "--case", f"{N}:{H}:{V}", "--device", device, "--dtype", dtype,
                       "--repeats", str(repeats)] + (["--no-error"] if args.no_error else []) \
                    + (["--memory-only"] if args.memory_only else [])
                load0 = _loadavg()
                # as documented above: every block over 128 KiB an mmap, returned on free
                env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
                p = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
                if line:
                    r = json.loads(line[-1][7:])
                    # other processes on the machine slow every provider alike; kept for the record
                    r["loadavg_1min"] = [load0, _loadavg()]
                else:
                    tail = (p.stderr.strip().splitlines() or ["no output"])[-1][:200]
                    r = dict(provider=prov, N=N, H=H, V=V, dtype=dtype, device=device,
                             status="failed", reason=f"exit {p.returncode}: {tail}")
            rows.append(r)
            if r["status"] == "ok" and args.memory_only:
                print(f"{N:>6} {H:>5} {V:>7} {prov:>8} {'':>8} {'':>10} {r['peak_mb']:>9.0f} "
                      f"{r['peak_fwd_mb']:>8.0f}", flush=True)
            elif r["status"] == "ok":
                print(f"{N:>6} {H:>5} {V:>7} {prov:>8} {r['fwd_s']:>8.3f} {r['fwd_bwd_s']:>10.3f} "
                      f"{r['peak_mb']:>9.0f} {r['peak_fwd_mb']:>8.0f} "
                      f"{r.get('max_err_logp', float('nan')):>9.2e} "
                      f"{r.get('max_rel_err_grad_h', float('nan')):>10.2e}", flush=True)
            else:
                print(f"{N:>6} {H:>5} {V:>7} {prov:>8} {r['status']}: {r['reason']}", flush=True)
    meta = dict(device=device_name(device), torch=torch.__version__, python=platform.python_version(),
                date=datetime.date.today().isoformat(), dtype=dtype, repeats=repeats,
                memory_method="CPU: VmHWM-RSS in a fresh subprocess; CUDA: max_memory_allocated",
                results=rows)
    with files.atomic_open(args.out) as f:
        json.dump(meta, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
