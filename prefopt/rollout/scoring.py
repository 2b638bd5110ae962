"""Per-completion scorers, the leaf that reward sources (:mod:`prefopt.rollout.rewards`) and judges
(:mod:`prefopt.rollout.judges`) both build on.

A scorer is called as ``scorer(prompts, completions, **kw) -> Tensor[N]`` (float32, one number per
completion; ``kw``: prompt_ids, completion_ids, finished) and declares its hooks on :class:`Scorer`,
whose defaults do nothing, so that callers call every hook unconditionally.
"""

from __future__ import annotations

import importlib
import os
import traceback
from types import MappingProxyType
from typing import Callable, Mapping, Optional

import torch

from prefopt.core.errors import UserError, first_line
from prefopt.data.tokenize import pad_batch


class Scorer:
    """One number per completion, and the hooks a caller reads around it."""

    name: str = "scorer"
    uses_model: bool = False  # a neural network scores (evaluation then reports it as the proxy reward)
    # Metrics of the last call besides the score itself (``reward/…``, e.g. an ensemble's members).
    last_parts: Mapping = MappingProxyType({})

    def __call__(self, prompts, completions, **kw) -> torch.Tensor:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """How :meth:`prefopt.rollout.rewards.Reward.describe` names this term."""
        return self.name

    def state_dict(self) -> dict:
        """State to carry in checkpoints (e.g. an ensemble's frozen standardisation)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def load_function(spec: Optional[str], key: str = "reward.function") -> Callable:
    if not spec or ":" not in spec:
        raise UserError(f"{key}='{spec}': expected MODULE:FUNCTION, e.g. prefopt.testbed.rewards:arith_exact_match")
    module, _, name = spec.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"{key}='{spec}': cannot import module '{module}' ({str(e).splitlines()[0]}); "
                        "accepted: an importable MODULE:FUNCTION") from None
    except (Exception, SystemExit) as e:  # the user's module itself: a syntax error, or code that raises on import
        raise UserError(f"{key}='{spec}': importing module '{module}' failed with {first_line(e)}{_at(e)}; "
                        "accepted: a module that imports cleanly") from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise UserError(f"{key}='{spec}': module '{module}' has no function '{name}'; accepted: an importable "
                        "MODULE:FUNCTION with signature fn(prompts, completions, **kw) -> list[float]")
    return fn


def _at(e: BaseException) -> str:
    """`` (file, line N)``: where in the user's code ``e`` was raised (a SyntaxError names it itself)."""
    if isinstance(e, SyntaxError):
        return ""
    frames = traceback.extract_tb(e.__traceback__)
    return f" ({os.path.basename(frames[-1].filename)}, line {frames[-1].lineno})" if frames else ""


def _number(v) -> float:
    if isinstance(v, (str, bytes)):  # float("3") would read a digit string as a score
        raise TypeError(type(v).__name__)
    return float(v)


class FunctionReward(Scorer):
    """``fn(prompts, completions, **kw, **kwargs) -> list[float]``, checked to give one number per completion."""

    def __init__(self, spec: Optional[str], kwargs: Optional[dict] = None, key: str = "reward.function"):
        self.fn = load_function(spec, key)
        self.kwargs = dict(kwargs or {})
        self.spec, self.name = spec, spec.split(":")[-1]
        self.key = key

    def __call__(self, prompts, completions, **kw) -> torch.Tensor:
        try:
            out = self.fn(prompts, completions, **kw, **self.kwargs)
        except UserError:
            raise
        except Exception as e:  # the user's code: one line naming it, not a traceback through ours
            raise UserError(f"{self.key}={self.spec} raised {first_line(e)}{_at(e)}; accepted: a function that returns "
                            "one number per completion") from None
        accepted = "accepted: fn(prompts, completions, **kw) -> list[float], one number per completion"
        if isinstance(out, (str, bytes, dict)) or not hasattr(out, "__iter__"):
            raise UserError(f"{self.key}={self.spec} returned {type(out).__name__}, expected a list of numbers; {accepted}")
        vals = []
        for i, v in enumerate(out):
            try:
                vals.append(_number(v))
            except (TypeError, ValueError):
                raise UserError(f"{self.key}={self.spec} returned {type(v).__name__}, expected a number (completion {i}: "
                                f"{v!r:.40}); {accepted}") from None
        if len(vals) != len(completions):
            raise UserError(f"{self.key}: {self.name} returned {len(vals)} rewards for {len(completions)} completions; "
                            "accepted: one number per completion")
        return torch.tensor(vals, dtype=torch.float32)


class GoldReward(Scorer):
    """A callable handed in by the caller (the testbed task's gold reward), as floats."""

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name

    def __call__(self, prompts, completions, **kw) -> torch.Tensor:
        return torch.tensor(self.fn(list(prompts), list(completions)), dtype=torch.float32)


class ModelReward(Scorer):
    """A sequence classifier with one output, scored on prompt + completion at the last non-pad
    token, exactly as ``AutoModelForSequenceClassification`` pools (the way ``algo=reward`` trains).

    When the reward model's tokenizer has the policy's vocabulary, it scores the very token ids
    that were sampled (prompt ids + completion ids, as in training pairs); otherwise it
    re-tokenizes the text through its own chat template. Without a policy tokenizer the model's own
    must be in its directory."""

    uses_model = True

    def __init__(self, path: Optional[str], policy_tokenizer=None, device=None, batch_size: int = 64,
                 key: str = "reward.path", placement=None):
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
            if policy_tokenizer is None:
                raise UserError(f"{key}: '{path}' has no tokenizer; accepted: a checkpoint saved with its tokenizer "
                                "(as algo=reward saves it)") from None
            self.tok = policy_tokenizer
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tok.pad_token_id
        self.same_vocab = policy_tokenizer is not None and self.tok.get_vocab() == policy_tokenizer.get_vocab()
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
