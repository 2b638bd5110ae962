"""trainer.strategy=fsdp2 and ddp on 2 CPU processes (gloo, torchrun) against one process.

One torchrun launch runs every 2-process scenario (tests/fsdp_worker.py); the one-process runs
happen here, in-process, with the same overrides. What is checked:

- sharding really happened (parameters are DTensors, each rank holds about half of each);
- DPO (full and LoRA), SFT and the reward model: fsdp2 on 2 processes = 1 process at the same
  global batch (losses, final weights) and = ddp on 2 processes;
- one GRPO and one PPO step (own decode loop on the gathered sharded policy): fsdp2 = ddp (the same
  prompts per rank and seeds, so the same tokens, rewards and loss), and decoding a gathered
  sharded policy gives the unsharded policy's tokens;
- kill and resume under fsdp2: the same final weights and metrics.jsonl as an uninterrupted run;
- the consolidated model/ loads with plain transformers (peft for the adapter) and gives the
  trained sharded model's log-probs.
"""

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(__file__))
from fsdp_worker import SCENARIOS_OFFLINE, overrides_for, probe_batch  # noqa: E402

pytestmark = pytest.mark.slow
WORDS = "the movie was good bad great dull fine and plot acting film".split()


def write_data(d):
    rng = random.Random(0)
    s = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    with open(d / "pairs.jsonl", "w") as f:
        for _ in range(32):
            f.write(json.dumps({"prompt": s(3), "chosen": s(rng.randint(2, 6)), "rejected": s(rng.randint(2, 6))}) + "\n")
    with open(d / "demos.jsonl", "w") as f:
        for _ in range(32):
            f.write(json.dumps({"prompt": s(3), "completion": s(rng.randint(2, 6))}) + "\n")


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """The 2-process runs (one launch) and their report."""
    root = tmp_path_factory.mktemp("fsdp")
    write_data(root)
    out = root / "two"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    port = str(29400 + os.getpid() % 500)
    r = subprocess.run(["torchrun", "--nproc_per_node", "2", "--master_port", port,
                        os.path.join(os.path.dirname(__file__), "fsdp_worker.py"), str(out), str(root)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    with open(out / "report.json") as f:
        return root, out, json.load(f)


def weights(run_dir):
    d = os.path.join(run_dir, "model")
    name = "adapter_model.safetensors" if os.path.exists(os.path.join(d, "adapter_model.safetensors")) else "model.safetensors"
    return load_file(os.path.join(d, name))


def metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_same_run(a, b, atol):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=atol, msg=lambda m: f"{k}: {m}")
    ma, mb = metrics(a), metrics(b)
    assert [r["step"] for r in ma] == [r["step"] for r in mb]
    for x, y in zip(ma, mb):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5, abs=1e-7)
        assert y["tokens"] == x["tokens"]


def test_parameters_are_sharded(two):
    _, _, rep = two
    for name in ("dpo_full", "dpo_lora"):
        r = rep[name]
        assert r["n_dtensor"] == r["n_params"] > 0  # no silent fallback to replication
        # Every first dimension of the tiny model is even: each rank holds exactly half of each.
        assert r["local_fraction"] == [0.5] * r["n_params"]


@pytest.mark.parametrize("name", list(SCENARIOS_OFFLINE))
def test_two_processes_equal_one(two, run_cfg, name):
    root, out, _ = two
    if name == "dpo_full_ddp":
        assert_same_run(out / "dpo_full", out / name, atol=1e-6)  # fsdp2 = ddp on 2 processes
        return
    _, one = run_cfg(*overrides_for(name, str(root), strategy="none"), out=root / f"one_{name}")
    assert_same_run(one, out / name, atol=2e-6)


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_online_step_fsdp2_equals_ddp(two, algo):
    _, out, rep = two
    a, b = metrics(out / f"{algo}_ddp"), metrics(out / algo)
    for x, y in zip(a, b):
        for k in ("rollout/reward_mean", "rollout/completion_tokens", "tokens"):
            assert y[k] == x[k], k  # the same sampled tokens
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-5, abs=1e-7)
    wa, wb = weights(out / f"{algo}_ddp"), weights(out / algo)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6)
    assert rep["decode"]["same_tokens"]
    assert rep["decode"]["max_logprob_diff"] < 1e-5


def test_kill_and_resume(two):
    _, out, rep = two
    assert rep["resume"]["checkpoints_at_crash"] == ["step_0000002"]
    man = json.load(open(out / "resumed" / "checkpoints" / "step_0000004" / "manifest.json"))
    assert man["layout"] == "sharded" and any(n.endswith(".distcp") for n in man["files"])
    untimed = lambda rows: [{k: v for k, v in r.items() if "time" not in k and k != "tokens_per_s"} for r in rows]  # noqa: E731
    assert untimed(metrics(out / "resumed")) == untimed(metrics(out / "resume_ref"))
    wa, wb = weights(out / "resume_ref"), weights(out / "resumed")
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _plain_logps(model, ids, am, lm):
    logits = model(input_ids=ids, attention_mask=am).logits[:, :-1].float()
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    out = torch.zeros(ids.shape)
    out[:, 1:] = lp * lm[:, 1:]
    return out


def test_consolidated_model_loads_plainly(two):
    from transformers import AutoModelForCausalLM

    _, out, rep = two
    ids, am, lm = probe_batch()
    full = AutoModelForCausalLM.from_pretrained(out / "dpo_full" / "model")
    with torch.no_grad():
        torch.testing.assert_close(_plain_logps(full, ids, am, lm), torch.tensor(rep["dpo_full"]["logps"]), rtol=0, atol=1e-5)
    from peft import PeftModel

    from prefopt.core.config import ModelConfig
    from prefopt.models.load import build_random

    cfg = json.load(open(out / "dpo_full" / "model" / "config.json"))
    arch = {k: cfg[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                "num_key_value_heads", "tie_word_embeddings")}
    # The LoRA run's base is the random model.arch initialization (seed 0): rebuilt, then the adapter.
    base = build_random(ModelConfig(arch={"model_type": "llama", **arch}), vocab_size=cfg["vocab_size"], seed=0)
    lora = PeftModel.from_pretrained(base, out / "dpo_lora" / "model")
    with torch.no_grad():
        torch.testing.assert_close(_plain_logps(lora, ids, am, lm), torch.tensor(rep["dpo_lora"]["logps"]), rtol=0, atol=1e-5)
