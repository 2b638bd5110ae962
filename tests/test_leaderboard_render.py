"""Rendering from fixture results: table, plot and page; a missing field, a corrupt file, escaping."""

import json
import math
import os

from test_leaderboard_stats import bon_rec, rec

from prefopt.leaderboard.suite import load_suite

from prefopt.leaderboard import store
from prefopt.leaderboard.cli import main as cli_main
from prefopt.leaderboard.render import render


def fixture_results(d):
    # the standard suite's own seed block (the board shows only its report, tuning and ablation seeds)
    suite = load_suite("standard")
    s0, s1, s2 = suite.seeds[:3]
    tune = suite.tuning_seeds[0]
    rs = []
    for beta, vg in ((0.1, 1.0), (0.5, 0.6)):
        rs.append(rec("dpo", tune, 0.0, 1.0, point={"lr": 1e-3, "beta": beta}, role="tuning", val=(vg, 1.0), suite="standard"))
    for i, seed in enumerate((s0, s1, s2)):
        rs.append(rec("dpo", seed, 1.0 + 0.1 * i, 5.0 + i, point={"lr": 1e-3, "beta": 0.1}, suite="standard"))
        rs.append(rec("grpo", seed, 0.4 + 0.05 * i, 2.0, reward="proxy", category="online", proxy=2.0 + i,
                      suite="standard", eval={"proxy_reward_ref": 1.0}))
        rs.append(bon_rec(seed, suite="standard"))
    # a method whose result lacks a field (no KL), and a name that must be escaped in HTML
    r = rec("<b>evil</b>", s0, 0.2, 1.0, suite="standard")
    del r["eval"]["kl_to_ref"]
    rs.append(r)
    rs.append(rec("kto", 0, 0.9, 3.0, suite="quick"))  # another suite: counted in the notes only
    rs.append(rec("dpo", s0, 9.9, 1.0, suite="standard", code="old"))  # another code version: not in a row
    rs.append({**rec("ipo", s0, 7.7, 1.0, suite="standard"), "result_version": 1})  # another result version: not read
    for r in rs:
        store.write_result(d, r)
    store.write_result(d, {"config_hash": "failedrun", "status": "failed", "error": "UserError: <boom>",
                           "leaderboard": {"suite": "standard", "job": "reviews-s0-ppo"}})
    with open(os.path.join(d, "corrupt.json"), "w") as f:
        f.write('{"config_hash": "corrupt", "status": "ok", "eval": {"gold_rew')


