"""Gold rewards as reward functions, for online methods' ``module:function`` reward sources.

Signature: ``fn(prompts, completions, **kwargs) -> list[float]``; extra keyword arguments
(whatever the rollout passes along) are ignored. Prompts are the user-message text; completions
may be decoded text (words and single digits joined by spaces) or normal text.
"""

from __future__ import annotations

from prefopt.testbed.tasks import get_task


def reviews_gold(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """Gold reward of task ``reviews``: sentiment minus repetition and grammar penalties."""
    return get_task("reviews").gold_reward(prompts, completions)


def arith_exact_match(prompts: list[str], completions: list[str], **kwargs) -> list[float]:
    """Gold reward of task ``arith``: 1.0 for the exact sum, else 0.0."""
    return get_task("arith").gold_reward(prompts, completions)
