"""``env=calculator``: arithmetic questions with a ``calculate(expression)`` tool.

The user asks a question holding an arithmetic expression (``What is 47+38?``, data=smol_arith). Each
assistant turn either calls the tool (a ``<tool_call>{"name": "calculate", "arguments": {"expression":
"47+38"}}</tool_call>`` block; the result comes back as a message of role ``result_role``) or answers.
The first turn without a tool call is the final answer:

    R = 1[the last number in the answer = the question's exact value]

The tool parses arithmetic itself (:mod:`prefopt.rollout.envs.arithmetic`); no model output is passed to
eval/exec. ``info['tool_call']`` marks the turns that called it (logged as ``rollout/env_info/tool_call``,
tool calls per episode). ``demonstration(row)``: the right episode (call, result, answer), for the supervised
warm start a model that never calls the tool needs (``algo=sft env=calculator``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fractions import Fraction

from prefopt.core.errors import UserError
from prefopt.rollout.envs.arithmetic import ArithmeticSyntaxError, evaluate, format_number
from prefopt.rollout.envs.base import EnvConfig, Environment, StepResult, register
from prefopt.rollout.envs.tools import find_tool_call, run_tool_call

_EXPRESSION = re.compile(r"[\d(][\d\s+\-*/().]*")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: Numbers combined with + - * / and parentheses, for example "47+38".
    """
    try:
        return format_number(evaluate(expression))
    except ArithmeticSyntaxError as e:
        return f"error: {e}"


def question_expression(text: str) -> tuple:
    """(the longest arithmetic expression in ``text``, its exact value); ValueError when there is none."""
    found = sorted((m.group(0).strip() for m in _EXPRESSION.finditer(text)), key=len, reverse=True)
    for expr in found:
        if any(op in expr for op in "+-*/"):
            try:
                return expr.rstrip("?"), evaluate(expr.rstrip("?"))
            except ArithmeticSyntaxError:
                continue
    raise ValueError(f"no arithmetic expression in {text!r}")


def question_value(text: str) -> Fraction:
    """The exact value of the longest arithmetic expression in ``text`` (ValueError when none)."""
    return question_expression(text)[1]


@dataclass
class CalculatorConfig(EnvConfig):
    name: str = "calculator"
    max_turns: int = 3  # a tool call, its result, the answer; and one spare
    max_episode_tokens: int = 128
    tool_timeout_s: float = 1.0  # a tool call past it returns one line of error text
    result_role: str = "tool"  # the role of tool results: tool | user (a template without a tool role)


@register("calculator")
class Calculator(Environment):
    Config = CalculatorConfig

    @classmethod
    def check(cls, cfg) -> None:
        if cfg.tool_timeout_s <= 0:
            raise UserError(f"env.tool_timeout_s={cfg.tool_timeout_s} must be > 0")
        if cfg.result_role not in ("tool", "user"):
            raise UserError(f"env.result_role={cfg.result_role!r} is not known; accepted: tool, user")

    def tools(self) -> list:
        return [calculate]

    def reset(self, row: dict) -> list:
        question = str(row.get("prompt_text", ""))
        try:
            question_value(question)
        except ValueError:
            raise UserError(f"env=calculator needs questions holding an arithmetic expression (data=smol_arith); "
                            f"data row {row.get('row')} has prompt {question!r}") from None
        return [{"role": "user", "content": question}]

    def demonstration(self, row: dict) -> list:
        """The right episode: call the tool on the question's expression, read its result, answer with it."""
        expr, _ = question_expression(str(row.get("prompt_text", "")))
        result = calculate(expr)
        call = json.dumps({"name": "calculate", "arguments": {"expression": expr}})
        return [{"role": "assistant", "content": f"<tool_call>{call}</tool_call>"},
                {"role": self.cfg.result_role, "content": result},
                {"role": "assistant", "content": f"{expr} = {result}"}]

    def step(self, messages: list) -> StepResult:
        text = messages[-1]["content"]
        call = find_tool_call(text)
        if call is not None:
            result = run_tool_call({"calculate": calculate}, call, self.cfg.tool_timeout_s)
            return StepResult([{"role": self.cfg.result_role, "content": result}], 0.0, {"tool_call": True})
        question = next(m["content"] for m in messages if m["role"] == "user")
        numbers = _NUMBER.findall(text)
        right = bool(numbers) and Fraction(numbers[-1]) == question_value(question)
        return StepResult(None, float(right), {"tool_call": False})
