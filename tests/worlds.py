"""A small world for tests that compare prefopt with TRL on the same weights and batch: a word-level
tokenizer, a Llama model built from a config, and synthetic preference rows in TRL's columns."""

from __future__ import annotations

import random

ARCH = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            max_position_embeddings=256, tie_word_embeddings=False, rms_norm_eps=1e-6)


def words(n: int = 300, seed: int = 0) -> list:
    """``n`` distinct consonant-vowel-consonant words."""
    cons, vows = "bcdfghjklmnprstvwz", "aeiou"
    every = [a + b + c for a in cons for b in vows for c in cons]
    return sorted(random.Random(seed).sample(every, n))


def pair_world(n_rows: int = 32, seed: int = 0):
    """(tokenizer, model, rows): prompts of 8–24 words, chosen and rejected completions of 16–48 words,
    each completion starting with a space, as TRL concatenates prompt and completion."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.testbed.tokenizer import build_tokenizer

    vocab = words()
    tok = build_tokenizer(vocab)
    cfg = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, **ARCH)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float()
    rng = random.Random(seed)
    say = lambda lo, hi: " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    rows = [{"prompt": say(8, 24), "chosen": " " + say(16, 48), "rejected": " " + say(16, 48)} for _ in range(n_rows)]
    return tok, model, rows


def perturb(model, seed: int = 1, std: float = 0.02):
    """Move the policy away from its copy, the reference, so that a first-step DPO loss is not log 2."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model
