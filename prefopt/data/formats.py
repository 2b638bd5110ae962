"""Data: formats, validation, chat templates, tokenization, masking, collation.

Four data kinds, in TRL's formats (extra columns are kept and ignored):

    paired          prompt, chosen, rejected   (+ optional float ``margin``)
    unpaired        prompt, completion, label  (label: bool, or 0/1)
    prompt_only     prompt
    demonstrations  prompt, completion         (or one ``messages`` column)

Every text field is either a plain string, or conversational: a list of ``{"role", "content"}``
dicts. A conversational prompt ends with a user turn; a conversational chosen / rejected /
completion is a list holding one assistant message; ``messages`` is a whole conversation ending
with an assistant turn. One dataset uses one form throughout.

Pipeline, as the caller runs it::

    rows, source = load_rows(cfg)                       # or load_splits(cfg, seed)
    rows = prepare_rows(rows, kind, cfg, source)        # detect, convert, validate
    examples, report = tokenize_rows(rows, kind, tokenizer, cfg, source)
    batch = collate(examples[:8], kind, pad_token_id)

Every user mistake raises ``UserError`` with one line naming the file, the row (0-based, as in
``datasets``), the field, and what would be accepted.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from typing import Any, Optional

import torch

from prefopt.core.errors import UserError, where

KINDS = ("paired", "unpaired", "prompt_only", "demonstrations")
TRUNCATION_POLICIES = ("truncate", "drop", "error")
ROLES = ("system", "user", "assistant", "tool")

# Text fields that hold a completion, per kind; they are the ones that may not be empty.
COMPLETION_FIELDS = {
    "paired": ("chosen", "rejected"),
    "unpaired": ("completion",),
    "demonstrations": ("completion",),
    "prompt_only": (),
}
COLUMNS_ACCEPTED = {
    "paired": "prompt, chosen, rejected (+ optional margin)",
    "unpaired": "prompt, completion, label",
    "prompt_only": "prompt",
    "demonstrations": "prompt, completion; or messages",
}
# Conversions that change the learning signal, so they happen only when asked for by name
# (data.convert=FROM_to_TO). Taking just the prompts of any dataset is implicit: it is what
# TRL's online trainers do, and it invents nothing.
CONVERSIONS = (
    "paired_to_unpaired",  # KTO on preference data: chosen -> label True, rejected -> False
    "paired_to_demonstrations",  # SFT on the chosen completions
    "paired_to_prompt_only",
    "unpaired_to_prompt_only",
    "demonstrations_to_prompt_only",
    "demonstrations_to_demonstrations",  # messages -> prompt / completion
)
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
ACCEPTED_PATHS = "a .json/.jsonl/.parquet/.csv file, a directory of them, or a datasets name"
# Rows made by convert_rows remember the row they came from, so that errors name the user's row.
_SOURCE_ROW = "_source_row"


@dataclass
class DataConfig:
    """The ``data`` config group. Typed so that OmegaConf.structured rejects an unknown key or a
    wrong type at start-up; value ranges are checked by the functions that use them."""

    name: str = "hf"  # "hf" for a user's data; testbed names are handled elsewhere
    path: Optional[str] = None  # local json/jsonl/parquet/csv file, a directory, or a datasets name
    split: str = "train"
    eval_split: Optional[str] = None
    eval_fraction: float = 0.0  # hold out this fraction (seeded) when no eval_split
    max_length: int = 512  # prompt + completion tokens
    max_prompt_length: int = 256  # a longer prompt is a user error
    truncation: str = "truncate"  # completions that overflow max_length: truncate | drop | error
    convert: Optional[str] = None  # explicit conversion, e.g. "paired_to_unpaired"
    num_rows: Optional[int] = None  # use the first N rows of each split loaded


@dataclass
class TokenizeReport:
    """Row counts from tokenize_rows; ``truncated`` rows are kept, ``dropped`` ones are not."""

    rows_in: int
    rows_kept: int
    dropped: int
    truncated: int

    def __str__(self) -> str:
        return (f"{self.rows_in} rows in, {self.rows_kept} kept, {self.dropped} dropped, "
                f"{self.truncated} truncated")


# ----------------------------------------------------------------------------------------------
# Config checks


def _check_config(cfg: DataConfig) -> None:
    """Value checks OmegaConf's type checks cannot do; each names the key to change."""
    if cfg.truncation not in TRUNCATION_POLICIES:
        raise UserError(f"data.truncation: '{cfg.truncation}' is not a policy; "
                        f"accepted: {', '.join(TRUNCATION_POLICIES)}")
    if not 0.0 <= cfg.eval_fraction < 1.0:
        raise UserError(f"data.eval_fraction: {cfg.eval_fraction} is out of range; "
                        "accepted: a fraction in [0, 1)")
    if cfg.eval_split and cfg.eval_fraction > 0:
        raise UserError(f"data.eval_split='{cfg.eval_split}' and data.eval_fraction="
                        f"{cfg.eval_fraction} are both set; accepted: one of them")
    if cfg.max_prompt_length < 1:
        raise UserError(f"data.max_prompt_length: {cfg.max_prompt_length}; accepted: >= 1")
    # A prompt at the limit must leave room for at least one completion token, so truncation
    # can always keep a non-empty completion.
    if cfg.max_length <= cfg.max_prompt_length:
        raise UserError(f"data.max_length={cfg.max_length} must be larger than "
                        f"data.max_prompt_length={cfg.max_prompt_length}; accepted: "
                        "data.max_length > data.max_prompt_length")
    if cfg.num_rows is not None and cfg.num_rows < 1:
        raise UserError(f"data.num_rows: {cfg.num_rows}; accepted: a positive count, or null for all")
    if cfg.convert is not None:
        _parse_convert(cfg.convert)


