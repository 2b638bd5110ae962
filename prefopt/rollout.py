"""Sampling completions from a policy.

A sampler takes prompt token ids and returns completion token ids. The default backend is
transformers' ``generate`` with a KV cache; a faster backend only has to implement ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    max_new_tokens: int = 32
    samples_per_prompt: int = 1
    prompts_per_batch: int = 128


class HFSampler:
    """Batched sampling through ``model.generate`` (left-padded prompts, stop at EOS)."""

    def __init__(self, pad_token_id: int, eos_token_id: int):
        self.pad = pad_token_id
        self.eos = eos_token_id

    @torch.no_grad()
    def generate(self, model, prompts: list, cfg: SamplingConfig, seed: int = 0) -> list:
        """Returns, for each prompt, ``samples_per_prompt`` completions (lists of token ids, ending
        with EOS when the model stopped, prompt-major order)."""
        device = next(model.parameters()).device
        gen = torch.Generator(device="cpu").manual_seed(seed)
        # generate() draws from the global RNG; fork it so sampling doesn't disturb training's RNG.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            flat = [p for p in prompts for _ in range(cfg.samples_per_prompt)]
            out = []
            for i in range(0, len(flat), cfg.prompts_per_batch):
                out += self._batch(model, flat[i : i + cfg.prompts_per_batch], cfg, device)
        return out

    def _batch(self, model, prompts, cfg, device):
        T = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), T), self.pad, dtype=torch.long)
        am = torch.zeros((len(prompts), T), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, T - len(p) :] = torch.tensor(p)
            am[i, T - len(p) :] = 1
        was_training = model.training
        model.eval()
        seqs = model.generate(
            input_ids=ids.to(device),
            attention_mask=am.to(device),
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,  # 0 disables top-k (transformers would otherwise default to 50)
            max_new_tokens=cfg.max_new_tokens,
            eos_token_id=self.eos,
            pad_token_id=self.pad,
        )
        model.train(was_training)
        res = []
        for row in seqs[:, T:].tolist():
            if self.eos in row:
                row = row[: row.index(self.eos) + 1]
            else:
                row = [t for t in row if t != self.pad]
            res.append(row)
        return res
