"""The robust selection rule (prefopt.leaderboard.select), the grid-edge extension in the plan, the
rank-ordered rows, and the ranking comparisons (Kendall τ, transfer) against independent references."""

import dataclasses
import itertools
import math
import random

import numpy as np
import pytest
from test_leaderboard_stats import rec

from prefopt.leaderboard import select, store, transfer
from prefopt.leaderboard.aggregate import aggregate
from prefopt.leaderboard.plan import plan
from prefopt.leaderboard.stats import tau_b, tau_paired
from prefopt.leaderboard.suite import load_suite


def tuning(val_gold, val_kl=1.0, traj=None):
    r = {"eval_periodic": {"gold_reward": val_gold, "kl_to_ref": val_kl, "gold_reward_ref": 0.0}}
    if traj is not None:
        r["trajectory"] = [{"step": s, "gold_reward": g, "kl_to_ref": k} for s, g, k in traj]
    return r


def test_worst_tuning_seed_beats_a_lucky_mean():
    # lr 3e-3: mean 1.5 from seeds 2.8 / 0.2; lr 1e-3: mean 1.0 from 1.0 / 1.0. The mean rule takes the
    # lucky point, the worst-seed rule the steady one (with two seeds min = mean − population std).
    points = [{"trainer.lr": 1e-3}, {"trainer.lr": 3e-3}]
    scored = select.grid_scores(points, [[tuning(1.0), tuning(1.0)], [tuning(2.8), tuning(0.2)]])
    assert select.choose(scored, None)["best"]["point"] == {"trainer.lr": 1e-3}
    assert select.choose(scored, None, rule="mean")["best"]["point"] == {"trainer.lr": 3e-3}
    a, b = 2.8, 0.2
    assert scored[1]["val_gold_worst"] == pytest.approx((a + b) / 2 - np.std([a, b]))
    with pytest.raises(ValueError, match="worst_seed, mean"):
        select.choose(scored, None, rule="median")


@pytest.mark.parametrize("traj,why", [
    ([(0, -0.3, 0.0), (10, -1.5, 5.0), (20, 0.9, 6.0)], "gold -1.5 < π_SFT's -0.3 − 1 at step 10"),  # dipped, recovered
    ([(0, -0.3, 0.0), (10, 0.5, 31.0), (20, 0.9, 6.0)], "KL 31 > 30 at step 10"),
    ([(0, -0.3, 0.0), (10, float("nan"), 1.0)], "gold nan at step 10"),
    ([(0, -0.3, 0.0), (10, -1.29, 29.9)], None),  # within both bounds
])
def test_divergence_anywhere_on_the_validation_curve(traj, why):
    r = tuning(traj[-1][1] if math.isfinite(traj[-1][1]) else 0.0, traj[-1][2], traj)
    assert select.divergence_of(r, 1.0, 30.0) == why
    assert select.divergence_of(r, None, None) is None or why and "nan" in why


def test_exact_ties_go_to_the_more_conservative_point():
    # Three points tie up to float summation noise (45/81 summed two ways); the tie goes to the smaller
    # learning rate, then the larger β, whatever the grid order; a clear winner is not a tie.
    a, b = 45 / 81, sum([1 / 81] * 45)
    assert a != b and abs(a - b) < select.TIE_TOLERANCE
    points = [{"lr": 3e-3, "beta": 0.05}, {"lr": 1e-3, "beta": 0.05}, {"lr": 1e-3, "beta": 0.2}, {"lr": 1e-4, "beta": 0.2}]
    scored = select.grid_scores(points, [[tuning(b)], [tuning(a)], [tuning(b)], [tuning(0.3)]])
    best = select.choose(scored, None)["best"]
    assert best["point"] == {"lr": 1e-3, "beta": 0.2} and best["tie_broken"]
    assert {"lr": 3e-3, "beta": 0.05} in best["tied_with"]
    # rejection sampling's coefficient is not an anchor: fewer samples per prompt is the conservative side
    pts = [{"lr": 1e-3, "samples_per_prompt": 8}, {"lr": 1e-3, "samples_per_prompt": 4}]
    best = select.choose(select.grid_scores(pts, [[tuning(0.5)], [tuning(0.5)]]), None)["best"]
    assert best["point"]["samples_per_prompt"] == 4
    best = select.choose(select.grid_scores(points, [[tuning(0.9)], [tuning(a)], [tuning(b)], [tuning(0.3)]]), None)["best"]
    assert best["point"] == {"lr": 3e-3, "beta": 0.05} and not best["tie_broken"]


