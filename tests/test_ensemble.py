"""Reward-model ensembles: the aggregation and standardisation against a float64 reference written
independently, the one-line refusals, ``algo=reward algo.ensemble_members=N`` (member dirs, resume,
bootstrap), ``reward=ensemble`` in an online run and in best-of-n, and the leaderboard's ensemble
plan and board section on synthetic results."""

import json
import math
import os
import random

import pytest
import torch

from conftest import FAST, compose
from prefopt.core.errors import UserError
from prefopt.rollout import ensemble as E
from prefopt.rollout.rewards import RewardConfig, check, reward_config


# ---- the math, against plain-Python float64 -------------------------------------------------------

def ref_aggregate(cols, how, lam):
    """cols: per completion, the M member rewards (Python floats)."""
    out = []
    for rs in cols:
        m = sum(rs) / len(rs)
        if how == "mean":
            out.append(m)
        elif how == "min":
            out.append(min(rs))
        else:
            out.append(m - lam * math.sqrt(sum((r - m) ** 2 for r in rs) / len(rs)))
    return out


CASES = [  # (M × B member rewards, λ)
    ([[0.3, -1.2, 2.0, 0.0], [0.1, -0.2, 1.0, 0.0], [0.9, -3.0, 1.5, 0.0]], 1.0),
    ([[1.5, -0.5, 0.25]], 2.0),  # N = 1: every aggregate is the member, std 0
    ([[0.7, 0.7, -1.0], [0.7, 0.7, -1.0], [0.7, -2.0, -1.0]], 0.5),  # ties between members
    ([[random.Random(i).gauss(0, 3) for _ in range(7)] for i in range(5)], 0.0),  # λ = 0 is the mean
]


@pytest.mark.parametrize("how", E.AGGREGATES)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_aggregate_matches_float64_reference(how, case):
    rows, lam = CASES[case]
    r = torch.tensor(rows, dtype=torch.float64)
    got = E.aggregate(r, how, lam)
    want = ref_aggregate([list(c) for c in zip(*rows)], how, lam)
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)
    if len(rows) == 1:
        assert torch.equal(got, r[0])
    if lam == 0.0:
        assert torch.allclose(E.aggregate(r, "mean_minus_std", 0.0), r.mean(0), atol=1e-12)
    # float32 input: the same up to float32 rounding
    assert torch.allclose(E.aggregate(r.float(), how, lam).double(), got, atol=1e-5)


def test_identical_members_have_zero_std_and_the_aggregates_agree():
    r = torch.tensor([[0.5, -1.0, 2.0]] * 4, dtype=torch.float64)
    assert torch.equal(E.population_std(r), torch.zeros(3))
    for how in E.AGGREGATES:
        assert torch.allclose(E.aggregate(r, how, 3.0), r[0])


class Fixed:
    """A member whose scores are a fixed function of the completion's text (a float per completion)."""

    def __init__(self, table):
        self.table = table

    def __call__(self, prompts, completions, **kw):
        return torch.tensor([self.table[c] for c in completions], dtype=torch.float32)


