"""Every registered objective trained to convergence on a tabular bandit, against the fixed point its
theory gives (issue 35).

The world (tests/bandit.py): two prompts, four one-token completions (nine two-token ones for the
per-token code paths), π_ref and a reward r(x, y) given as tables; the policy is a float64 table of
logits started at π_ref. Each objective's own
``loss`` (and ``prepare``, for the online ones) runs on the whole enumerated population (every pair,
every group of samples, each with its probability), so each step is the exact expected update and a
run is deterministic. Each expected point below is derived by hand from the method's paper, in
float64 numpy, without prefopt's code; where it is a root of an equation (no closed form) the
equation is derived here and solved with scipy.

Where a method has no finite fixed point (no KL term: the policy goes to the best completion), the
test checks that the expected reward rises from every rollout to the next instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import brentq, root
from scipy.special import expit

from bandit import (F64, TabularScorer, completion_probs, descend, group_rollout, one_token, pair_population, sequences,
                    two_tokens)

X, V = 2, 4
REF_PROBS = np.array([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])  # the best completion is the rarest
REWARD = np.array([[0.0, 0.4, 0.7, 1.0], [1.0, 0.1, 0.5, 0.3]])  # distinct within a prompt: no ties


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tensors here hold a few dozen numbers: a second intra-op thread buys nothing, and on a busy
    machine every parallel region waits for it to be scheduled (seconds per test instead of tenths)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sigmoid(u):
    return expit(u)  # 1 / (1 + e^{−u}) without overflow for large |u|


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


def tables_like(ref):
    """A trainable copy of π_ref's tables (one tensor, or the two-token pair): training starts at π_ref."""
    if isinstance(ref, torch.Tensor):
        return ref.detach().clone().requires_grad_(True)
    return tuple(t.detach().clone().requires_grad_(True) for t in ref)


def probs(tables, completions=None) -> np.ndarray:
    """π(c|x), [X, C]."""
    return completion_probs(tables, one_token(tables.shape[-1]) if completions is None else completions).numpy()


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


def plackett_luce_rankings(reward):
    """Every full ranking of the V completions of each prompt with its Plackett–Luce probability
    Π_k e^{r(y_(k))} / Σ_{j ≥ k} e^{r(y_(j))} (best first), prompts uniform: [(x, order, prob)]."""
    import itertools

    out = []
    for x in range(X):
        for order in itertools.permutations(range(V)):
            e = np.exp(reward[x, list(order)])
            out.append((x, order, float(np.prod(e / np.cumsum(e[::-1])[::-1])) / X))
    return out


@pytest.mark.parametrize("loss", ["plackett_luce", "bradley_terry"])
def test_reward_model_on_rankings_recovers_the_reward_up_to_a_constant(loss):
    """Fixed point: s(x, y) = r(x, y) + c(x) from full rankings drawn by Plackett–Luce(r): the
    listwise likelihood is the model's own, and the all-pairs BT loss sees each pair ordered with
    probability e^{r(y)}/(e^{r(y)} + e^{r(y')}) = σ(r(y) − r(y')) (PL's pairwise marginals are BT's),
    so both are least at s = r + c(x). Tolerance: max error of the centred s < 1e-6."""
    rankings = plackett_luce_rankings(REWARD)
    xs = [x for x, _, _ in rankings for _ in range(V)]
    ys = [y for _, order, _ in rankings for y in order]
    batch = {f"completions_{k}": v for k, v in sequences(xs, ys).items()}
    batch.update(completions_weight=t64([w for _, _, w in rankings for _ in range(V)]),
                 group=torch.arange(len(rankings)).repeat_interleave(V), rank=torch.arange(1, V + 1).repeat(len(rankings)),
                 row=torch.arange(len(rankings)))
    obj = build("reward", loss=loss)
    s = torch.zeros(X, V, dtype=F64, requires_grad=True)
    lr = {"plackett_luce": 4.0, "bradley_terry": 20.0}[loss]  # the listwise sum over levels is ~3× steeper
    descend([s], lambda _: obj.loss(batch, TabularScorer(scores=s))[0], lr=lr, max_steps=200)
    got = s.detach().numpy()
    assert max_abs(got - got.mean(-1, keepdims=True), REWARD - REWARD.mean(-1, keepdims=True)) < 1e-6


# ---- offline pairs: DPO, IPO ------------------------------------------------------------------


def _train_pairs(name, pref, lr, steps, mu=REF_PROBS, **cfg):
    batch = pair_population(t64(mu), t64(pref))
    obj, θ = build(name, **cfg), policy_from()
    ref = torch.log(t64(REF_PROBS))
    descend([θ], lambda _: obj.loss(batch, TabularScorer(θ, ref))[0], lr=lr, max_steps=steps)
    return probs(θ)


