"""Tokenization and collation: rows of a data kind (:mod:`prefopt.data.formats`) become token ids
through the tokenizer's chat template, then padded tensor batches with a loss mask over the
completion tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from prefopt.core.errors import UserError, where
from prefopt.data.formats import (COMPLETION_FIELDS, SOURCE_ROW, check_kind, convert_rows, has_messages, prompt_text,
                                  validate_rows)
from prefopt.core.config import DataConfig
from prefopt.data.load import check_config
from prefopt.data.ranked import ranks_of


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


def tokenize_rows(rows: list[dict], kind: str, tokenizer, cfg: DataConfig,
                  source: str) -> tuple[list[dict], TokenizeReport]:
    """Tokenized examples (``row`` = index into ``rows``; ``prompt_text`` = the last user text):

    - paired: prompt_ids, chosen_ids, rejected_ids (+ margin)
    - unpaired: prompt_ids, completion_ids, label (bool)
    - demonstrations: prompt_ids, completion_ids
    - prompt_only: prompt_ids, prompt (the original value)
    - ranked: prompt_ids, completions_ids (K lists), ranks (K ints, 1 = best; from scores when given)

    A conversational prompt goes through the chat template with the generation prompt; its
    completion is the tail of the whole templated conversation after the prompt's tokens (or,
    when the template does not reproduce the prompt as an exact prefix, the assistant content
    tokenized alone). A plain prompt gets the tokenizer's default special tokens (BOS); a plain
    completion none. Completion ids exclude the prompt and end with exactly one eos, unless
    truncated. A prompt longer than ``cfg.max_prompt_length`` is a UserError; prompt +
    completion over ``cfg.max_length`` follows ``cfg.truncation`` (truncate the completion |
    drop the row | error). A dataset left with no rows is a UserError.
    """
    check_config(cfg)
    check_kind(kind)
    if not rows:
        raise UserError(f"{source}: no rows; accepted: a dataset with at least one row")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise UserError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos_token; "
                        "accepted: a tokenizer with an eos_token (completions must end with one)")
    if kind == "demonstrations" and has_messages(rows):
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
        rid = row.get(SOURCE_ROW, i)
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
        ex: dict[str, Any] = {"row": i, "prompt_ids": prompt_ids, "prompt_text": prompt_text(prompt)}
        if kind == "prompt_only":
            ex["prompt"] = prompt
            examples.append(ex)
            continue

        room = cfg.max_length - len(prompt_ids)  # >= 1: max_length > max_prompt_length
        drop = cut = False
        fields = ([(f"completions[{j}]", c) for j, c in enumerate(row["completions"])] if kind == "ranked"
                  else [(f, row[f]) for f in COMPLETION_FIELDS[kind]])
        for field, value in fields:
            loc = where(source, rid, field)
            ids = _completion_ids(tokenizer, prompt, prompt_ids, value, eos, loc)
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
            if kind == "ranked":
                ex.setdefault("completions_ids", []).append(ids)
            else:
                ex[f"{field}_ids"] = ids
        if drop:
            dropped += 1
            continue
        truncated += cut
        if kind == "paired" and "margin" in row:
            ex["margin"] = float(row["margin"])
        if kind == "unpaired":
            ex["label"] = bool(row["label"])
        if kind == "ranked":
            ex["ranks"] = ranks_of(row)
        examples.append(ex)

    if not examples:
        raise UserError(f"{source}: all {len(rows)} rows were dropped (prompt + completion longer than "
                        f"data.max_length={cfg.max_length}); accepted: a larger data.max_length, or "
                        "data.truncation=truncate")
    _warn_unknown_words(examples, rows, kind, tokenizer, source)
    return examples, TokenizeReport(rows_in=len(rows), rows_kept=len(examples),
                                    dropped=dropped, truncated=truncated)


TEXT_FIELDS = ("prompt", "chosen", "rejected", "completion", "messages")


def _id_lists(ex: dict) -> list:
    return [v for k, v in ex.items() if k.endswith("_ids") and k != "completions_ids"] + ex.get("completions_ids", [])


def _warn_unknown_words(examples: list, rows: list, kind: str, tokenizer, source: str) -> None:
    """A word the tokenizer does not know becomes <unk> (model=tiny knows only the testbed's few
    hundred words): the model then trains on <unk>s, and two different completions can become the
    same input. Said once, with the share of <unk> tokens, a few of the words, and how many pairs
    became identical."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None or kind == "prompt_only":
        return
    n_unk = n_tok = 0
    for ex in examples:
        for ids in _id_lists(ex):
            n_tok += len(ids)
            n_unk += sum(1 for t in ids if t == unk)
    if not n_unk:
        return
    same = 0
    for ex in examples:
        if kind == "paired":
            same += ex["chosen_ids"] == ex["rejected_ids"]
        elif kind == "ranked":
            c = ex["completions_ids"]
            same += sum(1 for a in range(len(c)) for b in range(a + 1, len(c)) if c[a] == c[b])
    words = _unknown_words(tokenizer, examples, rows, unk)
    msg = (f"{source}: {n_unk} of {n_tok} tokens ({100 * n_unk / n_tok:.1f}%) are <unk>, words the tokenizer does "
           "not know" + (f" (e.g. {', '.join(repr(w) for w in words)})" if words else "") + "; "
           + (f"{same} pair(s) of different completions became identical token sequences; " if same else "")
           + "accepted: a model whose tokenizer covers the data (model=tiny knows only the testbed's words)")
    import warnings
    warnings.warn(msg, stacklevel=3)


def _unknown_words(tokenizer, examples: list, rows: list, unk: int, limit: int = 5) -> list:
    """Up to ``limit`` distinct words that became <unk>, read back through the fast tokenizer's offsets."""
    found: list = []
    for ex in examples:
        if len(found) >= limit:
            break
        if not any(unk in ids for ids in _id_lists(ex)):
            continue
        row = rows[ex["row"]]
        values = [row.get(k) for k in TEXT_FIELDS] + list(row.get("completions") or [])
        texts = [v for v in values if isinstance(v, str)]
        texts += [m.get("content") for v in values if isinstance(v, list) for m in v
                  if isinstance(m, dict) and isinstance(m.get("content"), str)]
        for t in texts:
            try:
                enc = tokenizer(t, add_special_tokens=False, return_offsets_mapping=True)
            except Exception:  # a slow tokenizer has no offsets: the count alone is said
                return found
            for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]):
                w = t[a:b]
                if i == unk and w and w not in found and len(found) < limit:
                    found.append(w)
    return found


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
    - ranked: every example's K completions in one flat batch, completions_* (input_ids,
      attention_mask, loss_mask [ΣK, T]), with group (long [ΣK], the example's index in the batch)
      and rank (long [ΣK], 1 = best); row.
    """
    check_kind(kind)
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
    if kind == "ranked":
        flat = [(g, ex["prompt_ids"], ids, r) for g, ex in enumerate(examples)
                for ids, r in zip(ex["completions_ids"], ex["ranks"])]
        batch.update(pad_batch([p for _, p, _, _ in flat], [c for _, _, c, _ in flat], pad_token_id,
                               prefix="completions_"))
        batch["group"] = torch.tensor([g for g, _, _, _ in flat], dtype=torch.long)
        batch["rank"] = torch.tensor([r for _, _, _, r in flat], dtype=torch.long)
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
