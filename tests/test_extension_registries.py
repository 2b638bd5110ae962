"""A new reward kind and a new judge, each one file that registers itself, used for real: the reward
through build_reward on a batch of completions, the judge through the win-rate path (and as
reward=judge); and the registries' one-line errors that list the valid names."""

import importlib
import sys
import textwrap

import pytest
import torch

from prefopt.core.errors import UserError
from prefopt.rollout import judges as J
from prefopt.rollout import rewards as R

REWARD_KIND = '''
from dataclasses import dataclass

import torch

from prefopt.rollout.rewards import RewardConfig, RewardSource, register


@dataclass
class LengthRewardConfig(RewardConfig):
    per_char: float = 1.0


@register("length_test")
class LengthReward(RewardSource):
    """per_char · len(completion), and the completions' mean length as an extra metric."""

    Config = LengthRewardConfig

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.name, self.per_char = "length", cfg.per_char

    @classmethod
    def check(cls, cfg):
        from prefopt.core.errors import UserError

        if cfg.per_char <= 0:
            raise UserError(f"reward.per_char={cfg.per_char}; accepted: > 0")

    def __call__(self, prompts, completions, **kw):
        v = torch.tensor([self.per_char * len(c) for c in completions], dtype=torch.float32)
        self.last_parts = {"reward/mean_length": v.mean().repeat(len(v))}
        return v
'''

JUDGE_KIND = '''
from dataclasses import dataclass

import torch

from prefopt.rollout.judges import Judge, JudgeConfig, register


@dataclass
class VowelJudgeConfig(JudgeConfig):
    name: str = "vowels_test"
    kind: str = "vowels_test"
    sure: float = 0.9  # P(a ≻ b) when a has more vowels


@register("vowels_test")
class VowelJudge(Judge):
    """Prefers the completion with more vowels: P = sure, 1 − sure, or ½ on a tie (pairwise only)."""

    Config = VowelJudgeConfig

    def __init__(self, cfg, ctx):
        super().__init__(cfg, ctx)
        self.sure = cfg.sure

    def compare(self, prompts, completions_a, completions_b, **kw):
        n = lambda t: sum(ch in "aeiou" for ch in t)  # noqa: E731
        return torch.tensor([self.sure if n(a) > n(b) else 1 - self.sure if n(a) < n(b) else 0.5
                             for a, b in zip(completions_a, completions_b)])
'''


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "my_length_reward.py").write_text(textwrap.dedent(REWARD_KIND))
    (folder / "my_vowel_judge.py").write_text(textwrap.dedent(JUDGE_KIND))
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("my_length_reward"), importlib.import_module("my_vowel_judge")
    finally:
        sys.path.remove(str(folder))
        R.REWARDS.pop("length_test", None)
        J.base.JUDGES.pop("vowels_test", None)
        sys.modules.pop("my_length_reward", None)
        sys.modules.pop("my_vowel_judge", None)


def test_a_new_reward_kind_scores_through_build_reward(kinds):
    mod, _ = kinds
    assert "length_test" in R.available()
    cfg = R.RewardConfig(kind="length_test", per_char=0.5, clip=1.5, missing_eos_penalty=0.25)
    assert isinstance(cfg, mod.LengthRewardConfig)
    reward = R.build_reward(cfg)
    total, parts = reward(["p", "p", "q"], ["ab", "abcdef", ""], finished=torch.tensor([True, True, False]),
                          with_terms=True)
    torch.testing.assert_close(total, torch.tensor([1.0, 1.5, -0.25]))  # 0.5·len, clipped, minus the EOS penalty
    torch.testing.assert_close(parts["reward/length"], torch.tensor([1.0, 3.0, 0.0]))
    assert "reward/mean_length" in parts and not reward.uses_model and reward.state_dict() == {"0": {}}
    assert reward.describe() == "clip(1·length − 0.25·[no EOS], ±1.5)"
    # a composed reward section of the new kind: typed against its own Config, its check called
    typed = R.reward_config({"name": "length_test", "kind": "length_test", "per_char": 2.0})
    assert isinstance(typed, mod.LengthRewardConfig) and typed.per_char == 2.0
    with pytest.raises(UserError, match=r"reward.per_char=-1.0; accepted: > 0"):
        R.build_reward(R.RewardConfig(kind="length_test", per_char=-1.0))
    with pytest.raises(UserError, match="unknown config key 'reward.path'"):
        R.reward_config({"kind": "length_test", "path": "x"})


