"""What a board was built from: ``MANIFEST.json`` next to LEADERBOARD.md, written by ``render``.

    {"suite": "standard", "code_version": "27b998390438", "cpu_capability": "AVX512",
     "results": {"<result id>": "<sha256 of results/<result id>.json>", ...}}   (ids sorted)

The results are every record the board read (successful and failed runs: each enters a row, a count or a
note); the code version and CPU capability are those of the results the board shows. A result deleted from
``results/``, or rewritten, would otherwise change the board without a word: ``render`` compares the results
with the previous manifest before it replaces it, and says which are missing or changed (in its output and on
the board's Notes); ``prefopt-leaderboard verify`` checks a committed board against the results on disk.
"""

from __future__ import annotations

import json
import os
from typing import Optional

from prefopt.core import files
from prefopt.core.errors import UserError
from prefopt.leaderboard.store import result_path

MANIFEST = "MANIFEST.json"
# Ids named in one line of a note before "… and N more" (the rest are in the command's own output).
SHOWN_IDS = 12


def path_of(out_dir: str) -> str:
    return os.path.join(out_dir, MANIFEST)


def build(loaded, suite: str, version: Optional[tuple]) -> dict:
    code, cpu = version or (None, None)
    return {"suite": suite, "code_version": code, "cpu_capability": cpu, "results": dict(sorted(loaded.sha256.items()))}


def write(out_dir: str, manifest: dict) -> None:
    files.write_json(path_of(out_dir), manifest, indent=1, sort_keys=True)


def read(out_dir: str) -> Optional[dict]:
    """The manifest in ``out_dir``: None when there is none; a file that is not one is a one-line UserError."""
    path = path_of(out_dir)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a board manifest ({e.__class__.__name__}: {e}); accepted: the {MANIFEST} that "
                        "`prefopt-leaderboard render` writes (render again to replace it)") from None
    ok = isinstance(m, dict) and isinstance(m.get("results"), dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in m["results"].items())
    if not ok:
        raise UserError(f"{path}: not a board manifest (no 'results' mapping of result id to sha256); accepted: the "
                        f"{MANIFEST} that `prefopt-leaderboard render` writes (render again to replace it)")
    return m


def changes(before: dict, now: dict) -> dict:
    """{"missing": ids of ``before`` absent ``now``, "changed": ids whose sha256 differs, "new": ids only ``now``}."""
    b, n = before["results"], now["results"]
    return {"missing": sorted(set(b) - set(n)), "changed": sorted(k for k in set(b) & set(n) if b[k] != n[k]),
            "new": sorted(set(n) - set(b))}


def _ids(ids: list) -> str:
    more = f" … and {len(ids) - SHOWN_IDS} more" if len(ids) > SHOWN_IDS else ""
    return ", ".join(ids[:SHOWN_IDS]) + more


def change_lines(diff: Optional[dict]) -> list:
    """The board's note (and render's line) on what changed since the last manifest: missing and changed results
    named, new ones counted; [] with no earlier manifest."""
    if diff is None:
        return []
    if not diff["missing"] and not diff["changed"]:
        return [f"Since the previous board's {MANIFEST}: no result missing or changed, {len(diff['new'])} new."]
    out = [f"Since the previous board's {MANIFEST}: {len(diff['missing'])} result(s) missing, {len(diff['changed'])} "
           f"changed, {len(diff['new'])} new."]
    if diff["missing"]:
        out.append(f"Missing since the previous board (deleted or now unreadable): {_ids(diff['missing'])}.")
    if diff["changed"]:
        out.append(f"Changed since the previous board (rewritten: a rerun or an edit): {_ids(diff['changed'])}.")
    return out


def verify(out_dir: str) -> tuple[list, str]:
    """(one line per missing or changed result, a summary line): the results of ``out_dir``'s manifest against
    ``out_dir/results``; no problem lines when every one is there with its sha256. No manifest is a UserError."""
    m = read(out_dir)
    if m is None:
        raise UserError(f"{path_of(out_dir)}: no board manifest; accepted: a board directory that "
                        "`prefopt-leaderboard render` wrote (dir=DIR, default leaderboard)")
    res = os.path.join(out_dir, "results")
    bad = []
    for rid, want in m["results"].items():
        path = result_path(res, rid)
        if not os.path.isfile(path):
            bad.append(f"missing: {path} (result {rid} of the board)")
            continue
        got = files.sha256_file(path)
        if got != want:
            bad.append(f"changed: {path} (sha256 {got[:12]}…, the board's {want[:12]}…)")
    if bad:
        return bad, (f"prefopt-leaderboard verify: {len(bad)} of {len(m['results'])} result(s) of the board in "
                     f"{path_of(out_dir)} missing or changed; `render` rebuilds the board from the results as they are")
    on_disk = {n[:-5] for n in os.listdir(res) if n.endswith(".json")} if os.path.isdir(res) else set()
    extra = len(on_disk - set(m["results"]))
    tail = (f"; {extra} other file(s) in results/ are not on the board (newer results, or files it skipped)"
            if extra else "")
    return [], (f"prefopt-leaderboard verify: the board in {out_dir} matches its {len(m['results'])} result(s) "
                f"(suite {m.get('suite')}, code version {m.get('code_version')}){tail}")
