"""Triton kernels (GPU; on CPU tensors under TRITON_INTERPRET=1 for tests).

Forward: one program per (block of BLOCK_M rows, slice of the vocabulary).  It walks its
vocabulary tiles of BLOCK_V, computing each [BLOCK_M, BLOCK_V] logit tile with ``tl.dot`` over
BLOCK_K slices of H, and keeps per row an online log-sum-exp (running max m and
s = Σ exp(l − m)) plus the running sums the entropy and the exact KL need:

    a = Σ e_v (l_v − m)             → H  = log s − a / s
    b = Σ e_v (l_v − lq_v)          → KL = b / s − lse + lse_q     (lq: reference logits)

When m grows to m', the sums are rescaled by exp(m − m') and a also gains s·(m − m').
Vocabulary slices (SPLIT_V > 1 when there are few row blocks) are merged in torch the same way.

Backward: one program per [BLOCK_M, BLOCK_V] tile of a row chunk recomputes the tile's logits,
turns them into dz (formula in ``_common``) and stores it into a [C, V] workspace; cuBLAS
then does ∂h = dz·W and ∂W += dzᵀ·h per chunk.  The workspace is fixed-size (C rows), there
are no atomics, so results are bitwise reproducible.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._common import Config
from ._torch_impl import _prep_head, _hidden_mult

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# Workspace for the backward dz chunk, bytes.
BWD_CHUNK_BYTES = int(os.environ.get("PREFOPT_KERNELS_TRITON_CHUNK_BYTES", 512 << 20))


@triton.jit
def _tanh(x):
    # 1 − 2/(e^{2x}+1): saturates to ±1 without inf/inf and needs no libdevice (interpreter)
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _logit_tile(h_ptr, stride_hn, stride_hk, row_idx, row_mask,
                w_ptr, stride_wv, stride_wk, b_ptr, offs_v, v_mask, H,
                mult, cap_out,
                HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """Tempered logits l for one [BLOCK_M, BLOCK_V] tile (fp32); out-of-vocab columns = −inf."""
    acc = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
    offs_k = tl.arange(0, BLOCK_K)
    for k0 in range(0, H, BLOCK_K):
        kk = k0 + offs_k
        k_mask = kk < H
        a = tl.load(h_ptr + row_idx[:, None] * stride_hn + kk[None, :] * stride_hk,
                    mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        # int64 offsets: V·H passes 2³¹ for large heads (e.g. 256k × 8192)
        bt = tl.load(w_ptr + offs_v.to(tl.int64)[None, :] * stride_wv + kk[:, None] * stride_wk,
                     mask=v_mask[None, :] & k_mask[:, None], other=0.0)
        acc = tl.dot(a, bt.to(a.dtype), acc, input_precision=PREC)
    acc = acc * mult
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_v, mask=v_mask, other=0.0)[None, :]
    if SOFTCAP:
        acc = _tanh(acc) * cap_out
    return tl.where(v_mask[None, :], acc, float("-inf"))


@triton.jit
def _fwd_kernel(h_ptr, stride_hn, stride_hk, rows_ptr, t_ptr, n_rows,
                w_ptr, stride_wv, stride_wk, b_ptr,
                rh_ptr, stride_rhn, stride_rhk, rw_ptr, stride_rwv, stride_rwk, rb_ptr,
                H, V, mult, cap_out, tiles_per_split,
                m_out, s_out, a_out, t_out, mq_out, sq_out, b_out, SPLIT,
                HAS_BIAS: tl.constexpr, HAS_RBIAS: tl.constexpr, SOFTCAP: tl.constexpr,
                NEED_ENT: tl.constexpr, NEED_KL: tl.constexpr, PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = offs_m < n_rows
    row_idx = tl.load(rows_ptr + offs_m, mask=row_mask, other=0)
    tgt = tl.load(t_ptr + offs_m, mask=row_mask, other=-1)

    m = tl.full((BLOCK_M,), -1e30, tl.float32)  # finite: s·(m − m') stays 0, not nan, at start
    s = tl.zeros((BLOCK_M,), tl.float32)
    a = tl.zeros((BLOCK_M,), tl.float32)
    tl_t = tl.zeros((BLOCK_M,), tl.float32)
    mq = tl.full((BLOCK_M,), -1e30, tl.float32)
    sq = tl.zeros((BLOCK_M,), tl.float32)
    bkl = tl.zeros((BLOCK_M,), tl.float32)
    v_start = pid_s * tiles_per_split * BLOCK_V
    for i in range(0, tiles_per_split):
        offs_v = v_start + i * BLOCK_V + tl.arange(0, BLOCK_V)
        v_mask = offs_v < V
        l = _logit_tile(h_ptr, stride_hn, stride_hk, row_idx, row_mask, w_ptr, stride_wv,
                        stride_wk, b_ptr, offs_v, v_mask, H, mult, cap_out, HAS_BIAS, SOFTCAP,
                        PREC, BLOCK_M, BLOCK_V, BLOCK_K)
        tl_t += tl.sum(tl.where(offs_v[None, :] == tgt[:, None], l, 0.0), axis=1)
        m_new = tl.maximum(m, tl.max(l, axis=1))
        alpha = tl.exp(m - m_new)
        e = tl.exp(l - m_new[:, None])
        if NEED_ENT:
            d = tl.where(v_mask[None, :], l - m_new[:, None], 0.0)
            a = alpha * (a + s * (m - m_new)) + tl.sum(e * d, axis=1)
        if NEED_KL:
            lq = _logit_tile(rh_ptr, stride_rhn, stride_rhk, row_idx, row_mask, rw_ptr,
                             stride_rwv, stride_rwk, rb_ptr, offs_v, v_mask, H, mult, cap_out,
                             HAS_RBIAS, SOFTCAP, PREC, BLOCK_M, BLOCK_V, BLOCK_K)
            mq_new = tl.maximum(mq, tl.max(lq, axis=1))
            sq = sq * tl.exp(mq - mq_new) + tl.sum(tl.exp(lq - mq_new[:, None]), axis=1)
            mq = mq_new
            # zero masked columns before subtracting: −inf − (−inf) is nan
            diff = tl.where(v_mask[None, :], l, 0.0) - tl.where(v_mask[None, :], lq, 0.0)
            bkl = bkl * alpha + tl.sum(e * diff, axis=1)
        s = s * alpha + tl.sum(e, axis=1)
        m = m_new
    out = offs_m * SPLIT + pid_s
    tl.store(m_out + out, m, mask=row_mask)
    tl.store(s_out + out, s, mask=row_mask)
    tl.store(t_out + out, tl_t, mask=row_mask)
    if NEED_ENT:
        tl.store(a_out + out, a, mask=row_mask)
    if NEED_KL:
        tl.store(mq_out + out, mq, mask=row_mask)
        tl.store(sq_out + out, sq, mask=row_mask)
        tl.store(b_out + out, bkl, mask=row_mask)


@triton.jit
def _bwd_kernel(h_ptr, stride_hn, stride_hk, rows_ptr, t_ptr, n_rows,
                w_ptr, stride_wv, stride_wk, b_ptr,
                rh_ptr, stride_rhn, stride_rhk, rw_ptr, stride_rwv, stride_rwk, rb_ptr,
                H, V, mult, cap_out,
                lse_ptr, lseq_ptr, c_ptr, glp_ptr, clp_ptr, gkl_ptr,
                g_ptr, stride_gn,
                HAS_BIAS: tl.constexpr, HAS_RBIAS: tl.constexpr, SOFTCAP: tl.constexpr,
                USE_LOGP: tl.constexpr, USE_KL: tl.constexpr, PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_v = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = offs_m < n_rows
    row_idx = tl.load(rows_ptr + offs_m, mask=row_mask, other=0)
    tgt = tl.load(t_ptr + offs_m, mask=row_mask, other=-1)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    v_mask = offs_v < V
    l = _logit_tile(h_ptr, stride_hn, stride_hk, row_idx, row_mask, w_ptr, stride_wv, stride_wk,
                    b_ptr, offs_v, v_mask, H, mult, cap_out, HAS_BIAS, SOFTCAP, PREC,
                    BLOCK_M, BLOCK_V, BLOCK_K)
    lse = tl.load(lse_ptr + offs_m, mask=row_mask, other=0.0)
    c = tl.load(c_ptr + offs_m, mask=row_mask, other=0.0)
    glp = tl.load(glp_ptr + offs_m, mask=row_mask, other=0.0)
    logp = l - lse[:, None]
    p = tl.exp(logp)
    inner = c[:, None] + tl.zeros((BLOCK_M, BLOCK_V), tl.float32)
    if USE_LOGP:
        clp = tl.load(clp_ptr + offs_m, mask=row_mask, other=0.0)
        inner += clp[:, None] * (tl.where(v_mask[None, :], l, 0.0) - lse[:, None])
    if USE_KL:
        gkl = tl.load(gkl_ptr + offs_m, mask=row_mask, other=0.0)
        lseq = tl.load(lseq_ptr + offs_m, mask=row_mask, other=0.0)
        lq = _logit_tile(rh_ptr, stride_rhn, stride_rhk, row_idx, row_mask, rw_ptr, stride_rwv,
                         stride_rwk, rb_ptr, offs_v, v_mask, H, mult, cap_out, HAS_RBIAS, SOFTCAP,
                         PREC, BLOCK_M, BLOCK_V, BLOCK_K)
        inner -= gkl[:, None] * (tl.where(v_mask[None, :], lq, 0.0) - lseq[:, None])
    g = p * inner + tl.where(offs_v[None, :] == tgt[:, None], glp[:, None], 0.0)
    if SOFTCAP:
        t = tl.where(v_mask[None, :], l, 0.0) / cap_out
        g = g * (cap_out * (1.0 - t * t))
    g = g * mult
    ptrs = g_ptr + offs_m.to(tl.int64)[:, None] * stride_gn + offs_v[None, :]
    tl.store(ptrs, g.to(g_ptr.dtype.element_ty), mask=row_mask[:, None] & v_mask[None, :])


def _blocks(dtype):
    if INTERPRET:
        return 16, 32, 16
    return 64, 128, 64


def _prec(dtype):
    # fp32 inputs must not silently drop to TF32: the fp32 contract is 1e-5 relative
    return "ieee" if dtype == torch.float32 else "tf32"


def _prep(hidden, weight, bias, targets, rows, cfg: Config, ref):
    mult = _hidden_mult(cfg)
    # the kernels read W in its own dtype; only the (small) bias is prepared in fp32
    _, b, bshift = _prep_head(weight[:0], bias, cfg, mult)
    if rows is None:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
    t = targets.index_select(0, rows).contiguous()
    w = weight if weight.dtype == hidden.dtype else weight.to(hidden.dtype)
    rh = rw = rb = None
    if ref is not None:
        rh, rw, rb = ref
        _, rb, _ = _prep_head(rw[:0], rb, cfg, mult)
        rh = rh if rh.dtype == hidden.dtype else rh.to(hidden.dtype)
        rw = rw if rw.dtype == hidden.dtype else rw.to(hidden.dtype)
    cap_out = cfg.softcap / cfg.temperature if cfg.softcap is not None else 1.0
    return mult, w, b, bshift, rows.contiguous(), t, rh, rw, rb, cap_out


def _ref_args(hidden, rh, rw, rb, w, b):
    if rh is None:
        return (hidden, 0, 0, w, 0, 0, b if b is not None else w)
    return (rh, rh.stride(0), rh.stride(1), rw, rw.stride(0), rw.stride(1),
            rb if rb is not None else rw)


def triton_forward(hidden, weight, bias, targets, rows, cfg: Config, ref=None):
    N = hidden.shape[0]
    V = cfg.vocab_size
    dev = hidden.device
    mult, w, b, bshift, rows, t, rh, rw, rb, cap_out = _prep(hidden, weight, bias, targets, rows,
                                                            cfg, ref)
    n = rows.numel()
    BM, BV, BK = _blocks(hidden.dtype)
    n_vt = triton.cdiv(V, BV)
    m_blocks = max(1, triton.cdiv(n, BM))
    if INTERPRET:
        split = min(2, n_vt)  # exercise the cross-split merge in tests
    else:
        sms = torch.cuda.get_device_properties(dev).multi_processor_count
        split = max(1, min(n_vt, triton.cdiv(2 * sms, m_blocks)))
    tiles_per_split = triton.cdiv(n_vt, split)
    split = triton.cdiv(n_vt, tiles_per_split)
    f32 = dict(dtype=torch.float32, device=dev)
    mk = lambda: torch.empty(n, split, **f32)  # noqa: E731
    m_p, s_p, t_p = mk(), mk(), mk()
    a_p = mk() if cfg.need_entropy else m_p
    mq_p, sq_p, b_p = (mk(), mk(), mk()) if cfg.need_exact_kl else (m_p, m_p, m_p)
    logp = torch.zeros(N, **f32)
    lse = torch.zeros(N, **f32)
    ent = torch.zeros(N, **f32) if cfg.need_entropy else None
    kl = torch.zeros(N, **f32) if cfg.need_exact_kl else None
    aux = torch.zeros(N, **f32) if cfg.need_exact_kl else None
    if n == 0:
        return logp, lse, ent, kl, aux
    _fwd_kernel[(m_blocks, split)](
        hidden, hidden.stride(0), hidden.stride(1), rows, t, n,
        w, w.stride(0), w.stride(1), b if b is not None else w,
        *_ref_args(hidden, rh, rw, rb, w, b),
        hidden.shape[1], V, mult, cap_out, tiles_per_split,
        m_p, s_p, a_p, t_p, mq_p, sq_p, b_p, split,
        HAS_BIAS=b is not None, HAS_RBIAS=rb is not None, SOFTCAP=cfg.softcap is not None,
        NEED_ENT=cfg.need_entropy, NEED_KL=cfg.need_exact_kl, PREC=_prec(hidden.dtype),
        BLOCK_M=BM, BLOCK_V=BV, BLOCK_K=BK)
    M = m_p.amax(1, keepdim=True)
    r = torch.exp(m_p - M)
    S = (s_p * r).sum(1)
    logS = S.log()
    row_lse = M.squeeze(1) + logS
    lse.index_copy_(0, rows, row_lse + bshift)
    logp.index_copy_(0, rows, t_p.sum(1) - row_lse)
    if ent is not None:
        A = (r * (a_p + s_p * (m_p - M))).sum(1)
        ent.index_copy_(0, rows, logS - A / S)
    if kl is not None:
        MQ = mq_p.amax(1, keepdim=True)
        lse_q = MQ.squeeze(1) + (sq_p * torch.exp(mq_p - MQ)).sum(1).log()
        B = (r * b_p).sum(1)
        kl.index_copy_(0, rows, B / S - row_lse + lse_q)
        aux.index_copy_(0, rows, lse_q)
    return logp, lse, ent, kl, aux


def _acc_mm(acc32, a, b):
    """acc32 += a @ b with fp32 accumulation whatever the operands' dtype."""
    if a.dtype == torch.float32:
        acc32.addmm_(a, b)
        return
    # bf16 GEMM with fp32 output straight into the accumulator (torch ≥ 2.8 on CUDA); the
    # fallbacks cost a [V, H] temporary
    try:
        torch.addmm(acc32, a, b, out_dtype=torch.float32, out=acc32)
        return
    except (RuntimeError, TypeError):
        pass
    try:
        acc32.add_(torch.mm(a, b, out_dtype=torch.float32))
    except (RuntimeError, TypeError):
        acc32.add_(torch.mm(a, b).float())


