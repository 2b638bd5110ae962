"""Every bad-input case stops before training with one line naming file, row and field."""

import json
import os

import pytest

from conftest import compose
from prefopt.core.errors import UserError
from prefopt.cli.train import run

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


def test_existing_output_directory_is_left_alone(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("keep\n")
    with pytest.raises(UserError, match="already holds a run"):
        run(compose([]), str(out))
    assert (out / "metrics.jsonl").read_text() == "keep\n"


@pytest.mark.parametrize("preset", ["llama3", "qwen2_5", "mistral", "gemma2", "llama3_qlora", "qwen2_5_qlora",
                                    "mistral_qlora", "gemma2_qlora"])
def test_family_presets_are_valid_typed_configs(preset):
    from prefopt.core.config import ModelConfig, typed

    m = typed(ModelConfig, compose([f"model={preset}"]).model, "model")
    assert m.lora.r > 0 and m.name_or_path and m.load_in_4bit == preset.endswith("_qlora")


def test_qlora_preset_trains_through_the_app(tmp_path):
    # The qwen2_5_qlora preset with a tiny random Qwen2 architecture in place of the hub weights.
    arch = ("model.arch={model_type: qwen2, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, "
            "num_attention_heads: 4, num_key_value_heads: 2, tie_word_embeddings: false}")
    cfg = compose(["model=qwen2_5_qlora", "model.name_or_path=null", arch, "model.dtype=float32",
                   "model.bnb_4bit_compute_dtype=float32", "model.gradient_checkpointing=false", "trainer.max_steps=2",
                   "trainer.progress=false", "eval.num_prompts=4", "eval.max_new_tokens=8", "data.num_rows=64"])
    s = run(cfg, str(tmp_path / "run"))
    assert s["steps"] == 2 and s["model"] == "qwen2_5_qlora"
    assert "adapter_model.safetensors" in os.listdir(tmp_path / "run" / "model")


def test_qlora_online_and_precomputed_reference_keep_training(tmp_path):
    # Rollouts, π_old passes and the reference pre-pass must not put bitsandbytes layers in eval
    # mode (its CPU repacking then breaks autograd); two online steps and two DPO steps train.
    arch = ("model.arch={model_type: qwen2, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, "
            "num_attention_heads: 4, num_key_value_heads: 2, tie_word_embeddings: false}")
    common = ["model=qwen2_5_qlora", "model.name_or_path=null", arch, "model.dtype=float32",
              "model.bnb_4bit_compute_dtype=float32", "model.gradient_checkpointing=false", "trainer.max_steps=2",
              "trainer.progress=false", "eval.num_prompts=4", "eval.max_new_tokens=8"]
    s = run(compose([*common, "algo=grpo", "data=arith", "algo.prompts_per_step=2", "algo.samples_per_prompt=2",
                     "algo.sequences_per_device=4"]), str(tmp_path / "grpo"))
    assert s["steps"] == 2
    s = run(compose([*common, "algo.precompute_ref=true", "data.num_rows=64"]), str(tmp_path / "dpo"))
    assert s["steps"] == 2


# ---- issue 12: files that do not parse, config values found too late ------------------------------

def _load_error(path):
    from prefopt.data.load import DataConfig, load_rows

    with pytest.raises(UserError) as e:
        load_rows(DataConfig(path=str(path)))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg, msg
    return msg


def test_malformed_data_files_name_the_file_and_row(tmp_path):
    # A: a .jsonl whose line 57 of 100 is cut short; a CSV row with an extra field.
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
    # B: a non-UTF-8 byte crashed in ds.to_list(); an empty file gave "StopIteration: ".
    f = tmp_path / "pairs.jsonl"
    f.write_bytes(b"".join(json.dumps({**GOOD, "prompt": f"p{i}"}).encode() + b"\n" for i in range(5))
                  .replace(b'"p3"', b'"p\xff3"'))
    msg = _load_error(f)
    assert "line 4" in msg and "0xff" in msg and "UTF-8" in msg, msg
    for name in ("empty.jsonl", "empty.csv", "empty.json"):
        (tmp_path / name).write_text("" if name != "empty.json" else "\n  \n")
        assert "empty" in _load_error(tmp_path / name)


@pytest.mark.parametrize("override,needle", [
    ("eval.num_prompts=0", "eval.num_prompts=0"), ("eval.samples_per_prompt=0", "eval.samples_per_prompt"),
    ("eval.prompts_per_batch=0", "eval.prompts_per_batch"), ("eval.temperature=0", "eval.temperature"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens"), ("model.lora.r=-4", "model.lora.r=-4"),
    ("trainer.keep_checkpoints=0", "trainer.keep_checkpoints"), ("trainer.lr=0", "trainer.lr"),
])
def test_every_section_is_checked_before_any_model_loads(tmp_path, monkeypatch, override, needle):
    # C: eval.* was never validated and failed after training, losing the model.
    import prefopt.models.load

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(prefopt.models.load, "load_policy", no_loading)
    with pytest.raises(UserError) as e:
        run(compose([override]), str(tmp_path / "run"))
    assert needle in str(e.value) and "accepted" in str(e.value), str(e.value)
    assert not os.path.exists(tmp_path / "run")


def test_model_is_saved_before_evaluation(tmp_path, monkeypatch):
    # C: model/ was written after the evaluation, so a failing evaluation lost the trained weights.
    import prefopt.rollout.evaluate

    def broken(self, policy):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(prefopt.rollout.evaluate.Evaluator, "__call__", broken)
    cfg = compose(["trainer.max_steps=1", "trainer.progress=false", "trainer.examples_per_step=8",
                   "trainer.examples_per_device=8", "eval.num_prompts=2"])
    with pytest.raises(RuntimeError, match="evaluation failed"):
        run(cfg, str(tmp_path / "run"))
    assert os.path.exists(tmp_path / "run" / "model" / "model.safetensors")


def test_unknown_key_lists_the_valid_keys_of_its_section():
    from prefopt.cli.train import precheck_argv

    for argv, needles in ((["algo.betta=0.1"], ("algo.betta", "beta", "label_smoothing")),
                          (["+algo.betta=0.1"], None), (["model.lora.rank=2"], ("model.lora.rank", "alpha, dropout, r")),
                          (["algo=ipo", "algo.betta=1"], ("algo.betta", "beta")), (["evl.num_prompts=1"], ("evl", "eval")),
                          (["algo.beta=["], ("cannot parse", "algo.beta=["))):
        if needles is None:  # Hydra's own hint; the typed config rejects it with the same list
            with pytest.raises(UserError, match="valid keys of 'algo': beta"):
                run(compose(argv), "/nonexistent/never-written")
            continue
        with pytest.raises(UserError) as e:
            precheck_argv(argv)
        for n in needles:
            assert n in str(e.value), str(e.value)


@pytest.mark.parametrize("argv,needle", [
    (["run", "threads=abc"], "threads: 'abc'"), (["plan", "seeds=[a]"], "seeds: 'a'"),
    (["plan", "algo.beta=["], "cannot parse the override 'algo.beta=['"), (["plan", "only=["], "only=["),
    (["run", "hydra/launcher=joblib", "hydra.launcher.n_jobs=x"], "hydra.launcher.n_jobs"),
])
def test_leaderboard_bad_values_are_one_line(tmp_path, capsys, argv, needle):
    # N: prefopt-leaderboard crashed with tracebacks on these.
    from prefopt.leaderboard.cli import main

    with pytest.raises(SystemExit) as e:
        main([*argv, f"dir={tmp_path}/lb"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and needle in err[0], err
    assert not os.path.exists(tmp_path / "lb")
