"""Chunked PyTorch implementation (CPU and fallback) and the naive reference: the tiling plan, the
CPU worker pool, the forward; the backward is in :mod:`._torch_backward`.

The chunked path tiles the logits matrix in both directions.  The outer loop walks the
(non-ignored) rows in chunks of ``C`` rows (``ROW_CHUNK`` = 512 by default, fewer when there are
fewer rows; chunks of equal size); the inner loop walks the vocabulary in tiles of ``Vt``
columns, ``C · Vt · 4`` bytes capped by ``CHUNK_BYTES`` (the bytes of one workspace buffer,
2 MiB by default: 512 rows × 1000 columns at V = 32000).  When a whole-vocabulary chunk of
``ROW_CHUNK`` rows fits in the budget, ``Vt = V`` and the chunk takes as many rows as fit (one
GEMM per chunk, no vocabulary loop; with several workers the vocabulary is still split once
per worker).

Why not whole-vocabulary row chunks: the workspace has to be small, since ∂W alone is V·H·4
bytes and everything beyond the gradients counts against the memory target; a small
whole-vocabulary chunk has few rows, and then every chunk re-reads all of W and
read-modify-writes all of ∂W in GEMMs whose short dimension is those few rows, which is
memory bound (V = 32k, H = 512, 2 threads: 68–100 GFLOP/s at C = 32 rows, 150–185 at C = 512;
whole-vocabulary chunks in a 4 MiB budget ran 1.65× slower than in 64 MiB).  With C = 512 and vocabulary
tiles every GEMM has 512 as its short dimension, W and ∂W are streamed once per 512 rows, and
the tile and the ∂W rows it updates stay in cache.

Workers (CPU): the tiles of a row chunk are dealt round-robin to ``WORKERS`` threads
(default ``torch.get_num_threads()``; inline for small problems), each running torch
single-threaded, and their partial results are merged in a fixed order (so results are
bitwise reproducible).  Reason: a tiled pass is thousands of small ops, and each multithreaded
op ends in an OpenMP barrier that, on a machine shared with other processes, waits for a
descheduled thread — measured ~8 ms per op at load 3 on 2 cores against 0.07 ms for the same op
single-threaded, which made the tiled path 2.4× slower than naive torch there.  Workers on
disjoint tiles only meet once per row chunk.  The tile count is a multiple of the worker count.

Forward: an online log-sum-exp over each worker's tiles (running max m and sum S per row,
rescaled when m grows), merged across workers; the target logit is picked from the tile that
holds it.  Entropy rides along as A = Σ e^{l−m}(l−m) (rescaled as A ← e^{m−m'}(A + S(m−m'))),
H = log S − A/S.  Exact KL takes a second pass over the tiles once both log-sum-exps are known
and sums p·(log p − log q) per element, so that a KL near 0 does not come from cancelling lses;
the reference lse is returned in ``aux`` for the backward.  A worker with a single tile keeps
its shifted logits in its buffers and skips the second pass's GEMMs.
Backward: given the per-row scalars (lse, entropy, KL, reference lse, c) the gradient of the
logits is elementwise, so each (row chunk, tile) rebuilds its [C, Vt] block G and does
∂h_chunk += G·W[tile] (one share per worker, summed), ∂W[tile] += Gᵀ·h_chunk,
∂b[tile] += column sums of G; the tiles of different workers are disjoint rows of ∂W.

Scalars (logit_scale, 1/T, 1/softcap) are folded into the [C, H] hidden chunk and the bias
rather than applied to [C, Vt] tensors, and every [C, Vt] pass is done in place.  Memory above
inputs and outputs: per worker at most four [C, Vt] buffers (one for log-probs/lse and the plain
backward; entropy, exact KL and soft-cap add the others) and a [C, H] ∂h share, plus [C, H]
temporaries: independent of N.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Optional, Tuple

import torch

from ._common import Config

# Bytes of one [C, Vt] float32 workspace buffer (per worker).  2 MiB: C = 512 rows × ~1000
# columns, which keeps the GEMMs near full speed.
CHUNK_BYTES = int(os.environ.get("PREFOPT_KERNELS_CHUNK_BYTES", 2 << 20))
# Rows per chunk when the vocabulary has to be tiled (GEMM-friendly: W and ∂W are streamed once
# per ROW_CHUNK rows).
ROW_CHUNK = int(os.environ.get("PREFOPT_KERNELS_ROW_CHUNK", 512))
# Worker threads on CPU, each running its torch ops single-threaded (0: torch.get_num_threads()).
WORKERS = int(os.environ.get("PREFOPT_KERNELS_WORKERS", 0))


def _plan(total: int, vocab: int, workers: int = 1) -> Tuple[int, int]:
    """(rows per chunk C, vocabulary tile Vt) with C·Vt ≤ CHUNK_BYTES / 4.

    Tiles are of equal width (the last one may be narrower) and, with several workers, a
    multiple of ``workers`` in number, so that every worker gets the same share; row chunks are
    of equal size.
    """
    per = max(1, CHUNK_BYTES // 4)
    rc = max(1, min(ROW_CHUNK, total))
    if rc * vocab <= per:
        c, vt = max(1, per // max(vocab, 1)), vocab  # whole vocabulary, as many rows as fit
    else:
        c = max(1, min(rc, per))
        vt = max(1, min(vocab, per // c))
    nt = -(-vocab // vt)
    if workers > 1:
        nt = min(vocab, -(-nt // workers) * workers)
    vt = -(-vocab // nt)
    if total > 0:
        c = -(-total // -(-total // c))
    return c, vt


# Below this many multiply-adds per row chunk (C·V·H) the auto setting runs inline: handing
# small chunks to threads costs more than it saves.
_MIN_POOL_WORK = 1 << 25


def _workers(device: torch.device, total: int, vocab: int, hd: int) -> int:
    if device.type != "cpu":
        return 1
    if WORKERS > 0:
        return WORKERS
    if min(total, ROW_CHUNK) * vocab * hd < _MIN_POOL_WORK:
        return 1
    if min(total, ROW_CHUNK) * vocab <= CHUNK_BYTES // 4:
        # The whole vocabulary fits one tile: splitting it for workers would add an online-lse
        # pass per tile and run each half single-threaded; torch's own threads on the one tile are
        # faster (a DPO step at V = 510 took 8% longer with workers on a quiet machine).
        return 1
    return max(1, torch.get_num_threads())


# CPU worker pool.  Each worker runs torch single-threaded: on a shared machine every intra-op
# parallel region ends in a barrier that waits for whichever thread was descheduled (measured:
# ~8 ms per op with 2 threads at load 3 on 2 cores, against 0.07 ms single-threaded), and a
# tiled pass is thousands of small ops; workers on disjoint tiles never wait for each other
# until the row chunk is done.
_pools: dict = {}  # worker count -> ThreadPoolExecutor
_pool_lock = threading.Lock()


def _worker_init(barrier: threading.Barrier) -> None:
    torch.set_num_threads(1)  # this thread's OpenMP and MKL settings
    torch.get_num_threads()   # torch's per-thread lazy init, while the global setting is 1
    barrier.wait()            # so that each of the pool's threads runs this once


def _get_pool(n: int) -> ThreadPoolExecutor:
    with _pool_lock:
        pool = _pools.get(n)
        if pool is None:
            prev = torch.get_num_threads()
            pool = ThreadPoolExecutor(n, thread_name_prefix="prefopt-kernels")
            barrier = threading.Barrier(n)
            for f in [pool.submit(_worker_init, barrier) for _ in range(n)]:
                f.result()
            # torch.set_num_threads also stores a process-wide default (read by threads that
            # have not run torch yet): put the caller's back
            torch.set_num_threads(prev)
            _pools[n] = pool
        return pool


def _reset_pools_after_fork() -> None:
    global _pools, _pool_lock
    _pools, _pool_lock = {}, threading.Lock()  # the child has none of the parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pools_after_fork)


def _no_grad_call(f):
    with torch.no_grad():
        return f()


def _run(tasks):
    """Results of the zero-argument ``tasks``: inline when one, else one per pool worker."""
    if len(tasks) == 1:
        return [_no_grad_call(tasks[0])]
    pool = _get_pool(len(tasks))
    futs = [pool.submit(_no_grad_call, f) for f in tasks]
    return [f.result() for f in futs]


def _chunks(total: int, c: int, rows: Optional[torch.Tensor]):
    for start in range(0, total, c):
        stop = min(total, start + c)
        if rows is None:
            yield slice(start, stop), None
        else:
            yield None, rows[start:stop]


def _tiles(vocab: int, vt: int):
    for v0 in range(0, vocab, vt):
        yield v0, min(vocab, v0 + vt)


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
    """Tempered logits l of one tile (``w``, ``b`` already sliced), written into ``out``."""
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


def _buf(cache: dict, name: str, rows: int, cols: int, device) -> torch.Tensor:
    """A contiguous [rows, cols] fp32 view of a flat, reused workspace buffer."""
    n = rows * cols
    t = cache.get(name)
    if t is None or t.numel() < n:
        t = torch.empty(n, dtype=torch.float32, device=device)
        cache[name] = t
    return t[:n].view(rows, cols)


def _slice(b, v0: int, v1: int):
    return None if b is None else b[v0:v1]


def _in_tile(t: torch.Tensor, v0: int, v1: int):
    """Column of each row's target inside [v0, v1) (clamped) and whether it lies there."""
    loc = t - v0
    inside = (loc >= 0) & (loc < v1 - v0)
    return loc.clamp_(0, v1 - v0 - 1), inside


