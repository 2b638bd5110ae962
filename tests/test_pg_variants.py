"""Policy-gradient variants against float64 references written from their papers and against TRL's
formulas on identical inputs: RLOO (Ahmadian et al. 2024) as TRL's RLOOTrainer computes it."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from prefopt.errors import UserError
from prefopt.logprobs import TokenStats
from prefopt.objectives.pg import PGConfig, RLOO, PolicyGradient


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
