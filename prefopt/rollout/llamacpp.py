"""The ``llamacpp`` rollout engine: online methods' completions sampled by llama.cpp.

On a CPU, decoding is memory-bound at small batch and llama.cpp's kernels read the weights once per
step for every sequence of the batch; prefopt's torch loop pays framework overhead per layer and
token. The engine (``rollout.engine=llamacpp``; ``auto`` picks it where it is installed and serves the model):

- **Base weights**: written once, at start-up, from the trainer's own (dequantized) base as a GGUF
  (:mod:`prefopt.models.gguf_write`) of ``rollout.base_type``: ``auto`` is BF16 when the trainer's base
  is bf16 (``model.dtype=auto`` on a native-bf16 CPU: the copy is exact, and llama.cpp decodes it
  fastest there), else F16; ``f32`` (with an F32 KV cache) for agreement to float32 rounding. Rollout
  and trainer then compute the same function up to float rounding. ``rollout.base_file`` serves another file
  instead (a quantized Q4/Q8 GGUF of the same model: faster, further from the trainer). Either way
  the mismatch is measured at start-up on a teacher-forced sequence (mean and max |Δ log p| of its
  tokens against the trainer's policy) and printed.
- **LoRA**: before every rollout (:meth:`sync_weights`) the policy's current adapters are written as a
  GGUF LoRA and swapped in, without reloading the base. Full fine-tuning would re-export the whole
  model at every rollout and is refused, as are 4-bit bases and more than one process.
- **Batching**: every prompt × sample of a call decodes together, one KV stream per sequence; a
  prompt's tokens are decoded once, as its first sample's sequence, and their cells are copied to its
  other samples' (``llama_memory_seq_cp``), so the group shares its prefill; finished sequences drop out.
- **Sampling**: llama.cpp returns each live sequence's logits at every step; prefopt samples from them
  itself with the torch engine's law (temperature, then top-k, top-p; stop at EOS) and keeps the
  sampled tokens' log-probs under the temperature, which feed the importance-sampling correction
  (``algo.rollout_is``): they are the sampler's μ, not the trainer's π_old.
- **Threads**: ``rollout.threads`` (default: every core the process may use; rollouts and training take
  turns, so they do not compete. On 2 quiet cores two threads decoded 1.8–2.5× faster than one; on a
  machine shared with other jobs, ``rollout.threads=1`` can be faster).

Install: ``pip install -e ".[llamacpp]"`` (llama-cpp-python built from source with the machine's
compiler; see the README). Without it ``rollout.engine=llamacpp`` is one line with that command.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import tempfile
from typing import Optional

import numpy as np
import torch

from prefopt.core.config import ModelConfig
from prefopt.core.errors import UserError
from prefopt.rollout.engine import ENGINES, Engine, RolloutConfig
from prefopt.rollout.sampler import Samples, SamplingConfig, _draw, _filter_logits

INSTALL = 'pip install -e ".[llamacpp]"'
ARCHS = ("llama",)  # what prefopt's GGUF writer exports
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ: sequences of one context


def _model_type(cfg: ModelConfig) -> Optional[str]:
    """The architecture ``cfg`` names, read without loading weights (None: the testbed's tiny Llama)."""
    if cfg.arch is not None:
        return dict(cfg.arch).get("model_type")
    from prefopt.models import gguf

    src = gguf.source_file(cfg)
    if src is not None:
        from gguf import GGUFReader

        field = GGUFReader(src).fields.get("general.architecture")
        return bytes(field.parts[field.data[0]]).decode() if field is not None else None
    if cfg.name_or_path:
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(cfg.name_or_path, trust_remote_code=cfg.trust_remote_code).model_type
        except (OSError, ValueError):
            return None
    return "llama"


_LOG_CALLBACK = None


def _quiet(llama_cpp) -> None:
    """llama.cpp logs every load to stderr; a run's output is prefopt's."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


@ENGINES.register("llamacpp")
class LlamaCppEngine(Engine):
    """See the module docstring."""

    @classmethod
    def unavailable(cls) -> Optional[str]:
        if importlib.util.find_spec("llama_cpp") is None:
            return f"llama.cpp is not installed; install the extra with: {INSTALL}"
        return None

    @classmethod
    def unsupported(cls, model_cfg: ModelConfig, world_size: int) -> Optional[str]:
        if world_size > 1:
            return f"serves one process, not {world_size}; accepted: a single-process run, or rollout.engine=torch"
        if model_cfg.load_in_4bit:
            return "a 4-bit base is not exported to GGUF; accepted: model.load_in_4bit=false, or rollout.engine=torch"
        if model_cfg.lora.r <= 0:
            return ("full fine-tuning would re-export the whole model before every rollout; accepted: LoRA "
                    "(model.lora.r > 0), or rollout.engine=torch")
        arch = _model_type(model_cfg)
        if arch not in ARCHS:
            return f"serves {', '.join(ARCHS)} models; this one is {arch}; accepted: rollout.engine=torch"
        return None

    @classmethod
    def build(cls, cfg: RolloutConfig, *, tokenizer, policy, model_cfg: ModelConfig, console=None) -> "LlamaCppEngine":
        return cls(cfg, tokenizer, policy, model_cfg, console)

    def __init__(self, cfg: RolloutConfig, tokenizer, policy, model_cfg: ModelConfig, console=None):
        import llama_cpp

        from prefopt.models import gguf
        from prefopt.models.gguf_write import write_model

        self.ll, self.cfg = llama_cpp, cfg
        self.pad, self.eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.threads = cfg.threads or len(os.sched_getaffinity(0))
        self.dir = tempfile.TemporaryDirectory(prefix="prefopt-llamacpp-")
        if cfg.base_file:
            path = os.path.expanduser(cfg.base_file)
            if not os.path.isfile(path):
                raise UserError(f"rollout.base_file: '{cfg.base_file}' does not exist; accepted: a .gguf file")
            self.base_desc = f"base {os.path.basename(path)} (rollout.base_file)"
        else:
            ftype = cfg.base_type
            if ftype == "auto":
                ftype = "bf16" if next(policy.parameters()).dtype == torch.bfloat16 else "f16"
            path = os.path.join(self.dir.name, f"base.{ftype}.gguf")
            write_model(policy, tokenizer, path, ftype=ftype, source_gguf=gguf.source_file(model_cfg), merge_lora=False)
            self.base_desc = f"base {ftype.upper()} from the trainer's weights"
        _quiet(llama_cpp)
        llama_cpp.llama_backend_init()
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(path.encode(), mp)
        if not self.model:
            raise UserError(f"rollout.engine=llamacpp: llama.cpp could not load {path}; accepted: a Llama-architecture GGUF")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.ctx, self.capacity = None, (0, 0)  # (sequences, cells) the context holds
        self.adapter, self.version = None, 0
        self.mismatch = self._mismatch(policy, tokenizer)
        if console is not None:
            console.print(f"  llama.cpp rollouts: {self.base_desc}; teacher-forced |Δ log p| against the trainer's "
                          f"policy: mean {self.mismatch[0]:.2e}, max {self.mismatch[1]:.2e} over {self.mismatch[2]} tokens")

    def describe(self) -> str:
        return (f"llamacpp (llama-cpp-python {getattr(self.ll, '__version__', '?')}, {self.base_desc}, LoRA swapped "
                f"in before each rollout, {self.threads} thread(s))")

    # ---- context and weights -------------------------------------------------------------------------
    def _context(self, sequences: int, cells: int):
        """A context for ``sequences`` sequences using ``cells`` KV cells in all (grown when too small)."""
        ll = self.ll
        if self.ctx is not None and sequences <= self.capacity[0] and cells <= self.capacity[1]:
            ll.llama_memory_clear(ll.llama_get_memory(self.ctx), True)
            return self.ctx
        if self.ctx is not None:
            ll.llama_free(self.ctx)
        cp = ll.llama_context_default_params()
        cp.n_ctx = (cells + 255) // 256 * 256
        cp.n_batch = cp.n_ubatch = max(512, sequences)
        cp.n_seq_max = sequences
        cp.n_threads = cp.n_threads_batch = self.threads
        # One KV stream per sequence: a unified cache makes every sequence attend over all cells of the
        # batch (masked), which measured 20% slower at 64 sequences; a prompt's cells are copied instead.
        cp.kv_unified = False
        if self.base_desc.startswith("base F32"):
            # llama.cpp's KV cache is F16 by default: an F32 base asks for exactness, so its cache is F32 too.
            cp.type_k = cp.type_v = self.ll.GGML_TYPE_F32
        cp.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise UserError(f"rollout.engine=llamacpp: llama.cpp could not allocate a context of {cp.n_ctx} cells "
                            f"for {sequences} sequences; accepted: fewer algo.sequences_per_generate")
        self.capacity = (sequences, int(cp.n_ctx))
        self.n_batch = int(cp.n_batch)
        if self.adapter is not None:
            self._set_adapter(self.adapter)
        return self.ctx

    def _set_adapter(self, adapter) -> None:
        ll = self.ll
        arr = (ll.llama_adapter_lora_p_ctypes * 1)(adapter)
        scales = (ctypes.c_float * 1)(1.0)  # the file's adapter.lora.alpha gives peft's α/r
        if ll.llama_set_adapters_lora(self.ctx, arr, 1, scales) != 0:
            raise UserError("rollout.engine=llamacpp: llama.cpp refused the LoRA adapter; accepted: rollout.engine=torch")

    def sync_weights(self, model) -> None:
        """The policy's current LoRA adapters, written as a GGUF LoRA and swapped in (the base stays loaded)."""
        from prefopt.models.gguf_write import write_lora

        ll = self.ll
        self.version += 1
        path = os.path.join(self.dir.name, f"adapter.{self.version % 2}.gguf")
        write_lora(model, path)
        adapter = ll.llama_adapter_lora_init(self.model, path.encode())
        if not adapter:
            raise UserError(f"rollout.engine=llamacpp: llama.cpp could not load the adapter written to {path}; "
                            "accepted: rollout.engine=torch")
        old, self.adapter = self.adapter, adapter
        if self.ctx is not None:
            self._set_adapter(adapter)
        if old is not None:
            ll.llama_adapter_lora_free(old)

    # ---- decoding --------------------------------------------------------------------------------------
    def _decode(self, batch, entries) -> np.ndarray:
        """Decode ``entries`` [(token, position, seq ids, wants logits)] in calls of ≤ n_batch tokens;
        the logits of the entries that want them, in order [n, V]."""
        ll, out = self.ll, []
        for i in range(0, len(entries), self.n_batch):
            part = entries[i : i + self.n_batch]
            n_out = 0
            for j, (tok, pos, seqs, logits) in enumerate(part):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = tok, pos, len(seqs)
                for k, s in enumerate(seqs):
                    batch.seq_id[j][k] = s
                batch.logits[j] = 1 if logits else 0
                n_out += bool(logits)
            batch.n_tokens = len(part)
            rc = ll.llama_decode(self.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            if n_out:
                ptr = ll.llama_get_logits(self.ctx)
                out.append(np.ctypeslib.as_array(ptr, shape=(n_out, self.n_vocab)).copy())
        return np.concatenate(out) if out else np.zeros((0, self.n_vocab), np.float32)

    def _group_batch(self, prompts: list, K: int, cfg: SamplingConfig, gen: torch.Generator, out: Samples) -> None:
        """``prompts`` × ``K`` samples each, decoded together (sequence i·K + k is prompt i's k-th sample)."""
        ll = self.ll
        N, M = len(prompts) * K, cfg.max_new_tokens
        self._context(N, N * (max(len(p) for p in prompts) + M))  # every stream holds its longest sequence
        batch = ll.llama_batch_init(max(self.n_batch, N), 0, 1)
        try:
            # Each prompt is decoded once, as its first sample's sequence, then its cells are copied to the others.
            entries = [(tok, pos, [i * K], pos == len(p) - 1) for i, p in enumerate(prompts) for pos, tok in enumerate(p)]
            logits = torch.from_numpy(self._decode(batch, entries)).repeat_interleave(K, 0)
            mem = ll.llama_get_memory(self.ctx)
            for i in range(len(prompts)):
                for k in range(1, K):
                    ll.llama_memory_seq_cp(mem, i * K, i * K + k, -1, -1)
            live = list(range(N))
            toks = [[] for _ in range(N)]
            lps = [[] for _ in range(N)]
            for t in range(M):
                scaled = logits.float() / cfg.temperature
                probs = _filter_logits(scaled, cfg.top_k, cfg.top_p).softmax(-1)
                tok = _draw(probs, gen)
                lp = torch.log_softmax(scaled, -1).gather(-1, tok[:, None]).squeeze(-1)
                step, nxt = [], []
                for r, s in enumerate(live):
                    toks[s].append(int(tok[r]))
                    lps[s].append(float(lp[r]))
                    if toks[s][-1] != self.eos and t < M - 1:
                        step.append((toks[s][-1], len(prompts[s // K]) + t, [s], True))
                        nxt.append(s)
                if not nxt:
                    break
                live = nxt
                logits = torch.from_numpy(self._decode(batch, step))
        finally:
            ll.llama_batch_free(batch)
        for s in range(N):
            out.completions.append(toks[s])
            out.finished.append(toks[s][-1] == self.eos)
            if out.logprobs is not None:
                out.logprobs.append(lps[s])

    @torch.no_grad()
    def sample(self, model, prompts: list, cfg: SamplingConfig, seed: int = 0, *, return_logprobs: bool = False) -> Samples:
        if self.adapter is None:
            self.sync_weights(model)
        gen = torch.Generator().manual_seed(seed)
        out = Samples(completions=[], finished=[], logprobs=[] if return_logprobs else None)
        K = cfg.samples_per_prompt
        per = max(1, min(cfg.prompts_per_batch, MAX_SEQUENCES) // K)  # prompts per context, whole groups
        for i in range(0, len(prompts), per):
            self._group_batch([list(p) for p in prompts[i : i + per]], K, cfg, gen, out)
        return out

    def generate(self, model, prompts: list, cfg: SamplingConfig, seed: int = 0) -> list:
        return self.sample(model, prompts, cfg, seed).completions

    # ---- start-up check ---------------------------------------------------------------------------------
    def _mismatch(self, policy, tokenizer) -> tuple:
        """(mean, max |Δ log p|, tokens) of a fixed chat sequence's next tokens under llama.cpp (this
        base, no adapter) and under the trainer's policy (whose fresh LoRA adds nothing)."""
        from prefopt.models.logprobs import token_stats

        text = "Question: what is 12 plus 7? Answer: 12 plus 7 is 19. Question: and 30 minus 4? Answer: 26."
        ids = [i for i in tokenizer(text, add_special_tokens=False)["input_ids"] if i < self.n_vocab][:48]
        if len(ids) < 2:
            return (float("nan"), float("nan"), 0)
        self._context(1, len(ids))
        batch = self.ll.llama_batch_init(max(self.n_batch, len(ids)), 0, 1)
        try:
            logits = torch.from_numpy(self._decode(batch, [(t, p, [0], True) for p, t in enumerate(ids)]))
        finally:
            self.ll.llama_batch_free(batch)
        mine = torch.log_softmax(logits[:-1].double(), -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
        x = torch.tensor([ids])
        dev = next(policy.parameters()).device
        theirs = token_stats(policy, x.to(dev), torch.ones_like(x).to(dev), torch.ones_like(x).to(dev)).logps[0, 1:].cpu()
        d = (mine - theirs.detach().double()).abs()
        return (float(d.mean()), float(d.max()), len(ids) - 1)

    def close(self) -> None:
        """Free llama.cpp's context, adapter and model (also done when the engine is collected)."""
        ll = getattr(self, "ll", None)
        if ll is None:
            return
        for attr, free in (("ctx", "llama_free"), ("adapter", "llama_adapter_lora_free"), ("model", "llama_model_free")):
            handle = getattr(self, attr, None)
            if handle:
                getattr(ll, free)(handle)
            setattr(self, attr, None)

    def __del__(self):
        try:
            self.close()
        except (TypeError, AttributeError):
            pass  # interpreter shutdown: the ctypes bindings may already be gone
