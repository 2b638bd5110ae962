"""Loading a user's data: the ``data`` config section, local files (json / jsonl / parquet / csv),
directories of them, or a ``datasets`` name, into plain row dicts. A file that fails to parse is
named with its line and row by :mod:`prefopt.data.diagnose`."""

from __future__ import annotations

import json
import os
import random
from typing import Any, Optional

from prefopt.core.config import DataConfig
from prefopt.core.errors import UserError, first_line
from prefopt.data.diagnose import FILE_BUILDERS, diagnose
from prefopt.data.formats import parse_convert
from prefopt.data.ranked import check_pairing

TRUNCATION_POLICIES = ("truncate", "drop", "error")
ACCEPTED_PATHS = "a .json/.jsonl/.parquet/.csv file, a directory of them, or a datasets name"


def check_config(cfg: DataConfig) -> None:
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
        parse_convert(cfg.convert)
    check_pairing(cfg.ranking_to_pairs)


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

    check_config(cfg)
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
                            f"datasets.load_dataset failed ({first_line(e, 300)}); "
                            f"accepted: {ACCEPTED_PATHS}") from None

    if len(ds) == 0:
        raise UserError(f"{source}: split '{split}' has no rows; accepted: a dataset with at least one row")
    if cfg.num_rows is not None:
        ds = ds.select(range(min(cfg.num_rows, len(ds))))
    try:
        rows = ds.to_list()
    except UnicodeDecodeError:
        # Arrow keeps the bytes it was given; a non-UTF-8 byte only fails when it becomes a str.
        raise UserError(diagnose(files, builder) or f"{source}: split '{split}' holds text that is not UTF-8; "
                        "accepted: UTF-8 encoded files") from None
    if builder == "csv":
        rows = [{k: _decode_json_cell(v) for k, v in row.items()} for row in rows]
    if builder == "json" and len(files) == 1 and "[" not in split:
        _restore_raw_ranked(rows, files[0])
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


RANKED_FIELDS = ("completions", "ranks", "scores")


def _restore_raw_ranked(rows: list[dict], path: str) -> None:
    """Put back the ranked fields as written in the file. datasets unifies a column's type across
    rows (ranks [1.5, 2] in one row turn every row's ranks into floats, "1" becomes 1), so the
    checks would name the wrong row or a value that is not in the file, or accept a string rank.
    Left as loaded when the file does not parse row for row (datasets' rows then stand)."""
    if not rows or not any(k in rows[0] for k in RANKED_FIELDS):
        return
    raw = _raw_json_rows(path)
    if raw is None or len(raw) < len(rows):
        return
    for row, r in zip(rows, raw):
        if not isinstance(r, dict):
            return
        for k in RANKED_FIELDS:
            if k in row:
                row[k] = r.get(k)


def _raw_json_rows(path: str) -> Optional[list]:
    """The rows of a JSON array or JSON-lines file, parsed without type inference; None if neither."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if text.lstrip().startswith("["):
            data = json.loads(text)
            return data if isinstance(data, list) else None
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError):
        return None


def _load(fn, source: str, split: str, files=(), builder=None):
    import datasets

    level = datasets.utils.logging.get_verbosity()
    # datasets logs the failing file and row itself (twice, above our line): our line names them.
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL + 1)
    try:
        return fn()
    except Exception as e:  # a local file datasets cannot read is the user's to fix
        found = diagnose(files, builder)
        if found:
            raise UserError(found) from None
        raise UserError(f"{source}: could not load split '{split}' ({first_line(_root_cause(e), 300)}); "
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