def test_accuracy_floor_catches_a_collapse_the_drop_cannot():
    # π_SFT's accuracy 0.15: "0.15 − 0.2" is below zero, so only the floor (½ · 0.15) sees the collapse to 0.
    r = tuning(0.0, traj=[(0, 0.15, 0.0), (10, 0.0, 2.0)])
    assert select.divergence_of(r, 0.2, 30.0) is None
    assert "0.5 × π_SFT's 0.15" in select.divergence_of(r, 0.2, 30.0, 0.5)
    assert select.divergence_of(tuning(0.1, traj=[(0, 0.15, 0.0), (10, 0.1, 1.0)]), 0.2, 30.0, 0.5) is None
    assert load_suite("standard").divergence.rule("arith") == (0.2, 30.0, 0.5)
    assert load_suite("standard").divergence.rule("reviews") == (1.0, 30.0, None)


def test_a_diverged_point_is_not_eligible_and_budget_uses_every_seed():
    points = [{"trainer.lr": lr} for lr in (1e-4, 3e-4, 1e-3)]
    good = lambda g, k: tuning(g, k, [(0, 0.0, 0.0), (10, g, k)])  # noqa: E731
    crash = tuning(2.0, 1.0, [(0, 0.0, 0.0), (10, -5.0, 60.0), (20, 2.0, 1.0)])
    recs = [[good(0.4, 0.5), good(0.5, 0.5)], [good(0.9, 1.0), good(0.8, 3.0)], [good(2.0, 1.0), crash]]
    scored = select.grid_scores(points, recs, gold_drop=1.0, max_kl=30.0)
    assert [s["diverged"] for s in scored] == [0, 0, 1] and "step 10" in scored[2]["why"]
    c = select.choose(scored, kl_budget=2.0)
    assert c["best"]["point"] == {"trainer.lr": 3e-4}
    assert c["at_budget"]["point"] == {"trainer.lr": 1e-4}  # lr 3e-4 passed the budget on one tuning seed (KL 3.0)
    # every point diverged: nothing is eligible, and the grid is extended downward
    allbad = select.grid_scores(points[:2], [[crash], [crash]], gold_drop=1.0, max_kl=30.0)
    assert select.choose(allbad, None)["best"] is None
    assert select.edge_of(select.choose(allbad, None), allbad, [1e-4, 3e-4]) == "down"


def test_extension_steps_on_the_1_3_series():
    assert select.extend_lr([1e-4, 3e-4, 1e-3, 3e-3], "up") == pytest.approx(1e-2)
    assert select.extend_lr([3e-5, 1e-4, 3e-4, 1e-3], "down") == pytest.approx(1e-5)
    assert select.extend_lr([1e-4, 1e-3], "up") == pytest.approx(3e-3)
    assert select.extend_lr([1e-3, 3e-3], "down") == pytest.approx(3e-4)
    grid = [{"point": {"trainer.lr": lr}, "seeds": 2} for lr in (1e-4, 1e-3)]
    assert select.edge_of({"best": grid[1]}, grid, [1e-4, 1e-3]) == "up"
    assert select.edge_of({"best": grid[0]}, grid, [1e-4, 1e-3]) == "down"
    mid = [{"point": {"trainer.lr": lr}, "seeds": 2} for lr in (1e-4, 3e-4, 1e-3)]
    assert select.edge_of({"best": mid[1]}, mid, [1e-4, 3e-4, 1e-3]) is None


def _write(results, job, val_gold, seed_offset=0.0):
    store.write_result(results, {"result_id": job.hash, "config_hash": job.hash, "status": "ok", "leaderboard": job.meta,
                                 "eval": {"gold_reward": 0.0, "kl_to_ref": 1.0},
                                 "eval_periodic": {"gold_reward": val_gold + seed_offset, "kl_to_ref": 1.0},
                                 "trajectory": [{"step": 0, "gold_reward": 0.0, "kl_to_ref": 0.0}],
                                 "code_version": job.meta["code_version"], "cpu_capability": job.meta["cpu_capability"]})


