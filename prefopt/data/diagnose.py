"""Where a local data file fails to parse, in one line: '<file>, line L (row R)[, column C]: what'.
``datasets`` reports a bad row as a long traceback from Arrow; this reads the file itself."""

from __future__ import annotations

import json
import os
from typing import Optional

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
def diagnose(files, builder) -> Optional[str]:
    """The first place a local data file fails to parse, as '<file>, line L (row R)[, column C]: what',
    or None when every file parses (the failure is elsewhere). Rows are 0-based, as in datasets;
    lines and columns 1-based, as in an editor."""
    for path in files:
        b = FILE_BUILDERS.get(os.path.splitext(path)[1].lower())
        if os.path.getsize(path) == 0:
            return f"{path}: the file is empty; accepted: a data file with at least one row"
        if b == "json":
            found = _diagnose_json(path)
        elif b == "csv":
            found = _diagnose_csv(path)
        else:
            continue
        if found:
            return f"{path}, {found}"
    return None


def _utf8_lines(path: str):
    """(line number, text) per line; the first line that is not UTF-8 raises _Found."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _Found(f"line {n}, byte {e.start + 1}: 0x{raw[e.start]:02x} is not UTF-8 text; "
                             "accepted: UTF-8 encoded files") from None


class _Found(Exception):
    pass


def _diagnose_json(path: str) -> Optional[str]:
    try:
        lines = list(_utf8_lines(path))
    except _Found as f:
        return str(f)
    text = "".join(t for _, t in lines)
    stripped = text.lstrip()
    if not stripped:
        return "the file is empty; accepted: at least one row"
    if stripped.startswith("["):  # one JSON document: a list of rows
        try:
            json.loads(text)
            return None
        except json.JSONDecodeError as e:
            return f"line {e.lineno}, column {e.colno}: not valid JSON ({e.msg}); accepted: a JSON list of objects"
    row, types = 0, {}
    for n, t in lines:
        t = t.rstrip("\r\n")
        if not t.strip():
            continue
        try:
            obj = json.loads(t)
        except json.JSONDecodeError as e:
            if n == 1 and stripped.startswith("{"):
                try:  # a single pretty-printed JSON document ({"data": [...]}) is not JSON Lines
                    json.loads(text)
                    return None
                except json.JSONDecodeError:
                    pass
            return (f"line {n} (row {row}), column {e.colno}: not valid JSON ({e.msg}); "
                    "accepted: one JSON object per line")
        if not isinstance(obj, dict):
            return f"line {n} (row {row}): a JSON {type(obj).__name__}, not an object; accepted: one JSON object per line"
        for k, v in obj.items():
            kind = _json_kind(v)
            if kind is None:
                continue
            first = types.setdefault(k, (kind, row))
            if first[0] != kind:  # Arrow needs one type per column
                return (f"line {n} (row {row}), field '{k}': a JSON {kind} where row {first[1]} has a {first[0]}; "
                        "accepted: one type per column")
        row += 1
    return None


def _json_kind(v) -> Optional[str]:
    if v is None:
        return None
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}[type(v)]


def _diagnose_csv(path: str) -> Optional[str]:
    import csv

    try:
        lines = [t for _, t in _utf8_lines(path)]
    except _Found as f:
        return str(f)
    reader = csv.reader(lines)
    header = None
    try:
        for i, fields in enumerate(reader):
            if header is None:
                header = fields
                continue
            if fields and len(fields) != len(header):
                return (f"line {reader.line_num} (row {i - 1}): {len(fields)} fields, the header has {len(header)} "
                        f"({', '.join(header)}); accepted: one field per column (quote text holding commas)")
    except csv.Error as e:
        return f"line {reader.line_num}: {e}; accepted: comma-separated values with a header line"
    return None
