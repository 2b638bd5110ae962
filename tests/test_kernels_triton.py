"""Triton kernels of prefopt_kernels against float64.

On a CUDA machine the cases run directly on the GPU.  Without one they run on CPU tensors
through Triton's interpreter, which must be switched on (TRITON_INTERPRET=1) before triton is
first imported; other tests in the same pytest process may already have imported it, so this
module then re-runs itself in a fresh subprocess with the variable set.
"""

import os
import subprocess
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"

if not HAS_CUDA and not INTERPRETING:

    def test_triton_kernels_in_interpreter_subprocess():
        pytest.importorskip("triton")
        env = dict(os.environ, TRITON_INTERPRET="1")
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "-W", "ignore::RuntimeWarning", __file__],
                           env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]

else:
    import prefopt_kernels as pk
    from test_kernels import CASES, _check, _inputs, close, reference

    pytest.importorskip("triton")
    DEV = "cuda" if HAS_CUDA else "cpu"

    @pytest.mark.parametrize("case", ["plain", "V-odd-bias", "T=0.6", "softcap-scale-bias",
                                      "vocab-padding", "noncontig", "all-negative",
                                      "large-magnitude", "logit_scale"])
    def test_all_outputs(case):
        _check(case, ("entropy", "lse", "ref_head"), "triton")

    @pytest.mark.parametrize("case", ["plain", "T=1.5-bias", "no-ignored"])
    def test_logprobs_only(case):
        _check(case, (), "triton")

    @pytest.mark.parametrize("upstream", ["logprobs", "entropy", "kl", "lse"])
    def test_each_output_gradient_alone(upstream):
        _check("softcap-scale-bias", ("entropy", "lse", "ref_head"), "triton", upstream=upstream)

    def test_k3_estimator():
        _check("T=0.6", ("k3", "entropy"), "triton")

    def test_deterministic():
        h, W, b, t, extra = _inputs(bias=True, ref_head=True)
        res = []
        for _ in range(2):
            hh, WW, bb = (x.clone().requires_grad_() for x in (h, W, b))
            out = pk.fused_logprobs(hh, WW, t, bias=bb, return_entropy=True, impl="triton",
                                    **extra)
            (out.logprobs.sum() - out.entropy.sum() + out.kl.sum()).backward()
            res.append([out.logprobs, out.entropy, out.kl, hh.grad, WW.grad, bb.grad])
        for a, c in zip(*res):
            assert torch.equal(a, c)

    def test_matches_chunked_torch_path():
        h, W, b, t, extra = _inputs(V=300, bias=True, ref_head=True)
        outs = [pk.fused_logprobs(h, W, t, bias=b, return_entropy=True, return_lse=True,
                                  impl=impl, **extra) for impl in ("triton", "torch")]
        for a, c in zip(*outs):
            close(a, c)

    def test_all_rows_ignored():
        h, W, b, t, _ = _inputs()
        h.requires_grad_()
        out = pk.fused_logprobs(h, W, torch.full_like(t, -100), return_entropy=True,
                                impl="triton")
        assert out.logprobs.abs().max().item() == 0 and out.entropy.abs().max().item() == 0
        (out.logprobs.sum() + out.entropy.sum()).backward()
        assert h.grad.abs().max().item() == 0

    def test_guard_passes_the_real_kernels(monkeypatch):
        # the guard of impl="auto" (tests/test_kernels_guard.py) against the real Triton kernels;
        # on CUDA this is the check every process runs first, here through the interpreter at a
        # smaller problem (the interpreter runs the default 96×64×1000 in ~15 s)
        from prefopt_kernels import api

        if not HAS_CUDA:
            monkeypatch.setattr(api, "GUARD_SHAPE", (24, 16, 130))
        assert api.check_triton(torch.device(DEV), torch.float32) is None
