"""Evaluation on held-out prompts: gold reward of π and π_ref, win rate, KL(π‖π_ref), length,
repetition.

- gold reward: the task's reward of ``samples_per_prompt`` sampled completions per prompt, averaged; with
  ``greedy``, also of one greedy (top-1) completion per prompt (``gold_reward_greedy``, and π_ref's);
- win rate vs π_ref: per prompt, π's completion against π_ref's by gold reward, wins + ties/2;
- KL(π‖π_ref): mean over π's sampled completions of Σ_t KL(π(·|x,y_<t) ‖ π_ref(·|x,y_<t)), the exact
  per-token KL over the whole vocabulary (no sampling noise inside a position);
- repetition rate: the fraction of a completion's words that already appeared earlier in it;
- proxy reward (when a reward model drives training): its mean score of π's and of π_ref's completions.

With an environment (``env=NAME``) every draw, π's and π_ref's, is a set of episodes run by the training's episode
runner (:mod:`prefopt.rollout.episode_eval`): the gold reward is the episode reward, the KL and lengths count the
policy's own tokens, and the block adds the episodes' means (``env_turns``, ``env_info/KEY``).

π_ref's numbers are computed once per evaluator, and with ``ref_key`` (what fixes π_ref's samples beyond the
prompts, the sampling config and the seed: its weights' fingerprint and dtype, the task, the CPU kind, the
versions; an env run's environment config) once per key on the machine: cached under ``$PREFOPT_CACHE/eval_reference`` (JSON, written
atomically under a file lock), so every method of a seed is compared with the same π_ref draws, computed once.

A reward model (scalar head) is evaluated by :class:`PairwiseEvaluator` instead: accuracy on
held-out preference pairs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from typing import Callable, Optional

import torch

from prefopt.core import files
from prefopt.core.errors import UserError
from prefopt.data.formats import prepare_rows
from prefopt.data.load import load_rows
from prefopt.data.ranked import ordered_pairs
from prefopt.data.tokenize import collate, pad_batch, tokenize_rows
from prefopt.models.logprobs import hidden_states, token_stats
from prefopt.rollout.sampler import SamplingConfig


def chat_prompt_ids(tokenizer, text: str) -> list:
    """Token ids of a one-turn user prompt, ready for the assistant's reply."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def ref_cache_dir() -> str:
    return os.path.join(files.cache_root(), "eval_reference")


def repetition_rate(words: list) -> float:
    if not words:
        return 0.0
    return 1.0 - len(set(words)) / len(words)


@torch.no_grad()
def sequence_kl(policy, reference, prompts_ids, completions, pad_id, temperature=1.0, batch_size=64,
                policy_masks: Optional[list] = None):
    """Σ_t exact KL per completion, [n]; with ``policy_masks`` (an episode's True on the policy's own tokens),
    over those tokens only: the environment's tokens are context."""
    from prefopt.rollout.episodes import mask_policy_tokens

    device = next(policy.parameters()).device
    out = []
    for i in range(0, len(prompts_ids), batch_size):
        P, C = prompts_ids[i : i + batch_size], completions[i : i + batch_size]
        b = pad_batch(P, C, pad_id)
        ids, am, lm = b["input_ids"], b["attention_mask"], b["loss_mask"]
        if policy_masks is not None:
            lm = mask_policy_tokens(lm, policy_masks[i : i + batch_size])

        def ref_hidden(kw):
            with reference.active() as ref_model:
                return hidden_states(ref_model, kw)

        st = token_stats(policy, ids.to(device), am.to(device), lm.to(device), temperature=temperature, ref_hidden_fn=ref_hidden)
        out += st.kl.sum(-1).tolist()
    return out