def test_a_new_judge_ranks_through_the_win_rate_path(kinds):
    _, mod = kinds
    assert "vowels_test" in J.available() and "vowels_test" in J.options()
    judge = J.build_judge(J.JudgeConfig(kind="vowels_test", sure=0.75))
    assert isinstance(judge, mod.VowelJudge)
    assert judge.compare(["x"] * 3, ["aa", "b", "e"], ["b", "aa", "o"]).tolist() == [0.75, 0.25, 0.5]
    # K = 3 then K = 2: every unordered pair compared once, P_ji = 1 − P_ij
    mats, stats = J.preference_matrices(judge, ["x"] * 3 + ["y"] * 2, ["aaa", "a", "b", "e", "e"], [3, 2])
    torch.testing.assert_close(mats[0], torch.tensor([[0.5, 0.75, 0.75], [0.25, 0.5, 0.75], [0.25, 0.25, 0.5]]))
    torch.testing.assert_close(mats[1], torch.full((2, 2), 0.5))
    s = J.group_scores(judge, ["x"] * 3 + ["y"] * 2, ["aaa", "a", "b", "e", "e"])
    torch.testing.assert_close(s, torch.tensor([0.75, 0.5, 0.25, 0.5, 0.5]))
    # and as reward=judge, named by its kind (it has no conf/judge file), with a key of its own overridden
    reward = R.build_reward(R.RewardConfig(kind="judge", judge={"name": "vowels_test", "sure": 1.0}))
    v = reward(["x", "x", "y", "y"], ["oo", "z", "a", "e"], prompt_ids=[[1], [1], [2], [2]], completion_ids=[[3]] * 4)
    assert v.tolist() == [1.0, 0.0, 0.5, 0.5]


def test_registry_errors_list_the_valid_names():
    with pytest.raises(UserError) as e:
        R.build_reward(R.RewardConfig(kind="bogus"))
    msg = str(e.value)
    assert msg == f"reward.kind='bogus' is not known; accepted: {', '.join(R.available())}"
    assert "auto, function, model, sum, ensemble, judge" in msg
    with pytest.raises(UserError, match=r"^reward.kind='bogus' is not known; accepted: auto, function"):
        R.reward_config({"kind": "bogus"})
    with pytest.raises(UserError, match=r"^judge.kind='bogus' is not known; accepted: llm, model, function, gold"):
        J.judge_config({"kind": "bogus"})
    with pytest.raises(UserError) as e:
        R.build_reward(R.RewardConfig(kind="judge", judge={"name": "bogus"}))
    assert str(e.value) == f"reward.judge.name='bogus' is not a judge; accepted: {', '.join(J.options())}"
    assert str(e.value).startswith("reward.judge.name='bogus' is not a judge; accepted: function, gold, model, smollm2")
    # a key of another kind is refused with the kind's own keys
    with pytest.raises(UserError, match=r"'judge' has no key 'principles'; valid keys of 'judge': kind, name, sequences_per_device, "
                                        r"temperature"):
        J.judge_config({"name": "gold", "kind": "gold", "principles": "p"})


def test_the_registries_refuse_a_kind_that_does_not_fit():
    with pytest.raises(TypeError, match="must subclass RewardSource"):
        R.register("not_a_source_test")(object)
    with pytest.raises(ValueError, match="registered twice"):
        R.register("model")(R.ModelSource)
    with pytest.raises(TypeError, match="must subclass Judge"):
        J.register("not_a_judge_test")(object)
