r"""Sampler correction (``rollout_is``): one class per mode, registered by name.

When the sampler's log-probs log μ(y_t) differ from the trainer's log π_old(y_t) (a faster inference
engine, other kernels, quantized weights), the policy-gradient term pg_t is reweighted or masked by the
importance weight w = π_old / μ (Yao et al. 2025, "Your efficient RL framework secretly brings you
off-policy RL training": truncated IS; masked IS as in verl and TRL's ``vllm_importance_sampling_mode``).
C_max = ``rollout_is_max``, C_min = ``rollout_is_min``; w is a constant (sg[·]); the KL, entropy and
value terms are not reweighted:

    token_truncate     pg_t ← min(max(w_t, C_min), C_max) · pg_t         w_t = π_old(y_t) / μ(y_t)
    token_mask         pg_t ← w_t · [C_min ≤ w_t ≤ C_max] · pg_t
    sequence_truncate  pg_t ← min(max(w_i, C_min), C_max) · pg_t         w_i = Π_t w_t
    sequence_mask      pg_t ← w_i · [C_min ≤ w_i ≤ C_max] · pg_t
    icepop             pg_t ← w_t · [C_min ≤ w_t ≤ C_max] · pg_t
                       (IcePop, Ling Team 2025, "Every Step Evolves" (Ring-1T), arXiv:2510.18855, §3:
                       M(k) = k if α ≤ k ≤ β else 0, both sides masked, α = 0.5, β = 5 in the paper; the
                       same weight as token_mask, and slime's / AReaL's ``icepop``: set
                       rollout_is_min=0.5 rollout_is_max=5)
    geometric_mask     pg_t ← [C_min ≤ w̄_i ≤ C_max] · pg_t                w̄_i = exp((1/|y_i|) Σ_t log w_t)
                       (geometric sequence masking: verl's rollout_rs=geometric, NeMo-RL's / slime's
                       geometric-mean mismatch filter; a rejection of whole sequences, no reweighting,
                       so the bounds are tight around 1, e.g. [0.999, 1.001])
"""

from __future__ import annotations

from typing import ClassVar, Optional

import torch

from prefopt.core.registry import Registry

LOG_W_MAX = 20.0  # overflow guard of exp(log w)


class SamplerCorrection:
    """A ``rollout_is`` mode: ``weight(log_w, mask) -> (w, kept)``; ``log_w`` [B, T] = log π_old − log μ on
    the completion tokens (0 elsewhere); ``w`` [B, T] the factor of pg_t; ``kept`` [B, T] bool, or None for
    a mode that masks nothing."""

    name: ClassVar[str] = ""

    def __init__(self, c_min: float, c_max: float):
        self.c_min, self.c_max = c_min, c_max

    def inside(self, w: torch.Tensor) -> torch.Tensor:
        return (w >= self.c_min) & (w <= self.c_max)

    def weight(self, log_w: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        raise NotImplementedError


SAMPLER_CORRECTIONS = Registry("sampler correction", base=SamplerCorrection, key="algo.rollout_is", sort=False)
register = SAMPLER_CORRECTIONS.register


def _token(log_w, mask):
    return torch.exp(log_w.clamp(max=LOG_W_MAX))


def _sequence(log_w, mask):
    return torch.exp(log_w.sum(-1, keepdim=True).clamp(max=LOG_W_MAX)).expand_as(mask)


@register("none")
class NoCorrection(SamplerCorrection):
    def weight(self, log_w, mask):
        return torch.ones_like(mask), None


@register("token_truncate")
class TokenTruncate(SamplerCorrection):
    def weight(self, log_w, mask):
        return _token(log_w, mask).clamp(self.c_min, self.c_max), None


@register("token_mask")
class TokenMask(SamplerCorrection):
    def weight(self, log_w, mask):
        w = _token(log_w, mask)
        keep = self.inside(w)
        return w * keep, keep


@register("sequence_truncate")
class SequenceTruncate(SamplerCorrection):
    def weight(self, log_w, mask):
        return _sequence(log_w, mask).clamp(self.c_min, self.c_max), None


@register("sequence_mask")
class SequenceMask(SamplerCorrection):
    def weight(self, log_w, mask):
        w = _sequence(log_w, mask)
        keep = self.inside(w)
        return w * keep, keep


@register("icepop")
class IcePop(TokenMask):
    pass


@register("geometric_mask")
class GeometricMask(SamplerCorrection):
    def weight(self, log_w, mask):
        n_tok = mask.sum(-1, keepdim=True).clamp(min=1)
        w_geo = torch.exp(((log_w * mask).sum(-1, keepdim=True) / n_tok).clamp(max=LOG_W_MAX)).expand_as(mask)
        keep = self.inside(w_geo)
        return keep.to(mask.dtype), keep
