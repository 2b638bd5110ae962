"""GGUF out: a Llama-family causal LM (and its LoRA adapter) as files llama.cpp loads.

    write_model(model, tokenizer, "policy.gguf", "f16")       # the base, LoRA merged (a copy; model is untouched)
    write_lora(model, "policy.lora.gguf")                     # the active LoRA adapter alone (llama.cpp --lora)

The format facts, and the rule each choice follows:

- **Architecture.** ``general.architecture=llama`` and the ``llama.*`` hyperparameters llama.cpp
  reads: context_length, embedding_length, block_count, feed_forward_length,
  attention.head_count(_kv), attention.layer_norm_rms_epsilon, rope.freq_base, rope.dimension_count
  (the head dimension; key_length / value_length as well when it is not hidden / heads) and
  vocab_size. Accepted: transformers' ``model_type`` ``llama`` (SmolLM2, the testbed's policy) without
  biases and without rope scaling other than linear; anything else is one UserError line.
- **Tensors** carry llama.cpp's names (``gguf``'s own name map): token_embd, blk.N.attn_q / attn_k /
  attn_v / attn_output, ffn_gate / ffn_up / ffn_down, attn_norm, ffn_norm, output_norm, and
  ``output`` only when the embeddings are untied (a file without it is read as tied, by llama.cpp
  and by transformers alike). A numpy array of shape (out, in) is stored as ggml ne = [in, out].
- **q and k rows are permuted** into llama.cpp's rotary layout, as convert_hf_to_gguf.py's
  ``LlamaModel.permute`` does: rows reshaped (heads, 2, head_dim / 2, in), axes 1 and 2 swapped,
  reshaped back; q uses the attention heads, k the key-value heads. HF llama rotates the two halves
  of a head (rotate_half); llama.cpp's ``rope`` rotates adjacent pairs, so the same weights need
  their rows interleaved. transformers' GGUF loader applies the inverse when it reads the file.
- **Types** (``ftype``): ``f32``; ``f16`` (2-D tensors float16, 1-D ones — the norms — float32, as
  llama.cpp's converter keeps them); ``bf16`` (the same with bfloat16, round-to-nearest-even by
  ``gguf.quants``: what a CPU with native bf16 decodes fastest); ``q8_0`` (2-D tensors in Q8_0: blocks of 32 values along a row,
  one float16 scale d = max|x| / 127 and 32 int8 q = round(x / d), quantized by ``gguf.quants``
  which follows ggml's reference; a tensor whose rows are not a multiple of 32 falls back to F16,
  as the converter does; norms float32). ``general.file_type`` says which (0, 1, 32, 7).
- **LoRA.** A peft model is exported with its active adapters merged (W + scaling · B · A, peft's
  own ``get_delta_weight``), computed into new arrays: the caller's model is never changed.
  ``merge_lora=False`` writes the base weights alone (for ``write_lora``'s file beside it).
- **Tokenizer.** With ``source_gguf`` (the run's base came from a GGUF: prefopt.models.gguf's cache
  records the file in ``gguf_source.json``), every ``tokenizer.*`` key of that file is copied
  verbatim, the chat template included: that is what llama.cpp already tokenizes correctly.
  Otherwise the HF fast tokenizer is written the way convert_hf_to_gguf's ``_set_vocab_gpt2`` does:
  ``tokenizer.ggml.model=gpt2``, tokens in id order (ids without a token as ``[PADi]``, type
  unused), token types (control for special added tokens, user-defined for other added ones, normal
  else), the BPE merges, bos / eos / pad / unk ids, whether encoding adds bos / eos, and the chat
  template. ``tokenizer.ggml.pre`` (llama.cpp's pre-tokenizer regex, which the converter picks by
  hashing the tokenizer's output on a fixed text) is written as ``default``: this module knows no
  table of those hashes, so llama.cpp's own text tokenization of such a file may split text
  differently from the HF tokenizer; token ids in and out are exact. A tokenizer that is not BPE
  (the testbed's word-level one) is written with its tokens and one inert merge (llama.cpp refuses a
  gpt2 vocabulary without merges): llama.cpp runs the model on token ids (as prefopt's rollout engine
  does) but cannot tokenize text for it.
- **GGUF LoRA** (llama.cpp's convert_lora_to_gguf.py): ``general.type=adapter``,
  ``adapter.type=lora``, ``adapter.lora.alpha``, and per adapted weight ``<base name>.lora_a`` =
  peft's lora_A (r, in), stored ne = [in, r], and ``.lora_b`` = lora_B (out, r), ne = [r, out];
  llama.cpp adds (alpha / r) · b · a to the base weight. lora_b's rows of q and k get the base's
  permutation (lora_a's columns index the input, which is not permuted). ``alpha`` is written as
  given (default: peft's effective alpha, scaling · r, which covers rsLoRA); any module whose own
  scaling differs from alpha / r has its lora_b scaled by the ratio, so the file's delta equals
  peft's exactly. Tensors are F32: the adapter is small and is rewritten before every rollout.
- **Files** are written under a temporary name, fsynced and renamed (prefopt.core.files), so a
  reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Optional

import gguf
import numpy as np
import torch

from prefopt.core import files
from prefopt.core.errors import UserError, first_line
from prefopt.models.load import is_peft

ACCEPTED = "llama (LlamaForCausalLM, e.g. SmolLM2 or the testbed's policy)"
FTYPES = ("f32", "f16", "bf16", "q8_0")
# peft target module -> llama.cpp tensor name inside blk.N
LORA_TARGETS = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
Q8_0_BLOCK = 32


def check_config(config) -> None:
    """Refuse, in one line, a model this writer cannot write as a llama GGUF."""
    kind = getattr(config, "model_type", None)
    if kind != "llama":
        raise UserError(f"GGUF export: model type '{kind}' is not supported; accepted: {ACCEPTED}")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise UserError(f"GGUF export: {flag}=true is not supported; accepted: {ACCEPTED} without biases")
    rope = _rope(config)
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", "linear"):
        raise UserError(f"GGUF export: rope scaling '{rope.get('rope_type', rope.get('type'))}' is not supported; "
                        "accepted: no rope scaling, or linear")


def _rope(config) -> dict:
    return dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})


def _rope_theta(config) -> float:
    theta = getattr(config, "rope_theta", None)
    return float(theta if theta is not None else _rope(config).get("rope_theta", 10000.0))


def _head_dim(config) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's ``LlamaModel.permute`` (rows of q with the attention heads, of k with
    the key-value heads): HF's half-split rotary layout to llama.cpp's pairwise one."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _permuted(hf_name: str, w: np.ndarray, config) -> np.ndarray:
    if ".q_proj." in hf_name:
        return permute_rows(w, config.num_attention_heads)
    if ".k_proj." in hf_name:
        return permute_rows(w, config.num_key_value_heads)
    return w


# ---- weights -------------------------------------------------------------------------------------


def _lora_layers(base):
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in base.named_modules() if isinstance(m, LoraLayer)]


def plain_weights(model, merge_lora: bool = True) -> dict:
    """HF parameter name -> float32 tensor of the plain model: under peft the base weights, plus
    every active adapter's delta when ``merge_lora`` (into new tensors: ``model`` is only read)."""
    if not is_peft(model):
        return {k: _float(k, v) for k, v in model.state_dict().items()}
    base = model.get_base_model()
    out = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key or ".modules_to_save." in key and not merge_lora:
            continue
        if ".original_module." in key and merge_lora:
            continue  # a module peft trains whole: its trained copy is below
        name = key.replace(".base_layer.", ".").replace(".original_module.", ".")
        for adapter in model.active_adapters:
            name = name.replace(f".modules_to_save.{adapter}.", ".")
        if ".modules_to_save." in name:
            continue  # an inactive adapter's copy
        out[name] = _float(key, value)
    if merge_lora:
        with torch.no_grad():
            for name, layer in _lora_layers(base):
                if getattr(layer, "use_dora", {}) and any(layer.use_dora.get(a) for a in layer.active_adapters):
                    raise UserError(f"GGUF export: {name} is a DoRA layer; accepted: plain LoRA adapters")
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        out[name + ".weight"] = out[name + ".weight"] + layer.get_delta_weight(adapter).float().cpu()
    return out


