r"""Advantage estimators: the "advantage" axis of the online pipeline.

Scores r_i are per sequence (reward, after any KL-in-reward term); a rollout holds G groups of K
samples of the same prompt, sequence i = g·K + k. Sequence-level advantages are broadcast to
every completion token.

    leave_one_out   A_i = r_i − 1/(K−1) Σ_{j≠i in group} r_j                    (RLOO; Kool et al.
                    2019, Ahmadian et al. 2024, arXiv:2402.14740)
    group           A_i = (r_i − mean_group(r)) / (std_group(r) + ε)            (GRPO; Shao et al.
                    2024, arXiv:2402.03300; std is the unbiased sample std, as in TRL and verl;
                    ε = 1e-6 as in verl, where TRL's GRPOTrainer adds 1e-4: for a near-tied group
                    prefopt's advantages are many times TRL's, ~2× at std = 1e-4, ~50× at 1e-6)
    group, no std   A_i = r_i − mean_group(r)                                   (Dr. GRPO; Liu et al.
                    2025, arXiv:2503.20783)
    baseline        A_i = r_i − b,  b ← d·b + (1−d)·mean(r) after each rollout  (REINFORCE with a
                    moving-average baseline; Williams 1992. The first rollout uses its own mean.)
    gdpo            several reward terms r_{i,k} with weights w_k (``reward=list``): each term normalised in
                    its group, the weighted sum normalised over the rollout (GDPO, Liu et al. 2026,
                    arXiv:2601.05242, eq. 4–6; TRL's ``multi_objective_aggregation="normalize_then_sum"``):
                        z_{i,k} = (r_{i,k} − mean_group(r_k)) / (std_group(r_k) + ε)
                        s_i = Σ_k w_k z_{i,k}
                        A_i = (s_i − mean_rollout(s)) / (std_rollout(s) + ε)
                    (unbiased stds; ε = 1e-6 as ``group``, TRL's 1e-4; TRL's rollout is gathered
                    from every process, prefopt's is the process's own)
    gae             δ_t = r_t + γ V_{t+1} − V_t,   A_t = Σ_l (γλ)^l δ_{t+l},   R_t = A_t + V_t
                    per token, V past the last token = 0 (Schulman et al. 2016, arXiv:1506.02438)

Whitening (PPO): A ← (A − mean(A)) / (std(A) + ε) over the rollout's completion tokens.
"""

from __future__ import annotations

from typing import Optional

import torch

ESTIMATORS = ("gae", "leave_one_out", "group", "baseline", "gdpo")


def leave_one_out(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] → [N]; N = G·K with groups contiguous."""
    r = scores.view(-1, group_size)
    K = group_size
    baseline = (r.sum(-1, keepdim=True) - r) / (K - 1)
    return (r - baseline).view(-1)


def group_normalized(scores: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """[N] → [N]; N = G·K with groups contiguous."""
    r = scores.view(-1, group_size)
    A = r - r.mean(-1, keepdim=True)
    if scale_by_std:
        A = A / (r.std(-1, keepdim=True) + eps)
    return A.view(-1)


def gdpo(terms: torch.Tensor, weights: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """[N, R] reward terms, [R] weights → [N]; N = G·K with groups contiguous."""
    N, R = terms.shape
    r = terms.view(-1, group_size, R)
    z = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)
    s = (z * weights.to(terms.dtype)).sum(-1).view(-1)
    if s.numel() < 2:
        return s - s.mean()
    return (s - s.mean()) / (s.std() + eps)


class MovingBaseline:
    """b for REINFORCE with a baseline: an exponential moving average of past rollouts' mean
    score (the current rollout's own mean on the first call)."""

    def __init__(self, decay: float = 0.9):
        self.decay = decay
        self.value: Optional[float] = None

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        mean = float(scores.mean())
        b = mean if self.value is None else self.value
        self.value = mean if self.value is None else self.decay * self.value + (1 - self.decay) * mean
        return scores - b


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95):
    """Per-token rewards and values [B, T] (zero outside ``mask``) → (advantages, returns) [B, T].

    The recursion runs over the masked tokens of a row only: t + 1 below is the row's next masked
    position, so a multi-turn episode's policy turns form one chain across the environment's tokens
    between them (single-turn completions are contiguous, where it is the plain recursion). The value
    after the last masked token is 0 (terminal):

        δ_t = r_t + γ V_{t+1} − V_t,    A_t = δ_t + γ λ A_{t+1}"""
    mask = mask.to(rewards.dtype)
    r, v = rewards * mask, values * mask
    B, T = r.shape
    A = torch.zeros_like(r)
    last = torch.zeros(B, dtype=r.dtype, device=r.device)  # A at the next masked position
    v_next = torch.zeros_like(last)  # V at the next masked position
    for t in reversed(range(T)):
        on = mask[:, t].bool()
        δ = r[:, t] + gamma * v_next - v[:, t]
        a = (δ + gamma * lam * last) * mask[:, t]
        A[:, t] = a
        last = torch.where(on, a, last)
        v_next = torch.where(on, v[:, t], v_next)
    return A, (A + v) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    m = mask.bool()
    vals = x[m]
    if vals.numel() < 2:
        return x * m
    return ((x - vals.mean()) / (vals.std() + eps)) * m


def broadcast(seq_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] per-sequence values → [B, T] on the completion tokens."""
    return seq_values[:, None].to(torch.float32) * mask.to(torch.float32)
