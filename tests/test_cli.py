"""The command line (python -m prefopt.cli.train): --cfg job prints the composed config. What it
refuses, in one line, is in tests/test_bad_input_*.py."""

from short_runs import cli


def test_cfg_job_prints_the_composed_config(tmp_path):
    p = cli("--cfg", "job", "algo.beta=0.05", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "beta: 0.05" in p.stdout and "examples_per_step" in p.stdout