def _float(name: str, t: torch.Tensor) -> torch.Tensor:
    if not t.is_floating_point():
        raise UserError(f"GGUF export: {name} holds quantized weights ({t.dtype}, e.g. a 4-bit base); accepted: float "
                        "weights (load the base in float32 and apply the adapter, as prefopt-export does)")
    return t.detach().float().cpu()


def _tensor_names(weights: dict, config) -> dict:
    """HF name -> GGUF name; ``output`` left out when tied; an unknown tensor is refused."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out = {}
    for hf in weights:
        if hf == "lm_head.weight" and tied:
            continue
        g = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if g is None:
            raise UserError(f"GGUF export: tensor {hf} has no llama.cpp name; accepted: {ACCEPTED}")
        out[hf] = g
    return out


def _encode(w: np.ndarray, ftype: str):
    """(array, raw ggml type or None) for the writer, by the module docstring's type rule."""
    if ftype == "f32" or w.ndim < 2:
        return w.astype(np.float32, copy=False), None
    if ftype == "q8_0" and w.shape[-1] % Q8_0_BLOCK == 0:
        return gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    if ftype == "bf16":
        return gguf.quants.quantize(w.astype(np.float32, copy=False), gguf.GGMLQuantizationType.BF16), \
            gguf.GGMLQuantizationType.BF16
    return w.astype(np.float16), None


