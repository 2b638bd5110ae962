"""Leaderboard statistics against hand-computed values and by simulation at the board's n: t-intervals (coverage),
paired tests with Benjamini–Hochberg (family-wise error under the global null), τ-b with its permutation p, aggregation."""

import hashlib
import itertools
import math

import numpy as np
import pytest

from prefopt.leaderboard.aggregate import aggregate
from prefopt.leaderboard.stats import (adjust, compare_all, mean_ci, min_detectable_tau, paired_test, tau_b,
                                       tau_test)
from prefopt.leaderboard.suite import load_suite
from prefopt.leaderboard.store import BEST_OF_N


def test_t_interval_by_hand():
    # [1, 2, 3]: mean 2, s = 1, t_{0.975, 2} = 4.30265273 (tables, 9 digits): 2 ± 4.3027/√3
    e = mean_ci([1.0, 2.0, 3.0])
    half = 4.30265273 / math.sqrt(3)
    assert (e.mean, e.n, e.method) == (2.0, 3, "t") and e.label == "95% t, n=3"
    assert (e.lo, e.hi) == (pytest.approx(2 - half, abs=1e-8), pytest.approx(2 + half, abs=1e-8))
    assert mean_ci([]) is None
    assert mean_ci([None, 2.5, float("nan")]).as_dict() == {"mean": 2.5, "lo": 2.5, "hi": 2.5, "n": 1, "method": "t"}
    assert (mean_ci([0.4] * 5).lo, mean_ci([0.4] * 5).hi) == (pytest.approx(0.4), pytest.approx(0.4))


@pytest.mark.parametrize("name", ["normal", "gamma(2)"])
def test_t_interval_coverage_at_the_boards_n(name):
    # The rule as the board applies it, at the board's number of report seeds, on normal and on skewed
    # (gamma, shape 2: skewness 1.4) seed values; the min–max of 3 seeds (the old percentile bootstrap) covers ~75%.
    n = len(load_suite("standard").seeds)
    rng = np.random.default_rng(7)
    draw, mu = {"normal": (lambda: rng.normal(1.0, 2.0, n), 1.0), "gamma(2)": (lambda: rng.gamma(2.0, 1.0, n), 2.0)}[name]
    reps = 3000
    hits = sum(e.lo <= mu <= e.hi for e in (mean_ci(draw()) for _ in range(reps)))
    assert 0.90 <= hits / reps <= 0.98, hits / reps


def _t_sf(t: float, df: int) -> float:
    """P(T > t) for Student's t by numerical integration of its density (float64, independent of scipy)."""
    x = np.linspace(abs(t), abs(t) + 400.0, 2_000_001)
    dens = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2)) * (1 + x * x / df) ** (-(df + 1) / 2)
    return float(np.trapezoid(dens, x))


def test_paired_test_by_hand():
    a, b = [1.0, 3.0, 6.0, 2.0], [0.0, 1.0, 2.0, 1.5]
    d = np.array(a) - np.array(b)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    r = paired_test(a, b)
    assert r["n"] == 4 and r["diff"].mean == pytest.approx(d.mean())
    assert r["p"] == pytest.approx(2 * _t_sf(t, 3), rel=1e-4)
    assert paired_test([1.0, 2.0], [1.0, 2.0])["p"] == 1.0  # an exact tie
    assert paired_test([1.0], [0.0])["p"] == 1.0  # one seed: no test
    assert paired_test([None], [1.0]) is None


def test_benjamini_hochberg_by_hand():
    # sorted .01 .03 .04 .2 → m·p/rank .04 .06 .0533 .2 → running minimum from the top
    assert adjust([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])


def _any_separated(k, n, rng, correct=True):
    seed_effect = rng.normal(0.0, 1.0, n)  # seeds share π_SFT, pairs and RM: a common per-seed shift
    per = {f"m{i}": {s: seed_effect[s] + rng.normal(0.0, 0.5) for s in range(n)} for i in range(k)}
    res = compare_all(per)
    key = "p_adj" if correct else "p"
    return any(v[key] < 0.05 for v in res["pairs"].values())


def test_family_wise_error_under_the_global_null():
    # No method differs; the board's rule (paired t-tests, BH over every pair) separates some pair at most 5% of
    # the time: a one-sided binomial test cannot reject "≤ 5%". The same test rejects the uncorrected rule.
    from scipy.stats import binomtest

    rng = np.random.default_rng(11)
    n, k, reps = len(load_suite("standard").seeds), 6, 1500
    hits = sum(_any_separated(k, n, rng) for _ in range(reps))
    assert binomtest(hits, reps, 0.05, alternative="greater").pvalue > 0.01, hits / reps
    raw = sum(_any_separated(k, n, rng, correct=False) for _ in range(300))
    assert binomtest(raw, 300, 0.05, alternative="greater").pvalue < 0.01, raw / 300


