"""A tiny random Llama policy and word-level tokenizer whose turns end after a few tokens, so episodes have
several turns: shared by the episode tests (tests/test_episode_masks.py, tests/test_episode_eval.py)."""

import torch

WORDS = ["bab", "dod", "fif", "gug", "hah", "jej", "kik", "lol", "mum", "nan", "pop", "rer", "sis", "tut", "vov"]


def episodic_policy(words=WORDS):
    """(tokenizer, fp32 policy): every embedding shares a direction that the EOS row of the head reads, so
    p(EOS) ≈ 0.1–0.4 per token and a turn ends after a few tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from prefopt.testbed.tokenizer import build_tokenizer

    tok = build_tokenizer(list(words))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        u = torch.randn(cfg.hidden_size)
        model.model.embed_tokens.weight.add_(u)
        model.lm_head.weight[tok.eos_token_id] = 0.08 * u
    return tok, model