def test_render_from_fixture_results(tmp_path):
    fixture_results(str(tmp_path / "results"))
    report = render(str(tmp_path))
    # unreadable: the corrupt file, and the result of another result_version (its fields mean something else)
    assert any("2 unreadable" in line for line in report) and any("corrupt.json" in line for line in report)
    md = (tmp_path / "LEADERBOARD.md").read_text()
    main_table = md.split("### reviews: tuning")[0]
    lines = {l.split(" | ")[1]: l for l in main_table.splitlines() if l.startswith("| ") and l.count(" | ") > 3}
    # DPO at its validation-chosen configuration, test mean over 3 seeds with its t-interval (1.1 ± 4.3027·0.1/√3),
    # bold as the best mean, "best" in the comparison column
    assert "β=0.1 lr=0.001" in lines["dpo"] and "**1.100 [0.852, 1.348]**" in lines["dpo"]
    assert lines["dpo"].startswith("| best |")
    # the pre-registration check: the fixture's results carry no finish time, so they are not counted as pre-registered
    assert f"Report seeds: block {load_suite('standard').seed_block}" in md and "not pre-registered" in md
    assert "π_SFT (reference)" in lines and "best-of-n" in md and "n=2" in md
    # the grid line shows validation numbers and marks the pick
    assert "dpo: β=0.1 lr=0.001: 1.000 (mean 1.000, KL 1.00)★" in md
    # the missing KL leaves that cell empty, the row is still there
    evil = lines["&lt;b&gt;evil&lt;/b&gt;"]  # escaped in the Markdown too (GitHub renders inline HTML)
    assert " — |" in evil and "0.200" in evil
    assert "val. gold @ KL≤1" in md and "row − column" in md and "sanity checks" in md
    assert "Code version `c1`" in md and "CPU capability **AVX2**" in md and "code version `old`" in md
    assert "9.900" not in md and "7.700" not in md  # the other code version's and protocol's numbers are nowhere
    assert "result_version 1; this code reads version 2 only" in md
    assert "corrupt.json" in md and "failed: reviews-s0-ppo" in md and "suite `quick` not shown" in md
    png = (tmp_path / "frontier.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    page = (tmp_path / "index.html").read_text()
    assert "<b>evil</b>" not in page and "&lt;b&gt;evil&lt;/b&gt;" in page and "&lt;boom&gt;" in page
    assert "data:image/png;base64," in page and "<script>" in page and "http" not in page.split("<script>")[1]
    assert "src='http" not in page and 'src="http' not in page  # self-contained: no network


def test_render_keeps_the_readme_table_in_step(tmp_path):
    fixture_results(str(tmp_path / "board" / "results"))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nbefore\n<!-- leaderboard:begin (note) -->\nold table\n<!-- leaderboard:end -->\nafter\n")
    report = render(str(tmp_path / "board"))
    text = readme.read_text()
    assert any("updated the compact table" in line for line in report)
    assert "old table" not in text and text.startswith("# x\n\nbefore\n<!-- leaderboard:begin (note) -->\n")
    assert text.endswith("<!-- leaderboard:end -->\nafter\n")
    block = text.split("(note) -->\n")[1].split("<!-- leaderboard:end")[0]
    dpo = next(l for l in block.splitlines() if l.startswith("| best | dpo |"))
    assert "β=0.1 lr=0.001" in dpo and "**1.100 [0.852, 1.348]**" in dpo and "| 3 |" in dpo  # 3 report seeds
    assert "code version `c1`" in block and "AVX2" in block and "9.900" not in block
    # a README without the markers is left as it is
    readme.write_text("no markers\n")
    render(str(tmp_path / "board"))
    assert readme.read_text() == "no markers\n"


def test_render_cli_and_empty_store(tmp_path, capsys):
    try:
        cli_main(["render", f"dir={tmp_path}"])
    except SystemExit as e:
        assert e.code == 0
    assert "nothing to render" in capsys.readouterr().out


def test_a_pick_on_the_edge_of_its_learning_rate_grid_is_marked():
    from types import SimpleNamespace

    from prefopt.leaderboard.tables import _edge

    row = SimpleNamespace(grid=[{"point": {"lr": lr, "beta": b}} for lr in (1e-4, 3e-4, 1e-3) for b in (0.1, 0.5)])
    assert _edge(row, {"lr": 1e-3, "beta": 0.1}) == " (lr: top of its grid)"
    assert _edge(row, {"lr": 1e-4, "beta": 0.5}) == " (lr: bottom of its grid)"
    assert _edge(row, {"lr": 3e-4, "beta": 0.5}) == ""
    # two learning rates: every pick is on an edge, so none is marked
    assert _edge(SimpleNamespace(grid=row.grid[:4]), {"lr": 3e-4}) == ""


def test_cost_counts_the_stretches_a_suite_ran_in():
    """A suite resumed across sessions: elapsed time is the time its runs ran (the union of their spans), and
    the pauses between sessions are counted as stretches, not as time."""
    from prefopt.leaderboard.tables import tier_cost

    at = lambda h, m: f"2026-12-0{1 + h // 24}T{h % 24:02d}:{m:02d}:00+00:00"  # noqa: E731
    # two parallel runs of 10 min ending 10:10, one of 10 min ending 10:25 (gap 5 min), then a next session at 20:00
    recs = [{"wall_time_s": 600, "finished_at": at(10, 10)}, {"wall_time_s": 600, "finished_at": at(10, 10)},
            {"wall_time_s": 600, "finished_at": at(10, 25)}, {"wall_time_s": 1200, "finished_at": at(20, 20)}]
    line = tier_cost(recs)
    assert line.startswith("4 runs, 50 min of job time, 45 min elapsed in 2 stretches") and "sessions" in line
    assert tier_cost(recs[:3]) == "3 runs, 30 min of job time, 25 min elapsed"
    assert tier_cost([{"wall_time_s": 60, "finished_at": None}]) == "1 runs, 1 min of job time"
