"""IPO, SimPO, ORPO, KTO and the reward model's loss against independent float64 implementations
written from their papers (tests/loss_reference.py): value, and gradient by central finite
differences, on random inputs that include padding; their edge cases and data preparation.
DPO and its loss types are in tests/test_dpo_loss.py."""

import math

import pytest
import torch

from loss_reference import (BATCH, B, FakeScorer, T, _len, _logsig, _seq, finite_difference_check, paired_inputs,
                            paired_scorer, rand_lp, rand_mask, ref_ipo, ref_kto, ref_orpo, ref_reward, ref_simpo)
from prefopt.core.errors import UserError
from prefopt.objectives.ipo import IPO
from prefopt.objectives.kto import KTO
from prefopt.objectives.orpo import ORPO
from prefopt.objectives.reward import RewardModel
from prefopt.objectives.simpo import SimPO


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
    b = obj.collate(ex[:3], "unpaired", pad_token_id=0)
    for i in range(3):
        n_p = len(ex[i]["prompt_ids"])
        got = b["kl_input_ids"][i][b["kl_loss_mask"][i]].tolist()
        assert got == list(ex[i]["kl_completion_ids"])
        assert b["kl_input_ids"][i, :n_p].tolist() == ex[i]["prompt_ids"]
    # Without partners (the objective on its own): prompt i with completion i+1 mod B of the batch.
    raw = _unpaired([1, 0, 1])
    b = obj.collate(raw, "unpaired", pad_token_id=0)
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