def _parse_convert(spec: str) -> tuple[str, str]:
    if spec not in CONVERSIONS:
        raise UserError(f"data.convert: '{spec}' is not a conversion; accepted: {', '.join(CONVERSIONS)}")
    src, dst = spec.split("_to_")
    return src, dst


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UserError(f"data kind '{kind}' is unknown; accepted: {', '.join(KINDS)}")


# ----------------------------------------------------------------------------------------------
# Loading


def load_rows(cfg: DataConfig, split: Optional[str] = None) -> tuple[list[dict], str]:
    """Rows of ``split`` (default ``cfg.split``) as plain dicts, plus a source name for messages
    (the file path or dataset name). ``cfg.num_rows`` keeps the first N rows.

    ``cfg.path`` is a local .json/.jsonl/.parquet/.csv file (one split, "train"; datasets' slice
    syntax such as "train[:100]" works), a directory of such files (splits inferred from the file
    names by ``datasets``), or anything ``datasets.load_dataset`` accepts. In CSV files a
    conversational cell is a JSON-encoded list of messages. A path that does not exist, a
    dataset that cannot be loaded, a missing split, or an empty split raise UserError.
    """
    import datasets  # slow to import; only loading needs it

    _check_config(cfg)
    split = split or cfg.split
    path = cfg.path
    if not path:
        raise UserError(f"data.path: not set; accepted: {ACCEPTED_PATHS} (data=hf data.path=FILE_OR_NAME)")
    local = os.path.expanduser(str(path))
    source = str(path)

    files = []
    if os.path.isfile(local):
        builder = _builder_for(local, source)
        files = [local]
        _check_not_empty(local, source)
        ds = _load(lambda: datasets.load_dataset(builder, data_files=local, split=split), source, split, files, builder)
    elif os.path.isdir(local):
        builder = _builder_for_dir(local, source)
        files = _data_files(local)
        ds = _load(lambda: datasets.load_dataset(local, split=split), source, split, files, builder)
    elif _looks_local(str(path)):
        raise UserError(f"data.path: '{path}' does not exist; accepted: {ACCEPTED_PATHS}")
    else:
        builder = None
        try:
            ds = datasets.load_dataset(str(path), split=split)
        except Exception as e:  # hub unreachable, unknown name, bad split: all the user's to fix
            raise UserError(f"data.path: '{path}' is not a local file or directory and "
                            f"datasets.load_dataset failed ({_first_line(e)}); "
                            f"accepted: {ACCEPTED_PATHS}") from None

    if len(ds) == 0:
        raise UserError(f"{source}: split '{split}' has no rows; accepted: a dataset with at least one row")
    if cfg.num_rows is not None:
        ds = ds.select(range(min(cfg.num_rows, len(ds))))
    try:
        rows = ds.to_list()
    except UnicodeDecodeError:
        # Arrow keeps the bytes it was given; a non-UTF-8 byte only fails when it becomes a str.
        raise UserError(_diagnose(files, builder) or f"{source}: split '{split}' holds text that is not UTF-8; "
                        "accepted: UTF-8 encoded files") from None
    if builder == "csv":
        rows = [{k: _decode_json_cell(v) for k, v in row.items()} for row in rows]
    return rows, source


