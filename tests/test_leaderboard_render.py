"""Rendering from fixture results: table, plot and page; a missing field, a corrupt file, escaping."""

import json
import math
import os

from test_leaderboard_stats import rec

from prefopt.leaderboard import store
from prefopt.leaderboard.cli import main as cli_main
from prefopt.leaderboard.render import render


def fixture_results(d):
    rs = []
    for seed in (0, 1, 2):
        for beta, g, kl in ((0.1, 1.0, 5.0), (0.5, 0.6, 1.0)):
            rs.append(rec("dpo", seed, g + 0.1 * seed, kl + seed, sweep={"beta": beta}, suite="standard"))
        rs.append(rec("grpo", seed, 0.4 + 0.05 * seed, 2.0, reward="proxy", category="online", proxy=2.0 + seed,
                      suite="standard"))
        rs.append({**rec("best_of_n", seed, 0.3, 1.2, reward="proxy", category="baseline", suite="standard",
                         eval={"proxy_reward_ref": 1.0}),
                   "best_of_n": [{"n": n, "kl_to_ref": math.log(n) - (n - 1) / n, "gold_reward": 0.1 * n,
                                  "gold_reward_oracle": 0.15 * n, "proxy_reward": 1.0 + 0.2 * n, "repetition_rate": 0.1}
                                 for n in (1, 2, 4)]})
    # a method whose result lacks a field (no KL), and a name that must be escaped in HTML
    r = rec("<b>evil</b>", 0, 0.2, 1.0, suite="standard")
    del r["eval"]["kl_to_ref"]
    rs.append(r)
    rs.append(rec("kto", 0, 0.9, 3.0, suite="quick"))  # another suite: counted in the notes only
    for r in rs:
        store.write_result(d, r)
    store.write_result(d, {"config_hash": "failedrun", "status": "failed", "error": "UserError: <boom>",
                           "leaderboard": {"suite": "standard", "job": "reviews-s0-ppo"}})
    with open(os.path.join(d, "corrupt.json"), "w") as f:
        f.write('{"config_hash": "corrupt", "status": "ok", "eval": {"gold_rew')


def test_render_from_fixture_results(tmp_path):
    fixture_results(str(tmp_path / "results"))
    report = render(str(tmp_path))
    assert any("1 unreadable" in line for line in report) and any("corrupt.json" in line for line in report)
    md = (tmp_path / "LEADERBOARD.md").read_text()
    lines = {l.split(" | ")[0].lstrip("| "): l for l in md.splitlines() if l.startswith("| ")}
    # DPO at its best β (0.1), mean over 3 seeds with its bootstrap interval (3 seeds: [min, max]), bold as best
    assert "β=0.1 (of 0.1, 0.5)" in lines["dpo"] and "**1.100 [1.000, 1.200]**" in lines["dpo"]
    assert "π_SFT (reference)" in lines and "best-of-n" in md and "n=4" in md
    # the missing KL leaves that cell empty, the row is still there
    evil = lines["&lt;b&gt;evil&lt;/b&gt;"]  # escaped in the Markdown too (GitHub renders inline HTML)
    assert " — |" in evil and "0.200" in evil
    # gold at KL ≤ 1.0 (the standard suite's first budget): DPO's β=0.5 points have mean KL 2 -> none
    assert "gold @ KL≤1" in md
    assert "corrupt.json" in md and "failed: reviews-s0-ppo" in md and "suite `quick` not shown" in md
    png = (tmp_path / "frontier.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    page = (tmp_path / "index.html").read_text()
    assert "<b>evil</b>" not in page and "&lt;b&gt;evil&lt;/b&gt;" in page and "&lt;boom&gt;" in page
    assert "data:image/png;base64," in page and "<script>" in page and "http" not in page.split("<script>")[1]
    assert "src='http" not in page and 'src="http' not in page  # self-contained: no network


def test_render_cli_and_empty_store(tmp_path, capsys):
    try:
        cli_main(["render", f"dir={tmp_path}"])
    except SystemExit as e:
        assert e.code == 0
    assert "nothing to render" in capsys.readouterr().out