class Evaluator:
    """Callable(policy) -> dict of evaluation numbers (the summary's ``eval`` block).

    ``gold_fn(prompts_text, completions_text) -> list[float]`` is None on a user's own data, where
    the gold fields are null. The reference's completions and rewards are computed once.

    With ``episodes`` (an :class:`~prefopt.rollout.episode_eval.EpisodeDraws`: the run has an environment) π
    and π_ref are drawn as episodes instead: the gold fields are the episodes' rewards, KL and lengths count
    the policy's own tokens, and the block adds the episodes' means (``env_turns``, ``env_info/KEY``, and
    π_ref's as ``KEY_ref``); without, those fields are absent."""

    def __init__(self, *, tokenizer, reference, prompts_text: list, prompts_ids: list, sampler, cfg: SamplingConfig,
                 gold_fn: Optional[Callable] = None, proxy_fn: Optional[Callable] = None, seed: int = 0,
                 greedy: bool = False, ref_key: Optional[str] = None, episodes=None):
        self.tok = tokenizer
        self.reference = reference
        self.prompts_text = prompts_text
        self.prompts_ids = prompts_ids
        self.sampler = sampler
        self.cfg = cfg
        self.gold_fn = gold_fn
        self.proxy_fn = proxy_fn
        self.seed = seed
        self.episodes = episodes
        self.greedy = greedy and (gold_fn is not None or episodes is not None)
        # A proxy reward model's scores are not part of the key: with one, π_ref is scored per run.
        self.ref_key = ref_key if proxy_fn is None else None
        self._ref = None

    def _draw(self, model, cfg: SamplingConfig) -> dict:
        """The model's held-out samples under ``cfg``: per sample its prompt (text and ids), completion ids,
        policy-token mask (None: all of them), text, gold reward (None without a gold), policy-token length;
        and ``fields``, the episodes' means (empty without an environment)."""
        if self.episodes is not None:
            return self.episodes.draw(model, cfg)
        comps = self.sampler.generate(model, self.prompts_ids, cfg, seed=self.seed)
        texts = [self.tok.decode(c, skip_special_tokens=True) for c in comps]
        K = cfg.samples_per_prompt
        prompts = [p for p in self.prompts_text for _ in range(K)]
        return dict(prompts=prompts, prompt_ids=[p for p in self.prompts_ids for _ in range(K)], comps=comps,
                    masks=None, texts=texts, gold=self.gold_fn(prompts, texts) if self.gold_fn else None,
                    lengths=[len(c) for c in comps], fields={})

    def _greedy_gold(self, model) -> float:
        gold = self._draw(model, dataclasses.replace(self.cfg, top_k=1, samples_per_prompt=1))["gold"]
        return sum(gold) / len(gold)

    def _compute_ref(self) -> dict:
        with self.reference.active() as ref_model:
            d = self._draw(ref_model, self.cfg)
            greedy = self._greedy_gold(ref_model) if self.greedy else None
        proxy = self.proxy_fn(d["prompts"], d["texts"]) if self.proxy_fn else None
        return dict(comps=d["comps"], texts=d["texts"], gold=d["gold"], proxy=proxy, greedy=greedy,
                    lengths=d["lengths"], fields=d["fields"])

    def _ref_stats(self):
        if self._ref is None:
            self._ref = self._compute_ref() if self.ref_key is None else self._cached_ref()
        return self._ref

    def _cached_ref(self) -> dict:
        from filelock import FileLock

        with self.reference.active() as ref_model:
            dtype = str(next(ref_model.parameters()).dtype)
        key = {"v": 1, "ref": self.ref_key, "dtype": dtype, "prompts": self.prompts_ids,
               "cfg": dataclasses.asdict(self.cfg), "seed": self.seed, "greedy": self.greedy}
        if self.episodes is not None:  # an env run's π_ref draws are episodes, never a single-turn run's samples
            key["env"] = self.episodes.key()
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        d = ref_cache_dir()
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, name + ".json")
        with FileLock(path + ".lock"):
            if os.path.exists(path):
                try:
                    with open(path) as f:
                        got = json.load(f)
                    if len(got["comps"]) == len(self.prompts_ids) * self.cfg.samples_per_prompt:
                        return got
                except (OSError, ValueError, KeyError, TypeError):
                    pass  # damaged: computed again and rewritten
            ref = self._compute_ref()
            files.write_json(path, ref)
        return ref

    def __call__(self, policy) -> dict:
        ref = self._ref_stats()
        d = self._draw(policy, self.cfg)
        comps, texts, prompts = d["comps"], d["texts"], d["prompts"]
        kl = sequence_kl(policy, self.reference, d["prompt_ids"], comps, self.tok.pad_token_id, self.cfg.temperature,
                         policy_masks=d["masks"])
        # Entries cached before π_ref's lengths were stored: its completions are all its own tokens.
        ref_lengths = ref.get("lengths") or [len(c) for c in ref["comps"]]
        res = {
            "gold_reward": None,
            "gold_reward_ref": None,
            "win_rate_vs_ref": None,
            "kl_to_ref": sum(kl) / len(kl),
            "proxy_reward": None,
            "mean_length": sum(d["lengths"]) / len(comps),
            "mean_length_ref": sum(ref_lengths) / len(ref["comps"]),
            "repetition_rate": sum(repetition_rate(t.split()) for t in texts) / len(texts),
            "gold_reward_greedy": None,
            "gold_reward_greedy_ref": None,
        }
        if d["gold"] is not None:
            gold, g_ref = d["gold"], ref["gold"]
            res["gold_reward"] = sum(gold) / len(gold)
            res["gold_reward_ref"] = sum(g_ref) / len(g_ref)
            wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(gold, g_ref))
            res["win_rate_vs_ref"] = wins / len(gold)
        if self.greedy:
            res["gold_reward_greedy"] = self._greedy_gold(policy)
            res["gold_reward_greedy_ref"] = ref["greedy"]
        if self.proxy_fn is not None:
            proxy = self.proxy_fn(prompts, texts)
            res["proxy_reward"] = sum(proxy) / len(proxy)
            # π_ref's on the same prompts: the calibration point of the proxy's scale
            res["proxy_reward_ref"] = sum(ref["proxy"]) / len(ref["proxy"])
        res.update(d["fields"])
        res.update({f"{k}_ref": v for k, v in (ref.get("fields") or {}).items()})
        return res