UNIFORM = np.full((X, V), 1 / V)
PAIR_SAMPLERS = {"pairs_from_ref": REF_PROBS, "pairs_uniform": UNIFORM}  # μ: what the pairs were sampled from


@pytest.mark.parametrize("sampler", sorted(PAIR_SAMPLERS))
def test_dpo_converges_to_the_kl_optimum_of_the_bt_reward(sampler):
    """Fixed point (DPO eq. 7 at the population optimum): σ(β(ρ(y) − ρ(y'))) = p(y ≻ y') for every
    pair, ρ = log π/π_ref; with p = σ(r(y) − r(y')) this is β ρ(y) = r(y) + c(x), i.e.
    π*(y|x) ∝ π_ref(y|x) · exp(r(x, y)/β) — equivalently π*(y)/π*(y') = π_ref(y)/π_ref(y') ·
    (p/(1 − p))^{1/β}; whatever policy μ the pairs were sampled from (every pair is fitted exactly).
    Tolerance: max |π − π*| < 1e-6."""
    beta = 0.5
    mu = PAIR_SAMPLERS[sampler]
    got = _train_pairs("dpo", bt_pref(REWARD), lr=60.0 * (mu * mu).sum() / (REF_PROBS**2).sum(), steps=6000, mu=mu,
                       beta=beta)
    assert max_abs(got, kl_optimum(REF_PROBS, REWARD, beta)) < 1e-6


def test_robust_dpo_on_flipped_labels_converges_to_the_clean_optimum():
    """Fixed point (robust DPO, Chowdhury et al. 2024, eq. 9): with labels flipped at the rate ε the
    loss is told, p_obs = (1 − ε) p + ε (1 − p), its population optimum is still the clean
    π* ∝ π_ref · exp(r/β) (the loss is an unbiased estimate of the clean one). Tolerance: 1e-6."""
    beta, eps = 0.5, 0.2
    p = bt_pref(REWARD)
    p_obs = (1 - eps) * p + eps * (1 - p)
    got = _train_pairs("dpo", p_obs, lr=60.0, steps=8000, beta=beta, loss_type="robust", label_smoothing=eps)
    assert max_abs(got, kl_optimum(REF_PROBS, REWARD, beta)) < 1e-6
    # The plain sigmoid loss on the same labels fits the flattened p_obs instead: a different point.
    assert max_abs(_train_pairs("dpo", p_obs, lr=60.0, steps=8000, beta=beta), kl_optimum(REF_PROBS, REWARD, beta)) > 0.01


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


@pytest.mark.parametrize("sampler", sorted(PAIR_SAMPLERS))
def test_ipo_converges_to_its_regression_target(sampler):
    """Fixed point: π_IPO(y|x) ∝ π_ref(y|x) · exp(p(y ≻ μ|x)/τ), μ = the pairs' sampling policy;
    log-ratio gaps h(y, y') = (p(y ≻ μ) − p(y' ≻ μ))/τ. Unlike DPO's, the point moves with μ (the
    other sampler's point is 7.6e-4 away here, ≫ the tolerance). Tolerance: max |π − π_IPO| < 1e-6."""
    tau = 0.5
    pref, mu = bt_pref(REWARD), PAIR_SAMPLERS[sampler]
    got = _train_pairs("ipo", pref, lr=3.0, steps=4000, mu=mu, beta=tau)
    assert max_abs(got, ipo_optimum(REF_PROBS, mu, pref, tau)) < 1e-6
    other = UNIFORM if mu is REF_PROBS else REF_PROBS
    assert max_abs(got, ipo_optimum(REF_PROBS, other, pref, tau)) > 1e-4


# ---- offline pairs without a reference: SimPO, ORPO (two completions per prompt) ------------

REF_PAIR = np.array([[0.5, 0.5], [0.7, 0.3]])
PREF_PAIR = np.array([0.8, 0.35])  # p(y_0 ≻ y_1 | x)


def _train_two(name, lr, steps, **cfg):
    pref = np.zeros((X, 2, 2))
    pref[:, 0, 1], pref[:, 1, 0] = PREF_PAIR, 1 - PREF_PAIR
    batch = pair_population(t64(np.full((X, 2), 0.5)), t64(pref))
    obj, θ = build(name, **cfg), policy_from(REF_PAIR)
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
    expect = simpo_log_odds(PREF_PAIR, beta, gamma_beta_ratio * beta)
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
    assert max_abs(np.log(got[:, 0] / got[:, 1]), orpo_logit(PREF_PAIR, lam)) < 1e-6


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
    the same π (no closed form; for a given z unique when β ≤ 1 and every a > 0: σ'(β(r − z)) e^{−r} then
    falls in r).
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


