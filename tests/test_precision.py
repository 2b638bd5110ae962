"""model.dtype=auto: the rule of prefopt.models.precision, and what a loaded LoRA policy holds under it."""

import pytest
import torch

from prefopt.core.config import LoraConfig, ModelConfig
from prefopt.models import precision
from prefopt.models.load import load_policy

ARCH = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64)


def _native(monkeypatch, ok: bool):
    monkeypatch.setattr(precision, "native_bf16_cpu", lambda: (ok, "AVX512_BF16" if ok else "torch dispatches AVX2 kernels"))


@pytest.mark.parametrize("native,lora,bits4,expect", [
    (True, 16, False, "bfloat16"),
    (True, 0, False, "float32"),  # full fine-tuning keeps fp32 weights and moments
    (True, 16, True, "float32"),  # 4-bit computes in bnb_4bit_compute_dtype
    (False, 16, False, "float32"),  # bf16 would be emulated
])
def test_auto_rule(monkeypatch, native, lora, bits4, expect):
    _native(monkeypatch, native)
    cfg = ModelConfig(dtype="auto", load_in_4bit=bits4, lora=LoraConfig(r=lora))
    p = precision.resolve(cfg)
    assert p.dtype == expect and p.reason.startswith("model.dtype=auto → " + expect) and not p.slow


def test_forced_bf16_without_native_support_is_kept_and_flagged_slow(monkeypatch):
    _native(monkeypatch, False)
    p = precision.resolve(ModelConfig(dtype="bfloat16", lora=LoraConfig(r=8)))
    assert p.dtype == "bfloat16" and p.slow and "slower than float32" in p.reason
    _native(monkeypatch, True)
    assert not precision.resolve(ModelConfig(dtype="bfloat16")).slow


def test_forced_avx2_kernels_are_not_native(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    ok, why = precision.native_bf16_cpu()
    assert not ok and "AVX2" in why


def test_auto_lora_policy_has_bf16_base_and_fp32_adapters(monkeypatch):
    _native(monkeypatch, True)
    cfg = ModelConfig(dtype="auto", arch=dict(ARCH), lora=LoraConfig(r=4, alpha=8))
    policy = load_policy(cfg, vocab_size=64)
    trainable = {p.dtype for p in policy.parameters() if p.requires_grad}
    frozen = {p.dtype for n, p in policy.named_parameters() if not p.requires_grad and "proj" in n}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}
    ids = torch.randint(0, 64, (2, 7))
    loss = policy(input_ids=ids).logits.float().logsumexp(-1).mean()
    loss.backward()  # gradients reach the fp32 adapters through the bf16 base
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in policy.parameters() if p.requires_grad)
