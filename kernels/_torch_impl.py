"""Chunked PyTorch implementation (CPU and fallback) and the naive reference.

The chunked path walks the (non-ignored) rows in chunks of ``C`` rows and keeps the whole
vocabulary per chunk: on a CPU one big GEMM per chunk is far cheaper than a Python loop over
vocabulary tiles, and ``C · V · 4`` bytes is capped by a fixed budget (``CHUNK_BYTES``), so the
workspace does not grow with N.  Scalars (logit_scale, 1/T, 1/softcap) are folded into the
[C, H] hidden chunk and the bias rather than applied to [C, V] tensors, and every [C, V] pass is
done in place, because on a CPU the elementwise passes over the logits chunk, not the GEMMs,
are what a fused implementation can save.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import torch

from ._common import Config

# Bytes of one [C, V] float32 workspace buffer.  Log-probs/lse use one buffer; entropy, exact
# KL and soft-cap add up to three more (probabilities, reference logits, tanh derivative).
# 64 MiB keeps C ≥ 512 rows at V = 32k, enough for MKL to run the GEMMs near full speed.
CHUNK_BYTES = int(os.environ.get("PREFOPT_KERNELS_CHUNK_BYTES", 64 << 20))


def _chunks(n_rows: int, vocab: int, rows: Optional[torch.Tensor]):
    c = max(1, CHUNK_BYTES // (4 * max(vocab, 1)))
    total = n_rows if rows is None else rows.numel()
    for start in range(0, total, c):
        stop = min(total, start + c)
        if rows is None:
            yield slice(start, stop), None
        else:
            yield None, rows[start:stop]


def _take(x: torch.Tensor, sl, idx):
    return x[sl] if idx is None else x.index_select(0, idx)


def _put(dst: torch.Tensor, sl, idx, val: torch.Tensor) -> None:
    if idx is None:
        dst[sl] = val
    else:
        dst.index_copy_(0, idx, val)


def _prep_head(weight: torch.Tensor, bias: Optional[torch.Tensor], cfg: Config, mult: float):
    """fp32 view/copy of the live vocabulary rows, the pre-scaled bias and its removed shift.

    Without soft-cap the softmax is shift-invariant, so the bias is centred on its maximum:
    a large common offset (all logits ≈ −300) would otherwise cost fp32 logits ~2e-5 absolute
    precision.  The shift is added back to the lse.
    """
    w = weight[: cfg.vocab_size]
    if w.dtype != torch.float32:
        w = w.float()  # O(V·H), independent of N
    b = None
    shift = 0.0
    if bias is not None:
        b = bias[: cfg.vocab_size].float() * mult
        if cfg.softcap is None:
            shift = b.max()
            b = b - shift
    return w, b, shift


def _hidden_mult(cfg: Config) -> float:
    """Scalar folded into the hidden chunk: l = mult·(h Wᵀ + b) (no soft-cap) or the tanh argument."""
    if cfg.softcap is None:
        return cfg.logit_scale / cfg.temperature
    return cfg.logit_scale / cfg.softcap


def _scaled_hidden(h: torch.Tensor, mult: float) -> torch.Tensor:
    if h.dtype == torch.float32 and mult == 1.0:
        return h
    return h.float().mul_(mult) if h.dtype != torch.float32 else h * mult


def _logits_into(out: torch.Tensor, hs: torch.Tensor, w: torch.Tensor, b, cfg: Config,
                 keep_tanh: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Tempered logits l for a chunk, written into ``out`` ([C, V] fp32)."""
    if b is None:
        torch.mm(hs, w.t(), out=out)
    else:
        torch.addmm(b, hs, w.t(), out=out)
    if cfg.softcap is not None:
        out.tanh_()
        if keep_tanh is not None:
            # (1 − t²)·softcap/T is the derivative of l w.r.t. the tanh argument
            torch.mul(out, out, out=keep_tanh)
            keep_tanh.neg_().add_(1.0).mul_(cfg.softcap / cfg.temperature)
        out.mul_(cfg.softcap / cfg.temperature)
    return out


def _buf(cache: dict, name: str, rows: int, vocab: int, device) -> torch.Tensor:
    t = cache.get(name)
    if t is None or t.shape[0] < rows:
        t = torch.empty(rows, vocab, dtype=torch.float32, device=device)
        cache[name] = t
    return t[:rows]


