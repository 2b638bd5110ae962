"""Public entry point: :func:`fused_logprobs`."""

from __future__ import annotations

import os
import sys
from typing import Optional, Union

import torch

from . import _torch_backward, _torch_impl
from ._common import KL_ESTIMATORS, Config, FusedOutput, estimator_value

IMPLS = ("auto", "triton", "torch", "naive")
HIDDEN_GRADS = ("auto", "forward", "recompute")
# Default of ``hidden_grad`` (see :func:`fused_logprobs`); ``recompute`` measures the generic op.
HIDDEN_GRAD = os.environ.get("PREFOPT_KERNELS_HIDDEN_GRAD", "auto")

# Device types on which impl="auto" picks the Triton kernels (after the guard below).
TRITON_DEVICE_TYPES = ("cuda",)


def _load_triton(device: torch.device):
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                         "triton is imported (CPU interpreter, for tests)")
    from . import _triton_impl

    return _triton_impl.triton_forward, _triton_impl.triton_backward


def _load_torch(device: torch.device):
    return _torch_impl.chunked_forward, _torch_backward.chunked_backward


# impl name -> loader(device) -> (forward, backward); a table so that a test can inject a wrong
# backend and watch the guard catch it.
BACKENDS = {"triton": _load_triton, "torch": _load_torch}


# ---- guard: the Triton kernels are checked against the torch path before "auto" trusts them ----
#
# The kernels' tests run them in Triton's CPU interpreter; a compiler or driver difference on a
# real GPU would make every method silently wrong.  So the first "auto"
# call per (device, dtype) runs both paths on a small random problem (a few ms on a GPU) and
# compares log-probs, entropy, lse and the gradients of all three inputs; on a mismatch, or an
# exception inside the Triton path, the rest of the process uses the torch path and one line on
# stderr says why.

GUARD_SHAPE = (96, 64, 1000)  # N (with ignored rows), H, V: several row blocks, a ragged tile
_guard: dict = {}             # (device, dtype) -> None (passed) or the reason it failed


def guard_results() -> dict:
    """{(device, dtype): None if the Triton path passed, else the reason} of this process."""
    return dict(_guard)


def _guard_tolerance(dtype: torch.dtype) -> float:
    # Both paths accumulate in fp32 from the same inputs; only the summation order differs, and
    # gradients are rounded to the input dtype at the end (bf16: 2^-8 relative).  A wrong kernel
    # (a dropped bias, a wrong scale, a stale tile) is off by O(1).
    return {torch.float32: 1e-4, torch.float64: 1e-4}.get(dtype, 3e-2)


def _guard_problem(device, dtype):
    N, H, V = GUARD_SHAPE
    g = torch.Generator().manual_seed(1234)  # a private generator: the caller's RNG is untouched
    h = torch.randn(N, H, generator=g)
    w = torch.randn(V, H, generator=g) / H ** 0.5
    b = torch.randn(V, generator=g)
    t = torch.randint(0, V, (N,), generator=g)
    t[:: 7] = -100
    up = torch.randn(3, N, generator=g)
    return [x.to(device=device, dtype=dtype) for x in (h, w, b)] + [t.to(device), up.to(device)]


def _guard_run(backend, problem):
    h0, w0, b0, t, up = problem
    h, w, b = (x.detach().clone().requires_grad_() for x in (h0, w0, b0))
    cfg = Config(0.7, 1.0, None, w.shape[0], -100, True, False)
    valid = t != -100
    rows = valid.nonzero().squeeze(1)
    safe_t = torch.where(valid, t, torch.zeros_like(t))
    with torch.enable_grad():
        lp, lse, ent, _ = _FusedLogprobs.apply(h, w, b, safe_t, None, None, None, rows, cfg, backend)
        (lp * up[0] + ent * up[1] + lse * up[2]).sum().backward()
    return [lp, ent, lse, h.grad, w.grad, b.grad]


