"""Tools for environments: transformers' JSON schema, one line of error text for every way a call can
fail (the run never stops), a calculator that parses arithmetic itself, and the two renderings."""

import pathlib
import re
import time

import pytest

from prefopt.core.errors import UserError
from prefopt.rollout.envs.arithmetic import ArithmeticSyntaxError, evaluate
from prefopt.rollout.envs.calculator import Calculator, CalculatorConfig, calculate, question_value
from prefopt.rollout.envs.tools import (FALLBACK_HEADER, find_tool_call, run_tool_call, template_supports_tools,
                                        tool_schema, with_tools_prompt)


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


def slow(seconds: float) -> str:
    """Sleep, then answer.

    Args:
        seconds: How long.
    """
    time.sleep(seconds)
    return "late"


def broken(x: str) -> str:
    """Always fails.

    Args:
        x: Anything.
    """
    raise RuntimeError("disk on fire\nand a second line")


TOOLS = {"add": add, "slow": slow, "broken": broken}


def test_schema_is_transformers_own():
    from transformers.utils import get_json_schema

    s = tool_schema(calculate)
    assert s == get_json_schema(calculate)
    assert s["function"]["name"] == "calculate" and s["function"]["parameters"]["required"] == ["expression"]

    def undocumented(x):
        return x

    with pytest.raises(UserError, match=r"tool 'undocumented' cannot be described"):
        tool_schema(undocumented)


@pytest.mark.parametrize("call,expect", [
    ('{"name": "add", "arguments": {"a": 2, "b": 40}}', "42"),
    ('{"name": "add", "arguments": {"a": 2}}', "error: bad arguments for add: TypeError: "),
    ('{"name": "add", "arguments": [2, 40]}', "error: the arguments of add must be a JSON object"),
    ('{"name": "sub", "arguments": {}}', "error: unknown tool 'sub'; available: add, broken, slow"),
    ('{"name": "add", "arguments": {"a": 2, ', "error: the tool call is not valid JSON"),
    ('["add"]', 'error: a tool call is {"name": NAME, "arguments": {...}}'),
    ('{"name": "broken", "arguments": {"x": "y"}}', "error: broken failed: RuntimeError: disk on fire"),
    ('{"name": "slow", "arguments": {"seconds": 5}}', "error: slow did not return within 0.2 s"),
])
def test_tool_failures_are_one_line_of_text(call, expect):
    t0 = time.perf_counter()
    out = run_tool_call(TOOLS, call, timeout_s=0.2)
    assert out.startswith(expect) and "\n" not in out, out
    assert time.perf_counter() - t0 < 2  # the timeout holds


def test_finding_tool_calls():
    assert find_tool_call("sure <tool_call> {\"name\": \"add\"} </tool_call> ok") == '{"name": "add"}'
    assert find_tool_call('<tool_call>{"name": "add"') == '{"name": "add"'  # cut at the token limit
    assert find_tool_call("the answer is 85") is None


@pytest.mark.parametrize("expr,value", [("47+38", "85"), ("2*(3+4)-5/2", "11.5"), ("-(-3)", "3"), (" 1 / 3 ", "0.333333"),
                                        ("99*99", "9801")])
def test_calculator_arithmetic(expr, value):
    assert calculate(expr) == value


@pytest.mark.parametrize("expr", ["__import__('os').system('echo hi')", "2**8", "1/0", "x+1", "(1", "", "9" * 300,
                                  "(" * 40 + "1" + ")" * 40, "99999999*99999999*99999999", "[1]"])
def test_calculator_refuses_anything_but_arithmetic(expr):
    out = calculate(expr)
    assert out.startswith("error: ") and "\n" not in out, out
    with pytest.raises(ArithmeticSyntaxError):
        evaluate(expr)


def test_no_model_output_is_executed():
    """No eval / exec / pickle in the environments' code (the calculator parses arithmetic itself)."""
    root = pathlib.Path(__file__).resolve().parents[1] / "prefopt" / "rollout"
    for path in [*root.glob("envs/*.py"), root / "episodes.py"]:
        text = path.read_text()
        assert not re.search(r"(?<![\w.])(eval|exec|compile|__import__)\s*\(|pickle", text), path


def test_calculator_env_tool_call_then_answer():
    env = Calculator(CalculatorConfig())
    assert question_value("What is 47+38?") == 85 and question_value("What is 5-9?") == -4
    m = env.reset({"row": 0, "prompt_text": "What is 47+38?"})
    r = env.step(m + [{"role": "assistant", "content":
                       '<tool_call>{"name": "calculate", "arguments": {"expression": "47+38"}}</tool_call>'}])
    assert r.messages == [{"role": "tool", "content": "85"}] and r.reward == 0 and r.info == {"tool_call": True}
    m = m + [{"role": "assistant", "content": "<tool_call>...</tool_call>"}, *r.messages]
    assert env.step(m + [{"role": "assistant", "content": "It is 85."}]).reward == 1.0
    assert env.step(m + [{"role": "assistant", "content": "It is 84."}]).reward == 0.0
    r = env.step(m + [{"role": "assistant", "content": '<tool_call>{"name": "calculate", "arguments": {"expression": '
                                                       '"47**38"}}</tool_call>'}])
    assert r.messages[0]["content"].startswith("error: ") and r.messages is not None  # the episode goes on
    with pytest.raises(UserError, match=r"env=calculator needs questions holding an arithmetic expression"):
        env.reset({"row": 3, "prompt_text": "a great movie"})


