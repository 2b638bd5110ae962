"""The leaderboard protocol's guarantees: disjoint prompt sets, selection on validation numbers only
(poisoned test numbers change nothing), the identity of a result, Gao et al.'s fits and the paired
statistics against hand-computed cases."""

import dataclasses
import json
import math
import os
import random

import pytest

from prefopt.core.errors import UserError
from prefopt.leaderboard import fits, select, store
from prefopt.leaderboard.plan import plan
from prefopt.leaderboard.suite import load_suite
from prefopt.testbed.tasks import SPLITS, get_task, split_of


@pytest.mark.parametrize("name", ["reviews", "arith"])
def test_prompt_sets_are_disjoint_and_cover_the_task(name):
    task = get_task(name)
    sets = {s: set(task.prompts(s)) for s in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not sets[a] & sets[b], (a, b)
    assert min(len(sets["val"]), len(sets["test"])) >= 128  # room for the suites' 128 evaluation prompts
    # training-side draws (demonstrations, pairs' prompts) come from the training set only
    demos = task.demonstrations(500, random.Random(0))
    assert {p for p, _ in demos} <= sets["train"]
    assert set(task.sample_prompts(300, random.Random(1), "train")) <= sets["train"]
    for s in ("val", "test"):
        assert set(task.sample_prompts(100, random.Random(2), s)) <= sets[s]
    with pytest.raises(UserError, match="accepted: train, val, test"):
        task.sample_prompts(1, random.Random(0), "eval")


def test_split_assignment_is_stable():
    # a fixed key's split never moves (sha256, not Python's salted hash)
    assert [split_of(k) for k in ("a", "b", "c", "the movie", "3+4=")] == [split_of(k) for k in ("a", "b", "c", "the movie", "3+4=")]
    counts = {s: 0 for s in SPLITS}
    for i in range(5000):
        counts[split_of(f"k{i}")] += 1
    assert 0.07 < counts["val"] / 5000 < 0.13 and 0.07 < counts["test"] / 5000 < 0.13


def test_world_evaluates_on_the_requested_split():
    from prefopt.testbed.world import heldout_prompts

    task = get_task("reviews")
    val, test = heldout_prompts(task, "val", 64), heldout_prompts(task, "test", 64)
    assert set(val) <= set(task.prompts("val")) and set(test) <= set(task.prompts("test"))
    with pytest.raises(UserError, match="accepted: val, test"):
        heldout_prompts(task, "train", 4)


def _small_suite():
    s = load_suite("quick")
    return dataclasses.replace(s, ablation=None)


def _write(results, job, val_gold, val_kl, test_gold):
    rec = {"result_id": job.hash, "config_hash": job.hash, "status": "ok", "leaderboard": job.meta,
           "eval": {"gold_reward": test_gold, "kl_to_ref": val_kl},
           "eval_periodic": {"gold_reward": val_gold, "kl_to_ref": val_kl},
           "code_version": job.meta["code_version"], "cpu_capability": job.meta["cpu_capability"]}
    store.write_result(results, rec)


def test_selection_never_reads_a_test_set_number(tmp_path):
    suite = _small_suite()
    results, work = str(tmp_path / "results"), str(tmp_path / "work")
    jobs, notes = plan(suite, work, results)
    tuning = [j for j in jobs if j.stage == 2]
    assert tuning and not [j for j in jobs if j.stage == 3 and j.kind == "train"]  # picks wait for the grid
    assert any("wait for its tuning results" in n for n in notes)
    rng = random.Random(0)
    vals = {j.id: (rng.uniform(-1, 1), rng.uniform(0, 3)) for j in tuning}
    for j in tuning:
        _write(results, j, *vals[j.id], test_gold=0.0)
    picked = lambda js: sorted((j.meta["method"], j.meta["seed"], tuple(sorted(j.meta["point"].items())),  # noqa: E731
                                tuple(j.meta["picks"])) for j in js if j.stage == 3 and j.kind == "train")
    jobs1, _ = plan(suite, work, results)
    first = picked(jobs1)
    assert first  # with every tuning run on file, every tuned method has report runs
    # poison: give the worst validation point of every method the best test number by far, and scramble the rest
    for j in tuning:
        _write(results, j, *vals[j.id], test_gold=1e6 * (1 - vals[j.id][0]) + rng.uniform(0, 1e5))
    jobs2, _ = plan(suite, work, results)
    assert picked(jobs2) == first
    # and the picks are what the rule says, from the validation numbers alone
    for method in {j.meta["method"] for j in tuning}:
        grid = [j for j in tuning if j.meta["method"] == method]
        best = max(grid, key=lambda j: vals[j.id][0])
        inb = [j for j in grid if vals[j.id][1] <= suite.pick_kl_budget]
        chosen = {tuple(sorted(j.meta["point"].items())): set(j.meta["picks"]) for j in jobs1
                  if j.stage == 3 and j.kind == "train" and j.meta["method"] == method and j.meta["seed"] == 0}
        assert "best" in chosen[tuple(sorted(best.meta["point"].items()))]
        if inb:
            assert "at_budget" in chosen[tuple(sorted(max(inb, key=lambda j: vals[j.id][0]).meta["point"].items()))]


def test_choose_ties_and_budget():
    scored = select.grid_scores([{"lr": 1}, {"lr": 2}, {"lr": 3}],
                                [[{"eval_periodic": {"gold_reward": 0.5, "kl_to_ref": 3.0}}],
                                 [{"eval_periodic": {"gold_reward": 0.5, "kl_to_ref": 1.0}}], []])
    c = select.choose(scored, kl_budget=2.0)
    assert c["best"]["point"] == {"lr": 1} and c["at_budget"]["point"] == {"lr": 2}  # tie: the earlier point
    assert select.choose(scored, kl_budget=0.1)["at_budget"] is None
    assert select.validation_score({"eval": {"gold_reward": 9, "kl_to_ref": 1}}) is None  # test numbers are not read


def test_standard_suite_follows_the_rule(tmp_path):
    s = load_suite("standard")
    assert not set(s.seeds) & set(s.tuning_seeds) and len(s.seeds) >= 5
    for task in s.tasks:
        lrs = s.lr_grid[task]
        assert len(lrs) >= 3 and max(lrs) / min(lrs) >= 10 - 1e-9
    with pytest.raises(UserError, match="both tuning and report seeds"):
        p = tmp_path / "bad.yaml"
        p.write_text("name: bad\nseeds: [0, 1]\ntuning_seeds: [1]\ntasks: [reviews]\nlr_grid: {default: [1e-4]}\n")
        load_suite(str(p))
    # the grid of a method is the lr grid × its declared coefficient, nothing from the leaderboard code
    suite = dataclasses.replace(s, seeds=[0], tasks=["arith"], ablation=None,
                                exclude=[n for n in __import__("prefopt.objectives.registry", fromlist=["available"]).available()
                                         if n not in ("dpo", "dapo")])
    jobs, _ = plan(suite, str(tmp_path / "work"))
    from prefopt.objectives.registry import get_objective

    for name in ("dpo", "dapo"):
        grid = [j for j in jobs if j.stage == 2 and j.meta["method"] == name]
        coef = getattr(get_objective(name), "tuning", {})
        assert len(grid) == (len(s.lr_grid["arith"]) * math.prod(len(v) for v in coef.values())
                             * len(s.tuning_seeds))
        assert all(j.meta["seed"] in s.tuning_seeds for j in grid)
    assert {j.meta["seed"] for j in jobs if j.stage == 2} == set(s.tuning_seeds)


def test_identity_includes_code_version_and_cpu(tmp_path, monkeypatch):
    from prefopt.leaderboard import identity

    root = tmp_path / "pkg"
    (root / "leaderboard").mkdir(parents=True)
    (root / "trainer.py").write_text("x = 1\n")
    (root / "leaderboard" / "render.py").write_text("y = 1\n")
    monkeypatch.setattr(identity, "_roots", lambda: [("prefopt", str(root), (".py",), identity.NOT_TRAINING)])
    v = lambda: (identity.code_version.cache_clear(), identity.code_version())[1]  # noqa: E731
    v0 = v()
    (root / "leaderboard" / "render.py").write_text("y = 2\n")  # the board's rendering: same results
    assert v() == v0
    (root / "trainer.py").write_text("x = 2\n")  # training code: every result is a new one
    assert v() != v0
    identity.code_version.cache_clear()
    assert identity.result_id("h", "c", "AVX2") != identity.result_id("h", "c", "AVX512")
    assert identity.result_id("h", "c", "AVX2") != identity.result_id("h", "d", "AVX2")


@pytest.mark.parametrize("form", ["bon", "rl"])
def test_fits_recover_known_parameters(form):
    alpha, beta = 1.3, 0.45 if form == "bon" else 0.6
    rng = random.Random(0)
    kl = [0.05 * 1.6 ** i for i in range(14)]
    g = lambda k: math.sqrt(k) * (alpha - beta * (math.sqrt(k) if form == "bon" else math.log(math.sqrt(k))))  # noqa: E731
    exact = fits.fit(kl, [g(k) for k in kl], form)
    assert exact.alpha == pytest.approx(alpha, abs=1e-9) and exact.beta == pytest.approx(beta, abs=1e-9)
    noisy = fits.fit(kl, [g(k) + rng.gauss(0, 0.02) for k in kl], form)
    assert noisy.alpha == pytest.approx(alpha, abs=0.05) and noisy.beta == pytest.approx(beta, abs=0.05)
    # the peak, by hand: bon d* = α/2β; rl d* = exp(α/β − 1)
    d = alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)
    assert exact.peak_kl == pytest.approx(d * d) and exact.peak_gain == pytest.approx(g(d * d))
    assert fits.fit([1.0], [0.3], form) is None  # one point determines nothing


