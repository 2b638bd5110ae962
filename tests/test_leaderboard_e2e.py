"""The quick suite end to end: every registered method gets a result, a second run skips them all,
render writes the board. Also: the plan follows the registry's declarations, never names."""

import json
import os
import subprocess
import sys

import pytest

from prefopt.leaderboard import store
from prefopt.leaderboard.plan import classify, load_suite, plan
from prefopt.registry import Needs, available, get_objective


def test_classify_reads_declarations():
    assert classify(Needs(data="paired", head="scalar")) == "reward_model"
    assert classify(Needs(data="prompt_only", reward=True, rollouts=True)) == "online"
    assert classify(Needs(data="paired", reference=True)) == "offline"
    assert classify(Needs(data="unpaired")) == "offline"
    assert classify(Needs(data="demonstrations")) == "sft"


def test_plan_covers_the_registry(tmp_path):
    suite = {**load_suite("standard"), "seeds": [2]}  # one seed keeps the planning (Hydra composes) short
    jobs, notes = plan(suite, str(tmp_path / "work"))
    methods = {j.meta["method"] for j in jobs}
    for name in available():
        if name in suite["exclude"]:
            assert any(n.startswith(f"{name}:") for n in notes)
        else:
            assert name in methods, name
    # stage 1 first; every proxy-reward job points at its seed's reward model, by hash
    assert [j.stage for j in jobs if j.meta["task"] == "reviews"][0] == 1
    rm = {(j.meta["task"], j.meta["seed"]): j for j in jobs if j.stage == 1}
    assert len(rm) == len(suite["tasks"]) * len(suite["seeds"])
    for j in jobs:
        if j.meta.get("reward") == "proxy" and j.kind == "train":
            r = rm[(j.meta["task"], j.meta["seed"])]
            assert f"reward.path={os.path.join(str(tmp_path / 'work'), 'runs', r.hash, 'model')}" in j.overrides
        if j.meta.get("reward") == "exact":
            assert j.meta["task"] in suite["exact_reward"]
    assert len({j.hash for j in jobs}) == len(jobs)  # distinct configs, distinct results
    # seeds are independent replicates: each seed moves the SFT and pair seeds too
    dpo = [j for j in jobs if j.meta["method"] == "dpo" and j.meta["seed"] == 2][0]
    assert {"seed=2", "data.testbed.sft_seed=2", "data.testbed.pair_seed=2"} <= set(dpo.overrides)
    # per-task online overrides reach that task's online runs only
    for task, extra in suite["online_task"].items():
        for j in jobs:
            if j.kind == "train" and j.stage == 2:
                hit = set(extra) <= set(j.overrides)
                assert hit == (j.meta["task"] == task and j.meta["category"] == "online"), j.id


@pytest.mark.slow
def test_quick_suite_end_to_end(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "prefopt.leaderboard.cli", "run", "suite=quick", f"dir={tmp_path}",
           "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-5000:])
    loaded = store.load_results(str(tmp_path / "results"))
    assert loaded.problems == [] and loaded.failed == []
    suite = load_suite("quick")
    done = {r["leaderboard"]["method"] for r in loaded.ok}
    for name in available():
        if name not in suite["exclude"]:
            assert name in done, name
    assert "best_of_n" in done
    for r in loaded.ok:
        assert r["eval"] is not None and r["leaderboard"]["suite"] == "quick"
        if r["leaderboard"]["category"] == "online":
            assert r["eval"]["proxy_reward"] is not None  # scored by the proxy reward model
    # a second run finds every config hash done and runs nothing
    p2 = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p2.returncode == 0, p2.stderr[-3000:]
    assert f"{len(loaded.ok)} jobs ({len(loaded.ok)} already have a result)" in p2.stdout
    assert "nothing to run" in p2.stdout and "running →" not in p2.stdout + p2.stderr
    # render
    p3 = subprocess.run([sys.executable, "-m", "prefopt.leaderboard.cli", "render", f"dir={tmp_path}"],
                        capture_output=True, text=True, env=env, timeout=300)
    assert p3.returncode == 0, p3.stderr[-3000:]
    md = (tmp_path / "LEADERBOARD.md").read_text()
    for name in done - {"best_of_n", suite["reward_model"]}:
        assert f"| {name} |" in md or f"| {name} (" in md, name
    assert "Proxy reward model (held-out pairs): accuracy 0." in md
    assert (tmp_path / "frontier.png").stat().st_size > 10_000 and (tmp_path / "index.html").exists()