def test_compare_all_best_and_indistinguishable():
    wobble = [0.3, -0.2, 0.1, -0.25, 0.2]  # b − a: no consistent sign
    per = {"a": {s: 2.0 + 0.1 * s for s in range(5)}, "b": {s: 2.0 + 0.1 * s - wobble[s] for s in range(5)},
           "c": {s: 0.0 + 0.1 * s + 0.01 * s * s for s in range(5)}}
    res = compare_all(per)
    assert res["best"] == ["a"] and res["indistinguishable"] == ["a", "b"]
    assert res["pairs"][("a", "c")]["separated"] and res["pairs"][("c", "a")]["diff"].mean < 0
    assert res["tested"] == 3


def test_equal_means_are_all_best_and_a_row_close_to_either_is_indistinguishable():
    """Two rows tied on mean are both "best" (naming one would depend on the order rows come in), and a
    row separated from one of them but not from the other is indistinguishable from a best row."""
    a = [1.0, 2.0, 3.0, 4.0, 5.0]
    b = [3.0, 1.0, 5.0, 2.0, 4.0]  # the same mean as a, seed by seed unrelated
    c = [x - 0.5 + 0.01 * i for i, x in enumerate(a)]  # a minus a near-constant: separated from a only
    for order in (("a", "b", "c"), ("c", "b", "a"), ("b", "c", "a")):
        vals = {"a": a, "b": b, "c": c}
        res = compare_all({k: dict(enumerate(vals[k])) for k in order})
        assert sorted(res["best"]) == ["a", "b"]
        assert res["pairs"][("a", "c")]["separated"] and not res["pairs"][("b", "c")]["separated"]
        assert sorted(res["indistinguishable"]) == ["a", "b", "c"]


def test_tau_b_permutation_p_and_smallest_tau_by_enumeration():
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 3.0, 5.0, 4.0]
    r = tau_test(x, y)
    taus = [tau_b(x, list(p)) for p in itertools.permutations(y)]
    assert r["tau"] == pytest.approx(0.6) and r["n_methods"] == 5
    assert r["p"] == pytest.approx(sum(abs(t) >= 0.6 - 1e-12 for t in taus) / len(taus))
    # six untied items: |τ| ≥ 13/15 has exact two-sided probability 2·(1 + 5)/720 < 0.05, |τ| ≥ 11/15 does not
    null6 = [tau_b(range(6), list(p)) for p in itertools.permutations(range(6))]
    assert sum(abs(t) >= 13 / 15 - 1e-12 for t in null6) / 720 < 0.05 <= sum(abs(t) >= 11 / 15 - 1e-12 for t in null6) / 720
    assert min_detectable_tau(6) == pytest.approx(13 / 15)
    assert min_detectable_tau(4) is None  # 4 items: even τ = 1 has p = 2/24
    # 45/81 twice, summed two ways, is one value: a tie, not an order
    assert tau_b([45 / 81, sum([1 / 81] * 45), 0.2], [0.1, 0.2, 0.3]) == pytest.approx(tau_b([1, 1, 0], [0.1, 0.2, 0.3]))


def rec(method, seed, gold, kl, *, point=None, reward=None, category="offline", proxy=None, gold_ref=0.0,
        suite="t", task="reviews", role="report", picks=("best",), val=None, code="c1", cpu="AVX2", **extra):
    """A result record as a leaderboard job writes it: test numbers in ``eval``, validation in ``eval_periodic``."""
    ev = {"gold_reward": gold, "gold_reward_ref": gold_ref, "win_rate_vs_ref": 0.5 + gold / 10, "kl_to_ref": kl,
          "proxy_reward": proxy, "mean_length": 10.0 + gold, "mean_length_ref": 10.0, "repetition_rate": 0.1}
    ev.update(extra.pop("eval", {}))
    vg, vk = val if val is not None else (gold, kl)
    h = hashlib.sha256(f"{suite}{task}{method}{seed}{sorted((point or {}).items())}{reward}{role}{code}{cpu}".encode()).hexdigest()[:16]
    return {"config_hash": h, "result_id": h, "result_version": 2, "status": "ok", "algo": method, "seed": seed, "params": dict(point or {}),
            "wall_time_s": 10.0, "gen_time_s": 1.0, "train_time_s": 8.0, "peak_mem_mb": 500.0, "tokens_per_s": 1000.0,
            "testbed": {"label_temperature": 0.5}, "eval": ev,
            "eval_periodic": {**ev, "gold_reward": vg, "kl_to_ref": vk},
            "cost": {"examples": 100, "policy_tokens": 5000, "samples_generated": 0},
            "code_version": code, "cpu_capability": cpu,
            "trajectory": [{"step": 0, "gold_reward": gold_ref, "kl_to_ref": 0.0},
                           {"step": 10, "gold_reward": vg / 2, "kl_to_ref": vk / 4}, {"step": 20, "gold_reward": vg, "kl_to_ref": vk}],
            "leaderboard": {"suite": suite, "task": task, "seed": seed, "method": method, "algo": method, "role": role,
                            "picks": list(picks), "category": category, "reward": reward, "point": dict(point or {})},
            **extra}


