"""The one selection rule of the leaderboard, applied to every method alike.

A method's tuning grid (its learning rates × its declared main coefficient, ``Objective.tuning``) runs
on the tuning seeds. Each grid point is scored by its **validation** evaluation at the end of training
(``eval_periodic`` of the result: the validation prompts; never the test prompts of ``eval``), averaged
over the tuning seeds. Two picks:

- ``best``: the highest mean validation gold reward;
- ``at_budget``: the highest mean validation gold reward among the points whose mean validation KL
  is at most the suite's ``pick_kl_budget`` (none if no point is within it).

Ties go to the earlier grid point (grid order: learning rate, then coefficient, as declared), so a
selection is a deterministic function of validation numbers alone. Only the picks run on the report
seeds, and only those runs' test-prompt numbers are reported.
"""

from __future__ import annotations

import math
from typing import Optional


def validation_score(rec: dict) -> Optional[dict]:
    """{"gold", "kl"} from a result's validation evaluation, or None if it has none."""
    ev = rec.get("eval_periodic") or {}
    g, k = ev.get("gold_reward"), ev.get("kl_to_ref")
    ok = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    return {"gold": float(g), "kl": float(k)} if ok(g) and ok(k) else None


def grid_scores(points: list, records_by_point: list) -> list:
    """[{"point", "val_gold", "val_kl", "seeds"}] in grid order; records_by_point[i] lists point i's records."""
    out = []
    for point, recs in zip(points, records_by_point):
        scores = [s for s in (validation_score(r) for r in recs) if s is not None]
        out.append({"point": dict(point), "seeds": len(scores),
                    "val_gold": sum(s["gold"] for s in scores) / len(scores) if scores else None,
                    "val_kl": sum(s["kl"] for s in scores) / len(scores) if scores else None})
    return out


def choose(scored: list, kl_budget: Optional[float]) -> dict:
    """{"best": grid entry or None, "at_budget": grid entry or None} by the rule above."""
    usable = [s for s in scored if s["val_gold"] is not None]

    def top(cands):
        best = None
        for s in cands:  # strict >: the earlier grid point wins a tie
            if best is None or s["val_gold"] > best["val_gold"]:
                best = s
        return best

    within = [s for s in usable if kl_budget is not None and s["val_kl"] <= kl_budget]
    return {"best": top(usable), "at_budget": top(within) if kl_budget is not None else None}
