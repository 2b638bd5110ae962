"""Task ``smol_arith``: single-digit arithmetic in chat form, for a real instruct checkpoint.

Prompts are user messages such as ``What is 7+5?``, ``What is 9-4?`` or ``What is 6*8?``: every sum
and product of two digits, and every difference a−b with 0 ≤ b ≤ a ≤ 9 (219 problems). A problem and
its commuted form (7+5, 5+7) fall in the same split, so held-out prompts are unseen problems.

Gold reward: 1.0 when the number the answer gives is the result, else 0.0. The number that counts
is the first integer after the last ``=`` of the completion when it has one (``7 + 5 = 12.``), else
the completion's last integer (``The answer is 12.``); thousands separators are ignored. An answer
without a number scores 0.

The difficulty is picked for SmolLM2-135M-Instruct (``model=smollm2``), whose answers to single
digit sums measured 62% right greedily and 22% sampled at temperature 1 (48 random sums; products:
17% and 14%; two-digit + one-digit sums: 12% and 4%). On this task's 26 test problems it is right
50% of the time greedily and 25% sampled (8 samples each, 32 new tokens): sampled accuracy within
10–50%, the room RL with an exact reward needs. There are no demonstrations to imitate: preference pairs and the SFT rows are
the base model's own samples, labelled by this reward (prefopt.testbed.world).
"""

from __future__ import annotations

import random
import re

from prefopt.testbed.tasks import PromptSets, Split

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_PROMPT = re.compile(r"What is (\d+)([+*-])(\d+)\?")
_INT = re.compile(r"-?\d+")


def problems() -> list[tuple[int, str, int]]:
    out = [(a, op, b) for op in "+*" for a in range(10) for b in range(10)]
    return out + [(a, "-", b) for a in range(10) for b in range(a + 1)]


def _key(a: int, op: str, b: int, prefix: str = "smol") -> str:
    # Commuted forms share a split: evaluation measures unseen problems, not the other order.
    return f"{prefix}:{min(a, b)}{op}{max(a, b)}" if op in "+*" else f"{prefix}:{a}{op}{b}"


def answer_of(prompt: str) -> int:
    m = _PROMPT.fullmatch(prompt.strip())
    if m is None:
        raise ValueError(f"not a smol_arith prompt: {prompt!r}")
    return OPS[m[2]](int(m[1]), int(m[3]))


def number_given(completion: str):
    """The integer the completion answers with (module docstring), or None."""
    text = completion.replace(",", "")
    if "=" in text:
        found = _INT.findall(text[text.rindex("=") + 1:])
        if found:
            return int(found[0])
    found = _INT.findall(text)
    return int(found[-1]) if found else None


class SmolArithTask:
    """Single-digit +, −, × in chat form; gold reward = the stated number is the result."""

    name = "smol_arith"
    real_checkpoint = True  # prompts for a real instruct model: its own tokenizer, no SFT stage
    max_prompt_tokens = 64  # SmolLM2's chat template adds a system message of about 30 tokens
    max_completion_tokens = 32

    def __init__(self, problems_: list = None, key_prefix: str = "smol", test_percent: int = 10, val_percent: int = 10):
        self._sets = PromptSets(test_percent, val_percent)
        for a, op, b in problems() if problems_ is None else problems_:
            self._sets.add(_key(a, op, b, key_prefix), f"What is {a}{op}{b}?")

    def vocabulary(self) -> list[str]:
        return []  # the checkpoint's own tokenizer

    def prompts(self, split: Split) -> list[str]:
        return self._sets.prompts(split)

    def sample_prompts(self, n: int, rng: random.Random, split: Split = "train") -> list[str]:
        return self._sets.sample(n, rng, split)

    def demonstrations(self, n: int, rng: random.Random) -> list[tuple[str, str]]:
        raise NotImplementedError("smol_arith has no written demonstrations: SFT rows are the base model's right answers")

    def gold_reward(self, prompts: list[str], completions: list[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return [float(number_given(c) == answer_of(p)) for p, c in zip(prompts, completions)]