# ---- online DPO: pairs of the current policy's samples ---------------------------------------


def online_pairs(obj, logits, ref, reward):
    """The objective's pairs from an enumerated rollout of the current policy: every ordered pair of
    samples (y, y') of each prompt, scored by a reward with standard Gumbel noise, so that y wins with
    probability σ(r(y) − r(y')) (the difference of two Gumbels is logistic): each pair of samples
    enters once per outcome, with scores (1, 0) or (0, 1). Pairs of two equal samples tie and are
    dropped by ``prepare``. Returns the loss's batch, each pair weighted by its probability."""
    pi = torch.softmax(logits.detach(), -1)
    p = bt_pref(reward)
    xs, ys, scores, w = [], [], [], []
    for x in range(X):
        for a in range(V):
            for b in range(V):
                outcomes = [((0.0, 0.0), 1.0)] if a == b else [((1.0, 0.0), p[x, a, b]), ((0.0, 1.0), 1 - p[x, a, b])]
                for s, q in outcomes:
                    xs += [x, x]
                    ys += [a, b]
                    scores += list(s)
                    if a != b:  # a kept pair: its probability, on both of its rows
                        w += [float(pi[x, a] * pi[x, b]) * q / X] * 2
    roll = sequences(xs, ys)
    ref_lp = torch.log_softmax(ref, -1)[roll["input_ids"][:, 0], roll["input_ids"][:, 1]]
    roll.update(scores=t64(scores), group_size=2, group=torch.arange(len(xs)) // 2,
                ref_logps=torch.stack([torch.zeros_like(ref_lp), ref_lp], 1))
    out, _ = obj.prepare(roll)
    assert out["input_ids"].shape[0] == len(w)
    return dict(out, weight=t64(w))


@pytest.mark.parametrize("name", ["online_dpo", "iterative_dpo"])
def test_online_dpo_converges_to_the_kl_optimum(name):
    """Fixed point: π*(y|x) ∝ π_ref(y|x) · exp(r(x, y)/β). Pairs come from the current policy and
    are labelled by BT(r): every pair's loss is least at β(ρ(y) − ρ(y')) = r(y) − r(y'), the same point
    whatever the pair weights π(y)π(y'), so the on-policy (and the R-steps-per-rollout, iterative)
    update has the fixed point of offline DPO. Tolerance: max |π − π*| < 1e-6."""
    beta = 0.5
    obj, θ = build(name, beta=beta), policy_from()
    ref = torch.log(t64(REF_PROBS))
    steps_per_rollout = obj.cfg.epochs_per_rollout * obj.cfg.minibatches_per_rollout  # 1 online, 4 iterative
    state = {}

    def loss(step):
        if step % steps_per_rollout == 0:
            state["batch"] = online_pairs(obj, θ, ref, REWARD)
        return obj.loss(state["batch"], TabularScorer(θ, ref))[0]

    descend([θ], loss, lr=60.0, max_steps=3000)
    assert max_abs(probs(θ), kl_optimum(REF_PROBS, REWARD, beta)) < 1e-6


def kl_to_ref(logits) -> float:
    pi = probs(logits)
    return float((pi * np.log(pi / REF_PROBS)).sum(-1).mean())


def test_online_dpo_with_noiseless_labels_has_no_fixed_point(outcome):
    """No finite fixed point when the reward has no noise: the better sample always wins, every
    pair's loss falls as its margin grows, so π goes to the best completion and KL(π ‖ π_ref) grows
    without bound (DPO's behaviour under deterministic preferences). Checked: the KL rises at every
    step and π(best|x) passes 0.99."""
    obj, θ = build("online_dpo", beta=0.5), policy_from()
    ref = torch.log(t64(REF_PROBS))
    kl = []

    def loss(_):
        kl.append(kl_to_ref(θ))
        return obj.loss(online_pairs(obj, θ, ref, REWARD * 1e3), TabularScorer(θ, ref))[0]  # p(y ≻ y') ∈ {0, 1}

    descend([θ], loss, lr=60.0, max_steps=300)
    outcome("smallest rise of KL(π ‖ π_ref) per step", np.diff(kl).min(), ">", 0.0)
    best = probs(θ)[np.arange(X), REWARD.argmax(-1)]
    outcome("smallest π(best completion | x)", best.min(), ">", 0.99)


# ---- rejection sampling ---------------------------------------------------------------------


