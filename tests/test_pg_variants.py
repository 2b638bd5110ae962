"""Policy-gradient variants against float64 references written from their papers and against TRL's
formulas on identical inputs: RLOO (Ahmadian et al. 2024) as TRL's RLOOTrainer computes it."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from prefopt.core.errors import UserError
from prefopt.models.logprobs import TokenStats
from prefopt.objectives.policy_gradient import PGConfig, RLOO, PolicyGradient


class FakeScorer:
    """Policy log-probs are a leaf tensor, so the loss's gradient w.r.t. them is visible."""

    def __init__(self, logps, mask):
        self.lp = logps.clone().requires_grad_(True)
        self.mask = mask

    def logps(self, batch, side=None, *, entropy=False):
        ent = torch.zeros_like(self.lp) if entropy else None
        return TokenStats(logps=self.lp * self.mask, mask=self.mask, entropy=ent)

    def ref_logps(self, batch, side=None):
        return TokenStats(logps=batch["ref_logps"] * self.mask, mask=self.mask)


def ragged(seed, lengths, dtype=torch.float64):
    """Per-token log-probs [B, 1+max] with one prompt column and right padding; old log-probs that
    differ from the current ones (ratios ≠ 1, some clipped)."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), 1 + max(lengths)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, 1 : 1 + n] = True
    lp = -torch.rand(B, T, generator=g, dtype=dtype) * 3 * mask
    old = (lp + torch.randn(B, T, generator=g, dtype=dtype) * 0.15) * mask
    return lp, old, mask, g


def pg_batch(old, A, mask, **extra):
    B, T = old.shape
    return {"input_ids": torch.zeros(B, T, dtype=torch.long), "attention_mask": torch.ones(B, T, dtype=torch.long),
            "loss_mask": mask, "old_logps": old, "advantages": A, "norm_tokens": T, **extra}


# ---- RLOO against TRL's RLOOTrainer._compute_loss ------------------------------------------------


def trl_rloo_loss(per_token_logps, completion_mask, old_seq_logps, advantages, eps_low, eps_high):
    """TRL 1.16's own RLOOTrainer._compute_loss, called with a stand-in for the trainer: the model's
    per-token log-probs are given, the accelerator is one process."""
    from trl import RLOOTrainer

    B, C = per_token_logps.shape
    acc = SimpleNamespace(gather=lambda x: x, reduce=lambda x, reduction="sum": x, gather_for_metrics=lambda x: x)
    fake = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (per_token_logps, torch.zeros_like(per_token_logps), None),
        aux_loss_enabled=False, epsilon_low=eps_low, epsilon_high=eps_high, accelerator=acc,
        model=SimpleNamespace(training=True), _metrics={"train": defaultdict(list)})
    inputs = {"prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
              "completion_ids": torch.zeros(B, C, dtype=torch.long), "completion_mask": completion_mask.long(),
              "old_logps": old_seq_logps, "advantages": advantages}
    return RLOOTrainer._compute_loss(fake, None, inputs)


@pytest.mark.parametrize("seed,eps", [(0, (0.2, 0.2)), (1, (0.2, 0.28)), (2, (0.05, 0.05))])
def test_rloo_preset_matches_trl_rloo_loss_and_gradient(seed, eps):
    lengths = [1, 4, 7, 2, 5, 3, 6, 1]
    lp, old, mask, g = ragged(seed, lengths)
    A_seq = torch.randn(len(lengths), generator=g, dtype=torch.float64)
    obj = RLOO(RLOO.Config(kl_coef=0.0, clip_eps_low=eps[0], clip_eps_high=eps[1]))
    sc = FakeScorer(lp, mask)
    b = pg_batch(old, A_seq[:, None] * mask, mask)
    s, _ = obj.loss(b, sc)
    loss = s / obj.units(b)
    loss.backward()

    trl_lp = lp[:, 1:].clone().requires_grad_(True)
    cm = mask[:, 1:]
    trl = trl_rloo_loss(trl_lp * cm, cm, (old * mask).sum(-1), A_seq, *eps)
    trl.backward()
    assert obj.units(b) == len(lengths)
    assert abs(float(loss.detach()) - float(trl.detach())) < 1e-12
    torch.testing.assert_close(sc.lp.grad[:, 1:], trl_lp.grad * cm, rtol=1e-10, atol=1e-12)
    assert torch.all(sc.lp.grad[~mask] == 0)


def test_rloo_gradient_is_the_papers_estimator_float64():
    """Ahmadian et al. eq. 7 at π = π_old: ∇ = −(1/N) Σ_i A_i ∇ Σ_t log π(y_t); per-token gradient −A_i/N,
    whatever the length (token-mean would give −A_i/Σ|y|)."""
    lengths = [3, 1, 6, 2]
    lp, _, mask, g = ragged(3, lengths)
    A = torch.randn(4, generator=g, dtype=torch.float64)
    obj = RLOO(RLOO.Config(kl_coef=0.0))
    sc = FakeScorer(lp, mask)
    b = pg_batch(lp.detach(), A[:, None] * mask, mask)
    s, _ = obj.loss(b, sc)
    (s / obj.units(b)).backward()
    for i, n in enumerate(lengths):
        torch.testing.assert_close(sc.lp.grad[i, 1 : 1 + n], torch.full((n,), -float(A[i]) / 4, dtype=torch.float64))
    assert float(s / obj.units(b)) == pytest.approx(-float(A.mean()), rel=1e-12)


def test_rloo_sequence_ratio_clips_whole_sequences():
    # One sequence whose likelihood ratio exp(Σ log ρ_t) = e^{0.6} > 1.2 with A > 0: no gradient at all,
    # even though each token's own ratio e^{0.2} is inside the clip range.
    mask = torch.tensor([[0, 1, 1, 1]], dtype=torch.bool)
    old = torch.zeros(1, 4, dtype=torch.float64)
    lp = torch.tensor([[0, 0.2, 0.2, 0.2]], dtype=torch.float64)
    obj = RLOO(RLOO.Config(kl_coef=0.0))
    sc = FakeScorer(lp, mask)
    s, m = obj.loss(pg_batch(old, torch.ones(1, 4, dtype=torch.float64) * mask, mask), sc)
    s.backward()
    assert float(s) == pytest.approx(-1.2)
    assert torch.all(sc.lp.grad == 0) and float(m["clip_frac"]) == pytest.approx(1.0)


def test_rloo_advantages_match_trls_formula():
    """prepare(): r_i − β Σ_t (log π_old − log π_ref), then the leave-one-out baseline, as TRL's RLOOTrainer."""
    torch.manual_seed(0)
    K, G, T = 4, 3, 6
    mask = torch.zeros(G * K, T, dtype=torch.bool)
    for i in range(G * K):
        mask[i, 1 : 2 + i % 5] = True
    old = -torch.rand(G * K, T) * mask
    ref = -torch.rand(G * K, T) * mask
    scores = torch.randn(G * K)
    obj = RLOO(RLOO.Config())
    roll, _ = obj.prepare({"loss_mask": mask, "old_logps": old, "ref_logps": ref, "scores": scores, "group_size": K})
    beta = 0.05
    rewards = scores - beta * ((old - ref) * mask).sum(-1)
    grouped = rewards.view(-1, K)
    baselines = ((grouped.sum(1, keepdim=True) - grouped) / (K - 1)).view(-1)
    want = rewards - baselines
    torch.testing.assert_close(roll["advantages"], want[:, None] * mask, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["seq-mean-token-sum"])
