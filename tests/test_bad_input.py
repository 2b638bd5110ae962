"""Every bad-input case stops before training with one line naming file, row and field."""

import json
import os

import pytest

from conftest import compose
from prefopt.errors import UserError
from prefopt.train import run

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
    from prefopt.config import ModelConfig, typed

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