def check_triton(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    """None when the Triton path agrees with the torch path on the guard problem, else why not."""
    names = ("log-probs", "entropy", "lse", "grad hidden", "grad weight", "grad bias")
    try:
        problem = _guard_problem(device, dtype)
        want = _guard_run(BACKENDS["torch"](device), problem)
        got = _guard_run(BACKENDS["triton"](device), problem)
    except Exception as e:  # a compile or launch failure is a failed check, not a crash
        return f"the Triton path raised {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    tol = _guard_tolerance(dtype)
    for name, a, e in zip(names, got, want):
        if a is None or e is None or a.shape != e.shape:
            return f"{name}: missing or misshapen output"
        a, e = a.double(), e.double()
        if not bool(torch.isfinite(a).all()):
            return f"{name}: non-finite values"
        err = ((a - e).abs().max() / e.abs().max().clamp_min(1e-6)).item()
        if not err <= tol:
            return f"{name}: max error {err:.2e} of its scale (tolerance {tol:.0e})"
    return None


def _auto_impl(device: torch.device, dtype: torch.dtype) -> str:
    if device.type not in TRITON_DEVICE_TYPES:
        return "torch"
    key = (str(device), dtype)
    if key not in _guard:
        _guard[key] = check_triton(device, dtype)
        if _guard[key] is not None:
            sys.stderr.write(f"prefopt_kernels: the Triton kernels disagree with the torch path on {key[0]} "
                             f"{str(dtype).replace('torch.', '')} ({_guard[key]}); using the torch path "
                             "for the rest of this process\n")
            sys.stderr.flush()
    return "torch" if _guard[key] is not None else "triton"


class _FusedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ref_h, ref_w, ref_b, rows, cfg, backend):
        fwd, bwd = backend  # (forward, backward) functions of one implementation
        ref = (ref_h, ref_w, ref_b) if cfg.need_exact_kl else None
        logp, lse, ent, kl, aux = fwd(hidden, weight, bias, targets, rows, cfg, ref)
        ctx.save_for_backward(hidden, weight, bias, targets, ref_h, ref_w, ref_b, rows, lse, ent, kl,
                              aux)
        ctx.cfg, ctx.bwd = cfg, bwd
        ctx.set_materialize_grads(False)
        return logp, lse, ent, kl

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp, g_lse, g_ent, g_kl):
        hidden, weight, bias, targets, ref_h, ref_w, ref_b, rows, lse, ent, kl, aux = ctx.saved_tensors
        cfg = ctx.cfg
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                 bias is not None and ctx.needs_input_grad[2])
        if not any(needs) or all(g is None for g in (g_lp, g_lse, g_ent, g_kl)):
            return (None,) * 10
        ref = (ref_h, ref_w, ref_b) if cfg.need_exact_kl else None
        f = lambda g: None if g is None else g.float()  # noqa: E731
        gh, gw, gb = ctx.bwd(hidden, weight, bias, targets, rows, cfg, ref, lse, ent, kl, aux,
                             f(g_lp), f(g_ent), f(g_kl), f(g_lse), needs)
        if gh is not None and gh.dtype != hidden.dtype:
            gh = gh.to(hidden.dtype)
        if gw is not None:
            if gw.shape[0] != weight.shape[0]:  # padding rows never saw the loss
                gw = torch.cat([gw, gw.new_zeros(weight.shape[0] - gw.shape[0], gw.shape[1])])
            gw = gw.to(weight.dtype)
        if gb is not None:
            if gb.shape[0] != bias.shape[0]:
                gb = torch.cat([gb, gb.new_zeros(bias.shape[0] - gb.shape[0])])
            gb = gb.to(bias.dtype)
        return gh, gw, gb, None, None, None, None, None, None, None