def test_standardisation_is_frozen_on_the_first_batch_and_checkpointed():
    a = {"x": 1.0, "y": 3.0, "z": 8.0, "w": -4.0}
    b = {"x": 10.0, "y": 10.0, "z": 40.0, "w": 0.0}
    first = ["x", "y", "z"]
    ens = E.EnsembleReward([Fixed(a), Fixed(b)], "mean_minus_std", 0.5)
    out1 = ens(["p"] * 3, first)

    def stats(t):
        mu = sum(t[c] for c in first) / 3
        return mu, math.sqrt(sum((t[c] - mu) ** 2 for c in first) / 3)

    def want(cs):
        (ma, sa), (mb, sb) = stats(a), stats(b)
        return ref_aggregate([[(a[c] - ma) / sa, (b[c] - mb) / sb] for c in cs], "mean_minus_std", 0.5)

    assert torch.allclose(out1.double(), torch.tensor(want(first), dtype=torch.float64), atol=1e-6)
    out2 = ens(["p"] * 2, ["w", "x"])  # later batches: the first batch's μ, σ, not their own
    assert torch.allclose(out2.double(), torch.tensor(want(["w", "x"]), dtype=torch.float64), atol=1e-6)
    assert set(ens.last_parts) == {"reward/member_0", "reward/member_1", "reward/ensemble_std"}
    # a resumed run: the frozen statistics come back from the checkpoint, not from its first batch
    again = E.EnsembleReward([Fixed(a), Fixed(b)], "mean_minus_std", 0.5)
    again.load_state_dict(json.loads(json.dumps(ens.state_dict())))
    assert torch.allclose(again(["p"] * 2, ["w", "x"]), out2)
    # a member constant on the first batch (σ = 0) is centred, not divided by zero
    flat = E.EnsembleReward([Fixed({"x": 2.0, "y": 2.0})], "mean")
    assert flat(["p"] * 2, ["x", "y"]).tolist() == [0.0, 0.0]
    # through a one-process all_sum (the path of a placed run): the same statistics
    placed = E.EnsembleReward([Fixed(a), Fixed(b)], "mean_minus_std", 0.5, all_sum=lambda x: x)
    placed(["p"] * 3, first)
    assert torch.allclose(placed.mu, ens.mu, atol=1e-12) and torch.allclose(placed.sigma, ens.sigma, atol=1e-12)
    raw = E.EnsembleReward([Fixed(a), Fixed(b)], "min", normalize=False)
    assert raw(["p"] * 3, first).tolist() == [min(a[c], b[c]) for c in first]


# ---- one-line refusals, before any model loads -------------------------------------------------------

def _model_dir(root, name):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    return str(d)


def test_bad_ensemble_configs_are_one_line_errors(tmp_path):
    m0, m1 = _model_dir(tmp_path, "members/0/model"), _model_dir(tmp_path, "members/1/model")
    cfg = lambda **kw: RewardConfig(name="ensemble", kind="ensemble", **kw)  # noqa: E731
    cases = [
        (cfg(paths=[]), "needs reward.paths"),
        (cfg(paths=[str(tmp_path / "nope")]), "is not a model directory"),
        (cfg(paths=[m0, m1], aggregate="median"), "accepted: mean, min, mean_minus_std"),
        (cfg(paths=[m0, m1], aggregate="mean_minus_std", ensemble_lambda=-0.5), "must be >= 0"),
        (cfg(paths=[m0], aggregate="min"), "over one member"),
        (cfg(paths=[m0], aggregate="mean_minus_std"), "over one member"),
        (cfg(paths=[m0, m0]), "twice"),
    ]
    for c, needle in cases:
        with pytest.raises(UserError, match=needle) as e:
            check(c)
        assert "\n" not in str(e.value)
    check(cfg(paths=[m0]))  # one member under mean: the single model, accepted
    # a folder of members, or the ensemble run's directory, expands to its members in order
    assert E.resolve_paths([str(tmp_path / "members")]) == [m0, m1]
    assert E.resolve_paths([str(tmp_path)]) == [m0, m1]


def test_bootstrap_resample_is_seeded_and_only_when_asked():
    from prefopt.objectives.reward import RewardModel

    def resample(ex, acfg, seed):
        return RewardModel(acfg).resample_examples(ex, seed)

    ex = [{"row": i} for i in range(50)]
    boot = RewardModel.Config(ensemble_resample="bootstrap")
    a, b = resample(ex, boot, 3), resample(ex, boot, 3)
    assert a == b and len(a) == 50 and len({e["row"] for e in a}) < 50  # with replacement
    assert a != resample(ex, boot, 4)
    assert resample(ex, RewardModel.Config(ensemble_resample="seed"), 3) is ex


# ---- members in one command, then reward=ensemble over them ----------------------------------------

