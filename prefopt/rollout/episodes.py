"""Batched multi-turn episodes: every live episode decodes together through the rollout engine.

For B episodes (``samples_per_prompt`` per data row, prompt-major, as single-turn samples are):

    prompt_i = chat_template(env.reset(row_i), add_generation_prompt)       the episode's prompt ids
    turn k:  the live episodes' contexts prompt_i ⧺ y_i go through ``sampler.sample`` as one batch
             y_i ⧺= the sampled turn (cut at the token budget)               policy: mask = True
             r = env.step(messages_i);  R_i += r.reward
             y_i ⧺= template(messages ⧺ r.messages) − template(messages)     environment: mask = False
    an episode leaves the batch when the environment ends it, after ``max_turns`` turns, when |y_i|
    reaches ``max_episode_tokens`` (it may end mid-turn), or when a turn ends without EOS (the
    per-turn ``max_new_tokens``: the template could not render an unclosed turn)

Contract of an :class:`Episode`: ``ids`` = y_i (the whole trajectory after the prompt,
|y_i| ≤ max_episode_tokens), ``policy_mask[t]`` True exactly where y_i[t] was sampled by the policy,
``logprobs`` the sampler's log p(y_i[t]) (temperature only) at those positions in order.
Tools (``env.tools()``) go through the template's ``tools=`` where it reads them, else into the system
prompt (:mod:`prefopt.rollout.envs.tools`). The environment's tokens are the text the chat template adds
for its messages, tokenized on their own:
the template must render a conversation as a prefix of its continuation (every template does that
for whole turns); one that does not is a UserError naming the environment.

An environment that raises is one UserError line naming it, the call (reset / step), the rollout,
the optimizer step, the turn and the data row; the run stops as on any user error, its checkpoints intact.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Optional

import torch

from prefopt.core.errors import UserError, first_line
from prefopt.rollout.envs.base import Environment, StepResult
from prefopt.rollout.envs.tools import template_supports_tools, tool_schema, with_tools_prompt
from prefopt.rollout.sampler import SamplingConfig


@dataclass
class Episode:
    prompt_ids: list
    ids: list = field(default_factory=list)  # the trajectory after the prompt
    policy_mask: list = field(default_factory=list)  # True on the policy's sampled tokens
    logprobs: list = field(default_factory=list)  # the sampler's, on the policy's tokens in order
    reward: float = 0.0  # Σ of the steps' rewards
    turns: int = 0  # assistant turns sampled
    stop: str = ""  # done | max_turns | max_episode_tokens | no_eos
    messages: list = field(default_factory=list)
    info: list = field(default_factory=list)  # each step's info

    @property
    def done(self) -> bool:
        """The environment ended the episode (not a limit)."""
        return self.stop == "done"

    @property
    def policy_tokens(self) -> int:
        return sum(self.policy_mask)


def _render(tok, messages: list, generation_prompt: bool, tools: Optional[list] = None) -> str:
    return tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)


def _prompt_ids(tok, messages: list, tools: Optional[list] = None) -> list:
    ids = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def env_tokens(tok, messages: list, new: list, env_name: str, tools: Optional[list] = None) -> list:
    """Token ids the chat template adds for the environment's messages ``new`` after ``messages`` (whose
    last turn is the policy's, ending with EOS), up to and including the next assistant header."""
    before = _render(tok, messages, False, tools)
    after = _render(tok, messages + new, True, tools)
    if not after.startswith(before):
        raise UserError(f"env '{env_name}': the tokenizer's chat template does not render the conversation as a "
                        "prefix of its continuation, so the environment's turns cannot be appended as tokens; "
                        "accepted: a chat template that renders whole turns in order")
    cut = len(before)
    eos = getattr(tok, "eos_token", None)
    if eos and eos in before:
        # The policy's turn ended with its EOS token; what the template writes after it ("\n" in ChatML)
        # was never sampled, so it opens the environment's tokens.
        cut = before.rindex(eos) + len(eos)
    return list(tok(after[cut:], add_special_tokens=False)["input_ids"])


class _Guard:
    """Calls into the environment; anything it raises becomes one UserError line saying where."""

    def __init__(self, env: Environment, where: str):
        self.env, self.where = env, where

    def _fail(self, call: str, turn: int, row, e: Exception):
        where = ", ".join(x for x in (self.where, f"turn {turn}", f"data row {row}" if row is not None else "") if x)
        # The environment's own UserError is already one line for the user: kept without its type name.
        what = str(e) if isinstance(e, UserError) else first_line(e)
        return UserError(f"env '{self.env.name}' raised in {call}() at {where}: {what}")

    def reset(self, row: dict) -> list:
        try:
            msgs = self.env.reset(row)
        except Exception as e:
            raise self._fail("reset", 0, row.get("row"), e) from None
        if not isinstance(msgs, list) or not msgs:
            raise UserError(f"env '{self.env.name}': reset() returned {type(msgs).__name__}; accepted: a non-empty "
                            "list of chat messages ({'role': ..., 'content': ...})")
        return msgs

    def step(self, messages: list, turn: int, row) -> StepResult:
        try:
            r = self.env.step(messages)
        except Exception as e:
            raise self._fail("step", turn, row, e) from None
        if not isinstance(r, StepResult):
            raise UserError(f"env '{self.env.name}': step() returned {type(r).__name__}; accepted: a StepResult")
        if not isinstance(r.reward, numbers.Real):
            raise UserError(f"env '{self.env.name}': step() returned reward={r.reward!r}; accepted: a number")
        return r


