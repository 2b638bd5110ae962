"""The testbed's tiny world on disk: tokenizer, SFT policy, preference pairs, held-out prompts.

Everything is built on first use and cached under ``$PREFOPT_CACHE`` (default ~/.cache/prefopt),
keyed by a hash of what determines it, so a changed config never reads a stale artifact. Builds
write into a temporary directory and rename it into place under a file lock, so parallel jobs
(Hydra's joblib launcher) neither corrupt nor duplicate each other's work.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from filelock import FileLock
from transformers import AutoModelForCausalLM, AutoTokenizer

from prefopt.core import files
from prefopt.core.config import DataConfig, ModelConfig, TrainerConfig
from prefopt.core.errors import UserError
from prefopt.core.rng import seed_everything
from prefopt.core.sources import OfflineSource
from prefopt.core.trainer import Trainer
from prefopt.data.formats import convert_rows
from prefopt.data.tokenize import collate, tokenize_rows
from prefopt.models.load import load_policy
from prefopt.models.logprobs import Scorer
from prefopt.objectives.sft import SFT
from prefopt.rollout.evaluate import chat_prompt_ids
from prefopt.rollout.sampler import HFSampler, SamplingConfig
from prefopt.testbed.tasks import TASKS, get_task
from prefopt.testbed.tokenizer import build_tokenizer

# The policy: a Llama-architecture model small enough to train on 2 CPU cores in about a minute.
TINY_ARCH = dict(
    model_type="llama",
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=128,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
)


@dataclass
class TestbedConfig:
    task: str = "reviews"
    # SFT stage that makes the reference policy.
    sft_steps: int = 300
    sft_examples_per_step: int = 64
    sft_lr: float = 3e-3
    sft_seed: int = 0
    # Preference pairs sampled from the SFT policy, labelled by Bradley-Terry draws on gold reward.
    pair_prompts: int = 2048
    completions_per_prompt: int = 2
    label_temperature: float = 0.5  # P(a > b) = σ((r_a − r_b) / label_temperature)
    label_flip_rate: float = 0.0
    # Ranked data instead of pairs: each prompt's completions_per_prompt completions ranked by a
    # Plackett–Luce draw on the gold reward (Gumbel noise at label_temperature; 0: by the reward
    # alone, equal rewards share a rank). Pair methods get its pairs by data.ranking_to_pairs.
    ranking: bool = False
    pair_seed: int = 0
    sample_temperature: float = 1.0
    eval_prompts: int = 128


@dataclass
class TestbedDataConfig(DataConfig):
    """``data=reviews`` / ``data=arith``: the data options plus the testbed's own section."""

    testbed: TestbedConfig = field(default_factory=TestbedConfig)


cache_root = files.cache_root


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _build_once(path: str, build):
    """Run ``build(tmpdir)`` unless ``path`` exists, then rename the directory into place, under a
    lock: ``path`` exists only once complete, and a failed build leaves nothing behind."""
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with FileLock(path + ".lock"):
        if os.path.exists(path):
            return path
        tmp = files.tmp_path(path)
        try:
            os.makedirs(tmp)
            build(tmp)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        files.fsync_dir(os.path.dirname(path))
    return path


def tokenizer_path() -> str:
    words = sorted({w for name in TASKS for w in get_task(name).vocabulary()})
    path = os.path.join(cache_root(), "testbed", f"tokenizer-{_hash(words)}")
    return _build_once(path, lambda d: build_tokenizer(words).save_pretrained(d))


def load_tokenizer():
    return AutoTokenizer.from_pretrained(tokenizer_path())


def _conv(prompt: str) -> list:
    return [{"role": "user", "content": prompt}]


def _asst(text: str) -> list:
    return [{"role": "assistant", "content": text}]


def demonstration_rows(task, n: int, seed: int) -> list:
    rng = random.Random(seed)
    return [{"prompt": _conv(p), "completion": _asst(c)} for p, c in task.demonstrations(n, rng)]


