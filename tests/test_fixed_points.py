"""Every registered objective trained to convergence on a tabular bandit, against the fixed point its
theory gives (issue 35).

The world (tests/bandit.py): two prompts, four one-token completions, π_ref and a reward r(x, y)
given as tables; the policy is a float64 table of logits started at π_ref. Each objective's own
``loss`` (and ``prepare``, for the online ones) runs on the whole enumerated population (every pair,
every group of samples, each with its probability), so each step is the exact expected update and a
run is deterministic. Each expected point below is derived by hand from the method's paper, in
float64 numpy, without prefopt's code; where it is a root of an equation (no closed form) the
equation is derived here and solved with scipy.

Where a method has no finite fixed point (no KL term: the policy goes to the best completion), the
test checks that the expected reward rises at every step instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import brentq, root

from bandit import F64, TabularScorer, descend, group_rollout, pair_population, sequences

X, V = 2, 4
REF_PROBS = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])  # the best completion is the rarest
REWARD = np.array([[0.0, 0.4, 0.7, 1.0], [1.0, 0.1, 0.5, 0.3]])  # distinct within a prompt: no ties


def sigmoid(u):
    return 1 / (1 + np.exp(-u))


def bt_pref(reward):
    """Bradley–Terry: p(y ≻ y' | x) = σ(r(x, y) − r(x, y')), [X, V, V]."""
    return sigmoid(reward[:, :, None] - reward[:, None, :])


def normalize(p):
    return p / p.sum(-1, keepdims=True)


def kl_optimum(ref, reward, beta):
    """argmax_π E_π[r] − β KL(π ‖ π_ref):  π*(y|x) ∝ π_ref(y|x) · exp(r(x, y) / β)."""
    return normalize(ref * np.exp(reward / beta))


def t64(a):
    return torch.tensor(np.asarray(a), dtype=F64)


def policy_from(ref=REF_PROBS):
    return torch.log(t64(ref)).requires_grad_(True)


def probs(logits) -> np.ndarray:
    return torch.softmax(logits.detach(), -1).numpy()


def build(name, **overrides):
    """The registered objective ``name`` with its preset's defaults and ``overrides``."""
    from prefopt.objectives.registry import get_objective

    cls = get_objective(name)
    return cls(cls.Config(**overrides))


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# ---- offline: SFT, reward model --------------------------------------------------------------


def test_sft_converges_to_the_data_distribution():
    """Fixed point: π(y|x) = d(y|x), the demonstrations' distribution (maximum likelihood).
    Tolerance: max |π − d| < 1e-6."""
    data = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 0.15, 0.1]])
    x, y = np.meshgrid(range(X), range(V), indexing="ij")
    batch = sequences(x.ravel(), y.ravel())
    batch["weight"] = t64(data.ravel() / X)
    obj, θ = build("sft"), policy_from()
    descend([θ], lambda _: obj.loss(batch, TabularScorer(θ))[0], lr=2.0, max_steps=3000)
    assert max_abs(probs(θ), data) < 1e-6


def test_reward_model_recovers_the_bradley_terry_reward_up_to_a_constant():
    """Fixed point: s(x, y) − s(x, y') = r(x, y) − r(x, y') for pairs labelled by BT(r) (the BT
    likelihood's population maximum; only differences within a prompt are identified).
    Tolerance: max |(s − mean_y s) − (r − mean_y r)| < 1e-6."""
    batch = pair_population(t64(REF_PROBS), t64(bt_pref(REWARD)))
    obj = build("reward")
    s = torch.zeros(X, V, dtype=F64, requires_grad=True)
    descend([s], lambda _: obj.loss(batch, TabularScorer(scores=s))[0], lr=30.0, max_steps=4000)
    got = s.detach().numpy()
    assert max_abs(got - got.mean(-1, keepdims=True), REWARD - REWARD.mean(-1, keepdims=True)) < 1e-6