def best_of_n(ref, reward, n):
    """The distribution of the highest-reward sample among n from π_ref (distinct rewards):
    P(best = y) = F(y)^n − F⁻(y)^n, F(y) = π_ref(r ≤ r(y)), F⁻(y) = π_ref(r < r(y))."""
    below_or_eq = (ref[:, None, :] * (reward[:, None, :] <= reward[:, :, None])).sum(-1)
    below = (ref[:, None, :] * (reward[:, None, :] < reward[:, :, None])).sum(-1)
    return below_or_eq**n - below**n


def top_k_of_n(ref, reward, n, k):
    """The distribution of a uniformly drawn member of the k highest-reward samples among n from
    π_ref, by enumerating every n-tuple of samples (a cross-check of the closed form for k = 1)."""
    import itertools

    out = np.zeros_like(ref)
    for x in range(ref.shape[0]):
        for tup in itertools.product(range(ref.shape[1]), repeat=n):
            p = np.prod(ref[x, list(tup)])
            for y in sorted(tup, key=lambda y: -reward[x, y])[:k]:
                out[x, y] += p / k
    return out


@pytest.mark.parametrize("n,keep", [(4, 1), (3, 2)])
def test_rejection_sampling_round_converges_to_best_of_n(n, keep):
    """Fixed point of one round (the rollout from π_ref, trained to convergence): the distribution of
    the kept samples, SFT's fixed point being its data: keep 1 of N, the best-of-N distribution of π_ref,
    P(y) = F(y)^N − F⁻(y)^N; keep k, a uniform member of the top k (by enumeration). Iterated, each
    round's fixed point is this map of the last, which concentrates on the best completion.
    Tolerance: max |π − expected| < 1e-6."""
    obj, θ = build("rejection_sampling", samples_per_prompt=n, keep_per_prompt=keep), policy_from()
    roll, w = group_rollout(t64(REF_PROBS), n, t64(REWARD))
    batch, _ = obj.prepare(roll)
    batch["weight"] = w.view(-1, n)[:, :keep].reshape(-1)  # k kept per group, in group order: its probability
    assert batch["input_ids"].shape[0] == w.shape[0] // n * keep
    descend([θ], lambda _: obj.loss(batch, TabularScorer(θ))[0], lr=6.0 / keep, max_steps=8000)
    expect = best_of_n(REF_PROBS, REWARD, n) if keep == 1 else top_k_of_n(REF_PROBS, REWARD, n, keep)
    if keep == 1:
        assert max_abs(expect, top_k_of_n(REF_PROBS, REWARD, n, 1)) < 1e-12
    assert max_abs(probs(θ), expect) < 1e-6


# ---- policy gradient: PPO, RLOO, GRPO, Dr. GRPO, DAPO, REINFORCE++, ReMax, CISPO ----------------


def pg_batch(obj, policy, ref, values=None, reward=REWARD, completions=None):
    """The objective's batch from an enumerated rollout of the current policy: every ordered group of
    ``samples_per_prompt`` samples of each prompt with its probability, scored by ``reward`` [X, C],
    with what the online pipeline attaches (log π_old, log π_ref, the critic's V_old, ReMax's greedy
    reward), passed through the objective's own ``prepare``."""
    pi = completion_probs(policy, one_token(V) if completions is None else completions)
    roll, w = group_rollout(pi, obj.cfg.samples_per_prompt, t64(reward), completions)
    roll["scores"] = roll["scores"].float()  # a reward source's scores are float32
    now = TabularScorer(policy, ref, values=values)
    roll["old_logps"] = now.logps(roll).logps.detach()
    roll["ref_logps"] = now.ref_logps(roll).logps
    if obj.needs.value_head:
        roll["old_values"] = now.values(roll).detach()
    if obj.needs.greedy_baseline:  # one-token completions: the greedy completion is π's mode
        x = roll["input_ids"][:, 0]
        roll["baseline_scores"] = t64(reward)[x, pi.argmax(-1)[x]].float()
    roll, _ = obj.prepare(roll)
    return dict(roll, weight=w, norm_tokens=roll["input_ids"].shape[1] - 1)


