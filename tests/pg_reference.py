"""Float64 references of the policy-gradient families, written from their papers' equations one token at a
time with ``math`` (no torch), for tests/test_pg_losses.py. Each returns the loss L (aggregated as the
objective's ``loss_agg``) and dL/d log π(y_t) for every token, from lists of floats."""

import math

import torch

from prefopt.models.logprobs import TokenStats


class EntropyScorer:
    """Policy log-probs as a leaf tensor (the loss's gradient w.r.t. them is visible), given entropies."""

    def __init__(self, logps, mask, entropy=None):
        self.lp = logps.clone().requires_grad_(True)
        self.mask = mask
        self.H = torch.zeros_like(logps) if entropy is None else entropy

    def logps(self, batch, side=None, *, entropy=False):
        return TokenStats(logps=self.lp * self.mask, mask=self.mask, entropy=self.H * self.mask if entropy else None)

    def ref_logps(self, batch, side=None):
        return TokenStats(logps=batch["ref_logps"] * self.mask, mask=self.mask)


def rows(lp, old, A, mask):
    """Per sequence: the completion positions and their (log π, log π_old, A) as floats."""
    out = []
    for i in range(lp.shape[0]):
        pos = [t for t in range(lp.shape[1]) if bool(mask[i, t])]
        out.append([(t, float(lp[i, t]), float(old[i, t]), float(A[i, t])) for t in pos])
    return out


def agg_weights(seqs, loss_agg, T_max=None):
    """w_t with L = Σ_t w_t ℓ_t for the aggregation modes (prefopt's module docstring)."""
    N, n_all = len(seqs), sum(len(s) for s in seqs)
    w = []
    for s in seqs:
        if loss_agg == "token-mean":
            w.append([1 / n_all] * len(s))
        elif loss_agg == "seq-mean-token-mean":
            w.append([1 / (N * len(s))] * len(s))
        elif loss_agg == "seq-mean-token-sum":
            w.append([1 / N] * len(s))
        else:
            w.append([1 / (N * T_max)] * len(s))
    return w


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _clip(x, lo, hi):
    return min(max(x, lo), hi)


def token_terms(kind, seq, cfg):
    """[(ℓ_t, dℓ_t/dlogπ_t)] for the token-local families, or for the sequence families the per-token value
    and, as a second element, the gradient w.r.t. every token of the sequence ([n] list) of ℓ_t."""
    εl, εh = cfg.get("eps_low", 0.2), cfg.get("eps_high", 0.2)
    out = []
    n = len(seq)
    if kind in ("gspo", "gspo_token"):
        s = math.exp(sum(lp - o for _, lp, o, _ in seq) / n)
    for k, (_, lp, o, A) in enumerate(seq):
        r = math.exp(lp - o)
        if kind == "clip":
            active = r * A <= _clip(r, 1 - εl, 1 + εh) * A
            out.append((-min(r * A, _clip(r, 1 - εl, 1 + εh) * A), [(-A * r if active and j == k else 0.0) for j in range(n)]))
        elif kind in ("gspo", "gspo_token"):
            active = s * A <= _clip(s, 1 - εl, 1 + εh) * A
            v = -min(s * A, _clip(s, 1 - εl, 1 + εh) * A)
            if kind == "gspo":  # ∂s/∂logπ_u = s/n for every u of the sequence
                out.append((v, [(-A * s / n if active else 0.0) for _ in range(n)]))
            else:  # sg[s]·π_t/sg[π_t]: only the token's own log-prob
                out.append((v, [(-A * s if active and j == k else 0.0) for j in range(n)]))
        elif kind == "sapo":
            τ = cfg["tau_pos"] if A > 0 else cfg["tau_neg"]
            σ = _sig(τ * (r - 1))
            out.append((-σ * 4 / τ * A, [(-A * 4 * σ * (1 - σ) * r if j == k else 0.0) for j in range(n)]))
        elif kind in ("dppo_tv", "dppo_kl"):
            p, q = math.exp(lp), math.exp(o)
            if kind == "dppo_tv":
                valid = (p - q <= εh) if A > 0 else (p - q >= -εl)
            else:
                D = q * math.log(q / p) + (1 - q) * math.log((1 - q + 1e-8) / (1 - p + 1e-8))
                valid = (D <= εh or p <= q) if A > 0 else (D <= εl or p >= q)
            w = min(r, cfg.get("C", 20.0)) * valid
            out.append((-A * w * lp, [(-A * w if j == k else 0.0) for j in range(n)]))
        elif kind == "cispo":
            w = _clip(r, 1 - εl, 1 + εh)
            out.append((-w * A * lp, [(-w * A if j == k else 0.0) for j in range(n)]))
        else:
            raise ValueError(kind)
    return out


def sequence_terms(kind, seq, cfg):
    """(pg_i, dpg_i/dlogπ_u for u in the sequence) of the one-number-per-sequence families."""
    n = len(seq)
    A_i = sum(A for *_, A in seq) / n
    if kind == "gmpo":
        εl, εh = cfg["eps_low"], cfg["eps_high"]
        ℓ = [lp - o for _, lp, o, _ in seq]
        if A_i > 0:
            ℓt = [min(x, _clip(x, -εl, εh)) for x in ℓ]
        elif A_i < 0:
            ℓt = [max(x, _clip(x, -εl, εh)) for x in ℓ]
        else:
            ℓt = ℓ
        s = math.exp(sum(ℓt) / n)
        return -A_i * s, [(-A_i * s / n if a == b else 0.0) for a, b in zip(ℓt, ℓ)]
    raise ValueError(kind)


def vespo_terms(seq, cfg):
    log_w = _clip(sum(_clip(lp - o, -20, 20) for _, lp, o, _ in seq), math.log(1e-8), 20)
    out = []
    for k, (_, lp, o, A) in enumerate(seq):
        kk, lam = (cfg["k_pos"], cfg["lambda_pos"]) if A >= 0 else (cfg["k_neg"], cfg["lambda_neg"])
        φ = math.exp(lam + kk * log_w - lam * math.exp(log_w))
        out.append((-φ * A * lp, [(-φ * A if j == k else 0.0) for j in range(len(seq))]))
    return out


def reference(kind, lp, old, A, mask, loss_agg, cfg, keep=None, extra=None):
    """(L, grad [B, T] as a torch float64 tensor). ``keep``: {(i, t): factor} multiplying ℓ_t (an entropy
    control's or a sampler correction's factor); ``extra``: {(i, t): (value, d/dlogπ_t)} added to ℓ_t."""
    seqs = rows(lp, old, A, mask)
    W = agg_weights(seqs, loss_agg, cfg.get("T_max"))
    L, grad = 0.0, torch.zeros(lp.shape, dtype=torch.float64)
    for i, (seq, w) in enumerate(zip(seqs, W)):
        if not seq:
            continue
        if kind == "gmpo":
            pg_i, g = sequence_terms(kind, seq, cfg)
            terms = [(pg_i, g)] * len(seq)
        elif kind == "vespo":
            terms = vespo_terms(seq, cfg)
        else:
            terms = token_terms(kind, seq, cfg)
        for k, ((t, *_), (v, g)) in enumerate(zip(seq, terms)):
            f = 1.0 if keep is None else keep.get((i, t), 1.0)
            L += w[k] * f * v
            for j, (u, *_) in enumerate(seq):
                grad[i, u] += w[k] * f * g[j]
            if extra and (i, t) in extra:
                ev, eg = extra[(i, t)]
                L += w[k] * ev
                grad[i, t] += w[k] * eg
    return L, grad


def quantile(xs, q):
    """numpy/torch 'linear' quantile of a list."""
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
