"""Every offline loss against an independent float64 implementation written from its paper:
value, and gradient by central finite differences, on random inputs that include padding."""

import math

import pytest
import torch

from prefopt.core.errors import UserError
from prefopt.models.logprobs import TokenStats
from prefopt.objectives.dpo import DPO
from prefopt.objectives.ipo import IPO
from prefopt.objectives.kto import KTO
from prefopt.objectives.orpo import ORPO
from prefopt.objectives.reward import RewardModel
from prefopt.objectives.simpo import SimPO


class FakeScorer:
    """Serves per-token log-probs (and scalar scores) from tensors: the loss in isolation."""

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


def ref_dpo(pw, pl, rw, rl, mw, ml, beta, eps, kind):
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


# ---- helpers -------------------------------------------------------------------------------

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


# ---- DPO and its variants ------------------------------------------------------------------

@pytest.mark.parametrize("kind,beta,eps", [
    ("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.3), ("robust", 0.1, 0.0), ("robust", 0.5, 0.2), ("robust", 2.0, 0.45),
    ("hinge", 0.1, 0.0), ("hinge", 0.7, 0.0), ("ln", 1.0, 0.0), ("ln", 3.0, 0.1),
])
def test_dpo_variants_value_and_gradient(kind, beta, eps):
    pw, pl, rw, rl, mw, ml = paired_inputs(1)
    obj = DPO(DPO.Config(beta=beta, label_smoothing=eps, loss_type=kind))
    loss_sum, metrics = obj.loss(BATCH, paired_scorer(pw, pl, rw, rl, mw, ml))
    expect = ref_dpo(pw.detach(), pl.detach(), rw, rl, mw, ml, beta, eps, kind)
    assert loss_sum.item() == pytest.approx(sum(expect), abs=1e-10)
    finite_difference_check(loss_sum, {"pw": pw, "pl": pl}, {"pw": mw, "pl": ml},
                            lambda x: sum(ref_dpo(x["pw"], x["pl"], rw, rl, mw, ml, beta, eps, kind)))


def test_dpo_label_smoothing_edges():
    pw, pl, rw, rl, mw, ml = paired_inputs(2)
    sc = paired_scorer(pw, pl, rw, rl, mw, ml)
    plain = DPO(DPO.Config(beta=0.3)).loss(BATCH, sc)[0]
    # ε = 0: cDPO and robust DPO are plain DPO.
    assert DPO(DPO.Config(beta=0.3, loss_type="robust")).loss(BATCH, sc)[0].item() == pytest.approx(plain.item(), abs=1e-12)
    assert DPO(DPO.Config(beta=0.3, label_smoothing=0.0)).loss(BATCH, sc)[0].item() == pytest.approx(plain.item())
    # ε → 1/2: cDPO's loss becomes symmetric in the label (log 2 + |h|-independent gradient 0 at h=0) ...
    h = torch.tensor([0.0], dtype=torch.float64)
    sc0 = FakeScorer({"chosen": (torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)),
                      "rejected": (torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64))},
                     {"chosen": (torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)),
                      "rejected": (torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64))})
    for e in (0.0, 0.2, 0.49):
        v = DPO(DPO.Config(beta=1.0, label_smoothing=e)).loss({"chosen_input_ids": h[None]}, sc0)[0]
        assert v.item() == pytest.approx(math.log(2))  # at h = 0 every smoothing gives log 2
    # ... and robust DPO is unbiased under label noise ε (Chowdhury et al., Lemma 3.1): averaged
    # over a label flipped with probability ε, its loss is the clean sigmoid loss.
    eps, beta = 0.2, 0.5
    pw, pl, rw, rl, mw, ml = paired_inputs(3)
    robust = DPO(DPO.Config(beta=beta, label_smoothing=eps, loss_type="robust"))
    as_labelled = robust.loss(BATCH, paired_scorer(pw, pl, rw, rl, mw, ml))[0]
    flipped = robust.loss(BATCH, paired_scorer(pl, pw, rl, rw, ml, mw))[0]
    clean = DPO(DPO.Config(beta=beta)).loss(BATCH, paired_scorer(pw, pl, rw, rl, mw, ml))[0]
    assert ((1 - eps) * as_labelled + eps * flipped).item() == pytest.approx(clean.item(), rel=1e-10)