def train_pg(obj, lr, max_steps, steps_per_rollout=1, on_step=None, decay=1.0, world=None):
    """Full-batch training of a policy-gradient objective: a fresh enumerated rollout every
    ``steps_per_rollout`` optimizer steps (1: π_old is the current policy), the critic (GAE) trained
    with the policy. ``world``: (π_ref's tables, reward [X, C], completions); default: one token.
    Returns the policy's tables."""
    ref, reward, completions = world or (torch.log(t64(REF_PROBS)), REWARD, None)
    policy = tables_like(ref)
    values = (torch.zeros(X, dtype=F64, requires_grad=True) if completions is None else
              (torch.zeros(X, dtype=F64, requires_grad=True), torch.zeros(ref[0].shape, dtype=F64, requires_grad=True)))
    state = {}

    def loss(step):
        if on_step is not None:
            on_step(policy)
        if step % steps_per_rollout == 0:
            state["batch"] = pg_batch(obj, policy, ref, values, reward, completions)
        batch = dict(state["batch"], old_is_current=steps_per_rollout == 1)
        return obj.loss(batch, TabularScorer(policy, ref, values=values))[0]

    params = [policy] if isinstance(policy, torch.Tensor) else list(policy)
    if obj.needs.value_head:
        params += [values] if isinstance(values, torch.Tensor) else list(values)
    descend(params, loss, lr=lr, max_steps=max_steps, decay=decay)
    return policy


KL_OPTIMUM_PRESETS = {
    # preset: (overrides, lr, lr decay per step, steps). β = 0.5 everywhere (the presets' β of 0.01–0.05
    # put π* in a corner of the simplex); PPO's adaptive β (kl_target) is off: a moving β moves the
    # fixed point. Whitening (ppo, reinforce_pp) divides the advantages by their std, which shrinks
    # towards 0 (PPO: the critic learns V(x) = E_π[r − β log π/π_ref]) or towards the spread of that
    # value across prompts (REINFORCE++): the step no longer shrinks with the gradient, so a fixed
    # learning rate hovers at a distance ∝ lr from π*; a decaying one settles.
    "rloo": (dict(samples_per_prompt=2), 10.0, 1.0, 400),
    "remax": (dict(), 10.0, 1.0, 400),
    "ppo": (dict(kl_target=None), 0.5, 0.99, 600),
    "reinforce_pp": (dict(), 0.5, 0.99, 600),
}


@pytest.mark.parametrize("name", sorted(KL_OPTIMUM_PRESETS))
def test_pg_with_kl_in_the_reward_converges_to_the_kl_optimum(name):
    """Fixed point: π*(y|x) ∝ π_ref(y|x) · exp(r(x, y)/β). With the k1 KL in the reward, the sample's
    return is r − β log(π/π_ref); every baseline these presets subtract (leave-one-out, the greedy
    completion's reward, the critic's V(x), the batch mean of whitening) does not depend on the sample,
    so the expected update is ∇_θ (E_π[r] − β KL(π ‖ π_ref)) times a positive factor (whitening's
    1/std), zero only at π*. One optimizer step per rollout (ratio 1, clipping inactive).
    Tolerance: max |π − π*| < 1e-6 (advantages are float32 in prepare: the floor is ~1e-8)."""
    beta = 0.5
    overrides, lr, decay, steps = KL_OPTIMUM_PRESETS[name]
    obj = build(name, kl_coef=beta, **overrides)
    θ = train_pg(obj, lr=lr, max_steps=steps, decay=decay)
    assert max_abs(probs(θ), kl_optimum(REF_PROBS, REWARD, beta)) < 1e-6


def grpo_group_advantage(reward, scale_by_std=True, eps=1e-6):
    """A(y; y') of a group of two samples: (r − mean)/(std + ε), std the unbiased std of the two,
    |r − r'|/√2, so A = ((r − r')/2)/(|r − r'|/√2 + ε): ±1/√2, the sign of the comparison; without
    ÷std (Dr. GRPO) A = (r − r')/2. [X, V, V]."""
    d = reward[:, :, None] - reward[:, None, :]
    return (d / 2) / (np.abs(d) / np.sqrt(2) + eps) if scale_by_std else d / 2


def expected_group_advantage(pi, reward, group_size, scale_by_std=True, eps=1e-6):
    """â_π(y) = E[A of a sample y in a group with K − 1 other samples from π], [X, V]: K = 2 from
    :func:`grpo_group_advantage`, larger K by enumerating the others (A = (r − mean)/(std + ε))."""
    if group_size == 2:
        return (grpo_group_advantage(reward, scale_by_std, eps) * pi[:, None, :]).sum(-1)
    import itertools

    out = np.zeros_like(pi)
    for others in itertools.product(range(pi.shape[1]), repeat=group_size - 1):
        p = np.prod(pi[:, list(others)], -1)  # [X]
        for y in range(pi.shape[1]):
            g = reward[:, [y, *others]]  # [X, K]
            a = g[:, 0] - g.mean(-1)
            out[:, y] += p * (a / (g.std(-1, ddof=1) + eps) if scale_by_std else a)
    return out


