"""Ranked preference data: K completions of one prompt ranked by a labeller (InstructGPT's format,
Ouyang et al. 2022, arXiv:2203.02155, §3.5).

A row holds ``prompt``, ``completions`` (a list of K ≥ 2 completions, each plain text or a list
holding one assistant message) and either ``ranks`` (K integers, 1 = best) or ``scores`` (K finite
numbers, higher = better). Ties are allowed: tied completions share a rank (or a score). Accepted
rank lists are a permutation of 1..K, or, with ties, the standard competition ranking (1, 2, 2, 4)
or the dense ranking (1, 2, 2, 3); scores become competition ranks.

A ranking of K completions without ties implies C(K, 2) = K(K−1)/2 ordered pairs; a pair of tied
completions implies none. Methods that train on pairs get them by ``data.ranking_to_pairs``:

    all           every pair (i, j) with rank_i < rank_j             (C(K,2) without ties)
    best_vs_rest  each best completion against every worse one       (K − 1 without ties)
    adjacent      each completion against those one rank level below (K − 1 without ties)

The reward model trains on the ranking itself (one example per prompt, :mod:`prefopt.objectives.reward`).
"""

from __future__ import annotations

import math
from collections import Counter
from math import comb
from typing import Any, Optional

from prefopt.core.errors import UserError

PAIRINGS = ("all", "best_vs_rest", "adjacent")
ACCEPTED = ("prompt, completions (a list of K >= 2), and ranks (K integers, 1 = best, ties share a rank) "
            "or scores (K numbers, higher = better)")


def is_ranked(rows: list[dict]) -> bool:
    cols = set(rows[0]) if rows else set()
    return "completions" in cols and bool({"ranks", "scores"} & cols)


def check_pairing(mode: str) -> None:
    if mode not in PAIRINGS:
        raise UserError(f"data.ranking_to_pairs='{mode}' is not known; accepted: {', '.join(PAIRINGS)}")


def ranks_of(row: dict) -> list[int]:
    """The row's ranks (1 = best); from ``scores`` as competition ranks (1 + the number of better scores)."""
    if row.get("ranks") is not None:
        return [int(r) for r in row["ranks"]]
    s = row["scores"]
    return [1 + sum(1 for t in s if t > v) for v in s]


def check_ranking(row: dict, loc_of) -> None:
    """Raise UserError naming the field when ``completions`` / ``ranks`` / ``scores`` is malformed.
    ``loc_of(field)`` formats the location (file, row, field)."""
    comps = row.get("completions")
    if not isinstance(comps, list):
        raise UserError(f"{loc_of('completions')}: {type(comps).__name__} is not a list; accepted: {ACCEPTED}")
    K = len(comps)
    if K < 2:
        raise UserError(f"{loc_of('completions')}: holds {K} completion(s); accepted: K >= 2 completions to rank")
    has_ranks, has_scores = row.get("ranks") is not None, row.get("scores") is not None
    if has_ranks == has_scores:
        raise UserError(f"{loc_of('ranks')}: " + ("both ranks and scores are set; accepted: one of them" if has_ranks
                                                  else f"no ranks or scores; accepted: {ACCEPTED}"))
    field = "ranks" if has_ranks else "scores"
    vals = row[field]
    if not isinstance(vals, list) or len(vals) != K:
        n = len(vals) if isinstance(vals, list) else type(vals).__name__
        raise UserError(f"{loc_of(field)}: {n} {field} for {K} completions; accepted: one per completion")
    if has_scores:
        for j, v in enumerate(vals):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise UserError(f"{loc_of(field)}: scores[{j}] = {v!r} is not a finite number; accepted: K finite numbers")
        return
    for j, v in enumerate(vals):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= K:
            raise UserError(f"{loc_of(field)}: ranks[{j}] = {v!r}; accepted: integers in 1..{K} (1 = best)")
    if not _is_ranking(vals):
        raise UserError(f"{loc_of(field)}: {vals} is not a ranking of {K} completions; accepted: a permutation of "
                        f"1..{K}, or with ties the competition ranking (1, 2, 2, 4) or the dense ranking (1, 2, 2, 3)")


def _is_ranking(ranks: list[int]) -> bool:
    s = sorted(ranks)
    competition = all(r == 1 + sum(1 for t in s if t < r) for r in s)
    dense = set(s) == set(range(1, s[-1] + 1))
    return competition or dense