def test_dpo_bad_config_is_one_line():
    with pytest.raises(UserError, match="loss_type"):
        DPO.Config(loss_type="nope")
    with pytest.raises(UserError, match="label_smoothing"):
        DPO.Config(loss_type="robust", label_smoothing=0.5)
    with pytest.raises(UserError, match="hinge"):
        DPO.Config(loss_type="hinge", label_smoothing=0.1)


# ---- IPO, SimPO, ORPO ----------------------------------------------------------------------

@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_ipo_value_and_gradient(tau):
    pw, pl, rw, rl, mw, ml = paired_inputs(3)
    obj = IPO(IPO.Config(beta=tau))
    loss_sum, metrics = obj.loss(BATCH, paired_scorer(pw, pl, rw, rl, mw, ml))
    assert loss_sum.item() == pytest.approx(sum(ref_ipo(pw.detach(), pl.detach(), rw, rl, mw, ml, tau)), abs=1e-10)
    finite_difference_check(loss_sum, {"pw": pw, "pl": pl}, {"pw": mw, "pl": ml},
                            lambda x: sum(ref_ipo(x["pw"], x["pl"], rw, rl, mw, ml, tau)))


def test_ipo_loss_is_zero_at_its_target_gap():
    # Per-token-averaged log-ratio gap exactly 1/(2τ): L = 0 whatever the lengths.
    tau = 0.25
    m_w = torch.tensor([[0, 1, 1, 1, 0]], dtype=torch.float64)
    m_l = torch.tensor([[0, 1, 1, 1, 1]], dtype=torch.float64)
    pw = m_w * (1 / (2 * tau))  # average log-ratio 2 on chosen, 0 on rejected
    sc = FakeScorer({"chosen": (pw.clone().requires_grad_(), m_w), "rejected": (torch.zeros(1, 5, dtype=torch.float64), m_l)},
                    {"chosen": (torch.zeros(1, 5, dtype=torch.float64), m_w), "rejected": (torch.zeros(1, 5, dtype=torch.float64), m_l)})
    assert IPO(IPO.Config(beta=tau)).loss({"chosen_input_ids": torch.zeros(1, 5)}, sc)[0].item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("beta,gbr,eps", [(2.0, 0.5, 0.0), (2.5, 0.3, 0.0), (1.0, 0.0, 0.2)])
def test_simpo_value_and_gradient(beta, gbr, eps):
    pw, pl, _, _, mw, ml = paired_inputs(4)
    obj = SimPO(SimPO.Config(beta=beta, gamma_beta_ratio=gbr, label_smoothing=eps))
    sc = FakeScorer({"chosen": (pw, mw), "rejected": (pl, ml)})  # no reference at all
    loss_sum, _ = obj.loss(BATCH, sc)
    assert loss_sum.item() == pytest.approx(sum(ref_simpo(pw.detach(), pl.detach(), mw, ml, beta, gbr, eps)), abs=1e-10)
    finite_difference_check(loss_sum, {"pw": pw, "pl": pl}, {"pw": mw, "pl": ml},
                            lambda x: sum(ref_simpo(x["pw"], x["pl"], mw, ml, beta, gbr, eps)))


@pytest.mark.parametrize("lam,scale", [(0.1, 5.0), (1.0, 5.0), (0.5, 0.05)])
def test_orpo_value_and_gradient(lam, scale):
    # scale 0.05: mean log-probs near 0 (P near 1), where log(1 − P) needs the stable form.
    g = torch.Generator().manual_seed(5)
    mw, ml = rand_mask(g), rand_mask(g)
    pw, pl = rand_lp(g, scale).requires_grad_(), rand_lp(g, scale).requires_grad_()
    obj = ORPO(ORPO.Config(beta=lam))
    sc = FakeScorer({"chosen": (pw, mw), "rejected": (pl, ml)})
    loss_sum, metrics = obj.loss(BATCH, sc)
    assert loss_sum.item() == pytest.approx(sum(ref_orpo(pw.detach(), pl.detach(), mw, ml, lam)), rel=1e-9, abs=1e-9)
    assert metrics["nll"].item() == pytest.approx(sum(-_seq(pw.detach(), mw, i) / _len(mw, i) for i in range(B)))
    finite_difference_check(loss_sum, {"pw": pw, "pl": pl}, {"pw": mw, "pl": ml},
                            lambda x: sum(ref_orpo(x["pw"], x["pl"], mw, ml, lam)), d=1e-7)


# ---- KTO -----------------------------------------------------------------------------------

