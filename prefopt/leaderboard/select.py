"""The one selection rule of the leaderboard, applied to every method alike.

A method's tuning grid (its learning rates × its declared main coefficient, ``Objective.tuning``) runs
on the tuning seeds. Each grid point is scored by its **validation** evaluations (``trajectory`` and
``eval_periodic`` of the result: the validation prompts; never the test prompts of ``eval``):

- **diverged** on a seed: its run failed, or at some validation evaluation, gold < π_SFT's gold − ``gold_drop``,
  or (an accuracy task, the suite's ``accuracy_floor`` f) gold < f · π_SFT's gold, or KL(π‖π_SFT) > ``max_kl``
  (the suite's ``divergence``, per task). The floor catches a collapse that the drop cannot: where π_SFT's
  accuracy is below ``gold_drop``, "π_SFT − gold_drop" is below zero and no accuracy crosses it. A point that diverged on any tuning
  seed is not eligible: a configuration at the edge of divergence survives some seeds and not others,
  and the report seeds are other seeds;
- **score**: the worst tuning seed's final validation gold, min_s g_s. With two tuning seeds this is
  exactly mean − std (population std: ½(a+b) − ½|a−b| = min(a, b)), so a point whose seeds disagree
  pays for the disagreement; the mean rewarded luck (a point that one seed survived well).

Two picks among the eligible points:

- ``best``: the highest score;
- ``at_budget``: the highest score among the points whose final validation KL is at most the suite's
  ``pick_kl_budget`` on every tuning seed (none if no point is within it).

**Ties** are exact up to ``TIE_TOLERANCE`` (1e-9: float summation noise; an accuracy task's scores
are multiples of 1 / its validation prompts, so its ties are ties of integer answer counts): every
point within it of the top score is tied, and the tie goes to the more conservative point, the smaller
learning rate, then the larger main coefficient where it anchors the policy to π_SFT (β, kl_coef; any
other coefficient, such as rejection sampling's samples per prompt, the smaller), then the earlier grid
point. A selection is thereby a deterministic function of validation numbers alone, and a pick
that a tie decided says so (``tie_broken``). A ``best`` pick at the top or the
bottom learning rate of the suite's grid extends the grid by one step of the 1–3 series that way
(:func:`extend_lr`), once: the plan runs the new points on the tuning seeds and chooses again over
the whole grid. Only the picks run on the report seeds, and only those runs' test-prompt numbers are
reported. ``rule="mean"`` is the earlier rule (highest mean validation gold, no eligibility), kept
so that the board can show which picks the robust rule changed.
"""

from __future__ import annotations

import math
from typing import Optional

RULES = ("worst_seed", "mean")
TIE_TOLERANCE = 1e-9


