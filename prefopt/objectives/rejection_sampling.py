r"""Rejection sampling fine-tuning: best-of-N by reward, then SFT on the winners, iterated
(RAFT, Dong et al. 2023, arXiv:2304.06767; expert iteration, Anthony et al. 2017; the
"rejection sampling" stage of Llama 2, Touvron et al. 2023, §3.2.2).

Each rollout samples N = ``samples_per_prompt`` completions y_1..y_N of every prompt x from the
current policy and keeps the top ``keep_per_prompt`` by reward r (ties: the first sampled),
optionally only those with r ≥ ``min_reward``:

    W = { (x, y_k) : k ∈ top_keep(r(x, y_1), …, r(x, y_N)) }
    L = −(1 / Σ_{(x,y) ∈ W} |y|) Σ_{(x,y) ∈ W} Σ_t log π(y_t | x, y_<t)           (token mean, as SFT)

then trains ``epochs_per_rollout`` passes on W before sampling again from the updated policy.

Best-of-N at inference (:func:`best_of_n`; CLI ``python -m prefopt.cli.best_of_n``): the gold reward
of the completion the reward picks among n samples, for several n, with the analytic
KL(π_best-of-n ‖ π) = log n − (n−1)/n (Stiennon et al. 2020, Appendix; Hilton & Gao 2022).

Fixed point: one round (rollout from π_0, trained to convergence) reaches the best-of-N distribution
of π_0, P(y) = F(y)^N − F⁻(y)^N with F, F⁻ the π_0-probability of a reward ≤, < r(y); iterated rounds
concentrate on the highest-reward completion in the support (checked in tests/test_fixed_points.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from prefopt.core.errors import UserError
from prefopt.rollout.source import RolloutFields, select
from prefopt.objectives.registry import Needs, OnlineObjective, register


@register("rejection_sampling")
class RejectionSampling(OnlineObjective):
    needs = Needs(data="prompt_only", reward=True, rollouts=True, groups=True)  # selects within each prompt's group
    # The main coefficient, n of best-of-n per prompt, and the values the leaderboard's tuning grid
    # tries (× its learning rates).
    tuning = {"samples_per_prompt": (4, 8)}

    @dataclass
    class Config(RolloutFields):
        name: str = "rejection_sampling"
        prompts_per_step: int = 32
        samples_per_prompt: int = 8
        keep_per_prompt: int = 1
        min_reward: Optional[float] = None  # keep winners only at or above this reward

        def __post_init__(self):
            if not 1 <= self.keep_per_prompt <= self.samples_per_prompt:
                raise UserError(f"algo.keep_per_prompt={self.keep_per_prompt} must be in [1, samples_per_prompt="
                                f"{self.samples_per_prompt}]")
            if self.keep_per_prompt == self.samples_per_prompt:
                raise UserError(f"algo.keep_per_prompt={self.keep_per_prompt} keeps every sample (no selection); "
                                "accepted: keep_per_prompt < samples_per_prompt")

    def __init__(self, cfg: "RejectionSampling.Config"):
        self.cfg = cfg

    def prepare(self, roll: dict):
        """Keep the top ``keep_per_prompt`` completions of every group."""
        r = roll["scores"]
        if r.numel() == 0:
            return roll, {}
        K, k = roll["group_size"], self.cfg.keep_per_prompt
        g = r.view(-1, K)
        # stable sort: among equal rewards the first sampled wins
        top = torch.sort(g, dim=-1, descending=True, stable=True).indices[:, :k]
        keep = torch.zeros_like(g, dtype=torch.bool).scatter_(1, top, True).view(-1)
        if self.cfg.min_reward is not None:
            keep &= r >= self.cfg.min_reward
        out = select(roll, keep)
        m = {"rollout/selected_reward_mean": float(r[keep].mean()) if keep.any() else float("nan"),
             "rollout/selected_frac": float(keep.float().mean())}
        return out, m

    def units(self, batch) -> int:
        return int(batch["loss_mask"][:, 1:].sum())

    def loss(self, batch, scorer):
        stats = scorer.logps(batch)
        nll_sum = -stats.logps.sum()
        return nll_sum, {"nll": nll_sum.detach()}


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n ‖ π) = log n − (n−1)/n."""
    return math.log(n) - (n - 1) / n


@torch.no_grad()
def best_of_n(policy, tokenizer, prompts_text: list, prompts_ids: list, reward, ns=(1, 2, 4, 8, 16), *,
              gold_fn=None, sampler=None, temperature: float = 1.0, max_new_tokens: int = 32, seed: int = 0,
              sequences_per_generate: int = 256) -> dict:
    """{n: {"proxy_reward", "gold_reward", "kl_analytic"}}: the mean over prompts of the rewards of
    the completion with the highest ``reward`` among the first n of N = max(ns) samples."""
    from prefopt.rollout.sampler import HFSampler, SamplingConfig

    ns = sorted(set(int(n) for n in ns))
    if ns[0] < 1:
        raise UserError(f"best-of-n: n must be >= 1, got {ns[0]}")
    N = ns[-1]
    sampler = sampler or HFSampler(tokenizer.pad_token_id, tokenizer.eos_token_id)
    cfg = SamplingConfig(temperature=temperature, max_new_tokens=max_new_tokens, samples_per_prompt=N,
                         prompts_per_batch=sequences_per_generate)
    s = sampler.sample(policy, prompts_ids, cfg, seed=seed)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in s.completions]
    p_txt = [p for p in prompts_text for _ in range(N)]
    p_ids = [p for p in prompts_ids for _ in range(N)]
    proxy = reward(p_txt, texts, prompt_ids=p_ids, completion_ids=s.completions,
                   finished=torch.tensor(s.finished)).view(-1, N)
    gold = torch.tensor(gold_fn(p_txt, texts), dtype=torch.float32).view(-1, N) if gold_fn else None
    out = {}
    for n in ns:
        pick = proxy[:, :n].argmax(-1, keepdim=True)
        row = {"proxy_reward": float(proxy[:, :n].gather(1, pick).mean()), "kl_analytic": best_of_n_kl(n),
               "gold_reward": float(gold[:, :n].gather(1, pick).mean()) if gold is not None else None}
        out[n] = row
    return out
