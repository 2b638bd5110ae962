"""rollout.engine=llamacpp: a tiny Llama written to GGUF by prefopt, served by llama.cpp, against the
torch engine on the same weights: the same greedy tokens, sampled log-probs within float rounding of
the trainer's, a LoRA swapped in before a rollout changes the output as the adapter says; and the
one-line refusals (no extra, unsupported model), which need no llama.cpp."""

import importlib.util

import pytest
import torch
from gguf_files import bpe_tokenizer, tiny_llama

from prefopt.core.config import LoraConfig, ModelConfig
from prefopt.core.errors import UserError
from prefopt.models.logprobs import token_stats
from prefopt.rollout import engines
from prefopt.rollout.engine import RolloutConfig
from prefopt.rollout.sampler import HFSampler, SamplingConfig

HAVE = importlib.util.find_spec("llama_cpp") is not None
needs_llamacpp = pytest.mark.skipif(not HAVE, reason='llama.cpp is not installed (pip install -e ".[llamacpp]")')
LORA = ModelConfig(lora=LoraConfig(r=4, alpha=8))


def _policy(seed=0):
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    tok = bpe_tokenizer()
    base = tiny_llama(len(tok), seed=seed)
    return tok, get_peft_model(base, PeftLora(r=4, lora_alpha=8, target_modules="all-linear"))


def _engine(tok, policy, base_type="f32"):
    return engines.build_engine("llamacpp", RolloutConfig(engine="llamacpp", base_type=base_type), tokenizer=tok,
                                policy=policy, model_cfg=LORA)


def _prompts(tok):
    texts = ["What is 7+5?", "the movie was", "Paris is the capital"]
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def _randomize_lora(policy, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


@needs_llamacpp
@pytest.mark.parametrize("adapted", [False, True])
def test_greedy_tokens_equal_the_torch_engine(adapted):
    tok, policy = _policy()
    eng = _engine(tok, policy)
    if adapted:
        _randomize_lora(policy, 1)
    cfg = SamplingConfig(top_k=1, max_new_tokens=12, samples_per_prompt=2)
    eng.sync_weights(policy)
    ours = eng.sample(policy, _prompts(tok), cfg, seed=0)
    torch_ = HFSampler(tok.pad_token_id, tok.eos_token_id).sample(policy, _prompts(tok), cfg, seed=0)
    assert ours.completions == torch_.completions and ours.finished == torch_.finished


@needs_llamacpp
def test_sampled_logprobs_are_the_trainers_within_rounding_and_the_adapter_swaps():
    """F32 base and KV cache: |log μ − log π| below 1e-4 per token without an adapter (float32 rounding
    of two different kernels; measured ≤ 5e-5), below 2e-3 with a large random adapter (llama.cpp adds
    the LoRA product as two more float32 matmuls; measured ≤ 8e-4)."""
    tok, policy = _policy()
    eng = _engine(tok, policy)
    assert eng.mismatch[1] < 1e-4, eng.mismatch
    prompts = _prompts(tok)
    cfg = SamplingConfig(temperature=0.8, max_new_tokens=10, samples_per_prompt=3)
    for step in range(2):
        _randomize_lora(policy, 10 + step)  # a trainer step moved the adapter; the rollout must see it
        eng.sync_weights(policy)
        s = eng.sample(policy, prompts, cfg, seed=step, return_logprobs=True)
        assert len(s.completions) == 9 and all(len(c) == len(lp) for c, lp in zip(s.completions, s.logprobs))
        for i, (c, lp) in enumerate(zip(s.completions, s.logprobs)):
            p = prompts[i // 3]
            ids = torch.tensor([p + c])
            lm = torch.zeros_like(ids)
            lm[0, len(p):] = 1
            with torch.no_grad():
                ref = token_stats(policy, ids, torch.ones_like(ids), lm, temperature=0.8).logps[0, len(p):]
            torch.testing.assert_close(torch.tensor(lp), ref.float(), atol=2e-3, rtol=0)


@needs_llamacpp
def test_f16_base_mismatch_is_measured_and_small():
    tok, policy = _policy()
    eng = _engine(tok, policy, base_type="f16")
    mean, worst, n = eng.mismatch
    assert n > 5 and 0 < mean < 1e-2 and worst < 5e-2


def test_without_the_extra_the_engine_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(UserError, match=r'rollout.engine=llamacpp: llama.cpp is not installed; .*pip install -e "\.\[llamacpp\]"'):
        engines.check(RolloutConfig(engine="llamacpp"), LORA)
    assert engines.check(RolloutConfig(engine="auto"), LORA) == "torch"


@pytest.mark.parametrize("cfg,world,what", [
    (ModelConfig(), 1, "full fine-tuning"),
    (ModelConfig(load_in_4bit=True, lora=LoraConfig(r=4)), 1, "4-bit"),
    (LORA, 2, "serves one process"),
    (ModelConfig(arch={"model_type": "gemma2"}, lora=LoraConfig(r=4)), 1, "this one is gemma2"),
])
def test_unsupported_models_are_one_line(monkeypatch, cfg, world, what):
    from prefopt.rollout.llamacpp import LlamaCppEngine

    monkeypatch.setattr(LlamaCppEngine, "unavailable", classmethod(lambda cls: None))
    with pytest.raises(UserError, match=what):
        engines.check(RolloutConfig(engine="llamacpp"), cfg, world)
    assert engines.check(RolloutConfig(engine="auto"), cfg, world) == "torch"


def test_bad_rollout_keys_are_one_line():
    with pytest.raises(UserError, match="rollout.engine='vllm' is not known; accepted: auto, llamacpp, torch"):
        engines.check(RolloutConfig(engine="vllm"), LORA)
    with pytest.raises(UserError, match="rollout.base_type='q4'; accepted: auto, f16, bf16, f32"):
        engines.check(RolloutConfig(base_type="q4"), LORA)