class PairwiseEvaluator:
    """Callable(model) -> the ``eval`` block for a scalar head (a reward model): accuracy on
    held-out preference pairs, never trained on.

    - pairwise_accuracy: fraction of pairs with r(chosen) > r(rejected), ties counted 1/2;
    - pairwise_accuracy_gold: the same against the gold reward's ordering, over the pairs whose gold
      rewards differ (testbed only; null otherwise). The labels themselves are Bradley–Terry draws
      on the gold reward, so this is what the reward model is really for;
    - label_accuracy_gold: how often the held-out labels agree with the gold ordering (the
      labels' own noise, for scale);
    - reward_margin: mean r(chosen) − r(rejected); reward_mean / reward_std over all completions.

    The generative fields of the summary's eval block are null."""

    GENERATIVE = ("gold_reward", "gold_reward_ref", "win_rate_vs_ref", "kl_to_ref", "proxy_reward", "mean_length",
                  "mean_length_ref", "repetition_rate", "gold_reward_greedy", "gold_reward_greedy_ref")

    def __init__(self, examples: list, collate: Callable, gold: Optional[list] = None, batch_size: int = 64):
        self.examples = examples
        self.collate = collate
        self.gold = gold
        self.batch_size = batch_size

    @torch.no_grad()
    def scores(self, model):
        from prefopt.models.logprobs import Scorer

        device = next(model.parameters()).device
        scorer = Scorer(model)
        r_c, r_r = [], []
        for i in range(0, len(self.examples), self.batch_size):
            b = self.collate(self.examples[i : i + self.batch_size])
            b = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
            r_c += scorer.scores(b, "chosen").tolist()
            r_r += scorer.scores(b, "rejected").tolist()
        return r_c, r_r

    def __call__(self, model) -> dict:
        r_c, r_r = self.scores(model)
        n = len(r_c)
        win = lambda a, b: 1.0 if a > b else 0.5 if a == b else 0.0  # noqa: E731
        res = {k: None for k in self.GENERATIVE}
        allr = r_c + r_r
        mean = sum(allr) / len(allr)
        res.update({
            "pairwise_accuracy": sum(win(a, b) for a, b in zip(r_c, r_r)) / n,
            "pairwise_accuracy_gold": None,
            "label_accuracy_gold": None,
            "reward_margin": sum(a - b for a, b in zip(r_c, r_r)) / n,
            "reward_mean": mean,
            "reward_std": (sum((r - mean) ** 2 for r in allr) / len(allr)) ** 0.5,
            "num_pairs": n,
        })
        if self.gold is not None:
            decided = [(a, b, gc > gr) for a, b, (gc, gr) in zip(r_c, r_r, self.gold) if gc != gr]
            if decided:
                res["pairwise_accuracy_gold"] = sum(win(a, b) if c_wins else win(b, a) for a, b, c_wins in decided) / len(decided)
                res["label_accuracy_gold"] = sum(c_wins for _, _, c_wins in decided) / len(decided)
        return res


