"""Leaderboard statistics against hand-computed values: bootstrap intervals and aggregation."""

import hashlib
import math

import pytest

from prefopt.leaderboard.aggregate import aggregate
from prefopt.leaderboard.stats import bootstrap_ci, bootstrap_means


def test_exact_bootstrap_by_hand():
    # [0, 0, 0, 4]: a resample's mean is k, the number of 4s drawn, k ~ Binomial(4, 1/4):
    # P(k=0) = 81/256, CDF(1) = 189/256 = .738, CDF(2) = 243/256 = .949, CDF(3) = 255/256 = .996.
    # 2.5th percentile: the smallest mean with CDF >= .025 -> 0; 97.5th: CDF >= .975 first at k = 3.
    e = bootstrap_ci([0, 0, 0, 4])
    assert (e.mean, e.lo, e.hi, e.n) == (1.0, 0.0, 3.0, 4)
    # Three seeds: 27 equally likely resamples; P(all the minimum) = 1/27 > 2.5%, so [min, max].
    e = bootstrap_ci([1.0, 2.0, 3.0])
    assert (e.mean, e.lo, e.hi) == (2.0, 1.0, 3.0)
    assert sorted(bootstrap_means([1.0, 2.0, 3.0]).tolist()).count(2.0) == 7  # sums of 6: 7 of 27


def test_bootstrap_edge_cases_and_monte_carlo_is_seeded():
    assert bootstrap_ci([]) is None
    assert bootstrap_ci([None, 2.5]).as_dict() == {"mean": 2.5, "lo": 2.5, "hi": 2.5, "n": 1}
    vals = [0.1, 0.4, 0.35, 0.8, 0.2, 0.55]  # 6^6 > 5^5 resamples: Monte Carlo
    a, b = bootstrap_ci(vals, seed=3), bootstrap_ci(vals, seed=3)
    assert a == b
    assert a.lo < a.mean < a.hi and min(vals) <= a.lo and a.hi <= max(vals)
    assert a.mean == pytest.approx(sum(vals) / 6)


def rec(method, seed, gold, kl, *, sweep=None, reward=None, category="offline", proxy=None, gold_ref=0.0,
        suite="t", task="reviews", **extra):
    ev = {"gold_reward": gold, "gold_reward_ref": gold_ref, "win_rate_vs_ref": 0.5 + gold / 10, "kl_to_ref": kl,
          "proxy_reward": proxy, "mean_length": 10.0 + gold, "mean_length_ref": 10.0, "repetition_rate": 0.1}
    ev.update(extra.pop("eval", {}))
    h = hashlib.sha256(f"{suite}{task}{method}{seed}{sorted((sweep or {}).items())}{reward}".encode()).hexdigest()[:16]
    return {"config_hash": h, "status": "ok", "algo": method, "seed": seed, "params": dict(sweep or {}),
            "wall_time_s": 10.0, "gen_time_s": 1.0, "train_time_s": 8.0, "peak_mem_mb": 500.0, "tokens_per_s": 1000.0,
            "testbed": {"label_temperature": 0.5}, "eval": ev,
            "leaderboard": {"suite": suite, "task": task, "seed": seed, "method": method, "algo": method,
                            "category": category, "reward": reward, "sweep": dict(sweep or {})}, **extra}