def grpo_optimum(ref, reward, beta, scale_by_std=True, group_size=2):
    """GRPO's fixed point (K samples per group, k3 KL in the loss), derived by hand: the expected
    advantage of y is â_π(y) (E_π[â] = 0: a group's advantages sum to 0), and ∇ of E_π[k3] at
    π_old = π is ∇ KL(π_ref ‖ π) (E_π[(1 − π_ref/π) ∇log π] = −Σ π_ref ∇log π). The logits' update
    is ∝ π(y) â(y) − β (π(y) − π_ref(y)), zero where π(y) = β π_ref(y) / (β − â_π(y)): an implicit,
    rank-based point (â depends on π, and for K = 2 on r only through comparisons), not
    π* ∝ π_ref e^{r/β}. Without ÷std, â_π(y) = (K − 1)/K · (r(y) − E_π[r]): still implicit, still not π*."""

    def eq(free):
        th = np.concatenate([np.zeros((X, 1)), free.reshape(X, -1)], 1)
        pi = normalize(np.exp(th))
        a_hat = expected_group_advantage(pi, reward, group_size, scale_by_std)
        return (pi * a_hat - beta * (pi - ref))[:, 1:].ravel()

    start = kl_optimum(ref, reward, beta)  # from π_ref, scipy's hybr stalls on this system
    sol = root(eq, (np.log(start) - np.log(start[:, :1]))[:, 1:].ravel(), tol=1e-13)
    assert np.abs(eq(sol.x)).max() < 1e-14, sol.message
    return normalize(np.exp(np.concatenate([np.zeros((X, 1)), sol.x.reshape(X, -1)], 1)))


@pytest.mark.parametrize("group_size", [2, 3])
def test_grpo_converges_to_its_group_normalized_fixed_point(group_size):
    """Fixed point: π(y|x) = β π_ref(y|x) / (β − â_π(y|x)), â_π(y) the expected group-normalized
    advantage of y among K − 1 other samples of π (K = 2: E_{y'~π}[sign(r(y) − r(y'))]/√2; ÷std, k3 KL
    in the loss; see :func:`grpo_optimum`), which differs from π* (checked too, so the test would
    notice GRPO reaching π*). Tolerance: max |π − π_GRPO| < 1e-6."""
    beta = 0.3
    obj = build("grpo", kl_coef=beta, samples_per_prompt=group_size)
    θ = train_pg(obj, lr=3.0, max_steps=3000)
    assert max_abs(probs(θ), grpo_optimum(REF_PROBS, REWARD, beta, group_size=group_size)) < 1e-6
    assert max_abs(probs(θ), kl_optimum(REF_PROBS, REWARD, beta)) > 0.05


def _group_presets():
    import dataclasses

    from prefopt.objectives.registry import available, get_objective

    out = []
    for name in available():
        fields = {f.name: f.default for f in dataclasses.fields(get_objective(name).Config)}
        if fields.get("advantage") == "group":
            out.append(name)
    return out


@pytest.mark.parametrize("name", _group_presets())
def test_group_presets_with_a_k3_kl_share_grpos_fixed_point(name):
    """Fixed point: GRPO's, π(y|x) = β π_ref(y|x) / (β − â_π(y|x)) (Dr. GRPO: â without ÷std), for
    every group-advantage preset given GRPO's k3 KL in the loss: at one step per rollout the ratio is
    1, where every policy loss (clip, CISPO, GSPO's sequence ratio, SAPO's gate, GMPO, DPPO, VESPO)
    has the gradient −A ∇log π. Tolerance: max |π − π_GRPO| < 1e-6."""
    beta = 0.3
    obj = build(name, kl_coef=beta, kl_in="loss", kl_estimator="k3", samples_per_prompt=2)
    θ = train_pg(obj, lr=3.0, max_steps=3000)
    expect = grpo_optimum(REF_PROBS, REWARD, beta, scale_by_std=obj.cfg.scale_by_std)
    assert max_abs(probs(θ), expect) < 1e-6


def expected_reward(logits) -> float:
    return float((probs(logits) * REWARD).sum(-1).mean())


NO_FIXED_POINT_PRESETS = {
    # preset: (overrides, lr, optimizer steps per rollout). Several steps per rollout for every policy
    # loss with a trust region (clip, soft gate, geometric-mean clip, binary-KL / TV region, Gamma
    # weight), so that π moves away from π_old within a rollout and the region acts.
    "dr_grpo": (dict(samples_per_prompt=2), 2.0, 1),
    **{name: (dict(samples_per_prompt=2), 2.0, 4)
       for name in ("dapo", "cispo", "gspo", "gspo_token", "luspo", "sapo", "gmpo", "dppo", "dppo_tv", "vespo")},
}


