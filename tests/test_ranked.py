"""Ranked preference data: the format and its checks, the pairs a ranking implies, the reward model's
two ranked losses against float64 references written from the papers (value and gradient), and
short runs on ranked files and on the testbed's rankings."""

import json
import math
import random
from itertools import combinations

import pytest
import torch

from conftest import ROOT, compose
from data_files import cfg_for, make_tokenizer
from prefopt.run import train as run
from prefopt.core.errors import UserError
from prefopt.data.formats import detect_kind, prepare_rows
from prefopt.data.ranked import ordered_pairs, pairing_summary, ranks_of
from prefopt.data.tokenize import collate, tokenize_rows
from prefopt.objectives.reward import RewardModel
from short_runs import TRAIN_ONLY, cli, one_line_error

WORDS = "good bad great awful fine long short yes no ok sure story".split()


def ranked_row(K=4, ranks=None, **extra):
    return {"prompt": "the movie was", "completions": [f"{WORDS[j]} {WORDS[-1 - j]}" for j in range(K)],
            "ranks": ranks or list(range(1, K + 1)), **extra}


# ---- the format --------------------------------------------------------------------------------


def test_ranked_rows_are_detected_and_scores_become_competition_ranks():
    rows = [ranked_row()]
    assert detect_kind(rows) == "ranked"
    row = {"prompt": "p", "completions": ["a", "b", "c", "d"], "scores": [0.5, 2.0, 0.5, -1.0]}
    assert detect_kind([row]) == "ranked"
    assert ranks_of(row) == [2, 1, 2, 4]


BAD = {
    "not a permutation": ({"ranks": [1, 3, 3, 3]}, "ranks", "not a ranking"),
    "rank out of range": ({"ranks": [1, 2, 3, 5]}, "ranks", "1..4"),
    "rank zero": ({"ranks": [0, 1, 2, 3]}, "ranks", "1..4"),
    "a bool rank": ({"ranks": [True, 2, 3, 4]}, "ranks", "integers"),
    "too few ranks": ({"ranks": [1, 2, 3]}, "ranks", "3 ranks for 4 completions"),
    "K < 2": ({"completions": ["good"], "ranks": [1]}, "completions", "K >= 2"),
    "both ranks and scores": ({"scores": [1.0, 2.0, 3.0, 4.0]}, "ranks", "one of them"),
    "a non-finite score": ({"ranks": None, "scores": [1.0, float("nan"), 0.0, 2.0]}, "scores", "finite"),
    "a duplicate completion": ({"completions": ["good", "bad", "good", "fine"]}, "completions[2]", "identical"),
    "an empty completion": ({"completions": ["good", " ", "bad", "fine"]}, "completions[1]", "empty"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_ranked_rows_name_file_row_and_field(tmp_path, case):
    change, field, needle = BAD[case]
    bad = {**ranked_row(), **change}
    f = tmp_path / "ranked.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in [ranked_row(), bad]))
    cfg = compose(["data=hf", f"data.path={f}", "algo=reward", "trainer.progress=false"])
    with pytest.raises(UserError) as e:
        run(cfg, str(tmp_path / "run"))
    msg = str(e.value)
    assert "\n" not in msg and "ranked.jsonl" in msg and "row 1" in msg and f"field '{field}'" in msg, msg
    assert needle in msg, msg
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# Values datasets would cast while loading (a column's type is unified across rows): the error must
# name row 1 and the value as written in the file, not row 0's cast value or an accepted "1".
RAW = {
    "a float rank": ({"ranks": [1.5, 2, 3, 4]}, "ranks[0] = 1.5"),
    "a string rank": ({"ranks": ["1", 2, 3, 4]}, "ranks[0] = '1'"),
    "a string score": ({"ranks": None, "scores": ["1", 2, 3, 4]}, "scores[0] = '1'"),
    "ranks as a string": ({"ranks": "1234"}, "str ranks"),
}


@pytest.mark.parametrize("case", sorted(RAW))
def test_ranked_errors_name_the_real_row_and_the_value_as_written(tmp_path, case):
    change, needle = RAW[case]
    good = {**ranked_row(), **({"ranks": None, "scores": [4, 3, 2, 1]} if "scores" in change else {})}
    f = tmp_path / "ranked.jsonl"
    f.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n"
                         for r in [good, {**good, **change}]))
    cfg = compose(["data=hf", f"data.path={f}", "algo=reward", "trainer.progress=false"])
    with pytest.raises(UserError) as e:
        run(cfg, str(tmp_path / "run"))
    msg = str(e.value)
    assert "row 1" in msg and needle in msg, msg