def ordered_pairs(ranks: list[int], mode: str = "all") -> list[tuple[int, int]]:
    """(winner index, loser index) pairs implied by ``ranks`` under a pairing mode (ties give none)."""
    check_pairing(mode)
    K = len(ranks)
    if mode == "all":
        return [(i, j) for i in range(K) for j in range(K) if ranks[i] < ranks[j]]
    if mode == "best_vs_rest":
        top = min(ranks)
        return [(i, j) for i in range(K) if ranks[i] == top for j in range(K) if ranks[j] > top]
    levels = sorted(set(ranks))
    nxt = dict(zip(levels, levels[1:]))
    return [(i, j) for i in range(K) for j in range(K) if ranks[i] in nxt and ranks[j] == nxt[ranks[i]]]


def ranked_to_paired(rows: list[dict], mode: str, source_row: str) -> list[dict]:
    """Pair rows (prompt, chosen, rejected) from ranked rows; each remembers its ranked row."""
    out = []
    for i, row in enumerate(rows):
        rid = row.get(source_row, i)
        base = {k: v for k, v in row.items() if k not in ("completions", "ranks", "scores")}
        for w, l in ordered_pairs(ranks_of(row), mode):
            out.append({**base, "chosen": row["completions"][w], "rejected": row["completions"][l], source_row: rid})
    return out


def pair_count(ranks: list[int], mode: str = "all") -> int:
    """len(ordered_pairs(ranks, mode)), counted from the rank levels' sizes without listing the pairs."""
    sizes = [n for _, n in sorted(Counter(ranks).items())]
    if mode == "all":
        return comb(len(ranks), 2) - sum(comb(n, 2) for n in sizes)
    if mode == "best_vs_rest":
        return sizes[0] * (len(ranks) - sizes[0])
    return sum(a * b for a, b in zip(sizes, sizes[1:]))


# A pair held for training costs about this much beyond its text: the example dict, the token-id lists
# of prompt, chosen and rejected, and their list headers (measured ~0.9 KB on CPython 3.11 for short text).
PAIR_BYTES = 1024


def check_pair_budget(rows: list[dict], mode: str, source: str, available_bytes: Optional[int]) -> int:
    """The number of pairs ``rows`` make under ``mode``; a UserError naming data.ranking_to_pairs when
    holding them (≈ PAIR_BYTES + 8 bytes per character of text each) would take more than half of
    ``available_bytes`` (None: not checked)."""
    n = est = 0
    for r in rows:
        k = pair_count(ranks_of(r), mode)
        n += k
        chars = sum(len(str(c)) for c in r["completions"]) / max(1, len(r["completions"]))
        est += k * (PAIR_BYTES + 8 * (len(str(r.get("prompt", ""))) + 2 * chars))
    if available_bytes is not None and est > available_bytes / 2:
        alt = {m: sum(pair_count(ranks_of(r), m) for r in rows) for m in PAIRINGS if m != mode}
        raise UserError(f"{source}: the rankings make {n:,} pairs with data.ranking_to_pairs={mode}, about "
                        f"{est / 2**30:.1f} GiB to hold, more than half of the {available_bytes / 2**30:.1f} GiB of "
                        "memory available; accepted: " + ", ".join(f"data.ranking_to_pairs={m} ({c:,} pairs)"
                                                                   for m, c in alt.items())
                        + ", fewer completions per prompt, or algo=reward (trains on the rankings themselves)")
    return n


def pairing_summary(rows: list[dict], mode: str = "all", as_rankings: bool = False) -> str:
    """One start-up line: how many pairs the ranked rows make, e.g. '30 prompts × C(4,2) = 180 pairs'.
    ``as_rankings``: the objective trains on the rankings themselves (all their pairs, one example per prompt)."""
    mode = "all" if as_rankings else mode
    Ks = sorted({len(r["completions"]) for r in rows})
    n = sum(pair_count(ranks_of(r), mode) for r in rows)
    ties = sum(comb(len(r["completions"]), 2) - pair_count(ranks_of(r), "all") for r in rows)
    if mode == "all" and len(Ks) == 1 and not ties:
        head = f"{len(rows)} prompts × C({Ks[0]},2) = {n} pairs"
    else:
        kdesc = f"K={Ks[0]}" if len(Ks) == 1 else f"K={Ks[0]}..{Ks[-1]}"
        head = f"{len(rows)} prompts ({kdesc}) → {n} pairs"
    how = "trained as rankings, one example per prompt" if as_rankings else f"data.ranking_to_pairs={mode}"
    tail = f", {ties} tied pairs skipped" if ties else ""
    return f"ranked data: {head} ({how}{tail})"
