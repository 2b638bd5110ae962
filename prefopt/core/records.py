"""What a run writes as JSON (metrics.jsonl rows, summary.json, checkpoint metadata) is strict JSON:
no NaN or infinity, which many parsers reject, and one rejected line would lose a whole file.
The writers that apply this are in :mod:`prefopt.core.files`."""

from __future__ import annotations

import math


def finite_or_none(x):
    """``x`` with every NaN / ±inf float replaced by None: strict JSON has no NaN, and a parser that
    rejects one line would lose the whole metrics file."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: finite_or_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite_or_none(v) for v in x]
    return x
