"""Pre-registered report seeds: the board shows one block of seeds, written into the suite file and
committed before any of its runs, and checks that it was.

- The block: the suite's ``seed_block`` (e.g. ``v4``) with its ``seeds``; a rule changed after seeing
  results starts a new block of new seeds. Results of other seeds (earlier blocks) are not shown.
- The protocol commit: the latest commit that added the line ``seed_block: <block>`` to the suite file
  (``git log -S``), read from the checkout the suite file lives in.
- The check: every shown report result finished after that commit's time, and ran from a commit that has
  it as an ancestor (``git merge-base --is-ancestor``). A result that fails either is counted on the board.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from typing import Optional

# The roles whose numbers are reported (the tuning seeds never enter a reported number).
REPORTED = ("report", "best_of_n", "ensemble", "ensemble_rm", "ablation")


def _git(cwd: str, *args) -> Optional[str]:
    try:
        p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def protocol_commit(suite_path: str, block: str) -> Optional[tuple]:
    """(commit, its committer time) that wrote ``seed_block: <block>`` into ``suite_path``; None outside git."""
    d, name = os.path.dirname(os.path.abspath(suite_path)), os.path.basename(suite_path)
    out = _git(d, "log", "-1", "--format=%H %cI", "-S", f"seed_block: {block}", "--", name)
    if not out:
        return None
    commit, when = out.split()
    return commit, datetime.datetime.fromisoformat(when)


def shown_seeds(spec) -> set:
    """The seeds a suite's board may show: its report seeds (the block), its tuning seeds, its ablation's."""
    seeds = set(spec.seeds) | set(spec.tuning_seeds)
    if spec.ablation is not None:
        seeds |= set(spec.ablation.seeds)
    return seeds


def check(spec, suite_path: Optional[str], records: list) -> Optional[dict]:
    """{"line", "ok", "commit", "late", "checked"} for the shown records of a suite with a ``seed_block``; None
    for a suite without one."""
    block = getattr(spec, "seed_block", None) if spec is not None else None
    if not block:
        return None
    seeds = ", ".join(str(s) for s in spec.seeds)
    found = protocol_commit(suite_path, block) if suite_path else None
    if found is None:
        return {"ok": False, "commit": None, "late": None, "checked": 0,
                "line": f"Report seeds: block {block} ({seeds}); its protocol commit cannot be looked up here (no git "
                        "history of the suite file), so pre-registration is not verified."}
    commit, when = found
    reported = [r for r in records if r["leaderboard"].get("role") in REPORTED]
    late, ancestry = [], {}
    for r in reported:
        try:
            done = datetime.datetime.fromisoformat(str(r.get("finished_at")))
        except ValueError:
            late.append(r)
            continue
        c = (r.get("git_commit") or "").split("+")[0]
        if c not in ancestry:
            ancestry[c] = bool(c) and _git(os.path.dirname(os.path.abspath(suite_path)), "merge-base", "--is-ancestor",
                                           commit, c) is not None
        if done <= when or not ancestry[c]:
            late.append(r)
    ok = not late
    verdict = ("no reported result yet" if not reported else
               f"all {len(reported)} reported result(s) ran from descendants of it and finished after it" if ok else
               f"{len(late)} of {len(reported)} reported result(s) finished before it or ran from code without it: "
               "this block is not pre-registered for them")
    return {"ok": ok, "commit": commit, "late": len(late), "checked": len(reported),
            "line": f"Report seeds: block {block} ({seeds}), pre-registered in commit `{commit[:12]}` "
                    f"({when.astimezone(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC); {verdict}."}