def _dot_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ_v a[i, v]·b[i, v] per row."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(a.shape[0])


def _merge_lse(parts, mi: int, si: int, ai: Optional[int] = None):
    """Merge per-worker online states (m, S[, A]) into the row chunk's."""
    m = parts[0][mi]
    for p in parts[1:]:
        m = torch.maximum(m, p[mi])
    S = A = None
    for p in parts:
        d = p[mi] - m  # ≤ 0
        r = d.exp()
        S = r * p[si] if S is None else S + r * p[si]
        if ai is not None:
            a = r * (p[ai] + p[si] * d)
            A = a if A is None else A + a
    return m, S, A


def _fwd_tiles(cache, tiles, hs, t, rhs, w, b, rw, rb, cfg: Config, need_ent: bool,
               need_kl: bool, need_jac: bool = False):
    """One worker's tiles of a row chunk: online (m, S, A, target logit, m_q, S_q) and, with
    ``need_jac``, (μ, F_t): μ = Σ_v e^{l_v − m}·F_v·W_v over the worker's tiles and the target's
    F_t (F ≡ 1 without soft-cap, else ∂l/∂(tanh argument)), from which the chunk's Jacobian
    ∂log p_t/∂h is formed (:func:`chunked_forward`).  The entropy and exact-KL terms are never
    combined with ``need_jac`` (their gradient is not a function of g_lp alone).

    With a single tile and exact KL, the shifted logits l − m, q − m_q and e^{l−m} stay in the
    buffers for :func:`_kl_tiles`, which then needs no second GEMM.
    """
    c = hs.shape[0]
    dev = hs.device
    single = len(tiles) == 1
    keep_e = need_ent or (need_kl and single)
    m = S = A = mq = Sq = tgt = L = E = Q = None
    mu = ft = None
    for v0, v1 in tiles:
        vt = v1 - v0
        F = _buf(cache, "F", c, vt, dev) if (need_jac and cfg.softcap is not None) else None
        L = _logits_into(_buf(cache, "L", c, vt, dev), hs, w[v0:v1], _slice(b, v0, v1), cfg,
                         keep_tanh=F)
        loc, inside = _in_tile(t, v0, v1)
        lt = L.gather(1, loc[:, None]).squeeze(1).where(inside, 0.0)
        tgt = lt if tgt is None else tgt + lt
        if F is not None:
            fl = F.gather(1, loc[:, None]).squeeze(1).where(inside, 0.0)
            ft = fl if ft is None else ft + fl
        m_new = L.amax(1) if m is None else torch.maximum(m, L.amax(1))
        L.sub_(m_new[:, None])  # l − m'
        At = None
        if keep_e:
            E = torch.exp(L, out=_buf(cache, "E", c, vt, dev))
            St = E.sum(1)
            if need_ent:
                At = _dot_rows(E, L)
        else:
            St = L.exp_().sum(1)
        alpha = None
        if m is None:
            S, A = St, At
        else:
            d = m - m_new  # ≤ 0
            alpha = d.exp()
            if At is not None:
                A = alpha * (A + S * d) + At
            S = alpha * S + St
        m = m_new
        if need_jac:
            # L holds e^{l − m'} now: the softmax-weighted sum of the head's rows rides on the
            # same tile (one [C, Vt]·[Vt, H] GEMM, the one the backward would otherwise redo)
            P = L.mul_(F) if F is not None else L
            if mu is None:
                mu = torch.mm(P, w[v0:v1], out=_buf(cache, "MU", c, w.shape[1], dev))
            else:
                mu.mul_(alpha[:, None]).addmm_(P, w[v0:v1])
        if need_kl:
            Q = _logits_into(_buf(cache, "Q", c, vt, dev), rhs, rw[v0:v1], _slice(rb, v0, v1), cfg)
            mq_new = Q.amax(1) if mq is None else torch.maximum(mq, Q.amax(1))
            Q.sub_(mq_new[:, None])
            if single:  # keep q − m_q for the KL pass
                Sqt = torch.exp(Q, out=_buf(cache, "X", c, vt, dev)).sum(1)
            else:
                Sqt = Q.exp_().sum(1)
            Sq = Sqt if mq is None else (mq - mq_new).exp() * Sq + Sqt
            mq = mq_new
    kept = (L, Q, E) if (need_kl and single) else None
    return m, S, A, tgt, mq, Sq, kept, mu, ft