def _ok(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validation_score(rec: dict) -> Optional[dict]:
    """{"gold", "kl"} from a result's final validation evaluation, or None if it has none."""
    ev = rec.get("eval_periodic") or {}
    g, k = ev.get("gold_reward"), ev.get("kl_to_ref")
    return {"gold": float(g), "kl": float(k)} if _ok(g) and _ok(k) else None


def divergence_of(rec: dict, gold_drop: Optional[float], max_kl: Optional[float],
                  accuracy_floor: Optional[float] = None) -> Optional[str]:
    """Why a run's validation curve diverged ("gold −5.1 < π_SFT −0.29 − 1 at step 20"), or None.

    The curve is the result's ``trajectory`` (validation evaluations every k steps, step 0 = π_SFT)
    and its final validation evaluation."""
    traj = [p for p in (rec.get("trajectory") or []) if isinstance(p, dict)]
    final = rec.get("eval_periodic") or {}
    g0 = next((p.get("gold_reward") for p in traj if p.get("step") == 0 and _ok(p.get("gold_reward"))), None)
    if g0 is None and _ok(final.get("gold_reward_ref")):
        g0 = final["gold_reward_ref"]
    for p in traj + [{**final, "step": "end"}]:
        g, k = p.get("gold_reward"), p.get("kl_to_ref")
        if gold_drop is not None and g0 is not None and _ok(g) and g < g0 - gold_drop:
            return f"gold {g:.3g} < π_SFT's {g0:.3g} − {gold_drop:g} at step {p.get('step')}"
        if accuracy_floor is not None and g0 is not None and _ok(g) and g < accuracy_floor * g0:
            return f"gold {g:.3g} < {accuracy_floor:g} × π_SFT's {g0:.3g} at step {p.get('step')}"
        if max_kl is not None and _ok(k) and k > max_kl:
            return f"KL {k:.3g} > {max_kl:g} at step {p.get('step')}"
        if _ok(g) is False and g is not None:
            return f"gold {g} at step {p.get('step')}"
    return None


def divergence_rule(divergence: Optional[dict], task: str) -> tuple:
    """(gold_drop, max_kl, accuracy_floor) of a task from a suite's ``divergence`` ({gold_drop: {task: x,
    default: y}, max_kl: {...} or a number, accuracy_floor: {...}}); None for each the suite does not set."""
    d = divergence or {}

    def per_task(v):
        if isinstance(v, dict):
            v = v.get(task, v.get("default"))
        return None if v is None else float(v)

    return per_task(d.get("gold_drop")), per_task(d.get("max_kl")), per_task(d.get("accuracy_floor"))


def grid_scores(points: list, records_by_point: list, gold_drop: Optional[float] = None,
                max_kl: Optional[float] = None, accuracy_floor: Optional[float] = None) -> list:
    """[{"point", "seeds", "val_gold", "val_gold_worst", "val_kl", "val_kl_max", "diverged", "why"}] in
    grid order; records_by_point[i] lists point i's tuning records (one per tuning seed)."""
    out = []
    for point, recs in zip(points, records_by_point):
        scored = [(s, r) for s, r in ((validation_score(r), r) for r in recs) if s is not None]
        whys = [f"run failed: {str(r.get('error') or '')[:80]}" for r in recs if r.get("status") == "failed"]
        whys += [w for w in (divergence_of(r, gold_drop, max_kl, accuracy_floor) for _, r in scored) if w]
        golds, kls = [s["gold"] for s, _ in scored], [s["kl"] for s, _ in scored]
        out.append({"point": dict(point), "seeds": len(scored),
                    "val_gold": sum(golds) / len(golds) if golds else None,
                    "val_gold_worst": min(golds) if golds else None,
                    "val_kl": sum(kls) / len(kls) if kls else None,
                    "val_kl_max": max(kls) if kls else None,
                    "diverged": len(whys), "why": whys[0] if whys else None})
    return out


def choose(scored: list, kl_budget: Optional[float], rule: str = "worst_seed") -> dict:
    """{"best": grid entry or None, "at_budget": grid entry or None} by the rule above."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; accepted: {', '.join(RULES)}")
    if rule == "mean":
        usable = [s for s in scored if s["val_gold"] is not None]
        score, kl = "val_gold", "val_kl"
    else:
        # A point missing a tuning seed's score (its run failed) is not eligible either: its worst seed is unknown.
        seeds = max((s["seeds"] for s in scored), default=0)
        usable = [s for s in scored if s["val_gold_worst"] is not None and not s.get("diverged") and s["seeds"] == seeds]
        score, kl = "val_gold_worst", "val_kl_max"

    def top(cands):
        if not cands:
            return None
        m = max(s[score] for s in cands)
        tied = [s for s in cands if s[score] >= m - TIE_TOLERANCE]
        # min() keeps the first of equals: the earlier grid point after learning rate and coefficient
        best = min(tied, key=conservative)
        return {**best, "tie_broken": len(tied) > 1, "tied_with": [dict(s["point"]) for s in tied if s is not best]}

    within = [s for s in usable if kl_budget is not None and s[kl] <= kl_budget]
    return {"best": top(usable), "at_budget": top(within) if kl_budget is not None else None}


# Coefficients whose larger value holds the policy closer to π_SFT (a KL or preference-margin scale); any other
# coefficient (rejection sampling's samples_per_prompt: more samples, more optimisation pressure) the smaller.
ANCHORS = ("beta", "kl_coef")


def conservative(entry: dict) -> tuple:
    """Sort key of the tie-break: the smaller learning rate, then per coefficient in the order the grid
    point lists them, the larger anchor (``ANCHORS``) or the smaller other value (non-numeric: equal)."""
    point = entry["point"]
    lr = point.get("trainer.lr", point.get("lr", 0.0))
    coefs = [(-v if k.split(".")[-1] in ANCHORS else v) if isinstance(v, (int, float)) else 0.0
             for k, v in point.items() if k not in ("lr", "trainer.lr")]
    return (lr, *coefs)


def extend_lr(lrs: list, side: str) -> float:
    """The next learning rate beyond the grid on the 1–3 series (…, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, …):
    the first value above max(lrs) (side="up") or below min(lrs) (side="down")."""
    lo, hi = min(lrs), max(lrs)
    e = math.floor(math.log10(hi if side == "up" else lo)) - 1
    series = sorted(m * 10.0 ** k for k in range(e - 1, e + 4) for m in (1.0, 3.0))
    series = [float(f"{v:.3g}") for v in series]
    if side == "up":
        return next(v for v in series if v > hi * (1 + 1e-9))
    return next(v for v in reversed(series) if v < lo * (1 - 1e-9))


def edge_of(chosen: dict, scored: list, lrs: list) -> Optional[str]:
    """"up" / "down" when the ``best`` pick sits on the top / bottom learning rate of ``lrs`` (the
    suite's grid), "down" when no point is eligible (every one diverged: the grid starts too high),
    else None."""
    best = chosen.get("best")
    if best is None:
        return "down" if any(s["seeds"] for s in scored) else None
    lr = best["point"].get("trainer.lr", best["point"].get("lr"))
    if lr is None or len(lrs) < 2:
        return None
    if math.isclose(lr, max(lrs), rel_tol=1e-9):
        return "up"
    if math.isclose(lr, min(lrs), rel_tol=1e-9):
        return "down"
    return None
