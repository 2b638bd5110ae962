"""The online pipeline's math against hand computations and independent implementations:
GAE, leave-one-out, group normalization, KL estimators, the clipped surrogate, loss aggregation."""

import math

import pytest
import torch

from prefopt.objectives.pg import advantages as adv
from prefopt.objectives.pg.kl import KLController, kl_estimate
from prefopt.models.logprobs import TokenStats
from prefopt.objectives.policy_gradient import PGConfig, PolicyGradient


# ---- advantages ---------------------------------------------------------------------------------


def test_gae_matches_hand_computation():
    # Row layout: two prompt positions, three completion tokens, one pad. Reward 1 at the last token.
    mask = torch.tensor([[0, 0, 1, 1, 1, 0]], dtype=torch.bool)
    rewards = torch.tensor([[0, 0, 0, 0, 1.0, 0]])
    values = torch.tensor([[9, 9, 0.5, 0.6, 0.7, 9]])  # junk outside the mask must not leak in
    # γ = 0.9, λ = 0.5:
    #   t2: δ = 1 + 0 − 0.7 = 0.3                 A = 0.3
    #   t1: δ = 0 + 0.9·0.7 − 0.6 = 0.03          A = 0.03 + 0.45·0.3 = 0.165
    #   t0: δ = 0 + 0.9·0.6 − 0.5 = 0.04          A = 0.04 + 0.45·0.165 = 0.11425
    A, R = adv.gae(rewards, values, mask, gamma=0.9, lam=0.5)
    torch.testing.assert_close(A, torch.tensor([[0, 0, 0.11425, 0.165, 0.3, 0]]))
    torch.testing.assert_close(R, torch.tensor([[0, 0, 0.61425, 0.765, 1.0, 0]]))
    # γ = λ = 1: every advantage is the return minus the value (Monte Carlo).
    A1, _ = adv.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(A1, torch.tensor([[0, 0, 0.5, 0.4, 0.3, 0]]))


def test_leave_one_out_against_loops():
    torch.manual_seed(0)
    K = 4
    r = torch.randn(3 * K)
    got = adv.leave_one_out(r, K)
    for i in range(len(r)):
        g = i // K
        others = [float(r[j]) for j in range(g * K, (g + 1) * K) if j != i]
        assert float(got[i]) == pytest.approx(float(r[i]) - sum(others) / len(others), abs=1e-6)


@pytest.mark.parametrize("scale", [True, False])
def test_group_normalization_against_loops(scale):
    torch.manual_seed(1)
    K = 5
    r = torch.randn(4 * K)
    got = adv.group_normalized(r, K, scale_by_std=scale, eps=1e-6)
    for g in range(4):
        xs = [float(x) for x in r[g * K : (g + 1) * K]]
        mean = sum(xs) / K
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (K - 1))
        for k, x in enumerate(xs):
            want = (x - mean) / (std + 1e-6) if scale else x - mean
            assert float(got[g * K + k]) == pytest.approx(want, abs=1e-5)


def test_group_with_equal_rewards_has_zero_advantage():
    r = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    a = adv.group_normalized(r, 3)
    assert torch.all(a[:3] == 0) and torch.isfinite(a).all()


def test_moving_baseline():
    b = adv.MovingBaseline(decay=0.5)
    torch.testing.assert_close(b(torch.tensor([1.0, 3.0])), torch.tensor([-1.0, 1.0]))  # own mean first: 2
    torch.testing.assert_close(b(torch.tensor([4.0, 4.0])), torch.tensor([2.0, 2.0]))  # baseline 2
    assert b.value == pytest.approx(3.0)  # 0.5·2 + 0.5·4


# ---- KL estimators ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_estimators_expectation_against_exact_kl(seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(6, generator=g, dtype=torch.float64) * 0.3 + p.log(), 0)
    exact = float((p * (p.log() - q.log())).sum())
    lp, lq = p.log(), q.log()
    E = {e: float((p * kl_estimate(lp, lq, e)).sum()) for e in ("k1", "k2", "k3")}
    # k1 and k3 are unbiased: their exact expectation under p is KL(p‖q).
    assert E["k1"] == pytest.approx(exact, rel=1e-9)
    assert E["k3"] == pytest.approx(exact, rel=1e-9)
    # k2 = ½δ² is biased but agrees to second order for nearby distributions.
    assert E["k2"] == pytest.approx(exact, rel=0.35)
    # Monte Carlo from samples of p, as the pipeline uses it.
    y = torch.multinomial(p, 200_000, replacement=True, generator=g)
    for e in ("k1", "k3"):
        assert float(kl_estimate(lp[y], lq[y], e).mean()) == pytest.approx(exact, rel=0.05, abs=2e-3)
    # k2, k3 are non-negative for every token.
    assert (kl_estimate(lp, lq, "k3") >= 0).all() and (kl_estimate(lp, lq, "k2") >= 0).all()


def test_k3_nonnegative_everywhere():
    δ = torch.linspace(-30, 30, 2001)
    assert (kl_estimate(δ, torch.zeros_like(δ), "k3") >= 0).all()


def test_adaptive_kl_controller():
    c = KLController(0.1, target=6.0, horizon=100)
    c.update(12.0, 10)  # e = clip(1, ±0.2) = 0.2 → β·(1 + 0.2·10/100)
    assert c.value == pytest.approx(0.1 * 1.02)
    c.update(3.0, 10)  # e = −0.5 → −0.2
    assert c.value == pytest.approx(0.1 * 1.02 * 0.98)
    fixed = KLController(0.1)
    fixed.update(100.0, 10)
    assert fixed.value == 0.1


# ---- the clipped surrogate --------------------------------------------------------------------