# ---- tokenizer -----------------------------------------------------------------------------------


def _copy_tokenizer(writer, source_gguf: str, vocab_size: int) -> None:
    """Every tokenizer.* key of ``source_gguf``, with its GGUF types (strings as raw bytes)."""
    try:
        reader = gguf.GGUFReader(source_gguf)
    except Exception as e:  # noqa: BLE001 — any failure to parse is a damaged or foreign file
        raise UserError(f"GGUF export: source_gguf {source_gguf} is not readable ({first_line(e)}); accepted: the "
                        "GGUF file the run's base was read from") from None
    S, A = gguf.GGUFValueType.STRING, gguf.GGUFValueType.ARRAY
    copied = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        main = field.types[0]
        if main == A:
            sub = field.types[-1]
            value = [bytes(field.parts[i]) for i in field.data] if sub == S else \
                [field.parts[i][0].item() for i in field.data]
            if key == "tokenizer.ggml.tokens" and len(value) != vocab_size:
                raise UserError(f"GGUF export: {source_gguf} has {len(value)} tokens but the model's vocabulary has "
                                f"{vocab_size} rows; accepted: the GGUF file this model's base was read from")
            writer.add_key_value(key, value, A, sub_type=sub)
        else:
            value = bytes(field.parts[field.data[0]]) if main == S else field.parts[field.data[0]][0].item()
            writer.add_key_value(key, value, main)
        copied += 1
    if copied == 0:
        raise UserError(f"GGUF export: {source_gguf} has no tokenizer.* keys; accepted: a GGUF with its tokenizer")


def _hf_merges(tokenizer, tokens: list) -> list:
    import json

    model = json.loads(tokenizer.backend_tokenizer.to_str()).get("model", {})
    if model.get("type") == "BPE":
        return [" ".join(m) if isinstance(m, (list, tuple)) else m for m in model.get("merges", [])]
    # A vocabulary that is not BPE (word-level): llama.cpp refuses a gpt2 vocabulary without a merges
    # key, and gguf cannot write an empty array, so one merge of two multi-character tokens is written.
    # BPE starts from single characters and no other merge builds either token, so it never applies.
    pair = [t for t in tokens if len(t) > 1 and " " not in t][:2]
    if len(pair) < 2:
        raise UserError("GGUF export: the tokenizer is not BPE and has too few multi-character tokens to write; "
                        "accepted: a BPE tokenizer, or source_gguf=THE_BASE.gguf")
    return [" ".join(pair)]


