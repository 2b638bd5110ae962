"""The guard that checks the Triton kernels against the torch path before impl="auto" trusts them.

On CUDA, the first "auto" call per (device, dtype) runs both paths on a small random problem; a
mismatch (or an exception) makes the rest of the process use the torch path, with one line on
stderr.  Here, on CPU, the guard is pointed at CPU tensors and handed backends by injection: a
correct one (the torch path itself under the Triton name) must pass, wrong ones must be caught.
"""

import pytest
import torch

import prefopt_kernels as pk
from prefopt_kernels import _torch_backward, _torch_impl, api


@pytest.fixture
def guarded_cpu(monkeypatch):
    """impl='auto' on CPU goes through the guard; the guard's memory starts empty."""
    monkeypatch.setattr(api, "TRITON_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(api, "_guard", {})
    calls = {"triton": 0}

    def install(fwd, bwd):
        def load(device):
            calls["triton"] += 1
            return fwd, bwd

        monkeypatch.setitem(api.BACKENDS, "triton", load)
        return calls

    return install


def _problem(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(20, 16, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(300, 16, generator=g) / 4).to(dtype).requires_grad_()
    t = torch.randint(0, 300, (20,), generator=g)
    t[3] = -100
    return h, w, t


def _run(h, w, t, impl):
    hh, ww = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    out = pk.fused_logprobs(hh, ww, t, return_entropy=True, impl=impl)
    (out.logprobs.sum() + 0.3 * out.entropy.sum()).backward()
    return out.logprobs.detach(), hh.grad, ww.grad


def _off_by(fwd_shift=0.0, grad_scale=1.0, drop_bias=False):
    def fwd(hidden, weight, bias, targets, rows, cfg, ref=None):
        logp, lse, ent, kl, aux = _torch_impl.chunked_forward(hidden, weight, None if drop_bias else bias,
                                                              targets, rows, cfg, ref)
        return logp + fwd_shift, lse, ent, kl, aux

    def bwd(*a):
        gh, gw, gb = _torch_backward.chunked_backward(*a)
        return tuple(None if g is None else g * grad_scale for g in (gh, gw, gb))

    return fwd, bwd


def test_correct_backend_passes_and_is_used(guarded_cpu, capfd):
    calls = guarded_cpu(_torch_impl.chunked_forward, _torch_backward.chunked_backward)
    h, w, t = _problem()
    got = _run(h, w, t, "auto")
    want = _run(h, w, t, "torch")
    assert api.guard_results() == {("cpu", torch.float32): None}
    assert calls["triton"] == 2  # once for the guard, once for the call itself
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("wrong,what", [
    (dict(fwd_shift=0.01), "log-probs"),
    (dict(grad_scale=1.01), "grad hidden"),
    (dict(drop_bias=True), "log-probs"),
])
def test_wrong_backend_falls_back_with_one_line(guarded_cpu, capfd, wrong, what):
    calls = guarded_cpu(*_off_by(**wrong))
    h, w, t = _problem()
    first = _run(h, w, t, "auto")
    second = _run(h, w, t, "auto")
    want = _run(h, w, t, "torch")
    for got in (first, second):  # the torch path's numbers, not the wrong backend's
        for a, b in zip(got, want):
            assert torch.equal(a, b)
    reason = api.guard_results()[("cpu", torch.float32)]
    assert reason is not None and reason.startswith(what)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, once per process and (device, dtype)
    assert "disagree with the torch path on cpu float32" in err[0] and what in err[0]
    assert calls["triton"] == 1  # the guard only; never used afterwards


def test_raising_backend_falls_back(guarded_cpu, capfd):
    def boom(*a, **k):
        raise RuntimeError("PTX assembly failed\nsecond line")

    guarded_cpu(boom, boom)
    h, w, t = _problem()
    got = _run(h, w, t, "auto")
    for a, b in zip(got, _run(h, w, t, "torch")):
        assert torch.equal(a, b)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "raised RuntimeError: PTX assembly failed" in err[0]


def test_checked_once_per_device_and_dtype(guarded_cpu, capfd):
    guarded_cpu(*_off_by(fwd_shift=0.5))
    for dtype in (torch.float32, torch.bfloat16, torch.float32, torch.bfloat16):
        h, w, t = _problem(dtype)
        pk.fused_logprobs(h.detach(), w.detach(), t)
    res = api.guard_results()
    assert set(res) == {("cpu", torch.float32), ("cpu", torch.bfloat16)} and all(res.values())
    assert len(capfd.readouterr().err.strip().splitlines()) == 2


def test_bf16_tolerance_accepts_rounding_but_not_errors(guarded_cpu):
    # the torch path against itself with gradients rounded one bf16 step differently: accepted
    def fwd(hidden, weight, bias, targets, rows, cfg, ref=None):
        return _torch_impl.chunked_forward(hidden, weight, bias, targets, rows, cfg, ref)

    def bwd(*a):
        gh, gw, gb = _torch_backward.chunked_backward(*a)
        return tuple(None if g is None else g * (1 + 2 ** -8) for g in (gh, gw, gb))

    guarded_cpu(fwd, bwd)
    assert api.check_triton(torch.device("cpu"), torch.bfloat16) is None
    guarded_cpu(*_off_by(grad_scale=1.1))
    assert api.check_triton(torch.device("cpu"), torch.bfloat16) is not None


def test_explicit_impls_skip_the_guard(guarded_cpu):
    calls = guarded_cpu(*_off_by(fwd_shift=1.0))
    h, w, t = _problem()
    pk.fused_logprobs(h.detach(), w.detach(), t, impl="torch")
    assert api.guard_results() == {} and calls["triton"] == 0
