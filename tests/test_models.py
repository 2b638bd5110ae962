"""Models: families from config, LoRA reference, QLoRA, saved artifacts load without prefopt."""

import subprocess
import sys

import pytest
import torch

from conftest import TINY, synthetic_examples, tiny_model
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
