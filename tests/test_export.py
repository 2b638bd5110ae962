"""GGUF out (prefopt.models.gguf_write, prefopt-export): round trips through transformers' GGUF
loader, the LoRA GGUF against the merged model, the command on a finished run, and llama.cpp's
greedy tokens where llama-cpp-python is installed.

Tolerances (max |Δ logit| between the written file read back by transformers and the model it was
written from, relative to the largest |logit|): f32 1e-6 (the same float32 weights: only the q/k
permutation and its inverse stand between them; a merged LoRA adds float rounding of W + s·BA),
f16 5e-3 (float16 weights, ~2^-11 relative each), q8_0 5e-2 (8-bit blocks, up to max|block|/254 per
weight). Measured here: f32 0 (4e-7 merged LoRA), f16 2e-4 to 6e-4, q8_0 5e-3 to 9e-3."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from gguf_files import bpe_tokenizer, tiny_llama, write_gguf
from short_runs import ENV, refused, run_in_process
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefopt.cli.export import main as export_main
from prefopt.core.errors import UserError
from prefopt.models.gguf_write import permute_rows, write_lora, write_model

RELATIVE_TOLERANCE = {"f32": 1e-6, "f16": 5e-3, "bf16": 3e-2, "q8_0": 5e-2}  # bf16: 8 mantissa bits
IDS = torch.tensor([[5, 17, 33, 120, 7, 9, 250, 3, 41, 77]])
LLAMACPP = "llama-cpp-python is not installed; install it with: pip install -e \".[llamacpp]\""


def _gguf():
    import gguf

    return gguf


def llama(tok, tied: bool, seed: int = 0):
    m = tiny_llama(len(tok), seed=seed)
    if not tied:
        m.config.tie_word_embeddings = False
        m = type(m)(m.config).eval()
    return m


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def read_back(path):
    return AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                dtype=torch.float32).eval()


def tensors(path) -> dict:
    """GGUF name -> (ggml type name, ne, float32 array in numpy (out, in) order)."""
    gguf = _gguf()
    return {t.name: (t.tensor_type.name, [int(x) for x in t.shape],
                     gguf.quants.dequantize(np.array(t.data), t.tensor_type).reshape([int(x) for x in t.shape][::-1]))
            for t in gguf.GGUFReader(path).tensors}


def close(a, b, ftype):
    rel = (a - b).abs().max().item() / b.abs().max().item()
    assert rel <= RELATIVE_TOLERANCE[ftype], f"{ftype}: max |Δ logit| / max |logit| = {rel:.3g}"
    return rel


@pytest.fixture(scope="module")
def tok():
    return bpe_tokenizer()


def lora_model(tok, seed=1, **kw):
    from peft import LoraConfig, get_peft_model

    pm = get_peft_model(llama(tok, tied=False), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", **kw))
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # nonzero: the adapter changes the model
    return pm.eval()


# ---- the writer ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("ftype", ["f32", "f16", "bf16", "q8_0"])
def test_a_written_gguf_reads_back_with_the_same_logits(tmp_path, tok, ftype, tied):
    m = llama(tok, tied)
    path = write_model(m, tok, str(tmp_path / f"m.{ftype}.gguf"), ftype)
    close(logits(read_back(path)), logits(m), ftype)
    t = tensors(path)
    assert ("output.weight" in t) == (not tied)
    assert t["blk.0.attn_q.weight"][1] == [32, 32] and t["blk.0.attn_k.weight"][1] == [32, 16]
    assert t["blk.1.ffn_norm.weight"][0] == "F32" and t["output_norm.weight"][0] == "F32"
    assert t["blk.1.ffn_down.weight"][0] == {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}[ftype]
    f = _gguf().GGUFReader(path).fields
    assert bytes(f["general.architecture"].parts[-1]).decode() == "llama"
    assert int(f["general.file_type"].parts[-1][0]) == {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}[ftype]
    for key, want in (("llama.block_count", 2), ("llama.attention.head_count_kv", 2), ("llama.rope.dimension_count", 8),
                      ("llama.vocab_size", len(tok)), ("llama.feed_forward_length", 64)):
        assert int(f[key].parts[-1][0]) == want, key


def test_q_and_k_rows_are_permuted_as_llama_cpp_does_and_q8_0_stays_within_its_block_bound(tmp_path, tok):
    m = llama(tok, tied=True)
    sd = {k: v.numpy() for k, v in m.state_dict().items()}
    t32 = tensors(write_model(m, tok, str(tmp_path / "m.f32.gguf"), "f32"))
    q = sd["model.layers.0.self_attn.q_proj.weight"]
    k = sd["model.layers.0.self_attn.k_proj.weight"]
    # llama.cpp's rotary pairs (2i, 2i+1) of head h are HF's (i, i + head_dim/2)
    assert np.array_equal(t32["blk.0.attn_q.weight"][2][1], q[4])
    assert np.array_equal(t32["blk.0.attn_k.weight"][2][8 + 1], k[8 + 4])
    assert np.array_equal(t32["blk.0.attn_q.weight"][2], permute_rows(q, 4))
    assert np.array_equal(t32["blk.0.attn_k.weight"][2], permute_rows(k, 2))
    assert np.array_equal(t32["blk.0.attn_v.weight"][2], sd["model.layers.0.self_attn.v_proj.weight"])
    t8 = tensors(write_model(m, tok, str(tmp_path / "m.q8_0.gguf"), "q8_0"))
    for name in ("blk.0.ffn_up.weight", "token_embd.weight"):
        x, y = t32[name][2], t8[name][2]
        block_max = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True)
        # |x - d·round(x/d)| <= d/2, d = max|block|/127, plus d's float16 rounding times |q| <= 127
        assert (np.abs(x - y).reshape(-1, 32) <= 0.57 * block_max / 127 + 1e-12).all(), name


def test_a_lora_model_is_exported_merged_and_left_untouched(tmp_path, tok):
    pm = lora_model(tok)
    before = {k: v.clone() for k, v in pm.state_dict().items()}
    merged = logits(pm)
    with pm.disable_adapter():
        base = logits(pm)
    assert (merged - base).abs().max().item() > 1e-2  # the adapter matters
    close(logits(read_back(write_model(pm, tok, str(tmp_path / "merged.gguf"), "f32"))), merged, "f32")
    close(logits(read_back(write_model(pm, tok, str(tmp_path / "base.gguf"), "f32", merge_lora=False))), base, "f32")
    after = pm.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("alpha", [None, 1.0])
def test_the_lora_gguf_applied_to_the_written_base_is_the_merged_model(tmp_path, tok, alpha):
    pm = lora_model(tok)
    base = tensors(write_model(pm, tok, str(tmp_path / "base.gguf"), "f32", merge_lora=False))
    merged = tensors(write_model(pm, tok, str(tmp_path / "merged.gguf"), "f32"))
    path = write_lora(pm, str(tmp_path / "a.lora.gguf"), alpha=alpha)
    f = _gguf().GGUFReader(path).fields
    assert bytes(f["general.type"].parts[-1]).decode() == "adapter"
    assert bytes(f["adapter.type"].parts[-1]).decode() == "lora"
    written_alpha = float(f["adapter.lora.alpha"].parts[-1][0])
    assert written_alpha == (8.0 if alpha is None else alpha)
    lora = tensors(path)
    assert len(lora) == 2 * 7 * 2  # a and b of 7 linear layers in 2 blocks
    q = pm.base_model.model.model.layers[1].self_attn.q_proj
    a, b = lora["blk.1.attn_q.weight.lora_a"], lora["blk.1.attn_q.weight.lora_b"]
    assert a[1] == [32, 4] and b[1] == [4, 32]  # ne: lora_a [in, r], lora_b [r, out], as llama.cpp checks
    scale = 8.0 / written_alpha  # peft's alpha / written alpha, folded into lora_b
    assert np.array_equal(a[2], q.lora_A["default"].weight.detach().numpy())
    assert np.allclose(b[2], scale * permute_rows(q.lora_B["default"].weight.detach().numpy(), 4), rtol=1e-6, atol=0)
    worst = 0.0
    for name, (_, _, w) in merged.items():
        if name + ".lora_a" in lora:
            la, lb = lora[name + ".lora_a"][2], lora[name + ".lora_b"][2]
            applied = base[name][2] + written_alpha / la.shape[0] * lb @ la  # what llama.cpp computes
            worst = max(worst, float(np.abs(applied - w).max()))
        else:
            assert np.array_equal(base[name][2], w), name
    assert worst < 1e-5, worst
    # without the permutation of lora_b the adapter would be wrong by far more than float error
    raw_b = scale * q.lora_B["default"].weight.detach().numpy()
    unpermuted = base["blk.1.attn_q.weight"][2] + written_alpha / 4 * raw_b @ a[2]
    assert np.abs(unpermuted - merged["blk.1.attn_q.weight"][2]).max() > 100 * max(worst, 1e-7)


def test_the_tokenizer_is_copied_from_the_source_gguf_or_built_from_the_hf_tokenizer(tmp_path, tok):
    gguf = _gguf()
    m = llama(tok, tied=True)
    src = str(tmp_path / "src.gguf")
    write_gguf(src, m, tok, chat_template="{{ 'source template' }}")
    copied = write_model(m, tok, str(tmp_path / "copied.gguf"), "f16", source_gguf=src)

    def keys(path):
        f = gguf.GGUFReader(path).fields
        return {k: (v.types, [bytes(v.parts[i]) for i in v.data]) for k, v in f.items() if k.startswith("tokenizer.")}

    assert keys(copied) == keys(src) and len(keys(src)) >= 8
    built = write_model(m, tok, str(tmp_path / "built.gguf"), "f16")
    back = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="built.gguf")
    text = "What is 7+5? The answer is 12. <|im_start|>user"
    assert back(text)["input_ids"] == tok(text)["input_ids"]
    assert back.chat_template == tok.chat_template
    f = gguf.GGUFReader(built).fields
    assert bytes(f["tokenizer.ggml.model"].parts[-1]).decode() == "gpt2"
    assert bytes(f["tokenizer.ggml.pre"].parts[-1]).decode() == "default"
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert types[im_end] == gguf.TokenType.CONTROL and types[100] == gguf.TokenType.NORMAL
    assert int(f["tokenizer.ggml.eos_token_id"].parts[-1][0]) == im_end


def test_unsupported_models_and_adapters_are_refused_in_one_line(tmp_path, tok):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok)))
    head_lora = get_peft_model(llama(tok, False), LoraConfig(r=2, target_modules=["lm_head"]))
    for call, needle in ((lambda: write_model(gpt2, tok, str(tmp_path / "g.gguf")), "accepted: llama"),
                         (lambda: write_model(llama(tok, True), tok, str(tmp_path / "x.gguf"), "q4_0"),
                          "accepted: f32, f16, bf16, q8_0"),
                         (lambda: write_lora(llama(tok, True), str(tmp_path / "x.lora.gguf")), "peft LoRA model"),
                         (lambda: write_lora(head_lora, str(tmp_path / "h.lora.gguf")), "accepted target modules")):
        with pytest.raises(UserError) as e:
            call()
        assert needle in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []  # nothing half-written is left


# ---- prefopt-export on a finished run ------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A finished one-step DPO run of the testbed's policy with LoRA (model/ holds the adapter)."""
    out = tmp_path_factory.mktemp("run") / "run"
    run_in_process(out, "model.lora.r=4", "trainer.max_steps=1")
    return str(out)


