"""prefopt.data: loading each file format, tokenization, masking, truncation, collation, conversions.

Uses the word-level tokenizer of tests/data_files.py (no downloads). A bad data file's one-line
error is in tests/test_bad_input_data.py."""

import pytest
import torch

from data_files import CHAT, PLAIN, WORDS, assistant, cfg_for, long_rows, make_tokenizer, one_line, user, write
from prefopt.data.formats import convert_rows, detect_kind, prepare_rows

from prefopt.core.config import DataConfig
from prefopt.data.load import load_rows, load_splits

from prefopt.data.tokenize import build_sequences, collate, tokenize_rows, TokenizeReport
from prefopt.core.errors import UserError


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------------------------
# Loading every format, plain and conversational


@pytest.mark.parametrize("ext", [".json", ".jsonl", ".parquet", ".csv"])
@pytest.mark.parametrize("form", ["plain", "chat"])
@pytest.mark.parametrize("kind", ["paired", "unpaired", "prompt_only", "demonstrations"])
def test_each_format_loads_tokenizes_and_collates(tmp_path, tok, ext, form, kind):
    rows = (PLAIN if form == "plain" else CHAT)[kind]
    path = write(rows, tmp_path / f"data{ext}")
    loaded, source = load_rows(cfg_for(path))
    assert source == path
    assert loaded == rows
    assert detect_kind(loaded) == kind
    prepared = prepare_rows(loaded, kind, cfg_for(path), source)
    examples, report = tokenize_rows(prepared, kind, tok, cfg_for(path), source)
    assert report == TokenizeReport(rows_in=2, rows_kept=2, dropped=0, truncated=0)
    assert [ex["row"] for ex in examples] == [0, 1]
    assert examples[0]["prompt_text"] == "the movie was"
    batch = collate(examples, kind, tok.pad_token_id)
    assert batch["row"].tolist() == [0, 1]
    if kind == "paired":
        assert batch["chosen_input_ids"].shape == batch["rejected_input_ids"].shape
        if form == "plain":
            assert batch["margin"].tolist() == [1.5, 0.5]
    if kind == "unpaired":
        assert batch["label"].tolist() == [True, False]
    if kind == "prompt_only":
        assert batch["prompt_text"] == ["the movie was", "the plot"]
        assert examples[1]["prompt"] == rows[1]["prompt"]


def test_directory_splits_and_num_rows(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    write(PLAIN["paired"], d / "train.jsonl")
    write(PLAIN["paired"][:1], d / "test.jsonl")
    rows, _ = load_rows(cfg_for(str(d)))
    assert len(rows) == 2
    assert len(load_rows(cfg_for(str(d)), "test")[0]) == 1
    assert len(load_rows(cfg_for(str(d), num_rows=1))[0]) == 1
    train, evals, _ = load_splits(cfg_for(str(d), eval_split="test"))
    assert (len(train), len(evals)) == (2, 1)


def test_eval_fraction_is_seeded(tmp_path):
    rows = [{"prompt": f"the {w}"} for w in WORDS]
    path = write(rows, tmp_path / "p.jsonl")
    cfg = cfg_for(path, eval_fraction=0.25)
    a, ea, _ = load_splits(cfg, seed=3)
    b, eb, _ = load_splits(cfg, seed=3)
    _, ec, _ = load_splits(cfg, seed=4)
    assert ea == eb and ea != ec
    assert len(ea) == round(len(rows) * 0.25) and len(a) + len(ea) == len(rows)


# --------------------------------------------------------------------------------------------
# Tokenization, eos, masks


def test_plain_tokenization_bos_and_single_eos(tok):
    rows = [{"prompt": "the movie was", "completion": "good <eos>"}]  # eos already in the text
    (ex,), _ = tokenize_rows(rows, "demonstrations", tok, DataConfig(), "x")
    assert ex["prompt_ids"] == [tok.bos_token_id] + ids(tok, "the movie was")
    assert ex["completion_ids"] == ids(tok, "good") + [tok.eos_token_id]


def test_chat_completion_is_template_tail_with_one_eos(tok):
    rows = CHAT["unpaired"]
    (ex, _), _ = tokenize_rows(rows, "unpaired", tok, DataConfig(), "x")
    assert ex["prompt_ids"] == ids(tok, "<|user|> the movie was <|end|>\n<|assistant|> ")
    # The turn's "<|end|>" stays (the model must learn to close its turn), the newline after
    # it is dropped, and eos closes the sequence once.
    assert ex["completion_ids"] == ids(tok, "good <|end|>") + [tok.eos_token_id]
    assert ex["label"] is True


def test_chat_end_of_turn_as_eos_is_not_doubled():
    tok = make_tokenizer(eos="<|end|>")  # ChatML-style: the end-of-turn token is eos
    (ex,), _ = tokenize_rows(CHAT["demonstrations"][1:], "demonstrations", tok, DataConfig(), "x")
    assert ex["completion_ids"] == ids(tok, "was long <|end|>")
    assert ex["completion_ids"].count(tok.eos_token_id) == 1


def test_chat_template_without_clean_prefix_falls_back_to_content():
    # The prompt is rendered differently once an answer follows: no exact prefix.
    template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}<|bot|> {% else %}"
                "<|{{ m['role'] }}|> {% endif %}{{ m['content'] }} {% endfor %}"
                "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    tok = make_tokenizer(template=template)
    (ex, _), _ = tokenize_rows(CHAT["paired"], "paired", tok, DataConfig(), "x")
    assert ex["prompt_ids"] == ids(tok, "<|user|> the movie was <|assistant|>")
    assert ex["chosen_ids"] == ids(tok, "good") + [tok.eos_token_id]
    assert ex["rejected_ids"] == ids(tok, "bad") + [tok.eos_token_id]