def test_seq_mean_token_sum_is_split_independent(mode):
    lengths = [1, 3, 5, 2]
    lp, old, mask, g = ragged(4, lengths)
    A = torch.randn(4, 1 + max(lengths), generator=g, dtype=torch.float64) * mask
    obj = PolicyGradient(PGConfig(kl_coef=0.0, loss_agg=mode))
    ℓ = [(-A[i, 1 : 1 + n] * (lp[i, 1 : 1 + n] - old[i, 1 : 1 + n]).exp()) for i, n in enumerate(lengths)]
    eps = 0.2
    ℓ = [torch.maximum(x, -A[i, 1 : 1 + len(x)] * (lp[i, 1 : 1 + len(x)] - old[i, 1 : 1 + len(x)]).exp().clamp(1 - eps, 1 + eps))
         for i, x in enumerate(ℓ)]
    want = sum(float(x.sum()) for x in ℓ) / len(lengths)
    for split in ([0, 1, 2, 3],), ([0], [1], [2], [3]), ([0, 3], [1, 2]):
        total, units = 0.0, 0
        for idx in split:
            b = pg_batch(old[idx], A[idx], mask[idx])
            s, _ = obj.loss(b, FakeScorer(lp[idx], mask[idx]))
            total += float(s)
            units += obj.units(b)
        assert total / units == pytest.approx(want, rel=1e-10)


