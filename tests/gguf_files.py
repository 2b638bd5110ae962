"""Tiny GGUF checkpoints written by the tests themselves (with the ``gguf`` package), the way
llama.cpp's converter writes a Llama: llama.* metadata, a byte-level BPE tokenizer with its chat
template, and tensors under GGUF's names with the q/k rows permuted for llama.cpp's rotary layout.
The fast suite never needs the 98 MB SmolLM2 file."""

from __future__ import annotations

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXT = ["What is 7+5? The answer is 12.", "the movie was good and the plot was great", "user assistant system",
        "12 + 30 = 42, 9 * 3 = 27, 100 - 1 = 99", "Paris is the capital of France."] * 20


def bpe_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|im_start|>",
                                   pad_token="<|im_end|>", chat_template=CHATML)


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp stores q/k rows in its rotary order; transformers undoes this when it loads.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: str, model: LlamaForCausalLM, tok: PreTrainedTokenizerFast, architecture: str = "llama", *,
               drop: tuple = (), replace: dict | None = None, chat_template: str | None = None) -> None:
    """``model`` and ``tok`` as one GGUF file (F32 tensors). Damaged files for the bad-input tests:
    ``drop`` leaves out the GGUF tensors it names, ``replace`` writes its arrays under their GGUF
    names instead of the model's, ``chat_template`` replaces the tokenizer's."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor, get_gguf_hf_weights_map

    c = model.config
    w = gguf.GGUFWriter(path, architecture)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(c.rope_theta if hasattr(c, "rope_theta") else c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    vocab = tok.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in SPECIAL else gguf.TokenType.NORMAL for t in tokens])
    import json

    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(vocab["<|im_start|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|im_end|>"])
    w.add_chat_template(chat_template if chat_template is not None else tok.chat_template)
    names = {hf: g for g, hf in get_gguf_hf_weights_map(model, LlamaTensorProcessor(config=c.to_dict())).items()}
    for hf_name, t in model.state_dict().items():
        if hf_name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        a = t.detach().float().numpy().copy()
        if hf_name.endswith("q_proj.weight"):
            a = _permute(a, c.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            a = _permute(a, c.num_key_value_heads)
        if names[hf_name] in drop:
            continue
        w.add_tensor(names[hf_name], (replace or {}).get(names[hf_name], a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def save_tiny_chat_model(d: str, seed: int) -> str:
    """A tiny Llama and its chat tokenizer saved as an HF directory (a judge the tests can load)."""
    tok = bpe_tokenizer()
    tiny_llama(len(tok), seed=seed).save_pretrained(d)
    tok.save_pretrained(d)
    return d