def load_splits(cfg: DataConfig, seed: int = 0) -> tuple[list[dict], Optional[list[dict]], str]:
    """(train rows, eval rows or None, source): eval rows come from ``cfg.eval_split``, or are a
    seeded random ``cfg.eval_fraction`` of the training split (both keep file order)."""
    rows, source = load_rows(cfg)
    if cfg.eval_split:
        eval_rows, _ = load_rows(cfg, cfg.eval_split)
        return rows, eval_rows, source
    if cfg.eval_fraction <= 0:
        return rows, None, source
    n_eval = max(1, round(len(rows) * cfg.eval_fraction))
    if n_eval >= len(rows):
        raise UserError(f"{source}: data.eval_fraction={cfg.eval_fraction} of {len(rows)} rows "
                        "leaves no training rows; accepted: a smaller data.eval_fraction")
    held = set(random.Random(seed).sample(range(len(rows)), n_eval))
    train = [r for i, r in enumerate(rows) if i not in held]
    evals = [r for i, r in enumerate(rows) if i in held]
    return train, evals, source


def _load(fn, source: str, split: str, files=(), builder=None):
    import datasets

    level = datasets.utils.logging.get_verbosity()
    # datasets logs the failing file and row itself (twice, above our line): our line names them.
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL + 1)
    try:
        return fn()
    except Exception as e:  # a local file datasets cannot read is the user's to fix
        found = _diagnose(files, builder)
        if found:
            raise UserError(found) from None
        raise UserError(f"{source}: could not load split '{split}' ({_first_line(_root_cause(e))}); "
                        f"accepted: {ACCEPTED_PATHS}") from None
    finally:
        datasets.utils.logging.set_verbosity(level)


def _root_cause(e: BaseException) -> BaseException:
    # datasets wraps the parser's error (which names the row) in a generic DatasetGenerationError.
    while e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__):
        e = e.__cause__ or e.__context__
    return e


def _data_files(path: str) -> list:
    return sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs
                  if os.path.splitext(f)[1].lower() in FILE_BUILDERS)


def _check_not_empty(path: str, source: str) -> None:
    with open(path, "rb") as f:
        head = f.read(4096)
    if not head.strip():
        raise UserError(f"{source}: the file is empty; accepted: a data file with at least one row")


