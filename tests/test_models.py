"""Models: families from config and their presets, LoRA reference, QLoRA (one step, and whole runs
through the app), saved artifacts load without prefopt."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import TINY, compose, synthetic_examples, tiny_model
from prefopt.run import train as run
from prefopt.core.config import LoraConfig, ModelConfig
from prefopt.data.tokenize import collate
from prefopt.models.logprobs import Scorer, token_stats
from prefopt.models.load import AdapterDisabledReference, load_policy, make_reference, save_model

FAMILIES = {
    "llama": dict(model_type="llama"),
    "qwen2": dict(model_type="qwen2"),
    "mistral": dict(model_type="mistral"),
    "gemma2": dict(model_type="gemma2", head_dim=8, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                   query_pre_attn_scalar=8, sliding_window=16),
}


def batch(kind="paired", n=4):
    return collate(synthetic_examples(kind, n=n), kind, 0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_trains_through_the_fused_path(family):
    arch = {**TINY, **FAMILIES[family]}
    cfg = ModelConfig(arch=arch, attn_implementation="eager" if family == "gemma2" else "sdpa")
    model = load_policy(cfg, vocab_size=50, seed=0)
    b = batch("demonstrations")
    st = token_stats(model, b["input_ids"], b["attention_mask"], b["loss_mask"])
    # Same numbers as the model's own logits (softcapping included for Gemma 2).
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, b["input_ids"][:, 1:, None]).squeeze(-1)
    m = b["loss_mask"][:, 1:]
    torch.testing.assert_close(st.logps[:, 1:][m], lp[m], rtol=1e-5, atol=1e-5)
    (-st.logps.sum()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_lora_reference_is_the_adapter_disabled_base():
    base = tiny_model(seed=3)
    b = batch()
    base_lp = token_stats(base, b["chosen_input_ids"], b["chosen_attention_mask"], b["chosen_loss_mask"]).logps
    policy = load_policy(ModelConfig(arch=dict(TINY), lora=LoraConfig(r=4, alpha=8)), vocab_size=50, seed=3)
    ref = make_reference(policy, ModelConfig(arch=dict(TINY), lora=LoraConfig(r=4)), vocab_size=50, seed=3)
    assert isinstance(ref, AdapterDisabledReference) and ref.model is policy  # no second copy
    # Move the adapters away from their zero init so policy != base.
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        st = token_stats(policy, b["chosen_input_ids"], b["chosen_attention_mask"], b["chosen_loss_mask"])
        (-st.logps.sum()).backward()
        opt.step()
        opt.zero_grad()
    sc = Scorer(policy, ref)
    pol_lp = sc.logps(b, "chosen").logps
    ref_lp = sc.ref_logps(b, "chosen").logps
    torch.testing.assert_close(ref_lp, base_lp.detach(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(pol_lp, ref_lp, atol=1e-3)
    assert policy.training  # the reference pass leaves the policy's mode alone


def test_qlora_training_step_runs(tmp_path):
    # bitsandbytes quantizes in blocks of 64 along the input dimension: widths must be multiples of 64.
    cfg = ModelConfig(arch={**TINY, "hidden_size": 64, "intermediate_size": 128}, load_in_4bit=True,
                      lora=LoraConfig(r=4, alpha=8))
    policy = load_policy(cfg, vocab_size=50, seed=0)
    assert any("4bit" in type(m).__name__ for m in policy.modules())
    trainable = [p for p in policy.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    b = batch()
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    before = [p.detach().clone() for p in trainable]
    st = token_stats(policy, b["chosen_input_ids"], b["chosen_attention_mask"], b["chosen_loss_mask"])
    (-st.logps.sum()).backward()
    opt.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, trainable))
    ref = make_reference(policy, cfg, vocab_size=50)
    assert isinstance(ref, AdapterDisabledReference)
    assert torch.isfinite(Scorer(policy, ref).ref_logps(b, "chosen").logps).all()


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


LOAD_SCRIPT = r"""
import sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
path, kind = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(path)
if kind == "lora":
    from peft import AutoPeftModelForCausalLM
    m = AutoPeftModelForCausalLM.from_pretrained(path)
else:
    m = AutoModelForCausalLM.from_pretrained(path)
ids = torch.tensor([[5, 6, 7, 8]])
print(repr(m(ids).logits[0, -1, :5].tolist()))
assert "prefopt" not in sys.modules
"""


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_saved_model_loads_with_plain_transformers_and_peft(tmp_path, kind):
    from prefopt.testbed.world import load_tokenizer

    tok = load_tokenizer()
    lora = LoraConfig(r=4, alpha=8) if kind == "lora" else LoraConfig()
    if kind == "lora":
        # peft's AutoPeftModel loads the base from the adapter config's path: save a base first.
        base = load_policy(ModelConfig(arch=dict(TINY)), vocab_size=len(tok), seed=0)
        base.save_pretrained(tmp_path / "base")
        policy = load_policy(ModelConfig(lora=lora), path=str(tmp_path / "base"))
        with torch.no_grad():
            for n, p in policy.named_parameters():
                if "lora_B" in n:
                    p.normal_()
    else:
        policy = load_policy(ModelConfig(arch=dict(TINY)), vocab_size=len(tok), seed=0)
    save_model(policy, tok, str(tmp_path / "model"))
    policy.eval()
    expect = policy(torch.tensor([[5, 6, 7, 8]])).logits[0, -1, :5].tolist()
    out = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(tmp_path / "model"), kind], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = eval(out.stdout.strip().splitlines()[-1])
    assert got == pytest.approx(expect, abs=1e-5)
