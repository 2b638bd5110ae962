"""Bad data files: a missing column, a wrong type, an empty or identical completion, a prompt over
the maximum length, a file that does not parse or does not exist, data a method cannot use. Each stops
the run before training with one line that names the file, row and field, and what would be
accepted; nothing is written."""

import json
import os

import pytest
from omegaconf import OmegaConf

from conftest import compose
from data_files import CHAT, PLAIN, assistant, cfg_for, long_rows, make_tokenizer, one_line, user, write
from prefopt.run import train as run
from prefopt.core.config import DataConfig
from prefopt.core.errors import UserError
from prefopt.data.formats import convert_rows, prepare_rows, validate_rows
from prefopt.data.load import load_rows
from prefopt.data.tokenize import tokenize_rows
from short_runs import TRAIN_ONLY, cli, one_line_error


# ---- through a run: the first bad row stops it ---------------------------------------------------

GOOD = {"prompt": "the movie was", "chosen": "good and fine", "rejected": "bad and dull"}
CASES = {
    "missing column": ({"prompt": "a", "chosen": "b"}, {}, ("row 0", "rejected")),
    "wrong type": ({**GOOD, "chosen": 7}, {}, ("row 1", "chosen")),
    "empty completion": ({**GOOD, "rejected": ""}, {}, ("row 1", "rejected")),
    "chosen identical to rejected": ({**GOOD, "rejected": GOOD["chosen"]}, {}, ("row 1", "chosen")),
    "prompt too long": ({**GOOD, "prompt": " ".join(["the"] * 40)}, {"data.max_prompt_length": 8}, ("row 1", "prompt", "max_prompt_length")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_rows(tmp_path, case):
    bad, extra, needles = CASES[case]
    f = tmp_path / "data.jsonl"
    rows = [GOOD, bad, GOOD] if "row 1" in needles else [bad, GOOD]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    cfg = compose(["data=hf", f"data.path={f}", "trainer.progress=false", *[f"{k}={v}" for k, v in extra.items()]])
    with pytest.raises(UserError) as e:
        run(cfg, str(out))
    msg = str(e.value)
    assert "\n" not in msg and "data.jsonl" in msg, msg
    for n in needles:
        assert n in msg, msg
    assert not os.path.exists(out / "metrics.jsonl")


def test_missing_file(tmp_path):
    cfg = compose(["data=hf", f"data.path={tmp_path}/nope.parquet"])
    with pytest.raises(UserError, match="nope.parquet.*does not exist"):
        run(cfg, str(tmp_path / "run"))


def test_bad_data_file_is_one_line(tmp_path):
    one_line_error(cli("data=hf", f"data.path={tmp_path}/missing.jsonl", cwd=tmp_path),
                   "missing.jsonl")
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "a", "chosen": "b"}) + "\n")
    one_line_error(cli("data=hf", f"data.path={f}", cwd=tmp_path), "pairs.jsonl", "rejected")


# ---- files that do not parse ---------------------------------------------------------------------

def _load_error(path):
    with pytest.raises(UserError) as e:
        load_rows(DataConfig(path=str(path)))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_malformed_data_files_name_the_file_and_row(tmp_path):
    # A .jsonl whose line 57 of 100 is cut short; a CSV row with an extra field; a JSON array missing
    # a comma.
    lines = [json.dumps({**GOOD, "prompt": f"p{i}"}) for i in range(100)]
    lines[56] = lines[56][:-8]
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(lines) + "\n")
    msg = _load_error(f)
    assert "line 57 (row 56)" in msg and "not valid JSON" in msg, msg
    c = tmp_path / "pairs.csv"
    c.write_text("prompt,chosen,rejected\n" + "a,b,c\n" * 5 + "a,b,c,d\n" + "a,b,c\n")
    msg = _load_error(c)
    assert "line 7 (row 5)" in msg and "4 fields" in msg and "header has 3" in msg, msg
    j = tmp_path / "pairs.json"
    j.write_text('[{"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": "a" "chosen": "b"}]')
    assert "line 2, column" in _load_error(j)


