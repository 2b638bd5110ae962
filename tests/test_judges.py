"""Judges (prefopt.label): the LLM judge's order-averaged verdict and the win-rate group scores against
float64 references, the batched LLM judge against one unpadded forward per prompt, the pointwise
judges' Bradley–Terry form, and reward=judge as a per-completion reward."""

import math
import os

import pytest
import torch

from prefopt.core.errors import UserError
from prefopt.rollout import judges as J
from prefopt.rollout.judges.llm import LLMJudge, order_averaged
from prefopt.label.pairs import choose, distinct


def _ref_p(za, zb):
    """exp-normalised probability of the first answer token, in float64 by hand."""
    ea, eb = math.exp(za), math.exp(zb)
    return ea / (ea + eb)


def test_order_averaged_verdict_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    V = 40
    logits_ab = torch.randn(64, V, generator=g) * 4
    logits_ba = torch.randn(64, V, generator=g) * 4
    idA, idB = 7, 31
    p1, p2 = order_averaged(logits_ab[:, [idA, idB]], logits_ba[:, [idA, idB]])
    P = 0.5 * (p1 + p2)
    for n in range(64):
        a, b = logits_ab[n].double().tolist(), logits_ba[n].double().tolist()
        # a in slot A: P("A"); a in slot B: P("B"), each renormalised over {A, B}
        want = 0.5 * (_ref_p(a[idA], a[idB]) + _ref_p(b[idB], b[idA]))
        assert float(P[n]) == pytest.approx(want, abs=1e-6)
    # antisymmetric: swapping a and b swaps the two orders
    q1, q2 = order_averaged(logits_ba[:, [idA, idB]], logits_ab[:, [idA, idB]])
    torch.testing.assert_close(0.5 * (q1 + q2), 1 - P, atol=1e-6, rtol=0)


def test_a_judge_that_always_picks_slot_a_says_one_half():
    z = torch.tensor([[5.0, -3.0]] * 4)
    p1, p2 = order_averaged(z, z)
    torch.testing.assert_close(0.5 * (p1 + p2), torch.full((4,), 0.5))


def test_win_rates_match_float64_reference():
    g = torch.Generator().manual_seed(1)
    for K in (2, 3, 5):
        U = torch.rand(K, K, generator=g, dtype=torch.float64)
        P = torch.triu(U, 1) + torch.tril(1 - U.T, -1) + 0.5 * torch.eye(K, dtype=torch.float64)
        s = J.win_rates(P.float())
        want = [sum(float(P[i, j]) for j in range(K) if j != i) / (K - 1) for i in range(K)]
        assert s.tolist() == pytest.approx(want, abs=1e-6)
        assert float(s.mean()) == pytest.approx(0.5, abs=1e-6)  # soft wins and losses add up
    assert J.win_rates(torch.full((1, 1), 0.5)).tolist() == [0.5]


def test_bradley_terry_soft_and_hard():
    a, b = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0])
    torch.testing.assert_close(J.bradley_terry(a, b, 0.5), torch.sigmoid((a - b) / 0.5))
    assert J.bradley_terry(a, b, 0.0).tolist() == [1.0, 0.5, 0.0]


def test_gold_and_function_judges_and_group_scores():
    gold = lambda ps, cs: [float(len(c)) for c in cs]  # noqa: E731
    judge = J.build_judge(J.JudgeConfig(name="gold", kind="gold", temperature=0.0), gold_fn=gold)
    assert judge.compare(["p", "p", "p"], ["aaa", "a", "a"], ["a", "b", "bbb"]).tolist() == [1.0, 0.5, 0.0]
    # groups from runs of equal prompts: ["x"]*3 then ["y"]*2
    s = J.group_scores(judge, ["x", "x", "x", "y", "y"], ["a", "bbb", "cc", "dd", "dd"])
    assert s.tolist() == [0.0, 1.0, 0.5, 0.5, 0.5]
    fj = J.build_judge(J.JudgeConfig(name="function", kind="function", function="prefopt.testbed.rewards:arith_exact_match",
                                     temperature=0.0))
    assert fj.compare(["2+3=", "2+3="], ["5", "6"], ["6", "6"]).tolist() == [1.0, 0.5]


def test_consecutive_groups():
    assert J.consecutive_groups([1, 1, 2, 2, 2, 1, 3]) == [2, 3, 1, 1]
    assert J.consecutive_groups([]) == []


def test_pairs_best_vs_worst_and_all():
    P = torch.tensor([[0.5, 0.9, 0.6], [0.1, 0.5, 0.5], [0.4, 0.5, 0.5]])
    rows, ties, s = choose(P, "best_vs_worst")
    assert rows == [(0, 1, pytest.approx(0.9))] and ties == 0
    rows, ties, _ = choose(P, "all")
    assert rows == [(0, 1, pytest.approx(0.9)), (0, 2, pytest.approx(0.6))] and ties == 1
    assert choose(torch.full((2, 2), 0.5), "best_vs_worst")[:2] == ([], 1)
    assert distinct(["a", " ", "b", "a ", "c"]) == [0, 2, 4]


# ---- the LLM judge on a tiny random chat model (the path SmolLM2 takes) ----------------------------


@pytest.fixture(scope="module")
def tiny_judge_dir(tmp_path_factory):
    from gguf_files import save_tiny_chat_model

    return save_tiny_chat_model(str(tmp_path_factory.mktemp("judge")), seed=3)