def run_policy(run):
    import json

    from peft import PeftModel

    with open(os.path.join(run, "model", "adapter_config.json")) as f:
        base = json.load(f)["base_model_name_or_path"]
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                     os.path.join(run, "model")).eval()


def test_prefopt_export_writes_the_runs_policy_merged_or_separate(lora_run, tmp_path, capsys):
    policy = run_policy(lora_run)
    ids = torch.tensor([[4, 20, 31, 5, 12, 9]])  # testbed ids: <|user|> words <|assistant|> ...
    want = logits(policy, ids)
    out = str(tmp_path / "policy.gguf")
    assert export_main([lora_run, f"out={out}"]) is None
    assert f"→ {out}" in capsys.readouterr().out
    close(logits(read_back(out), ids), want, "f16")
    fields = _gguf().GGUFReader(out).fields  # the testbed's word-level vocabulary: tokens and one inert merge
    assert len(fields["tokenizer.ggml.merges"].data) == 1
    assert len(fields["tokenizer.ggml.tokens"].data) == want.shape[-1]
    sep = str(tmp_path / "sep.gguf")
    assert export_main([lora_run, f"out={sep}", "type=f32", "lora=separate"]) is None
    assert os.path.isfile(str(tmp_path / "sep.lora.gguf"))
    with policy.disable_adapter():
        close(logits(read_back(sep), ids), logits(policy, ids), "f32")
    lora = tensors(str(tmp_path / "sep.lora.gguf"))
    assert any(np.abs(b[2]).max() > 0 for n, b in lora.items() if n.endswith(".lora_b"))  # a trained adapter


