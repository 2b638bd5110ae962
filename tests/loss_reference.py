"""Independent float64 implementations of the offline losses, written from their papers one scalar at
a time, and what feeds them: scorers that serve log-probs from tensors, random inputs with padding,
and the finite-difference check of a loss's gradient against a reference."""

import math

import torch

from prefopt.models.logprobs import TokenStats


class FakeScorer:
    """Serves per-token log-probs (and scalar scores) from tensors, one side per call or both sides
    at once (the paired calls), as the trainer's scorer does: the loss in isolation."""

    def __init__(self, pol, ref=None, scores=None):
        self.pol, self.ref, self._scores = pol, ref or {}, scores or {}

    def logps(self, batch, side=None, entropy=False):
        lp, m = self.pol[side]
        return TokenStats(logps=lp * m, mask=m.bool())

    def ref_logps(self, batch, side=None):
        lp, m = self.ref[side]
        return TokenStats(logps=(lp * m).detach(), mask=m.bool())

    def scores(self, batch, side=None):
        return self._scores[side]

    def pair_logps(self, batch, sides=("chosen", "rejected")):
        return tuple(self.logps(batch, s) for s in sides)

    def pair_ref_logps(self, batch, sides=("chosen", "rejected")):
        return tuple(self.ref_logps(batch, s) for s in sides)


# ---- float64 references, one scalar at a time, straight from the papers ----------------------

def _seq(lp, m, i):
    return sum(float(lp[i, t]) for t in range(lp.shape[1]) if m[i, t])


def _len(m, i):
    return sum(1 for t in range(m.shape[1]) if m[i, t])


def _logsig(x):
    return -math.log1p(math.exp(-x)) if x > -30 else x


def _sig(x):
    return 1 / (1 + math.exp(-x))


def ref_dpo(pw, pl, rw, rl, mw, ml, beta, eps, kind):
    """DPO's sigmoid loss and its first variants (robust, hinge, ln): per-pair losses."""
    out = []
    for i in range(pw.shape[0]):
        dw = _seq(pw, mw, i) - _seq(rw, mw, i)
        dl = _seq(pl, ml, i) - _seq(rl, ml, i)
        if kind == "ln":
            dw, dl = dw / max(1, _len(mw, i)), dl / max(1, _len(ml, i))
        h = beta * (dw - dl)
        if kind in ("sigmoid", "ln"):  # Rafailov eq. 7 + cDPO
            out.append(-(1 - eps) * _logsig(h) - eps * _logsig(-h))
        elif kind == "robust":  # Chowdhury et al. eq. 9
            out.append(((1 - eps) * -_logsig(h) - eps * -_logsig(-h)) / (1 - 2 * eps))
        else:  # hinge: max(0, 1 - beta * h')
            out.append(max(0.0, 1 - beta * (dw - dl)))
    return out


def ref_losses(pw, pl, rw, rl, mw, ml, kind, beta, eps=0.0, tau=0.05, delta=0.0):
    """Per-pair losses of every DPO loss_type, each from its paper's equation."""
    if kind in ("sigmoid", "robust", "hinge", "ln"):
        return ref_dpo(pw, pl, rw, rl, mw, ml, beta, eps, kind)
    B = pw.shape[0]
    lw = [_seq(pw, mw, i) for i in range(B)]
    ll = [_seq(pl, ml, i) for i in range(B)]
    ρw = [lw[i] - _seq(rw, mw, i) for i in range(B)]
    ρl = [ll[i] - _seq(rl, ml, i) for i in range(B)]
    out = []
    if kind in ("aot", "aot_unpaired"):
        if kind == "aot":  # Melnyk et al.: sorted policy margins against sorted reference margins
            u = sorted(lw[i] - ll[i] for i in range(B))
            v = sorted(_seq(rw, mw, i) - _seq(rl, ml, i) for i in range(B))
        else:  # sorted chosen log-ratios against sorted rejected log-ratios
            u, v = sorted(ρw), sorted(ρl)
        return [-(1 - eps) * _logsig(beta * (a - b)) - eps * _logsig(-beta * (a - b)) for a, b in zip(u, v)]
    for i in range(B):
        h = beta * (ρw[i] - ρl[i])
        a, b = beta * ρw[i], beta * ρl[i]
        if kind == "exo_pair":  # Ji et al. eq. 16, K = 2: KL(softmax(h, 0) ‖ (1−ε, ε))
            pw_, pl_ = _sig(h), _sig(-h)
            out.append(pw_ * math.log(pw_ / (1 - eps)) + pl_ * math.log(pl_ / eps))
        elif kind == "nca_pair":  # Chen et al. eq. 12, K = 2
            out.append(-_logsig(a) - 0.5 * _logsig(-a) - 0.5 * _logsig(-b))
        elif kind == "bco_pair":  # Jung et al. eq. 8 with the shift δ
            out.append(-_logsig(a - delta) - _logsig(-(b - delta)))
        elif kind == "sppo_hard":  # Wu et al. eq. 4.7, P̂ = 1 | 0, η = 1/β
            out.append((ρw[i] - (1 / beta) * (1 - 0.5)) ** 2 + (ρl[i] - (1 / beta) * (0 - 0.5)) ** 2)
        elif kind == "apo_zero":  # D'Oosterlinck et al. eq. 7
            out.append((1 - _sig(a)) + _sig(b))
        elif kind == "apo_down":  # eq. 8
            out.append(_sig(a) + (1 - _sig(a - b)))
        elif kind == "discopop":  # Lu et al. eq. 5
            m = _sig(h / tau)
            out.append((1 - m) * -_logsig(h) + m * math.exp(-h))
        elif kind == "sft":
            out.append(-lw[i] / _len(mw, i))
        else:
            raise KeyError(kind)
    return out


