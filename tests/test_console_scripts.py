"""Every console script in pyproject's [project.scripts] exits 0 on success.

pip's wrapper runs ``sys.exit(main())``: a main() that returns anything but None or 0 (a summary
dict, True) makes every successful run exit 1, printing what it returned to stderr, which breaks
``&&`` chains, ``set -e`` scripts and CI. Each script is run here the way the wrapper runs it, so the
test holds whether or not the package is installed."""

import importlib
import subprocess
import sys
import tomllib

import pytest
from conftest import ROOT
from short_runs import ENV

SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
# The cheapest successful invocation of each: prefopt-label's is the tiniest real labelling run.
LABEL_RUN = ["data=reviews", "judge=gold", "num_prompts=2", "samples_per_prompt=2"]


def _wrapper(name: str, args: list, cwd) -> subprocess.CompletedProcess:
    module, _, func = SCRIPTS[name].partition(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; sys.exit({func}())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, cwd=cwd,
                          timeout=300)


def _returned(name: str, args: list, monkeypatch):
    """What main() returns in process; a main that ends in ``sys.exit(0)`` counts as returning 0."""
    module, _, func = SCRIPTS[name].partition(":")
    monkeypatch.setattr(sys, "argv", [name, *args])
    try:
        return getattr(importlib.import_module(module), func)()
    except SystemExit as e:
        return e.code


def test_every_console_script_is_checked():
    assert set(SCRIPTS) == {"prefopt-train", "prefopt-leaderboard", "prefopt-label", "prefopt-export"}, (
        "a new console script: add its cheapest successful invocation to this file")


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_help_exits_zero(name, tmp_path, monkeypatch):
    p = _wrapper(name, ["--help"], tmp_path)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr and p.stdout.strip()
    assert _returned(name, ["--help"], monkeypatch) in (None, 0)


def test_a_successful_labelling_run_exits_zero(tmp_path, monkeypatch):
    out = tmp_path / "pairs.jsonl"
    p = _wrapper("prefopt-label", [*LABEL_RUN, f"out={out}"], tmp_path)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    assert "{'out'" not in p.stderr and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert out.read_text().count("\n") >= 1
    # in process: main() returns None, not the summary the wrapper would print and exit 1 on
    assert _returned("prefopt-label", [*LABEL_RUN, f"out={tmp_path / 'again.jsonl'}"], monkeypatch) in (None, 0)
    assert (tmp_path / "again.jsonl").exists()


def test_a_successful_export_exits_zero(tmp_path, monkeypatch):
    from short_runs import run_in_process

    run = tmp_path / "run"
    run_in_process(run, "model.lora.r=4", "trainer.max_steps=1")
    p = _wrapper("prefopt-export", [str(run), f"out={tmp_path / 'a.gguf'}"], tmp_path)
    assert p.returncode == 0 and "Traceback" not in p.stderr, (p.returncode, p.stderr[-2000:])
    assert (tmp_path / "a.gguf").stat().st_size > 0
    assert _returned("prefopt-export", [str(run), f"out={tmp_path / 'b.gguf'}"], monkeypatch) in (None, 0)
    assert (tmp_path / "b.gguf").exists()
