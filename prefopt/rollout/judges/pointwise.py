r"""Judges that score each completion once and compare the scores by Bradley–Terry:

    P(a ≻ b) = σ((s_a − s_b) / τ)          τ = ``temperature``; τ = 0: 1[s_a > s_b] + ½·1[s_a = s_b]

so K completions of a prompt cost K scores, not K(K − 1) comparisons.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from prefopt.core.errors import UserError
from prefopt.rollout.judges.base import Judge, JudgeConfig, JudgeContext, group_starts, locate, refuse_nonfinite


def bradley_terry(s_a: torch.Tensor, s_b: torch.Tensor, tau: float) -> torch.Tensor:
    """P(a ≻ b) = σ((s_a − s_b) / τ); τ = 0: 1[s_a > s_b] + ½·1[s_a = s_b]."""
    d = s_a - s_b
    if tau == 0:
        return (d > 0).to(s_a.dtype) + 0.5 * (d == 0).to(s_a.dtype)
    return torch.sigmoid(d / tau)


@dataclass
class PointwiseJudgeConfig(JudgeConfig):
    temperature: float = 1.0  # τ of σ((s_a − s_b) / τ); 0: hard comparison


class PointwiseJudge(Judge):
    """``compare`` and ``matrices`` through ``score(prompts, completions, **kw) -> Tensor[N]``."""

    Config = PointwiseJudgeConfig

    def __init__(self, cfg: PointwiseJudgeConfig, ctx: JudgeContext):
        super().__init__(cfg, ctx)
        self.tau = cfg.temperature

    @classmethod
    def check(cls, cfg: PointwiseJudgeConfig, key: str = "judge") -> None:
        if not math.isfinite(cfg.temperature) or cfg.temperature < 0:
            raise UserError(f"{key}.temperature={cfg.temperature}; accepted: a finite number >= 0 (0: hard comparison)")

    def score(self, prompts, completions, **kw) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, prompts: list, completions: list, **kw) -> torch.Tensor:
        """``score`` in calls of at most ``sequences_per_device`` completions; ``kw``: per-completion lists."""
        B, n = self.batch, len(completions)
        parts = [self.score(prompts[s : s + B], completions[s : s + B],
                            **{k: None if v is None else v[s : s + B] for k, v in kw.items()}) for s in range(0, n, B)]
        return torch.cat(parts) if parts else torch.zeros(0)

    def compare(self, prompts, completions_a, completions_b, **kw) -> torch.Tensor:
        n = len(prompts)
        s = self.scores(list(prompts) * 2, list(completions_a) + list(completions_b))
        # checked before σ, which maps ±inf to a finite certainty (and τ = 0 maps NaN to a loss)
        refuse_nonfinite(self, s, "score", lambda k: (k % n, f"answer {'ab'[k // n]}"))
        return bradley_terry(s[:n], s[n:], self.tau)

    def matrices(self, prompts: list, completions: list, sizes: list, **kw) -> tuple:
        """One score per completion (``kw``: prompt_ids, completion_ids), then P_ij from the scores."""
        s = self.scores(prompts, completions, **kw).double()
        refuse_nonfinite(self, s, "score", lambda k: (locate(sizes, k)[0], f"completion {locate(sizes, k)[1]}"))
        return [bradley_terry(s[a : a + K, None], s[None, a : a + K], self.tau).float()
                for a, K in zip(group_starts(sizes), sizes)], {}