def test_prefopt_export_copies_the_tokenizer_of_the_gguf_the_runs_base_came_from(tmp_path, tok, capsys):
    from peft import LoraConfig, get_peft_model

    from prefopt.core.config import ModelConfig
    from prefopt.models import gguf as gguf_in

    src = str(tmp_path / "base.gguf")
    write_gguf(src, llama(tok, tied=True, seed=5), tok, chat_template="{{ 'the source template' }}")
    # the cached HF directory a run with model.name_or_path=FILE.gguf trains from
    base_dir = gguf_in.checkpoint_dir(ModelConfig(name_or_path=src))
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), LoraConfig(r=2, target_modules="all-linear"))
    pm.save_pretrained(tmp_path / "run" / "model")
    tok.save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / ".hydra").mkdir()
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text(f"model:\n  name_or_path: {src}\n")
    out = str(tmp_path / "out.gguf")
    assert export_main([str(tmp_path / "run"), f"out={out}"]) is None
    assert f"tokenizer and chat template from {src}" in capsys.readouterr().out
    fields = _gguf().GGUFReader(out).fields
    assert bytes(fields["tokenizer.chat_template"].parts[-1]).decode() == "{{ 'the source template' }}"


def _refused(capsys, args, *needles) -> str:
    return refused(capsys, export_main, "prefopt-export", args, *needles)


