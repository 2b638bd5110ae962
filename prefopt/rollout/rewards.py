"""Reward sources for online methods (config group ``reward``, conf/reward/*.yaml).

    reward=auto                      the testbed task's gold reward on testbed data (the default;
                                     needs no trained reward model); an error on a user's data
    reward=arith_exact | reviews_gold  the testbed's gold rewards as callables
    reward=function reward.function=MODULE:FUNCTION
                                     fn(prompts: list[str], completions: list[str], **kw) -> list[float]
                                     kw: prompt_ids, completion_ids, finished (and reward.kwargs)
    reward=model reward.path=DIR     any HF sequence-classification checkpoint with one output
                                     (e.g. the model/ of an ``algo=reward`` run)
    reward=sum reward.terms=[...]    Σ_i weight_i · term_i, each term a function or a model
    reward=ensemble reward.paths=[DIR,...] reward.aggregate=mean|min|mean_minus_std
                                     M reward models, standardised and aggregated (prefopt.rollout.ensemble)
    reward=judge reward.judge.name=smollm2|model|function|gold
                                     a pairwise judge (prefopt.label.judges): each sample's win rate
                                     against the other samples of its prompt

Then, in this order: ``missing_eos_penalty`` is subtracted from completions that hit
max_new_tokens without EOS (TRL's option of the same name), and the total is clipped to
[−clip, clip] when ``clip`` is set. A source returns a float32 tensor [N].
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from prefopt.data.tokenize import pad_batch
from prefopt.core.errors import UserError
from prefopt.rollout import ensemble

KINDS = ("auto", "function", "model", "sum", "ensemble", "judge")


@dataclass
class RewardTerm:
    kind: str = "function"  # function | model
    function: Optional[str] = None  # MODULE:FUNCTION
    path: Optional[str] = None  # sequence-classification checkpoint
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)  # extra keyword arguments of the function


@dataclass
class RewardConfig:
    """The ``reward`` config group."""

    name: str = "auto"
    kind: str = "auto"  # auto | function | model | sum
    function: Optional[str] = None
    path: Optional[str] = None
    kwargs: dict = field(default_factory=dict)
    terms: list[RewardTerm] = field(default_factory=list)  # kind=sum
    missing_eos_penalty: Optional[float] = None  # subtracted when a completion has no EOS
    clip: Optional[float] = None  # clip the total to [−clip, clip]
    sequences_per_device: int = 64  # reward-model batch
    # kind=ensemble (prefopt.rollout.ensemble): member directories, their aggregate, λ of mean − λ·std,
    # and whether each member is standardised on the first batch it scores.
    paths: list[str] = field(default_factory=list)
    aggregate: str = "mean"  # mean | min | mean_minus_std
    ensemble_lambda: float = 1.0
    ensemble_normalize: bool = True
    # kind=judge: ``name``, a conf/judge option, plus any of its keys to override (null: its default).
    judge: dict = field(default_factory=dict)


# ---- sources ------------------------------------------------------------------------------------


class FunctionReward:
    def __init__(self, spec: Optional[str], kwargs: Optional[dict] = None, key: str = "reward.function"):
        self.fn = load_function(spec, key)
        self.kwargs = dict(kwargs or {})
        self.name = spec.split(":")[-1]
        self.key = key

    def __call__(self, prompts, completions, **kw) -> torch.Tensor:
        out = self.fn(prompts, completions, **kw, **self.kwargs)
        try:
            vals = [float(v) for v in out]
        except (TypeError, ValueError):
            raise UserError(f"{self.key}: {self.name} must return a list of numbers, one per completion; "
                            f"got {type(out).__name__}") from None
        if len(vals) != len(completions):
            raise UserError(f"{self.key}: {self.name} returned {len(vals)} rewards for {len(completions)} completions; "
                            "accepted: one number per completion")
        return torch.tensor(vals, dtype=torch.float32)


def load_function(spec: Optional[str], key: str = "reward.function") -> Callable:
    if not spec or ":" not in spec:
        raise UserError(f"{key}='{spec}': expected MODULE:FUNCTION, e.g. prefopt.testbed.rewards:arith_exact_match")
    module, _, name = spec.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"{key}='{spec}': cannot import module '{module}' ({str(e).splitlines()[0]}); "
                        "accepted: an importable MODULE:FUNCTION") from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise UserError(f"{key}='{spec}': module '{module}' has no function '{name}'; accepted: an importable "
                        "MODULE:FUNCTION with signature fn(prompts, completions, **kw) -> list[float]")
    return fn


class ModelReward:
    """A sequence classifier with one output, scored on prompt + completion at the last non-pad
    token, exactly as ``AutoModelForSequenceClassification`` pools (the way ``algo=reward`` trains).

    When the reward model's tokenizer has the policy's vocabulary, it scores the very token ids
    that were sampled (prompt ids + completion ids, as in training pairs); otherwise it
    re-tokenizes the text through its own chat template."""

    def __init__(self, path: Optional[str], policy_tokenizer, device=None, batch_size: int = 64, key: str = "reward.path",
                 placement=None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not path:
            raise UserError(f"{key} is missing; accepted: {key}=DIR, a sequence-classification checkpoint "
                            "(e.g. the model/ directory of an algo=reward run)")
        local = os.path.expanduser(path)
        if not os.path.isdir(local) or not os.path.exists(os.path.join(local, "config.json")):
            raise UserError(f"{key}: '{path}' is not a model directory (no config.json); accepted: a directory with an "
                            "HF sequence-classification checkpoint, e.g. the model/ of an algo=reward run")
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(local)
        except (OSError, ValueError) as e:
            raise UserError(f"{key}: cannot load '{path}' as a sequence classifier ({str(e).splitlines()[0]})") from None
        if self.model.config.num_labels != 1:
            raise UserError(f"{key}: '{path}' has num_labels={self.model.config.num_labels}; accepted: a reward model "
                            "with one output (num_labels=1)")
        try:
            self.tok = AutoTokenizer.from_pretrained(local)
        except (OSError, ValueError):
            self.tok = policy_tokenizer
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tok.pad_token_id
        self.same_vocab = self.tok.get_vocab() == policy_tokenizer.get_vocab()
        self.device = device or torch.device("cpu")
        self.model.eval()
        if placement is not None:
            placement.frozen(self.model)  # sharded under fsdp2; gathered for each rollout
        else:
            self.model.to(self.device).requires_grad_(False)
        self.batch_size = batch_size
        self.name = "reward_model"

    def _text_ids(self, prompt: str, completion: str) -> list:
        if getattr(self.tok, "chat_template", None):
            ids = self.tok.apply_chat_template([{"role": "user", "content": prompt},
                                                {"role": "assistant", "content": completion}], tokenize=True)
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return self.tok(prompt + completion)["input_ids"]

    @torch.no_grad()
    def __call__(self, prompts, completions, prompt_ids=None, completion_ids=None, **kw) -> torch.Tensor:
        if self.same_vocab and prompt_ids is not None and completion_ids is not None:
            seqs = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids)]
        else:
            seqs = [self._text_ids(p, c) for p, c in zip(prompts, completions)]
        out = []
        pad = self.model.config.pad_token_id
        for i in range(0, len(seqs), self.batch_size):
            chunk = seqs[i : i + self.batch_size]
            b = pad_batch([[] for _ in chunk], chunk, pad)  # whole sequences; the loss mask is unused
            ids, am = b["input_ids"], b["attention_mask"]
            logits = self.model(input_ids=ids.to(self.device), attention_mask=am.to(self.device), use_cache=False).logits
            out.append(logits[:, 0].float().cpu())
        return torch.cat(out)


class GoldReward:
    def __init__(self, fn, name):
        self.fn, self.name = fn, name

    def __call__(self, prompts, completions, **kw) -> torch.Tensor:
        return torch.tensor(self.fn(prompts, completions), dtype=torch.float32)


class JudgeReward:
    """A pairwise judge as a per-completion reward: the win rate of y_i among the K samples of its
    prompt, score_i = 1/(K − 1) Σ_{j≠i} P(y_i ≻ y_j) (K = 2: P(y_1 ≻ y_2) and its complement; a
    lone sample: ½). A rollout lays a prompt's samples out consecutively, so a group is a run of
    equal prompts (:func:`prefopt.label.judges.consecutive_groups`)."""

    def __init__(self, judge):
        self.judge, self.name = judge, f"judge_{judge.name}"

    def __call__(self, prompts, completions, prompt_ids=None, completion_ids=None, **kw) -> torch.Tensor:
        from prefopt.label.judges import consecutive_groups, group_scores

        keys = [tuple(p) for p in prompt_ids] if prompt_ids is not None else list(prompts)
        return group_scores(self.judge, list(prompts), list(completions), consecutive_groups(keys),
                            prompt_ids=prompt_ids, completion_ids=completion_ids)


class Reward:
    """Σ weight · term, then the missing-EOS penalty, then clipping."""

    def __init__(self, terms: list, cfg: RewardConfig):
        self.terms = terms  # [(weight, source)]
        self.cfg = cfg
        seen: dict = {}
        for _, src in terms:  # unique metric names when a sum has two terms of one kind
            n = seen[src.name] = seen.get(src.name, 0) + 1
            if n > 1:
                src.name = f"{src.name}_{n}"

    @property
    def uses_model(self) -> bool:
        return any(isinstance(s, ModelReward) or getattr(s, "uses_model", False) for _, s in self.terms)

    def __call__(self, prompts, completions, *, prompt_ids=None, completion_ids=None, finished=None, with_terms=False):
        total = torch.zeros(len(completions))
        parts = {}
        for w, src in self.terms:
            v = src(prompts, completions, prompt_ids=prompt_ids, completion_ids=completion_ids,
                    finished=None if finished is None else finished.tolist())
            parts[f"reward/{src.name}"] = v
            parts.update(getattr(src, "last_parts", None) or {})  # e.g. an ensemble's members and their std
            total = total + w * v
        if self.cfg.missing_eos_penalty is not None and finished is not None:
            total = total - self.cfg.missing_eos_penalty * (~finished).float()
        if self.cfg.clip is not None:
            total = total.clamp(-self.cfg.clip, self.cfg.clip)
        return (total, parts) if with_terms else total

    def state_dict(self) -> dict:
        """State of the sources that carry some (an ensemble's frozen standardisation), for checkpoints."""
        return {str(i): src.state_dict() for i, (_, src) in enumerate(self.terms) if hasattr(src, "state_dict")}

    def load_state_dict(self, state: dict) -> None:
        for i, (_, src) in enumerate(self.terms):
            if str(i) in state and hasattr(src, "load_state_dict"):
                src.load_state_dict(state[str(i)])

    def describe(self) -> str:
        s = " + ".join(f"{w:g}·{getattr(src, 'label', src.name)}" for w, src in self.terms)
        if self.cfg.missing_eos_penalty is not None:
            s += f" − {self.cfg.missing_eos_penalty:g}·[no EOS]"
        if self.cfg.clip is not None:
            s = f"clip({s}, ±{self.cfg.clip:g})"
        return s


def check(cfg: RewardConfig) -> None:
    """Cheap checks that need no model: run before anything loads."""
    if cfg.kind not in KINDS:
        raise UserError(f"reward.kind='{cfg.kind}' is not known; accepted: {', '.join(KINDS)}")
    if cfg.kind == "function":
        load_function(cfg.function, "reward.function")
    if cfg.kind == "model" and not cfg.path:
        raise UserError("reward=model needs reward.path=DIR (a sequence-classification checkpoint, e.g. the model/ "
                        "directory of an algo=reward run)")
    if cfg.kind == "sum":
        if not cfg.terms:
            raise UserError("reward=sum needs reward.terms: a list of {kind: function|model, function|path, weight}")
        for i, t in enumerate(cfg.terms):
            if t.kind not in ("function", "model"):
                raise UserError(f"reward.terms[{i}].kind='{t.kind}' is not known; accepted: function, model")
            if t.kind == "function":
                load_function(t.function, f"reward.terms[{i}].function")
            elif not t.path:
                raise UserError(f"reward.terms[{i}] is a model and needs a path")
    if cfg.kind == "ensemble":
        ensemble.check(cfg)
    if cfg.kind == "judge":
        from prefopt.label import judges

        judges.check(judges.resolve(cfg.judge, "reward.judge"), "reward.judge")
    if cfg.clip is not None and cfg.clip <= 0:
        raise UserError(f"reward.clip={cfg.clip} must be > 0 (or null)")
    if cfg.sequences_per_device <= 0:
        raise UserError(f"reward.sequences_per_device={cfg.sequences_per_device} must be positive")


def build_reward(cfg: RewardConfig, tokenizer=None, device=None, gold_fn=None, task: Optional[str] = None,
                 placement=None) -> Reward:
    """The reward source of a run. ``gold_fn``/``task``: the testbed task's gold reward (kind=auto)."""
    check(cfg)
    if cfg.kind == "auto":
        if gold_fn is None:
            raise UserError("this algo needs a reward and the data has no built-in one; accepted: "
                            "reward=model reward.path=DIR, reward=function reward.function=MODULE:FUNCTION, or reward=sum")
        terms = [(1.0, GoldReward(gold_fn, f"{task or 'task'}_gold"))]
    elif cfg.kind == "function":
        terms = [(1.0, FunctionReward(cfg.function, cfg.kwargs))]
    elif cfg.kind == "model":
        terms = [(1.0, ModelReward(cfg.path, tokenizer, device, cfg.sequences_per_device, placement=placement))]
    elif cfg.kind == "ensemble":
        members = [ModelReward(p, tokenizer, device, cfg.sequences_per_device, f"reward.paths[{i}]", placement=placement)
                   for i, p in enumerate(ensemble.check(cfg))]
        terms = [(1.0, ensemble.EnsembleReward(members, cfg.aggregate, cfg.ensemble_lambda, cfg.ensemble_normalize,
                                               all_sum=placement.all_sum if placement is not None else None))]
    elif cfg.kind == "judge":
        from prefopt.label import judges

        judge = judges.build_judge(judges.resolve(cfg.judge, "reward.judge"), tokenizer=tokenizer, gold_fn=gold_fn,
                                   device=device, key="reward.judge")
        terms = [(1.0, JudgeReward(judge))]
    else:
        terms = []
        for i, t in enumerate(cfg.terms):
            if t.kind == "function":
                src = FunctionReward(t.function, t.kwargs, f"reward.terms[{i}].function")
            else:
                src = ModelReward(t.path, tokenizer, device, cfg.sequences_per_device, f"reward.terms[{i}].path",
                                  placement=placement)
            terms.append((float(t.weight), src))
    return Reward(terms, cfg)
