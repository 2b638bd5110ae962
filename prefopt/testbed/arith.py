"""Task ``arith``: two-number addition with a verifiable reward.

Prompts are ``a+b=`` with operands 0–99; the completion is the sum's digits; the gold reward
is 1.0 for the exact answer and 0.0 otherwise — the setting of RL with verifiable rewards.
Demonstrations are right only ``DEMO_ACCURACY`` of the time (otherwise off by a little, like a
careless student), so an SFT policy is imperfect and preference or RL training has headroom.

The task is learnable by the testbed's tiny policy: with the SFT settings of conf/data/arith.yaml
(1500 steps at lr 1e-3) it gets 29–51% of held-out sums exactly right when sampled at temperature 1
and 82–99% greedily (SFT seeds 0–4). It has learned addition but spreads probability over slips as
the demonstrations do, so an exact-match reward can sharpen it a long way. Addition is learned in a
sudden transition (at 1e-3, between ~800 and ~1500 steps depending on the seed); reviews' shorter,
hotter SFT (300 steps at 3e-3) never reaches it and gets ~4% of held-out sums right.

``a+b`` and ``b+a`` fall in the same split, so eval measures addition on unseen operand pairs
rather than recall of the commuted prompt.
"""

from __future__ import annotations

import random
import re

from prefopt.testbed.tasks import PromptSets, Split
from prefopt.testbed.tokenizer import pre_tokenize

MAX_OPERAND = 99
DEMO_ACCURACY = 0.55
# Typical slips: a unit off, or a forgotten/extra carry.
DEMO_ERRORS = [-3, -2, -1, 1, 2, 3, -10, 10]

_PROMPT = re.compile(r"(\d+)\+(\d+)=")


def _answer(prompt: str) -> int:
    m = _PROMPT.fullmatch("".join(prompt.split()))
    if m is None:
        raise ValueError(f"not an arith prompt: {prompt!r}")
    return int(m[1]) + int(m[2])


def exact_match(prompt: str, completion: str) -> float:
    """1.0 iff the completion, spaces ignored ("4 2" as decoded, or "42"), is the sum."""
    return float("".join(completion.split()) == str(_answer(prompt)))


class ArithTask:
    """Add two numbers; gold reward = exact match."""

    name = "arith"
    real_checkpoint = False

    def __init__(self):
        self._sets = PromptSets()
        for a in range(MAX_OPERAND + 1):
            for b in range(MAX_OPERAND + 1):
                self._sets.add(f"{min(a, b)}+{max(a, b)}=", f"{a}+{b}=")
        longest = f"{MAX_OPERAND}+{MAX_OPERAND}="
        self.max_prompt_tokens = len(pre_tokenize(longest)) + 2  # + <|user|> <|assistant|>
        self.max_completion_tokens = len(str(2 * MAX_OPERAND)) + 1  # + </s>

    def vocabulary(self) -> list[str]:
        return [str(d) for d in range(10)] + ["+", "="]

    def prompts(self, split: Split) -> list[str]:
        """All prompts of ``split``."""
        return self._sets.prompts(split)

    def sample_prompts(self, n: int, rng: random.Random, split: Split = "train") -> list[str]:
        return self._sets.sample(n, rng, split)

    def demonstrations(self, n: int, rng: random.Random) -> list[tuple[str, str]]:
        demos = []
        for prompt in rng.choices(self._sets.by_split["train"], k=n):
            answer = _answer(prompt)
            if rng.random() >= DEMO_ACCURACY:
                slip = rng.choice(DEMO_ERRORS)
                answer = answer + slip if answer + slip >= 0 else answer - slip
            demos.append((prompt, str(answer)))
        return demos

    def gold_reward(self, prompts: list[str], completions: list[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        return [exact_match(p, c) for p, c in zip(prompts, completions)]