# ---- offline pairs: DPO, IPO ------------------------------------------------------------------


def _train_pairs(name, pref, lr, steps, mu=REF_PROBS, **cfg):
    batch = pair_population(t64(mu), t64(pref))
    obj, θ = build(name, **cfg), policy_from()
    ref = torch.log(t64(REF_PROBS))
    descend([θ], lambda _: obj.loss(batch, TabularScorer(θ, ref))[0], lr=lr, max_steps=steps)
    return probs(θ)


def test_dpo_converges_to_the_kl_optimum_of_the_bt_reward():
    """Fixed point (DPO eq. 7 at the population optimum): σ(β(ρ(y) − ρ(y'))) = p(y ≻ y') for every
    pair, ρ = log π/π_ref; with p = σ(r(y) − r(y')) this is β ρ(y) = r(y) + c(x), i.e.
    π*(y|x) ∝ π_ref(y|x) · exp(r(x, y)/β) — equivalently π*(y)/π*(y') = π_ref(y)/π_ref(y') ·
    (p/(1 − p))^{1/β}. Tolerance: max |π − π*| < 1e-6."""
    beta = 0.5
    got = _train_pairs("dpo", bt_pref(REWARD), lr=60.0, steps=6000, beta=beta)
    assert max_abs(got, kl_optimum(REF_PROBS, REWARD, beta)) < 1e-6


def test_robust_dpo_on_flipped_labels_converges_to_the_clean_optimum():
    """Fixed point (robust DPO, Chowdhury et al. 2024, eq. 9): with labels flipped at the rate ε the
    loss is told, p_obs = (1 − ε) p + ε (1 − p), its population optimum is still the clean
    π* ∝ π_ref · exp(r/β) (the loss is an unbiased estimate of the clean one). Tolerance: 1e-6."""
    beta, eps = 0.5, 0.2
    p = bt_pref(REWARD)
    got = _train_pairs("dpo", (1 - eps) * p + eps * (1 - p), lr=60.0, steps=8000, beta=beta,
                       loss_type="robust", label_smoothing=eps)
    assert max_abs(got, kl_optimum(REF_PROBS, REWARD, beta)) < 1e-6


def ipo_optimum(ref, mu, pref, tau):
    """IPO (Azar et al. 2023, eqs. 17–18). One pair's expected loss over its label,
    p (h − 1/(2τ))² + (1 − p)(h + 1/(2τ))², is least at h = (p − ½)/τ. h(y, y') = g(y) − g(y') with
    g = log π/π_ref, so the least-squares fit over pairs y, y' ~ μ sets
    g(y) = E_{y'~μ}[(p(y ≻ y') − ½)/τ] + c = p(y ≻ μ)/τ + c'  (p(y ≻ y) = ½):
    π_IPO(y|x) ∝ π_ref(y|x) · exp(p(y ≻ μ | x)/τ)."""
    p = pref.copy()
    for x in range(p.shape[0]):
        np.fill_diagonal(p[x], 0.5)
    p_vs_mu = (p * mu[:, None, :]).sum(-1)
    return normalize(ref * np.exp(p_vs_mu / tau))


def test_ipo_converges_to_its_regression_target():
    """Fixed point: π_IPO(y|x) ∝ π_ref(y|x) · exp(p(y ≻ μ|x)/τ), μ = the pairs' sampling policy
    (π_ref here); log-ratio gaps h(y, y') = (p(y ≻ μ) − p(y' ≻ μ))/τ. Tolerance: max |π − π_IPO| < 1e-6."""
    tau = 0.5
    pref = bt_pref(REWARD)
    got = _train_pairs("ipo", pref, lr=3.0, steps=4000, beta=tau)
    assert max_abs(got, ipo_optimum(REF_PROBS, REF_PROBS, pref, tau)) < 1e-6


# ---- offline pairs without a reference: SimPO, ORPO (two completions per prompt) ------------