def ranked_pairs(ex: dict, rows: list) -> list:
    """The pair examples (chosen_ids, rejected_ids, and their texts) implied by a tokenized ranked example."""
    comps = rows[ex["row"]]["completions"]
    base = {k: v for k, v in ex.items() if k not in ("completions_ids", "ranks")}
    return [{**base, "chosen_ids": ex["completions_ids"][w], "rejected_ids": ex["completions_ids"][l],
             "chosen_text": comps[w], "rejected_text": comps[l]} for w, l in ordered_pairs(ex["ranks"], "all")]


def heldout_pairs(examples: list, rows: list, dcfg, acfg, tok, gold_fn: Optional[Callable], seed: int,
                  source_name: str) -> tuple[list, Optional["PairwiseEvaluator"]]:
    """(training examples, PairwiseEvaluator on held-out pairs) for a scalar head (reward model).
    Ranked examples are held out whole (a prompt with all its completions) and scored as the
    pairs they imply.

    Held out: ``data.eval_split`` when set (user data), else a seeded ``data.eval_fraction`` or
    ``algo.eval_fraction`` of the pairs. On the testbed the gold reward of each held-out completion
    is attached too, for accuracy against the gold ordering."""
    eval_examples = None
    if getattr(dcfg, "eval_split", None) and dcfg.name == "hf":
        eval_rows, _ = load_rows(dcfg, dcfg.eval_split)
        eval_rows = prepare_rows(eval_rows, "paired", dcfg, f"{source_name}[{dcfg.eval_split}]")
        eval_examples, _ = tokenize_rows(eval_rows, "paired", tok, dcfg, f"{source_name}[{dcfg.eval_split}]")
        rows = eval_rows
    else:
        frac = dcfg.eval_fraction or getattr(acfg, "eval_fraction", 0.0)
        if frac <= 0:
            return examples, None
        n_eval = max(1, round(len(examples) * frac))
        if n_eval >= len(examples):
            raise UserError(f"{source_name}: holding out {frac} of {len(examples)} pairs for evaluation leaves none "
                            "to train on; accepted: a smaller algo.eval_fraction, or more pairs")
        held = set(random.Random(seed).sample(range(len(examples)), n_eval))
        eval_examples = [ex for i, ex in enumerate(examples) if i in held]
        examples = [ex for i, ex in enumerate(examples) if i not in held]
    # Held-out rankings are scored as all the pairs they imply.
    eval_examples = [p for ex in eval_examples for p in (ranked_pairs(ex, rows) if "ranks" in ex else [ex])]
    gold = None
    if gold_fn is not None:
        text = lambda v: v if isinstance(v, str) else v[-1]["content"]  # noqa: E731
        prompts = [ex["prompt_text"] for ex in eval_examples]
        side = lambda ex, s: ex[f"{s}_text"] if f"{s}_text" in ex else rows[ex["row"]][s]  # noqa: E731
        gold = list(zip(gold_fn(prompts, [text(side(ex, "chosen")) for ex in eval_examples]),
                        gold_fn(prompts, [text(side(ex, "rejected")) for ex in eval_examples])))
    return examples, PairwiseEvaluator(eval_examples, lambda ex: collate(ex, "paired", tok.pad_token_id), gold=gold)