def test_llm_judge_batched_verdict_equals_unpadded_forwards(tiny_judge_dir):
    judge = J.build_judge(J.JudgeConfig(name="tiny", kind="llm", path=tiny_judge_dir, principles="Be right.",
                                        sequences_per_device=3))
    prompts = ["What is 7+5?", "the movie was", "What is 9*3?", "Paris is"]
    a = ["12", "good and the plot was great", "27", "the capital of France."]
    b = ["13 is the answer", "bad", "twenty", "a city"]
    p1, p2 = judge.verdicts(prompts, a, b)
    A, B = judge.letter_ids
    for n in range(len(prompts)):
        with torch.no_grad():
            z1 = judge.model(torch.tensor([judge.prompt_ids(prompts[n], a[n], b[n])])).logits[0, -1].double()
            z2 = judge.model(torch.tensor([judge.prompt_ids(prompts[n], b[n], a[n])])).logits[0, -1].double()
        assert float(p1[n]) == pytest.approx(_ref_p(float(z1[A]), float(z1[B])), abs=1e-5)
        assert float(p2[n]) == pytest.approx(_ref_p(float(z2[B]), float(z2[A])), abs=1e-5)
    P = judge.compare(prompts, a, b)
    torch.testing.assert_close(P, 0.5 * (p1 + p2))
    torch.testing.assert_close(judge.compare(prompts, b, a), 1 - P, atol=1e-5, rtol=0)
    # group scores: one call, each unordered pair asked once, both orders
    mats, stats = J.preference_matrices(judge, ["q"] * 3, ["x", "yy", "zzz"], [3])
    assert stats["pairs"] == 3 and 0 <= stats["order_disagreement"] <= 1
    torch.testing.assert_close(mats[0] + mats[0].T, torch.ones(3, 3))


def test_llm_judge_from_a_gguf_file(tmp_path, monkeypatch):
    from gguf_files import bpe_tokenizer, tiny_llama, write_gguf

    tok = bpe_tokenizer()
    path = str(tmp_path / "judge.gguf")
    write_gguf(path, tiny_llama(len(tok), seed=4), tok)
    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path / "cache"))  # the dequantized copy goes here
    judge = J.build_judge(J.JudgeConfig(name="g", kind="llm", path=path, principles="Be brief."))
    p = judge.compare(["Paris is"], ["the capital"], ["a city"])
    assert p.shape == (1,) and 0 < float(p) < 1


@pytest.mark.parametrize("cfg,needle", [
    (dict(kind="llm", path="/no/such/dir"), "judge.path: '/no/such/dir' does not exist"),
    (dict(kind="llm", path=os.path.dirname(__file__)), "is not a model directory"),
    (dict(kind="llm", path=__file__), "not a .gguf file"),
    (dict(kind="llm", gguf_package="no_such_pkg_xyz", gguf_file="x.gguf"), "no_such_pkg_xyz is not installed"),
    (dict(kind="llm", path=None, gguf_package=None), "needs judge.path"),
    (dict(kind="model", path=None), "needs judge.path=DIR"),
    (dict(kind="model", path="/no/such"), "is not a directory"),
    (dict(kind="function", function="nope"), "MODULE:FUNCTION"),
    (dict(kind="bogus"), "accepted: llm, model, function, gold"),
    (dict(kind="gold", temperature=-1.0), "judge.temperature=-1.0"),
])
def test_bad_judges_are_one_line_user_errors(cfg, needle):
    with pytest.raises(UserError) as e:
        J.build_judge(J.JudgeConfig(name="x", principles="p", **cfg))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_an_llm_judge_needs_principles_and_a_model(tmp_path):
    with pytest.raises(UserError, match="principles is empty"):
        J.check(J.JudgeConfig(kind="llm", path=str(tmp_path), principles=" "))
    with pytest.raises(UserError, match="principles_file: cannot read"):
        J.check(J.JudgeConfig(kind="llm", path=str(tmp_path), principles_file=str(tmp_path / "none.txt")))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="cannot load the judge model"):
        J.build_judge(J.JudgeConfig(name="broken", kind="llm", path=str(tmp_path), principles="p"))
    with pytest.raises(UserError, match="is not a judge; accepted: function, gold, model, smollm2"):
        J.resolve({"name": "nope"})


def test_principles_file_replaces_the_text(tmp_path, tiny_judge_dir):
    f = tmp_path / "constitution.txt"
    f.write_text("Prefer the shorter answer.\n")
    judge = J.build_judge(J.JudgeConfig(kind="llm", path=tiny_judge_dir, principles="ignored", principles_file=str(f)))
    assert judge.principles == "Prefer the shorter answer."
    assert "Prefer the shorter answer." in judge.tok.decode(judge.prompt_ids("x", "a", "b"))


def test_judge_reward_scores_each_sample_within_its_prompt():
    from prefopt.rollout.rewards import RewardConfig, build_reward

    gold = lambda ps, cs: [float(len(c)) for c in cs]  # noqa: E731
    r = build_reward(RewardConfig(name="judge", kind="judge", judge={"name": "gold"}), gold_fn=gold)
    # two prompts × 2 samples (ids give the groups), then a lone sample (a greedy baseline): ½
    v = r(["p", "p", "q", "q", "r"], ["a", "bb", "cc", "c", "zz"], prompt_ids=[[1], [1], [2], [2], [3]],
          completion_ids=[[5]] * 5)
    assert v.tolist() == [0.0, 1.0, 1.0, 0.0, 0.5]
    with pytest.raises(UserError, match="reward.judge.name='nope'"):
        build_reward(RewardConfig(name="judge", kind="judge", judge={"name": "nope"}))
    with pytest.raises(UserError, match="reward.judge=gold needs a testbed task"):
        build_reward(RewardConfig(name="judge", kind="judge", judge={"name": "gold"}))