def test_sequence_sum_needs_a_sequence_advantage():
    with pytest.raises(UserError, match="sequence_sum"):
        PGConfig(advantage="gae", ratio_level="sequence_sum")
    with pytest.raises(UserError, match="accepted: .*seq-mean-token-sum"):
        PGConfig(loss_agg="nope")


# ---- CISPO --------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps_low,eps_high", [(1.0, 4.0), (0.2, 0.28), (1.0, 0.1)])
def test_cispo_value_and_gradient_float64_and_trls_formula(eps_low, eps_high):
    """MiniMax-M1 eq. 4: J = 1/Σ|y| Σ_i Σ_t sg[clip(ρ_t, 1−ε_low, 1+ε_high)] A_t log π(y_t); the gradient of
    each token is −clip(ρ_t)·A_t/Σ|y| (never zero: the weight is clipped, not the gradient)."""
    lengths = [1, 4, 7, 2]
    lp, old, mask, g = ragged(5, lengths)
    old = (lp + torch.randn(lp.shape, generator=g, dtype=torch.float64) * 1.0) * mask  # big ratios, some clipped
    A = torch.randn(4, generator=g, dtype=torch.float64)[:, None] * mask
    obj = PolicyGradient(PGConfig(policy_loss="cispo", clip_eps_low=eps_low, clip_eps_high=eps_high, kl_coef=0.0,
                                  loss_agg="token-mean"))
    sc = FakeScorer(lp, mask)
    b = pg_batch(old, A, mask)
    s, m = obj.loss(b, sc)
    loss = s / obj.units(b)
    loss.backward()
    ntok = sum(lengths)
    want, grad = 0.0, torch.zeros_like(lp)
    for i, n in enumerate(lengths):
        for t in range(1, 1 + n):
            ρ = math.exp(float(lp[i, t]) - float(old[i, t]))
            w = min(max(ρ, 1 - eps_low), 1 + eps_high)
            want += -w * float(A[i, t]) * float(lp[i, t]) / ntok
            grad[i, t] = -w * float(A[i, t]) / ntok
    assert float(loss.detach()) == pytest.approx(want, rel=1e-12)
    torch.testing.assert_close(sc.lp.grad, grad, rtol=1e-12, atol=1e-15)
    if eps_low == 1.0:
        # TRL 1.16's GRPOTrainer(loss_type="cispo"): −clamp(coef_1, max=epsilon_high).detach()·A·log π, summed over
        # tokens / number of tokens, with TRL's epsilon_high = the ratio bound = 1 + prefopt's clip_eps_high.
        coef_1 = torch.exp(lp - old)
        trl = ((-torch.clamp(coef_1, max=1 + eps_high) * A * lp) * mask).sum() / mask.sum()
        assert float(loss.detach()) == pytest.approx(float(trl), rel=1e-12)


# ---- REINFORCE++ --------------------------------------------------------------------------------


