"""prefopt.data.formats: loading each file format, validation errors, tokenization, masking, collation.

Uses a word-level tokenizer built here (no downloads); one line of text is one token per word.
"""

import csv
import json

import pytest
import torch
from omegaconf import OmegaConf
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from prefopt.data.formats import convert_rows, detect_kind, prepare_rows, validate_rows

from prefopt.data.load import DataConfig, load_rows, load_splits

from prefopt.data.tokenize import build_sequences, collate, tokenize_rows, TokenizeReport
from prefopt.core.errors import UserError

WORDS = ("the movie was good bad great awful fine plot actors music long short hello world "
         "what is it tell me more yes no ok sure story").split()
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>",
            "<|end|>", "<|bot|>", "\n"]
# Turns end with "<|end|>\n", like ChatML's "<|im_end|>\n".
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|> {% endif %}")


def make_tokenizer(eos="<eos>", template=TEMPLATE):
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # Spaces separate words; "\n" stays a token of its own so template formatting is visible.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(" +"), behavior="removed"),
        pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
    ])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token=eos,
                                 pad_token="<pad>", unk_token="<unk>")
    hf.chat_template = template
    return hf


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


PLAIN = {
    "paired": [{"prompt": "the movie was", "chosen": "good", "rejected": "bad", "margin": 1.5},
               {"prompt": "the plot", "chosen": "was great", "rejected": "was awful", "margin": 0.5}],
    "unpaired": [{"prompt": "the movie was", "completion": "good", "label": True},
                 {"prompt": "the plot", "completion": "was awful", "label": False}],
    "prompt_only": [{"prompt": "the movie was"}, {"prompt": "the plot"}],
    "demonstrations": [{"prompt": "the movie was", "completion": "good"},
                       {"prompt": "the plot", "completion": "was long"}],
}
CHAT = {
    "paired": [{"prompt": user("the movie was"), "chosen": assistant("good"), "rejected": assistant("bad")},
               {"prompt": user("the plot"), "chosen": assistant("was great"), "rejected": assistant("was awful")}],
    "unpaired": [{"prompt": user("the movie was"), "completion": assistant("good"), "label": True},
                 {"prompt": user("the plot"), "completion": assistant("was awful"), "label": False}],
    "prompt_only": [{"prompt": user("the movie was")}, {"prompt": user("the plot")}],
    "demonstrations": [{"messages": user("tell me more") + assistant("ok") + user("the movie was")
                        + assistant("good")},
                       {"messages": user("the plot") + assistant("was long")}],
}


def write(rows, path):
    """Write rows the way a user would produce each format."""
    ext = path.suffix
    if ext == ".json":
        path.write_text(json.dumps(rows))
    elif ext == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif ext == ".parquet":
        import datasets
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    elif ext == ".csv":  # CSV has no lists: conversational cells are JSON text
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    return str(path)


def cfg_for(path=None, **kw):
    return DataConfig(path=path, **kw)


def one_line(exc_info):
    msg = str(exc_info.value)
    assert "\n" not in msg and "accepted" in msg, msg
    return msg


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


def long_rows():
    return [{"prompt": "the movie", "chosen": "was good", "rejected": "was bad"},  # 3 + 3 tokens
            {"prompt": "the plot", "chosen": "was long long long", "rejected": "was ok"}]  # 3 + 5


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


def test_error_policy_names_row_and_field(tok):
    cfg = DataConfig(max_length=6, max_prompt_length=4, truncation="error")
    with pytest.raises(UserError) as e:
        tokenize_rows(long_rows(), "paired", tok, cfg, "x.jsonl")
    msg = one_line(e)
    assert "x.jsonl, row 1, field 'chosen'" in msg and "data.max_length=6" in msg


# --------------------------------------------------------------------------------------------
# Bad input: one line naming file, row and field


def bad(tmp_path, rows, kind, tok=None, ext=".jsonl", **cfg):
    path = write(rows, tmp_path / f"bad{ext}")
    with pytest.raises(UserError) as e:
        c = cfg_for(path, **cfg)
        loaded, source = load_rows(c)
        prepared = prepare_rows(loaded, kind, c, source)
        tokenize_rows(prepared, kind, tok or make_tokenizer(), c, source)
    msg = one_line(e)
    assert path in msg, msg
    return msg


def test_missing_column(tmp_path):
    msg = bad(tmp_path, [{"prompt": "the", "completion": "good", "labels": True}], "unpaired")
    # names the column, the columns found and the ones the kind needs
    assert "row 0, field 'label'" in msg and "labels" in msg and "prompt, completion, label" in msg
    msg = bad(tmp_path, [{"prompt": "the", "chosen": "good", "rejected": "bad"},
                         {"prompt": "the", "chosen": "good"}], "paired", ext=".json")
    assert "row 1, field 'rejected'" in msg


def test_missing_column_names_found_and_accepted(tmp_path):
    rows = [{"prompt": "the", "chosen": "good", "rejected": "bad"}]
    with pytest.raises(UserError) as e:
        validate_rows([{k: v for k, v in r.items() if k != "rejected"} for r in rows], "paired", "f.jsonl")
    msg = one_line(e)
    assert "f.jsonl, row 0, field 'rejected'" in msg
    assert "found columns: prompt, chosen" in msg and "prompt, chosen, rejected" in msg


