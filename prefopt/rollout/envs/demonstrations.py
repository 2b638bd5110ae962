"""Supervised warm start on an environment's demonstrations (``algo=sft env=NAME``).

RL can only reward a behaviour the policy sometimes shows: a model that never calls a tool gets no
signal for calling it. An environment's ``demonstration(row)`` gives a right episode for a data row
(the messages after ``reset(row)``'s); each of its assistant turns becomes one SFT row, with every
message before it as the prompt, rendered as the episode runner renders an episode (the tools described
in the system-prompt fallback, :mod:`prefopt.rollout.envs.tools`):

    demonstration = [a_1, e_1, a_2, e_2, …, a_n]        (a: assistant turns, e: the environment's replies)
    row_k = (prompt = opening ⧺ a_1 ⧺ e_1 ⧺ … ⧺ e_{k−1},  completion = a_k),   k = 1 … n

so the loss falls on the assistant's turns only, each in the context an episode gives it. Built from the
task's training prompts alone (no model is sampled), so there is nothing to cache.
"""

from __future__ import annotations

from prefopt.core.errors import UserError
from prefopt.rollout.envs.base import Environment
from prefopt.rollout.envs.tools import template_supports_tools, tool_schema, with_tools_prompt


def demonstration_rows(env: Environment, rows: list, tokenizer) -> list:
    """SFT rows ``{"prompt": [messages], "completion": [assistant message]}`` from ``env``'s demonstration of
    each of ``rows`` (dicts with ``prompt_text``); one per assistant turn. Tools are described in the system
    prompt (the fallback format); a template that renders ``tools=`` itself is refused, as the SFT rows carry
    no tools column."""
    schemas = [tool_schema(f) for f in env.tools()] or None
    if schemas and template_supports_tools(tokenizer):
        raise UserError(f"env={env.name}: this tokenizer's chat template renders tools itself (tools=), and the "
                        "warm start's SFT rows describe tools in the system prompt only; accepted: a chat template "
                        "without tools (e.g. SmolLM2's ChatML), or RL without the warm start")
    out = []
    for row in rows:
        demo = env.demonstration(row)
        if demo is None:
            raise UserError(f"env={env.name} has no demonstrations, so algo=sft cannot warm-start on it; accepted: "
                            "an environment that defines demonstration(row) (e.g. calculator), or env=none")
        messages = env.reset(row)
        if schemas:
            messages = with_tools_prompt(messages, schemas)
        for m in demo:
            if m.get("role") == "assistant":
                out.append({"prompt": [dict(x) for x in messages], "completion": [dict(m)]})
            messages = messages + [dict(m)]
    return out