def kto_inputs(seed, labels):
    g = torch.Generator().manual_seed(seed)
    m, mk = rand_mask(g), rand_mask(g)
    p = rand_lp(g).requires_grad_()
    r, pk, rk = rand_lp(g), rand_lp(g), rand_lp(g)
    return p, r, m, pk, rk, mk, torch.tensor(labels)


@pytest.mark.parametrize("labels,lam_d,lam_u,kl_shift", [
    ([1, 0, 1, 0, 1, 0], 1.0, 1.0, 0.0),
    ([1, 1, 1, 1, 1, 0], 1.0, 1.33, 0.0),  # unbalanced batch: five desirable, one undesirable
    ([0, 0, 0, 0, 1, 0], 2.0, 1.0, 0.0),  # unbalanced the other way
    ([1, 0, 0, 1, 1, 0], 1.0, 1.0, -3.0),  # policy below the reference on the mismatched pairs: z clamps at 0
    ([1, 0, 0, 1, 1, 0], 1.0, 1.0, +3.0),  # z > 0
])
def test_kto_value_and_gradient(labels, lam_d, lam_u, kl_shift):
    p, r, m, pk, rk, mk, lab = kto_inputs(6, labels)
    pk = pk + kl_shift * mk / mk.sum(-1, keepdim=True)  # moves the mismatched log-ratios by kl_shift per sequence
    beta = 0.3
    obj = KTO(KTO.Config(beta=beta, desirable_weight=lam_d, undesirable_weight=lam_u))
    sc = FakeScorer({None: (p, m), "kl": (pk, mk)}, {None: (r, m), "kl": (rk, mk)})
    batch = {"input_ids": torch.zeros(B, T), "label": lab.bool()}
    loss_sum, metrics = obj.loss(batch, sc)
    assert obj.units(batch) == B
    expect = ref_kto(p.detach(), r, m, pk, rk, mk, labels, beta, lam_d, lam_u)
    assert loss_sum.item() == pytest.approx(sum(expect), abs=1e-10)
    z = max(0.0, sum(_seq(pk, mk, i) - _seq(rk, mk, i) for i in range(B)) / B)
    assert metrics["kl"].item() / B == pytest.approx(z, abs=1e-10)
    if kl_shift < 0:
        assert z == 0.0
    # z is detached: the gradient flows through r only (the mismatched pairs get none).
    finite_difference_check(loss_sum, {"p": p}, {"p": m},
                            lambda x: sum(ref_kto(x["p"], r, m, pk, rk, mk, labels, beta, lam_d, lam_u)))


def _unpaired(labels):
    return [{"row": i, "prompt_ids": [5, 6 + i], "completion_ids": [10 + i, 2], "label": bool(l)} for i, l in enumerate(labels)]


def test_kto_one_sided_data_is_a_user_error_and_ratio_warns():
    obj = KTO(KTO.Config())
    with pytest.raises(UserError, match="all 4 examples are desirable"):
        obj.prepare_examples(_unpaired([1, 1, 1, 1]), None, "f.jsonl")
    with pytest.raises(UserError, match="all 3 examples are undesirable"):
        obj.prepare_examples(_unpaired([0, 0, 0]), None, "f.jsonl")
    with pytest.warns(UserWarning, match=r"recommended \[1, 4/3\]"):
        obj.prepare_examples(_unpaired([1, 0, 0, 0]), None, "f.jsonl")  # ratio 1/3
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KTO(KTO.Config(desirable_weight=1.0)).prepare_examples(_unpaired([1, 0, 1, 0]), None, "f.jsonl")  # ratio 1
        KTO(KTO.Config(undesirable_weight=2.5)).prepare_examples(_unpaired([1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]), None, "f")


def test_kto_mismatched_pairs():
    obj = KTO(KTO.Config())
    ex = obj.prepare_examples(_unpaired([1, 0, 1, 0, 1, 0]), None, "f")
    # Each example gets another example's completion; together they are a permutation (a cycle).
    partners = [tuple(e["kl_completion_ids"]) for e in ex]
    assert sorted(partners) == sorted(tuple(e["completion_ids"]) for e in ex)
    assert all(p != tuple(e["completion_ids"]) for p, e in zip(partners, ex))
    b = obj.collate(ex[:3], pad_token_id=0)
    for i in range(3):
        n_p = len(ex[i]["prompt_ids"])
        got = b["kl_input_ids"][i][b["kl_loss_mask"][i]].tolist()
        assert got == list(ex[i]["kl_completion_ids"])
        assert b["kl_input_ids"][i, :n_p].tolist() == ex[i]["prompt_ids"]
    # Without partners (the objective on its own): prompt i with completion i+1 mod B of the batch.
    raw = _unpaired([1, 0, 1])
    b = obj.collate(raw, pad_token_id=0)
    for i in range(3):
        assert b["kl_input_ids"][i][b["kl_loss_mask"][i]].tolist() == raw[(i + 1) % 3]["completion_ids"]