def test_non_utf8_and_empty_data_files_are_one_line(tmp_path):
    # A non-UTF-8 byte and an empty file are caught and named here: the loaders underneath would end
    # in a traceback from ds.to_list() and in a bare "StopIteration: ".
    f = tmp_path / "pairs.jsonl"
    f.write_bytes(b"".join(json.dumps({**GOOD, "prompt": f"p{i}"}).encode() + b"\n" for i in range(5))
                  .replace(b'"p3"', b'"p\xff3"'))
    msg = _load_error(f)
    assert "line 4" in msg and "0xff" in msg and "UTF-8" in msg, msg
    for name in ("empty.jsonl", "empty.csv", "empty.json"):
        (tmp_path / name).write_text("" if name != "empty.json" else "\n  \n")
        assert "empty" in _load_error(tmp_path / name)


# ---- rows: columns, types, empty and identical completions, lengths, forms -----------------------

def bad(tmp_path, rows, kind, tok=None, ext=".jsonl", **cfg):
    """Write ``rows``, then load, prepare and tokenize them; returns the one-line error, which names the file."""
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


# ---- files, splits and hub names that cannot be read ---------------------------------------------

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


# ---- data settings: truncation policy, values, keys, conversions ---------------------------------

def test_error_policy_names_row_and_field():
    tok = make_tokenizer()
    cfg = DataConfig(max_length=6, max_prompt_length=4, truncation="error")
    with pytest.raises(UserError) as e:
        tokenize_rows(long_rows(), "paired", tok, cfg, "x.jsonl")
    msg = one_line(e)
    assert "x.jsonl, row 1, field 'chosen'" in msg and "data.max_length=6" in msg


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


def test_impossible_conversion_lists_accepted():
    with pytest.raises(UserError) as e:
        convert_rows(PLAIN["unpaired"], "unpaired", "paired", "u.jsonl")
    assert "paired_to_unpaired" in one_line(e)
    with pytest.raises(UserError) as e:
        prepare_rows(PLAIN["unpaired"], "paired", DataConfig(convert="unpaired_to_paired"), "u.jsonl")
    assert "data.convert" in one_line(e)


# ---- what an offline method needs of its data ----------------------------------------------------

def test_bad_input_for_offline_methods(run_cfg, tmp_path):
    pairs = write([{"prompt": "the film", "chosen": "great", "rejected": "dull"}] * 4, tmp_path / "pairs.jsonl")
    with pytest.raises(UserError, match=r"needs unpaired data.*data.convert=paired_to_unpaired"):
        run_cfg("algo=kto", "data=hf", f"data.path={pairs}", out=tmp_path / "a")
    good = write([{"prompt": "the film", "completion": "great", "label": True}] * 4, tmp_path / "good.jsonl")
    with pytest.raises(UserError, match="all 4 examples are desirable"):
        run_cfg("algo=kto", "data=hf", f"data.path={good}", out=tmp_path / "b")
    ties = write([{"prompt": "the film", "chosen": "great", "rejected": "dull", "tie": True}] * 4, tmp_path / "ties.jsonl")
    with pytest.raises(UserError, match="all 4 pairs are ties"):
        run_cfg("algo=reward", "data=hf", f"data.path={ties}", out=tmp_path / "c")
    scored = write([{"prompt": "the film", "chosen": "great", "rejected": "dull", "score_chosen": 7.0,
                     "score_rejected": 7.0}] * 4, tmp_path / "scored.jsonl")
    with pytest.raises(UserError, match="ties"):
        run_cfg("algo=reward", "data=hf", f"data.path={scored}", out=tmp_path / "d")
    for d in "abcd":
        assert not os.path.exists(tmp_path / d / "metrics.jsonl")
    # The converted preference data is accepted by KTO.
    s, _ = run_cfg("algo=kto", "data=hf", f"data.path={pairs}", "data.convert=paired_to_unpaired", "trainer.max_steps=1",
                   "trainer.examples_per_step=4", "trainer.examples_per_device=4", *TRAIN_ONLY, out=tmp_path / "e")
    assert s["steps"] == 1