class FakeScorer:
    """Policy log-probs are a leaf tensor, so the loss's gradient w.r.t. them is visible."""

    def __init__(self, logps, mask):
        self.lp = logps.clone().requires_grad_(True)
        self.mask = mask

    def logps(self, batch, side=None, *, entropy=False):
        return TokenStats(logps=self.lp * self.mask, mask=self.mask)

    def ref_logps(self, batch, side=None):
        return TokenStats(logps=batch["ref_logps"] * self.mask, mask=self.mask)


def _batch(old, A, mask):
    B, T = old.shape
    lm = mask.clone()
    return {"input_ids": torch.zeros(B, T, dtype=torch.long), "attention_mask": torch.ones(B, T, dtype=torch.long),
            "loss_mask": lm, "old_logps": old, "advantages": A, "norm_tokens": T}


def _pg(**kw):
    kw.setdefault("kl_coef", 0.0)
    return PolicyGradient(PGConfig(**kw))


@pytest.mark.parametrize("A", [1.0, -1.0])
def test_clipped_surrogate_value_and_gradient_at_and_beyond_edges(A):
    εl, εh = 0.2, 0.28
    obj = _pg(clip_eps_low=εl, clip_eps_high=εh, loss_agg="token-mean")
    ratios = torch.tensor([0.5, 1 - εl, 0.9, 1.0, 1.1, 1 + εh, 2.0], dtype=torch.float64)
    T = len(ratios) + 1
    mask = torch.zeros(1, T, dtype=torch.bool)
    mask[0, 1:] = True
    old = torch.zeros(1, T, dtype=torch.float64)
    old[0, 1:] = -1.0
    lp = old.clone()
    lp[0, 1:] = old[0, 1:] + ratios.log()
    sc = FakeScorer(lp, mask)
    loss, _ = obj.loss(_batch(old, torch.full((1, T), A, dtype=torch.float64) * mask, mask), sc)
    loss.backward()
    ℓ = [-min(r * A, min(max(r, 1 - εl), 1 + εh) * A) for r in ratios.tolist()]
    assert float(loss.detach()) == pytest.approx(sum(ℓ), rel=1e-9)
    g = sc.lp.grad[0, 1:]
    for i, r in enumerate(ratios.tolist()):
        inside = 1 - εl < r < 1 + εh
        # Beyond the edge on the side the clip guards (A>0: above; A<0: below) the gradient is 0;
        # inside, and on the unguarded side, it is d(−Aρ)/dlogπ = −Aρ.
        guarded = (A > 0 and r > 1 + εh) or (A < 0 and r < 1 - εl)
        if guarded:
            assert float(g[i]) == 0.0
        elif inside or not (r == 1 - εl or r == 1 + εh):
            assert float(g[i]) == pytest.approx(-A * r, rel=1e-9)
        else:  # exactly at an edge: the value is continuous and the gradient finite
            assert math.isfinite(float(g[i]))


def test_sequence_ratio_is_the_geometric_mean_and_clips_whole_sequences():
    obj = _pg(ratio_level="sequence", clip_eps_low=0.2, clip_eps_high=0.2, loss_agg="seq-mean-token-mean")
    mask = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 0]], dtype=torch.bool)
    old = torch.zeros(2, 4, dtype=torch.float64)
    # Row 0: token log-ratios (0.05, 0.1, 0.15) → s = exp(0.1) inside; row 1: (1, 1) → s = e, clipped.
    lp = torch.tensor([[0, 0.05, 0.1, 0.15], [0, 1.0, 1.0, 0]], dtype=torch.float64)
    sc = FakeScorer(lp, mask)
    A = torch.ones(2, 4, dtype=torch.float64) * mask
    loss, _ = obj.loss(_batch(old, A, mask), sc)
    loss.backward()
    assert float(loss) == pytest.approx(-math.exp(0.1) - 1.2, rel=1e-9)
    # Row 0: each token's gradient is s/|y| (seq-mean-token-mean) — the GSPO gradient; row 1 clipped.
    torch.testing.assert_close(sc.lp.grad[0, 1:], torch.full((3,), -math.exp(0.1) / 3, dtype=torch.float64))
    assert torch.all(sc.lp.grad[1] == 0)


# ---- aggregation --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_aggregation_modes_on_ragged_lengths_and_any_split(mode):
    torch.manual_seed(0)
    lengths = [1, 3, 5, 2]
    T = 1 + max(lengths)
    L_max = 8
    mask = torch.zeros(len(lengths), T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, 1 : 1 + n] = True
    A = torch.randn(len(lengths), T, dtype=torch.float64) * mask
    old = torch.randn(len(lengths), T, dtype=torch.float64) * mask
    obj = _pg(loss_agg=mode)
    # ratio = 1, so ℓ_t = −A_t.
    ℓ = [(-A[i, 1 : 1 + n]).tolist() for i, n in enumerate(lengths)]
    if mode == "token-mean":
        want = sum(map(sum, ℓ)) / sum(lengths)
    elif mode == "seq-mean-token-mean":
        want = sum(sum(x) / len(x) for x in ℓ) / len(lengths)
    else:
        want = sum(map(sum, ℓ)) / (len(lengths) * L_max)
    for split in ([0, 1, 2, 3],), ([0], [1], [2], [3]), ([0, 3], [1, 2]):
        total, units = 0.0, 0
        for idx in split:
            b = _batch(old[idx], A[idx], mask[idx])
            b["norm_tokens"] = L_max
            s, _ = obj.loss(b, FakeScorer(old[idx], mask[idx]))
            total += float(s)
            units += obj.units(b)
        assert total / units == pytest.approx(want, rel=1e-9)
