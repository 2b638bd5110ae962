"""Sampling completions from a policy: the rollout engine.

A sampler takes prompt token ids and returns completion token ids. The interface is two methods,
so a faster backend (vLLM on a GPU, say) can replace the default without touching the objectives:

- ``sample(model, prompts, cfg, seed) -> Samples``: ``cfg.samples_per_prompt`` completions per
  prompt (prompt-major order), whether each stopped at EOS, and optionally the sampler's own
  log-probs of the sampled tokens;
- ``generate(model, prompts, cfg, seed) -> list``: the completions only (evaluation, testbed).

A backend that keeps its own copy of the weights also implements ``sync_weights(model)``; the
online pipeline calls it before every rollout (a no-op here: ``generate`` reads the live model).

The default backend samples with its own decode loop (:class:`DecodeLoop`) for Llama-style decoders
(llama, qwen2, mistral without a sliding window): the whole batch at once, a key/value cache
preallocated for prompt + max new tokens, one call per layer module per token and no per-token
framework machinery, stopping as soon as every sequence has emitted EOS. Other architectures
use transformers' ``generate`` with a KV cache. Both: temperature, top-p, top-k, max new tokens,
stop at EOS. ``evaluate``-style ``generate()`` keeps transformers' ``generate``, whose draws the
testbed's cached data were built with. Under LoRA the model passed in is the policy with its adapters on.
The log-probs that enter a loss are recomputed by the trainer through the fused kernel under the
same temperature; the sampler's own log-probs (equal to those up to float rounding) serve the
online pipeline where nothing has moved since sampling (see :mod:`prefopt.rollout.source`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch

from prefopt.core.modules import dropout_disable, dropout_restore
from prefopt.rollout.engine import ENGINES, Engine


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    max_new_tokens: int = 32
    samples_per_prompt: int = 1
    prompts_per_batch: int = 128  # sequences per generate() call (prompts × samples, flattened)


@dataclass
class Samples:
    """Completions of ``len(prompts) × samples_per_prompt`` sequences, prompt-major."""

    completions: list  # list[list[int]]: ends with EOS iff finished
    finished: list  # list[bool]: stopped at EOS (False: hit max_new_tokens)
    # Per completion token, log p(token) under the sampling temperature only (no top-p/top-k
    # truncation: the distribution the trainer recomputes). None unless asked for.
    logprobs: Optional[list] = None


class Sampler(Protocol):
    exact_logprobs: bool  # the sampled tokens' log-probs are the trainer's own (up to rounding)

    def sample(self, model, prompts: list, cfg: SamplingConfig, seed: int = 0, *, return_logprobs: bool = False) -> Samples: ...

    def generate(self, model, prompts: list, cfg: SamplingConfig, seed: int = 0) -> list: ...

    def sync_weights(self, model) -> None: ...


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """transformers' top-k then top-p warpers (the kept set includes ties at the k-th value)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum <= 1 - top_p
        remove[..., -1:] = False  # keep at least the most likely token
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def _draw(probs: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One token per row of ``probs`` [N, V] by inverting the cumulative distribution at a uniform
    draw: the same law as ``torch.multinomial`` at a tenth of its cost per decode step on CPU. The
    draw is v = (1 − u)·Σp ∈ (0, Σp], so a zero-probability token (an empty interval) is never hit."""
    c = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=gen, device=probs.device, dtype=c.dtype)
    return torch.searchsorted(c, (1 - u) * c[:, -1:]).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


def _model_module(model):
    """The transformers modeling module of ``model``'s class. ``fully_shard`` swaps a module's class
    for a generated subclass (living in torch's FSDP module), so the architecture's own class is
    found through the MRO."""
    import sys

    for cls in type(model).__mro__:
        if cls.__module__.startswith("transformers.models."):
            return sys.modules[cls.__module__]
    return sys.modules[type(model).__module__]


class DecodeLoop:
    """Batched sampling for Llama-style decoders with a preallocated KV cache.

    Per new token, each layer runs its own modules (so LoRA adapters and quantized linears apply)
    on one position per sequence: RMSNorm, q/k/v projections, rotary embedding, a write into the
    preallocated cache, SDPA over the valid prefix, output projection, MLP. ``use_cache=False``
    recomputes every position at every step through the model's own forward: the reference the
    cached loop is tested against (same seed, same tokens)."""

    ARCHS = ("llama", "qwen2", "mistral")

    @staticmethod
    def supports(model) -> bool:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        cfg = getattr(base, "config", None)
        inner = getattr(base, "model", None)
        if cfg is None or inner is None or getattr(cfg, "model_type", None) not in DecodeLoop.ARCHS:
            return False
        if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True) and cfg.model_type != "llama":
            return False
        layers = getattr(inner, "layers", None)
        need = ("self_attn", "mlp", "input_layernorm", "post_attention_layernorm")
        return bool(layers) and all(hasattr(layers[0], n) for n in need) and hasattr(inner, "rotary_emb") \
            and hasattr(inner, "norm") and hasattr(base, "lm_head")

    def __init__(self, model):
        self.base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.inner = self.base.model
        self.rope = _model_module(self.base).apply_rotary_pos_emb
        # Plain nn.Linear projections are fused per layer (q|k|v, gate|up): fewer, larger matmuls
        # per token. Anything else (LoRA, 4-bit) is called module by module.
        self.fused = [self._fuse(layer) for layer in self.inner.layers]

    @staticmethod
    def _fuse(layer):
        a, m = layer.self_attn, layer.mlp
        qkv = [getattr(a, n, None) for n in ("q_proj", "k_proj", "v_proj")]
        gu = [getattr(m, n, None) for n in ("gate_proj", "up_proj")]
        if not all(type(x) is torch.nn.Linear for x in qkv + gu) or not hasattr(m, "act_fn") or \
                not hasattr(m, "down_proj"):
            return None
        cat_b = lambda ls: None if ls[0].bias is None else torch.cat([x.bias for x in ls])  # noqa: E731
        if len({x.bias is None for x in qkv}) > 1 or len({x.bias is None for x in gu}) > 1:
            return None
        return (torch.cat([x.weight for x in qkv]), cat_b(qkv), [x.out_features for x in qkv],
                torch.cat([x.weight for x in gu]), cat_b(gu), gu[0].out_features)

    @staticmethod
    def _norm(norm, x):
        """The decoder's RMSNorm; one fused op for the plain fp32 Llama/Qwen2/Mistral RMSNorm
        (w · x / √(mean x² + ε), the same formula: a decode step runs nine of these per token)."""
        if x.dtype == torch.float32 and type(norm).__name__.endswith("RMSNorm") and \
                hasattr(norm, "variance_epsilon") and getattr(norm, "weight", None) is not None and \
                norm.weight.dtype == torch.float32:
            return torch.nn.functional.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
        return norm(x)

    @staticmethod
    def _rope(x, cos, sin):
        """Rotary embedding of x [N, n, heads, d] (cos/sin [N, n, d]) in the rotate-half layout:
        x·cos + rotate_half(x)·sin written out per half, so q and k go through it together."""
        h = x.shape[-1] // 2
        x1, x2 = x[..., :h], x[..., h:]
        c, s = cos[:, :, None], sin[:, :, None]
        return torch.cat((x1 * c[..., :h] - x2 * s[..., :h], x2 * c[..., h:] + x1 * s[..., h:]), -1)

    def _layer(self, layer, fused, x, cos, sin, kc, vc, start, bias):
        """One decoder layer on positions [start, start + n) of every sequence; writes their keys and
        values into kc/vc [N, kv_heads, S, d] and attends over [0, start + n) (``bias``: 0 where a
        query may attend, −inf elsewhere, [N, 1, n, start + n])."""
        N, n, _ = x.shape
        attn = layer.self_attn
        d = attn.head_dim
        h = self._norm(layer.input_layernorm, x)
        if fused is not None and cos.shape[-1] == d:
            # One matmul for q|k|v, one rotary pass for q|k, no per-head transposes before the cache.
            hq, hk = fused[2][0] // d, fused[2][1] // d
            qkv = torch.nn.functional.linear(h, fused[0], fused[1]).view(N, n, hq + 2 * hk, d)
            qk = self._rope(qkv[:, :, : hq + hk], cos, sin)
            q = qk[:, :, :hq].transpose(1, 2)
            k = qk[:, :, hq:].transpose(1, 2)
            v = qkv[:, :, hq + hk :].transpose(1, 2)
        else:
            if fused is not None:
                q, k, v = torch.nn.functional.linear(h, fused[0], fused[1]).split(fused[2], -1)
            else:
                q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
            q = q.reshape(N, n, -1, d).transpose(1, 2)
            k = k.reshape(N, n, -1, d).transpose(1, 2)
            v = v.reshape(N, n, -1, d).transpose(1, 2)
            q, k = self.rope(q, k, cos, sin)
        kc[:, :, start : start + n] = k
        vc[:, :, start : start + n] = v
        K, V = kc[:, :, : start + n], vc[:, :, : start + n]
        if K.shape[1] != q.shape[1]:
            K = K.repeat_interleave(q.shape[1] // K.shape[1], dim=1)
            V = V.repeat_interleave(q.shape[1] // V.shape[1], dim=1)
        if n == 1:  # one query per sequence: plain matmuls beat the flash kernel's set-up cost on CPU
            o = torch.matmul(q, K.transpose(-1, -2)).mul_(attn.scaling).add_(bias).softmax(-1) @ V
        else:
            o = torch.nn.functional.scaled_dot_product_attention(q, K, V, attn_mask=bias, scale=attn.scaling)
        x = x + attn.o_proj(o.transpose(1, 2).reshape(N, n, -1))
        h = self._norm(layer.post_attention_layernorm, x)
        if fused is not None:
            g, u = torch.nn.functional.linear(h, fused[3], fused[4]).split(fused[5], -1)
            return x + layer.mlp.down_proj(layer.mlp.act_fn(g) * u)
        return x + layer.mlp(h)

    def _forward(self, ids, pos, caches, start, valid):
        """Last-position logits [N, V] of ``ids`` [N, n] at cache offset ``start``; ``valid`` [N, S]
        marks the cache slots that hold real tokens."""
        x = self.inner.embed_tokens(ids)
        cos, sin = self.inner.rotary_emb(x, pos)
        n = ids.shape[1]
        S = start + n
        causal = torch.ones(n, S, dtype=torch.bool, device=ids.device).tril(start)
        mask = (valid[:, None, :S] & causal[None])[:, None]  # [N, 1, n, S]
        mask = mask | ~mask.any(-1, keepdim=True)  # a left-pad query sees something: no NaN rows
        # Additive form, built once per step for all layers.
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(~mask, float("-inf"))
        for layer, fused, (kc, vc) in zip(self.inner.layers, self.fused, caches):
            x = self._layer(layer, fused, x, cos, sin, kc, vc, start, bias)
        return self.base.lm_head(self._norm(self.inner.norm, x[:, -1]))

    def _prefill(self, ids, pos, caches, valid, group: int):
        """Last-position logits of the prompts [N, V], their keys and values written into ``caches``
        positions [0, T); with ``group`` > 1 computed for every ``group``-th row and copied."""
        if group <= 1:
            return self._forward(ids, pos, caches, 0, valid)
        T = ids.shape[1]
        first = slice(None, None, group)
        small = [(torch.empty_like(kc[first, :, :T]), torch.empty_like(vc[first, :, :T])) for kc, vc in caches]
        logits = self._forward(ids[first], pos[first], small, 0, valid[first])
        for (kc, vc), (ks, vs) in zip(caches, small):
            kc[:, :, :T] = ks.repeat_interleave(group, 0)
            vc[:, :, :T] = vs.repeat_interleave(group, 0)
        return logits.repeat_interleave(group, 0)

    @torch.no_grad()
    def run(self, ids, am, cfg: SamplingConfig, eos: int, pad: int, gen: torch.Generator, use_cache: bool = True,
            want_logprobs: bool = False, group: int = 1):
        """Left-padded prompts ``ids``/``am`` [N, T] → (new tokens [N, ≤ max_new], sampler log-probs or None).

        ``group``: rows come in runs of ``group`` identical prompts (a prompt's samples). Their prompt is
        then prefilled once and its keys, values and last logits are copied to the other rows: the
        prefill costs N/group sequences instead of N, and the copies equal what each row would compute."""
        N, T = ids.shape
        M = cfg.max_new_tokens
        dev = ids.device
        valid = torch.zeros(N, T + M, dtype=torch.bool, device=dev)
        valid[:, :T] = am.bool()
        # Position of every slot once filled: prompt tokens count from 0 after the left padding.
        pos_all = (torch.cat([am.long(), torch.ones(N, M, dtype=torch.long, device=dev)], 1).cumsum(-1) - 1).clamp(min=0)
        c = self.base.config
        kvh = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
        d = self.inner.layers[0].self_attn.head_dim
        dtype = self.inner.embed_tokens.weight.dtype
        caches = [(torch.empty(N, kvh, T + M, d, dtype=dtype, device=dev),
                   torch.empty(N, kvh, T + M, d, dtype=dtype, device=dev)) for _ in self.inner.layers] if use_cache else None
        seq = torch.full((N, T + M), pad, dtype=torch.long, device=dev)
        seq[:, :T] = ids
        done = torch.zeros(N, dtype=torch.bool, device=dev)
        lps = []
        if use_cache:
            logits = self._prefill(ids, pos_all[:, :T], caches, valid, group if N % max(group, 1) == 0 else 1)
        for t in range(M):
            if not use_cache:
                logits = self.base(input_ids=seq[:, : T + t], attention_mask=valid[:, : T + t].long(),
                                   position_ids=pos_all[:, : T + t], use_cache=False).logits[:, -1]
            scaled = logits.float() / cfg.temperature
            probs = _filter_logits(scaled, cfg.top_k, cfg.top_p).softmax(-1)
            tok = _draw(probs, gen)
            tok = torch.where(done, torch.full_like(tok, pad), tok)
            if want_logprobs:
                lps.append(torch.log_softmax(scaled, -1).gather(-1, tok[:, None]).squeeze(-1))
            seq[:, T + t] = tok
            valid[:, T + t] = True
            done = done | (tok == eos)
            if bool(done.all()) or t == M - 1:
                M = t + 1
                break
            if use_cache:
                p = pos_all[:, T + t : T + t + 1]
                logits = self._forward(tok[:, None], p, caches, T + t, valid)
        new = seq[:, T : T + M]
        return new, (torch.stack(lps, 1) if want_logprobs else None)


@ENGINES.register("torch")
class HFSampler(Engine):
    """The ``torch`` rollout engine. Batched sampling (left-padded prompts, KV cache, stop at EOS):
    :class:`DecodeLoop` where the architecture allows (``engine="auto"``), else ``model.generate``
    (``engine="hf"`` forces it)."""

    exact_logprobs = True  # it decodes the live policy

    def __init__(self, pad_token_id: int, eos_token_id: int, engine: str = "auto"):
        self.pad = pad_token_id
        self.eos = eos_token_id
        self.engine = engine

    @classmethod
    def build(cls, cfg, *, tokenizer, policy, model_cfg, console=None) -> "HFSampler":
        return cls(tokenizer.pad_token_id, tokenizer.eos_token_id)

    def describe(self) -> str:
        return "torch (prefopt's decode loop on the live policy)"

    def sync_weights(self, model) -> None:
        pass  # generate() runs on the live policy

    @torch.no_grad()
    def generate(self, model, prompts: list, cfg: SamplingConfig, seed: int = 0) -> list:
        """Returns, for each prompt, ``samples_per_prompt`` completions (lists of token ids, ending
        with EOS when the model stopped, prompt-major order)."""
        s = self.sample(model, prompts, cfg, seed, _engine="hf")
        # Unfinished rows drop pad ids (the behaviour the testbed's cached pairs were built with).
        return [c if f else [t for t in c if t != self.pad] for c, f in zip(s.completions, s.finished)]

    @torch.no_grad()
    def sample(self, model, prompts: list, cfg: SamplingConfig, seed: int = 0, *, return_logprobs: bool = False,
               _engine: Optional[str] = None) -> Samples:
        device = next(model.parameters()).device
        engine = _engine or self.engine
        if engine == "auto":
            engine = "loop" if DecodeLoop.supports(model) else "hf"
        gen = torch.Generator(device="cpu").manual_seed(seed)
        out = Samples(completions=[], finished=[], logprobs=[] if return_logprobs else None)
        # generate() draws from the global RNG; fork it so sampling doesn't disturb training's RNG.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            flat = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
            K, per = cfg.samples_per_prompt, cfg.prompts_per_batch
            if engine == "loop" and K > 1:
                per = max(K, per // K * K)  # whole groups per batch: each prompt's prefill is shared by its samples
            for i in range(0, len(flat), per):
                self._batch(model, flat[i : i + per], cfg, device, out, engine, gen,
                            group=K if engine == "loop" else 1)
        return out

    def _batch(self, model, prompts, cfg, device, out: Samples, engine: str = "hf", gen=None, use_cache: bool = True,
               group: int = 1):
        T = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), T), self.pad, dtype=torch.long)
        am = torch.zeros((len(prompts), T), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, T - len(p) :] = torch.tensor(p)
            am[i, T - len(p) :] = 1
        flipped = dropout_disable(model)  # not eval(): it would break 4-bit (bitsandbytes) training later
        want_lp = out.logprobs is not None
        if engine == "loop":
            g = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            try:
                new, lp = DecodeLoop(model).run(ids.to(device), am.to(device), cfg, self.eos, self.pad, g,
                                                use_cache=use_cache, want_logprobs=want_lp, group=group)
            finally:
                dropout_restore(flipped)
            self._collect(new, lp.cpu() if lp is not None else None, out)
            return
        res = model.generate(
            input_ids=ids.to(device),
            attention_mask=am.to(device),
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,  # 0 disables top-k (transformers would otherwise default to 50)
            max_new_tokens=cfg.max_new_tokens,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
            use_cache=True,  # gradient checkpointing turns it off in the config; sampling wants it
            # transformers turns synced_gpus on for an FSDP-managed model (an all-reduce per token);
            # prefopt samples a gathered model, where each rank decodes on its own.
            synced_gpus=False,
            return_dict_in_generate=want_lp,
            output_logits=want_lp,
        )
        dropout_restore(flipped)
        seqs = res.sequences if want_lp else res
        new = seqs[:, T:]
        if want_lp:
            # Raw logits / temperature: the distribution the trainer's Scorer recomputes.
            logits = torch.stack(res.logits, 1)[:, : new.shape[1]].float() / cfg.temperature
            lp = torch.log_softmax(logits, -1).gather(-1, new[..., None]).squeeze(-1).cpu()
        self._collect(new, lp if want_lp else None, out)

    def _collect(self, new, lp, out: Samples):
        for b, row in enumerate(new.tolist()):
            finished = self.eos in row
            n = row.index(self.eos) + 1 if finished else len(row)
            out.completions.append(row[:n])
            out.finished.append(finished)
            if lp is not None:
                out.logprobs.append(lp[b, :n].tolist())
