"""Task ``smol_arith2d``: two-digit sums and differences for a real instruct checkpoint (the calculator task).

Prompts are ``What is A+B?`` and ``What is A-B?`` with 10 ≤ A, B ≤ 99 (8,100 sums, 4,095 differences with
B ≤ A): 8,190 problem keys once a sum and its commuted form share one, split 80/10/10 into training,
validation and test problems. The reward and which number of an answer counts are ``smol_arith``'s.

Hard for SmolLM2-135M-Instruct without a tool (two-digit sums: 8% right greedily, 2–3% sampled), easy
with one: the task of ``env=calculator`` (prefopt.rollout.envs.calculator), whose ``calculate`` tool
does the arithmetic exactly.
"""

from __future__ import annotations

from prefopt.testbed.smol_arith import SmolArithTask


def problems() -> list[tuple[int, str, int]]:
    two = range(10, 100)
    return [(a, "+", b) for a in two for b in two] + [(a, "-", b) for a in two for b in two if b <= a]


class SmolArith2dTask(SmolArithTask):
    """Two-digit + and − in chat form; gold reward = the stated number is the result."""

    name = "smol_arith2d"

    def __init__(self):
        super().__init__(problems(), key_prefix="smol2d")