def test_a_pick_on_the_grid_edge_extends_the_grid_once(tmp_path):
    suite = dataclasses.replace(load_suite("quick"), ablation=None, best_of_n=None, methods=["dpo"], tasks=["arith"],
                                tune_coefficients=False, extend_grid_edges=True, lr_grid={"default": [1e-4, 3e-4, 1e-3]},
                                tuning_seeds=[100, 101], seeds=[0])
    results, work = str(tmp_path / "results"), str(tmp_path / "work")
    jobs, _ = plan(suite, work, results)
    grid = [j for j in jobs if j.stage == 2]
    assert sorted({j.meta["point"]["lr"] for j in grid}) == [1e-4, 3e-4, 1e-3] and len(grid) == 6
    for j in grid:  # validation gold rises with the learning rate: the pick is the top, an edge
        _write(results, j, {1e-4: 0.1, 3e-4: 0.2, 1e-3: 0.3}[j.meta["point"]["lr"]])
    jobs, notes = plan(suite, work, results)
    ext = [j for j in jobs if j.stage == 2 and j.meta.get("extension")]
    assert sorted((j.meta["point"]["lr"], j.meta["seed"]) for j in ext) == [(3e-3, 100), (3e-3, 101)]
    assert all(j.meta["role"] == "tuning" for j in ext)
    assert not [j for j in jobs if j.stage == 3] and any("grid extended up to lr 0.003" in n for n in notes)
    # the extension is best too: it is picked, and not extended again
    for j in ext:
        _write(results, j, 0.5)
    jobs, _ = plan(suite, work, results)
    assert {j.meta["point"]["lr"] for j in jobs if j.stage == 2} == {1e-4, 3e-4, 1e-3, 3e-3}
    assert [j.meta["point"] for j in jobs if j.stage == 3] == [{"lr": 3e-3}]
    # the extension is worse: the pick goes back inside the grid
    for j in ext:
        _write(results, j, -1.0)
    jobs, _ = plan(suite, work, results)
    assert [j.meta["point"] for j in jobs if j.stage == 3] == [{"lr": 1e-3}]


def _tau_reference(x, y):
    """Kendall's τ-b by counting pairs one by one (float64)."""
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        a, b = x[i] - x[j], y[i] - y[j]
        if a == 0 and b == 0:
            tx, ty = tx + 1, ty + 1
        elif a == 0:
            tx += 1
        elif b == 0:
            ty += 1
        elif (a > 0) == (b > 0):
            c += 1
        else:
            d += 1
    n0 = len(x) * (len(x) - 1) / 2
    den = math.sqrt((n0 - tx) * (n0 - ty))
    return (c - d) / den if den else None


def test_kendall_tau_against_pair_counting():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 9)
        x = [rng.choice([0.0, 1.0, 2.0, rng.random()]) for _ in range(n)]
        y = [rng.choice([0.0, 1.0, rng.random()]) for _ in range(n)]
        ref = _tau_reference(x, y)
        got = tau_b(x, y)
        assert (got is None and ref is None) or got == pytest.approx(ref, abs=1e-12)
    assert tau_b([1, 2, 3], [3, 2, 1]) == -1.0 and tau_b([1, 1], [1, 2]) is None


