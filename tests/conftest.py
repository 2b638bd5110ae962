import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# One testbed cache for the whole suite (and across runs): the SFT policy and pairs are built once,
# under a file lock, even with several pytest workers.
os.environ.setdefault("PREFOPT_CACHE", str(ROOT / ".cache" / "prefopt-test"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on 2 cores: one thread per worker (and per subprocess it starts) instead of
    # two workers fighting over both cores with two threads each.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def compose(overrides=()):
    from hydra import compose as _compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="prefopt.conf", version_base=None):
        return _compose("train", overrides=list(overrides))


FAST = ["trainer.progress=false", "eval.num_prompts=16", "eval.max_new_tokens=16"]


@pytest.fixture
def run_cfg(tmp_path):
    """Run prefopt in-process with Hydra overrides; returns (summary, out_dir)."""
    from prefopt.run import train as run

    def _run(*overrides, out=None):
        cfg = compose([*FAST, *overrides])
        out_dir = str(out or tmp_path / "run")
        return run(cfg, out_dir), out_dir

    return _run


TINY = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)


def tiny_model(seed=0, vocab=50, **arch):
    from prefopt.core.config import ModelConfig
    from prefopt.models.load import load_policy

    return load_policy(ModelConfig(arch={**TINY, **arch}), vocab_size=vocab, seed=seed)


def synthetic_examples(kind, n=16, vocab=50, seed=0, eos=2):
    """Random token examples in the tokenized-example contract of prefopt.data."""
    import random

    rng = random.Random(seed)
    seq = lambda lo, hi: [rng.randrange(4, vocab) for _ in range(rng.randint(lo, hi))]  # noqa: E731
    out = []
    for i in range(n):
        p = seq(2, 6)
        if kind == "paired":
            out.append({"row": i, "prompt_ids": p, "chosen_ids": seq(1, 7) + [eos], "rejected_ids": seq(1, 7) + [eos], "prompt_text": "x"})
        else:
            out.append({"row": i, "prompt_ids": p, "completion_ids": seq(1, 9) + [eos], "prompt_text": "x"})
    return out


def check_outcome(where, name, value, op, threshold, info=None):
    """Assert ``value op threshold`` (op: ">" or "<") and, when PREFOPT_OUTCOMES names a file,
    append the measurement to it as a JSON line (tests/cross_cpu.sh tabulates them)."""
    import json
    import operator

    value, threshold = float(value), float(threshold)  # numpy / torch scalars would not serialize below
    ok = bool({">": operator.gt, "<": operator.lt}[op](value, threshold))
    path = os.environ.get("PREFOPT_OUTCOMES")
    if path:
        import torch

        row = {"test": where, "name": name, "value": value, "op": op, "threshold": threshold,
               "margin": (value - threshold) if op == ">" else (threshold - value), "passed": ok,
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    assert ok, f"{name}: {value:.4g} is not {op} {threshold:.4g} ({info})"


@pytest.fixture
def outcome(request):
    """Assert a learning outcome and record it: ``outcome("gold − ref", value, ">", 0.1)``.

    Tests that assert training moved a metric use this instead of a bare ``assert``, so that
    tests/cross_cpu.sh can print every measured value next to its threshold under each instruction
    set and thread count. Such a test is marked ``outcome`` automatically (``pytest -m outcome``)."""
    return lambda *a, **k: check_outcome(request.node.nodeid, *a, **k)


def pytest_collection_modifyitems(items):
    for item in items:
        if "outcome" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.outcome)