def _kl_tiles(cache, tiles, part, m, logS, mq, logSq, hs, rhs, w, b, rw, rb, cfg: Config):
    """One worker's share of Σ_v e^{l_v − m}·(log p_v − log q_v) for a row chunk.

    log p − log q is formed per element as (l − q) − (lse_p − lse_q), with
    lse_p − lse_q = (m − m_q) + (log S − log S_q): a KL ≈ 0 does not come from cancelling lses,
    and m + log S is never rounded at the logits' magnitude.
    """
    kept = part[6]
    if kept is not None:
        # the worker's only tile is still in its buffers: L = l − m_k, Q = q − m_qk, E = e^{l−m_k}
        L, Q, E = kept
        mk, mqk = part[0], part[4]
        delta = (((m - mk) - (mq - mqk)) + (logS - logSq))[:, None]
        torch.sub(L, Q, out=Q).sub_(delta)
        return _dot_rows(E, Q) * (mk - m).exp()
    c = hs.shape[0]
    dev = hs.device
    delta = ((m - mq) + (logS - logSq))[:, None]
    d = None
    for v0, v1 in tiles:
        vt = v1 - v0
        L = _logits_into(_buf(cache, "L", c, vt, dev), hs, w[v0:v1], _slice(b, v0, v1), cfg)
        Q = _logits_into(_buf(cache, "Q", c, vt, dev), rhs, rw[v0:v1], _slice(rb, v0, v1), cfg)
        torch.sub(L, Q, out=Q).sub_(delta)  # log p − log q
        dk = _dot_rows(L.sub_(m[:, None]).exp_(), Q)  # e^{l − m}
        d = dk if d is None else d + dk
    return d