def _write_hf_tokenizer(writer, tokenizer, vocab_size: int) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("GGUF export: the tokenizer is not a fast (tokenizers) tokenizer; accepted: a fast HF "
                        "tokenizer, or source_gguf=THE_BASE.gguf")
    vocab = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= vocab_size:
        raise UserError(f"GGUF export: the tokenizer has id {max(vocab.values())} but the model's vocabulary has "
                        f"{vocab_size} rows; accepted: a tokenizer whose ids fit the embedding")
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(_hf_merges(tokenizer, tokens))
    for kind in ("bos", "eos", "pad", "unk"):
        i = getattr(tokenizer, f"{kind}_token_id", None)
        if i is not None:
            writer.add_uint32(f"tokenizer.ggml.{kind}_token_id", int(i))
    ids = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id])
    writer.add_add_eos_token(tokenizer.eos_token_id is not None and ids[-1:] == [tokenizer.eos_token_id])
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        writer.add_chat_template([{"name": k, "template": v} for k, v in template.items()])
    elif template:
        writer.add_chat_template(template)


# ---- files ---------------------------------------------------------------------------------------


def _atomic_write(writer_factory, path: str) -> str:
    """Run ``writer_factory(tmp)`` (which writes a GGUFWriter to ``tmp``), then publish it as ``path``."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = files.tmp_path(path)
    # gguf's writer logs two INFO lines per file; an adapter is written before every rollout.
    log = logging.getLogger("gguf.gguf_writer")
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        writer = writer_factory(tmp)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        files.fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        log.setLevel(level)
    files.fsync_dir(os.path.dirname(path))
    return path


def write_model(model, tokenizer, path: str, ftype: str = "f16", *, source_gguf: Optional[str] = None,
                merge_lora: bool = True, name: Optional[str] = None) -> str:
    """``model`` (a llama causal LM, or a peft model around one) with ``tokenizer`` as a GGUF at
    ``path`` (see the module docstring for every rule); returns the absolute path."""
    if ftype not in FTYPES:
        raise UserError(f"GGUF export: type={ftype} is not known; accepted: {', '.join(FTYPES)}")
    if tokenizer is None and source_gguf is None:
        raise UserError("GGUF export: no tokenizer; accepted: the model's HF tokenizer, or source_gguf=THE_BASE.gguf")
    base = model.get_base_model() if is_peft(model) else model
    config = base.config
    check_config(config)
    weights = plain_weights(model, merge_lora)
    names = _tensor_names(weights, config)
    vocab_size = int(weights["model.embed_tokens.weight"].shape[0])
    head_dim = _head_dim(config)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "bf16": gguf.LlamaFileType.MOSTLY_BF16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[ftype]

    def build(tmp: str):
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name or os.path.splitext(os.path.basename(path))[0])
        w.add_context_length(int(config.max_position_embeddings))
        w.add_embedding_length(int(config.hidden_size))
        w.add_block_count(int(config.num_hidden_layers))
        w.add_feed_forward_length(int(config.intermediate_size))
        w.add_head_count(int(config.num_attention_heads))
        w.add_head_count_kv(int(config.num_key_value_heads))
        w.add_rope_freq_base(_rope_theta(config))
        w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        w.add_vocab_size(vocab_size)
        w.add_rope_dimension_count(head_dim)
        if head_dim * config.num_attention_heads != config.hidden_size:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        rope = _rope(config)
        if rope.get("rope_type", rope.get("type")) == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(rope["factor"]))
        w.add_file_type(file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if source_gguf is not None:
            _copy_tokenizer(w, source_gguf, vocab_size)
        else:
            _write_hf_tokenizer(w, tokenizer, vocab_size)
        for hf, g in names.items():
            data, raw = _encode(_permuted(hf, weights[hf].numpy(), config), ftype)
            w.add_tensor(g, data, raw_dtype=raw)
        return w

    return _atomic_write(build, path)


def _lora_config(model):
    if not is_peft(model):
        raise UserError("GGUF LoRA export: the model has no peft adapter; accepted: a peft LoRA model "
                        "(model.lora.r > 0)")
    active = list(model.active_adapters)
    if len(active) != 1:
        raise UserError(f"GGUF LoRA export: {len(active)} active adapters ({', '.join(active)}); accepted: exactly one")
    cfg = model.peft_config[active[0]]
    kind = getattr(cfg, "peft_type", None)
    kind = getattr(kind, "value", kind)
    if kind != "LORA":
        raise UserError(f"GGUF LoRA export: the adapter is {kind}; accepted: a LoRA adapter")
    if getattr(cfg, "use_dora", False):
        raise UserError("GGUF LoRA export: the adapter uses DoRA; accepted: a plain LoRA adapter")
    if getattr(cfg, "modules_to_save", None):
        raise UserError(f"GGUF LoRA export: the adapter trains whole modules ({', '.join(cfg.modules_to_save)}); "
                        "accepted: LoRA on linear layers only (export merged instead)")
    if getattr(cfg, "fan_in_fan_out", False) or getattr(cfg, "bias", "none") != "none":
        raise UserError("GGUF LoRA export: fan_in_fan_out or trained biases are not supported; accepted: a plain "
                        "LoRA adapter (bias='none')")
    return active[0], cfg


def write_lora(model, path: str, *, alpha: Optional[float] = None) -> str:
    """The active peft LoRA adapter of ``model`` as a llama.cpp GGUF LoRA at ``path`` (see the module
    docstring); returns the absolute path."""
    adapter, _ = _lora_config(model)
    base = model.get_base_model()
    config = base.config
    check_config(config)
    tensors = []
    scales = []
    with torch.no_grad():
        for name, layer in _lora_layers(base):
            if adapter not in layer.lora_A:
                continue
            parts = name.split(".")
            target = LORA_TARGETS.get(parts[-1])
            if target is None or "layers" not in parts:
                raise UserError(f"GGUF LoRA export: LoRA on {name} is not supported; accepted target modules: "
                                f"{', '.join(LORA_TARGETS)}")
            block = int(parts[parts.index("layers") + 1])
            a = layer.lora_A[adapter].weight.detach().float().cpu().numpy()
            b = layer.lora_B[adapter].weight.detach().float().cpu().numpy()
            scales.append(float(layer.scaling[adapter]) * a.shape[0])  # the alpha llama.cpp would need: scaling · r
            tensors.append((f"blk.{block}.{target}.weight", parts[-1], a, b))
    if not tensors:
        raise UserError("GGUF LoRA export: the adapter adapts no layer; accepted: LoRA on "
                        f"{', '.join(LORA_TARGETS)}")
    alpha = float(scales[0] if alpha is None else alpha)
    if not np.isfinite(alpha) or alpha <= 0:
        raise UserError(f"GGUF LoRA export: alpha={alpha}; accepted: a finite number > 0")

    def build(tmp: str):
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for (g, module, a, b), needed in zip(tensors, scales):
            if needed != alpha:
                b = b * np.float32(needed / alpha)  # llama.cpp applies alpha / r; peft applied this module's scaling
            if module == "q_proj":
                b = permute_rows(b, config.num_attention_heads)
            elif module == "k_proj":
                b = permute_rows(b, config.num_key_value_heads)
            w.add_tensor(g + ".lora_a", np.ascontiguousarray(a, dtype=np.float32))
            w.add_tensor(g + ".lora_b", np.ascontiguousarray(b, dtype=np.float32))
        return w

    return _atomic_write(build, path)