def heldout_prompts(task, split: str, n: int) -> list:
    """``n`` prompts of the ``val`` or ``test`` set, fixed across runs and seeds: every method is
    evaluated on the same prompts."""
    if split not in ("val", "test"):
        raise UserError(f"eval split {split!r}: accepted: val, test (the training prompts are not held out)")
    return task.sample_prompts(n, random.Random(12345), split=split)


def _limits(task):
    return task.max_prompt_tokens + 8, task.max_prompt_tokens + task.max_completion_tokens + 8


def sft_policy_path(tb: TestbedConfig, console=None) -> str:
    """Train (once) the tiny policy by SFT on the task's demonstrations; return its directory."""
    tok_dir = tokenizer_path()
    # The CPU kind is part of the key: AVX-512 and AVX2 round differently, so another CPU kind trains its own
    # π_SFT (and, keyed by its path, its own pairs), and a rerun there starts from scratch.
    key = {"arch": TINY_ARCH, "tok": os.path.basename(tok_dir), "task": tb.task, "steps": tb.sft_steps,
           "bs": tb.sft_examples_per_step, "lr": tb.sft_lr, "seed": tb.sft_seed, "v": 1,
           "cpu": torch.backends.cpu.get_cpu_capability()}
    path = os.path.join(cache_root(), "testbed", f"sft-{tb.task}-{_hash(key)}")

    def build(out):
        if console is not None:
            console.print(f"[dim]testbed: training the {tb.task} SFT policy once ({tb.sft_steps} steps); cached at {path}")
        task = get_task(tb.task)
        tok = load_tokenizer()
        seed_everything(tb.sft_seed)
        n = tb.sft_steps * tb.sft_examples_per_step
        rows = demonstration_rows(task, n, tb.sft_seed)
        max_prompt, max_len = _limits(task)
        dcfg = DataConfig(name=tb.task, max_length=max_len, max_prompt_length=max_prompt)
        examples, _ = tokenize_rows(rows, "demonstrations", tok, dcfg, f"testbed:{tb.task}")
        model = load_policy(ModelConfig(arch=dict(TINY_ARCH)), vocab_size=len(tok), seed=tb.sft_seed)
        tcfg = TrainerConfig(max_steps=tb.sft_steps, examples_per_step=tb.sft_examples_per_step,
                             examples_per_device=tb.sft_examples_per_step, lr=tb.sft_lr, warmup_steps=tb.sft_steps // 20,
                             progress=False, log_every_steps=50, eval_at_end=False)
        source = OfflineSource(examples, lambda ex: collate(ex, "demonstrations", tok.pad_token_id),
                               tcfg.examples_per_step, tcfg.examples_per_device, seed=tb.sft_seed)
        obj = SFT(SFT.Config())
        trainer = Trainer(objective=obj, policy=model, source=source, scorer=Scorer(model), cfg=tcfg, out_dir=out,
                          total_steps=tb.sft_steps)
        trainer.fit()
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        files.write_json(os.path.join(out, "testbed.json"), key)

    return _build_once(path, build)


