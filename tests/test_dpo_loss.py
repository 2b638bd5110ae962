"""DPO against an independent float64 implementation written from the paper."""

import math

import pytest
import torch

from prefopt.models.logprobs import TokenStats
from prefopt.objectives.dpo import DPO


class FakeScorer:
    """Serves per-token log-probs from tensors so the loss can be checked in isolation."""

    def __init__(self, pol, ref):
        self.pol, self.ref = pol, ref

    def logps(self, batch, side=None, entropy=False):
        lp, m = self.pol[side]
        return TokenStats(logps=lp * m, mask=m.bool())

    def ref_logps(self, batch, side=None):
        lp, m = self.ref[side]
        return TokenStats(logps=(lp * m).detach(), mask=m.bool())


def reference_dpo(pw, pl, rw, rl, mw, ml, beta, eps):
    """Rafailov et al. eq. 7 (+ cDPO smoothing), float64, sums over real tokens, mean over pairs."""
    total = 0.0
    B = pw.shape[0]
    out = []
    for i in range(B):
        lw = sum(float(pw[i, t]) for t in range(pw.shape[1]) if mw[i, t])
        ll = sum(float(pl[i, t]) for t in range(pl.shape[1]) if ml[i, t])
        lrw = sum(float(rw[i, t]) for t in range(rw.shape[1]) if mw[i, t])
        lrl = sum(float(rl[i, t]) for t in range(rl.shape[1]) if ml[i, t])
        h = beta * ((lw - lrw) - (ll - lrl))
        ls = lambda x: -math.log1p(math.exp(-x)) if x > -30 else x  # noqa: E731
        out.append(-(1 - eps) * ls(h) - eps * ls(-h))
    return out


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.0), (0.1, 0.2), (2.0, 0.45)])
def test_dpo_value_and_gradient_float64(beta, eps):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    def rand():
        return (-torch.rand(B, T, generator=g, dtype=torch.float64) * 5)
    mw = torch.rand(B, T, generator=g) > 0.3
    ml = torch.rand(B, T, generator=g) > 0.3
    mw[:, 0] = ml[:, 0] = False  # padding / prompt positions
    mw[0, :] = False  # a sequence with no completion tokens at all (edge case)
    pw, pl, rw, rl = rand().requires_grad_(), rand().requires_grad_(), rand(), rand()
    obj = DPO(DPO.Config(beta=beta, label_smoothing=eps))
    sc = FakeScorer({"chosen": (pw, mw.double()), "rejected": (pl, ml.double())},
                    {"chosen": (rw, mw.double()), "rejected": (rl, ml.double())})
    loss_sum, metrics = obj.loss({"chosen_input_ids": torch.zeros(B, T)}, sc)
    expect = reference_dpo(pw.detach(), pl.detach(), rw, rl, mw, ml, beta, eps)
    assert obj.units({"chosen_input_ids": torch.zeros(B, T)}) == B
    assert abs(loss_sum.item() - sum(expect)) < 1e-10
    loss_sum.backward()
    # Gradient by central finite differences of the float64 reference, per coordinate.
    for (tensor, grad, m) in ((pw, pw.grad, mw), (pl, pl.grad, ml)):
        for i, t in [(1, 3), (2, 5), (0, 4), (4, 1)]:
            d = 1e-6
            base = tensor.detach().clone()
            plus, minus = base.clone(), base.clone()
            plus[i, t] += d
            minus[i, t] -= d
            if tensor is pw:
                fp = sum(reference_dpo(plus, pl.detach(), rw, rl, mw, ml, beta, eps))
                fm = sum(reference_dpo(minus, pl.detach(), rw, rl, mw, ml, beta, eps))
            else:
                fp = sum(reference_dpo(pw.detach(), plus, rw, rl, mw, ml, beta, eps))
                fm = sum(reference_dpo(pw.detach(), minus, rw, rl, mw, ml, beta, eps))
            num = (fp - fm) / (2 * d)
            assert abs(float(grad[i, t]) - num) < 1e-6, (i, t, float(grad[i, t]), num)
            if not m[i, t]:
                assert float(grad[i, t]) == 0.0  # padding never gets gradient


def test_dpo_metrics_and_bad_config():
    from prefopt.core.errors import UserError

    with pytest.raises(UserError, match="loss_type"):
        DPO.Config(loss_type="nope")
    with pytest.raises(UserError, match="label_smoothing"):
        DPO.Config(label_smoothing=0.7)