@pytest.mark.parametrize("name", sorted(NO_FIXED_POINT_PRESETS))
def test_pg_without_kl_improves_the_expected_reward_every_rollout(name, outcome):
    """No finite fixed point: without a KL term the only stationary points are the vertices of the
    simplex (the expected update vanishes where π puts all its mass on one completion), and the
    attracting one is the best completion. Checked instead: E_π[r] rises from every rollout to the
    next (the steps inside one rollout follow stale advantages and a clipped ratio: there a step can
    lower E_π[r], e.g. DAPO at this lr), and ends within 0.05 of max_y r."""
    overrides, lr, steps_per_rollout = NO_FIXED_POINT_PRESETS[name]
    obj = build(name, **overrides)
    curve = []
    θ = train_pg(obj, lr=lr, max_steps=300, steps_per_rollout=steps_per_rollout,
                 on_step=lambda th: curve.append(expected_reward(th)))
    per_rollout = np.array(curve[::steps_per_rollout] + [expected_reward(θ)])
    outcome("smallest rise of E[r] from one rollout to the next", np.diff(per_rollout).min(), ">", 0.0)
    outcome("E[r] after training", per_rollout[-1], ">", REWARD.max(-1).mean() - 0.05)


# ---- two-token completions: the per-token code paths ------------------------------------------

V2 = 3  # tokens; the completions are the V2² = 9 pairs (a, b), c = a·V2 + b
REF2_FIRST = np.array([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])  # π_ref(a|x)
REF2_SECOND = np.array([[[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]],
                        [[0.3, 0.3, 0.4], [0.5, 0.1, 0.4], [0.2, 0.6, 0.2]]])  # π_ref(b|x, a)
REF2_PROBS = (REF2_FIRST[:, :, None] * REF2_SECOND).reshape(X, V2 * V2)  # π_ref(a b|x)
REWARD2 = np.array([[0.0, 0.9, 0.3, 0.5, 0.1, 0.7, 1.0, 0.2, 0.6],
                    [0.8, 0.4, 0.0, 0.2, 1.0, 0.5, 0.3, 0.9, 0.6]])


def ref2_tables():
    return torch.log(t64(REF2_FIRST)), torch.log(t64(REF2_SECOND))


def _train_pairs_two_tokens(name, pref, lr, steps, **cfg):
    batch = pair_population(t64(REF2_PROBS), t64(pref), two_tokens(V2))
    obj, ref = build(name, **cfg), ref2_tables()
    policy = tables_like(ref)
    descend(list(policy), lambda _: obj.loss(batch, TabularScorer(policy, ref))[0], lr=lr, max_steps=steps)
    return probs(policy, two_tokens(V2))


def test_sft_on_two_token_completions_converges_to_the_data_distribution():
    """Fixed point: π(a b|x) = d(a b|x): the token-mean NLL is least at π(a|x) = d(a|x) and
    π(b|x, a) = d(b|x, a), whose product is d (any d, factorized or not). Tolerance: 1e-6."""
    data = normalize(np.array([[1, 5, 2, 8, 1, 3, 2, 4, 6], [7, 1, 1, 2, 9, 3, 4, 1, 2]], dtype=float))
    completions = two_tokens(V2)
    x = np.repeat(range(X), V2 * V2)
    batch = sequences(x, completions.repeat(X, 1))
    batch["weight"] = t64(data.ravel() / X)
    obj, policy = build("sft"), tables_like(ref2_tables())
    descend(list(policy), lambda _: obj.loss(batch, TabularScorer(policy))[0], lr=2.0, max_steps=4000)
    assert max_abs(probs(policy, completions), data) < 1e-6


def test_dpo_on_two_token_completions_converges_to_the_sequence_level_kl_optimum():
    """Fixed point: π*(a b|x) ∝ π_ref(a b|x) · exp(r(x, a b)/β), the sequence-level optimum (DPO's
    log-ratios are sums over the completion's tokens). Tolerance: max |π − π*| < 1e-6."""
    beta = 0.5
    got = _train_pairs_two_tokens("dpo", bt_pref(REWARD2), lr=60.0, steps=4000, beta=beta)
    assert max_abs(got, kl_optimum(REF2_PROBS, REWARD2, beta)) < 1e-6