def test_fit_without_a_peak():
    f = fits.fit([0.5, 1, 2, 4], [0.2 * math.sqrt(k) * (1 + 0.1 * math.sqrt(k)) for k in [0.5, 1, 2, 4]], "bon")
    assert f.beta < 0 and f.peak_kl is None and f.peak_gain is None


@pytest.mark.parametrize("suite", ["quick", "smol", "ensemble", "standard"])
def test_planned_jobs_hash_as_a_full_hydra_compose(suite, tmp_path, monkeypatch):
    """Planning reuses the composed config of a job's group choices and sets its values on a copy
    (jobs.compose_fast); every job's config hash must be the one a full Hydra compose gives, or results
    would not be recognised as done. The standard suite's ~900 jobs: a seeded sample of 30."""
    from prefopt.leaderboard import jobs
    from prefopt.run.resume import config_hash

    seen = []
    fast = jobs.compose_hash
    monkeypatch.setattr(jobs, "compose_hash", lambda ov: seen.append(list(ov)) or fast(ov))
    plan(load_suite(suite), str(tmp_path / "work"), str(tmp_path / "results"))
    sample = random.Random(0).sample(seen, min(30, len(seen)))
    assert len(seen) > 10
    assert [fast(ov) for ov in sample] == [config_hash(jobs.compose(ov)) for ov in sample]


def test_fast_compose_sets_values_as_hydra_does():
    from prefopt.leaderboard import jobs
    from prefopt.run.resume import config_hash

    for ov in (["algo=dpo", "trainer.lr=1e-3", "algo.beta=0.5", "seed=3"],
               ["algo=grpo", "data=arith", "algo.samples_per_prompt=4", "eval.num_prompts=64", "trainer.progress=false"],
               ["algo=dpo", "model.lora.target_modules=[q_proj,v_proj]", "data.max_length=null"]):
        assert config_hash(jobs.compose_fast(ov)) == config_hash(jobs.compose(ov))
    with pytest.raises(Exception):
        jobs.compose_fast(["algo=dpo", "trainer.not_a_key=1"])  # Hydra's own refusal, not a silent key