MEMBERS = [*FAST, "algo=reward", "algo.ensemble_members=2", "trainer.max_steps=2", "trainer.examples_per_step=8",
           "data.num_rows=96", "trainer.log_every_steps=1"]


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    from prefopt.run import train as run

    out = tmp_path_factory.mktemp("ens") / "rm"
    summary = run(compose(MEMBERS), str(out))
    return out, summary


def test_algo_reward_trains_loadable_members(members):
    from transformers import AutoModelForSequenceClassification

    out, s = members
    paths = [str(out / "members" / str(i) / "model") for i in range(2)]
    assert s["ensemble"]["paths"] == paths and s["ensemble"]["override"] == f"reward=ensemble reward.paths=[{','.join(paths)}]"
    assert [m["seed"] for m in s["members"]] == [0, 1000] and s["params"]["ensemble_members"] == 2
    for p in paths:
        assert AutoModelForSequenceClassification.from_pretrained(p).config.num_labels == 1
    for i in range(2):  # every member is an ordinary run directory
        d = out / "members" / str(i)
        assert (d / "summary.json").exists() and (d / "metrics.jsonl").exists() and (d / ".hydra" / "resolved.yaml").exists()
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["member"] for r in rows] == [0, 1]
    assert json.loads((out / "summary.json").read_text())["config_hash"] == s["config_hash"]


def test_rerun_keeps_finished_members_and_refuses_without_resume(members):
    from prefopt.run import train as run

    out, s = members
    with pytest.raises(UserError, match="already holds an ensemble"):
        run(compose(MEMBERS), str(out))
    stamp = [os.path.getmtime(out / "members" / str(i) / "summary.json") for i in range(2)]
    again = run(compose([*MEMBERS, "trainer.resume=auto"]), str(out))
    assert [os.path.getmtime(out / "members" / str(i) / "summary.json") for i in range(2)] == stamp  # not retrained
    assert again["members"] == s["members"]


