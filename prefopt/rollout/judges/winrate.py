r"""K completions y_1..y_K of one prompt get a score each from a judge's pairwise matrix
P_ij = P(y_i ≻ y_j), their win rate against the others (Borda / Copeland with soft wins):

    score_i = 1/(K − 1) · Σ_{j ≠ i} P_ij            (K = 2: P(y_1 ≻ y_2) and 1 − P(y_1 ≻ y_2); K = 1: ½)

Prompts arrive flat, their completions in consecutive groups (a rollout lays a prompt's samples out
side by side); the judge builds every group's matrix in one batched call (:meth:`Judge.matrices
<prefopt.rollout.judges.base.Judge.matrices>`).
"""

from __future__ import annotations

from typing import Optional

import torch

from prefopt.rollout.judges.base import JudgeRowError, refuse_nonfinite


def consecutive_groups(keys: list) -> list:
    """Sizes of the runs of equal consecutive keys: a rollout lays a prompt's samples out side by
    side, so a run is one prompt's group (the same prompt drawn twice in a row is one prompt still)."""
    sizes = []
    for i, k in enumerate(keys):
        if i and keys[i - 1] == k:
            sizes[-1] += 1
        else:
            sizes.append(1)
    return sizes


def win_rates(P: torch.Tensor) -> torch.Tensor:
    """score_i = 1/(K − 1) · Σ_{j ≠ i} P_ij for a [K, K] matrix; K = 1: ½ (nothing to beat)."""
    K = P.shape[0]
    if K < 2:
        return torch.full((K,), 0.5, dtype=P.dtype)
    return (P.sum(1) - P.diagonal()) / (K - 1)


def preference_matrices(judge, prompts: list, completions: list, sizes: list, names: Optional[list] = None,
                        **kw) -> tuple:
    """(one [K, K] matrix per group, the judge's stats) for flat ``prompts``/``completions`` laid out
    in consecutive groups of ``sizes``; ``kw``: per-completion lists (prompt_ids, completion_ids).
    A group the judge cannot judge (a NaN or ±inf verdict, a judge prompt longer than its model
    reads) is one line naming it by ``names`` (default: "prompt g")."""
    try:
        mats, stats = judge.matrices(list(prompts), list(completions), list(sizes), **kw)
        for g, P in enumerate(mats):
            K = P.shape[0]
            refuse_nonfinite(judge, P, "P(y_i ≻ y_j) =", lambda n: (g, f"completions {n // K} and {n % K}"))
    except JudgeRowError as e:
        raise e.at(names) from None
    return mats, stats


def group_scores(judge, prompts: list, completions: list, sizes: Optional[list] = None,
                 names: Optional[list] = None, **kw) -> torch.Tensor:
    """Each completion's win rate within its group (float32 [N]); ``sizes`` default: runs of equal
    consecutive prompts (:func:`consecutive_groups`)."""
    sizes = sizes or consecutive_groups(list(prompts))
    mats, _ = preference_matrices(judge, prompts, completions, sizes, names=names, **kw)
    return torch.cat([win_rates(P) for P in mats]).float() if mats else torch.zeros(0)
