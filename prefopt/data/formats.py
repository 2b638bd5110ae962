"""Data kinds: their columns, validation (one line per bad row or field) and conversions.

Five data kinds, in TRL's formats (extra columns are kept and ignored):

    paired          prompt, chosen, rejected   (+ optional float ``margin``)
    unpaired        prompt, completion, label  (label: bool, or 0/1)
    prompt_only     prompt
    demonstrations  prompt, completion         (or one ``messages`` column)
    ranked          prompt, completions (K >= 2), ranks or scores   (:mod:`prefopt.data.ranked`)

Every text field is either a plain string, or conversational: a list of ``{"role", "content"}``
dicts. A conversational prompt ends with a user turn; a conversational chosen / rejected /
completion (and each of ``completions``) is a list holding one assistant message; ``messages`` is a whole conversation ending
with an assistant turn. One dataset uses one form throughout.

Pipeline, as the caller runs it::

    rows, source = load_rows(cfg)                       # prefopt.data.load (or load_splits(cfg, seed))
    rows = prepare_rows(rows, kind, cfg, source)        # this module: detect, convert, validate
    examples, report = tokenize_rows(rows, kind, tokenizer, cfg, source)   # prefopt.data.tokenize
    batch = collate(examples[:8], kind, pad_token_id)   # prefopt.data.tokenize

Every user mistake raises ``UserError`` with one line naming the file, the row (0-based, as in
``datasets``), the field, and what would be accepted.
"""

from __future__ import annotations

import math
from typing import Any

from prefopt.core.config import DataConfig
from prefopt.core.errors import UserError, where
from prefopt.data import ranked

KINDS = ("paired", "unpaired", "prompt_only", "demonstrations", "ranked")
ROLES = ("system", "user", "assistant", "tool")