class _FusedLogprobsJacobian(torch.autograd.Function):
    """Log-probs whose backward is g·J with J = ∂log p/∂h computed in the forward (frozen head).

    Memory: J is [N, H] fp32, the size of the hidden states; nothing of [N, V] is kept."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, rows, cfg):
        N, H = hidden.shape
        jac = (torch.empty if rows is None else torch.zeros)(N, H, dtype=torch.float32, device=hidden.device)
        logp, _, _, _, _ = _torch_impl.chunked_forward(hidden, weight, bias, targets, rows, cfg, None, jac=jac)
        ctx.save_for_backward(jac)
        ctx.hidden_dtype = hidden.dtype
        return logp

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lp):
        (jac,) = ctx.saved_tensors
        # not in place: a retained graph may be backpropagated through again
        grad = (jac * g_lp.float()[:, None]).to(ctx.hidden_dtype)
        return grad, None, None, None, None, None


def fused_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: Optional[torch.Tensor] = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    ref_logprobs: Optional[torch.Tensor] = None,
    kl_estimator: str = "k3",
    ref_hidden: Optional[torch.Tensor] = None,
    ref_weight: Optional[torch.Tensor] = None,
    ref_bias: Optional[torch.Tensor] = None,
    return_lse: bool = False,
    logit_scale: float = 1.0,
    softcap: Optional[float] = None,
    vocab_size: Optional[int] = None,
    impl: str = "auto",
    hidden_grad: Optional[str] = None,
) -> Union[torch.Tensor, FusedOutput]:
    r"""Per-token log-probs of ``targets`` under ``softmax(l)`` without materializing [N, V] logits.

    .. math::
        z = h W^\top + b,\quad
        l = \frac{c\,\tanh(\alpha z / c)}{T}\ \text{(softcap } c\text{)}\ \text{or}\ \frac{\alpha z}{T},
        \quad \log p_t = l_t - \log\textstyle\sum_{v<V'} e^{l_v}

    with α = ``logit_scale``, T = ``temperature`` and V' = ``vocab_size`` (rows of ``weight`` at
    or beyond it are padding and never enter the log-sum-exp; their gradient is 0).

    Args:
        hidden: [N, H], any float dtype, may be non-contiguous.
        weight: [V, H] output embedding.  targets: [N] integer, ``ignore_index`` marks ignored rows.
        bias: optional [V].
        return_entropy: add the entropy of the tempered distribution, −Σ p log p.
        ref_logprobs: [N] reference log-probs (no gradient); KL(π‖π_ref) per token with
            ``kl_estimator`` k1 = log p − r, k2 = ½(log p − r)², k3 = e^{r−log p} − (r − log p) − 1.
        ref_hidden / ref_weight / ref_bias: exact KL Σ_v p_v (log p_v − log q_v) over the
            vocabulary, q from the reference head with the same scale/soft-cap/temperature and no
            gradient.  A missing ``ref_hidden`` defaults to ``hidden``, a missing ``ref_weight``
            to ``weight`` (and then a missing ``ref_bias`` to ``bias``), all detached.
        return_lse: add log Σ_v exp(l_v).
        impl: "auto" (Triton on CUDA once the guard has checked it against the torch path on
            this device and dtype, chunked torch otherwise), "triton", "torch", "naive".
        hidden_grad: how ∂/∂hidden is obtained on the torch path (None: the
            ``PREFOPT_KERNELS_HIDDEN_GRAD`` environment default, "auto").  "forward" computes the
            Jacobian J_i = ∂log p_i/∂h_i [N, H] in the forward pass (one extra [C, Vt]·[Vt, H]
            GEMM per tile while the tile is at hand), and the backward is ∂h = g·J: no logit
            recomputation.  Valid only when the head does not train (weight and bias without
            gradient: LoRA, frozen embeddings) and only log-probs are requested; "auto" takes it
            then, "recompute" always takes the generic op (backward rebuilds the logit tiles).

    Returns:
        float32 [N] log-probs (0 on ignored rows) when nothing else is requested, otherwise
        ``FusedOutput(logprobs, entropy, kl, lse)`` with None for what was not requested.
        Every output is 0 on ignored rows.  Differentiable w.r.t. hidden, weight and bias.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if hidden.dim() != 2 or weight.dim() != 2 or targets.dim() != 1:
        raise ValueError(f"expected hidden [N, H], weight [V, H], targets [N]; got "
                         f"{tuple(hidden.shape)}, {tuple(weight.shape)}, {tuple(targets.shape)}")
    N, H = hidden.shape
    V = weight.shape[0]
    if weight.shape[1] != H or targets.shape[0] != N:
        raise ValueError(f"shape mismatch: hidden {tuple(hidden.shape)}, weight "
                         f"{tuple(weight.shape)}, targets {tuple(targets.shape)}")
    if not hidden.is_floating_point() or not weight.is_floating_point():
        raise ValueError("hidden and weight must be floating point")
    if bias is not None and bias.shape != (V,):
        raise ValueError(f"bias must have shape ({V},), got {tuple(bias.shape)}")
    vocab_size = V if vocab_size is None else int(vocab_size)
    if not 0 < vocab_size <= V:
        raise ValueError(f"vocab_size must be in [1, {V}], got {vocab_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be > 0 or None, got {softcap}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    exact_kl = ref_hidden is not None or ref_weight is not None
    if exact_kl and ref_logprobs is not None:
        raise ValueError("give either ref_logprobs (estimated KL) or ref_hidden/ref_weight "
                         "(exact KL), not both")
    if ref_logprobs is not None and ref_logprobs.shape != (N,):
        raise ValueError(f"ref_logprobs must have shape ({N},), got {tuple(ref_logprobs.shape)}")

    targets = targets.long()
    valid = targets != ignore_index
    bad = valid & ((targets < 0) | (targets >= vocab_size))
    if bool(bad.any()):
        raise ValueError(f"targets must be in [0, {vocab_size}) or equal ignore_index={ignore_index}")
    # Ignored rows are skipped, not computed and zeroed: RL batches are often half padding.
    n_valid = int(valid.sum())
    rows = None if n_valid == N else valid.nonzero().squeeze(1)
    safe_t = targets if rows is None else torch.where(valid, targets, torch.zeros_like(targets))

    ref_h = ref_w = ref_b = None
    if exact_kl:
        ref_h = (hidden if ref_hidden is None else ref_hidden).detach()
        if ref_weight is None:
            ref_w = weight.detach()
            ref_b = (bias if ref_bias is None else ref_bias)
        else:
            ref_w = ref_weight.detach()
            ref_b = ref_bias
        ref_b = None if ref_b is None else ref_b.detach()
        if ref_h.shape != hidden.shape or ref_w.shape[0] < vocab_size:
            raise ValueError("ref_hidden must match hidden and ref_weight must cover vocab_size")
        if ref_b is not None and ref_b.shape != (ref_w.shape[0],):
            raise ValueError("ref_bias must match ref_weight's rows")

    cfg = Config(float(temperature), float(logit_scale), None if softcap is None else float(softcap),
                 vocab_size, int(ignore_index), bool(return_entropy), exact_kl)

    if impl == "auto":
        impl = _auto_impl(hidden.device, hidden.dtype)
    hidden_grad = HIDDEN_GRAD if hidden_grad is None else hidden_grad
    if hidden_grad not in HIDDEN_GRADS:
        raise ValueError(f"hidden_grad must be one of {HIDDEN_GRADS}, got {hidden_grad!r}")
    # The Jacobian-in-forward route: every output's gradient w.r.t. hidden is g_lp·J when only
    # log-probs flow back and nothing else is trained through the head.
    saved_ok = (impl == "torch" and torch.is_grad_enabled() and hidden.requires_grad
                and not weight.requires_grad and (bias is None or not bias.requires_grad)
                and not (return_entropy or return_lse or exact_kl))
    if hidden_grad == "forward" and not saved_ok and torch.is_grad_enabled() and hidden.requires_grad:
        raise ValueError("hidden_grad='forward' needs impl='torch' (or 'auto' off CUDA), a head (weight, bias) "
                         "without gradient, and log-probs only (no entropy, lse or exact KL)")
    if impl == "naive":
        ref = (ref_h, ref_w, ref_b) if exact_kl else None
        logp, lse, ent, kl, _ = _torch_impl.naive_forward(hidden, weight, bias, targets, cfg, ref)
    elif saved_ok and hidden_grad != "recompute":
        logp = _FusedLogprobsJacobian.apply(hidden, weight, bias, safe_t, rows, cfg)
        lse = ent = kl = None
    else:
        logp, lse, ent, kl = _FusedLogprobs.apply(hidden, weight, bias, safe_t, ref_h, ref_w,
                                                  ref_b, rows, cfg, BACKENDS[impl](hidden.device))
    if ref_logprobs is not None:
        r = ref_logprobs.detach().float()
        kl = torch.where(valid, estimator_value(logp, r, kl_estimator), logp.new_zeros(()))
    if not (return_entropy or return_lse or kl is not None):
        return logp
    return FusedOutput(logp, ent if return_entropy else None, kl, lse if return_lse else None)
