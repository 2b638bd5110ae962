"""prefopt_kernels.fused_logprobs (chunked torch path and naive path) against float64.

The reference below materializes float64 logits and follows the definitions literally; its
gradients come from float64 autograd.  The Triton kernels are checked in
tests/test_kernels_triton.py (interpreter, in a subprocess).
"""

import math

import pytest
import torch

import prefopt_kernels as pk
from prefopt_kernels import FusedOutput, _torch_impl

OUTS = ("logprobs", "entropy", "kl", "lse")


def reference(h, W, t, *, bias=None, temperature=1.0, ignore_index=-100, logit_scale=1.0,
              softcap=None, vocab_size=None, ref_logprobs=None, kl_estimator="k3",
              ref_hidden=None, ref_weight=None, ref_bias=None, return_entropy=False,
              return_lse=False):
    """float64, straight from the definitions: returns dict of [N] tensors (autograd-capable)."""
    V = vocab_size or W.shape[0]

    def tempered(hh, ww, bb):
        z = hh.double() @ ww[:V].double().T
        if bb is not None:
            z = z + bb[:V].double()
        u = z * logit_scale
        if softcap is not None:
            u = softcap * torch.tanh(u / softcap)
        return u / temperature

    valid = t != ignore_index
    l = tempered(h, W, bias)
    lse = torch.logsumexp(l, -1)
    logp_all = l - lse[:, None]
    p = logp_all.exp()
    tt = torch.where(valid, t, 0)
    logp = logp_all.gather(1, tt[:, None]).squeeze(1)
    ent = -(p * logp_all).sum(-1)
    kl = None
    if ref_logprobs is not None:
        r = ref_logprobs.double()
        d = logp - r
        kl = {"k1": d, "k2": 0.5 * d**2, "k3": torch.exp(-d) + d - 1}[kl_estimator]
    elif ref_hidden is not None or ref_weight is not None:
        rh = h if ref_hidden is None else ref_hidden
        if ref_weight is None:
            rw, rb = W, (bias if ref_bias is None else ref_bias)
        else:
            rw, rb = ref_weight, ref_bias
        with torch.no_grad():
            logq = torch.log_softmax(tempered(rh.detach(), rw.detach(),
                                              None if rb is None else rb.detach()), -1)
        kl = (p * (logp_all - logq)).sum(-1)
    z = torch.zeros((), dtype=torch.float64)
    out = {"logprobs": logp, "entropy": ent, "kl": kl, "lse": lse}
    return {k: (None if v is None else torch.where(valid, v, z)) for k, v in out.items()}


def close(actual, expected, rtol=1e-5, name="", scale=None):
    """|a − e| ≤ rtol·(|e| + max|e|): relative, with the tensor's scale as the floor near 0."""
    a = actual.double()
    e = expected.double()
    if scale is None:
        scale = e.abs().max().clamp_min(1e-30)
    err = (a - e).abs()
    bound = rtol * (e.abs() + scale)
    assert bool((err <= bound).all()), (
        f"{name}: max err {err.max().item():.3e}, max rel-to-scale {(err / scale).max().item():.3e}")


# (ROW_CHUNK, CHUNK_BYTES, WORKERS) of the chunked torch path: rows per chunk when the
# vocabulary is tiled, bytes of one [C, Vt] buffer (Vt ≈ CHUNK_BYTES / 4 / C, evened out over
# the tiles) and worker threads (tiles of a row chunk split among them).  V is 203/256/257 in
# the cases below (N = 37 with 5 ignored rows, 64 for "tile-edges", 1 for "one-row").
CHUNKINGS = {
    "default": None,                           # one chunk, whole vocabulary (V < one tile)
    "rows10-wholeV": (8, 8 * 257 * 4, 1),      # several row chunks, whole vocabulary each
    "rows8-tiles": (8, 8 * 50 * 4, 1),         # Vt ∤ V, ragged last tile
    "rows13-tiles-2w": (13, 13 * 17 * 4, 2),   # ragged row chunks and tiles, two workers
    "row1-tiles": (1, 1 * 64 * 4, 1),          # single-row chunks
    "allrows-tiles-2w": (64, 37 * 100 * 4, 2), # one row chunk (C = #rows), several tiles
    "wholeV-2w": (512, 4 << 20, 2),            # one tile per worker: KL reuses its buffers
    "rows8-tiles-3w": (8, 8 * 30 * 4, 3),      # three workers
}


