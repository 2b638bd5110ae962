"""``env=arith_retry``: the testbed's addition task (data=arith) over several turns.

The user asks ``a+b=``; a wrong answer gets the question again (the feedback: "no, once more"),
up to ``max_turns`` answers. Gold reward = 1 when an answer is exactly a + b within the turns, else 0:

    R = 1[∃ k ≤ max_turns: answer_k = a + b]

Every word it writes (digits, ``+``, ``=``) is in the testbed's arith vocabulary, so the tiny policy
reads the environment's turns as it reads prompts; its chat template renders the turns as
``<|user|> a+b= <|assistant|> answer </s> <|user|> a+b= <|assistant|> …``. The SFT policy answers
at temperature 1 rightly 29–51% of the time (testbed/arith.py) and its later answers see its earlier
wrong ones, so the solve rate has room to grow under RL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prefopt.core.errors import UserError
from prefopt.rollout.envs.base import EnvConfig, Environment, StepResult, register

_QUESTION = re.compile(r"(\d+)\+(\d+)=")


@dataclass
class ArithRetryConfig(EnvConfig):
    name: str = "arith_retry"
    max_turns: int = 2
    max_episode_tokens: int = 24


@register("arith_retry")
class ArithRetry(Environment):
    Config = ArithRetryConfig

    def reset(self, row: dict) -> list:
        question = "".join(str(row.get("prompt_text", "")).split())
        if _QUESTION.fullmatch(question) is None:
            raise UserError(f"env=arith_retry needs addition prompts like '17+25=' (data=arith); data row "
                            f"{row.get('row')} has prompt {row.get('prompt_text')!r}")
        return [{"role": "user", "content": question}]

    def step(self, messages: list) -> StepResult:
        a, b = map(int, _QUESTION.fullmatch(messages[0]["content"]).groups())
        answer = "".join(messages[-1]["content"].split())
        if answer == str(a + b):
            return StepResult(None, 1.0, {"solved": True})
        return StepResult([{"role": "user", "content": messages[0]["content"]}], 0.0, {"solved": False})