def test_tau_paired_same_and_reversed_boards():
    a = {m: {s: 10.0 * i + 0.1 * s for s in range(5)} for i, m in enumerate("abcdef")}
    same = tau_paired(a, {m: {s: v + 1 for s, v in d.items() if s < 3} for m, d in a.items()})
    assert same["tau"] == pytest.approx(1.0) and same["lo"] == pytest.approx(1.0) and same["n_methods"] == 6
    assert same["n_seeds"] == 3
    assert same["p"] == pytest.approx(2 / 720)  # exact: 2 of the 720 pairings reach |τ| = 1
    rev = tau_paired(a, {m: {s: -v for s, v in d.items()} for m, d in a.items()})
    assert rev["tau"] == pytest.approx(-1.0) and rev["hi"] == pytest.approx(-1.0)
    assert "reversed beyond chance" in transfer.verdict(rev) and "agree beyond chance" in transfer.verdict(same)
    # three methods: no τ can reach p < 0.05, and the verdict says so
    few = tau_paired({"a": {0: 0.0, 1: 1.2}, "b": {0: 1.0, 1: 0.0}, "c": {0: 2.0, 1: 2.0}},
                     {"a": {0: 0.0, 1: 0.1}, "b": {0: 1.0, 1: 1.1}, "c": {0: 2.0, 1: 2.1}})
    assert few["tau_min"] is None and "cannot tell" in transfer.verdict(few) and "no τ over 3 methods" in transfer.verdict(few)
    assert tau_paired({"a": {0: 1.0}}, {"a": {0: 1.0}}) is None


def _board(task, golds, seeds):
    recs = []
    for m, g in golds.items():
        for s in seeds:
            recs.append(rec(m, s, g + 0.01 * s, 1.0, task=task, point={"lr": 1e-3}))
            recs.append(rec(m, 100 + s, g, 1.0, task=task, point={"lr": 1e-3}, role="tuning"))
    return aggregate(recs)["tasks"][task]


def test_transfer_compares_common_methods():
    toy = _board("arith", {"dpo": 0.5, "ipo": 0.4, "orpo": 0.3, "kto": 0.1}, range(5))
    real = _board("smol_arith", {"dpo": 0.2, "ipo": 0.3, "orpo": 0.1, "simpo": 0.9}, range(3))
    res = transfer.compare(toy, real)
    assert [r["label"] for r in res["rows"]] == ["dpo", "ipo", "orpo"]  # in the toy's order
    assert [(r["rank_a"], r["rank_b"]) for r in res["rows"]] == [(1, 2), (2, 1), (3, 3)]
    assert res["tau"]["tau"] == pytest.approx(_tau_reference([0.5, 0.4, 0.3], [0.2, 0.3, 0.1]))
    assert res["only_a"] == ["kto"] and res["only_b"] == ["simpo"]
    assert res["tau"]["n_methods"] == 3 and res["tau"]["tau_min"] is None and "p" in res["tau"]
    # a rerun over the same seeds: paired, restricted to the seeds it has
    assert transfer.compare(toy, toy, seeds_a={0, 1, 2}, seeds_b={0, 1, 2}, paired=True)["tau"]["n_seeds"] == 3


def test_rows_are_in_order_of_mean_with_their_standing_against_the_best():
    # A is tight and far ahead of B; C is noisy with a mean between: nothing separates C from A, A separates B.
    recs = []
    for s, (a, b, c) in enumerate([(10, 5, -5), (10, 5, 4.5), (10, 5, 14), (10, 5, 2), (10, 5, 16)]):
        recs += [rec("A", s, a + 0.1 * s, 1.0), rec("B", s, b + 0.1 * s, 1.0), rec("C", s, c, 1.0)]
    rows = aggregate(recs)["tasks"]["reviews"]["rows"]
    assert [(r.method, r.vs_best) for r in rows] == [("A", "best"), ("C", "indistinguishable"), ("B", "below")]


def test_report_seeds_that_diverged_are_counted():
    recs = [rec("dpo", s, 0.5, 1.0, point={"lr": 1e-3}) for s in range(3)]
    recs[1]["trajectory"][1]["gold_reward"] = -9.0
    rows = aggregate(recs, divergence={"gold_drop": {"default": 1.0}, "max_kl": 30})["tasks"]["reviews"]["rows"]
    assert [bool(v) for _, v in sorted(rows[0].best.diverged.items())] == [False, True, False]
    # below π_SFT on its own seed: seed 2 ends below the reference's 0.6 there, seed 0 does not
    recs = [rec("dpo", s, g, 1.0, point={"lr": 1e-3}, gold_ref=r) for s, (g, r) in enumerate([(0.5, 0.1), (0.5, 0.5), (0.5, 0.6)])]
    row = aggregate(recs)["tasks"]["reviews"]["rows"][0]
    assert row.best.below_sft == {0: False, 1: False, 2: True}