def test_ties_are_accepted_in_both_conventions():
    for ranks in ([1, 2, 2, 4], [1, 2, 2, 3], [1, 1, 1, 1], [4, 3, 2, 1]):
        prepare_rows([ranked_row(ranks=ranks)], "ranked", cfg_for(), "data")


def test_a_bad_ranking_is_one_line_on_the_command_line(tmp_path):
    f = tmp_path / "ranked.jsonl"
    f.write_text(json.dumps(ranked_row(ranks=[2, 2, 4, 4])) + "\n")
    one_line_error(cli("data=hf", f"data.path={f}", "algo=reward", cwd=tmp_path), "ranked.jsonl", "row 0", "ranks")
    one_line_error(cli("data=hf", f"data.path={f}", "algo=dpo", "data.ranking_to_pairs=bogus", cwd=tmp_path),
                   "data.ranking_to_pairs", "all, best_vs_rest, adjacent")


# ---- the pairs a ranking implies ---------------------------------------------------------------


@pytest.mark.parametrize("ranks,counts", [
    ([1, 2, 3, 4], {"all": 6, "best_vs_rest": 3, "adjacent": 3}),
    ([3, 1, 4, 2], {"all": 6, "best_vs_rest": 3, "adjacent": 3}),
    ([1, 1, 3, 4], {"all": 5, "best_vs_rest": 4, "adjacent": 3}),
    ([1, 2, 2, 2], {"all": 3, "best_vs_rest": 3, "adjacent": 3}),
    ([1, 1], {"all": 0, "best_vs_rest": 0, "adjacent": 0}),
])
def test_pairings(ranks, counts):
    for mode, n in counts.items():
        pairs = ordered_pairs(ranks, mode)
        assert len(pairs) == n, (mode, pairs)
        assert all(ranks[w] < ranks[l] for w, l in pairs)
    assert set(ordered_pairs(ranks, "all")) == {(w, l) for w, l in combinations(range(len(ranks)), 2)
                                                 if ranks[w] < ranks[l]} | {(l, w) for w, l in combinations(range(len(ranks)), 2)
                                                                           if ranks[l] < ranks[w]}


def test_pair_methods_get_pairs_and_startup_counts_them():
    rows = [ranked_row(ranks=random.Random(i).sample(range(1, 5), 4)) for i in range(30)]
    assert pairing_summary(rows) == "ranked data: 30 prompts × C(4,2) = 180 pairs (data.ranking_to_pairs=all)"
    pairs = prepare_rows(rows, "paired", cfg_for(), "data")
    assert len(pairs) == 180
    i = 7
    got = {(p["chosen"], p["rejected"]) for p in pairs if p["_source_row"] == i}
    r = rows[i]
    assert got == {(r["completions"][w], r["completions"][l]) for w in range(4) for l in range(4)
                   if r["ranks"][w] < r["ranks"][l]}
    adj = prepare_rows(rows, "paired", cfg_for(ranking_to_pairs="adjacent"), "data")
    assert len(adj) == 90
    tied = [ranked_row(ranks=[1, 1, 3, 4])] * 2
    assert pairing_summary(tied, "best_vs_rest") == ("ranked data: 2 prompts (K=4) → 8 pairs "
                                                     "(data.ranking_to_pairs=best_vs_rest, 2 tied pairs skipped)")


def test_a_prompt_is_one_example_with_its_k_completions():
    tok = make_tokenizer()
    rows = [ranked_row(K=3), ranked_row(K=5, ranks=[2, 1, 2, 5, 4])]
    examples, _ = tokenize_rows(prepare_rows(rows, "ranked", cfg_for(), "d"), "ranked", tok, cfg_for(), "d")
    assert [len(ex["completions_ids"]) for ex in examples] == [3, 5]
    b = collate(examples, "ranked", tok.pad_token_id)
    assert b["completions_input_ids"].shape[0] == 8
    assert b["group"].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert b["rank"].tolist() == [1, 2, 3, 2, 1, 2, 5, 4]
    assert RewardModel(RewardModel.Config()).units(b) == 2