REF2 = np.array([[0.5, 0.5], [0.7, 0.3]])
PREF2 = np.array([0.8, 0.35])  # p(y_0 ≻ y_1 | x)


def _train_two(name, lr, steps, **cfg):
    pref = np.zeros((X, 2, 2))
    pref[:, 0, 1], pref[:, 1, 0] = PREF2, 1 - PREF2
    batch = pair_population(t64(np.full((X, 2), 0.5)), t64(pref))
    obj, θ = build(name, **cfg), policy_from(REF2)
    descend([θ], lambda _: obj.loss(batch, TabularScorer(θ))[0], lr=lr, max_steps=steps)
    return probs(θ)


def simpo_log_odds(p, beta, gamma):
    """SimPO (Meng et al. 2024, eq. 6) with one pair {y_0, y_1}, y_0 preferred with probability p,
    d = log π(y_0) − log π(y_1): dL/dd = 0 ⇔ p σ(γ − βd) = (1 − p) σ(γ + βd); with u = e^{βd}, g = e^γ:
    (1 − p) u² + g (1 − 2p) u − p = 0, so d = (1/β) log u, u the positive root. (γ = 0: u = p/(1 − p).)"""
    g = np.exp(gamma)
    u = (-g * (1 - 2 * p) + np.sqrt(g**2 * (1 - 2 * p) ** 2 + 4 * p * (1 - p))) / (2 * (1 - p))
    return np.log(u) / beta


@pytest.mark.parametrize("beta,gamma_beta_ratio", [(2.0, 0.5), (1.0, 0.0)])
def test_simpo_converges_to_its_margin_shifted_bt_point(beta, gamma_beta_ratio):
    """Fixed point: log π(y_0)/π(y_1) = (1/β) log u, u the positive root of
    (1 − p) u² + e^γ (1 − 2p) u − p = 0 (γ = 0: the BT point p/(1 − p), tempered by 1/β).
    No reference: the target depends on β and γ only. Tolerance: |log-odds error| < 1e-6."""
    got = _train_two("simpo", lr=4.0, steps=4000, beta=beta, gamma_beta_ratio=gamma_beta_ratio)
    expect = simpo_log_odds(PREF2, beta, gamma_beta_ratio * beta)
    assert max_abs(np.log(got[:, 0] / got[:, 1]), expect) < 1e-6


def orpo_logit(p, lam):
    """ORPO (Hong et al. 2024, eqs. 2–7) with one pair {y_0, y_1} and s = logit π(y_0|x):
    odds(y_0) = e^s, odds(y_1) = e^{−s}, so log OR = ±2s and the expected loss
    p[−log σ(s) − λ log σ(2s)] + (1 − p)[−log σ(−s) − λ log σ(−2s)] has
    dL/ds = (σ(s) − p) + 2λ (σ(2s) − p) = 0  ⇔  σ(s) + 2λ σ(2s) = (1 + 2λ) p,
    one root (the left side increases in s); λ = 0: π(y_0) = p, SFT on the chosen."""
    return np.array([brentq(lambda s: sigmoid(s) + 2 * lam * sigmoid(2 * s) - (1 + 2 * lam) * q, -30, 30, xtol=1e-14)
                     for q in p])


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_orpo_converges_to_its_odds_ratio_stationary_point(lam):
    """Fixed point: logit π(y_0|x) = s with σ(s) + 2λ σ(2s) = (1 + 2λ) p (odds ratio pushes past the
    SFT point π = p, more for larger λ). Tolerance: |logit error| < 1e-6."""
    got = _train_two("orpo", lr=4.0, steps=4000, beta=lam)
    assert max_abs(np.log(got[:, 0] / got[:, 1]), orpo_logit(PREF2, lam)) < 1e-6


# ---- offline unpaired: KTO --------------------------------------------------------------------