def preference_rows(tb: TestbedConfig, policy_path: str, console=None, tok=None) -> list:
    """Pairs sampled from π_SFT (a real task: the checkpoint) and labelled by Bradley–Terry draws on
    the gold reward; ``label_temperature`` 0 labels by the reward alone (equal rewards: no pair).
    ``tok``: the policy's tokenizer (default: the testbed's)."""
    path = os.path.join(cache_root(), "testbed", f"pairs-{tb.task}-{_hash(_sample_key(tb, policy_path))}")

    def build(out):
        rng = random.Random(tb.pair_seed)
        prompts, texts, gold = _sample(tb, policy_path, tok, rng, console, "labelling pairs")
        K = tb.completions_per_prompt
        rows = []
        for i, p in enumerate(prompts):
            cand = [(texts[i * K + j], gold[i * K + j]) for j in range(K) if texts[i * K + j].strip()]
            for a in range(len(cand)):
                for b in range(a + 1, len(cand)):
                    (ta, ra), (tb_, rb) = cand[a], cand[b]
                    if ta == tb_:
                        continue  # identical completions carry no preference
                    if tb.label_temperature <= 0:
                        if ra == rb:
                            continue  # labelled by the reward alone: a tie says nothing
                        a_wins = ra > rb
                    else:
                        p_a = 1.0 / (1.0 + math.exp(-(ra - rb) / tb.label_temperature))
                        a_wins = rng.random() < p_a
                    if rng.random() < tb.label_flip_rate:
                        a_wins = not a_wins
                    (cw, rw), (cl, rl) = ((ta, ra), (tb_, rb)) if a_wins else ((tb_, rb), (ta, ra))
                    rows.append({"prompt": _conv(p), "chosen": _asst(cw), "rejected": _asst(cl),
                                 "gold_chosen": rw, "gold_rejected": rl})
        files.write_jsonl(os.path.join(out, "pairs.jsonl"), rows)

    _build_once(path, build)
    with open(os.path.join(path, "pairs.jsonl")) as f:
        return [json.loads(l) for l in f]


def ranked_rows(tb: TestbedConfig, policy_path: str, console=None, tok=None) -> list:
    """Rankings of ``completions_per_prompt`` completions sampled from π_SFT per prompt (empty and
    repeated completions dropped; a prompt left with fewer than 2 makes no row). Plackett–Luce draw:
    rank by g_k / τ + Gumbel noise, the Gumbel-max form of choosing the best, then the best of the
    rest, each with probability ∝ exp(g_k / τ) (τ = ``label_temperature``; K = 2 gives the pairs'
    Bradley–Terry draw σ((g_a − g_b) / τ)). τ = 0 ranks by the gold reward g, ties sharing a rank."""
    if tb.label_flip_rate:
        raise UserError("data.testbed.label_flip_rate applies to pairs; with data.testbed.ranking=true the labelling "
                        "noise is data.testbed.label_temperature; accepted: label_flip_rate=0")
    path = os.path.join(cache_root(), "testbed", f"ranked-{tb.task}-{_hash(_sample_key(tb, policy_path))}")

    def build(out):
        rng = random.Random(tb.pair_seed)
        prompts, texts, gold = _sample(tb, policy_path, tok, rng, console, "ranking them")
        K = tb.completions_per_prompt
        rows = []
        for i, p in enumerate(prompts):
            seen, cand = set(), []
            for j in range(K):
                t = texts[i * K + j]
                if t.strip() and t not in seen:
                    seen.add(t)
                    cand.append((t, gold[i * K + j]))
            if len(cand) < 2:
                continue
            if tb.label_temperature > 0:
                keys = [g / tb.label_temperature - math.log(-math.log(1.0 - rng.random())) for _, g in cand]
            else:
                keys = [g for _, g in cand]
            ranks = [1 + sum(1 for k2 in keys if k2 > k) for k in keys]
            rows.append({"prompt": _conv(p), "completions": [_asst(t) for t, _ in cand], "ranks": ranks,
                         "gold": [g for _, g in cand]})
        files.write_jsonl(os.path.join(out, "ranked.jsonl"), rows)

    _build_once(path, build)
    with open(os.path.join(path, "ranked.jsonl")) as f:
        return [json.loads(l) for l in f]


def _sample_key(tb: TestbedConfig, policy_path: str) -> dict:
    # ``ranking`` off leaves the key of the pairs as it has always been, so their caches stay valid.
    fields = {k: v for k, v in asdict(tb).items() if not k.startswith("sft_") and not (k == "ranking" and not v)}
    return {"policy": os.path.basename(policy_path), **fields, "v": 1}