# ---- the losses, against float64 references ----------------------------------------------------


def bt_reference(r, ranks, c=0.0):
    """InstructGPT eq. 1 for one prompt: −1/|P| Σ_{ρ_w<ρ_l} log σ(r_w − r_l) (+ centring), in float64."""
    P = [(w, l) for w in range(len(r)) for l in range(len(r)) if ranks[w] < ranks[l]]
    nll = -sum(math.log(1.0 / (1.0 + math.exp(-(r[w] - r[l])))) for w, l in P) / len(P)
    return nll + c * sum((r[w] + r[l]) ** 2 for w, l in P) / len(P)


def pl_reference(r, ranks):
    """Plackett–Luce with Breslow ties: place each rank level, best first, among those left."""
    total, left = 0.0, list(range(len(r)))
    for lvl in sorted(set(ranks)):
        G = [k for k in left if ranks[k] == lvl]
        denom = sum(math.exp(r[j]) for j in left)
        total -= sum(r[k] for k in G) - len(G) * math.log(denom)
        left = [k for k in left if ranks[k] != lvl]
    return total


class FixedScorer:
    def __init__(self, r):
        self.r = r

    def scores(self, batch, side):
        assert side == "completions"
        return self.r


def _batch(groups):
    """A ranked batch of groups (rewards, ranks) of different sizes, flat."""
    r = [x for rs, _ in groups for x in rs]
    return ({"row": torch.arange(len(groups)),
             "group": torch.tensor([g for g, (rs, _) in enumerate(groups) for _ in rs]),
             "rank": torch.tensor([x for _, rk in groups for x in rk]),
             "completions_input_ids": torch.zeros(len(r), 1, dtype=torch.long)}, r)


def _check(loss_name, reference, groups, c=None):
    batch, r = _batch(groups)
    obj = RewardModel(RewardModel.Config(loss=loss_name, center_rewards_coefficient=c))
    rt = torch.tensor(r, dtype=torch.float64, requires_grad=True)
    L, _ = obj.loss(batch, FixedScorer(rt))
    ref = lambda rr: sum(reference(rr[sum(len(g[0]) for g in groups[:i]):][: len(groups[i][0])], groups[i][1])
                         for i in range(len(groups)))  # noqa: E731
    assert float(L.detach()) == pytest.approx(ref(r), rel=1e-10, abs=1e-12)
    (grad,) = torch.autograd.grad(L, rt)
    h = 1e-6
    fd = [(ref([x + h * (j == k) for j, x in enumerate(r)]) - ref([x - h * (j == k) for j, x in enumerate(r)])) / (2 * h)
          for k in range(len(r))]
    assert grad.tolist() == pytest.approx(fd, rel=1e-5, abs=1e-7)


def _random_groups(seed):
    g = random.Random(seed)
    out = []
    for K in (2, 3, 9, 4, 5):
        r = [g.gauss(0, 2) for _ in range(K)]
        ranks = [g.randint(1, K) for _ in range(K)]  # ties likely; any ranks induce an order
        if len(set(ranks)) == 1:
            ranks[0] = ranks[0] % K + 1
        out.append((r, ranks))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_bradley_terry_over_all_pairs_matches_float64(seed):
    _check("bradley_terry", bt_reference, _random_groups(seed))
    _check("bradley_terry", lambda rr, rk: bt_reference(rr, rk, 0.01), _random_groups(seed), c=0.01)


@pytest.mark.parametrize("seed", range(4))
def test_plackett_luce_matches_float64(seed):
    _check("plackett_luce", pl_reference, _random_groups(seed))


def test_two_completions_are_one_bradley_terry_pair_for_both_losses():
    for loss in ("bradley_terry", "plackett_luce"):
        batch, _ = _batch([([0.3, 1.7], [2, 1])])
        L, m = RewardModel(RewardModel.Config(loss=loss)).loss(batch, FixedScorer(torch.tensor([0.3, 1.7], dtype=torch.float64)))
        assert float(L) == pytest.approx(-math.log(1 / (1 + math.exp(-(1.7 - 0.3)))), rel=1e-12)
        assert m["accuracy"] == 1.0