# Text fields that hold a completion, per kind; they are the ones that may not be empty.
COMPLETION_FIELDS = {
    "paired": ("chosen", "rejected"),
    "unpaired": ("completion",),
    "demonstrations": ("completion",),
    "prompt_only": (),
    "ranked": (),  # the list ``completions``: checked and tokenized element by element
}
COLUMNS_ACCEPTED = {
    "paired": "prompt, chosen, rejected (+ optional margin)",
    "unpaired": "prompt, completion, label",
    "prompt_only": "prompt",
    "demonstrations": "prompt, completion; or messages",
    "ranked": ranked.ACCEPTED,
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
# Rows made by convert_rows remember the row they came from, so that errors name the user's row.
SOURCE_ROW = "_source_row"


def parse_convert(spec: str) -> tuple[str, str]:
    if spec not in CONVERSIONS:
        raise UserError(f"data.convert: '{spec}' is not a conversion; accepted: {', '.join(CONVERSIONS)}")
    src, dst = spec.split("_to_")
    return src, dst


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UserError(f"data kind '{kind}' is unknown; accepted: {', '.join(KINDS)}")


# ----------------------------------------------------------------------------------------------
# Kinds, validation, conversion


def detect_kind(rows: list[dict], source: str = "data") -> str:
    """The data kind implied by the columns present: completions + ranks|scores -> ranked;
    chosen+rejected -> paired;
    completion+label -> unpaired; messages, or prompt+completion -> demonstrations;
    prompt -> prompt_only."""
    if not rows:
        raise UserError(f"{source}: no rows; accepted: a dataset with at least one row")
    cols = set(rows[0])
    if ranked.is_ranked(rows):
        return "ranked"
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
    check_kind(kind)
    found = detect_kind(rows, source)
    if cfg.convert:
        src, dst = parse_convert(cfg.convert)
        if dst != kind:
            raise UserError(f"data.convert: '{cfg.convert}' makes {dst} data but this algorithm needs "
                            f"{kind} data; accepted: {_conversions_to(kind)}")
        if src != found:
            raise UserError(f"data.convert: '{cfg.convert}' expects {src} data but {source} has "
                            f"{found} columns {_columns(rows)}; accepted: {_conversions_to(kind)}")
        return convert_rows(rows, src, dst, source)
    if found == "ranked" and kind == "paired":
        # Pairs implied by the rankings (data.ranking_to_pairs); start-up prints how many.
        validate_rows(rows, found, source)
        pairs = ranked.ranked_to_paired(rows, cfg.ranking_to_pairs, SOURCE_ROW)
        if not pairs:
            # Tied completions make no pair: say so, not "no rows" about a file that has rows.
            raise UserError(f"{source}: all {len(rows)} rankings are ties (every completion of a prompt shares one "
                            f"rank), so data.ranking_to_pairs={cfg.ranking_to_pairs} makes no pairs; accepted: "
                            "rankings where some completion is ranked above another")
        return pairs
    if found != kind:
        if kind == "prompt_only":
            return convert_rows(rows, found, kind, source)
        # Only a conversion from the kind found can work: naming another one gets it refused next.
        if f"{found}_to_{kind}" in CONVERSIONS:
            hint = f"; or data.convert={found}_to_{kind}"
        elif found == "ranked":
            hint = ("; ranked data trains algo=reward (as rankings) or dpo, ipo, orpo, simpo (as the pairs it "
                    f"implies), and no data.convert makes {kind} data from it")
        else:
            hint = ""
        missing = [c for c in _required_columns(kind, rows) if c not in rows[0]]
        loc = where(source, 0, missing[0]) if missing else source
        raise UserError(f"{loc}: this algorithm needs {kind} data but the columns found "
                        f"({_columns(rows)}) are {found} data; accepted for {kind} data: "
                        f"{COLUMNS_ACCEPTED[kind]}{hint}")
    if found == "demonstrations" and has_messages(rows):
        return convert_rows(rows, found, kind, source)
    validate_rows(rows, kind, source)
    return rows


def validate_rows(rows: list[dict], kind: str, source: str) -> None:
    """Raise UserError at the first bad row: a missing column or value, a value of the wrong
    type (text must be a string or a list of message dicts; label bool or 0/1; margin a
    number), an empty completion, chosen identical to rejected, a malformed message list, or
    plain and conversational text mixed in one dataset."""
    check_kind(kind)
    if not rows:
        raise UserError(f"{source}: no rows; accepted: a dataset with at least one row")
    required = _required_columns(kind, rows)
    text_fields = ("messages",) if required == ("messages",) else ("prompt",) + COMPLETION_FIELDS[kind]
    if kind == "ranked":
        text_fields = ("prompt", "completions")
    accepted = f"accepted for {kind} data: {COLUMNS_ACCEPTED[kind]}"

    form_of_dataset = None  # (form, row, field) of the first text value seen
    for i, row in enumerate(rows):
        rid = row.get(SOURCE_ROW, i)
        for col in required:
            if col not in row:
                raise UserError(f"{where(source, rid, col)}: missing column (found columns: "
                                f"{_columns(rows)}); {accepted}")
            if row[col] is None:
                raise UserError(f"{where(source, rid, col)}: missing value (null); {accepted}")
        if kind == "ranked":
            ranked.check_ranking(row, lambda f: where(source, rid, f))
        values = [(col, row[col]) for col in text_fields if col != "completions"]
        if kind == "ranked":
            values += [(f"completions[{j}]", c) for j, c in enumerate(row["completions"])]
        for col, value in values:
            loc = where(source, rid, col)
            form = _form(value, loc)
            if form_of_dataset is None:
                form_of_dataset = (form, rid, col)
            elif form != form_of_dataset[0]:
                raise UserError(f"{loc}: is {form} but {where(row=form_of_dataset[1], field=form_of_dataset[2])} "
                                f"is {form_of_dataset[0]}; accepted: plain strings everywhere, or "
                                "lists of {role, content} messages everywhere")
            if form == "conversational":
                _check_messages(value, col, loc)
            elif col == "messages":
                raise UserError(f"{loc}: is a string; accepted: a list of {{role, content}} messages "
                                "ending with an assistant message")
            elif col != "prompt" and not value.strip():
                raise UserError(f"{loc}: empty {col}; accepted: non-empty text")
        if kind == "ranked":
            seen = {}
            for j, c in enumerate(row["completions"]):
                text = _content(c).strip()
                if text in seen:
                    raise UserError(f"{where(source, rid, f'completions[{j}]')}: identical to completions[{seen[text]}]; "
                                    "accepted: distinct completions (a tie is a shared rank)")
                seen[text] = j
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
    check_kind(from_kind)
    check_kind(to_kind)
    name = f"{from_kind}_to_{to_kind}"
    if from_kind != to_kind and name not in CONVERSIONS:
        raise UserError(f"{source}: cannot convert {from_kind} data to {to_kind}; accepted: "
                        f"{', '.join(CONVERSIONS)}")
    validate_rows(rows, from_kind, source)
    out = []
    for i, row in enumerate(rows):
        rid = row.get(SOURCE_ROW, i)
        if from_kind == "demonstrations" and "messages" in row and row.get("prompt") is None:
            prompt, completion = _split_messages(row["messages"], where(source, rid, "messages"))
            row = {**{k: v for k, v in row.items() if k != "messages"}, "prompt": prompt, "completion": completion}
        base = {k: v for k, v in row.items()
                if k not in ("chosen", "rejected", "completion", "label", "margin", "messages", "completions", "ranks",
                             "scores")}
        base[SOURCE_ROW] = rid
        if to_kind == "prompt_only":
            out.append(base)
        elif name == "paired_to_unpaired":
            out.append({**base, "completion": row["chosen"], "label": True})
            out.append({**base, "completion": row["rejected"], "label": False})
        elif name == "paired_to_demonstrations":
            out.append({**base, "completion": row["chosen"]})
        else:  # same kind: a copy (demonstrations' messages are split above)
            out.append({**row, SOURCE_ROW: rid})
    return out


def _split_messages(messages: list[dict], loc: str) -> tuple[list[dict], list[dict]]:
    last_user = max((j for j, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last_user is None or last_user != len(messages) - 2 or messages[-1].get("role") != "assistant":
        raise UserError(f"{loc}: needs a user turn followed by one final assistant turn; accepted: "
                        "[..., {role: user, ...}, {role: assistant, content: ...}]")
    return list(messages[: last_user + 1]), [messages[-1]]


def _required_columns(kind: str, rows: list[dict]) -> tuple[str, ...]:
    if kind == "demonstrations" and has_messages(rows):
        return ("messages",)
    return {"paired": ("prompt", "chosen", "rejected"), "unpaired": ("prompt", "completion", "label"),
            "prompt_only": ("prompt",), "demonstrations": ("prompt", "completion"),
            "ranked": ("prompt", "completions")}[kind]


def has_messages(rows: list[dict]) -> bool:
    return "messages" in rows[0] and rows[0].get("prompt") is None


def _conversions_to(kind: str) -> str:
    return ", ".join(c for c in CONVERSIONS if c.endswith(f"_to_{kind}")) or "none"


def _columns(rows: list[dict]) -> str:
    cols = [c for c in rows[0] if c != SOURCE_ROW] if rows else []
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
        # The assistant answers a user's message or, in a tool-using conversation, a tool's result.
        if messages[-1]["role"] not in ("user", "tool"):
            raise UserError(f"{loc}: prompt ends with a '{messages[-1]['role']}' message; accepted: "
                            "a list of messages ending with a user message (or a tool result)")
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


def prompt_text(prompt: Any) -> str:
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