def chunked_forward(hidden, weight, bias, targets, rows, cfg: Config, ref=None):
    """Returns (logp, lse, entropy|None, kl|None, aux=None), fp32 [N], zero on rows not in ``rows``."""
    N = hidden.shape[0]
    V = cfg.vocab_size
    dev = hidden.device
    mult = _hidden_mult(cfg)
    w, b, bshift = _prep_head(weight, bias, cfg, mult)
    if ref is not None:
        rh, rw, rb = ref
        rw, rb, _ = _prep_head(rw, rb, cfg, mult)
    f32 = dict(dtype=torch.float32, device=dev)
    logp = torch.zeros(N, **f32)
    lse = torch.zeros(N, **f32)
    ent = torch.zeros(N, **f32) if cfg.need_entropy else None
    kl = torch.zeros(N, **f32) if cfg.need_exact_kl else None
    cache: dict = {}
    for sl, idx in _chunks(N, V, rows):
        hs = _scaled_hidden(_take(hidden, sl, idx), mult)
        C = hs.shape[0]
        t = _take(targets, sl, idx)
        L = _logits_into(_buf(cache, "L", C, V, dev), hs, w, b, cfg)
        tgt = L.gather(1, t[:, None]).squeeze(1)
        m = L.amax(1, keepdim=True)
        L.sub_(m)  # L = l − m
        if ent is None and kl is None:
            S = L.exp_().sum(1)
            logS = S.log_()
        else:
            E = torch.exp(L, out=_buf(cache, "E", C, V, dev))
            S = E.sum(1)
            logS = S.log()
            if ent is not None:
                # H = log S − Σ e (l − m) / S
                a = torch.bmm(E.unsqueeze(1), L.unsqueeze(2)).view(C)
                _put(ent, sl, idx, logS - a / S)
            if kl is not None:
                rhs = _scaled_hidden(_take(rh, sl, idx), mult)
                Q = _logits_into(_buf(cache, "Q", C, V, dev), rhs, rw, rb, cfg)
                lse_q = torch.logsumexp(Q, 1, keepdim=True)
                # per-element log p − log q, so that KL ≈ 0 does not come from cancelling lses
                Q.sub_(lse_q).neg_().add_(L).sub_(logS[:, None])
                d = torch.bmm(E.unsqueeze(1), Q.unsqueeze(2)).view(C)
                _put(kl, sl, idx, d / S)
        chunk_lse = m.squeeze(1) + logS
        _put(lse, sl, idx, chunk_lse + bshift)
        _put(logp, sl, idx, tgt - chunk_lse)
    return logp, lse, ent, kl, None


