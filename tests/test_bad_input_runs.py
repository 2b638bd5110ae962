"""A refused run leaves what is on disk alone: an existing run directory (in process and on the
command line), a resume under another config, a rerun into a finished run or a sweep directory.
Each refusal is one line, and nothing in the directory is overwritten."""

import os

import pytest

from conftest import compose
from prefopt.run import train as run
from prefopt.core.errors import UserError
from short_runs import SHORT, cli, cli_main, one_line_error, run_in_process


def test_existing_output_directory_is_left_alone(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("keep\n")
    with pytest.raises(UserError, match="already holds a run"):
        run(compose([]), str(out))
    assert (out / "metrics.jsonl").read_text() == "keep\n"


def test_existing_run_directory_is_never_overwritten(tmp_path):
    d = tmp_path / "old"
    d.mkdir()
    (d / "metrics.jsonl").write_text('{"step": 1}\n')
    (d / "summary.json").write_text("{}")
    one_line_error(cli(f"hydra.run.dir={d}", cwd=tmp_path), "already holds a run")
    assert (d / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not (d / ".hydra").exists()


def test_resume_with_a_different_config_is_refused(tmp_path):
    out = tmp_path / "run"
    run_in_process(out, "trainer.save_every_steps=2", "trainer.max_steps=2")
    before = {p: open(os.path.join(r, p), "rb").read() for r, _, fs in os.walk(out) for p in fs}
    with pytest.raises(UserError) as e:
        run_in_process(out, "trainer.save_every_steps=2", "trainer.max_steps=4", "algo=ipo", "trainer.resume=auto")
    msg = str(e.value)
    assert "algo.name: 'dpo' -> 'ipo'" in msg and "trainer.max_steps" in msg and "resume_allow_config_change" in msg, msg
    assert {p: open(os.path.join(r, p), "rb").read() for r, _, fs in os.walk(out) for p in fs} == before
    # Asked for explicitly, the resume goes on.
    s = run_in_process(out, "trainer.save_every_steps=2", "trainer.max_steps=4", "trainer.resume=auto",
                       "trainer.resume_allow_config_change=true")
    assert s["steps"] == 4


@pytest.mark.slow  # four CLI processes (~20 s)
def test_refused_rerun_leaves_hydra_files_alone(tmp_path):
    out = tmp_path / "run"
    p = cli_main(*SHORT, "trainer.max_steps=2", "trainer.save_every_steps=2", f"hydra.run.dir={out}", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    hydra_files = {n: (out / ".hydra" / n).read_bytes() for n in os.listdir(out / ".hydra")}
    assert {"config.yaml", "overrides.yaml", "hydra.yaml", "resolved.yaml"} <= set(hydra_files)
    for bad in (["data=hf", f"data.path={tmp_path}/missing.jsonl"], ["algo=ipo"]):
        p = cli_main(*SHORT, "trainer.max_steps=2", "trainer.save_every_steps=2", f"hydra.run.dir={out}",
                     "trainer.resume=auto", *bad, cwd=tmp_path)
        assert p.returncode == 2
        one_line_error(p)
        assert {n: (out / ".hydra" / n).read_bytes() for n in os.listdir(out / ".hydra")} == hydra_files, bad
    # A refused new run leaves no directory behind (Hydra made it, with an empty job log).
    p = cli_main("eval.num_prompts=0", f"hydra.run.dir={tmp_path}/fresh", cwd=tmp_path)
    one_line_error(p, "eval.num_prompts")
    assert not (tmp_path / "fresh").exists()
    # A sweep into a directory that holds one is refused before Hydra rewrites its multirun.yaml.
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text("keep\n")
    p = cli_main("-m", "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    one_line_error(p, "already holds a sweep")
    assert (sweep / "multirun.yaml").read_text() == "keep\n" and os.listdir(sweep) == ["multirun.yaml"]
