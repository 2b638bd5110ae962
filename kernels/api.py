"""Public entry point: :func:`fused_logprobs`."""

from __future__ import annotations

import os
from typing import Optional, Union

import torch

from . import _torch_impl
from ._common import KL_ESTIMATORS, Config, FusedOutput, estimator_value

IMPLS = ("auto", "triton", "torch", "naive")


def _backend(impl: str, device: torch.device):
    if impl == "auto":
        impl = "triton" if device.type == "cuda" else "torch"
    if impl == "triton":
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError("impl='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                             "triton is imported (CPU interpreter, for tests)")
        from . import _triton_impl

        return _triton_impl.triton_forward, _triton_impl.triton_backward
    return _torch_impl.chunked_forward, _torch_impl.chunked_backward


class _FusedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ref_h, ref_w, ref_b, rows, cfg, impl):
        fwd, bwd = _backend(impl, hidden.device)
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
        impl: "auto" (Triton on CUDA, chunked torch otherwise), "triton", "torch", "naive".

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

    if impl == "naive":
        ref = (ref_h, ref_w, ref_b) if exact_kl else None
        logp, lse, ent, kl, _ = _torch_impl.naive_forward(hidden, weight, bias, targets, cfg, ref)
    else:
        logp, lse, ent, kl = _FusedLogprobs.apply(hidden, weight, bias, safe_t, ref_h, ref_w,
                                                  ref_b, rows, cfg, impl)
    if ref_logprobs is not None:
        r = ref_logprobs.detach().float()
        kl = torch.where(valid, estimator_value(logp, r, kl_estimator), logp.new_zeros(()))
    if not (return_entropy or return_lse or kl is not None):
        return logp
    return FusedOutput(logp, ent if return_entropy else None, kl, lse if return_lse else None)
