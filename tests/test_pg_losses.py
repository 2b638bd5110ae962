"""The policy-loss families, entropy controls and sampler corrections of the policy-gradient objective
against the float64 references of tests/pg_reference.py (value and gradient), on ragged batches with
padding, a masked hole inside a completion, length-1 completions and all-equal rewards (A = 0)."""

import math

import pytest
import torch

from prefopt.core.errors import UserError
from prefopt.objectives.policy_gradient import (DPPO, DPPO_TV, GMPO, GSPO, GSPO_TOKEN, LUSPO, SAPO, VESPO, PGConfig,
                                                PolicyGradient)
from pg_reference import EntropyScorer, quantile, reference

LENGTHS = [1, 4, 7, 2, 5, 1]


def batch_inputs(seed, lengths=LENGTHS, noise=0.3, per_token_A=False, hole=True, probs=False):
    """log π, log π_old [B, 1+max] with a prompt column, right padding whose log π_old is garbage (it must
    not leak), a masked token inside row 2 (a tool output, say), and one sequence advantage per row (row 3's
    is 0: a group whose rewards were all equal)."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), 1 + max(lengths)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, 1 : 1 + n] = True
    if hole:
        mask[2, 3] = False
    lo = 0.05 if probs else 0.0
    lp = torch.log(lo + torch.rand(B, T, generator=g, dtype=torch.float64) * (0.95 - lo)) if probs else \
        -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = lp + torch.randn(B, T, generator=g, dtype=torch.float64) * noise
    if probs:
        old = old.clamp(max=-1e-3)
    old = torch.where(mask, old, torch.randn(B, T, generator=g, dtype=torch.float64) * 5)
    lp = lp * mask
    A_seq = torch.randn(B, generator=g, dtype=torch.float64)
    A_seq[3] = 0.0
    A = A_seq[:, None] * mask if not per_token_A else torch.randn(B, T, generator=g, dtype=torch.float64) * mask
    return lp, old, A, mask


def run(obj, lp, old, A, mask, entropy=None, **extra):
    """(L, dL/dlog π, metrics as means: each metric sum / the loss's units)."""
    B, T = lp.shape
    b = {"input_ids": torch.zeros(B, T, dtype=torch.long), "attention_mask": torch.ones(B, T, dtype=torch.long),
         "loss_mask": mask, "old_logps": old, "advantages": A, "norm_tokens": T, **extra}
    sc = EntropyScorer(lp, mask, entropy)
    s, m = obj.loss(b, sc)
    units = obj.units(b)
    loss = s / units
    loss.backward()
    return float(loss.detach()), sc.lp.grad, {k: float(v) / units for k, v in m.items()}


def check(obj, kind, lp, old, A, mask, cfg, keep=None, extra=None, entropy=None, **batch):
    got, grad, m = run(obj, lp, old, A, mask, entropy, **batch)
    want, want_grad = reference(kind, lp, old, A, mask, obj.cfg.loss_agg, cfg, keep, extra)
    assert got == pytest.approx(want, rel=1e-10, abs=1e-13)
    torch.testing.assert_close(grad, want_grad, rtol=1e-9, atol=1e-13)
    assert torch.all(grad[~mask] == 0)
    return m


# ---- the families -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("per_token_A", [False, True])
def test_gspo_sequence_ratio_value_and_gradient(seed, per_token_A):
    """GSPO eq. 5–7: −min(s_i A, clip(s_i) A), s_i = exp(mean_t log ρ_t), gradient through s_i's mean."""
    lp, old, A, mask = batch_inputs(seed, noise=1.5e-3, per_token_A=per_token_A)
    m = check(GSPO(GSPO.Config()), "gspo", lp, old, A, mask, {"eps_low": 3e-4, "eps_high": 4e-4})
    assert 0 < m["clip_frac"] < 1  # some whole sequences clipped, not all


@pytest.mark.parametrize("per_token_A", [False, True])
def test_gspo_token_value_and_gradient(per_token_A):
    """GSPO-token eq. 13–14: the value s_i, each token's gradient s_i ∇log π(y_t) weighted by its own A_t."""
    lp, old, A, mask = batch_inputs(2, noise=1.5e-3, per_token_A=per_token_A)
    check(GSPO_TOKEN(GSPO_TOKEN.Config()), "gspo_token", lp, old, A, mask, {"eps_low": 3e-4, "eps_high": 4e-4})


def test_gspo_and_gspo_token_agree_for_sequence_advantages():
    lp, old, A, mask = batch_inputs(3, noise=1.5e-3)
    a = run(GSPO(GSPO.Config()), lp, old, A, mask)
    b = run(GSPO_TOKEN(GSPO_TOKEN.Config()), lp, old, A, mask)
    assert a[0] == pytest.approx(b[0], rel=1e-12)
    torch.testing.assert_close(a[1], b[1], rtol=1e-12, atol=1e-15)


def test_luspo_scales_each_sequence_by_its_length():
    lp, old, A, mask = batch_inputs(4, noise=1.5e-3)
    check(LUSPO(LUSPO.Config()), "gspo", lp, old, A, mask, {"eps_low": 3e-4, "eps_high": 4e-4})


@pytest.mark.parametrize("ratio_level", ["token", "sequence"])
@pytest.mark.parametrize("taus", [(1.0, 1.05), (0.5, 3.0)])
def test_sapo_soft_gate_value_and_gradient(ratio_level, taus):
    lp, old, A, mask = batch_inputs(5, noise=0.5)
    obj = SAPO(SAPO.Config(sapo_tau_pos=taus[0], sapo_tau_neg=taus[1], ratio_level=ratio_level))
    if ratio_level == "token":
        check(obj, "sapo", lp, old, A, mask, {"tau_pos": taus[0], "tau_neg": taus[1]})
    else:  # the gate of GSPO's s_i: compare with a finite difference of the value
        got, grad, _ = run(obj, lp, old, A, mask)
        f = lambda x: run(SAPO(obj.cfg), x, old, A, mask)[0]  # noqa: E731
        for i, t in [(0, 1), (1, 2), (2, 4), (4, 5)]:
            d = torch.zeros_like(lp)
            d[i, t] = 1e-6
            assert float(grad[i, t]) == pytest.approx((f(lp + d) - f(lp - d)) / 2e-6, rel=1e-5, abs=1e-9)


def test_sapo_gradient_at_ratio_one_is_the_policy_gradient():
    lp, _, A, mask = batch_inputs(6)
    _, grad, _ = run(SAPO(SAPO.Config()), lp, lp.detach(), A, mask)
    n = mask.sum(-1, keepdim=True)
    torch.testing.assert_close(grad, -A / n / len(LENGTHS) * mask, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("seed,eps", [(0, (0.4, 0.4)), (1, (0.1, 0.3))])
def test_gmpo_value_and_gradient(seed, eps):
    """GMPO eq. 4: −A_i exp(mean_t sgn·min(sgn ℓ_t, sgn clip(ℓ_t))); clipped tokens carry no gradient."""
    lp, old, A, mask = batch_inputs(seed, noise=0.4)
    obj = GMPO(GMPO.Config(clip_eps_low=eps[0], clip_eps_high=eps[1]))
    m = check(obj, "gmpo", lp, old, A, mask, {"eps_low": eps[0], "eps_high": eps[1]})
    assert float(m["clip_frac"]) > 0


@pytest.mark.parametrize("variant", ["dppo_tv", "dppo_kl"])
@pytest.mark.parametrize("delta", [0.02, 0.2])
def test_dppo_value_and_gradient(variant, delta):
    """DPPO: −A·sg[min(ρ, C)]·log π·sg[valid], valid from the token probability's TV or binary KL."""
    lp, old, A, mask = batch_inputs(7, noise=0.5, probs=True)
    preset = DPPO_TV if variant == "dppo_tv" else DPPO
    obj = preset(preset.Config(clip_eps_low=delta, clip_eps_high=delta, is_ratio_max=1.5))
    m = check(obj, variant, lp, old, A, mask, {"eps_low": delta, "eps_high": delta, "C": 1.5})
    assert 0 < m["clip_frac"] < 1 and float(torch.exp(lp - old)[mask].max()) > 1.5  # masked tokens, truncated ratios


@pytest.mark.parametrize("noise", [0.05, 0.6])
def test_vespo_value_and_gradient(noise):
    lp, old, A, mask = batch_inputs(8, noise=noise)
    obj = VESPO(VESPO.Config())
    check(obj, "vespo", lp, old, A, mask, {"k_pos": 2.0, "lambda_pos": 3.0, "k_neg": 3.0, "lambda_neg": 2.0})


@pytest.mark.parametrize("name", ["grpo", "gspo", "gspo_token", "luspo", "sapo", "gmpo", "dppo", "dppo_tv", "vespo",
                                  "cispo"])
def test_all_equal_rewards_give_no_gradient(name):
    from prefopt.objectives.registry import get_objective

    lp, old, _, mask = batch_inputs(9)
    cls = get_objective(name)
    obj = cls(cls.Config(kl_coef=0.0))
    loss, grad, _ = run(obj, lp, old, torch.zeros_like(lp), mask)
    assert loss == 0.0 and torch.all(grad == 0)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UserError, match="accepted: .*dppo_kl.*gmpo.*sapo.*vespo"):
        PGConfig(policy_loss="nope")
    with pytest.raises(UserError, match="accepted: .*icepop.*geometric_mask"):
        PGConfig(rollout_is="nope")
    with pytest.raises(UserError, match="accepted: .*clip_cov.*kl_cov.*top_entropy_quantile"):
        PGConfig(entropy_control="nope")
    with pytest.raises(UserError, match="ratio_level=token"):
        PGConfig(policy_loss="gmpo", ratio_level="sequence")
    with pytest.raises(UserError, match="sapo_tau"):
        PGConfig(policy_loss="sapo", sapo_tau_neg=0.0)


# ---- entropy controls ---------------------------------------------------------------------------


def _cov(lp, A, mask):
    m = mask.bool()
    n = int(m.sum())
    lpm, am = float(lp[m].sum()) / n, float(A[m].sum()) / n
    return {(i, t): (float(lp[i, t]) - lpm) * (float(A[i, t]) - am) for i, t in m.nonzero().tolist()}


@pytest.mark.parametrize("q", [0.2, 0.5, 1.0])
def test_top_entropy_quantile_keeps_the_high_entropy_tokens(q):
    lp, old, A, mask = batch_inputs(10)
    H = torch.rand(lp.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    obj = PolicyGradient(PGConfig(kl_coef=0.0, entropy_control="top_entropy_quantile", top_entropy_quantile=q))
    cut = quantile([float(H[i, t]) for i, t in mask.nonzero().tolist()], 1 - q)
    keep = {(i, t): float(float(H[i, t]) >= cut) for i, t in mask.nonzero().tolist()}
    m = check(obj, "clip", lp, old, A, mask, {}, keep=keep, entropy=H)
    kept = sum(keep.values())
    assert kept == max(1, math.ceil(q * len(keep) - 1e-9)) or q == 1.0
    assert float(m["entropy_control_frac"]) >= 0


def test_kl_cov_penalises_the_largest_covariance_tokens():
    lp, old, A, mask = batch_inputs(11, noise=0.4)
    obj = PolicyGradient(PGConfig(kl_coef=0.0, entropy_control="kl_cov", kl_cov_ratio=0.2, kl_cov_coef=0.7,
                                  loss_agg="token-mean"))
    cov = _cov(lp, A, mask)
    k = max(int(0.2 * len(cov)), 1)
    top = sorted(cov, key=cov.get, reverse=True)[:k]
    extra = {}
    for i, t in top:
        d = float(lp[i, t]) - float(old[i, t])
        extra[(i, t)] = (0.7 * abs(d), 0.7 * math.copysign(1.0, d))
    check(obj, "clip", lp, old, A, mask, {}, extra=extra)


@pytest.mark.parametrize("ratio,expect_all", [(1.0, True), (1e-6, False)])
def test_clip_cov_drops_the_gradient_of_unclipped_high_covariance_tokens(ratio, expect_all):
    lp, old, A, mask = batch_inputs(12, noise=0.4)
    A[3] = 0.8 * mask[3]  # no zero-advantage row: every candidate has a gradient to lose
    torch.manual_seed(0)  # the draw among the candidates
    obj = PolicyGradient(PGConfig(kl_coef=0.0, entropy_control="clip_cov", clip_cov_ratio=ratio, clip_cov_lb=0.05,
                                  clip_cov_ub=5.0, loss_agg="token-mean"))
    cov = _cov(lp, A, mask)

    def clipped(i, t):
        r, a = math.exp(float(lp[i, t]) - float(old[i, t])), float(A[i, t])
        return (r > 1.2 and a > 0) or (r < 0.8 and a < 0)

    candidates = [k for k, c in cov.items() if 0.05 < c < 5.0 and not clipped(*k)]
    assert len(candidates) >= 2
    if expect_all:
        check(obj, "clip", lp, old, A, mask, {}, keep={k: 0.0 for k in candidates})
    else:  # one drawn at random: exactly one candidate loses its gradient, nothing else changes
        _, grad, m = run(obj, lp, old, A, mask)
        _, want = reference("clip", lp, old, A, mask, "token-mean", {})
        changed = [(i, t) for i, t in mask.nonzero().tolist() if abs(float(grad[i, t]) - float(want[i, t])) > 1e-12]
        assert len(changed) == 1 and tuple(changed[0]) in candidates and float(grad[tuple(changed[0])]) == 0.0
        assert m["entropy_control_frac"] == pytest.approx(1 / mask.sum().item(), rel=1e-9)


# ---- sampler corrections ----------------------------------------------------------------------


@pytest.mark.parametrize("mode,cmin,cmax", [("icepop", 0.5, 5.0), ("icepop", 0.8, 1.25),
                                            ("geometric_mask", 0.9, 1.1), ("geometric_mask", 0.97, 1.03)])
def test_icepop_and_geometric_masking(mode, cmin, cmax):
    lp, _, A, mask = batch_inputs(13)
    g = torch.Generator().manual_seed(3)
    μ = (lp + torch.randn(lp.shape, generator=g, dtype=torch.float64) * 0.4) * mask
    obj = PolicyGradient(PGConfig(kl_coef=0.0, rollout_is=mode, rollout_is_min=cmin, rollout_is_max=cmax,
                                  loss_agg="seq-mean-token-mean"))
    keep = {}
    for i in range(lp.shape[0]):
        pos = mask[i].nonzero().view(-1).tolist()
        logw = [float(lp[i, t]) - float(μ[i, t]) for t in pos]
        geo = math.exp(sum(logw) / len(pos))
        for t, lw in zip(pos, logw):
            w = math.exp(lw)
            keep[(i, t)] = (w if cmin <= w <= cmax else 0.0) if mode == "icepop" else float(cmin <= geo <= cmax)
    # one optimizer step per rollout: π_old = sg[π], ρ = 1
    m = check(obj, "clip", lp, lp.detach(), A, mask, {}, keep=keep, sampler_logps=μ, old_is_current=True)
    dropped = [v == 0.0 for v in keep.values()]
    assert any(dropped) or cmax - cmin > 1
    assert 0 <= float(m["rollout_is/masked_frac"]) <= 1


# ---- prefopt-train on the testbed ----------------------------------------------------------------

TINY_RUN = ["data=reviews", "trainer.max_steps=3", "algo.prompts_per_step=4", "algo.samples_per_prompt=4",
            "algo.minibatches_per_rollout=2", "algo.epochs_per_rollout=2", "trainer.log_every_steps=1",
            "trainer.save_model=false", "trainer.warmup_steps=0", "trainer.lr_schedule=constant"]


@pytest.mark.slow
@pytest.mark.parametrize("algo,extra", [
    ("gspo", []), ("gspo_token", []), ("luspo", []), ("sapo", []), ("gmpo", []), ("dppo", []), ("dppo_tv", []),
    ("vespo", []),
    ("grpo", ["algo.rollout_is=icepop", "algo.rollout_is_min=0.5", "algo.rollout_is_max=5.0"]),
    ("grpo", ["algo.rollout_is=geometric_mask", "algo.rollout_is_min=0.999", "algo.rollout_is_max=1.001"]),
    ("dapo", ["algo.entropy_control=clip_cov"]), ("dapo", ["algo.entropy_control=kl_cov"]),
    ("grpo", ["algo.entropy_control=top_entropy_quantile"]),
])
def test_new_losses_train_on_the_testbed(run_cfg, algo, extra):
    """A few steps of two epochs per rollout (ratios ≠ 1): every step logs finite losses and metrics."""
    import json
    import os

    s, out = run_cfg(f"algo={algo}", *TINY_RUN, *extra)
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert len(rows) == 3 and s["algo"] == algo
    for r in rows:
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float)), r
    assert any(r["ratio"] != 1.0 for r in rows)