def bco_delta(pw, pl, rw, rl, mw, ml, beta):
    """BCO's shift δ over one batch: the mean of (r_w + r_l)/2."""
    B = pw.shape[0]
    return sum(beta * ((_seq(pw, mw, i) - _seq(rw, mw, i)) + (_seq(pl, ml, i) - _seq(rl, ml, i))) / 2
               for i in range(B)) / B


def ref_ipo(pw, pl, rw, rl, mw, ml, tau):
    out = []
    for i in range(pw.shape[0]):
        aw = (_seq(pw, mw, i) - _seq(rw, mw, i)) / max(1, _len(mw, i))
        al = (_seq(pl, ml, i) - _seq(rl, ml, i)) / max(1, _len(ml, i))
        out.append((aw - al - 1 / (2 * tau)) ** 2)
    return out


def ref_simpo(pw, pl, mw, ml, beta, gbr, eps):
    out = []
    for i in range(pw.shape[0]):
        h = beta / _len(mw, i) * _seq(pw, mw, i) - beta / _len(ml, i) * _seq(pl, ml, i) - gbr * beta
        out.append(-(1 - eps) * _logsig(h) - eps * _logsig(-h))
    return out


def ref_orpo(pw, pl, mw, ml, lam):
    out = []
    for i in range(pw.shape[0]):
        lw, ll = _seq(pw, mw, i) / _len(mw, i), _seq(pl, ml, i) / _len(ml, i)
        odds = lambda l: math.log(math.exp(l) / (1 - math.exp(l)))  # noqa: E731
        out.append(-lw - lam * _logsig(odds(lw) - odds(ll)))
    return out


def ref_kto(p, r, m, pk, rk, mk, labels, beta, lam_d, lam_u):
    B = p.shape[0]
    z = max(0.0, sum(_seq(pk, mk, i) - _seq(rk, mk, i) for i in range(B)) / B)
    out = []
    for i in range(B):
        ri = _seq(p, m, i) - _seq(r, m, i)
        s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
        if labels[i]:
            out.append(lam_d - lam_d * s(beta * (ri - z)))
        else:
            out.append(lam_u - lam_u * s(beta * (z - ri)))
    return out


def ref_reward(rc, rr, margin, coef):
    return [-_logsig(float(rc[i]) - float(rr[i]) - (float(margin[i]) if margin is not None else 0.0))
            + coef * (float(rc[i]) + float(rr[i])) ** 2 for i in range(rc.shape[0])]


# ---- inputs and the gradient check -----------------------------------------------------------

B, T = 6, 9


def rand_lp(g, scale=5.0):
    return -torch.rand(B, T, generator=g, dtype=torch.float64) * scale


def rand_mask(g):
    m = torch.rand(B, T, generator=g) > 0.3
    m[:, 0] = False  # the first position is never a target
    m[:, -2:] = False  # right padding
    m[:, 3] = True  # every sequence has at least one completion token
    return m.double()


def finite_difference_check(loss_sum, tensors, masks, ref_sum, coords=((1, 3), (2, 5), (0, 4), (4, 1), (5, 8)), d=1e-6):
    """∂loss/∂tensor[i,t] against central differences of the float64 reference; padding gets zero."""
    loss_sum.backward()
    for name, x in tensors.items():
        for i, t in coords:
            base = {k: v.detach().clone() for k, v in tensors.items()}
            plus, minus = dict(base), dict(base)
            plus[name] = base[name].clone()
            minus[name] = base[name].clone()
            plus[name][i, t] += d
            minus[name][i, t] -= d
            num = (ref_sum(plus) - ref_sum(minus)) / (2 * d)
            assert abs(float(x.grad[i, t]) - num) < 1e-6, (name, i, t, float(x.grad[i, t]), num)
            if not masks[name][i, t]:
                assert float(x.grad[i, t]) == 0.0, (name, i, t)


def paired_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    mw, ml = rand_mask(g), rand_mask(g)
    pw, pl = rand_lp(g).requires_grad_(), rand_lp(g).requires_grad_()
    rw, rl = rand_lp(g), rand_lp(g)
    return pw, pl, rw, rl, mw, ml


def paired_scorer(pw, pl, rw, rl, mw, ml):
    return FakeScorer({"chosen": (pw, mw), "rejected": (pl, ml)}, {"chosen": (rw, mw), "rejected": (rl, ml)})


BATCH = {"chosen_input_ids": torch.zeros(B, T)}