def bon_rec(seed, *, suite="t", code="c1", cpu="AVX2", proxy_ref=1.0):
    pts = lambda off: [{"n": n, "kl_to_ref": math.log(n) - (n - 1) / n, "gold_reward": off + 0.1 * n,  # noqa: E731
                        "gold_reward_oracle": off + 0.2 * n, "proxy_reward": 1.0 + 0.2 * n, "repetition_rate": 0.1,
                        "win_rate_vs_ref": 0.5, "win_rate_oracle": 0.5 + 0.05 * n + (0.05 if n == 1 else 0.0),
                        "mean_length": 10.0} for n in (1, 2, 4)]
    r = rec("best_of_n", seed, 0.4, 0.64, reward="proxy", category="baseline", suite=suite, code=code, cpu=cpu,
            eval={"proxy_reward_ref": proxy_ref, "best_n": 4})
    # validation prefers n=2 (its gold falls at n=4): the row's headline is n=2, whatever test says
    val = [{**p, "gold_reward": 0.5 - abs(p["n"] - 2) * 0.1} for p in pts(0.0)]
    r.update(best_of_n=pts(0.0), best_of_n_by_split={"val": val, "test": pts(0.0)},
             reference_by_split={"test": {"gold_reward_ref": 0.0, "mean_length_ref": 10.0}, "val": {"proxy_length_corr": 0.3}})
    return r


def test_aggregation_rows_are_report_picks_with_test_numbers():
    records = [
        # the grid on tuning seed 9: validation prefers β=0.1
        rec("dpo", 9, 5.0, 4.0, point={"lr": 1e-3, "beta": 0.1}, role="tuning", val=(1.0, 4.0)),
        rec("dpo", 9, 9.0, 1.0, point={"lr": 1e-3, "beta": 0.5}, role="tuning", val=(0.5, 1.0)),
        # the report runs of the picks: β=0.1 is "best", β=0.5 "at_budget"
        rec("dpo", 0, 1.0, 4.0, point={"lr": 1e-3, "beta": 0.1}), rec("dpo", 1, 2.0, 6.0, point={"lr": 1e-3, "beta": 0.1}),
        rec("dpo", 0, 0.5, 1.0, point={"lr": 1e-3, "beta": 0.5}, picks=("at_budget",)),
        rec("dpo", 1, 0.7, 1.5, point={"lr": 1e-3, "beta": 0.5}, picks=("at_budget",)),
        rec("ppo", 0, 0.3, 2.0, reward="proxy", category="online", proxy=3.0, eval={"proxy_reward_ref": 1.0}),
        rec("ppo", 1, 0.5, 2.0, reward="proxy", category="online", proxy=5.0, eval={"proxy_reward_ref": 2.0}),
        bon_rec(0), bon_rec(1),
    ]
    agg = agg_t(records, pick_kl_budget=2.0)  # the suite's pick budget: β=0.5 (val KL 1.0) is the at-budget pick
    rows = {(r.method, r.reward): r for r in agg["rows"]}
    dpo = rows[("dpo", None)]
    assert dpo.chosen == {"best": {"lr": 1e-3, "beta": 0.1}, "at_budget": {"lr": 1e-3, "beta": 0.5}}
    assert dpo.best.est["gold"].mean == pytest.approx(1.5) and dpo.best.est["kl"].mean == pytest.approx(5.0)
    # 2 seeds: 1.5 ± t_{0.975, 1} · s/√2 = 1.5 ± 12.7062 · 0.5
    assert (dpo.best.est["gold"].lo, dpo.best.est["gold"].hi) == (pytest.approx(1.5 - 6.3531, abs=1e-3),
                                                                  pytest.approx(1.5 + 6.3531, abs=1e-3))
    assert dpo.at_budget.est["gold"].mean == pytest.approx(0.6)
    # the grid shown is the tuning runs' validation numbers (not their test numbers 5.0 / 9.0)
    assert sorted((g["point"]["beta"], g["val_gold"]) for g in dpo.grid) == [(0.1, 1.0), (0.5, 0.5)]
    # proxy−gold gap = T·(proxy − proxy_ref) − (gold − gold_ref) = 0.5·(3−1) − 0.3 = 0.7 and 0.5·(5−2) − 0.5 = 1.0
    ppo = rows[("ppo", "proxy")]
    assert ppo.best.est["gap"].mean == pytest.approx(0.85) and ppo.best.est["dlen"].mean == pytest.approx(0.4)
    # best-of-n: a Point per n with test numbers; the headline n is chosen on validation (n=2)
    bon, oracle = rows[(BEST_OF_N, "proxy")], rows[(BEST_OF_N, "gold")]
    assert bon.chosen["best"] == {"n": 2}
    chosen = [p for p in bon.bon_points if p.point["chosen"]]
    assert [p.point["n"] for p in chosen] == [2] and chosen[0].est["gold"].mean == pytest.approx(0.2)
    assert [p.est["gold"].mean for p in oracle.bon_points] == pytest.approx([0.2, 0.4, 0.8])
    # the oracle row carries its own pick's win rate, not the proxy pick's
    assert [p.est["win"].mean for p in oracle.bon_points] == pytest.approx([0.6, 0.6, 0.7])
    assert [p.est["win"].mean for p in bon.bon_points] == pytest.approx([0.5, 0.5, 0.5])
    # dpo has the highest mean; two seeds cannot separate it from the others; the oracle is not compared
    assert dpo.vs_best == "best" and oracle.vs_best is None
    assert {r.vs_best for r in agg["rows"] if r is not dpo and r is not oracle} == {"indistinguishable"}
    assert agg["reference"].est["gold"].mean == 0.0