# ---- Reward model --------------------------------------------------------------------------

@pytest.mark.parametrize("with_margin,coef", [(False, None), (True, None), (False, 0.01), (True, 0.5)])
def test_reward_value_and_gradient(with_margin, coef):
    g = torch.Generator().manual_seed(7)
    rc = torch.randn(B, generator=g, dtype=torch.float64).requires_grad_()
    rr = torch.randn(B, generator=g, dtype=torch.float64).requires_grad_()
    margin = torch.rand(B, generator=g, dtype=torch.float64) * 2 if with_margin else None
    if with_margin:
        margin[0] = 0.0  # a margin of 0 is a plain preference
    obj = RewardModel(RewardModel.Config(center_rewards_coefficient=coef))
    batch = {"chosen_input_ids": torch.zeros(B, T), **({"margin": margin} if with_margin else {})}
    loss_sum, metrics = obj.loss(batch, FakeScorer({}, scores={"chosen": rc, "rejected": rr}))
    expect = ref_reward(rc.detach(), rr.detach(), margin, coef or 0.0)
    assert loss_sum.item() == pytest.approx(sum(expect), abs=1e-10)
    loss_sum.backward()
    for x, name in ((rc, "rc"), (rr, "rr")):
        for i in range(B):
            d = 1e-6
            args = {"rc": rc.detach().clone(), "rr": rr.detach().clone()}
            plus, minus = {k: v.clone() for k, v in args.items()}, {k: v.clone() for k, v in args.items()}
            plus[name][i] += d
            minus[name][i] -= d
            num = (sum(ref_reward(plus["rc"], plus["rr"], margin, coef or 0.0))
                   - sum(ref_reward(minus["rc"], minus["rr"], margin, coef or 0.0))) / (2 * d)
            assert abs(float(x.grad[i]) - num) < 1e-6


def test_reward_margin_edges():
    rc = torch.tensor([1.0, 2.0], dtype=torch.float64)
    rr = torch.tensor([0.0, 2.0], dtype=torch.float64)
    sc = FakeScorer({}, scores={"chosen": rc, "rejected": rr})
    obj = RewardModel(RewardModel.Config())
    base = obj.loss({"chosen_input_ids": torch.zeros(2, 3)}, sc)[0]
    zero = obj.loss({"chosen_input_ids": torch.zeros(2, 3), "margin": torch.zeros(2)}, sc)[0]
    assert zero.item() == pytest.approx(base.item())  # margin 0 = no margin
    # A margin equal to the score gap puts the pair exactly at the decision boundary: log 2.
    at = obj.loss({"chosen_input_ids": torch.zeros(2, 3), "margin": torch.tensor([1.0, 0.0])}, sc)[0]
    assert at.item() == pytest.approx(2 * math.log(2))
    # Centering penalizes only the sum: rewards shifted to sum 0 pay nothing extra.
    c = RewardModel(RewardModel.Config(center_rewards_coefficient=1.0))
    sc0 = FakeScorer({}, scores={"chosen": torch.tensor([0.5]), "rejected": torch.tensor([-0.5])})
    assert c.loss({"chosen_input_ids": torch.zeros(1, 3)}, sc0)[0].item() == pytest.approx(-_logsig(1.0), rel=1e-6)


def test_reward_ties():
    obj = RewardModel(RewardModel.Config())
    ex = [{"row": i, "prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]} for i in range(3)]
    ties = [{"tie": True}, {"score_chosen": 3, "score_rejected": 3}, {"tie": 1}]
    with pytest.raises(UserError, match="all 3 pairs are ties"):
        obj.prepare_examples(ex, ties, "f.jsonl")
    with pytest.warns(UserWarning, match="dropped 2 of 3"):
        kept = obj.prepare_examples(ex, [{"tie": True}, {"score_chosen": 4, "score_rejected": 3}, {"margin": 0.0, "tie": 1}], "f")
    assert [e["row"] for e in kept] == [1]
    # margin 0 and tie false are not ties
    assert len(obj.prepare_examples(ex, [{"margin": 0.0}, {"tie": False}, {}], "f")) == 3
