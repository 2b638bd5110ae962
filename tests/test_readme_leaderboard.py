"""The README's leaderboard text is true: its table of what each suite runs matches conf/leaderboard/, the
numbers it quotes from the board are on the committed LEADERBOARD.md, and the statistics it names are the
board's."""

import math
import os
import re

import pytest

from prefopt.leaderboard.stats import min_detectable_tau
from prefopt.leaderboard.suite import load_suite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts) -> str:
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def _section(readme: str) -> str:
    return readme.split("\n## Leaderboard\n", 1)[1].split("\n## ", 1)[0]


def _suite_table(section: str) -> dict:
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    rows = rows[next(i for i, r in enumerate(rows) if r.startswith("| suite |")):]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    return {cells[0]: dict(zip(header, cells)) for cells in
            ([c.strip() for c in r.strip("|").split("|")] for r in rows[1:]) if cells[0] in ("standard", "smol", "ensemble")}


def _override(suite, key: str):
    """The last value of ``key=`` in the suite's common overrides and its reward-ensemble PG overrides."""
    found = None
    extra = suite.reward_ensemble.pg.overrides if suite.reward_ensemble else []
    for o in list(suite.common) + list(extra):
        if o.startswith(key + "="):
            found = o.split("=", 1)[1]
    return found


@pytest.mark.parametrize("name", ["standard", "smol", "ensemble"])
def test_the_suite_table_is_true_of_every_suite(name):
    row = _suite_table(_section(_read("README.md")))[name]
    s = load_suite(name)
    seeds, block = row["report seeds"].split(", ")
    assert int(seeds) == len(s.seeds)
    assert block == (f"block {s.seed_block}" if s.seed_block else "no block")
    assert int(row["tuning seeds"]) == len(s.tuning_seeds)
    tuned = bool(s.tuning_seeds) and s.exclude != ["*"]
    if tuned:
        n, span = row["learning rates per task"].split(", spanning ")
        for task in s.tasks:
            lrs = s.lrs(task)
            # "~30×": the 1–3 series' spans (30× or 33×) within 15%
            assert len(lrs) == int(n) and abs(max(lrs) / min(lrs) / float(span.strip("~×")) - 1) < 0.15
    else:
        assert row["learning rates per task"] == "fixed, not tuned"
    assert (row["coefficient grid"] == "yes") == (tuned and s.tune_coefficients)
    assert (row["grid edges extended"] == "yes") == (tuned and s.extend_grid_edges)
    every, steps = int(_override(s, "trainer.eval_every_steps")), int(_override(s, "trainer.max_steps") or 50)
    if every >= steps:
        assert row["validation curve"] == f"at the end ({steps} steps)"
    else:
        assert row["validation curve"] == f"every {every} of {steps} steps"
    redraws = row["a seed re-draws"]
    assert ("pairs" in redraws and "one set of pairs" not in redraws) == ("data.testbed.pair_seed" in s.seed_keys)
    assert ("π_SFT" in redraws) == ("data.testbed.sft_seed" in s.seed_keys)
    assert (row["pairs ablation"] == "yes") == (s.ablation is not None)


def test_the_standard_suite_has_a_fresh_pre_registered_block_of_at_least_five_seeds():
    s = load_suite("standard")
    assert s.seed_block and len(s.seeds) >= 5 and not set(s.seeds) & set(range(5))  # 0–4 served the earlier boards


def test_numbers_the_readme_quotes_are_the_boards():
    section = _section(_read("README.md"))
    board = _read("leaderboard", "LEADERBOARD.md")
    block = section.split("<!-- leaderboard:begin", 1)[1].split("<!-- leaderboard:end -->", 1)[0]
    block = block.split("-->", 1)[1]
    # every number of the compact copy is on the board (the copy is rendered from the same results)
    numbers = set(re.findall(r"-?\d+\.\d+", block))
    missing = sorted(n for n in numbers if n not in board)
    assert not missing, f"README numbers not on LEADERBOARD.md: {missing[:10]}"
    # the code version the README names is the board's
    for code in re.findall(r"code version `([0-9a-f]+)`", block):
        assert f"`{code}`" in board
    # what the prose says about the statistics
    prose = section.replace(block, "")
    assert "95% t-intervals" in prose and "Benjamini–Hochberg" in prose and "τ-b" in prose
    assert "bootstrap interval" not in prose and "P(row beats column)" not in prose
    n = len(load_suite("smol").methods)
    assert f"(with {n} methods, {min_detectable_tau(n):.2f})" in prose
    assert not math.isnan(min_detectable_tau(n))
