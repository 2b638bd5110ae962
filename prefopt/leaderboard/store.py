"""The results store: one JSON file per run, ``results/<result_id>.json`` (the run's identity: config,
code version, CPU capability; see :mod:`prefopt.leaderboard.identity`; records made before identities
existed are named by their ``config_hash``).

Writes are atomic (:mod:`prefopt.core.files`): the record goes to a private temporary file in the same
directory (unique per process and call), is flushed and fsynced, then ``os.replace``-d onto its name. A
reader therefore sees either no file or a whole one, and parallel writers never interleave bytes: the
last complete write of a hash wins, and writes of different hashes never touch each other.

Reading is strict: a file that does not parse, is not an object, lacks the fields the leaderboard
aggregates (or has them of another type: a ``leaderboard`` that is not a mapping), does not match its own name, or was written under another ``result_version`` (its fields
mean something else) is *reported* (returned in ``problems``) and skipped, never silently counted.
Temporary files left by a killed writer are reported as partial.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field

from prefopt.core import files

RESULT_VERSION = 2
# The best-of-n baseline's method and job kind, as results on disk spell it.
BEST_OF_N = "best_of_n"
# What every counted record must carry (``eval`` may hold nulls: a field that does not apply).
REQUIRED = ("config_hash", "status", "leaderboard")
REQUIRED_OK = ("eval",)
TMP_PREFIX = files.TMP_PREFIX


def result_path(results_dir: str, config_hash: str) -> str:
    return os.path.join(results_dir, f"{config_hash}.json")


def record_id(record: dict) -> str:
    return record.get("result_id") or record["config_hash"]


def write_result(results_dir: str, record: dict) -> str:
    """Atomically write ``record`` (which names its ``result_id``, or its ``config_hash``); returns the path."""
    h = record_id(record)
    if not isinstance(h, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", h) or h.startswith("."):
        raise ValueError(f"config_hash {h!r} is not a safe file name")
    path = result_path(results_dir, h)
    files.write_json(path, record, indent=1, sort_keys=True, default=str)
    return path


def _check(rec, name: str):
    """None if ``rec`` is a countable record, else the reason it is not."""
    if not isinstance(rec, dict):
        return f"not a JSON object ({type(rec).__name__})"
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    lb = rec["leaderboard"]
    # every reader calls lb.get(...): a null or a list here would end render in a traceback
    if not isinstance(lb, dict):
        return f"field leaderboard is {json.dumps(lb)[:40]}, not a mapping"
    if not isinstance(lb.get("also") or [], list) or not all(isinstance(a, dict) for a in lb.get("also") or []):
        return "field leaderboard.also is not a list of mappings"
    if not isinstance(record_id(rec), str):
        return f"result id {record_id(rec)!r} is not a string"
    if f"{record_id(rec)}.json" != name:
        return f"result id {record_id(rec)!r} does not match the file name"
    if rec.get("result_version", RESULT_VERSION) != RESULT_VERSION:
        return f"result_version {rec['result_version']!r}; this code reads version {RESULT_VERSION} only"
    if rec["status"] == "ok":
        missing = [k for k in REQUIRED_OK if not isinstance(rec.get(k), dict)]
        if missing:
            return f"status ok but missing {', '.join(missing)}"
    return None


def read_result(path: str):
    """(record, None) or (None, reason)."""
    rec, why, _ = _read(path)
    return rec, why


def _read(path: str):
    """(record, None, sha256 of the bytes read) or (None, reason, None): the digest is of the very bytes parsed,
    so a board's manifest names what it was built from even while a run rewrites the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        rec = json.loads(data.decode("utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        return None, f"unreadable ({e.__class__.__name__}: {e})", None
    except json.JSONDecodeError as e:
        return None, f"corrupt JSON ({e.msg} at line {e.lineno} column {e.colno})", None
    why = _check(rec, os.path.basename(path))
    return (None, why, None) if why else (rec, None, hashlib.sha256(data).hexdigest())


def has_result(results_dir: str, config_hash: str) -> bool:
    """A complete, successful result exists for this hash (failed runs are retried)."""
    rec, _ = read_result(result_path(results_dir, config_hash))
    return rec is not None and rec.get("status") == "ok"


@dataclass
class Loaded:
    ok: list = field(default_factory=list)  # status "ok" records
    failed: list = field(default_factory=list)  # status "failed" records (reported, not aggregated)
    problems: list = field(default_factory=list)  # (file name, reason): corrupt / partial / foreign
    sha256: dict = field(default_factory=dict)  # result id -> sha256 of its file as read (ok and failed records)


def load_results(results_dir: str) -> Loaded:
    out = Loaded()
    if not os.path.isdir(results_dir):
        return out
    for name in sorted(os.listdir(results_dir)):
        path = os.path.join(results_dir, name)
        if name.startswith(TMP_PREFIX):
            out.problems.append((name, "partial write (a temporary file left by an interrupted writer)"))
            continue
        if not name.endswith(".json") or not os.path.isfile(path):
            continue
        rec, why, digest = _read(path)
        if rec is None:
            out.problems.append((name, why))
            continue
        out.sha256[record_id(rec)] = digest
        if rec["status"] == "ok":
            out.ok.append(rec)
        else:
            out.failed.append(rec)
    return out
