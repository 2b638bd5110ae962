"""Task ``smol_arith19``: ``smol_arith`` grown to operands up to 19, with room to measure a ranking.

Prompts are user messages ``What is A op B?``: every problem of ``smol_arith`` (single-digit sums,
products, and differences a−b with b ≤ a), plus every sum a+b with 0 ≤ a, b ≤ 19 and a or b ≥ 10 (555
problems, 320 once commuted sums and products share a key). The reward and which number of an answer counts are ``smol_arith``'s.

Splits hold out 20% of the problem keys for validation and 20% for test (``smol_arith`` holds out
10% + 10% of fewer problems: 26 test problems, too few to measure on): 103 validation and 95 test
problems, disjoint from each other and from the 357 training problems; a problem and its commuted form
share a split.

The difficulty is picked for SmolLM2-135M-Instruct (``model=smollm2``). Measured on random problems of
each family, 4 samples at temperature 1 and one greedy answer each, 32 new tokens (48 problems a family):
single-digit sums 19% sampled / 60% greedy, differences 10% / 12%, products 17% / 35%, sums with an operand
of 10–19 13% / 33%, differences of 10–19 3% / 8% (left out: a family the checkpoint almost never gets
right gives RL no signal and offline methods no pairs). On the evaluation prompts (64 of each split, 4
samples each, the board's draws): validation 14% sampled / 38% greedy, test 16% / 48%: within 10–60%,
where RL with an exact reward has room both ways.
"""

from __future__ import annotations

from prefopt.testbed.smol_arith import SmolArithTask, problems as single_digit_problems


def problems() -> list[tuple[int, str, int]]:
    teens_sum = [(a, "+", b) for a in range(20) for b in range(20) if max(a, b) >= 10]
    return single_digit_problems() + teens_sum


class SmolArith19Task(SmolArithTask):
    """``smol_arith``'s problems and sums and differences of operands up to 19; 20% + 20% held out."""

    name = "smol_arith19"

    def __init__(self):
        super().__init__(problems(), key_prefix="smol19", test_percent=20, val_percent=20)
