"""Held-out evaluation over episodes: what :class:`~prefopt.rollout.evaluate.Evaluator` samples when the run
has an environment (``env=NAME``).

On each held-out prompt, ``samples_per_prompt`` episodes are run to the end by the training's own episode
runner (:func:`~prefopt.rollout.episodes.run_episodes`), for π and for π_ref alike. A draw then reads:

- gold: each episode's reward (Σ of the environment's step rewards; the solve rate for arith_retry and
  calculator), so ``gold_reward``, ``gold_reward_ref`` and ``win_rate_vs_ref`` are episode numbers;
- the trajectory after the prompt with its policy-token mask: KL(π‖π_ref) sums over the policy's own
  tokens only (the environment's tokens are context), and lengths count the policy's tokens;
- texts: the policy's tokens decoded (repetition rate);
- fields: the per-episode means logged in training as ``rollout/env_*`` (:func:`episode_metrics`):
  ``env_turns``, ``env_done``, ``env_policy_tokens``, ``env_tokens`` and ``env_info/KEY`` (e.g. the
  calculator's tool calls per episode).
"""

from __future__ import annotations

import dataclasses

from prefopt.rollout.envs.base import Environment
from prefopt.rollout.episodes import episode_metrics, run_episodes
from prefopt.rollout.sampler import SamplingConfig


class EpisodeDraws:
    """``draw(model, cfg) -> dict`` of held-out episodes on ``prompts_text`` (see the module docstring); the
    dict has the keys of the evaluator's single-turn draw (prompts, prompt_ids, comps, masks, texts, gold,
    lengths, fields), ``masks`` the episodes' policy-token masks."""

    def __init__(self, env: Environment, *, tokenizer, sampler, prompts_text: list, prompts_ids: list, seed: int):
        self.env = env
        self.tok = tokenizer
        self.sampler = sampler
        self.seed = seed
        self.rows = [{"row": i, "prompt_text": t, "prompt_ids": list(ids)}
                     for i, (t, ids) in enumerate(zip(prompts_text, prompts_ids))]

    def key(self) -> dict:
        """What of the environment fixes π_ref's episodes (its name and every key of its config)."""
        return dataclasses.asdict(self.env.cfg)

    def draw(self, model, cfg: SamplingConfig) -> dict:
        eps = run_episodes(self.env, self.rows, sampler=self.sampler, policy=model, tokenizer=self.tok, cfg=cfg,
                           seed=self.seed, where="held-out evaluation")
        K = cfg.samples_per_prompt
        own = [[t for t, m in zip(e.ids, e.policy_mask) if m] for e in eps]
        fields = {k: v.mean().item() for k, v in episode_metrics(eps).items()}
        return dict(prompts=[r["prompt_text"] for r in self.rows for _ in range(K)],
                    prompt_ids=[e.prompt_ids for e in eps], comps=[e.ids for e in eps],
                    masks=[e.policy_mask for e in eps],
                    texts=[self.tok.decode(c, skip_special_tokens=True) for c in own],
                    gold=[e.reward for e in eps], lengths=[e.policy_tokens for e in eps], fields=fields)
