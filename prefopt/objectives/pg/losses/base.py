r"""The policy-loss extension point: one file per family, registered by name behind :class:`PolicyLoss`.

A family turns the current log-probs log π(y_t), the rollout's log π_old(y_t) and the advantages A_t
([B, T], zero off the completion mask) into the per-token policy-gradient loss pg_t that
:class:`prefopt.objectives.policy_gradient.PolicyGradient` reweights (sampler correction, entropy
control), adds the KL / entropy / value terms to, and aggregates (``loss_agg``).

The importance ratio ρ_t is an axis shared by the families that use it (``ratio_level``):

    token           ρ_t = π(y_t) / π_old(y_t)
    sequence        ρ_t = s_i(θ) = exp((1/|y_i|) Σ_u log(π(y_u)/π_old(y_u)))   for every t ∈ y_i
                    (GSPO, Zheng et al. 2025, arXiv:2507.18071, eq. 7: the length-normalised sequence
                    ratio; its gradient is s_i · (1/|y_i|) Σ_u ∇log π(y_u), eq. 10)
    sequence_token  ρ_t = sg[s_i] · π(y_t) / sg[π(y_t)]
                    (GSPO-token, ibid. eq. 13–14: the value is s_i, the gradient s_i ∇log π(y_t), so
                    token advantages A_t weigh their own token; with A_t = A_i, the same value and
                    gradient as ``sequence``)
    sequence_sum    the whole completion is one action (the clip family only; see its file)

The log-ratio is clamped at 20 before exp (an overflow guard that no trained ratio reaches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from prefopt.core.errors import UserError
from prefopt.core.registry import Registry

LOG_RATIO_MAX = 20.0  # nats; exp(20) ≈ 5e8, far beyond any clip range


@dataclass
class PGTerms:
    """What a family returns: ``pg`` [B, T] the per-token loss (0 off the mask); ``ratio`` [B, T] the
    ratio it used, detached, for the metrics; ``clipped`` [B, T] bool, tokens whose gradient its trust
    region removed (clipped, masked or gated out)."""

    pg: torch.Tensor
    ratio: torch.Tensor
    clipped: torch.Tensor


class PolicyLoss:
    """A policy-loss family. ``ratio_levels``: the ``ratio_level`` values it accepts; ``check(cfg)``: its
    own checks of the PG config (UserError); ``__call__(logp, old, A, mask) -> PGTerms``."""

    name: ClassVar[str] = ""
    ratio_levels: ClassVar[tuple] = ("token",)
    eps_low_may_be_1: ClassVar[bool] = False  # clip_eps_low = 1 accepted (cispo: no lower bound)

    def __init__(self, cfg):
        self.cfg = cfg

    @classmethod
    def check(cls, cfg) -> None:
        low_max_ok = cfg.clip_eps_low <= 1 if cls.eps_low_may_be_1 else cfg.clip_eps_low < 1
        if not (0 <= cfg.clip_eps_low and low_max_ok and cfg.clip_eps_high >= 0):
            raise UserError(f"algo.clip_eps_low={cfg.clip_eps_low} must be in [0, 1) ([0, 1] for cispo: 1 is no lower "
                            "bound) and clip_eps_high >= 0")
        if cfg.ratio_level not in cls.ratio_levels:
            raise UserError(f"algo.policy_loss={cls.name} takes ratio_level={'|'.join(cls.ratio_levels)}, "
                            f"not '{cfg.ratio_level}'")

    def __call__(self, logp: torch.Tensor, old: torch.Tensor, A: torch.Tensor, mask: torch.Tensor) -> PGTerms:
        raise NotImplementedError


def log_ratio(logp: torch.Tensor, old: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """log ρ_t [B, T] of the module docstring for ratio_level ``level`` (token | sequence | sequence_token)."""
    d = logp - old
    if level == "token":
        return d
    n_tok = mask.sum(-1, keepdim=True).clamp(min=1)
    log_s = (d * mask).sum(-1, keepdim=True) / n_tok  # log s_i
    if level == "sequence":
        return log_s.expand_as(d)
    return log_s.detach() + logp - logp.detach()  # sequence_token


def sequence_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1/|y_i|) Σ_t x_t over each row's completion tokens → [B]."""
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)


POLICY_LOSSES = Registry("policy loss", base=PolicyLoss, key="algo.policy_loss")
register = POLICY_LOSSES.register
