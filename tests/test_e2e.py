"""End to end on the testbed: DPO raises the gold reward; outputs follow the contract; seeds repeat."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_dpo_raises_gold_reward_and_writes_the_contract(run_cfg, outcome):
    summary, out = run_cfg("trainer.max_steps=120", "eval.num_prompts=96", "eval.max_new_tokens=32",
                           "trainer.save_every_steps=60", "trainer.tensorboard=true", "trainer.eval_every_steps=60")
    ev = summary["eval"]
    outcome("gold reward − reference's", ev["gold_reward"] - ev["gold_reward_ref"], ">", 0.3, ev)
    outcome("win rate vs π_ref", ev["win_rate_vs_ref"], ">", 0.6, ev)
    assert ev["kl_to_ref"] > 0
    # The run-output contract.
    s = json.load(open(os.path.join(out, "summary.json")))
    for k in ("algo", "task", "seed", "model", "params", "steps", "wall_time_s", "gen_time_s", "train_time_s",
              "peak_mem_mb", "tokens_per_s", "eval", "config_hash", "versions"):
        assert k in s, k
    assert s["algo"] == "dpo" and s["task"] == "reviews" and s["params"]["beta"] == 0.1 and s["steps"] == 120
    for k in ("gold_reward", "gold_reward_ref", "win_rate_vs_ref", "kl_to_ref", "proxy_reward", "mean_length",
              "mean_length_ref", "repetition_rate"):
        assert k in s["eval"], k
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert rows[-1]["step"] == 120 and any("eval/gold_reward" in r for r in rows)
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["step_0000060", "step_0000120"]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(out, "tensorboard")))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(os.path.join(out, "model")))


def test_same_seed_repeats_exactly_on_cpu(run_cfg, tmp_path):
    a, _ = run_cfg("trainer.max_steps=4", "trainer.log_every_steps=1", out=tmp_path / "a")
    b, _ = run_cfg("trainer.max_steps=4", "trainer.log_every_steps=1", out=tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in rows]  # noqa: E731
    ma = strip(json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl"))
    mb = strip(json.loads(l) for l in open(tmp_path / "b" / "metrics.jsonl"))
    assert ma == mb
    assert a["eval"] == b["eval"]


def test_resume_auto_through_the_cli_path(run_cfg, tmp_path):
    full, _ = run_cfg("trainer.max_steps=6", "trainer.log_every_steps=1", "trainer.eval_at_end=false", out=tmp_path / "full")
    run_cfg("trainer.max_steps=6", "trainer.log_every_steps=1", "trainer.save_every_steps=3", "trainer.eval_at_end=false",
            out=tmp_path / "part")
    # Simulate a crash after step 3: drop the finished outputs and the later checkpoint.
    import shutil

    shutil.rmtree(tmp_path / "part" / "checkpoints" / "step_0000006")
    os.remove(tmp_path / "part" / "summary.json")
    resumed, _ = run_cfg("trainer.max_steps=6", "trainer.log_every_steps=1", "trainer.save_every_steps=3",
                         "trainer.eval_at_end=false", "trainer.resume=auto", out=tmp_path / "part")
    from safetensors.torch import load_file

    wa = load_file(tmp_path / "full" / "model" / "model.safetensors")
    wb = load_file(tmp_path / "part" / "model" / "model.safetensors")
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert resumed["final_metrics"]["loss"] == full["final_metrics"]["loss"]


def test_user_data_conversational_with_lora(run_cfg, tmp_path):
    f = tmp_path / "pairs.jsonl"
    words = "the movie was great good bad dull fine plot acting".split()
    import random

    rng = random.Random(0)
    with open(f, "w") as fh:
        for _ in range(40):
            s = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
            fh.write(json.dumps({"prompt": [{"role": "user", "content": s(3)}],
                                 "chosen": [{"role": "assistant", "content": s(4)}],
                                 "rejected": [{"role": "assistant", "content": s(5)}]}) + "\n")
    summary, out = run_cfg("data=hf", f"data.path={f}", "model.lora.r=4", "trainer.max_steps=3",
                           "trainer.examples_per_step=8", "trainer.examples_per_device=4", "eval.num_prompts=4")
    assert summary["eval"]["gold_reward"] is None and summary["eval"]["kl_to_ref"] >= 0
    assert "adapter_model.safetensors" in os.listdir(os.path.join(out, "model"))


@pytest.mark.slow
def test_multirun_sweep_writes_one_directory_per_job(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-m", "prefopt.cli.train", "-m", "algo.beta=0.05,0.5", "seed=0,1",
                        "trainer.max_steps=2", "trainer.progress=false", "eval.num_prompts=4", "eval.max_new_tokens=8",
                        "hydra.sweep.dir=sweep"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = sorted(os.listdir(tmp_path / "sweep"))
    jobs = [j for j in jobs if os.path.isdir(tmp_path / "sweep" / j) and not j.startswith(".")]
    assert len(jobs) == 4, jobs
    seen = set()
    for j in jobs:
        s = json.load(open(tmp_path / "sweep" / j / "summary.json"))
        seen.add((s["params"]["beta"], s["seed"]))
    assert seen == {(0.05, 0), (0.05, 1), (0.5, 0), (0.5, 1)}


def test_greedy_evaluation_is_a_second_view_of_the_same_prompts(run_cfg, tmp_path):
    """eval.greedy: one top-1 completion per prompt of π and π_ref; π_ref's does not depend on the seed (no sampling)."""
    common = ("data=arith", "trainer.max_steps=1", "eval.num_prompts=16", "eval.samples_per_prompt=2", "eval.greedy=true")
    a, _ = run_cfg(*common, "seed=0", out=tmp_path / "a")
    b, _ = run_cfg(*common, "seed=1", out=tmp_path / "b")
    for ev in (a["eval"], b["eval"]):
        assert 0.0 <= ev["gold_reward_greedy"] <= 1.0 and 0.0 <= ev["gold_reward_greedy_ref"] <= 1.0
    assert a["eval"]["gold_reward_greedy_ref"] == b["eval"]["gold_reward_greedy_ref"]
    assert a["eval"]["gold_reward_ref"] != b["eval"]["gold_reward_ref"] or a["eval"]["kl_to_ref"] != b["eval"]["kl_to_ref"]
    off, _ = run_cfg("data=arith", "trainer.max_steps=1", "eval.num_prompts=16", out=tmp_path / "c")
    assert off["eval"]["gold_reward_greedy"] is None and off["eval"]["gold_reward_greedy_ref"] is None


