r"""Entropy controls (``entropy_control``): one class per method, registered by name. Each edits the
per-token policy-gradient loss pg_t of the chosen policy loss (after it, before the sampler correction).

Clip-Cov and KL-Cov (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for Reasoning
Language Models", arXiv:2505.22617, §4, eq. 9–11; verl's ``compute_policy_loss_clip_cov`` /
``compute_policy_loss_kl_cov``). Over the micro-batch's N completion tokens, the centred covariance of
each token's log-probability and advantage is

    Cov_t = (log π(y_t) − mean_u log π(y_u)) · (A_t − mean_u A_u)        (no gradient through Cov_t)

    clip_cov   r = ``clip_cov_ratio``: among the tokens the policy loss did not clip whose
               ω_low < Cov_t < ω_high (``clip_cov_lb``, ``clip_cov_ub``), max(⌊r·N⌋, 1) drawn uniformly
               at random lose their gradient:  pg_t ← 0
    kl_cov     k = max(⌊``kl_cov_ratio``·N⌋, 1): the k tokens of largest Cov_t get a penalty on the
               distance to π_old:  pg_t ← pg_t + β_cov · |log π(y_t) − log π_old(y_t)|,  β_cov = ``kl_cov_coef``

(verl's kl_cov adds the penalty to the unclipped surrogate −A·ρ; here it is added to whichever policy loss
is chosen, so policy_loss=clip keeps its clip.)

    top_entropy_quantile   only the tokens whose entropy H_t is at or above the (1 − q) quantile of the
               micro-batch's completion-token entropies keep a policy gradient, q = ``top_entropy_quantile``
               (Wang et al. 2025, "Beyond the 80/20 Rule", arXiv:2506.01939, eq. 4, q = 0.2):
               pg_t ← [H_t ≥ quantile_{1−q}(H)] · pg_t
               (TRL's ``top_entropy_quantile``; TRL takes the quantile over the micro-batch gathered from
               every process, prefopt over the process's micro-batch, the same on one process. TRL also
               restricts its entropy bonus to the kept tokens; prefopt's ``entropy_coef`` bonus stays on all.)
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch

from prefopt.core.registry import Registry


class EntropyControl:
    """An ``entropy_control``: ``apply(pg, logp, old, A, mask, clipped, entropy) -> (pg, controlled)``;
    ``controlled`` [B, T] bool: the tokens it changed (a metric). ``needs_entropy``: reads H_t."""

    name: ClassVar[str] = ""
    needs_entropy: ClassVar[bool] = False

    def __init__(self, cfg):
        self.cfg = cfg

    def apply(self, pg, logp, old, A, mask, clipped, entropy) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError


ENTROPY_CONTROLS = Registry("entropy control", base=EntropyControl, key="algo.entropy_control", sort=False)
register = ENTROPY_CONTROLS.register


def covariance(logp: torch.Tensor, A: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cov_t of the module docstring [B, T] (detached; 0 off the mask)."""
    m = mask.bool()
    lp, a = logp.detach(), A.detach()
    n = m.sum().clamp(min=1)
    lp_mean, a_mean = (lp * mask).sum() / n, (a * mask).sum() / n
    return (lp - lp_mean) * (a - a_mean) * mask


@register("none")
class NoControl(EntropyControl):
    def apply(self, pg, logp, old, A, mask, clipped, entropy):
        return pg, None


@register("clip_cov")
class ClipCov(EntropyControl):
    def apply(self, pg, logp, old, A, mask, clipped, entropy):
        c = self.cfg
        cov = covariance(logp, A, mask)
        candidates = (mask.bool() & ~clipped & (cov > c.clip_cov_lb) & (cov < c.clip_cov_ub)).nonzero()
        n_drop = max(int(c.clip_cov_ratio * int(mask.sum())), 1)
        drop = torch.zeros_like(mask, dtype=torch.bool)
        if len(candidates):
            pick = candidates[torch.randperm(len(candidates))[:n_drop].to(candidates.device)]
            drop[pick[:, 0], pick[:, 1]] = True
        return pg * ~drop, drop


@register("kl_cov")
class KLCov(EntropyControl):
    def apply(self, pg, logp, old, A, mask, clipped, entropy):
        c = self.cfg
        m = mask.bool()
        cov = covariance(logp, A, mask).masked_fill(~m, -torch.inf).view(-1)
        n_tok = int(m.sum())
        chosen = torch.zeros_like(m)
        if n_tok:
            k = max(int(c.kl_cov_ratio * n_tok), 1)
            chosen.view(-1)[torch.topk(cov, k).indices] = True
        return pg + c.kl_cov_coef * (logp - old).abs() * chosen, chosen


@register("top_entropy_quantile")
class TopEntropyQuantile(EntropyControl):
    needs_entropy = True

    def apply(self, pg, logp, old, A, mask, clipped, entropy):
        m = mask.bool()
        if not m.any():
            return pg, None
        H = entropy.detach()
        threshold = torch.quantile(H[m], 1 - self.cfg.top_entropy_quantile)
        keep = (H >= threshold) & m
        return pg * keep, ~keep & m