def test_a_prompt_weighs_the_same_whatever_its_k():
    # Every pair equally wrong by 1: the per-prompt loss is one pair's loss, for K = 2 and K = 9.
    one = -math.log(1 / (1 + math.exp(1.0)))
    for K in (2, 9):
        r = torch.arange(K, dtype=torch.float64) * 0.0
        ranks = list(range(1, K + 1))
        batch, _ = _batch([([0.0] * K, ranks)])
        # r increasing with rank (the worst scored highest), differences all 1 for adjacent ones
        r = torch.arange(K, dtype=torch.float64)
        L, _ = RewardModel(RewardModel.Config()).loss(batch, FixedScorer(r))
        want = sum(-math.log(1 / (1 + math.exp(-(w - l)))) for w in range(K) for l in range(K) if w < l) / math.comb(K, 2)
        assert float(L) == pytest.approx(want, rel=1e-12)
        if K == 2:
            assert float(L) == pytest.approx(one, rel=1e-12)


def test_all_tied_prompts_are_dropped_and_only_ties_is_an_error():
    obj = RewardModel(RewardModel.Config())
    exs = [{"row": 0, "ranks": [1, 1, 1]}, {"row": 1, "ranks": [1, 2, 2]}]
    with pytest.warns(UserWarning, match="dropped 1 of 2"):
        assert obj.prepare_examples(exs, [{}, {}], "d") == exs[1:]
    with pytest.raises(UserError, match="ties"):
        obj.prepare_examples(exs[:1], [{}], "d")


def test_unknown_loss_lists_the_accepted_ones():
    with pytest.raises(UserError, match="bradley_terry, plackett_luce"):
        RewardModel.Config(loss="listnet")


# ---- runs --------------------------------------------------------------------------------------


def _ranked_file(tmp_path, n=24):
    g = random.Random(0)
    rows = [ranked_row(K=g.randint(2, 5)) for _ in range(n)]
    for r in rows:
        r["ranks"] = g.sample(range(1, len(r["completions"]) + 1), len(r["completions"]))
    f = tmp_path / "ranked.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f, sum(math.comb(len(r["completions"]), 2) for r in rows)


@pytest.mark.parametrize("loss", ["bradley_terry", "plackett_luce"])
def test_reward_model_trains_on_a_ranked_file(tmp_path, capsys, loss):
    f, n_pairs = _ranked_file(tmp_path)
    s = run(compose(["data=hf", f"data.path={f}", "algo=reward", f"algo.loss={loss}", "trainer.progress=false",
                     "trainer.max_steps=2", "trainer.examples_per_step=8", *TRAIN_ONLY]), str(tmp_path / "run"))
    out = capsys.readouterr().out
    assert f"24 prompts (K=2..5) → {n_pairs} pairs (trained as rankings" in " ".join(out.split())
    assert s["steps"] == 2


def test_dpo_trains_on_the_pairs_of_a_ranked_file(tmp_path, capsys):
    f, n_pairs = _ranked_file(tmp_path)
    run(compose(["data=hf", f"data.path={f}", "algo=dpo", "trainer.progress=false", "trainer.max_steps=1",
                 "trainer.examples_per_step=8", *TRAIN_ONLY]), str(tmp_path / "run"))
    out = " ".join(capsys.readouterr().out.split())
    assert f"{n_pairs} paired examples" in out and "data.ranking_to_pairs=all" in out


@pytest.mark.slow
def test_testbed_rankings_follow_the_gold_reward(tmp_path):
    from prefopt.testbed import world as W

    tb = W.TestbedConfig(task="reviews", pair_prompts=24, completions_per_prompt=4, label_temperature=0.0,
                         ranking=True)
    rows = W.ranked_rows(tb, W.sft_policy_path(tb))
    assert rows and all(2 <= len(r["completions"]) <= 4 for r in rows)
    for r in rows:
        g = r["gold"]
        assert r["ranks"] == [1 + sum(1 for x in g if x > v) for v in g]
    noisy = W.ranked_rows(W.TestbedConfig(task="reviews", pair_prompts=24, completions_per_prompt=4, ranking=True),
                          W.sft_policy_path(tb))
    assert any(r["ranks"] != [1 + sum(1 for x in r["gold"] if x > v) for v in r["gold"]] for r in noisy)
    s = run(compose(["data=reviews", "data.testbed.ranking=true", "data.testbed.completions_per_prompt=4",
                     "data.testbed.pair_prompts=64", "algo=reward", "trainer.max_steps=2", "trainer.progress=false"]),
            str(tmp_path / "run"))
    assert s["eval"]["pairwise_accuracy_gold"] is not None