def test_ipo_on_two_token_completions_averages_the_log_ratio_over_tokens():
    """Fixed point: π(y|x) ∝ π_ref(y|x) · exp(|y| · p(y ≻ μ|x)/τ) with |y| = 2: IPO regresses the
    per-token average log-ratio ρ/|y| onto (p − ½)/τ, so with equal lengths the sequence log-ratio gap
    is |y| times the one-token target. Tolerance: max |π − π_IPO| < 1e-6."""
    tau = 1.0
    pref = bt_pref(REWARD2)
    got = _train_pairs_two_tokens("ipo", pref, lr=10.0, steps=4000, beta=tau)
    assert max_abs(got, ipo_optimum(REF2_PROBS, REF2_PROBS, pref, tau / 2)) < 1e-6


TWO_TOKEN_KL_PRESETS = {
    # preset: (overrides, lr, lr decay per step, steps). Whitening off: it is a positive rescaling and a
    # constant shift of every token's advantage (the one-token test keeps it). Here, with a critic per
    # state, the whitened (normalized) step follows the critic's remaining error and PPO is still
    # 1e-3 from π* after 4000 steps; the test is about the per-token rewards and advantages.
    "rloo": (dict(samples_per_prompt=2), 10.0, 1.0, 600),
    "ppo": (dict(kl_target=None, whiten_advantages=False), 5.0, 1.0, 600),
    "reinforce_pp": (dict(whiten_advantages=False), 5.0, 1.0, 600),
}


@pytest.mark.parametrize("name", sorted(TWO_TOKEN_KL_PRESETS))
def test_pg_on_two_token_completions_converges_to_the_sequence_level_kl_optimum(name):
    """Fixed point: π*(a b|x) ∝ π_ref(a b|x) · exp(r(x, a b)/β). The k1 KL enters the reward per token
    (PPO, REINFORCE++: −β k1 at every token, r at the last; RLOO: summed over the sequence); the
    per-token terms add up to −β log π(y)/π_ref(y), and each token's advantage (GAE with a critic per
    state, return-to-go, or the sequence's leave-one-out) has the expected value of that sequence
    return minus a baseline of its prefix only. Tolerance: max |π − π*| < 1e-6."""
    beta = 0.5
    overrides, lr, decay, steps = TWO_TOKEN_KL_PRESETS[name]
    obj = build(name, kl_coef=beta, **overrides)
    policy = train_pg(obj, lr=lr, max_steps=steps, decay=decay, world=(ref2_tables(), REWARD2, two_tokens(V2)))
    assert max_abs(probs(policy, two_tokens(V2)), kl_optimum(REF2_PROBS, REWARD2, beta)) < 1e-6


# ---- coverage ---------------------------------------------------------------------------------

COVERED = {
    "sft": "test_sft_converges_to_the_data_distribution",
    "reward": "test_reward_model_recovers_the_bradley_terry_reward_up_to_a_constant",
    "dpo": "test_dpo_converges_to_the_kl_optimum_of_the_bt_reward",
    "ipo": "test_ipo_converges_to_its_regression_target",
    "simpo": "test_simpo_converges_to_its_margin_shifted_bt_point",
    "orpo": "test_orpo_converges_to_its_odds_ratio_stationary_point",
    "kto": "test_kto_converges_to_its_stationary_point",
    "online_dpo": "test_online_dpo_converges_to_the_kl_optimum",  # and ..._with_noiseless_labels_has_no_fixed_point
    "iterative_dpo": "test_online_dpo_converges_to_the_kl_optimum",
    "rejection_sampling": "test_rejection_sampling_round_converges_to_best_of_n",
    "grpo": "test_grpo_converges_to_its_group_normalized_fixed_point",
    **{n: "test_pg_with_kl_in_the_reward_converges_to_the_kl_optimum" for n in KL_OPTIMUM_PRESETS},
    **{n: "test_pg_without_kl_improves_the_expected_reward_every_rollout" for n in NO_FIXED_POINT_PRESETS},
}


def test_every_registered_objective_has_a_fixed_point_test():
    """Each name in the objective registry is trained here against its fixed point (or, without one,
    for monotone improvement): a new objective or preset needs its entry in COVERED."""
    from prefopt.objectives.registry import available

    missing = sorted(set(available()) - set(COVERED))
    assert not missing, f"objectives without a fixed-point test in {__file__}: {missing}"
    assert all(name in globals() for name in COVERED.values())


def _objective_modules():
    from prefopt.objectives.registry import available, get_objective

    return sorted({get_objective(n).__module__ for n in available()})


@pytest.mark.parametrize("module", _objective_modules())
def test_every_objective_docstring_names_its_fixed_point(module):
    """Each objective's module docstring has a line starting "Fixed point", naming what the tests here
    check (or saying that there is none)."""
    import importlib

    doc = importlib.import_module(module).__doc__ or ""
    assert any(line.startswith("Fixed point") for line in doc.splitlines()), module
