"""Shared definitions for every implementation of :func:`prefopt_kernels.fused_logprobs`.

Notation (one row i of the batch, vocabulary index v < vocab_size):

    z_v   = h · W_vᵀ + b_v                                   raw logit
    u_v   = logit_scale · z_v
    s_v   = softcap · tanh(u_v / softcap)      if softcap is set, else u_v
    l_v   = s_v / T                                          tempered logit
    lse   = log Σ_v exp(l_v)
    log p_v = l_v − lse

Order: scale → soft-cap → temperature.  Gemma-2's ``final_logit_softcapping`` is part of the
model's logits, and RL log-probs must be those of the distribution that was sampled from,
i.e. ``log_softmax(logits / T)`` of the already soft-capped logits.

Outputs per row (0 on ignored rows):
    logprobs  log p_t                          (t = target)
    entropy   H = −Σ_v p_v log p_v = lse − Σ_v p_v l_v
    kl        k1 = log p_t − r, k2 = ½ (log p_t − r)², k3 = exp(r − log p_t) − (r − log p_t) − 1
              (r = ref_logprobs, Schulman's estimators of KL(π‖π_ref)), or exact
              KL = Σ_v p_v (log p_v − log q_v) with q from the reference head (no gradient).
    lse       log-sum-exp of the tempered logits.

Gradient w.r.t. the tempered logits l, given upstream gradients g_lp, g_H, g_kl, g_lse:

    ∂logp_t/∂l_v = δ_vt − p_v
    ∂lse/∂l_v    = p_v
    ∂H/∂l_v      = −p_v (log p_v + H)
    ∂KL/∂l_v     = p_v (log p_v − log q_v − KL)               (exact KL)
    ∂k/∂logp_t   = 1 | (log p_t − r) | 1 − exp(r − log p_t)  (k1 | k2 | k3, folded into g_lp)

so   dl_v = g_lp' δ_vt + p_v (c + (g_kl − g_H) log p_v − g_kl log q_v)
with c = −g_lp' + g_lse − g_H H − g_kl KL  (one scalar per row), and then
    dz_v = dl_v · (1 − tanh²(u_v / softcap)) · logit_scale / T    (soft-cap)
    dz_v = dl_v · logit_scale / T                                  (no soft-cap)
    ∂/∂h = dz · W,  ∂/∂W = dzᵀ · h,  ∂/∂b = Σ_rows dz.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch


class FusedOutput(NamedTuple):
    """What :func:`fused_logprobs` returns when more than log-probs were requested.

    Every field is a float32 tensor of shape [N] or None when it was not requested.
    """

    logprobs: torch.Tensor
    entropy: Optional[torch.Tensor]
    kl: Optional[torch.Tensor]
    lse: Optional[torch.Tensor]


KL_ESTIMATORS = ("k1", "k2", "k3")


@dataclass(frozen=True)
class Config:
    temperature: float
    logit_scale: float
    softcap: Optional[float]
    vocab_size: int
    ignore_index: int
    need_entropy: bool
    need_exact_kl: bool


def estimator_value(logp: torch.Tensor, ref: torch.Tensor, kind: str) -> torch.Tensor:
    d = logp - ref
    if kind == "k1":
        return d
    if kind == "k2":
        return 0.5 * d * d
    # k3 with x = r − logp: e^x − x − 1; expm1 keeps precision when the policies agree.
    x = -d
    return torch.expm1(x) - x