def test_reinforce_pp_advantages_float64():
    """Hu 2025 eq. 4–7: r_t = −β·KL_t + [t = last]·r(x, y), KL_t = log π_old − log π_ref; A_t = Σ_{s≥t} r_s;
    A ← (A − mean)/std over every completion token of the batch."""
    torch.manual_seed(1)
    lengths = [1, 3, 5, 2, 4]
    B, T = len(lengths), 1 + max(lengths)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate(lengths):
        mask[i, 1 : 1 + n] = True
    # the pipeline's dtypes (float32); the loops below are the float64 reference
    old = (-torch.rand(B, T)) * mask
    ref = (-torch.rand(B, T)) * mask
    scores = torch.randn(B)
    obj = PolicyGradient(PGConfig(advantage="reinforce", whiten_advantages=True, kl_in="reward", kl_estimator="k1",
                                  kl_coef=0.03, samples_per_prompt=1))
    roll, _ = obj.prepare({"loss_mask": mask, "old_logps": old, "ref_logps": ref, "scores": scores, "group_size": 1})
    raw = {}
    for i, n in enumerate(lengths):
        r = [-0.03 * (float(old[i, t]) - float(ref[i, t])) for t in range(1, 1 + n)]
        r[-1] += float(scores[i])
        for k, t in enumerate(range(1, 1 + n)):
            raw[(i, t)] = sum(r[k:])
    vals = list(raw.values())
    μ = sum(vals) / len(vals)
    σ = math.sqrt(sum((v - μ) ** 2 for v in vals) / (len(vals) - 1))
    for (i, t), v in raw.items():
        assert float(roll["advantages"][i, t]) == pytest.approx((v - μ) / (σ + 1e-8), rel=1e-5, abs=1e-6)
    assert torch.all(roll["advantages"][~mask] == 0)


# ---- ReMax ----------------------------------------------------------------------------------------


def test_remax_advantage_is_reward_minus_greedy_reward():
    """Li et al. 2023, Algorithm 1: A_i = (r(x, y_i) − β Σ_t KL_t) − r(x, ȳ), ȳ the greedy completion."""
    from prefopt.objectives.policy_gradient import REMAX

    torch.manual_seed(2)
    N, T = 6, 5
    mask = torch.zeros(N, T, dtype=torch.bool)
    mask[:, 1:4] = True
    old, ref = -torch.rand(N, T) * mask, -torch.rand(N, T) * mask
    scores, greedy = torch.randn(N), torch.randn(N)
    obj = REMAX(REMAX.Config())
    assert obj.needs.greedy_baseline and not obj.needs.groups
    roll, _ = obj.prepare({"loss_mask": mask, "old_logps": old, "ref_logps": ref, "scores": scores,
                           "baseline_scores": greedy, "group_size": 1})
    for i in range(N):
        kl = sum(float(old[i, t]) - float(ref[i, t]) for t in range(1, 4))
        a = float(scores[i]) - 0.05 * kl - float(greedy[i])
        torch.testing.assert_close(roll["advantages"][i, 1:4], torch.full((3,), a), rtol=1e-5, atol=1e-6)


# ---- sampler correction: truncated / masked importance weights ------------------------------


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_rollout_is_weights_float64(mode):
    """w = π_old/μ per token (or its product per sequence), truncated to [C_min, C_max] or zeroed outside;
    the policy-gradient term of each token is multiplied by sg[w] (value and gradient)."""
    lengths = [1, 3, 5, 2]
    lp, _, mask, g = ragged(6, lengths)
    μ = (lp + torch.randn(lp.shape, generator=g, dtype=torch.float64) * 0.5) * mask  # the sampler's log-probs
    A = torch.randn(4, generator=g, dtype=torch.float64)[:, None] * mask
    cmin, cmax = 0.5, 1.5
    obj = PolicyGradient(PGConfig(rollout_is=mode, rollout_is_min=cmin, rollout_is_max=cmax, kl_coef=0.0,
                                  loss_agg="token-mean"))
    sc = FakeScorer(lp, mask)
    # one optimizer step per rollout: π_old = sg[π_θ], the ratio is 1 and ℓ_t = −A_t·ρ_t
    b = pg_batch(μ, A, mask, sampler_logps=μ, old_is_current=True)
    s, m = obj.loss(b, sc)
    s.backward()
    want, grad = 0.0, torch.zeros_like(lp)
    for i, n in enumerate(lengths):
        seq = math.exp(sum(float(lp[i, t]) - float(μ[i, t]) for t in range(1, 1 + n)))
        for t in range(1, 1 + n):
            w = seq if mode.startswith("sequence") else math.exp(float(lp[i, t]) - float(μ[i, t]))
            w = min(max(w, cmin), cmax) if mode.endswith("truncate") else (w if cmin <= w <= cmax else 0.0)
            want += -w * float(A[i, t])
            grad[i, t] = -w * float(A[i, t])
    assert float(s.detach()) == pytest.approx(want, rel=1e-12)
    torch.testing.assert_close(sc.lp.grad, grad, rtol=1e-12, atol=1e-15)
    if mode.endswith("mask"):
        assert 0 <= float(m["rollout_is/masked_frac"]) <= obj.units(b)


