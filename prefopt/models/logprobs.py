"""The one place log-probs come from.

The decoder produces hidden states; ``prefopt_kernels.fused_logprobs`` turns the hidden states at
completion positions into log-probs of the next token without materializing [tokens x vocab]
logits. Objectives call :class:`Scorer`; none of them computes full logits.

``PREFOPT_LOGPROBS_IMPL`` (default ``auto``) picks the op's implementation; ``naive`` materializes
the logits as before the fused op existed, which is how the before/after of a training step is
measured (``python -m prefopt.bench --providers prefopt,prefopt-naive``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import ContextManager, Optional

import torch

import prefopt_kernels
from prefopt.models.packing import attention_cost_per_token, pack, right_padded_lengths, shared_prompt_lengths

IMPL = os.environ.get("PREFOPT_LOGPROBS_IMPL", "auto")
if IMPL not in prefopt_kernels.api.IMPLS:  # a typo must not silently measure the wrong path
    raise SystemExit(f"PREFOPT_LOGPROBS_IMPL={IMPL!r} is not known; accepted: {', '.join(prefopt_kernels.api.IMPLS)}")


@dataclass
class TokenStats:
    """Per-token statistics of the completion tokens, [B, T] fp32, zero where ``mask`` is False.

    Position t holds log p(x_t | x_<t) (predicted from the hidden state at t-1)."""

    logps: torch.Tensor
    mask: torch.Tensor
    entropy: Optional[torch.Tensor] = None
    kl: Optional[torch.Tensor] = None  # exact KL(pi || pi_ref) per token, when asked

    def seq_sum(self) -> torch.Tensor:
        return self.logps.sum(-1)

    def seq_mean(self) -> torch.Tensor:
        return self.logps.sum(-1) / self.mask.sum(-1).clamp(min=1)

    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)


def _unwrap(model):
    # peft's PeftModel keeps the transformers model under get_base_model(); LoRA layers live inside
    # it, so calling its decoder directly still applies the adapters.
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@dataclass
class Head:
    decoder: torch.nn.Module
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    softcap: Optional[float]
    logit_scale: float


_warned: set = set()


def _warn_once(key, msg):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, stacklevel=3)


def find_head(model) -> Optional[Head]:
    """Decoder + output projection of a causal LM, or None when the fused op cannot serve it."""
    base = _unwrap(model)
    decoder = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or decoder is base or head is None:
        return None
    # Only a plain nn.Linear has a [V, H] weight that *is* the head: a quantized (bnb) or
    # LoRA-wrapped head computes something else, so the caller falls back to full logits.
    if type(head) is not torch.nn.Linear:
        return None
    weight = head.weight
    if weight.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        return None
    cfg = base.config
    softcap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)
    return Head(decoder, weight, head.bias, softcap, float(scale) if scale else 1.0)


def hidden_states(model, kw):
    """(head, last hidden states [B, T, H]) of a model for decoder keyword arguments ``kw``."""
    head = find_head(model)
    return head, head.decoder(**kw).last_hidden_state


def token_stats(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    position_ids=None,
    ref_hidden_fn=None,
) -> TokenStats:
    """Log-probs (and optionally entropy) of the tokens where ``loss_mask`` is set.

    ``ref_hidden_fn(kw) -> (ref_head, ref_hidden)``: when given, also returns the exact per-token
    KL(pi || pi_ref) over the whole vocabulary (evaluation); the reference side has no gradient."""
    B, T = input_ids.shape
    head = find_head(model)
    sel = loss_mask[:, 1:].bool()  # token t is predicted from position t-1
    targets = input_ids[:, 1:][sel]
    zeros = lambda: torch.zeros(B, T, dtype=torch.float32, device=input_ids.device)  # noqa: E731
    if head is None:
        _warn_once(
            type(_unwrap(model)).__name__,
            f"prefopt: the fused log-prob op cannot read the output head of {type(_unwrap(model)).__name__}; "
            "falling back to full logits (more memory, same numbers)",
        )
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logits = logits[:, :-1][sel].float() / temperature
        lp_all = torch.log_softmax(logits, -1)
        lp = lp_all.gather(-1, targets[:, None]).squeeze(-1)
        ent = -(lp_all.exp() * lp_all).sum(-1) if return_entropy else None
        kl = None
        if ref_hidden_fn is not None:
            raise NotImplementedError("exact KL needs a model whose head the fused op can read")
    else:
        kw = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        if position_ids is not None:
            kw["position_ids"] = position_ids
        hidden = head.decoder(**kw).last_hidden_state[:, :-1][sel]
        extra = {}
        if ref_hidden_fn is not None:
            with torch.no_grad():
                rhead, rh = ref_hidden_fn(kw)
            extra = dict(ref_hidden=rh[:, :-1][sel], ref_weight=rhead.weight, ref_bias=rhead.bias)
        out = prefopt_kernels.fused_logprobs(
            hidden,
            head.weight,
            targets,
            bias=head.bias,
            temperature=temperature,
            softcap=head.softcap,
            logit_scale=head.logit_scale,
            return_entropy=return_entropy,
            impl=IMPL,
            **extra,
        )
        if isinstance(out, torch.Tensor):
            lp, ent, kl = out, None, None
        else:
            lp, ent, kl = out.logprobs, out.entropy, out.kl
    res = TokenStats(logps=zeros(), mask=torch.zeros_like(loss_mask, dtype=torch.bool))
    res.mask[:, 1:] = sel
    res.logps = _scatter(lp, sel, B, T)
    if ent is not None:
        res.entropy = _scatter(ent, sel, B, T)
    if kl is not None:
        res.kl = _scatter(kl, sel, B, T)
    return res


def _scatter(values, sel, B, T):
    # masked_scatter keeps the autograd graph back to the fused op's [N] output.
    out = torch.zeros(B, T, dtype=values.dtype, device=values.device)
    full_sel = torch.zeros(B, T, dtype=torch.bool, device=values.device)
    full_sel[:, 1:] = sel
    return out.masked_scatter(full_sel, values)


# Packed row length: long enough to pack several items per row (little padding), short enough that
# the dense [L, L] block mask keeps attention cheap next to the linear layers.
ROW_TOKENS = int(os.environ.get("PREFOPT_ROW_TOKENS", "320"))


def _attn_cost(model) -> float:
    return attention_cost_per_token(getattr(_unwrap(model), "config", None))


def pair_token_stats(model, a: tuple, b: tuple, *, temperature: float = 1.0, row_tokens: Optional[int] = None):
    """Log-probs of two right-padded batches ``a`` and ``b`` = (input_ids, attention_mask,
    loss_mask) whose rows share a prompt (DPO's chosen and rejected), in **one** padding-free
    forward: each prompt once, both completions continuing from it (:mod:`prefopt.models.packing`), every
    completion token of both sides through one fused log-prob call. Same numbers as two
    :func:`token_stats` calls up to fp32 rounding; returns None when the rows do not share a prompt
    (or the head cannot be read): the caller then does two forwards."""
    head = find_head(model)
    if head is None:
        return None
    P = shared_prompt_lengths(*a, *b)
    if P is None:
        return None
    (ids_a, am_a, lm_a), (ids_b, am_b, lm_b) = a, b
    na, nb = am_a.sum(-1).tolist(), am_b.sum(-1).tolist()
    Pl = P.tolist()
    items = [(ids_a[i, : Pl[i]], [ids_a[i, Pl[i] : na[i]], ids_b[i, Pl[i] : nb[i]]]) for i in range(len(Pl))]
    pk = pack(items, pad_token_id=0, row_tokens=row_tokens or ROW_TOKENS, device=ids_a.device,
              attn_cost_per_token=_attn_cost(model) if row_tokens is None else 0.0)
    hidden = head.decoder(input_ids=pk.input_ids, position_ids=pk.position_ids, attention_mask=pk.attention_mask,
                          use_cache=False).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])
    idx, tgt, sels = [], [], []
    for k, (ids, _, lm) in enumerate((a, b)):
        sel = lm[:, 1:].bool()
        rows, j = sel.nonzero(as_tuple=True)
        idx.append(pk.flat_index(2 * rows + k, j))  # views: 2i = a, 2i + 1 = b
        tgt.append(ids[:, 1:][sel])
        sels.append(sel)
    lp = prefopt_kernels.fused_logprobs(
        hidden[torch.cat(idx)], head.weight, torch.cat(tgt), bias=head.bias, temperature=temperature,
        softcap=head.softcap, logit_scale=head.logit_scale, impl=IMPL)
    lp_a, lp_b = lp.split([idx[0].numel(), idx[1].numel()])
    out = []
    for lp_k, sel, (ids, _, lm) in zip((lp_a, lp_b), sels, (a, b)):
        B, T = ids.shape
        res = TokenStats(logps=_scatter(lp_k, sel, B, T), mask=torch.zeros_like(lm, dtype=torch.bool))
        res.mask[:, 1:] = sel
        out.append(res)
    return tuple(out)


def packed_token_stats(model, input_ids, attention_mask, loss_mask, *, temperature: float = 1.0,
                       row_tokens: Optional[int] = None) -> Optional[TokenStats]:
    """:func:`token_stats` of a right-padded batch computed padding-free: the sequences packed into
    rows with their own position ids and a block-diagonal mask. Same numbers up to fp32 rounding;
    None when the head cannot be read or the batch is not right padded."""
    head = find_head(model)
    n = right_padded_lengths(attention_mask)
    if head is None or n is None or bool((n < 1).any()):
        return None
    items = [(input_ids[i, :k], []) for i, k in enumerate(n.tolist())]
    pk = pack(items, pad_token_id=0, row_tokens=row_tokens or ROW_TOKENS, device=input_ids.device,
              attn_cost_per_token=_attn_cost(model) if row_tokens is None else 0.0)
    hidden = head.decoder(input_ids=pk.input_ids, position_ids=pk.position_ids, attention_mask=pk.attention_mask,
                          use_cache=False).last_hidden_state
    sel = loss_mask[:, 1:].bool() & attention_mask[:, 1:].bool()
    rows, j = sel.nonzero(as_tuple=True)
    lp = prefopt_kernels.fused_logprobs(
        hidden.reshape(-1, hidden.shape[-1])[pk.flat_index(rows, j)], head.weight, input_ids[:, 1:][sel],
        bias=head.bias, temperature=temperature, softcap=head.softcap, logit_scale=head.logit_scale, impl=IMPL)
    B, T = input_ids.shape
    res = TokenStats(logps=_scatter(lp, sel, B, T), mask=torch.zeros_like(loss_mask, dtype=torch.bool))
    res.mask[:, 1:] = sel
    return res


def side_keys(side: Optional[str]):
    p = f"{side}_" if side else ""
    return f"{p}input_ids", f"{p}attention_mask", f"{p}loss_mask"


class Reference:
    """π_ref as the scorer reads it. A reference defines ``active()``, a context manager yielding the
    module that computes it (a frozen copy, the policy with its adapters off, ...); its log-probs
    come from that module through the same fused path as the policy's."""

    def active(self) -> ContextManager:
        raise NotImplementedError

    def token_stats(self, input_ids, attention_mask, loss_mask, temperature: float = 1.0) -> TokenStats:
        with self.active() as m:
            return token_stats(m, input_ids, attention_mask, loss_mask, temperature=temperature)


class Scorer:
    """What an objective sees of the models: policy log-probs (with grad), reference log-probs
    (without) and, for an objective that declares ``needs.value_head``, the value model's V_t. The
    reference source is chosen by the run from the objective's declarations: a frozen copy, the
    adapter-disabled policy under LoRA, or log-probs precomputed into the batch (batch key
    ``{side}_ref_logps``)."""

    def __init__(self, policy, reference: Optional[Reference] = None, temperature: float = 1.0,
                 shared_prompt: bool = True, value_model=None):
        self.policy = policy
        self.reference = reference
        self.temperature = temperature
        self.shared_prompt = shared_prompt  # paired batches: one forward over each shared prompt
        self.value_model = value_model

    def values(self, batch) -> Optional[torch.Tensor]:
        """[B, T] values V_t of the batch's tokens (with grad), or None without a value model."""
        return None if self.value_model is None else self.value_model.values(batch)

    def logps(self, batch, side: Optional[str] = None, *, entropy: bool = False) -> TokenStats:
        ids, am, lm = side_keys(side)
        return token_stats(
            self.policy, batch[ids], batch[am], batch[lm], temperature=self.temperature, return_entropy=entropy
        )

    def scores(self, batch, side: Optional[str] = None) -> torch.Tensor:
        """[B] fp32 scores of a sequence classifier with one output (a reward model), read at the
        last non-pad token exactly as ``AutoModelForSequenceClassification`` pools them, so a saved
        reward model scores what was trained. The one log-prob-free path."""
        ids, am, _ = side_keys(side)
        return self.policy(input_ids=batch[ids], attention_mask=batch[am], use_cache=False).logits[:, 0].float()

    def pair_logps(self, batch, sides=("chosen", "rejected")) -> tuple:
        """Policy log-probs of both sides of a paired batch: one shared-prompt forward when the
        sides share their prompts, else one forward per side."""
        a, b = (tuple(batch[k] for k in side_keys(s)) for s in sides)
        if self.shared_prompt:
            out = pair_token_stats(self.policy, a, b, temperature=self.temperature)
            if out is not None:
                return out
        return self.logps(batch, sides[0]), self.logps(batch, sides[1])

    @torch.no_grad()
    def pair_ref_logps(self, batch, sides=("chosen", "rejected")) -> tuple:
        """Reference log-probs of both sides (precomputed when in the batch), like :meth:`pair_logps`."""
        cached = all(f"{s}_ref_logps" in batch for s in sides)
        if not cached and self.shared_prompt and self.reference is not None:
            a, b = (tuple(batch[k] for k in side_keys(s)) for s in sides)
            with self.reference.active() as ref_model:
                out = pair_token_stats(ref_model, a, b, temperature=self.temperature)
            if out is not None:
                return out
        return self.ref_logps(batch, sides[0]), self.ref_logps(batch, sides[1])

    @torch.no_grad()
    def ref_logps(self, batch, side: Optional[str] = None) -> TokenStats:
        ids, am, lm = side_keys(side)
        cached = f"{side}_ref_logps" if side else "ref_logps"
        if cached in batch:
            mask = torch.zeros_like(batch[lm], dtype=torch.bool)
            mask[:, 1:] = batch[lm][:, 1:].bool()
            return TokenStats(logps=batch[cached].float() * mask, mask=mask)
        if self.reference is None:
            raise RuntimeError("this objective declared no reference policy but asked for one")
        return self.reference.token_stats(batch[ids], batch[am], batch[lm], temperature=self.temperature)