def test_calculator_config_fails_early():
    from prefopt.rollout.envs import env_config

    assert env_config({"name": "calculator"}).tool_timeout_s == 1.0
    with pytest.raises(UserError, match=r"env.result_role='bot' is not known; accepted: tool, user"):
        env_config({"name": "calculator", "result_role": "bot"})


TOOLS_TEMPLATE = ("{%- if tools %}TOOLS {% for t in tools %}{{ t.function.name }} {% endfor %}{% endif -%}"
                  "{%- for m in messages %}<|user|> {{ m.content }} {% endfor -%}"
                  "{%- if add_generation_prompt %}<|assistant|>{% endif -%}")


def test_tools_render_through_the_template_or_the_system_prompt():
    from prefopt.rollout.episodes import _prompt_ids
    from prefopt.testbed.tokenizer import build_tokenizer

    tok = build_tokenizer(["tools", "calculate", "what", "is"])
    assert not template_supports_tools(tok)  # the testbed's template: the fallback
    msgs = with_tools_prompt([{"role": "user", "content": "what is 1+2?"}], [tool_schema(calculate)])
    assert msgs[0]["role"] == "system" and msgs[0]["content"].startswith(FALLBACK_HEADER)
    assert '"name": "calculate"' in msgs[0]["content"] and msgs[1]["content"] == "what is 1+2?"
    tok.chat_template = TOOLS_TEMPLATE
    assert template_supports_tools(tok)
    ids = _prompt_ids(tok, [{"role": "user", "content": "what is"}], [tool_schema(calculate)])
    assert tok.decode(ids) == "tools calculate <|user|> what is <|assistant|>"


def test_calculator_episodes_run_with_the_fallback_prompt():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.rollout.episodes import episode_metrics, run_episodes
    from prefopt.rollout.sampler import HFSampler, SamplingConfig
    from prefopt.testbed.tokenizer import build_tokenizer

    tok = build_tokenizer(["what", "is", "tool_call", "name", "calculate", "arguments", "expression"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    env = Calculator(CalculatorConfig(max_episode_tokens=12, result_role="user"))
    rows = [{"row": i, "prompt_text": f"what is {i}+{i + 1}?"} for i in range(3)]
    eps = run_episodes(env, rows, sampler=HFSampler(tok.pad_token_id, tok.eos_token_id), policy=model, tokenizer=tok,
                       cfg=SamplingConfig(max_new_tokens=8, samples_per_prompt=2), seed=0)
    assert len(eps) == 6
    for ep in eps:
        assert ep.messages[0]["role"] == "system" and ep.messages[0]["content"].startswith(FALLBACK_HEADER)
        assert ep.reward in (0.0, 1.0) and len(ep.ids) <= 12
    m = episode_metrics(eps)
    assert m["env_info/tool_call"].shape == (6,)


@pytest.mark.slow
def test_smollm2_chatml_episode_renders_as_the_template_does():
    """SmolLM2's ChatML template has no tools= and no tool-call syntax: the fallback system prompt, and
    the trajectory prompt ⧺ policy turn (ending with its EOS, <|im_end|>) ⧺ environment tokens reads
    exactly as the template's rendering of the whole conversation (the newline after <|im_end|> included)."""
    from test_smollm2 import SMOL

    from prefopt.models import gguf
    from prefopt.models.load import load_tokenizer
    from prefopt.rollout.episodes import _prompt_ids, env_tokens

    tok = load_tokenizer(gguf.checkpoint_dir(SMOL))
    assert not template_supports_tools(tok) and tok.eos_token == "<|im_end|>"
    env = Calculator(CalculatorConfig())
    msgs = with_tools_prompt(env.reset({"row": 0, "prompt_text": "What is 47+38?"}), [tool_schema(calculate)])
    call = '<tool_call>{"name": "calculate", "arguments": {"expression": "47+38"}}</tool_call>'
    policy = tok(call, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]  # as the policy samples it
    turn = msgs + [{"role": "assistant", "content": call}]
    r = env.step(turn)
    ids = _prompt_ids(tok, msgs) + policy + env_tokens(tok, turn, r.messages, "calculator")
    full = tok.apply_chat_template(turn + r.messages, add_generation_prompt=True, tokenize=False)
    assert tok.decode(ids) == full
    assert full.endswith("<|im_end|>\n<|im_start|>tool\n85<|im_end|>\n<|im_start|>assistant\n")