def chunked_forward(hidden, weight, bias, targets, rows, cfg: Config, ref=None, jac=None):
    """Returns (logp, lse, entropy|None, kl|None, aux), fp32 [N], zero on rows not in ``rows``.

    ``aux`` is the reference lse (in the reference head's bias-shifted frame) when exact KL is
    requested, else None.

    ``jac``: an fp32 [N, H] tensor to receive J_i = ∂log p_i/∂h_i (rows not in ``rows`` are
    left as they are).  With z = h·Wᵀ + b and l the tempered logits,
    ∂log p_t/∂h = Σ_v (δ_vt − p_v)·∂l_v/∂h = mult·(F_t·W_t − Σ_v p_v F_v W_v), where mult is
    the scalar folded into the hidden chunk and F_v = ∂l_v/∂(mult·z_v) (1 without soft-cap).
    Since ∂h = g_lp·J for any upstream g_lp, a loss of the log-probs alone needs no logit
    recomputation in its backward when the head is frozen.  Not combined with entropy or exact
    KL (asserted by the caller).
    """
    N = hidden.shape[0]
    V = cfg.vocab_size
    dev = hidden.device
    mult = _hidden_mult(cfg)
    w, b, bshift = _prep_head(weight, bias, cfg, mult)
    rw = rb = None
    if ref is not None:
        rh, rw, rb = ref
        rw, rb, _ = _prep_head(rw, rb, cfg, mult)
    f32 = dict(dtype=torch.float32, device=dev)
    logp = torch.zeros(N, **f32)
    lse = torch.zeros(N, **f32)
    ent = torch.zeros(N, **f32) if cfg.need_entropy else None
    kl = torch.zeros(N, **f32) if cfg.need_exact_kl else None
    aux = torch.zeros(N, **f32) if cfg.need_exact_kl else None
    total = N if rows is None else rows.numel()
    if total == 0:
        return logp, lse, ent, kl, aux
    nw = _workers(dev, total, V, hidden.shape[1])
    C, Vt = _plan(total, V, nw)
    tiles = list(_tiles(V, Vt))
    nw = min(nw, len(tiles))
    groups = [tiles[k::nw] for k in range(nw)]
    caches = [dict() for _ in range(nw)]
    need_ent, need_kl = ent is not None, kl is not None
    for sl, idx in _chunks(total, C, rows):
        hs = _scaled_hidden(_take(hidden, sl, idx), mult)
        t = _take(targets, sl, idx)
        rhs = _scaled_hidden(_take(rh, sl, idx), mult) if need_kl else None
        parts = _run([partial(_fwd_tiles, caches[k], groups[k], hs, t, rhs, w, b, rw, rb, cfg,
                              need_ent, need_kl, jac is not None) for k in range(nw)])
        m, S, A = _merge_lse(parts, 0, 1, 2 if need_ent else None)
        tgt = parts[0][3]
        for p in parts[1:]:
            tgt = tgt + p[3]  # only the tile holding the target contributes
        logS = S.log()
        chunk_lse = m + logS
        if jac is not None:
            _put(jac, sl, idx, _merge_jac(parts, m, S, w, t, mult))
        if need_ent:
            _put(ent, sl, idx, logS - A / S)
        if need_kl:
            mq, Sq, _ = _merge_lse(parts, 4, 5)
            logSq = Sq.log()
            ds = _run([partial(_kl_tiles, caches[k], groups[k], parts[k], m, logS, mq, logSq, hs,
                               rhs, w, b, rw, rb, cfg) for k in range(nw)])
            d = ds[0]
            for x in ds[1:]:
                d = d + x
            _put(kl, sl, idx, d / S)
            _put(aux, sl, idx, mq + logSq)
        _put(lse, sl, idx, chunk_lse + bshift)
        _put(logp, sl, idx, tgt - chunk_lse)
    return logp, lse, ent, kl, aux


def _merge_jac(parts, m, S, w, t, mult: float) -> torch.Tensor:
    """mult·(F_t·W_t − μ/S) for a row chunk from the workers' (m_k, μ_k, F_t,k), in a fixed order."""
    mu = None
    ft = None
    for p in parts:
        r = (p[0] - m).exp()[:, None]  # ≤ 1: worker k's running max against the chunk's
        mu = p[7] * r if mu is None else mu.add_(p[7] * r)
        if p[8] is not None:
            ft = p[8] if ft is None else ft + p[8]  # only the tile holding the target contributes
    wt = w.index_select(0, t)
    if ft is not None:
        wt.mul_(ft[:, None])
    return wt.sub_(mu.div_(S[:, None])).mul_(mult)


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
