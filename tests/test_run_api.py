"""The run API (prefopt.Run, prefopt.compose): the README's "From Python" block runs as written and
writes the run-output contract; a mistake is one line before anything is written; `import prefopt`
stays light."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from prefopt.core.errors import UserError


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("<!-- from-python -->")[1].split("```python\n")[1].split("```")[0]


def test_readme_from_python_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(readme_block(), "README.md (From Python)", "exec"), scope)
    result, ipo = scope["result"], scope["ipo"]
    for r, algo, overrides in ((result, "dpo", ["algo=dpo", "algo.beta=0.1", "trainer.max_steps=10",
                                                "eval.num_prompts=16", "seed=1"]),
                               (ipo, "ipo", None)):
        out = tmp_path / "runs" / f"{algo}_py"
        assert os.path.samefile(r.out_dir, out) and os.path.samefile(r.model_dir, out / "model")
        # the run-output contract, as prefopt-train writes it
        for name in (".hydra/config.yaml", ".hydra/resolved.yaml", "metrics.jsonl", "summary.json", "model"):
            assert (out / name).exists(), name
        assert json.loads((out / "summary.json").read_text()) == r.summary
        assert r.summary["algo"] == algo and r.summary["steps"] == 10
        assert os.path.samefile(r.summary_path, out / "summary.json") and os.path.samefile(r.metrics_path, out / "metrics.jsonl")
        if overrides:  # composed from overrides: they are recorded, as Hydra records the command line's
            assert (out / ".hydra" / "overrides.yaml").read_text().split() == [w for o in overrides for w in ("-", o)]
    assert ipo.summary["params"]["beta"] == 0.5  # the edit made in Python is what ran
    assert scope["policy"].config.model_type == "llama"


def test_mistakes_are_one_line_before_anything_is_written(tmp_path):
    import prefopt

    for overrides, needle in ((["algo=bogus"], "unknown algo 'bogus'; available:"),
                              (["trainer.max_step=5"], "trainer.max_step"),
                              (["trainer.max_steps=[1"], "cannot parse the override"),
                              (["seed=0,1"], "is a sweep")):
        with pytest.raises(UserError, match=needle) as e:
            prefopt.Run(overrides, out_dir=tmp_path / "run")
        assert "\n" not in str(e.value)
    run = prefopt.Run(["trainer.examples_per_step=0"], out_dir=tmp_path / "run")
    with pytest.raises(UserError) as e:
        run.train()
    assert "examples_per_step" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_data_and_policy_are_what_the_run_starts_from():
    import prefopt

    run = prefopt.Run(["algo=dpo", "data.num_rows=64"])
    pairs = run.data()  # the kind DPO trains on (the testbed's cached pairs)
    assert pairs.kind == "paired" and pairs.source == "testbed:reviews" and len(pairs.rows) == 64
    assert {"chosen", "rejected"} <= set(pairs.rows[0]) and pairs.gold_fn is not None and set(pairs.heldout) == {"val", "test"}
    prompts = run.data("prompt_only")
    assert prompts.kind == "prompt_only" and "prompt" in prompts.rows[0] and prompts.base_path == pairs.base_path
    policy = run.policy(prompts)
    assert policy.get_input_embeddings().num_embeddings >= len(prompts.tokenizer)


def test_import_prefopt_is_light_and_the_module_prefopt_train_is_not_shadowed():
    code = ("import sys, prefopt\n"
            "assert 'torch' not in sys.modules and 'hydra' not in sys.modules, 'heavy import'\n"
            "assert prefopt.Run.__name__ == 'Run' and callable(prefopt.compose)\n"
            "import prefopt.train\n"
            "assert prefopt.train.main.__module__ == 'prefopt.cli.train'\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_the_member_fan_out_wraps_the_single_run_it_is_handed(tmp_path):
    """run_members calls the single run it is given once per member (seed S + 1000·i, one directory
    each, the parent's on_start before the first member writes) and writes one RunSummary."""
    from conftest import compose
    from prefopt.run import members as M

    calls, events = [], []

    def train_one(cfg, out_dir, before_write):
        before_write()
        events.append("member")
        calls.append((int(cfg.seed), int(cfg.algo.ensemble_members), out_dir))
        return {"algo": "reward", "task": "reviews", "data": "reviews", "seed": int(cfg.seed), "model": "tiny",
                "params": {"beta": 0.0}, "steps": 2, "wall_time_s": 1.0, "gen_time_s": 0.0, "train_time_s": 0.5,
                "peak_mem_mb": 10.0, "eval": {"pairwise_accuracy": 0.5 + 0.1 * len(calls)}, "eval_split": "heldout_pairs",
                "cost": {"examples": 8, "policy_tokens": 100}, "config_hash": f"h{len(calls)}"}

    cfg = compose(["algo=reward", "algo.ensemble_members=2", "seed=3"])
    s = M.run_members(cfg, str(tmp_path / "ens"), 2, train_one, on_start=lambda: events.append("parent"))
    assert events == ["parent", "member", "member"]
    assert calls == [(3, 1, str(tmp_path / "ens" / "members" / "0")), (1003, 1, str(tmp_path / "ens" / "members" / "1"))]
    assert s["eval"]["pairwise_accuracy"] == pytest.approx(0.65) and s["steps"] == 4 and s["params"]["ensemble_members"] == 2
    assert [m["seed"] for m in s["members"]] == [3, 1003] and s["ensemble"]["paths"] is None  # no model/ written
    assert json.loads((tmp_path / "ens" / "summary.json").read_text()) == s
    assert [json.loads(r)["member"] for r in (tmp_path / "ens" / "metrics.jsonl").read_text().splitlines()] == [0, 1]