def triton_backward(hidden, weight, bias, targets, rows, cfg: Config, ref, lse, ent, kl, aux,
                    g_lp, g_ent, g_kl, g_lse, needs):
    N, Hd = hidden.shape
    V = cfg.vocab_size
    dev = hidden.device
    need_h, need_w, need_b = needs
    mult, w, b, bshift, rows, t, rh, rw, rb, cap_out = _prep(hidden, weight, bias, targets, rows,
                                                            cfg, ref if g_kl is not None else None)
    n = rows.numel()
    f32 = dict(dtype=torch.float32, device=dev)
    zeros = torch.zeros(N, **f32)
    g_lp = zeros if g_lp is None else g_lp
    c = -g_lp
    if g_lse is not None:
        c = c + g_lse
    clp = None
    if g_ent is not None:
        c = c - g_ent * ent
        clp = -g_ent
    lseq = None
    if g_kl is not None:
        c = c - g_kl * kl
        clp = g_kl if clp is None else clp + g_kl
        lseq = aux  # reference lse (with the same bias shift) saved by the forward
    sel = lambda x: None if x is None else x.index_select(0, rows).contiguous()  # noqa: E731
    lse_r, c_r, glp_r, clp_r, gkl_r = (sel(lse - bshift), sel(c), sel(g_lp), sel(clp), sel(g_kl))
    lseq = sel(lseq)

    grad_h = torch.zeros(N, Hd, **f32) if need_h else None
    grad_w = torch.zeros(V, Hd, **f32) if need_w else None
    grad_b = torch.zeros(V, **f32) if need_b else None
    if n == 0:
        return grad_h, grad_w, grad_b
    BM, BV, BK = _blocks(hidden.dtype)
    gdtype = torch.float32 if hidden.dtype == torch.float32 else hidden.dtype
    esize = torch.finfo(gdtype).bits // 8
    C = max(BM, (BWD_CHUNK_BYTES // (esize * V)) // BM * BM)
    G = torch.empty(min(C, n), V, dtype=gdtype, device=dev)
    wv = w[:V]
    for s0 in range(0, n, C):
        s1 = min(n, s0 + C)
        cr = rows[s0:s1]
        Gc = G[: s1 - s0]
        dummy = lse_r
        _bwd_kernel[(triton.cdiv(s1 - s0, BM), triton.cdiv(V, BV))](
            hidden, hidden.stride(0), hidden.stride(1), cr, t[s0:s1], s1 - s0,
            w, w.stride(0), w.stride(1), b if b is not None else w,
            *_ref_args(hidden, rh, rw, rb, w, b),
            Hd, V, mult, cap_out,
            lse_r[s0:s1], lseq[s0:s1] if lseq is not None else dummy, c_r[s0:s1], glp_r[s0:s1],
            clp_r[s0:s1] if clp_r is not None else dummy,
            gkl_r[s0:s1] if gkl_r is not None else dummy,
            Gc, Gc.stride(0),
            HAS_BIAS=b is not None, HAS_RBIAS=rb is not None, SOFTCAP=cfg.softcap is not None,
            USE_LOGP=clp_r is not None, USE_KL=gkl_r is not None, PREC=_prec(hidden.dtype),
            BLOCK_M=BM, BLOCK_V=BV, BLOCK_K=BK)
        if need_h:
            grad_h.index_copy_(0, cr, torch.mm(Gc, wv).float())
        if need_w:
            _acc_mm(grad_w, Gc.t(), hidden.index_select(0, cr))
        if need_b:
            grad_b.add_(Gc.float().sum(0) if Gc.dtype != torch.float32 else Gc.sum(0))
    return grad_h, grad_w, grad_b