def test_eval_greedy_off_hashes_as_a_config_without_the_key():
    from omegaconf import OmegaConf

    from prefopt.run.resume import config_hash
    from conftest import compose

    cfg = compose(["data=arith"])
    bare = OmegaConf.to_container(cfg)
    del bare["eval"]["greedy"]
    assert cfg.eval.greedy is False and config_hash(cfg) == config_hash(OmegaConf.create(bare))
    assert config_hash(compose(["data=arith", "eval.greedy=true"])) != config_hash(cfg)


def test_reference_evaluation_is_computed_once_per_seed_and_split(run_cfg, tmp_path, monkeypatch):
    """π_ref's held-out samples are cached per (reference, prompts, sampling, seed): a second method of the same
    seed reads them (same numbers, no new entry); another seed adds entries; a damaged entry is computed again."""
    import glob

    from prefopt.rollout import evaluate

    root = str(tmp_path / "eval_reference")
    monkeypatch.setattr(evaluate, "ref_cache_dir", lambda: root)
    before = set()
    common = ("data=arith", "trainer.max_steps=1", "eval.num_prompts=8", "eval.samples_per_prompt=2", "eval.greedy=true",
              "seed=7")
    a, _ = run_cfg(*common, "algo=dpo", out=tmp_path / "a")
    made = set(glob.glob(os.path.join(root, "*.json"))) - before
    assert len(made) == 1  # this run evaluates on test only (periodic evaluations off): one split, one entry
    b, _ = run_cfg(*common, "algo=ipo", out=tmp_path / "b")
    assert set(glob.glob(os.path.join(root, "*.json"))) - before == made
    for k in ("gold_reward_ref", "gold_reward_greedy_ref", "mean_length_ref"):
        assert a["eval"][k] == b["eval"][k]
    (path,) = made
    with open(path, "w") as f:
        f.write('{"comps": [[1, 2')
    c, _ = run_cfg(*common, "algo=dpo", out=tmp_path / "c")
    assert c["eval"]["gold_reward_ref"] == a["eval"]["gold_reward_ref"] and json.load(open(path))["comps"]
    run_cfg(*common[:-1], "seed=8", "algo=dpo", out=tmp_path / "d")
    assert len(set(glob.glob(os.path.join(root, "*.json"))) - before) == 2