def test_masks_cover_exactly_the_completion(tok):
    examples, _ = tokenize_rows(PLAIN["paired"], "paired", tok, DataConfig(), "x")
    batch = collate(examples, "paired", tok.pad_token_id)
    for side in ("chosen", "rejected"):
        for b, ex in enumerate(examples):
            p, c = len(ex["prompt_ids"]), len(ex[f"{side}_ids"])
            mask = batch[f"{side}_loss_mask"][b]
            assert mask.dtype == torch.bool
            assert mask.nonzero().flatten().tolist() == list(range(p, p + c))
            assert batch[f"{side}_input_ids"][b, p:p + c].tolist() == ex[f"{side}_ids"]
            assert batch[f"{side}_attention_mask"][b].sum().item() == p + c
            assert (batch[f"{side}_input_ids"][b, p + c:] == tok.pad_token_id).all()
    assert batch["margin"].dtype == torch.float32

    examples, _ = tokenize_rows(PLAIN["unpaired"], "unpaired", tok, DataConfig(), "x")
    batch = collate(examples, "unpaired", tok.pad_token_id)
    assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
    for b, ex in enumerate(examples):
        seq, mask = build_sequences(ex["prompt_ids"], ex["completion_ids"])
        assert batch["input_ids"][b, :len(seq)].tolist() == seq
        assert batch["loss_mask"][b, :len(mask)].tolist() == mask
        assert not batch["loss_mask"][b, len(mask):].any()


def test_prompt_only_is_left_padded(tok):
    examples, _ = tokenize_rows(PLAIN["prompt_only"], "prompt_only", tok, DataConfig(), "x")
    batch = collate(examples, "prompt_only", tok.pad_token_id)
    short = examples[1]["prompt_ids"]
    assert batch["prompt_input_ids"][1, -len(short):].tolist() == short
    assert batch["prompt_input_ids"][1, 0].item() == tok.pad_token_id
    assert batch["prompt_attention_mask"][1].tolist() == [0] + [1] * len(short)


# --------------------------------------------------------------------------------------------
# Truncation policies


def test_truncate_keeps_prompt_and_cuts_completion(tok):
    cfg = DataConfig(max_length=6, max_prompt_length=4, truncation="truncate")
    examples, report = tokenize_rows(long_rows(), "paired", tok, cfg, "x")
    assert report == TokenizeReport(rows_in=2, rows_kept=2, dropped=0, truncated=1)
    ex = examples[1]
    assert ex["prompt_ids"] == [tok.bos_token_id] + ids(tok, "the plot")
    assert ex["chosen_ids"] == ids(tok, "was long long")  # cut: no eos
    assert ex["rejected_ids"] == ids(tok, "was ok") + [tok.eos_token_id]
    assert examples[0]["chosen_ids"][-1] == tok.eos_token_id


def test_drop_counts_and_all_dropped_is_an_error(tok):
    cfg = DataConfig(max_length=6, max_prompt_length=4, truncation="drop")
    examples, report = tokenize_rows(long_rows(), "paired", tok, cfg, "x")
    assert [ex["row"] for ex in examples] == [0]
    assert report == TokenizeReport(rows_in=2, rows_kept=1, dropped=1, truncated=0)
    with pytest.raises(UserError) as e:
        tokenize_rows(long_rows()[1:], "paired", tok, cfg, "x.jsonl")
    assert "x.jsonl" in one_line(e) and "data.max_length" in str(e.value)


# --------------------------------------------------------------------------------------------
# Conversions


def test_paired_to_unpaired(tok):
    rows = convert_rows(PLAIN["paired"], "paired", "unpaired", "p.jsonl")
    assert [(r["completion"], r["label"]) for r in rows] == [
        ("good", True), ("bad", False), ("was great", True), ("was awful", False)]
    assert all("margin" not in r and "chosen" not in r for r in rows)
    examples, report = tokenize_rows(rows, "unpaired", tok, DataConfig(), "p.jsonl")
    assert report.rows_kept == 4 and [ex["row"] for ex in examples] == [0, 1, 2, 3]


def test_conversion_needs_to_be_asked_for(tmp_path, tok):
    path = write(PLAIN["paired"], tmp_path / "p.jsonl")
    rows, source = load_rows(cfg_for(path))
    with pytest.raises(UserError) as e:
        prepare_rows(rows, "unpaired", cfg_for(path), source)
    assert "paired_to_unpaired" in one_line(e)
    out = prepare_rows(rows, "unpaired", cfg_for(path, convert="paired_to_unpaired"), source)
    assert len(out) == 4
    # Prompts of any data serve the online methods without a conversion.
    assert [r["prompt"] for r in prepare_rows(rows, "prompt_only", cfg_for(path), source)] == [
        "the movie was", "the plot"]


def test_messages_split_into_prompt_and_completion():
    (row, _) = convert_rows(CHAT["demonstrations"], "demonstrations", "demonstrations", "m.jsonl")
    assert row["prompt"] == user("tell me more") + assistant("ok") + user("the movie was")
    assert row["completion"] == assistant("good")
    with pytest.raises(UserError) as e:
        convert_rows([{"messages": user("hi") + assistant("a") + assistant("b")}],
                     "demonstrations", "demonstrations", "m.jsonl")
    assert "m.jsonl, row 0, field 'messages'" in one_line(e)
