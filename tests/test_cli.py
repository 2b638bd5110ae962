"""The command line: one-line errors, --cfg job, sweeps, outputs never overwritten."""

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def cli(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "prefopt.cli.train", *args], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=timeout)


def one_line_error(p, *needles):
    assert p.returncode != 0
    err = [l for l in p.stderr.strip().splitlines() if l.strip()]
    assert len(err) == 1, p.stderr
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def test_unknown_group_options_list_the_available_ones(tmp_path):
    one_line_error(cli("algo=nope", cwd=tmp_path), "unknown algo 'nope'", "dpo", "sft")
    one_line_error(cli("model=gpt9", cwd=tmp_path), "unknown model 'gpt9'", "llama3", "tiny")
    one_line_error(cli("data=nope", cwd=tmp_path), "unknown data 'nope'", "reviews", "arith", "hf")
    one_line_error(cli("-m", "algo=dpo,nope", cwd=tmp_path), "unknown algo 'nope'")


def test_wrong_type_or_unknown_key_fails_before_loading(tmp_path):
    one_line_error(cli("algo.beta=abc", cwd=tmp_path), "algo.beta")
    one_line_error(cli("+algo.bogus=1", cwd=tmp_path), "algo.bogus")
    one_line_error(cli("trainer.max_steps=many", cwd=tmp_path), "trainer.max_steps")
    one_line_error(cli("trainer.examples_per_step=10", "trainer.examples_per_device=4", cwd=tmp_path),
                   "examples_per_step=10")
    assert not os.path.exists(tmp_path / "outputs") or not any(
        os.path.exists(os.path.join(r, "metrics.jsonl")) for r, _, _ in os.walk(tmp_path / "outputs"))


def test_cfg_job_prints_the_composed_config(tmp_path):
    p = cli("--cfg", "job", "algo.beta=0.05", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "beta: 0.05" in p.stdout and "examples_per_step" in p.stdout


def test_existing_run_directory_is_never_overwritten(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"step": 1}\n')
    (d / "summary.json").write_text("{}")
    one_line_error(cli(f"hydra.run.dir={d}", cwd=tmp_path), "already holds a run")
    assert (d / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not (d / ".hydra").exists()


def test_bad_data_file_is_one_line(tmp_path):
    one_line_error(cli("data=hf", f"data.path={tmp_path}/missing.jsonl", cwd=tmp_path),
                   "missing.jsonl")
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    one_line_error(cli("data=hf", f"data.path={f}", cwd=tmp_path), "pairs.jsonl", "rejected")