def agg_t(records, **kw):
    out = aggregate(records, **kw)
    return out["tasks"]["reviews"]


def test_one_code_version_and_machine_per_board():
    old = [rec("ipo", s, 5.0, 1.0, code="c0") for s in (0, 1, 2)]
    new = [rec("ipo", s, 1.0, 1.0, code="c1") for s in (0, 1, 2, 3)]
    other_cpu = [rec("ipo", s, 7.0, 1.0, code="c1", cpu="AVX512") for s in (0,)]
    agg = aggregate(old + new + other_cpu)
    assert agg["version"] == ("c1", "AVX2")
    assert agg["other_versions"] == {("c0", "AVX2"): 3, ("c1", "AVX512"): 1}
    (row,) = agg["tasks"]["reviews"]["rows"]
    assert row.best.est["gold"].mean == 1.0 and row.best.seeds == 4  # nothing of c0 or AVX512 mixed in


def test_a_run_serving_two_roles_counts_in_both():
    r = rec("rloo", 0, 0.5, 1.0, reward="proxy", category="online", point={"lr": 1e-3, "kl_coef": 0.01})
    r["leaderboard"]["also"] = [{"role": "ablation", "pair_prompts": 2048}]
    agg = agg_t([r])
    (row,) = agg["rows"]
    assert row.best.seeds == 1 and list(agg["ablation"]) == [2048]


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


def test_a_stale_pick_never_mixes_into_a_row():
    # lr 3e-3 joins the grid after β=0.1 at lr 1e-3 has been picked and reported: the rule picks
    # lr 3e-3, so the earlier pick's report runs stay on file but are not the row.
    grid = [rec("dpo", 9, 0.0, 1.0, point={"lr": 1e-3, "beta": 0.1}, role="tuning", val=(1.0, 1.0)),
            rec("dpo", 9, 0.0, 1.0, point={"lr": 3e-3, "beta": 0.1}, role="tuning", val=(2.0, 1.0))]
    old = [rec("dpo", s, 10.0, 1.0, point={"lr": 1e-3, "beta": 0.1}) for s in (0, 1)]
    new = [rec("dpo", s, 3.0 + s, 1.0, point={"lr": 3e-3, "beta": 0.1}) for s in (0, 1)]
    dpo = agg_t(grid + old + new)["rows"][0]
    assert dpo.chosen["best"] == {"lr": 3e-3, "beta": 0.1}
    assert dpo.best.est["gold"].mean == pytest.approx(3.5)  # not 10.0, not a mix of both
    # before the new pick's report runs exist the row is not shown at all, rather than the stale pick
    assert agg_t(grid + old)["rows"] == []
