"""Sampling completions from a policy: the rollout engine.

A sampler takes prompt token ids and returns completion token ids. The interface is two methods,
so a faster backend (vLLM on a GPU, say) can replace the default without touching the objectives:

- ``sample(model, prompts, cfg, seed) -> Samples``: ``cfg.samples_per_prompt`` completions per
  prompt (prompt-major order), whether each stopped at EOS, and optionally the sampler's own
  log-probs of the sampled tokens;
- ``generate(model, prompts, cfg, seed) -> list``: the completions only (evaluation, testbed).

A backend that keeps its own copy of the weights also implements ``sync_weights(model)``; the
online pipeline calls it before every rollout (a no-op here: ``generate`` reads the live model).

The default backend is transformers' ``generate`` with a KV cache: temperature, top-p, top-k,
max new tokens, stop at EOS. Under LoRA the model passed in is the policy with its adapters on.
The log-probs that enter a loss are recomputed by the trainer through the fused kernel under the
same temperature; the sampler's log-probs are only for checking that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch


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
    def sample(self, model, prompts: list, cfg: SamplingConfig, seed: int = 0, *, return_logprobs: bool = False) -> Samples: ...

    def generate(self, model, prompts: list, cfg: SamplingConfig, seed: int = 0) -> list: ...

    def sync_weights(self, model) -> None: ...


class HFSampler:
    """Batched sampling through ``model.generate`` (left-padded prompts, KV cache, stop at EOS)."""

    def __init__(self, pad_token_id: int, eos_token_id: int):
        self.pad = pad_token_id
        self.eos = eos_token_id

    def sync_weights(self, model) -> None:
        pass  # generate() runs on the live policy

    @torch.no_grad()
    def generate(self, model, prompts: list, cfg: SamplingConfig, seed: int = 0) -> list:
        """Returns, for each prompt, ``samples_per_prompt`` completions (lists of token ids, ending
        with EOS when the model stopped, prompt-major order)."""
        s = self.sample(model, prompts, cfg, seed)
        # Unfinished rows drop pad ids (the behaviour the testbed's cached pairs were built with).
        return [c if f else [t for t in c if t != self.pad] for c, f in zip(s.completions, s.finished)]

    @torch.no_grad()
    def sample(self, model, prompts: list, cfg: SamplingConfig, seed: int = 0, *, return_logprobs: bool = False) -> Samples:
        device = next(model.parameters()).device
        gen = torch.Generator(device="cpu").manual_seed(seed)
        out = Samples(completions=[], finished=[], logprobs=[] if return_logprobs else None)
        # generate() draws from the global RNG; fork it so sampling doesn't disturb training's RNG.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            flat = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
            for i in range(0, len(flat), cfg.prompts_per_batch):
                self._batch(model, flat[i : i + cfg.prompts_per_batch], cfg, device, out)
        return out

    def _batch(self, model, prompts, cfg, device, out: Samples):
        T = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), T), self.pad, dtype=torch.long)
        am = torch.zeros((len(prompts), T), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, T - len(p) :] = torch.tensor(p)
            am[i, T - len(p) :] = 1
        from prefopt.models import dropout_disable, dropout_restore

        flipped = dropout_disable(model)  # not eval(): it would break 4-bit (bitsandbytes) training later
        want_lp = out.logprobs is not None
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
        for b, row in enumerate(new.tolist()):
            finished = self.eos in row
            n = row.index(self.eos) + 1 if finished else len(row)
            out.completions.append(row[:n])
            out.finished.append(finished)
            if want_lp:
                out.logprobs.append(lp[b, :n].tolist())