def chunked_backward(hidden, weight, bias, targets, rows, cfg: Config, ref, lse, ent, kl, aux,
                     g_lp, g_ent, g_kl, g_lse, needs: Tuple[bool, bool, bool]):
    """Gradients (hidden, weight, bias) given per-row upstream grads (None = zero).

    ``g_lp`` already contains the k1/k2/k3 term.  See ``_common`` for the formula.
    """
    N, Hd = hidden.shape
    V = cfg.vocab_size
    dev = hidden.device
    need_h, need_w, need_b = needs
    mult = _hidden_mult(cfg)
    w, b, bshift = _prep_head(weight, bias, cfg, mult)
    f32 = dict(dtype=torch.float32, device=dev)
    zeros = torch.zeros(N, **f32)
    g_lp = zeros if g_lp is None else g_lp
    # c = −g_lp + g_lse − g_H H − g_kl KL
    c = -g_lp
    if g_lse is not None:
        c = c + g_lse
    use_ent = g_ent is not None
    use_kl = g_kl is not None
    if use_ent:
        c = c - g_ent * ent
    if use_kl:
        c = c - g_kl * kl
        rh, rw, rb = ref
        rw, rb, _ = _prep_head(rw, rb, cfg, mult)
    fast = not (use_ent or use_kl or cfg.softcap is not None)

    grad_h = torch.zeros(N, Hd, **f32) if need_h else None
    grad_w = torch.zeros(V, Hd, **f32) if need_w else None
    grad_b = torch.zeros(V, **f32) if need_b else None
    cache: dict = {}
    for sl, idx in _chunks(N, V, rows):
        hs = _scaled_hidden(_take(hidden, sl, idx), mult)
        C = hs.shape[0]
        t = _take(targets, sl, idx)[:, None]
        cc = _take(c, sl, idx)
        glp = _take(g_lp, sl, idx)
        lse_c = _take(lse, sl, idx) - bshift
        G = _buf(cache, "L", C, V, dev)
        if fast:
            # dl = g δ_t + c·p = s·(|c|·p + s·g δ_t) with s = ±1, and |c|·p = exp(l − lse + log|c|):
            # the row shift rides in the GEMM's bias and the sign moves onto [C, H] operands,
            # leaving two passes over [C, V] (GEMM write, exp).
            s = torch.where(cc >= 0, 1.0, -1.0)
            shift = (cc.abs().log() - lse_c)[:, None]
            if b is None:
                G.copy_(shift.expand(C, V))
            else:
                torch.add(b[None, :], shift, out=G)
            G.addmm_(hs, w.t())
            G.exp_()
            G.scatter_add_(1, t, (glp * s)[:, None])
            if need_h:
                _put(grad_h, sl, idx, torch.mm(G, w).mul_((s * mult)[:, None]))
            if need_w:
                grad_w.addmm_(G.t(), hs * s[:, None])
            if need_b:
                grad_b.add_(torch.mv(G.t(), s), alpha=mult)
            continue
        F = _buf(cache, "F", C, V, dev) if cfg.softcap is not None else None
        L = _logits_into(G, hs, w, b, cfg, keep_tanh=F)
        L.sub_(lse_c[:, None])  # log p
        P = torch.exp(L, out=_buf(cache, "E", C, V, dev))
        coef_lp = None
        if use_ent or use_kl:
            ge = _take(g_ent, sl, idx) if use_ent else None
            gk = _take(g_kl, sl, idx) if use_kl else None
            coef_lp = gk - ge if (use_ent and use_kl) else (gk if use_kl else -ge)
        if coef_lp is not None:
            # P·(c + (g_kl − g_H)·log p − g_kl·log q), built in the log p buffer
            if use_kl:
                rhs = _scaled_hidden(_take(rh, sl, idx), mult)
                Q = _logits_into(_buf(cache, "Q", C, V, dev), rhs, rw, rb, cfg)
                Q.sub_(torch.logsumexp(Q, 1, keepdim=True))
                Q.mul_(gk[:, None])
                L.mul_(coef_lp[:, None]).sub_(Q)
            else:
                L.mul_(coef_lp[:, None])
            L.add_(cc[:, None]).mul_(P)
            G = L
        else:
            G = P.mul_(cc[:, None])
        G.scatter_add_(1, t, glp[:, None])
        if F is not None:
            G.mul_(F)
        if need_h:
            _put(grad_h, sl, idx, torch.mm(G, w).mul_(mult))
        if need_w:
            grad_w.addmm_(G.t(), hs)
        if need_b:
            grad_b.add_(G.sum(0), alpha=mult)
    return grad_h, grad_w, grad_b


def naive_forward(hidden, weight, bias, targets, cfg: Config, ref=None):
    """Reference: materializes [N, V] fp32 logits; differentiable through plain autograd."""
    def tempered(h, w, bb):
        z = h.float() @ w[: cfg.vocab_size].float().t()
        if bb is not None:
            z = z + bb[: cfg.vocab_size].float()
        u = z * cfg.logit_scale
        if cfg.softcap is not None:
            u = cfg.softcap * torch.tanh(u / cfg.softcap)
        return u / cfg.temperature

    valid = targets != cfg.ignore_index
    l = tempered(hidden, weight, bias)
    logsm = torch.log_softmax(l, -1)
    t = torch.where(valid, targets, torch.zeros_like(targets))
    zero = torch.zeros((), dtype=torch.float32, device=hidden.device)
    logp = torch.where(valid, logsm.gather(1, t[:, None]).squeeze(1), zero)
    lse = torch.where(valid, torch.logsumexp(l, -1), zero)
    ent = kl = None
    if cfg.need_entropy:
        ent = torch.where(valid, -(logsm.exp() * logsm).sum(-1), zero)
    if cfg.need_exact_kl:
        rh, rw, rb = ref
        with torch.no_grad():
            logq = torch.log_softmax(tempered(rh, rw, rb), -1)
        kl = torch.where(valid, (logsm.exp() * (logsm - logq)).sum(-1), zero)
    return logp, lse, ent, kl, None