def test_reward_ensemble_drives_an_online_run_and_best_of_n(members, tmp_path):
    from prefopt.cli.best_of_n import main as best_of_n
    from prefopt.run import train as run

    out, _ = members
    ens = ["reward=ensemble", f"reward.paths=[{out}]", "reward.aggregate=mean_minus_std", "reward.ensemble_lambda=0.5"]
    s = run(compose([*FAST, "algo=rloo", *ens, "trainer.max_steps=2", "algo.prompts_per_step=4", "algo.max_new_tokens=8",
                     "trainer.log_every_steps=1", "trainer.eval_every_steps=1", "eval.periodic_test=true",
                     "eval.num_prompts=4", "eval.max_new_tokens=8", "trainer.save_model=false"]), str(tmp_path / "rloo"))
    rows = [json.loads(l) for l in (tmp_path / "rloo" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "loss" in r]
    assert {"rollout/reward/member_0", "rollout/reward/member_1", "rollout/reward/ensemble_std"} <= set(train[0])
    assert abs(train[0]["rollout/reward/member_0"]) < 1e-5  # standardised on this very first batch
    evals = [r for r in rows if "eval/gold_reward" in r]
    assert evals and all("eval/test/gold_reward" in r for r in evals)  # both prompt sets at each periodic evaluation
    assert s["eval"]["proxy_reward"] is not None
    res = best_of_n(["n=1,2", *ens, "eval.num_prompts=4", "eval.max_new_tokens=8"])
    assert set(res) == {1, 2} and all(math.isfinite(r["proxy_reward"]) for r in res.values())


# ---- the leaderboard: plan and board section ------------------------------------------------------------

def test_ensemble_suite_plan(tmp_path):
    import dataclasses

    from prefopt.leaderboard.plan import plan
    from prefopt.leaderboard.suite import load_suite

    suite = load_suite("ensemble")
    sec = suite.reward_ensemble
    jobs, _ = plan(suite, str(tmp_path / "work"))
    M, variants = sec.members, ["single", *sec.aggregates]
    assert len(jobs) == len(suite.seeds) * (1 + 2 * len(variants))
    assert len({j.hash for j in jobs}) == len(jobs) and len({j.id for j in jobs}) == len(jobs)
    for seed in suite.seeds:
        rm = next(j for j in jobs if j.stage == 1 and j.meta["seed"] == seed)
        assert rm.meta["role"] == "ensemble_rm" and f"algo.ensemble_members={M}" in rm.overrides
        members = [os.path.join(str(tmp_path / "work"), "runs", rm.hash, "members", str(i), "model") for i in range(M)]
        for v in variants:
            pg = next(j for j in jobs if j.id == f"reviews-s{seed}-{sec.pg.method}-ens-{v}")
            bon = next(j for j in jobs if j.id == f"reviews-s{seed}-best_of_n-ens-{v}")
            want = members[:1] if v == "single" else members
            assert f"reward.paths=[{','.join(want)}]" in pg.overrides and "eval.periodic_test=true" in pg.overrides
            assert f"reward.aggregate={'mean' if v == 'single' else v}" in pg.overrides
            assert pg.meta["rm_hash"] == bon.meta["rm_hash"] == rm.hash and pg.stage == bon.stage == 3
            assert bon.spec["reward"]["paths"] == want and bon.spec["samples"] == sec.best_of_n.samples
    # the standard suite plans no ensemble job
    std, _ = plan(dataclasses.replace(load_suite("quick"), ablation=None), str(tmp_path / "w2"))
    assert not any(j.meta.get("category") == "ensemble" for j in std)


def _synthetic_records(seeds=(0, 1, 2)):
    """PG runs whose validation gold peaks at step 10 while the test gold peaks at step 20 (a test-chosen
    peak would differ), and best-of-n records whose validation peaks at n=4; min beats single by 0.2."""
    recs = []
    bump = {"single": 0.0, "mean": 0.1, "min": 0.2, "mean_minus_std": 0.15}
    for s in seeds:
        for v, d in bump.items():
            lb = {"suite": "ensemble", "task": "reviews", "seed": s, "role": "ensemble", "variant": v, "members": 4,
                  "category": "ensemble"}
            traj = [{"step": 0, "gold_reward": 0.0, "kl_to_ref": 0.0}]
            for step, val, test in ((5, 0.5, 0.4), (10, 0.9, 0.6), (20, 0.3, 9.9)):
                traj.append({"step": step, "gold_reward": val + d, "kl_to_ref": step / 5, "test/gold_reward": test + d + 0.01 * s,
                             "test/kl_to_ref": step / 5})
            common = {"status": "ok", "code_version": "c1", "cpu_capability": "AVX2", "finished_at": "t"}
            recs.append({**common, "leaderboard": {**lb, "method": "rloo"}, "trajectory": traj,
                         "eval": {"gold_reward_ref": -0.1}})
            pts = lambda off: [{"n": n, "gold_reward": g + d + off, "kl_to_ref": math.log(n) - (n - 1) / n}  # noqa: E731
                               for n, g in ((1, 0.0), (4, 0.5), (16, 0.2))]
            recs.append({**common, "leaderboard": {**lb, "method": "best_of_n"},
                         "best_of_n_by_split": {"val": pts(0.0), "test": pts(0.05 * s)}, "eval": {}})
    return recs


def test_board_section_picks_the_peak_on_validation_and_reports_test(tmp_path):
    from prefopt.leaderboard import ensemble as LE
    from prefopt.leaderboard.render import render
    from prefopt.leaderboard.store import write_result

    agg = LE.rows_of(_synthetic_records())
    rows = {(r["method"], r["variant"]): r for r in agg["rows"]}
    assert len(rows) == 8 and agg["version"] == ("c1", "AVX2")
    pg = rows[("rloo", "min")]
    assert pg["peak"] == 10 and pg["gold"].mean == pytest.approx(0.6 + 0.2 + 0.01)  # test at the validation peak
    assert pg["vs_single"]["diff"].mean == pytest.approx(0.2) and pg["vs_single"]["p_adj"] <= 1.0
    assert rows[("rloo", "single")]["vs_single"] is None
    bon = rows[("best_of_n", "mean")]
    assert bon["peak"] == 4 and bon["gold"].mean == pytest.approx(0.5 + 0.1 + 0.05)
    assert [r["method"] for r in agg["rows"]][:4] == ["best_of_n"] * 4
    text = "\n".join("|".join(r) for r in LE.table(agg))
    assert "ensemble of 4: min (worst case)" in text and "step 10" in text and "n=4" in text
    from prefopt.leaderboard.suite import load_suite

    block = load_suite("ensemble").seeds[:3]  # the board shows the suite's pre-registered seed block only
    for i, r in enumerate(_synthetic_records() + _synthetic_records(seeds=block)):
        write_result(str(tmp_path / "results"), {**r, "config_hash": f"h{i}", "result_id": f"h{i}", "result_version": 2})
    render(str(tmp_path))
    md = (tmp_path / "LEADERBOARD.md").read_text()
    assert "## Reward-model ensembles against reward hacking" in md and "ensemble.png" in md
    assert (tmp_path / "ensemble.png").read_bytes()[:4] == b"\x89PNG"
    assert "Reward-model ensembles" in (tmp_path / "index.html").read_text()
    assert "Report seeds: block v4" in md and "| 3 |" in md and "| 6 |" not in md  # seeds 0–2 are not in the block


def test_readme_commands_compose_and_pass_their_checks(members):
    """Every command of the README's ensemble block composes and passes the checks a run makes before
    anything loads (the runs themselves are the toy-size runs above)."""
    import re
    import shlex

    from conftest import ROOT
    from prefopt.run import members as M

    out, _ = members
    text = (ROOT / "README.md").read_text()
    block = text.split("## Reward-model ensembles (against reward hacking)")[1].split("```bash\n")[1].split("```")[0]
    kinds = set()
    for line in block.strip().splitlines():
        line = re.split(r"\s{2,}#", line)[0]
        for cmd in line.split("&&"):
            args = shlex.split(cmd)
            if args[0] == "prefopt-leaderboard":
                kinds.add("leaderboard")
                from prefopt.leaderboard.suite import load_suite

                own = dict(a.split("=", 1) for a in args[2:] if "=" in a)
                assert args[1] == "render" or load_suite(own["suite"]).reward_ensemble
                continue
            ovr = args[1:] if args[0] == "prefopt-train" else args[3:]
            ovr = [o.replace("outputs/rm4", str(out)) for o in ovr if not o.startswith(("hydra.", "n="))]
            cfg = compose(ovr)
            kinds.add(cfg.algo.name)
            if cfg.algo.name == "reward":
                assert M.count(cfg) == 4
            else:
                check(reward_config(cfg.reward))
    assert kinds == {"reward", "rloo", "ppo", "dpo", "leaderboard"}  # best_of_n composes train.yaml's default algo


def test_cli_refuses_a_bad_ensemble_in_one_line(tmp_path):
    from prefopt.run import members as M
    from short_runs import cli, one_line_error

    for bad, needle in (("algo.ensemble_members=0", "accepted: a whole number >= 1"),
                        ("algo.ensemble_resample=jackknife", "accepted: seed, bootstrap")):
        with pytest.raises(UserError, match=needle):
            M.count(compose(["algo=reward", bad]))
    p = cli("algo=rloo", "reward=ensemble", f"reward.paths=[{tmp_path}]", "reward.aggregate=min",
            f"hydra.run.dir={tmp_path / 'run'}")
    one_line_error(p, "reward.paths[0]", "is not a model directory")
    assert not (tmp_path / "run").exists()  # refused before anything was written
