"""GDPO (Liu et al. 2026, arXiv:2601.05242): each reward term normalised in its group, the weighted sum
normalised over the rollout; ``reward=list`` keeps the terms apart. Against a float64 loop reference,
TRL 1.16's ``multi_objective_aggregation="normalize_then_sum"`` formula, and a short testbed run."""

import math

import pytest
import torch

from prefopt.core.errors import UserError
from prefopt.objectives.pg import advantages as adv
from prefopt.objectives.policy_gradient import GRPO, PGConfig


def _std(xs):
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def reference(terms, weights, K, eps):
    N, R = len(terms), len(weights)
    z = [[0.0] * R for _ in range(N)]
    for g in range(N // K):
        rows = range(g * K, (g + 1) * K)
        for k in range(R):
            col = [terms[i][k] for i in rows]
            m, sd = sum(col) / K, _std(col)
            for i in rows:
                z[i][k] = (terms[i][k] - m) / (sd + eps)
    s = [sum(w * zk for w, zk in zip(weights, zi)) for zi in z]
    m, sd = sum(s) / N, _std(s)
    return [(x - m) / (sd + eps) for x in s]


def test_gdpo_advantages_float64_with_an_all_equal_term():
    g = torch.Generator().manual_seed(0)
    K, G, R = 4, 3, 3
    terms = torch.randn(G * K, R, generator=g, dtype=torch.float64)
    terms[:, 1] = (terms[:, 1] > 0).double()  # a binary reward
    terms[4:8, 2] = 0.7  # group 1's third reward is the same for every sample: it adds nothing there
    w = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    got = adv.gdpo(terms, w, K)
    want = reference(terms.tolist(), w.tolist(), K, 1e-6)
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_gdpo_matches_trls_normalize_then_sum():
    """TRL 1.16 GRPOTrainer._generate_and_score_completions, multi_objective_aggregation="normalize_then_sum"
    (transcribed: the formula sits inside the generation method): per group and reward function
    (x − nanmean)/(nanstd + 1e-4), weighted nansum, then (x − nanmean)/(nanstd + 1e-4) over the batch.
    To 1e-7: trl.trainer.utils.nanstd's Bessel factor count/(count − 1) divides integer counts, a float32
    number (measured difference 3.6e-8); prefopt's is exact."""
    from trl.trainer.utils import nanstd

    g = torch.Generator().manual_seed(1)
    K, G, R = 4, 5, 2
    rewards_per_func = torch.randn(G * K, R, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0],
                                                                                              dtype=torch.float64)
    reward_weights = torch.tensor([1.0, 0.3], dtype=torch.float64)
    grouped = rewards_per_func.view(-1, K, R)
    mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
    std_k = nanstd(grouped, dim=1, keepdim=True)
    reward_k = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, R)
    rewards = (reward_k * reward_weights.unsqueeze(0)).nansum(dim=1)
    trl = (rewards - torch.nanmean(rewards)) / (nanstd(rewards).expand_as(rewards) + 1e-4)
    got = adv.gdpo(rewards_per_func, reward_weights, K, eps=1e-4)
    assert float((got - trl).abs().max()) < 1e-7


def test_prepare_reads_the_reward_terms():
    K = 4
    mask = torch.zeros(8, 5, dtype=torch.bool)
    mask[:, 1:4] = True
    terms = torch.randn(8, 2, generator=torch.Generator().manual_seed(2))
    w = torch.tensor([1.0, 2.0])
    obj = GRPO(GRPO.Config(advantage="gdpo", kl_coef=0.0, samples_per_prompt=K))
    assert obj.needs.reward_terms and obj.needs.groups
    roll, _ = obj.prepare({"loss_mask": mask, "old_logps": torch.zeros(8, 5), "scores": terms @ w,
                           "group_size": K, "reward_terms": terms, "reward_weights": w})
    torch.testing.assert_close(roll["advantages"], adv.gdpo(terms, w, K)[:, None] * mask)
    with pytest.raises(UserError, match="kl_in=loss"):
        PGConfig(advantage="gdpo", kl_in="reward", kl_coef=0.1)


def test_reward_list_keeps_the_terms_apart_and_refuses_bad_lists():
    from prefopt.rollout.rewards import build_reward, reward_config

    cfg = reward_config({"kind": "list", "rewards": ["reviews_gold", {"kind": "function",
                                                                      "function": "prefopt.testbed.rewards:reviews_gold"}],
                         "weights": [1.0, 0.5]})
    r = build_reward(cfg)
    assert r.weights == [1.0, 0.5]
    prompts, comps = ["the movie was", "the film"], ["great and fun .", "bad bad bad"]
    total, parts = r(prompts, comps, with_terms=True)
    assert r.last_term_values.shape == (2, 2)
    torch.testing.assert_close(total, r.last_term_values @ torch.tensor([1.0, 0.5]))
    assert set(parts) == {"reward/reviews_gold", "reward/reviews_gold_2"}
    with pytest.raises(UserError, match="one weight per reward"):
        build_reward(reward_config({"kind": "list", "rewards": ["reviews_gold"], "weights": [1.0, 2.0]}))
    with pytest.raises(UserError, match="accepted: .*arith_exact.*reviews_gold"):
        build_reward(reward_config({"kind": "list", "rewards": ["nope"]}))
    with pytest.raises(UserError, match="reward.rewards"):
        build_reward(reward_config({"kind": "list"}))


@pytest.mark.slow
def test_gdpo_trains_with_a_reward_list(run_cfg):
    import json
    import os

    s, out = run_cfg("algo=grpo", "data=reviews", "algo.advantage=gdpo", "reward=list",
                     "reward.rewards=[reviews_gold,{kind: function, function: 'prefopt.testbed.rewards:reviews_gold'}]",
                     "reward.weights=[1.0,0.5]", "trainer.max_steps=3", "algo.prompts_per_step=4",
                     "algo.samples_per_prompt=4", "trainer.log_every_steps=1", "trainer.save_model=false")
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert len(rows) == 3 and all("rollout/reward/reviews_gold_2" in r for r in rows)
    assert all(math.isfinite(r["loss"]) for r in rows)
