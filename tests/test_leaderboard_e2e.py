"""The quick suite end to end: every registered method gets a result, a second run skips them all,
render writes the board. Also: the plan follows the registry's declarations, never names."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from prefopt.leaderboard import store
from prefopt.leaderboard.plan import plan
from prefopt.leaderboard.protocol import classify
from prefopt.leaderboard.suite import load_suite
from prefopt.objectives.registry import Needs, available, get_objective


def test_classify_reads_declarations():
    assert classify(Needs(data="paired", head="scalar")) == "reward_model"
    assert classify(Needs(data="prompt_only", reward=True, rollouts=True)) == "online"
    assert classify(Needs(data="paired", reference=True)) == "offline"
    assert classify(Needs(data="unpaired")) == "offline"
    assert classify(Needs(data="demonstrations")) == "sft"


def test_plan_covers_the_registry(tmp_path):
    # one task keeps the planning (Hydra composes) short
    suite = dataclasses.replace(load_suite("standard"), tasks=["reviews"], ablation=None)
    jobs, notes = plan(suite, str(tmp_path / "work"))
    methods = {j.meta["method"] for j in jobs if j.stage == 2}
    for name in available():
        if name in suite.exclude:
            assert any(n.startswith(f"{name}:") for n in notes)
        elif name != suite.reward_model:
            assert name in methods, name
    # stage 1 first; every proxy-reward job points at its seed's reward model, by identity
    assert jobs[0].stage == 1
    rm = {(j.meta["task"], j.meta["seed"]): j for j in jobs if j.stage == 1}
    assert len(rm) == len(suite.seeds) + len(suite.tuning_seeds)
    for j in jobs:
        if j.meta.get("reward") == "proxy" and j.kind == "train":
            r = rm[(j.meta["task"], j.meta["seed"])]
            assert f"reward.path={os.path.join(str(tmp_path / 'work'), 'runs', r.hash, 'model')}" in j.overrides
        assert j.meta.get("code_version") and j.meta.get("cpu_capability")
    assert len({j.hash for j in jobs}) == len(jobs)  # distinct configs, distinct results
    # seeds are independent replicates: each seed moves the SFT and pair seeds too
    dpo = [j for j in jobs if j.meta["method"] == "dpo" and j.stage == 2][0]
    t = suite.tuning_seeds[0]
    assert {f"seed={t}", f"data.testbed.sft_seed={t}", f"data.testbed.pair_seed={t}"} <= set(dpo.overrides)
    # report runs (stage 3, train) wait for the grid; best-of-n does not
    assert not [j for j in jobs if j.stage == 3 and j.kind == "train"]
    assert {j.meta["seed"] for j in jobs if j.kind == "best_of_n"} == set(suite.seeds)


@pytest.mark.slow
def test_quick_suite_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "prefopt.leaderboard.cli", "run", "suite=quick", f"dir={tmp_path}",
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    failed = [ln for ln in (p.stdout + p.stderr).splitlines() if "FAILED" in ln or "Error" in ln]
    assert p.returncode == 0, (failed[-20:], p.stderr[-3000:])
    loaded = store.load_results(str(tmp_path / "results"))
    assert loaded.problems == [] and loaded.failed == []
    suite = load_suite("quick")
    roles = {}
    for r in loaded.ok:
        for lb in [r["leaderboard"], *r["leaderboard"].get("also", [])]:
            roles.setdefault(lb["role"], set()).add(lb["method"])
    methods = {n for n in available() if n not in suite.exclude and n != suite.reward_model}
    assert roles["tuning"] == methods and roles["report"] == methods | {"best_of_n"}
    assert roles["reward_model"] == {suite.reward_model} and roles["ablation"] == {suite.ablation.method}
    for r in loaded.ok:
        lb = r["leaderboard"]
        assert r["eval"] is not None and lb["suite"] == "quick" and r["code_version"] and r["cpu_capability"]
        if lb["role"] in ("tuning", "report") and lb["method"] != "best_of_n":
            # validation numbers for selection, a trajectory from π_SFT (step 0) on, test numbers in eval
            assert r["eval_split"] == "test" and r["eval_periodic"]["gold_reward"] is not None
            assert r["trajectory"][0]["step"] == 0 and r["trajectory"][0]["kl_to_ref"] == 0.0
            assert [p["step"] for p in r["trajectory"]][-1] == r["steps"] and len(r["trajectory"]) >= 3
        if lb["category"] == "online":
            assert r["eval"]["proxy_reward"] is not None  # scored by the proxy reward model
            assert r["cost"]["samples_generated"] > 0
    # a second run finds every identity done and runs nothing
    p2 = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert p2.stdout.count("nothing to run") == 4 and "running →" not in p2.stdout + p2.stderr
    # render
    p3 = subprocess.run([sys.executable, "-m", "prefopt.leaderboard.cli", "render", f"dir={tmp_path}"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert p3.returncode == 0, p3.stderr[-3000:]
    md = (tmp_path / "LEADERBOARD.md").read_text()
    for name in methods:
        assert f"| {name} |" in md, name
    assert "Proxy reward model (held-out pairs): accuracy 0." in md
    for section in ("tuning grids", "paired comparison", "sanity checks", "more pairs delay the peak", "Reproducibility"):
        assert section in md, section
    assert (tmp_path / "frontier.png").stat().st_size > 10_000 and (tmp_path / "index.html").exists()