def test_aggregation_best_of_sweep_budgets_and_gap():
    records = [
        rec("dpo", 0, 1.0, 4.0, sweep={"beta": 0.1}), rec("dpo", 1, 2.0, 6.0, sweep={"beta": 0.1}),
        rec("dpo", 0, 0.5, 1.0, sweep={"beta": 0.5}), rec("dpo", 1, 0.7, 1.5, sweep={"beta": 0.5}),
        rec("ppo", 0, 0.3, 2.0, reward="proxy", category="online", proxy=3.0),
        rec("ppo", 1, 0.5, 2.0, reward="proxy", category="online", proxy=5.0),
        # best-of-n: π_SFT's proxy reward is 1.0 (seed 0) and 2.0 (seed 1)
        {**rec("best_of_n", 0, 0.2, 0.19, category="baseline", reward="proxy", eval={"proxy_reward_ref": 1.0}),
         "best_of_n": [{"n": 1, "kl_to_ref": 0.0, "gold_reward": 0.0, "gold_reward_oracle": 0.0, "proxy_reward": 1.0},
                       {"n": 2, "kl_to_ref": math.log(2) - 0.5, "gold_reward": 0.2, "gold_reward_oracle": 0.4,
                        "proxy_reward": 1.5}]},
        {**rec("best_of_n", 1, 0.1, 0.19, category="baseline", reward="proxy", eval={"proxy_reward_ref": 2.0}),
         "best_of_n": [{"n": 1, "kl_to_ref": 0.0, "gold_reward": 0.0, "gold_reward_oracle": 0.0, "proxy_reward": 2.0},
                       {"n": 2, "kl_to_ref": math.log(2) - 0.5, "gold_reward": 0.1, "gold_reward_oracle": 0.3,
                        "proxy_reward": 2.4}]},
    ]
    agg = aggregate(records, kl_budgets=[2.0, 10.0])
    rows = {(r.method, r.reward): r for r in agg["suites"]["t"]["reviews"]}
    dpo = rows[("dpo", None)]
    # best of the sweep by mean gold: β=0.1 (mean 1.5) over β=0.5 (mean 0.6)
    assert dpo.best.sweep == {"beta": 0.1}
    assert dpo.best.est["gold"].mean == pytest.approx(1.5)
    assert dpo.best.est["kl"].mean == pytest.approx(5.0)
    assert (dpo.best.est["gold"].lo, dpo.best.est["gold"].hi) == (1.0, 2.0)  # 2 seeds: 4 resamples, [min, max]
    # gold at KL ≤ 2: only β=0.5 (mean KL 1.25) qualifies; at KL ≤ 10 both, the best is β=0.1
    assert dpo.at_budget[2.0].mean == pytest.approx(0.6)
    assert dpo.at_budget[10.0].mean == pytest.approx(1.5)
    assert [p.sweep["beta"] for p in dpo.points] == [0.5, 0.1]  # sorted by KL for the plot
    # proxy−gold gap = T·(proxy − proxy_ref) − (gold − gold_ref) = 0.5·(3−1) − 0.3 = 0.7 and 0.5·(5−2) − 0.5 = 1.0
    ppo = rows[("ppo", "proxy")]
    assert ppo.best.est["gap"].mean == pytest.approx(0.85)
    assert ppo.best.est["dlen"].mean == pytest.approx(0.4)
    # best-of-n expands per n; the oracle is its own row
    bon, oracle = rows[("best-of-n", "proxy")], rows[("best-of-n", "gold")]
    assert bon.best.sweep == {"n": 2} and bon.best.est["gold"].mean == pytest.approx(0.15)
    assert oracle.best.est["gold"].mean == pytest.approx(0.35)
    assert bon.best.est["gap"].mean == pytest.approx((0.5 * 0.5 - 0.2 + 0.5 * 0.4 - 0.1) / 2)
    # the reference row, and the ordering of rows by gold
    ref = agg["reference"]["t"]["reviews"]
    assert ref.est["gold"].mean == 0.0 and ref.est["proxy"].mean == pytest.approx(1.5)
    assert [r.method for r in agg["suites"]["t"]["reviews"]][0] == "dpo"


def test_aggregation_missing_field_and_superseded_results():
    a = rec("ipo", 0, 1.0, 2.0, finished_at="2026-01-01T00:00:00")
    b = rec("ipo", 0, 3.0, 2.0, finished_at="2026-01-02T00:00:00")
    b["config_hash"] = "newer"
    c = rec("ipo", 1, 2.0, 2.0)
    del c["eval"]["kl_to_ref"]  # a missing field: left out of that column only
    agg = aggregate([a, b, c])
    (row,) = agg["suites"]["t"]["reviews"]
    assert agg["superseded"] == 1
    assert row.best.est["gold"].mean == pytest.approx(2.5)  # the newer seed-0 result (3.0) and seed 1 (2.0)
    assert row.best.est["kl"].n == 1 and row.best.est["kl"].mean == 2.0
    assert row.best.seeds == 2


def test_best_of_n_estimator_by_hand():
    import torch

    from prefopt.leaderboard.bon import best_of_n_kl, expected_of_pick, pick_weights

    # N = 3 samples scored (3, 1, 2) with values (30, 10, 20). The three 2-subsets pick, by score:
    # {a, b} -> a (30), {a, c} -> a (30), {b, c} -> c (20): expected value 80/3.
    score, value = torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([[30.0, 10.0, 20.0]])
    assert pick_weights(3, 2).tolist() == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert expected_of_pick(score, value, 2).item() == pytest.approx(80 / 3)
    assert expected_of_pick(score, value, 1).item() == pytest.approx(20.0)  # n = 1: the plain mean
    assert expected_of_pick(score, value, 3).item() == pytest.approx(30.0)  # n = N: the maximum
    assert best_of_n_kl(1) == 0.0 and best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