def _diagnose(files, builder) -> Optional[str]:
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


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _builder_for(path: str, source: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FILE_BUILDERS:
        raise UserError(f"data.path: '{source}' has extension '{ext}'; accepted: {ACCEPTED_PATHS}")
    return FILE_BUILDERS[ext]


def _builder_for_dir(path: str, source: str) -> str:
    found = set()
    for _, _, files in os.walk(path):
        for f in files:
            ext = os.path.splitext(f)[1].lower()
            if ext in FILE_BUILDERS:
                found.add(FILE_BUILDERS[ext])
    if not found:
        raise UserError(f"data.path: directory '{source}' holds no data files; accepted: {ACCEPTED_PATHS}")
    # datasets would silently pick the most common format; mixing formats is more likely a mistake.
    if len(found) > 1:
        raise UserError(f"data.path: directory '{source}' mixes formats ({', '.join(sorted(found))}); "
                        "accepted: a directory of files in one format")
    return found.pop()


def _looks_local(path: str) -> bool:
    """A path the user meant as a file: hub names never start like this or carry an extension."""
    return (path.startswith(("/", "./", "../", "~", "."))
            or os.path.splitext(path)[1].lower() in FILE_BUILDERS)


def _decode_json_cell(value: Any) -> Any:
    """CSV has no lists: a conversational cell is stored as JSON text. Decode only what is
    unmistakably a list of messages, so plain text starting with '[' stays text."""
    if not (isinstance(value, str) and value.lstrip().startswith("[")):
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    if isinstance(decoded, list) and decoded and all(isinstance(m, dict) and "role" in m for m in decoded):
        return decoded
    return value


# ----------------------------------------------------------------------------------------------
# Kinds, validation, conversion


def detect_kind(rows: list[dict], source: str = "data") -> str:
    """The data kind implied by the columns present: chosen+rejected -> paired;
    completion+label -> unpaired; messages, or prompt+completion -> demonstrations;
    prompt -> prompt_only."""
    if not rows:
        raise UserError(f"{source}: no rows; accepted: a dataset with at least one row")
    cols = set(rows[0])
    if {"chosen", "rejected"} <= cols:
        return "paired"
    if {"completion", "label"} <= cols:
        return "unpaired"
    if "messages" in cols or {"prompt", "completion"} <= cols:
        return "demonstrations"
    if "prompt" in cols:
        return "prompt_only"
    raise UserError(f"{where(source, 0)}: cannot tell the data kind from columns "
                    f"{_columns(rows)}; accepted: " + "; ".join(f"{COLUMNS_ACCEPTED[k]} ({k})" for k in KINDS))


def prepare_rows(rows: list[dict], kind: str, cfg: DataConfig, source: str) -> list[dict]:
    """Rows ready for ``tokenize_rows(kind)``: applies ``cfg.convert``, or the implicit
    prompt-only view, then validates. Data of another kind without a conversion is a
    UserError that names the conversion to set."""
    _check_kind(kind)
    found = detect_kind(rows, source)
    if cfg.convert:
        src, dst = _parse_convert(cfg.convert)
        if dst != kind:
            raise UserError(f"data.convert: '{cfg.convert}' makes {dst} data but this algorithm needs "
                            f"{kind} data; accepted: {_conversions_to(kind)}")
        if src != found:
            raise UserError(f"data.convert: '{cfg.convert}' expects {src} data but {source} has "
                            f"{found} columns {_columns(rows)}; accepted: {_conversions_to(kind)}")
        return convert_rows(rows, src, dst, source)
    if found != kind:
        if kind == "prompt_only":
            return convert_rows(rows, found, kind, source)
        to_kind = [c for c in CONVERSIONS if c.endswith(f"_to_{kind}")]
        hint = (f"; or data.convert={found}_to_{kind}" if f"{found}_to_{kind}" in CONVERSIONS
                else f"; or data.convert set to one of: {', '.join(to_kind)}" if to_kind else "")
        missing = [c for c in _required_columns(kind, rows) if c not in rows[0]]
        loc = where(source, 0, missing[0]) if missing else source
        raise UserError(f"{loc}: this algorithm needs {kind} data but the columns found "
                        f"({_columns(rows)}) are {found} data; accepted for {kind} data: "
                        f"{COLUMNS_ACCEPTED[kind]}{hint}")
    if found == "demonstrations" and _has_messages(rows):
        return convert_rows(rows, found, kind, source)
    validate_rows(rows, kind, source)
    return rows


def validate_rows(rows: list[dict], kind: str, source: str) -> None:
    """Raise UserError at the first bad row: a missing column or value, a value of the wrong
    type (text must be a string or a list of message dicts; label bool or 0/1; margin a
    number), an empty completion, chosen identical to rejected, a malformed message list, or
    plain and conversational text mixed in one dataset."""
    _check_kind(kind)
    if not rows:
        raise UserError(f"{source}: no rows; accepted: a dataset with at least one row")
    required = _required_columns(kind, rows)
    text_fields = ("messages",) if required == ("messages",) else ("prompt",) + COMPLETION_FIELDS[kind]
    accepted = f"accepted for {kind} data: {COLUMNS_ACCEPTED[kind]}"

    form_of_dataset = None  # (form, row, field) of the first text value seen
    for i, row in enumerate(rows):
        rid = row.get(_SOURCE_ROW, i)
        for col in required:
            if col not in row:
                raise UserError(f"{where(source, rid, col)}: missing column (found columns: "
                                f"{_columns(rows)}); {accepted}")
            if row[col] is None:
                raise UserError(f"{where(source, rid, col)}: missing value (null); {accepted}")
        for col in text_fields:
            loc = where(source, rid, col)
            form = _form(row[col], loc)
            if form_of_dataset is None:
                form_of_dataset = (form, rid, col)
            elif form != form_of_dataset[0]:
                raise UserError(f"{loc}: is {form} but {where(row=form_of_dataset[1], field=form_of_dataset[2])} "
                                f"is {form_of_dataset[0]}; accepted: plain strings everywhere, or "
                                "lists of {role, content} messages everywhere")
            if form == "conversational":
                _check_messages(row[col], col, loc)
            elif col == "messages":
                raise UserError(f"{loc}: is a string; accepted: a list of {{role, content}} messages "
                                "ending with an assistant message")
            elif col != "prompt" and not row[col].strip():
                raise UserError(f"{loc}: empty {col}; accepted: non-empty text")
        if kind == "paired":
            if _content(row["chosen"]).strip() == _content(row["rejected"]).strip():
                raise UserError(f"{where(source, rid, 'rejected')}: identical to 'chosen'; "
                                "accepted: a rejected completion that differs from the chosen one")
            if "margin" in row and not _is_number(row["margin"]):
                raise UserError(f"{where(source, rid, 'margin')}: {row['margin']!r} is not a number; "
                                "accepted: a finite float (or drop the margin column)")
        if kind == "unpaired" and not _is_label(row["label"]):
            raise UserError(f"{where(source, rid, 'label')}: {row['label']!r} is not a label; "
                            "accepted: true/false or 1/0")


def convert_rows(rows: list[dict], from_kind: str, to_kind: str, source: str) -> list[dict]:
    """Rows of ``from_kind`` (validated first) turned into rows of ``to_kind``:

    - paired -> unpaired: each pair gives (prompt, chosen, label True), (prompt, rejected, False)
    - paired -> demonstrations: (prompt, chosen)
    - any -> prompt_only: the prompt (other columns kept, for rewards that need them)
    - demonstrations as ``messages`` -> prompt (every turn up to and including the last user
      turn) / completion (the final assistant turn)

    Output rows carry ``_source_row``, the input row they came from, so later errors name it.
    """
    _check_kind(from_kind)
    _check_kind(to_kind)
    name = f"{from_kind}_to_{to_kind}"
    if from_kind != to_kind and name not in CONVERSIONS:
        raise UserError(f"{source}: cannot convert {from_kind} data to {to_kind}; accepted: "
                        f"{', '.join(CONVERSIONS)}")
    validate_rows(rows, from_kind, source)
    out = []
    for i, row in enumerate(rows):
        rid = row.get(_SOURCE_ROW, i)
        if from_kind == "demonstrations" and "messages" in row and row.get("prompt") is None:
            prompt, completion = _split_messages(row["messages"], where(source, rid, "messages"))
            row = {**{k: v for k, v in row.items() if k != "messages"}, "prompt": prompt, "completion": completion}
        base = {k: v for k, v in row.items()
                if k not in ("chosen", "rejected", "completion", "label", "margin", "messages")}
        base[_SOURCE_ROW] = rid
        if to_kind == "prompt_only":
            out.append(base)
        elif name == "paired_to_unpaired":
            out.append({**base, "completion": row["chosen"], "label": True})
            out.append({**base, "completion": row["rejected"], "label": False})
        elif name == "paired_to_demonstrations":
            out.append({**base, "completion": row["chosen"]})
        else:  # same kind: a copy (demonstrations' messages are split above)
            out.append({**row, _SOURCE_ROW: rid})
    return out


def _split_messages(messages: list[dict], loc: str) -> tuple[list[dict], list[dict]]:
    last_user = max((j for j, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last_user is None or last_user != len(messages) - 2 or messages[-1].get("role") != "assistant":
        raise UserError(f"{loc}: needs a user turn followed by one final assistant turn; accepted: "
                        "[..., {role: user, ...}, {role: assistant, content: ...}]")
    return list(messages[: last_user + 1]), [messages[-1]]


def _required_columns(kind: str, rows: list[dict]) -> tuple[str, ...]:
    if kind == "demonstrations" and _has_messages(rows):
        return ("messages",)
    return {"paired": ("prompt", "chosen", "rejected"), "unpaired": ("prompt", "completion", "label"),
            "prompt_only": ("prompt",), "demonstrations": ("prompt", "completion")}[kind]


def _has_messages(rows: list[dict]) -> bool:
    return "messages" in rows[0] and rows[0].get("prompt") is None


def _conversions_to(kind: str) -> str:
    return ", ".join(c for c in CONVERSIONS if c.endswith(f"_to_{kind}")) or "none"


def _columns(rows: list[dict]) -> str:
    cols = [c for c in rows[0] if c != _SOURCE_ROW] if rows else []
    return ", ".join(cols) if cols else "none"


def _form(value: Any, loc: str) -> str:
    if isinstance(value, str):
        return "plain"
    if isinstance(value, list):
        return "conversational"
    raise UserError(f"{loc}: {type(value).__name__} {_short(value)} is not text; accepted: a string, "
                    "or a list of {role, content} messages")


def _check_messages(messages: list, field: str, loc: str) -> None:
    if not messages:
        raise UserError(f"{loc}: empty message list; accepted: a non-empty list of {{role, content}} messages")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise UserError(f"{loc}: message {j} is {_short(m)}; accepted: a dict with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise UserError(f"{loc}: message {j} has role '{m['role']}'; accepted roles: {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise UserError(f"{loc}: message {j} content is {type(m['content']).__name__} "
                            f"{_short(m['content'])}; accepted: a string")
    if field == "prompt":
        if messages[-1]["role"] != "user":
            raise UserError(f"{loc}: prompt ends with a '{messages[-1]['role']}' message; accepted: "
                            "a list of messages ending with a user message")
    elif field == "messages":
        _split_messages(messages, loc)
        if not messages[-1]["content"].strip():
            raise UserError(f"{loc}: final assistant message is empty; accepted: non-empty text")
    else:
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            roles = ", ".join(m["role"] for m in messages)
            raise UserError(f"{loc}: holds messages with roles [{roles}]; accepted: a list with "
                            "one assistant message")
        if not messages[0]["content"].strip():
            raise UserError(f"{loc}: empty {field}; accepted: non-empty text")


def _content(value: Any) -> str:
    """The text of a field: the string itself, or the content of its last message."""
    return value if isinstance(value, str) else value[-1]["content"]


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def _is_label(v: Any) -> bool:
    return isinstance(v, bool) or (isinstance(v, int) and v in (0, 1))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


# ----------------------------------------------------------------------------------------------
# Tokenization


def tokenize_rows(rows: list[dict], kind: str, tokenizer, cfg: DataConfig,
                  source: str) -> tuple[list[dict], TokenizeReport]:
    """Tokenized examples (``row`` = index into ``rows``; ``prompt_text`` = the last user text):

    - paired: prompt_ids, chosen_ids, rejected_ids (+ margin)
    - unpaired: prompt_ids, completion_ids, label (bool)
    - demonstrations: prompt_ids, completion_ids
    - prompt_only: prompt_ids, prompt (the original value)

    A conversational prompt goes through the chat template with the generation prompt; its
    completion is the tail of the whole templated conversation after the prompt's tokens (or,
    when the template does not reproduce the prompt as an exact prefix, the assistant content
    tokenized alone). A plain prompt gets the tokenizer's default special tokens (BOS); a plain
    completion none. Completion ids exclude the prompt and end with exactly one eos, unless
    truncated. A prompt longer than ``cfg.max_prompt_length`` is a UserError; prompt +
    completion over ``cfg.max_length`` follows ``cfg.truncation`` (truncate the completion |
    drop the row | error). A dataset left with no rows is a UserError.
    """
    _check_config(cfg)
    _check_kind(kind)
    if not rows:
        raise UserError(f"{source}: no rows; accepted: a dataset with at least one row")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos_token; "
                        "accepted: a tokenizer with an eos_token (completions must end with one)")
    if kind == "demonstrations" and _has_messages(rows):
        rows = convert_rows(rows, kind, kind, source)  # validates too
    else:
        validate_rows(rows, kind, source)  # cheap, and keeps a skipped check from a KeyError
    conversational = isinstance(rows[0].get("prompt"), list)
    if conversational and not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{source}: conversational data needs a tokenizer with a chat template, and "
                        f"{getattr(tokenizer, 'name_or_path', 'this tokenizer')!r} has none; accepted: "
                        "plain-string data, or a model whose tokenizer defines chat_template")

    examples, dropped, truncated = [], 0, 0
    for i, row in enumerate(rows):
        rid = row.get(_SOURCE_ROW, i)
        prompt = row["prompt"]
        prompt_ids = _prompt_ids(tokenizer, prompt, eos, where(source, rid, "prompt"))
        if not prompt_ids:
            # The first completion token is predicted from the position before it; with no
            # prompt token there is none, and generation would have nothing to start from.
            raise UserError(f"{where(source, rid, 'prompt')}: prompt has no tokens (and the tokenizer "
                            "adds no BOS); accepted: a non-empty prompt")
        if len(prompt_ids) > cfg.max_prompt_length:
            raise UserError(f"{where(source, rid, 'prompt')}: prompt is {len(prompt_ids)} tokens, longer "
                            f"than data.max_prompt_length={cfg.max_prompt_length}; accepted: a shorter "
                            "prompt, or a larger data.max_prompt_length (and data.max_length)")
        ex: dict[str, Any] = {"row": i, "prompt_ids": prompt_ids, "prompt_text": _prompt_text(prompt)}
        if kind == "prompt_only":
            ex["prompt"] = prompt
            examples.append(ex)
            continue

        room = cfg.max_length - len(prompt_ids)  # >= 1: max_length > max_prompt_length
        drop = cut = False
        for field in COMPLETION_FIELDS[kind]:
            loc = where(source, rid, field)
            ids = _completion_ids(tokenizer, prompt, prompt_ids, row[field], eos, loc)
            if len(ids) > room:
                if cfg.truncation == "error":
                    raise UserError(f"{loc}: prompt + {field} is {len(prompt_ids) + len(ids)} tokens, "
                                    f"longer than data.max_length={cfg.max_length}; accepted: a larger "
                                    "data.max_length, or data.truncation=truncate|drop")
                if cfg.truncation == "drop":
                    drop = True
                    break
                # A cut completion keeps no eos: the model must not learn to stop mid-text.
                ids, cut = ids[:room], True
            ex[f"{field}_ids"] = ids
        if drop:
            dropped += 1
            continue
        truncated += cut
        if kind == "paired" and "margin" in row:
            ex["margin"] = float(row["margin"])
        if kind == "unpaired":
            ex["label"] = bool(row["label"])
        examples.append(ex)

    if not examples:
        raise UserError(f"{source}: all {len(rows)} rows were dropped (prompt + completion longer than "
                        f"data.max_length={cfg.max_length}); accepted: a larger data.max_length, or "
                        "data.truncation=truncate")
    return examples, TokenizeReport(rows_in=len(rows), rows_kept=len(examples),
                                    dropped=dropped, truncated=truncated)


def _encode(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _template(tokenizer, messages: list[dict], generation_prompt: bool, loc: str) -> str:
    from jinja2.exceptions import TemplateError

    # Columnar formats fill keys missing from some messages with None; templates test for
    # presence ("if 'name' in message"), so drop them.
    clean = [{k: v for k, v in m.items() if v is not None} for m in messages]
    try:
        return tokenizer.apply_chat_template(clean, add_generation_prompt=generation_prompt, tokenize=False)
    except TemplateError as e:  # templates raise on conversations they reject (role order, ...)
        raise UserError(f"{loc}: the chat template rejected these messages ({e}); accepted: "
                        "messages this model's chat template accepts") from None


def _prompt_ids(tokenizer, prompt: Any, eos: int, loc: str) -> list[int]:
    if isinstance(prompt, list):
        # The template writes any BOS itself; adding special tokens again would double it.
        return _encode(tokenizer, _template(tokenizer, prompt, True, loc), special=False)
    ids = _encode(tokenizer, prompt, special=True)
    # Some tokenizers' defaults also append EOS (end of document); a prompt is not one.
    if len(ids) > 1 and ids[-1] == eos:
        bare = _encode(tokenizer, prompt, special=False)
        if not bare or bare[-1] != eos:
            ids = ids[:-1]
    return ids


def _completion_ids(tokenizer, prompt: Any, prompt_ids: list[int], completion: Any, eos: int,
                    loc: str) -> list[int]:
    if isinstance(completion, str):
        return _end_with_eos(_encode(tokenizer, completion, special=False), eos)
    full = _encode(tokenizer, _template(tokenizer, list(prompt) + list(completion), False, loc), special=False)
    n = len(prompt_ids)
    if full[:n] == prompt_ids and len(full) > n:
        ids = full[n:]
        # Templates often end a turn with "<end>\n"; the newline after the end-of-turn token
        # is formatting, and training on it would teach the model to emit it after stopping.
        while ids and ids[-1] != eos and not tokenizer.decode([ids[-1]], skip_special_tokens=False).strip():
            ids.pop()
    else:
        # The template renders the prompt differently once a reply follows (or tokens merge
        # across the boundary): the prompt ids would not be a prefix, so use the content alone.
        ids = _encode(tokenizer, completion[-1]["content"], special=False)
    return _end_with_eos(ids, eos)


def _end_with_eos(ids: list[int], eos: int) -> list[int]:
    """Exactly one eos at the end, whether or not the text or template already had one."""
    ids = list(ids)
    while ids and ids[-1] == eos:
        ids.pop()
    return ids + [eos]


# ----------------------------------------------------------------------------------------------
# Collation


def build_sequences(prompt_ids: list[int], completion_ids: list[int]) -> tuple[list[int], list[bool]]:
    """(prompt + completion ids, loss mask True exactly at the completion positions)."""
    return list(prompt_ids) + list(completion_ids), [False] * len(prompt_ids) + [True] * len(completion_ids)


def _pad(seqs: list[list], value, length: int, dtype: torch.dtype, left: bool = False) -> torch.Tensor:
    out = torch.full((len(seqs), length), value, dtype=dtype)
    for b, s in enumerate(seqs):
        if s:
            if left:
                out[b, length - len(s):] = torch.tensor(s, dtype=dtype)
            else:
                out[b, : len(s)] = torch.tensor(s, dtype=dtype)
    return out


class EpochOrder:
    """The example order of each epoch: a permutation of ``range(n)`` seeded by (seed, epoch), the
    same on every process (each then takes its strided share). Keeps the current epoch's only."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._cache: dict = {}

    def __call__(self, epoch: int) -> list:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._cache[epoch]


def pad_batch(prompt_ids: list, completion_ids: list, pad_token_id: int, length: Optional[int] = None,
              prefix: str = "") -> dict:
    """Right-padded ``input_ids`` / ``attention_mask`` (long) and ``loss_mask`` (bool, True at the
    completion tokens) [B, T] for lists of prompt and completion token ids; T = ``length`` or the
    longest sequence. Used by collation, rollouts, evaluation and the reference pre-pass."""
    seqs = [build_sequences(p, c) for p, c in zip(prompt_ids, completion_ids)]
    length = length if length is not None else max(len(s) for s, _ in seqs)
    return {
        f"{prefix}input_ids": _pad([s for s, _ in seqs], pad_token_id, length, torch.long),
        f"{prefix}attention_mask": _pad([[1] * len(s) for s, _ in seqs], 0, length, torch.long),
        f"{prefix}loss_mask": _pad([m for _, m in seqs], False, length, torch.bool),
    }


def _sequences(examples: list[dict], field: str, length: int, pad_token_id: int, prefix: str = "") -> dict:
    return pad_batch([ex["prompt_ids"] for ex in examples], [ex[f"{field}_ids"] for ex in examples], pad_token_id,
                     length, prefix)


def collate(examples: list[dict], kind: str, pad_token_id: int) -> dict[str, Any]:
    """A batch of tokenized examples as tensors, right padded (prompt_only: left padded, for
    generation). ``loss_mask`` is True where the token is a completion token, so the log-prob
    of token t is read from the logits at position t-1.

    - demonstrations / unpaired: input_ids, attention_mask (long [B,T]), loss_mask (bool [B,T]),
      row (long [B]); unpaired adds label (bool [B]).
    - paired: chosen_* and rejected_* (input_ids, attention_mask, loss_mask), padded to one
      common T so both can go through the model in a single concatenated batch; row; margin
      (float [B]) when present.
    - prompt_only: prompt_input_ids, prompt_attention_mask (left padded), row, and the lists
      prompt_text (str) and prompt (original values).
    """
    _check_kind(kind)
    if not examples:
        raise ValueError("collate: empty batch")
    batch: dict[str, Any] = {"row": torch.tensor([ex["row"] for ex in examples], dtype=torch.long)}
    if kind == "prompt_only":
        length = max(len(ex["prompt_ids"]) for ex in examples)
        batch["prompt_input_ids"] = _pad([ex["prompt_ids"] for ex in examples], pad_token_id, length,
                                         torch.long, left=True)
        batch["prompt_attention_mask"] = _pad([[1] * len(ex["prompt_ids"]) for ex in examples], 0, length,
                                              torch.long, left=True)
        batch["prompt_text"] = [ex["prompt_text"] for ex in examples]
        batch["prompt"] = [ex.get("prompt", ex["prompt_text"]) for ex in examples]
        return batch
    if kind == "paired":
        length = max(len(ex["prompt_ids"]) + max(len(ex["chosen_ids"]), len(ex["rejected_ids"]))
                     for ex in examples)
        for side in ("chosen", "rejected"):
            batch.update(_sequences(examples, side, length, pad_token_id, prefix=f"{side}_"))
        if all("margin" in ex for ex in examples):
            batch["margin"] = torch.tensor([ex["margin"] for ex in examples], dtype=torch.float32)
        return batch
    length = max(len(ex["prompt_ids"]) + len(ex["completion_ids"]) for ex in examples)
    batch.update(_sequences(examples, "completion", length, pad_token_id))
    if kind == "unpaired":
        batch["label"] = torch.tensor([ex["label"] for ex in examples], dtype=torch.bool)
    return batch