def test_bad_input_is_one_line(lora_run, tmp_path, capsys, tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    out = f"out={tmp_path / 'x.gguf'}"
    (tmp_path / "empty").mkdir()
    gpt2_run = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=len(tok))).save_pretrained(gpt2_run / "model")
    full_run = tmp_path / "full"
    llama(tok, True).save_pretrained(full_run / "model")
    tok.save_pretrained(full_run / "model")
    no_tokenizer_run = tmp_path / "no_tokenizer"
    llama(tok, True).save_pretrained(no_tokenizer_run / "model")
    (tmp_path / "exists.gguf").write_text("")
    _refused(capsys, [str(tmp_path / "nope"), out], "does not exist", "accepted: a finished run directory")
    _refused(capsys, [str(tmp_path / "empty"), out], "has no model/", "accepted")
    _refused(capsys, [lora_run, out, "type=q4_0"], "type=q4_0", "accepted: f32, f16, bf16, q8_0")
    _refused(capsys, [lora_run, out, "lora=both"], "accepted: merge, separate")
    _refused(capsys, [lora_run], "out=FILE.gguf is required")
    _refused(capsys, [lora_run, "out=x.bin"], "ending in .gguf")
    _refused(capsys, [lora_run, out, "typo=1"], "unknown option typo", "accepted: out, type, lora")
    _refused(capsys, [str(gpt2_run), out], "model type 'gpt2' is not supported", "accepted: llama")
    _refused(capsys, [str(full_run), out, "lora=separate"], "full model", "accepted: lora=merge")
    _refused(capsys, [str(no_tokenizer_run), out], "no loadable tokenizer", "accepted")
    _refused(capsys, [lora_run, f"out={tmp_path / 'exists.gguf'}"], "exists", "overwrite=true")
    assert sorted(os.listdir(tmp_path)) == ["empty", "exists.gguf", "full", "gpt2", "no_tokenizer"]
    assert export_main(["--help"]) is None and "prefopt-export RUN out=FILE.gguf" in capsys.readouterr().out


def test_the_module_runs_from_the_command_line_and_refuses_without_a_traceback(tmp_path):
    cmd = [sys.executable, "-m", "prefopt.cli.export", str(tmp_path / "nope"), f"out={tmp_path / 'x.gguf'}"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert [line for line in p.stderr.splitlines() if line.strip()] == [
        f"prefopt-export: error: RUN '{tmp_path / 'nope'}' does not exist; accepted: a finished run directory "
        "(with model/ and .hydra/config.yaml)"]


# ---- llama.cpp -----------------------------------------------------------------------------------


def llamacpp_greedy(path, prompts, new_tokens):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    answers = []
    for prompt in prompts:
        llm.reset()
        llm.eval(list(prompt))
        out = []
        for _ in range(new_tokens):
            nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            out.append(nxt)
            llm.eval([nxt])
        answers.append(out)
    return answers


def torch_greedy(model, prompts, new_tokens):
    answers = []
    for prompt in prompts:
        ids = list(prompt)
        for _ in range(new_tokens):
            ids.append(int(logits(model, torch.tensor([ids]))[0, -1].argmax()))
        answers.append(ids[len(prompt):])
    return answers


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason=LLAMACPP)
def test_llama_cpp_gives_the_same_greedy_tokens_as_transformers(tmp_path, tok):
    m = llama(tok, tied=False, seed=3)
    with torch.no_grad():
        m.lm_head.weight.mul_(30)  # wide margins between the top two logits: f16 cannot flip a greedy choice
    path = write_model(m, tok, str(tmp_path / "m.f16.gguf"), "f16")
    prompts = [[5, 17, 33], [120, 7, 9, 250, 3], [41], [200, 201, 202, 203]]
    assert llamacpp_greedy(path, prompts, 8) == torch_greedy(m, prompts, 8)


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason=LLAMACPP)
def test_llama_cpp_gives_the_trained_runs_greedy_answers(lora_run, tmp_path):
    out = str(tmp_path / "policy.gguf")
    assert export_main([lora_run, f"out={out}"]) is None
    tok = AutoTokenizer.from_pretrained(os.path.join(lora_run, "model"))
    prompts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
               for p in ("the movie was", "i think the plot", "this film")]
    prompts = [p["input_ids"] if hasattr(p, "keys") else p for p in prompts]  # a BatchEncoding in transformers 5
    assert llamacpp_greedy(out, prompts, 8) == torch_greedy(run_policy(lora_run), prompts, 8)
