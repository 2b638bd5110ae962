"""Two CPU processes (gloo, through accelerate's launcher) train the same model as one process
at the same global batch, and only the main process writes outputs."""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ARCH = "model.arch={model_type: llama, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, tie_word_embeddings: false}"
WORDS = "the movie was good bad great dull fine and plot acting film".split()


def write_pairs(path, n=32):
    rng = random.Random(0)
    s = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": s(3), "chosen": s(rng.randint(2, 6)), "rejected": s(rng.randint(2, 6))}) + "\n")


def overrides(data, out):
    return ["data=hf", f"data.path={data}", ARCH, "trainer.max_steps=3", "trainer.examples_per_step=8",
            "trainer.examples_per_device=4", "trainer.lr=1e-2", "trainer.eval_at_end=false", "trainer.progress=false",
            "trainer.log_every_steps=1", f"hydra.run.dir={out}"]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    data = tmp_path / "pairs.jsonl"
    write_pairs(data)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "prefopt.cli.train", *overrides(data, tmp_path / "one")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29517",
                          "-m", "prefopt.cli.train", *overrides(data, tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    w1 = load_file(tmp_path / "one" / "model" / "model.safetensors")
    w2 = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-6)
    m1 = [json.loads(l) for l in open(tmp_path / "one" / "metrics.jsonl")]
    m2 = [json.loads(l) for l in open(tmp_path / "two" / "metrics.jsonl")]
    assert [r["step"] for r in m2] == [1, 2, 3]  # written once, by the main process
    for a, b in zip(m1, m2):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["tokens"] == a["tokens"]