@pytest.fixture(params=list(CHUNKINGS))
def chunking(request, monkeypatch):
    spec = CHUNKINGS[request.param]
    if spec is None:
        yield spec
        return
    monkeypatch.setattr(_torch_impl, "ROW_CHUNK", spec[0])
    monkeypatch.setattr(_torch_impl, "CHUNK_BYTES", spec[1])
    monkeypatch.setattr(_torch_impl, "WORKERS", spec[2])
    # The calling thread single-threaded, as the pool's workers are: on a loaded machine every
    # intra-op parallel region of the many tiny ops costs a scheduler time slice.
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield spec
    finally:
        torch.set_num_threads(prev)


def _edge_targets(N, H, V, n_ignored):
    """Targets on both sides of the tile boundaries the current settings give (and of a few
    other widths), plus 0 and V − 1."""
    widths = {17, 50, 64, 100}
    for total in (N - n_ignored, N):
        nw = _torch_impl._workers(torch.device("cpu"), total, V, H)
        widths.add(_torch_impl._plan(total, V, nw)[1])
    edges = {0, V - 1}
    for vt in widths:
        for k in range(1, V // vt + 1):
            edges.update({k * vt - 1, k * vt, k * vt + 1})
    return torch.tensor(sorted(e for e in edges if e < V))


def _inputs(N=37, H=24, V=203, *, seed=0, bias=False, mag=1.0, shift=0.0, noncontig=False,
            n_ignored=5, ref_head=False, t_max=None, edge_targets=False):
    g = torch.Generator().manual_seed(seed)
    if noncontig:
        h = torch.randn(H, N, generator=g).T  # column-major view
    else:
        h = torch.randn(N, H, generator=g)
    W = torch.randn(V, H, generator=g) * mag / math.sqrt(H)
    b = torch.randn(V, generator=g) * mag + shift if bias else None
    t = torch.randint(0, t_max or V, (N,), generator=g)
    if edge_targets:
        e = _edge_targets(N, H, t_max or V, n_ignored)
        t = e[torch.arange(N) % e.numel()]
    t[torch.randperm(N, generator=g)[:n_ignored]] = -100
    extra = {}
    if ref_head:
        extra["ref_hidden"] = h + 0.3 * torch.randn(N, H, generator=g)
        extra["ref_weight"] = W + 0.3 * torch.randn(V, H, generator=g) / math.sqrt(H)
    return h, W, b, t, extra


CASES = {
    "plain": dict(),
    "V-odd-bias": dict(inputs=dict(V=257, bias=True)),
    "T=0.6": dict(kw=dict(temperature=0.6)),
    "T=1.5-bias": dict(inputs=dict(bias=True), kw=dict(temperature=1.5)),
    "softcap": dict(inputs=dict(mag=20.0), kw=dict(softcap=5.0, temperature=0.6)),
    "logit_scale": dict(kw=dict(logit_scale=0.37, temperature=1.5)),
    "softcap-scale-bias": dict(inputs=dict(bias=True, mag=4.0),
                               kw=dict(softcap=3.0, logit_scale=2.5)),
    "vocab-padding": dict(inputs=dict(V=256, t_max=203), kw=dict(vocab_size=203)),
    "noncontig": dict(inputs=dict(noncontig=True, bias=True)),
    "all-negative": dict(inputs=dict(bias=True, shift=-300.0)),
    "large-magnitude": dict(inputs=dict(mag=60.0)),
    "no-ignored": dict(inputs=dict(n_ignored=0)),
    "tile-edges": dict(inputs=dict(N=64, bias=True, edge_targets=True)),
    "one-row": dict(inputs=dict(N=1, n_ignored=0, bias=True)),
}


def _fields(out):
    if isinstance(out, torch.Tensor):
        return {"logprobs": out}
    return {k: v for k, v in out._asdict().items() if v is not None}


def _check(case, requests, impl, *, upstream="all", seed=0):
    spec = CASES[case]
    h, W, b, t, extra = _inputs(**spec.get("inputs", {}), ref_head="ref_head" in requests)
    kw = dict(spec.get("kw", {}))
    if "entropy" in requests:
        kw["return_entropy"] = True
    if "lse" in requests:
        kw["return_lse"] = True
    if "ref_head" in requests:
        kw.update(extra)
    if "k1" in requests or "k2" in requests or "k3" in requests:
        est = [r for r in requests if r in ("k1", "k2", "k3")][0]
        with torch.no_grad():
            base = reference(h, W, t, bias=b, **kw)["logprobs"]
        noise = 0.2 * torch.randn(t.shape[0], generator=torch.Generator().manual_seed(7))
        kw.update(ref_logprobs=(base + noise).float(), kl_estimator=est)

    params = [h.requires_grad_(), W.requires_grad_()] + ([b.requires_grad_()] if b is not None else [])
    out = _fields(pk.fused_logprobs(h, W, t, bias=b, impl=impl, **kw))
    exp = {k: v for k, v in reference(h, W, t, bias=b, **kw).items() if k in out}
    assert set(out) == set(exp)
    for k in out:
        assert out[k].dtype == torch.float32 and out[k].shape == t.shape
        # exact KL is Σ p (log p − log q): its fp32 error floor is relative to |log p|, not to KL
        scale = None
        if k == "kl" and "ref_head" in requests:
            scale = max(exp[k].abs().max().item(), exp["logprobs"].abs().max().item())
        close(out[k], exp[k], name=f"{case}/{k}", scale=scale)
        assert bool((out[k][t == -100] == 0).all())
    gen = torch.Generator().manual_seed(seed + 1)
    names = list(out) if upstream == "all" else [upstream]
    gs = {k: torch.randn(t.shape[0], generator=gen, dtype=torch.float64) for k in names}
    loss_a = sum((out[k].double() * gs[k]).sum() for k in names)
    loss_e = sum((exp[k] * gs[k]).sum() for k in names)
    ga = torch.autograd.grad(loss_a, params)
    ge = torch.autograd.grad(loss_e, params)
    for name, a, e in zip(("hidden", "weight", "bias"), ga, ge):
        close(a, e, name=f"{case}/grad_{name} (upstream {upstream})")


@pytest.mark.parametrize("case", list(CASES))
def test_all_outputs_against_float64(case, chunking):
    _check(case, ("entropy", "lse", "ref_head"), "torch")


@pytest.mark.parametrize("case", ["plain", "V-odd-bias", "softcap-scale-bias", "vocab-padding",
                                  "tile-edges"])
@pytest.mark.parametrize("upstream", OUTS)
def test_each_output_gradient_alone(case, upstream, chunking):
    _check(case, ("entropy", "lse", "ref_head"), "torch", upstream=upstream)


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
@pytest.mark.parametrize("case", ["plain", "T=0.6", "softcap-scale-bias"])
def test_kl_estimators(case, est, chunking):
    _check(case, (est, "entropy"), "torch")


@pytest.mark.parametrize("case", ["plain", "V-odd-bias", "T=1.5-bias", "vocab-padding",
                                  "tile-edges", "one-row", "no-ignored"])
def test_logprobs_only(case, chunking):
    _check(case, (), "torch")


def test_chunk_plan(monkeypatch):
    plan = _torch_impl._plan
    monkeypatch.setattr(_torch_impl, "ROW_CHUNK", 512)
    monkeypatch.setattr(_torch_impl, "CHUNK_BYTES", 2 << 20)
    assert plan(4096, 32000) == (512, 1000)       # 32 tiles of 1000 columns
    assert plan(4100, 32000) == (456, 1000)       # 9 equal row chunks, not 8 + a sliver
    monkeypatch.setattr(_torch_impl, "CHUNK_BYTES", 4 << 20)
    assert plan(4096, 32000) == (512, 2000)
    assert plan(100, 32000) == (100, 8000)        # fewer rows than ROW_CHUNK: wider tiles
    assert plan(4096, 2000) == (512, 2000)        # whole vocabulary: as many rows as fit
    assert plan(4096, 2000, 2) == (512, 1000)     # ... but one tile per worker
    assert plan(4096, 32000, 3) == (512, 1778)    # tiles a multiple of the workers
    for total, V in [(1, 1), (1, 10**6), (7, 5), (4096, 128256), (10**6, 151936)]:
        for cb, rc in [(4 << 20, 512), (64 << 20, 512), (1 << 10, 64), (4, 8), (1, 1)]:
            for nw in (1, 2, 3):
                monkeypatch.setattr(_torch_impl, "CHUNK_BYTES", cb)
                monkeypatch.setattr(_torch_impl, "ROW_CHUNK", rc)
                c, vt = plan(total, V, nw)
                assert 1 <= c <= total and 1 <= vt <= V
                assert c * vt * 4 <= max(cb, 4)
                assert c <= rc or c * V * 4 <= cb
                n_tiles = -(-V // vt)
                assert n_tiles >= min(nw, V)
                assert V - (n_tiles - 1) * vt >= 1  # no empty tile


def test_chunkings_tile(monkeypatch):
    """The CHUNKINGS used above really split rows and vocabulary as their names say."""
    for name, spec in CHUNKINGS.items():
        if spec is None:
            continue
        monkeypatch.setattr(_torch_impl, "ROW_CHUNK", spec[0])
        monkeypatch.setattr(_torch_impl, "CHUNK_BYTES", spec[1])
        c, vt = _torch_impl._plan(32, 203, spec[2])
        assert (vt == 203) == ("wholeV" in name and spec[2] == 1), name
        assert (c >= 32) == ("allrows" in name or "wholeV-2w" in name), name


@pytest.mark.parametrize("case", ["plain", "softcap-scale-bias", "vocab-padding"])
def test_naive_impl(case):
    _check(case, ("entropy", "lse", "ref_head"), "naive")


def test_exact_kl_defaults_and_zero_for_identical_heads():
    h, W, b, t, _ = _inputs(bias=True)
    out = pk.fused_logprobs(h, W, t, bias=b, ref_weight=W.clone())
    # ref_weight given without ref_bias: the reference head has no bias
    exp = reference(h, W, t, bias=b, ref_weight=W.clone())
    close(out.kl, exp["kl"])
    same = pk.fused_logprobs(h, W, t, bias=b, ref_hidden=h.clone())
    assert same.kl.abs().max().item() < 1e-6


def test_padding_rows_get_zero_grad():
    h, W, b, t, _ = _inputs(V=256, bias=True, t_max=203)
    W.requires_grad_()
    b.requires_grad_()
    out = pk.fused_logprobs(h, W, t, bias=b, vocab_size=203, return_entropy=True)
    (out.logprobs.sum() + out.entropy.sum()).backward()
    assert W.grad[203:].abs().max().item() == 0 and b.grad[203:].abs().max().item() == 0
    assert W.grad[:203].abs().max().item() > 0


def test_return_types():
    h, W, b, t, _ = _inputs()
    lp = pk.fused_logprobs(h, W, t)
    assert isinstance(lp, torch.Tensor) and lp.dtype == torch.float32 and lp.shape == (37,)
    out = pk.fused_logprobs(h, W, t, return_lse=True)
    assert isinstance(out, FusedOutput) and out.entropy is None and out.kl is None
    assert out.lse is not None
    out = pk.fused_logprobs(h, W, t, ref_logprobs=lp)
    assert out.kl is not None and out.kl.abs().max().item() < 1e-6 and out.lse is None


def test_deterministic(chunking):
    h, W, b, t, extra = _inputs(bias=True, ref_head=True)
    res = []
    for _ in range(2):
        hh, WW, bb = (x.clone().requires_grad_() for x in (h, W, b))
        out = pk.fused_logprobs(hh, WW, t, bias=bb, return_entropy=True, return_lse=True, **extra)
        (out.logprobs.sum() + 0.5 * out.entropy.sum() - out.kl.sum() + out.lse.sum()).backward()
        res.append([out.logprobs, out.entropy, out.kl, out.lse, hh.grad, WW.grad, bb.grad])
    for a, c in zip(*res):
        assert torch.equal(a, c)


def test_bf16_no_worse_than_torch(chunking):
    N, H, V = 64, 64, 1000
    g = torch.Generator().manual_seed(3)
    h64 = torch.randn(N, H, generator=g, dtype=torch.float64)
    W64 = torch.randn(V, H, generator=g, dtype=torch.float64) / 4
    t = torch.randint(0, V, (N,), generator=g)
    h, W = h64.bfloat16().requires_grad_(), W64.bfloat16().requires_grad_()
    # the exact answer for the bf16-rounded inputs
    hr, Wr = h.detach().double().requires_grad_(), W.detach().double().requires_grad_()
    exp = reference(hr, Wr, t)["logprobs"]
    up = torch.randn(N, generator=g, dtype=torch.float64)
    (exp * up).sum().backward()

    def errs(lp, hh, WW):
        (lp.double() * up).sum().backward()
        return [(lp.double() - exp).abs().max().item(),
                (hh.grad.double() - hr.grad).abs().max().item(),
                (WW.grad.double() - Wr.grad).abs().max().item()]

    ht, Wt = h.detach().clone().requires_grad_(), W.detach().clone().requires_grad_()
    lp_t = torch.log_softmax((ht @ Wt.T).float(), -1).gather(1, t[:, None]).squeeze(1)
    e_torch = errs(lp_t, ht, Wt)
    ho, Wo = h.detach().clone().requires_grad_(), W.detach().clone().requires_grad_()
    lp_o = pk.fused_logprobs(ho, Wo, t)
    assert ho.grad is None and lp_o.dtype == torch.float32
    e_ours = errs(lp_o, ho, Wo)
    assert ho.grad.dtype == torch.bfloat16 and Wo.grad.dtype == torch.bfloat16
    for eo, et in zip(e_ours, e_torch):
        assert eo <= 1.1 * et + 1e-3, (e_ours, e_torch)


def test_no_grad_and_frozen_weight():
    h, W, b, t, _ = _inputs()
    with torch.no_grad():
        lp = pk.fused_logprobs(h, W, t)
    assert not lp.requires_grad
    hh = h.clone().requires_grad_()
    pk.fused_logprobs(hh, W, t).sum().backward()
    hr = h.clone().requires_grad_()
    reference(hr, W, t)["logprobs"].sum().backward()
    close(hh.grad, hr.grad)


@pytest.mark.parametrize("bad", [
    dict(targets_value=500), dict(vocab_size=0), dict(temperature=0.0), dict(softcap=-1.0),
    dict(kl_estimator="k4"), dict(impl="cuda"), dict(both_kl=True)])
def test_bad_input(bad):
    h, W, b, t, _ = _inputs()
    kw = {k: v for k, v in bad.items() if k not in ("targets_value", "both_kl")}
    if "targets_value" in bad:
        t = t.clone()
        t[0] = bad["targets_value"]
    if "both_kl" in bad:
        kw.update(ref_logprobs=torch.zeros(37), ref_hidden=h)
    with pytest.raises(ValueError):
        pk.fused_logprobs(h, W, t, **kw)


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    h, W, b, t, _ = _inputs()
    with pytest.raises(ValueError):
        pk.fused_logprobs(h, W, t, impl="triton")


@pytest.mark.parametrize("impl", ["torch", "naive"])
def test_all_rows_ignored_and_empty(impl):
    h, W, b, t, _ = _inputs()
    h.requires_grad_()
    W.requires_grad_()
    out = pk.fused_logprobs(h, W, torch.full_like(t, -100), return_entropy=True, impl=impl)
    assert out.logprobs.abs().max().item() == 0 and out.entropy.abs().max().item() == 0
    (out.logprobs.sum() + out.entropy.sum()).backward()
    assert h.grad.abs().max().item() == 0 and W.grad.abs().max().item() == 0
    empty = pk.fused_logprobs(h[:0], W, t[:0], impl=impl)
    assert empty.shape == (0,)
