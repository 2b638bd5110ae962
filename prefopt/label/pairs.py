"""From a judge's pairwise matrices to TRL preference rows, and the summary of how they were made.

Per prompt with K distinct non-empty completions and the judge's matrix P_ij = P(y_i ≻ y_j), the
win rates s_i = 1/(K − 1) Σ_{j≠i} P_ij (:func:`prefopt.rollout.judges.win_rates`) rank them, and
``pairs`` picks the rows:

    best_vs_worst  one row: chosen = argmax_i s_i, rejected = argmin_i s_i (first on ties); equal
                   win rates (all K tied) make no row. Every prompt weighs the same, and it is the
                   pair the judge separates most (for K = 2: the one pair, oriented by the judge).
    all            every pair i < j, chosen = the one with P > ½; P = ½ is a tie and makes no row.

Each row: prompt, chosen, rejected (conversational when the prompt is), score_chosen / score_rejected
(the two win rates), confidence = P(chosen ≻ rejected), and on testbed data gold_chosen / gold_rejected.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from prefopt.core.errors import UserError
from prefopt.core.files import write_jsonl  # noqa: F401  (the writer of the labelled file: all rows or nothing)
from prefopt.rollout.judges import win_rates

PAIRS = ("best_vs_worst", "all")


def distinct(texts: list) -> list:
    """Indices of the non-empty completions, the first of each identical text: an empty completion
    or a pair of equal texts carries no preference (and the data loader refuses either)."""
    seen, keep = set(), []
    for i, t in enumerate(texts):
        key = t.strip()
        if key and key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def choose(P: torch.Tensor, mode: str) -> tuple:
    """([(chosen, rejected, P(chosen ≻ rejected))] within one group, ties dropped, win rates)."""
    if mode not in PAIRS:
        raise UserError(f"pairs={mode!r} is not known; accepted: {', '.join(PAIRS)}")
    s = win_rates(P)
    K = P.shape[0]
    out, ties = [], 0
    if K < 2:
        return out, ties, s
    if mode == "best_vs_worst":
        i, j = int(torch.argmax(s)), int(torch.argmin(s))
        if s[i] == s[j]:
            return out, 1, s
        return [(i, j, float(P[i, j]))], 0, s
    for i in range(K):
        for j in range(i + 1, K):
            p = float(P[i, j])
            if p == 0.5:
                ties += 1
            else:
                out.append((i, j, p) if p > 0.5 else (j, i, 1.0 - p))
    return out, ties, s


def _side(prompt, text: str):
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def preference_rows(prompts: list, groups: list, mats: list, mode: str, gold: Optional[list] = None) -> tuple:
    """(rows, counts) for ``prompts`` (each a row's original prompt value), ``groups`` (the texts of
    each prompt's kept completions), their matrices, and optionally the gold reward of each text."""
    rows, ties, without = [], 0, 0
    for g, (prompt, texts, P) in enumerate(zip(prompts, groups, mats)):
        if len(texts) < 2:
            without += 1
            continue
        chosen, t, s = choose(P, mode)
        ties += t
        for i, j, p in chosen:
            row = {"prompt": prompt, "chosen": _side(prompt, texts[i]), "rejected": _side(prompt, texts[j]),
                   "score_chosen": round(float(s[i]), 6), "score_rejected": round(float(s[j]), 6),
                   "confidence": round(p, 6)}
            if gold is not None:
                row["gold_chosen"], row["gold_rejected"] = gold[g][i], gold[g][j]
            rows.append(row)
    return rows, {"ties_dropped": ties, "prompts_without_pair": without}


def gold_agreement(rows: list) -> tuple:
    """(fraction of rows whose chosen has the higher gold reward, rows compared); gold ties excluded."""
    decided = [r for r in rows if r["gold_chosen"] != r["gold_rejected"]]
    if not decided:
        return None, 0
    return sum(r["gold_chosen"] > r["gold_rejected"] for r in decided) / len(decided), len(decided)


def check_out(out: Optional[str], overwrite: bool) -> str:
    """The output file, refused before anything runs when it cannot be written."""
    if not out:
        raise UserError("out=FILE is missing; accepted: the path of the JSONL to write, e.g. out=pairs.jsonl")
    path = os.path.abspath(os.path.expanduser(out))
    if os.path.isdir(path):
        raise UserError(f"out={out} is a directory; accepted: a file path, e.g. out={os.path.join(out, 'pairs.jsonl')}")
    if os.path.exists(path) and not overwrite:
        raise UserError(f"out={out} already exists; nothing was changed. Accepted: a new file, or overwrite=true")
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"out={out}: '{parent}' is a file, not a directory; accepted: a path in a writable directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"out={out}: the directory '{parent}' is not writable; accepted: a path in a writable directory")
    return path