KTO_DESIRABLE = np.array([[0.55, 0.65, 0.8, 0.95], [0.95, 0.6, 0.75, 0.7]])  # P(label = desirable | x, y)


def kto_gradient(theta, ref, q_d, q_u, beta, lam_d, lam_u):
    """∂L/∂θ of KTO's population loss (Ethayarajh et al. 2024, eq. 8), derived by hand: with
    r = log π/π_ref, z = max(0, mean over mismatched (x, y') of r) held fixed (detached),
    ∂L/∂r(x, y) = −β σ'(β(r − z)) · (λ_D q_D(x, y) − λ_U q_U(x, y)), σ' = σ(1 − σ) (even), and
    ∂r(x, y)/∂θ(x, k) = [y = k] − π(k|x)."""
    logp = theta - np.log(np.exp(theta).sum(-1, keepdims=True))
    pi, r = np.exp(logp), logp - np.log(ref)
    z = max(0.0, r.mean())  # mismatched completions: the data's completions are uniform over y
    sd = sigmoid(beta * (r - z)) * (1 - sigmoid(beta * (r - z)))
    dr = -beta * sd * (lam_d * q_d - lam_u * q_u)
    return dr - pi * dr.sum(-1, keepdims=True)


def kto_optimum(ref, q_d, q_u, beta, lam_d=1.0, lam_u=1.0):
    """The root of :func:`kto_gradient` (logits gauged to θ[x, 0] = 0), as probabilities."""
    def eq(free):
        th = np.concatenate([np.zeros((X, 1)), free.reshape(X, -1)], 1)
        return kto_gradient(th, ref, q_d, q_u, beta, lam_d, lam_u)[:, 1:].ravel()

    sol = root(eq, (np.log(ref) - np.log(ref[:, :1]))[:, 1:].ravel(), tol=1e-13)
    assert np.abs(eq(sol.x)).max() < 1e-14, sol.message
    return normalize(np.exp(np.concatenate([np.zeros((X, 1)), sol.x.reshape(X, -1)], 1)))


def test_kto_converges_to_its_stationary_point():
    """Fixed point: ∂L/∂θ = 0 of :func:`kto_gradient`, i.e. for every completion
    a(x, y) σ'(β(r(x, y) − z)) = C(x) π(y|x), a = λ_D q_D − λ_U q_U, z the mismatched KL estimate at
    the same π (no closed form; unique for β ≤ 1 when every a > 0: σ'(β(r − z)) e^{−r} then falls in r).
    Data: each (x, y) equally often, labelled desirable with probability KTO_DESIRABLE (> ½, so
    every a > 0 and the point is inside the simplex; a completion with a < 0 would be driven to 0).
    Tolerance: max |π − π_KTO| < 1e-6."""
    beta = 0.5
    x, y = np.meshgrid(range(X), range(V), indexing="ij")
    x, y = np.concatenate([x.ravel()] * 2), np.concatenate([y.ravel()] * 2)
    label = np.repeat([True, False], X * V)
    q = np.concatenate([KTO_DESIRABLE.ravel(), 1 - KTO_DESIRABLE.ravel()]) / (X * V)
    batch = sequences(x, y)
    batch.update(label=torch.tensor(label), weight=t64(q))
    # The mismatched pairs: every prompt with every data completion (the limit of random partners).
    batch.update({f"kl_{k}": v for k, v in sequences(np.repeat(range(X), V), np.tile(range(V), X)).items()})
    obj, θ = build("kto", beta=beta), policy_from()
    ref = torch.log(t64(REF_PROBS))
    descend([θ], lambda _: obj.loss(batch, TabularScorer(θ, ref))[0], lr=100.0, max_steps=2000)
    q_d, q_u = KTO_DESIRABLE / (X * V), (1 - KTO_DESIRABLE) / (X * V)
    assert max_abs(probs(θ), kto_optimum(REF_PROBS, q_d, q_u, beta)) < 1e-6
