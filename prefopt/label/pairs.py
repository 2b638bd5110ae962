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

import contextlib
import json
import os
import tempfile
import uuid
from typing import Optional

import torch

from prefopt.core.errors import RunStopped, UserError
from prefopt.core.files import TMP_PREFIX, fsync_dir, tmp_path
from prefopt.core.records import finite_or_none
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
    """The output file, refused before anything runs when it cannot be written. The nearest existing
    directory is probed by creating a file in it: permission bits say nothing to root, and /proc or
    /sys pass ``os.access`` yet refuse every new file."""
    if not out:
        raise UserError("out=FILE is missing; accepted: the path of the JSONL to write, e.g. out=pairs.jsonl")
    path = os.path.abspath(os.path.expanduser(out))
    if os.path.isdir(path):
        raise UserError(f"out={out} is a directory; accepted: a file path, e.g. out={os.path.join(out, 'pairs.jsonl')}")
    if os.path.lexists(path) and not overwrite:
        raise UserError(f"out={out} already exists; nothing was changed. Accepted: a new file, or overwrite=true")
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"out={out}: '{parent}' is a file, not a directory; accepted: a path in a writable directory")
    probe = os.path.join(parent, f"{TMP_PREFIX}probe-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"out={out}: cannot create a file in '{parent}' ({e.strerror or e}); accepted: a path in a "
                        "writable directory") from None
    return path


def _write_file(path: str, text: str) -> None:
    """``text`` into a new file at ``path`` (never an existing one), flushed to disk; on any failure
    the partial file is removed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def _kept_name(path: str) -> str:
    """A visible sibling of ``path`` that no other run picks: pairs.jsonl -> pairs.kept-PID-HEX.jsonl."""
    stem, ext = os.path.splitext(path)
    return f"{stem}.kept-{os.getpid()}-{uuid.uuid4().hex[:6]}{ext or '.jsonl'}"


def _keep_elsewhere(path: str, text: str) -> tuple:
    """(where the rows were kept, or None; why each place failed): the system's temp directory, then
    the working directory, for rows that could not be written beside ``path``."""
    name = os.path.basename(_kept_name(path))
    errors = []
    for folder in (tempfile.gettempdir(), os.getcwd()):
        spare = os.path.join(folder, f"prefopt-label-{name}")
        try:
            _write_file(spare, text)
            return spare, errors
        except OSError as e:
            errors.append(f"{folder}: {e.strerror or e}")
    return None, errors


def write_rows(path: str, rows: list, overwrite: bool = False, shown: Optional[str] = None) -> None:
    """The labelled file, whole or not at all, and never over a file that appeared at ``path`` after
    :func:`check_out` (another run's, or the user's) unless ``overwrite``: the rows go to a temporary
    sibling, which is hard-linked to ``path`` (the link fails if ``path`` exists) and then unlinked.
    When ``path`` cannot take them, the rows are kept in a file the one-line :class:`RunStopped` names."""
    shown = shown or path
    text = "".join(json.dumps(finite_or_none(r), allow_nan=False) + "\n" for r in rows)  # a bad row: before any file
    n = f"{len(rows)} labelled rows"
    tmp = tmp_path(path)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_file(tmp, text)
    except OSError as e:
        kept, errors = _keep_elsewhere(path, text)
        where = f"the {n} were kept in {kept}" if kept else f"the {n} could not be kept anywhere ({'; '.join(errors)})"
        raise RunStopped(f"out={shown}: cannot write '{path}' ({e.strerror or e}); {where}. Accepted: free space or "
                         f"a writable out=, then copy the kept file there") from None
    def stopped(why: str) -> RunStopped:
        kept = _kept_name(path)
        os.replace(tmp, kept)
        return RunStopped(f"out={shown} {why}; the {n} are in {kept}. Accepted: a new out=, or overwrite=true")

    appeared = "appeared while labelling (another run or program wrote it) and was kept as it is"
    try:
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise stopped(appeared) from None
            except OSError:  # a filesystem without hard links: create-exclusive, then copy
                try:
                    _write_file(path, text)
                except FileExistsError:
                    raise stopped(appeared) from None
                except OSError as e:
                    raise stopped(f"could not be written ({e.strerror or e})") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(os.path.dirname(path))
