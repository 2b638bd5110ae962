"""The supervised warm start on an environment's demonstrations (prefopt.rollout.envs.demonstrations): one SFT row
per assistant turn, each rendered exactly as the episode runner renders that point of an episode."""

import pytest

from prefopt.core.errors import UserError
from prefopt.rollout.envs.arith_retry import ArithRetry
from prefopt.rollout.envs.base import env_config
from prefopt.rollout.envs.calculator import Calculator, CalculatorConfig
from prefopt.rollout.envs.demonstrations import demonstration_rows


def test_the_calculator_demonstrates_a_right_episode():
    env = Calculator(CalculatorConfig())
    demo = env.demonstration({"prompt_text": "What is 47+38?"})
    assert [m["role"] for m in demo] == ["assistant", "tool", "assistant"]
    msgs = env.reset({"prompt_text": "What is 47+38?"})
    r1 = env.step(msgs + demo[:1])  # the environment answers the demonstrated call with the demonstrated result
    assert r1.messages == [demo[1]] and r1.info["tool_call"]
    r2 = env.step(msgs + demo)  # and rewards the demonstrated answer
    assert r2.messages is None and r2.reward == 1.0
    assert Calculator(CalculatorConfig(result_role="user")).demonstration({"prompt_text": "What is 9-14?"})[1] == \
        {"role": "user", "content": "-5"}


def test_an_environment_without_demonstrations_is_one_line():
    env = ArithRetry(env_config({"name": "arith_retry"}))
    with pytest.raises(UserError, match="env=arith_retry has no demonstrations"):
        demonstration_rows(env, [{"prompt_text": "1+2="}], tokenizer=None)


@pytest.mark.slow
def test_smollm2_demonstration_rows_tokenize_as_the_episode_runner_renders():
    """Each row's prompt ⧺ completion, tokenized by the SFT data path, is the episode's token sequence up to and
    including that assistant turn's EOS: the warm start trains the policy's turns in the very contexts RL samples them."""
    from test_smollm2 import SMOL

    from prefopt.core.config import DataConfig
    from prefopt.data.tokenize import tokenize_rows
    from prefopt.models import gguf
    from prefopt.models.load import load_tokenizer
    from prefopt.rollout.episodes import _prompt_ids, env_tokens

    tok = load_tokenizer(gguf.checkpoint_dir(SMOL))
    env = Calculator(CalculatorConfig())
    rows = demonstration_rows(env, [{"row": 0, "prompt_text": "What is 47+38?"}], tok)
    assert len(rows) == 2 and rows[0]["prompt"][0]["role"] == "system"  # the fallback tool description
    examples, _ = tokenize_rows(rows, "demonstrations", tok,
                                DataConfig(max_length=512, max_prompt_length=448), "demo")
    # the episode, rebuilt with the episode runner's own pieces
    msgs = rows[0]["prompt"]
    demo = env.demonstration({"prompt_text": "What is 47+38?"})
    turn = lambda m: tok(m["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]  # noqa: E731
    episode = _prompt_ids(tok, msgs) + turn(demo[0])
    assert examples[0]["prompt_ids"] + examples[0]["completion_ids"] == episode
    episode += env_tokens(tok, msgs + demo[:1], demo[1:2], "calculator") + turn(demo[2])
    assert examples[1]["prompt_ids"] + examples[1]["completion_ids"] == episode


def test_sft_with_an_environment_is_its_warm_start_and_other_offline_methods_are_refused(run_cfg):
    with pytest.raises(UserError, match="env=arith_retry has no demonstrations"):
        run_cfg("algo=sft", "data=arith", "env=arith_retry", "trainer.max_steps=1")
    with pytest.raises(UserError, match="env=arith_retry runs multi-turn episodes as rollouts, and algo=dpo"):
        run_cfg("algo=dpo", "data=arith", "env=arith_retry", "trainer.max_steps=1")