def _sample(tb: TestbedConfig, policy_path: str, tok, rng: random.Random, console, then: str) -> tuple:
    """(prompts, their completions_per_prompt completions each, flat, and their gold rewards)."""
    if console is not None:
        console.print(f"[dim]testbed: sampling {tb.pair_prompts}×{tb.completions_per_prompt} completions from π_SFT and {then}")
    task = get_task(tb.task)
    tokenizer = tok or load_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(policy_path, dtype=torch.float32).eval()
    prompts = task.sample_prompts(tb.pair_prompts, rng, split="train")
    prompt_ids = [chat_prompt_ids(tokenizer, p) for p in prompts]
    K = tb.completions_per_prompt
    scfg = SamplingConfig(temperature=tb.sample_temperature, max_new_tokens=task.max_completion_tokens,
                          samples_per_prompt=K, prompts_per_batch=256)
    comps = HFSampler(tokenizer.pad_token_id, tokenizer.eos_token_id).generate(model, prompt_ids, scfg, seed=tb.pair_seed)
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in comps]
    return prompts, texts, task.gold_reward([p for p in prompts for _ in range(K)], texts)


@dataclass
class World:
    task: object
    tokenizer: object
    policy_path: str
    heldout: dict  # split ("val" | "test") -> its evaluation prompts
    rows_by_kind: dict = field(default_factory=dict)

    @property
    def eval_prompts(self) -> list:
        """The test prompts: where reported numbers come from."""
        return self.heldout["test"]


def build_world(tb: TestbedConfig, kind: str, console=None, base_path: Optional[str] = None) -> "World":
    """The rows for a data kind plus what evaluation needs. Pairs are only sampled when asked for.

    A toy task's policy is the testbed's SFT policy; a real task's (``task.real_checkpoint``) is the
    checkpoint at ``base_path`` with its own tokenizer, and its SFT rows are the right answers among
    the checkpoint's sampled pairs (rejection-sampled demonstrations)."""
    task = get_task(tb.task)
    if task.real_checkpoint:
        if base_path is None:
            raise UserError(f"data={tb.task} is a task for a real checkpoint; accepted: model=smollm2, or "
                            "model.name_or_path=DIR_OR_FILE.gguf of an instruct model")
        policy, tok = base_path, AutoTokenizer.from_pretrained(base_path)
    else:
        policy, tok = sft_policy_path(tb, console), load_tokenizer()
    source = f"testbed:{tb.task}"
    if kind == "paired" and tb.ranking:
        rows = ranked_rows(tb, policy, console, tok)  # the run turns them into pairs unless it trains on rankings
    elif kind == "unpaired" and tb.ranking:
        raise UserError("data.testbed.ranking=true makes ranked data, and this algorithm needs unpaired data; accepted: "
                        "data.testbed.ranking=false (the pairs split into desirable / undesirable completions)")
    elif kind == "paired":
        rows = preference_rows(tb, policy, console, tok)
    elif kind == "unpaired":
        # The testbed's native unpaired data: every pair split into (chosen, desirable) and
        # (rejected, undesirable), as data.convert=paired_to_unpaired does for a user's pairs.
        rows = convert_rows(preference_rows(tb, policy, console, tok), "paired", "unpaired", source)
    elif kind == "demonstrations" and task.real_checkpoint:
        rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in preference_rows(tb, policy, console, tok)
                if r["gold_chosen"] == 1.0]
    elif kind == "demonstrations":
        rows = demonstration_rows(task, tb.pair_prompts, tb.pair_seed + 1)
    else:  # prompt_only
        rows = [{"prompt": _conv(p)} for p in task.sample_prompts(tb.pair_prompts, random.Random(tb.pair_seed), split="train")]
    return World(task=task, tokenizer=tok, policy_path=policy,
                 heldout={sp: heldout_prompts(task, sp, tb.eval_prompts) for sp in ("val", "test")},
                 rows_by_kind={kind: rows})