@pytest.mark.parametrize("rows,kind,field", [
    ([{"prompt": "the", "completion": "good", "label": "yes"}], "unpaired", "label"),
    ([{"prompt": "the", "completion": "good", "label": 2}], "unpaired", "label"),
    ([{"prompt": "the", "chosen": 3, "rejected": "bad"}], "paired", "chosen"),
    ([{"prompt": "the", "chosen": "good", "rejected": "bad", "margin": "big"}], "paired", "margin"),
    ([{"prompt": "the", "chosen": [{"role": "assistant"}], "rejected": "bad"}], "paired", "chosen"),
    ([{"prompt": user("the"), "chosen": assistant("good") + assistant("x"),
       "rejected": assistant("bad")}], "paired", "chosen"),
    ([{"prompt": assistant("the"), "completion": assistant("good")}], "demonstrations", "prompt"),
    ([{"prompt": user("the"), "completion": [{"role": "robot", "content": "x"}]}], "demonstrations",
     "completion"),
])
def test_wrong_type(tmp_path, rows, kind, field):
    msg = bad(tmp_path, rows, kind)
    assert f"row 0, field '{field}'" in msg


@pytest.mark.parametrize("rows,kind,field", [
    ([{"prompt": "the", "completion": "  "}], "demonstrations", "completion"),
    ([{"prompt": "the", "chosen": "", "rejected": "bad"}], "paired", "chosen"),
    ([{"prompt": user("the"), "chosen": assistant("good"), "rejected": assistant("")}], "paired", "rejected"),
])
def test_empty_completion(tmp_path, rows, kind, field):
    msg = bad(tmp_path, rows, kind, ext=".parquet")
    assert f"row 0, field '{field}'" in msg and "empty" in msg


def test_chosen_identical_to_rejected(tmp_path):
    rows = [{"prompt": "the", "chosen": "good", "rejected": "bad"},
            {"prompt": "the", "chosen": "good", "rejected": "good"}]
    msg = bad(tmp_path, rows, "paired", ext=".csv")
    assert "row 1, field 'rejected'" in msg and "identical" in msg


def test_nonexistent_file(tmp_path):
    path = str(tmp_path / "nope.jsonl")
    with pytest.raises(UserError) as e:
        load_rows(cfg_for(path))
    msg = one_line(e)
    assert f"data.path: '{path}' does not exist" in msg and ".jsonl" in msg
    with pytest.raises(UserError) as e:
        load_rows(cfg_for(None))
    one_line(e)


def test_unreachable_hub_name(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'someone/prefs' on the Hub\nsecond line")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError) as e:
        load_rows(cfg_for("someone/prefs"))
    msg = one_line(e)
    assert "'someone/prefs'" in msg and "ConnectionError" in msg


def test_missing_split_and_empty_file(tmp_path):
    path = write(PLAIN["paired"], tmp_path / "p.jsonl")
    with pytest.raises(UserError) as e:
        load_rows(cfg_for(path, split="test"))
    assert path in one_line(e) and "test" in str(e.value)
    empty = tmp_path / "empty.csv"
    empty.write_text("prompt,chosen,rejected\n")
    with pytest.raises(UserError) as e:
        load_rows(cfg_for(str(empty)))
    assert str(empty) in one_line(e)


def test_prompt_longer_than_max_prompt_length(tmp_path):
    rows = [{"prompt": "the movie", "completion": "good"},
            {"prompt": "the movie was long", "completion": "good"}]
    msg = bad(tmp_path, rows, "demonstrations", max_prompt_length=4)
    assert "row 1, field 'prompt'" in msg and "5 tokens" in msg and "data.max_prompt_length=4" in msg


def test_mixed_forms(tmp_path):
    rows = [{"prompt": "the", "chosen": "good", "rejected": "bad"},
            {"prompt": "the", "chosen": assistant("good"), "rejected": "bad"}]
    msg = bad(tmp_path, rows, "paired")
    assert "row 1, field 'chosen'" in msg and "conversational" in msg and "plain" in msg


def test_chat_data_needs_a_chat_template(tmp_path):
    msg = bad(tmp_path, CHAT["paired"], "paired", tok=make_tokenizer(template=None))
    assert "chat template" in msg


def test_config_values_are_checked():
    with pytest.raises(UserError) as e:
        tokenize_rows(PLAIN["paired"], "paired", make_tokenizer(), DataConfig(truncation="clip"), "x")
    assert "data.truncation" in one_line(e) and "truncate, drop, error" in str(e.value)
    with pytest.raises(UserError) as e:
        tokenize_rows(PLAIN["paired"], "paired", make_tokenizer(), DataConfig(max_length=8), "x")
    assert "data.max_prompt_length" in one_line(e)


def test_config_rejects_unknown_key_and_wrong_type():
    base = OmegaConf.structured(DataConfig)
    with pytest.raises(Exception):
        OmegaConf.merge(base, {"pth": "x.jsonl"})
    with pytest.raises(Exception):
        OmegaConf.merge(base, {"max_length": "long"})
    merged = OmegaConf.merge(base, {"path": "x.jsonl", "max_length": 64})
    assert merged.max_length == 64


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


def test_impossible_conversion_lists_accepted():
    with pytest.raises(UserError) as e:
        convert_rows(PLAIN["unpaired"], "unpaired", "paired", "u.jsonl")
    assert "paired_to_unpaired" in one_line(e)
    with pytest.raises(UserError) as e:
        prepare_rows(PLAIN["unpaired"], "paired", DataConfig(convert="unpaired_to_paired"), "u.jsonl")
    assert "data.convert" in one_line(e)


def test_messages_split_into_prompt_and_completion():
    (row, _) = convert_rows(CHAT["demonstrations"], "demonstrations", "demonstrations", "m.jsonl")
    assert row["prompt"] == user("tell me more") + assistant("ok") + user("the movie was")
    assert row["completion"] == assistant("good")
    with pytest.raises(UserError) as e:
        convert_rows([{"messages": user("hi") + assistant("a") + assistant("b")}],
                     "demonstrations", "demonstrations", "m.jsonl")
    assert "m.jsonl, row 0, field 'messages'" in one_line(e)
