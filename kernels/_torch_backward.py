"""Backward of the chunked PyTorch path: ∂h, ∂W, ∂b from the per-row scalars the forward kept.

Tiling, worker pool and the logit helpers are :mod:`._torch_impl`'s (the plan reads its
``ROW_CHUNK``, ``CHUNK_BYTES`` and ``WORKERS`` at call time); the method is described there.
"""

from __future__ import annotations

from functools import partial
from typing import Tuple

import torch

from ._common import Config
from ._torch_impl import (_buf, _chunks, _hidden_mult, _in_tile, _logits_into, _plan, _prep_head, _put, _run,
                          _scaled_hidden, _slice, _take, _tiles, _workers)


def _bwd_tiles(cache, tiles, gh, fast: bool, hs, t, gt, row, w, b, rw, rb, rhs, cfg: Config,
               grad_w, grad_b, mult: float, first_chunk: bool):
    """One worker's tiles of a row chunk: writes ∂W[tile], ∂b[tile]; returns its ∂h share.

    ``row`` holds the per-row scalars: fast path (shift, s), otherwise (lse, c, coef, g_kl,
    lse_q) as [C, 1] columns (None where unused).  ``gh`` is where the ∂h share goes: a slice of
    grad_h, None for a workspace buffer, False when ∂h is not needed.  ``first_chunk``: grad_w
    is uninitialized and this chunk writes it instead of adding to it.
    """
    c, Hd = hs.shape
    dev = hs.device
    first = True
    for v0, v1 in tiles:
        vt = v1 - v0
        w_t = w[v0:v1]
        loc, inside = _in_tile(t, v0, v1)
        loc, src = loc[:, None], gt.where(inside, 0.0)[:, None]
        G = _buf(cache, "L", c, vt, dev)
        if fast:
            # dl = g δ_t + c·p = s·(|c|·p + s·g δ_t) with s = ±1, and |c|·p = exp(l − lse + log|c|):
            # the row shift rides in the GEMM's bias, leaving three passes over [C, Vt]
            # (GEMM write, exp, sign).
            shift, s = row
            if b is None:
                G.copy_(shift.expand(c, vt))
            else:
                torch.add(b[None, v0:v1], shift, out=G)
            G.addmm_(hs, w_t.t())
            G.exp_()
            G.scatter_add_(1, loc, src)
            G.mul_(s)
        else:
            lse_c, cc, coef_lp, gk, lse_q = row
            F = _buf(cache, "F", c, vt, dev) if cfg.softcap is not None else None
            L = _logits_into(G, hs, w_t, _slice(b, v0, v1), cfg, keep_tanh=F)
            L.sub_(lse_c)  # log p
            P = torch.exp(L, out=_buf(cache, "E", c, vt, dev))
            if coef_lp is not None:
                # P·(c + (g_kl − g_H)·log p − g_kl·log q), built in the log p buffer
                if gk is not None:
                    Q = _logits_into(_buf(cache, "Q", c, vt, dev), rhs, rw[v0:v1],
                                     _slice(rb, v0, v1), cfg)
                    Q.sub_(lse_q).mul_(gk)
                    L.mul_(coef_lp).sub_(Q)
                else:
                    L.mul_(coef_lp)
                L.add_(cc).mul_(P)
                G = L
            else:
                G = P.mul_(cc)
            G.scatter_add_(1, loc, src)
            if F is not None:
                G.mul_(F)
        if gh is not False:
            if gh is None:
                gh = _buf(cache, "GH", c, Hd, dev)
            if first:
                torch.mm(G, w_t, out=gh)
            else:
                gh.addmm_(G, w_t)
        first = False
        if grad_w is not None:
            if first_chunk:  # grad_w starts uninitialized
                torch.mm(G.t(), hs, out=grad_w[v0:v1])
            else:
                grad_w[v0:v1].addmm_(G.t(), hs)
        if grad_b is not None:
            grad_b[v0:v1].add_(G.sum(0), alpha=mult)
    return None if (first or gh is False) else gh


def chunked_backward(hidden, weight, bias, targets, rows, cfg: Config, ref, lse, ent, kl, aux,
                     g_lp, g_ent, g_kl, g_lse, needs: Tuple[bool, bool, bool]):
    """Gradients (hidden, weight, bias) given per-row upstream grads (None = zero).

    ``g_lp`` already contains the k1/k2/k3 term; ``aux`` is the reference lse from the forward.
    See ``_common`` for the formula.
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
    rh = rw = rb = None
    if use_ent:
        c = c - g_ent * ent
    if use_kl:
        c = c - g_kl * kl
        rh, rw, rb = ref
        rw, rb, _ = _prep_head(rw, rb, cfg, mult)
    fast = not (use_ent or use_kl or cfg.softcap is not None)

    total = N if rows is None else rows.numel()
    # the first row chunk writes every row of grad_w, and the chunks write every row of grad_h
    # unless some are skipped: no zero-fill pass over them then
    grad_h = grad_w = None
    if need_h:
        grad_h = (torch.empty if rows is None and total > 0 else torch.zeros)(N, Hd, **f32)
    if need_w:
        grad_w = (torch.empty if total > 0 else torch.zeros)(V, Hd, **f32)
    grad_b = torch.zeros(V, **f32) if need_b else None
    if total == 0:
        return grad_h, grad_w, grad_b
    nw = _workers(dev, total, V, Hd)
    C, Vt = _plan(total, V, nw)
    tiles = list(_tiles(V, Vt))
    nw = min(nw, len(tiles))
    groups = [tiles[k::nw] for k in range(nw)]
    caches = [dict() for _ in range(nw)]
    for n_chunk, (sl, idx) in enumerate(_chunks(total, C, rows)):
        hs = _scaled_hidden(_take(hidden, sl, idx), mult)
        t = _take(targets, sl, idx)
        cc = _take(c, sl, idx)
        glp = _take(g_lp, sl, idx)
        lse_c = (_take(lse, sl, idx) - bshift)[:, None]
        if fast:
            s = torch.where(cc >= 0, 1.0, -1.0)
            row = (cc.abs().log()[:, None] - lse_c, s[:, None])
            gt = glp * s
        else:
            coef_lp = gk = lse_q = None
            if use_ent or use_kl:
                ge = _take(g_ent, sl, idx) if use_ent else None
                gkk = _take(g_kl, sl, idx) if use_kl else None
                coef_lp = (gkk - ge if use_ent else gkk) if use_kl else -ge
                coef_lp = coef_lp[:, None]
            if use_kl:
                gk = gkk[:, None]
                lse_q = _take(aux, sl, idx)[:, None]
            row = (lse_c, cc[:, None], coef_lp, gk, lse_q)
            gt = glp
        rhs = _scaled_hidden(_take(rh, sl, idx), mult) if use_kl else None
        # worker 0 writes its ∂h share straight into grad_h when the chunk is a slice of rows
        outs = [(grad_h[sl] if (k == 0 and idx is None) else None) if need_h else False
                for k in range(nw)]
        ghs = _run([partial(_bwd_tiles, caches[k], groups[k], outs[k], fast, hs, t, gt, row, w, b,
                            rw, rb, rhs, cfg, grad_w, grad_b, mult, n_chunk == 0)
                    for k in range(nw)])
        if need_h:
            gh = ghs[0]
            for x in ghs[1:]:
                gh.add_(x)
            if mult != 1.0:
                gh.mul_(mult)
            if idx is not None:  # otherwise gh is grad_h[sl] already
                _put(grad_h, sl, idx, gh)
    return grad_h, grad_w, grad_b