def test_rollout_is_off_and_equal_logprobs_change_nothing():
    lp, old, mask, g = ragged(7, [2, 3])
    A = torch.randn(2, generator=g, dtype=torch.float64)[:, None] * mask
    plain = PolicyGradient(PGConfig(kl_coef=0.0)).loss(pg_batch(old, A, mask), FakeScorer(lp, mask))[0]
    same = PolicyGradient(PGConfig(kl_coef=0.0, rollout_is="token_truncate")).loss(
        pg_batch(old, A, mask, sampler_logps=old), FakeScorer(lp, mask))[0]
    assert float(same) == pytest.approx(float(plain), rel=1e-12)
    with pytest.raises(UserError, match="rollout_is"):
        PGConfig(rollout_is="vllm")
    with pytest.raises(UserError, match="rollout_is_min"):
        PGConfig(rollout_is="token_mask", rollout_is_min=2.0, rollout_is_max=1.0)
    with pytest.raises(UserError, match="policy_loss"):
        PGConfig(policy_loss="nope")


# ---- on the testbed ----------------------------------------------------------------------------

SHORT = ["trainer.warmup_steps=0", "trainer.lr_schedule=constant", "trainer.log_every_steps=1", "eval.num_prompts=64",
         "eval.max_new_tokens=24", "trainer.save_model=false"]


@pytest.mark.slow
@pytest.mark.parametrize("algo,extra", [
    ("reinforce_pp", ["algo.prompts_per_step=32"]),
    ("cispo", ["algo.prompts_per_step=8", "algo.samples_per_prompt=4"]),
    ("remax", ["algo.prompts_per_step=64"]),
])
def test_preset_raises_gold_reward_on_reviews(run_cfg, outcome, algo, extra):
    s, _ = run_cfg(f"algo={algo}", "data=reviews", "trainer.max_steps=12", "trainer.lr=1e-3", *SHORT, *extra)
    ev = s["eval"]
    outcome("gold − gold_ref", ev["gold_reward"] - ev["gold_reward_ref"], ">", 0.1, ev)


@pytest.mark.slow
def test_sampler_correction_with_perturbed_sampler_logprobs(run_cfg, outcome, monkeypatch):
    """A sampler whose log-probs are off by noise (as a faster engine's would be): sequence masking drops the
    sequences whose weight leaves [C_min, C_max], the weights are logged, and GRPO still learns."""
    import json
    import os

    from prefopt.rollout import sampler as rollout

    real = rollout.HFSampler.sample
    g = torch.Generator().manual_seed(0)

    def noisy(self, *a, **k):
        s = real(self, *a, **k)
        if s.logprobs is not None:
            s.logprobs = [[v + float(torch.randn(1, generator=g)) * 0.3 for v in x] for x in s.logprobs]
        return s

    monkeypatch.setattr(rollout.HFSampler, "sample", noisy)
    s, out = run_cfg("algo=grpo", "data=reviews", "trainer.max_steps=12", "trainer.lr=1e-3", *SHORT,
                     "algo.prompts_per_step=8", "algo.samples_per_prompt=4", "algo.rollout_is=sequence_mask",
                     "algo.rollout_is_min=0.5", "algo.rollout_is_max=2.0")
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    masked = [r["rollout_is/masked_frac"] for r in rows]
    # noise of 0.3/token: a share of the sequences' weights leave [0.5, 2], never all of them
    assert 0.1 < sum(masked) / len(masked) < 0.9 and all(x < 1 for x in masked), masked
    assert all(r["rollout_is/weight"] != 1.0 for r in rows)
    ev = s["eval"]
    outcome("gold − gold_ref", ev["gold_reward"] - ev["gold_reward_ref"], ">", 0.1, ev)