def _readme_section():
    text = (ROOT / "README.md").read_text()
    return text.split("### Ranked data")[1].split("\n## ")[0]


@pytest.mark.slow
def test_the_readme_ranked_examples_run(tmp_path, monkeypatch):
    """The section's JSON row is valid ranked data, and each of its commands runs (shortened to a step)."""
    sec = _readme_section()
    row = json.loads(sec.split("```json\n")[1].split("\n```")[0])
    assert detect_kind([row]) == "ranked"
    (tmp_path / "my_rankings.jsonl").write_text(json.dumps(row) + "\n" + "".join(
        json.dumps({**row, "prompt": f"{row['prompt']} {i}"}) + "\n" for i in range(11)))
    monkeypatch.chdir(tmp_path)
    cmds = [l.split("#")[0].split() for l in sec.split("```bash\n")[1].split("\n```")[0].splitlines()]
    assert len(cmds) == 4
    for i, cmd in enumerate(cmds):
        assert cmd[0] == "prefopt-train"
        short = ["trainer.max_steps=1", "trainer.examples_per_step=4", *TRAIN_ONLY, "trainer.progress=false",
                 *(["data.testbed.pair_prompts=64"] if "data=reviews" in cmd else [])]
        s = run(compose([*cmd[1:], *short]), str(tmp_path / f"run{i}"))
        assert s["steps"] == 1


# ---- many pairs ------------------------------------------------------------------------------------


def _big_ranking(tmp_path, K=150):
    g = random.Random(0)
    row = {"prompt": "the movie was", "completions": [f"good {i}" for i in range(K)], "ranks": g.sample(range(1, K + 1), K)}
    f = tmp_path / "big.jsonl"
    f.write_text(json.dumps(row) + "\n")
    return f


def test_many_pairs_from_rankings_are_announced_before_they_are_made(tmp_path):
    import io

    from rich.console import Console

    from prefopt.core.config import DataConfig, ModelConfig
    from prefopt.run.prepare import prepare_data

    buf = io.StringIO()
    data = prepare_data(ModelConfig(), DataConfig(name="hf", path=str(_big_ranking(tmp_path))), "paired",
                        console=Console(file=buf, width=200))
    assert len(data.rows) == 150 * 149 // 2
    assert "making and tokenizing 11,175 pairs" in buf.getvalue(), buf.getvalue()


def test_pairs_beyond_memory_are_refused_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.setattr("prefopt.run.prepare.available_memory", lambda: 2**20)
    cfg = compose(["data=hf", f"data.path={_big_ranking(tmp_path)}", "algo=dpo", "trainer.progress=false"])
    with pytest.raises(UserError) as e:
        run(cfg, str(tmp_path / "run"))
    msg = str(e.value)
    assert "\n" not in msg and "11,175 pairs" in msg and "data.ranking_to_pairs=all" in msg, msg
    assert "data.ranking_to_pairs=best_vs_rest (149 pairs)" in msg and "algo=reward" in msg, msg
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_pair_counts_match_the_pairs_listed():
    from prefopt.data.ranked import pair_count

    for ranks in ([1, 2, 2, 4], [1, 1, 3, 4, 4], [3, 1, 2], [1, 1, 1]):
        for mode in ("all", "best_vs_rest", "adjacent"):
            assert pair_count(ranks, mode) == len(ordered_pairs(ranks, mode))


def test_ensemble_members_beyond_the_bound_are_refused():
    with pytest.raises(UserError, match=r"algo.ensemble_members=100000000000000000000; accepted: a whole number >= 1 and <= 1000"):
        RewardModel.Config(ensemble_members=10**20)