# ---- words the tokenizer does not know ------------------------------------------------------------

def test_unknown_words_are_counted_and_named_once():
    tok = make_tokenizer()  # knows "the movie was good bad ..." only
    rows = [{"prompt": "the movie was", "chosen": "splendid", "rejected": "atrocious"},
            {"prompt": "the movie was", "chosen": "good", "rejected": "bad"}]
    with pytest.warns(UserWarning) as w:
        tokenize_rows(rows, "paired", tok, cfg_for(), "u.jsonl")
    msgs = [str(x.message) for x in w if "<unk>" in str(x.message)]
    assert len(msgs) == 1, msgs
    assert "u.jsonl" in msgs[0] and "%" in msgs[0] and "'splendid'" in msgs[0] and "'atrocious'" in msgs[0]
    assert "1 pair(s) of different completions became identical" in msgs[0], msgs[0]


def test_no_unknown_word_warning_when_the_tokenizer_knows_every_word(recwarn):
    rows = [{"prompt": "the movie was", "chosen": "good", "rejected": "bad"}]
    tokenize_rows(rows, "paired", make_tokenizer(), cfg_for(), "u.jsonl")
    assert not [w for w in recwarn if "<unk>" in str(w.message)]


def test_model_tiny_on_user_data_warns_about_unknown_words(tmp_path):
    f = write([{"prompt": "the movie was", "completions": ["zorblax quux", "fnord quux", "good"], "ranks": [1, 2, 3]}] * 4,
              tmp_path / "ranked.jsonl")
    with pytest.warns(UserWarning, match=r"<unk>.*'zorblax'.*became identical"):
        run(compose(["data=hf", f"data.path={f}", "algo=reward", "model=tiny", "trainer.max_steps=1",
                     "trainer.examples_per_step=2", "trainer.progress=false", *TRAIN_ONLY]), str(tmp_path / "run"))


# ---- messages that name the real cause ------------------------------------------------------------

def test_dpo_on_rankings_that_are_all_ties_says_so():
    rows = [{"prompt": "the movie was", "completions": ["good", "bad", "fine"], "ranks": [1, 1, 1]}] * 2
    with pytest.raises(UserError) as e:
        prepare_rows(rows, "paired", cfg_for(), "r.jsonl")
    msg = one_line(e)
    assert "r.jsonl" in msg and "all 2 rankings are ties" in msg and "data.ranking_to_pairs=all" in msg, msg


def test_kto_on_ranked_data_suggests_what_works():
    rows = [{"prompt": "the movie was", "completions": ["good", "bad", "fine"], "ranks": [1, 2, 3]}]
    with pytest.raises(UserError) as e:
        prepare_rows(rows, "unpaired", cfg_for(), "r.jsonl")
    msg = one_line(e)
    assert "paired_to_unpaired" not in msg and "algo=reward" in msg and "dpo" in msg, msg


@pytest.mark.parametrize("lam", ["nan", "inf", "-inf"])
def test_ensemble_lambda_must_be_finite(tmp_path, lam):
    from prefopt.rollout.rewards import RewardConfig, check

    paths = []
    for i in range(2):
        d = tmp_path / "members" / str(i) / "model"
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        paths.append(str(d))
    with pytest.raises(UserError) as e:
        check(RewardConfig(name="ensemble", kind="ensemble", paths=paths, aggregate="mean_minus_std",
                           ensemble_lambda=float(lam)))
    msg = str(e.value)
    assert "\n" not in msg and "reward.ensemble_lambda" in msg and "finite" in msg, msg


def test_a_members_folder_entry_named_superscript_two_resolves(tmp_path):
    from prefopt.rollout.ensemble import resolve_paths

    for name in ("0", "1", "²"):
        d = tmp_path / "members" / name / "model"
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
    got = resolve_paths([str(tmp_path / "members")])
    assert [os.path.basename(os.path.dirname(p)) for p in got] == ["0", "1", "²"]