def run_episodes(env: Environment, rows: list, *, sampler, policy, tokenizer, cfg: SamplingConfig, seed: int,
                 where: str = "") -> list:
    """``cfg.samples_per_prompt`` episodes per row (prompt-major), run to the end; see the module
    docstring. ``cfg.max_new_tokens`` caps one turn; the environment's config caps turns and tokens.
    ``where`` names the run's position in an environment's error (``optimizer step 3 (rollout 2)``)."""
    K, max_turns, max_tokens = cfg.samples_per_prompt, env.cfg.max_turns, env.cfg.max_episode_tokens
    guard = _Guard(env, where)
    opening = [guard.reset(row) for row in rows]
    # Tools: through the template's tools= where it reads them, else described in the system prompt.
    schemas = [tool_schema(f) for f in env.tools()] or None
    native = schemas if schemas and template_supports_tools(tokenizer) else None
    if schemas and native is None:
        opening = [with_tools_prompt(m, schemas) for m in opening]
    eps, row_of = [], []
    for row, msgs in zip(rows, opening):
        p = _prompt_ids(tokenizer, msgs, native)
        for _ in range(K):
            eps.append(Episode(prompt_ids=p, messages=[dict(m) for m in msgs]))
            row_of.append(row.get("row"))
    live = list(range(len(eps)))
    turn = 0
    while live:
        budgets = [max_tokens - len(eps[i].ids) for i in live]
        scfg = dataclasses.replace(cfg, max_new_tokens=min(cfg.max_new_tokens, max(budgets)), samples_per_prompt=1)
        turn_seed = seed * 1_000_003 + turn
        if turn == 0:  # identical contexts within a row: each prompt is prefilled once for its K samples
            s = sampler.sample(policy, [eps[i * K].prompt_ids for i in range(len(rows))],
                               dataclasses.replace(scfg, samples_per_prompt=K), seed=turn_seed, return_logprobs=True)
        else:
            s = sampler.sample(policy, [eps[i].prompt_ids + eps[i].ids for i in live], scfg, seed=turn_seed,
                               return_logprobs=True)
        still = []
        for j, i in enumerate(live):
            ep, b = eps[i], budgets[j]
            c, lp = list(s.completions[j][:b]), list(s.logprobs[j][:b])
            finished = bool(s.finished[j]) and len(s.completions[j]) <= b
            ep.ids += c
            ep.policy_mask += [True] * len(c)
            ep.logprobs += lp
            ep.turns += 1
            ep.messages.append({"role": "assistant", "content": tokenizer.decode(c, skip_special_tokens=True)})
            r = guard.step(ep.messages, turn, row_of[i])
            ep.reward += float(r.reward)
            ep.info.append(r.info)
            if r.messages is None:
                ep.stop = "done"
            elif not finished:
                ep.stop = "max_episode_tokens" if len(ep.ids) >= max_tokens else "no_eos"
            elif ep.turns >= max_turns:
                ep.stop = "max_turns"
            else:
                new = env_tokens(tokenizer, ep.messages, list(r.messages), env.name, native)
                if len(ep.ids) + len(new) >= max_tokens:  # no room left for one more policy token
                    ep.stop = "max_episode_tokens"
                else:
                    ep.ids += new
                    ep.policy_mask += [False] * len(new)
                    ep.messages += [dict(m) for m in r.messages]
                    still.append(i)
        live = still
        turn += 1
    return eps


def episode_metrics(eps: list) -> dict:
    """Per-episode values logged as ``rollout/env_*`` means: turns, the policy's tokens, the
    environment's, the fraction the environment ended (not a limit), and ``env_info/KEY``: each numeric
    (or bool) key of the steps' info summed over the episode (e.g. a tool env's calls per episode)."""
    f = lambda xs: torch.tensor(xs, dtype=torch.float32)  # noqa: E731
    out = {"env_turns": f([e.turns for e in eps]), "env_policy_tokens": f([e.policy_tokens for e in eps]),
           "env_tokens": f([len(e.ids) - e.policy_tokens for e in eps]), "env_done": f([e.done for e in eps])}
    keys = sorted({k for e in eps for i in e.info for k, v in i.items() if isinstance(v, numbers.Real)})
    for k in keys:
        out[f"env_info/{k}"] = f([sum(float(i[k]) for i in e.info if isinstance(i.get(k), numbers.Real)) for e in eps])
    return out


def mask_policy_tokens(loss_mask: torch.Tensor, policy_masks: list) -> torch.Tensor:
    """``loss_mask`` [B, T] of ``pad_batch(prompts, trajectories)`` (True on every trajectory token)
    with each row's trajectory positions set to its episode's ``policy_mask``, in place: only the
    policy's own tokens carry loss, ratios, advantages, KL and entropy; the environment's are context."""
    loss_mask[loss_mask.clone()] = torch.tensor([v for m in policy_masks for v in m], dtype=torch.bool)
    return loss_mask
