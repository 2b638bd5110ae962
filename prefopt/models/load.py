"""Load the policy, its reference and tokenizer; LoRA through peft; 4-bit through bitsandbytes;
save standard HF artifacts."""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from contextlib import contextmanager, nullcontext
from typing import Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from prefopt.core.config import ModelConfig
from prefopt.core.errors import UserError
from prefopt.core.modules import dropout_off
from prefopt.models import precision
from prefopt.models.logprobs import Reference

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def torch_dtype(name: str):
    try:
        return TORCH_DTYPES[name]
    except KeyError:
        raise UserError(f"model.dtype='{name}' is not known; accepted: {', '.join(TORCH_DTYPES)}") from None


def _check_path(path: str, key: str):
    # A string with a path separator that doesn't exist locally is a typo, not a hub id; say so
    # instead of letting the hub client time out.
    looks_local = path.startswith((".", "/", "~")) or os.path.sep in path and path.count("/") > 1
    if looks_local and not os.path.exists(os.path.expanduser(path)):
        raise UserError(f"{key}: '{path}' does not exist; accepted: a local model directory or a hub id")


def load_tokenizer(path: str, trust_remote_code: bool = False):
    _check_path(path, "model.tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise UserError(f"model.tokenizer: cannot load a tokenizer from '{path}' ({str(e).splitlines()[0]})") from None
    if tok.pad_token_id is None:
        # Padding positions are masked everywhere; any id works, eos is the usual choice.
        tok.pad_token = tok.eos_token
    return tok


def _quantization(cfg: ModelConfig):
    if not cfg.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch_dtype(cfg.bnb_4bit_compute_dtype),
    )


def build_random(cfg: ModelConfig, vocab_size: int, seed: int = 0, auto_cls=AutoModelForCausalLM, meta: bool = False,
                 **config_kw):
    """A randomly initialized model of a family from an architecture config (no weights needed);
    ``meta``: its skeleton on the meta device (no memory), to be filled later."""
    arch = dict(cfg.arch)
    model_type = arch.pop("model_type", None)
    if model_type is None:
        raise UserError("model.arch needs a 'model_type' key (e.g. llama, qwen2, mistral, gemma2)")
    arch.setdefault("vocab_size", vocab_size)
    try:
        config = AutoConfig.for_model(model_type, **arch, **config_kw)
    except (ValueError, KeyError) as e:
        raise UserError(f"model.arch: {str(e).splitlines()[0]}") from None
    torch.manual_seed(seed)
    with torch.device("meta") if meta else nullcontext():
        return auto_cls.from_config(config, dtype=torch.float32)


def _load_trainable(cfg: ModelConfig, auto_cls, path, vocab_size, seed, *, task_type: str, head_seed=None,
                    load_errors=(OSError,), what: str = "", meta: bool = False, **config_kw):
    """Base weights (a checkpoint, or random ``model.arch`` weights; optionally 4-bit), gradient
    checkpointing, and LoRA adapters when model.lora.r > 0. Shared by the policy and the reward model.

    ``meta``: the same model without reading any weights, on the meta device (the ranks other than
    0 under fsdp2, which receive their shards from rank 0; see prefopt.distributed.placement)."""
    path = path or cfg.name_or_path
    if cfg.dtype == "auto":  # a caller that did not go through the run's config stage
        cfg = dataclasses.replace(cfg, dtype=precision.resolve(cfg, cuda=torch.cuda.is_available()).dtype)
    tmp = None
    if meta:
        if cfg.arch is not None:
            model = build_random(cfg, vocab_size, seed, auto_cls, meta=True, **config_kw)
        else:
            _check_path(path, "model.name_or_path")
            try:
                config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, **config_kw)
            except load_errors as e:
                raise UserError(f"model.name_or_path: cannot load '{path}'{what} ({str(e).splitlines()[0]})") from None
            if cfg.attn_implementation:
                config._attn_implementation = cfg.attn_implementation
            with torch.device("meta"):
                model = auto_cls.from_config(config, dtype=torch_dtype(cfg.dtype) if cfg.dtype != "auto" else None,
                                             trust_remote_code=cfg.trust_remote_code)
    elif cfg.arch is not None:
        model = build_random(cfg, vocab_size, seed, auto_cls, **config_kw)
        if cfg.load_in_4bit:
            # bitsandbytes quantizes while loading; go through a saved copy of the random weights.
            tmp = tempfile.TemporaryDirectory(prefix="prefopt-arch-")
            model.save_pretrained(tmp.name)
            path, model = tmp.name, None
        else:
            model = model.to(torch_dtype(cfg.dtype) if cfg.dtype != "auto" else torch.float32)
    else:
        model = None
        _check_path(path, "model.name_or_path")
    if model is None and not meta:
        kw = dict(dtype=torch_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code,
                  quantization_config=_quantization(cfg), **config_kw)
        if cfg.attn_implementation:
            kw["attn_implementation"] = cfg.attn_implementation
        if head_seed is not None:
            torch.manual_seed(head_seed)  # a new head's initialization (the reward model's score)
        try:
            model = auto_cls.from_pretrained(path, **kw)
        except load_errors as e:
            raise UserError(f"model.name_or_path: cannot load '{path}'{what} ({str(e).splitlines()[0]})") from None
    if tmp is not None:
        tmp.cleanup()
    if "pad_token_id" in config_kw:
        model.config.pad_token_id = config_kw["pad_token_id"]
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if cfg.lora.r > 0:
        model = apply_lora(model, cfg, task_type=task_type)
    elif cfg.load_in_4bit:
        raise UserError("model.load_in_4bit=true trains 4-bit weights only through adapters; set model.lora.r > 0 (QLoRA)")
    # from_pretrained returns eval mode; a trainable model stays in train mode from here on and
    # passes without gradient use dropout_off (eval mode would let bitsandbytes repack 4-bit CPU
    # weights into a layout that breaks later backward passes).
    return model.train()


def load_policy(cfg: ModelConfig, path: Optional[str] = None, vocab_size: Optional[int] = None, seed: int = 0,
                meta: bool = False):
    """The trainable policy: base weights (optionally 4-bit), plus LoRA adapters when model.lora.r > 0."""
    return _load_trainable(cfg, AutoModelForCausalLM, path, vocab_size, seed, task_type="CAUSAL_LM", meta=meta)


def apply_lora(model, cfg: ModelConfig, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    target = cfg.lora.target_modules
    target = list(target) if not isinstance(target, str) else target
    lcfg = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=target,
        task_type=task_type,  # SEQ_CLS: peft keeps the score head trainable (modules_to_save)
    )
    try:
        return get_peft_model(model, lcfg)
    except ValueError as e:
        raise UserError(f"model.lora.target_modules: {str(e).splitlines()[0]}") from None


# ---- reward model (a sequence classifier with one output) --------------------------------------


def load_reward_model(cfg: ModelConfig, path: Optional[str] = None, vocab_size: Optional[int] = None, seed: int = 0,
                      pad_token_id: Optional[int] = None, meta: bool = False):
    """An ``AutoModelForSequenceClassification`` with num_labels=1, initialized from the same base
    as a policy would be (a checkpoint's decoder plus a new score head, or a random ``model.arch``),
    with pad_token_id set so it scores the last non-pad token; LoRA (task SEQ_CLS) and 4-bit as for
    the policy."""
    from transformers import AutoModelForSequenceClassification

    return _load_trainable(cfg, AutoModelForSequenceClassification, path, vocab_size, seed, task_type="SEQ_CLS",
                           head_seed=seed, load_errors=(OSError, ValueError), what=" as a sequence classifier",
                           num_labels=1, pad_token_id=pad_token_id, meta=meta)


def is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


class FrozenReference(Reference):
    """A frozen copy of the initial policy."""

    def __init__(self, model):
        self.model = model.eval().requires_grad_(False)
        self.place = None  # set by placement when the copy is sharded

    def to(self, device):
        self.model.to(device)
        return self

    def active(self):
        """Context manager yielding the module that computes the reference (under fsdp2: inside a
        forward of its sharded root, so its root parameters are gathered)."""
        return self.place.forward_scope(self.model) if self.place is not None else nullcontext(self.model)


class AdapterDisabledReference(Reference):
    """Under LoRA the reference is the policy with its adapters switched off: one copy in memory."""

    def __init__(self, policy):
        self.policy = policy

    @property
    def model(self):
        return self.policy

    def to(self, device):
        return self

    @contextmanager
    def active(self):
        # Dropout off for the reference pass: the reference is a fixed function of its input.
        with dropout_off(self.policy), self.policy.disable_adapter():
            yield self.policy


class LazyReference(Reference):
    """The initial policy, loaded only when first used. Evaluation needs π_ref even for methods
    that train without one (SFT, ORPO, SimPO); loading it lazily keeps it out of memory during
    training."""

    def __init__(self, build):
        self._build = build
        self._ref = None
        self._device = None

    def _get(self):
        if self._ref is None:
            self._ref = self._build()
            if self._device is not None:
                self._ref.to(self._device)
        return self._ref

    def to(self, device):
        self._device = device
        if self._ref is not None:
            self._ref.to(device)
        return self

    def active(self):
        return self._get().active()


def make_reference(policy, cfg: ModelConfig, path: Optional[str] = None, vocab_size=None, seed: int = 0,
                   meta: bool = False):
    """``meta``: a skeleton only, filled from the policy's initial weights after sharding (fsdp2)."""
    if is_peft(policy):
        return AdapterDisabledReference(policy)
    if meta:
        return FrozenReference(load_policy(cfg, path=path, vocab_size=vocab_size, seed=seed, meta=True))
    if cfg.arch is not None:
        # Same seed -> same random weights as the policy's initialization.
        return FrozenReference(build_random(cfg, vocab_size, seed).to(torch_dtype(cfg.dtype)))
    return FrozenReference(copy.deepcopy(policy))


def lazy_reference(cfg: ModelConfig, path: Optional[str], vocab_size=None, seed: int = 0, policy=None):
    """A reference for evaluation only: the adapter-disabled policy under LoRA (free), otherwise
    the initial weights reloaded on first use."""
    if policy is not None and is_peft(policy):
        return AdapterDisabledReference(policy)

    def build():
        return FrozenReference(load_policy(cfg, path=path, vocab_size=vocab_size, seed=seed))

    return LazyReference(build)


def consolidated(full_state: dict, rebuild):
    """A plain CPU model holding ``full_state`` (a sharded model's gathered weights), built by
    ``rebuild()`` on the meta device: what ``model/`` is saved from under fsdp2."""
    replica = rebuild()
    own = replica.state_dict()
    missing = [k for k in own if k not in full_state]
    if missing:
        raise RuntimeError(f"the gathered weights lack {missing[0]} (of {len(missing)} missing)")
    replica.load_state_dict({k: full_state[k] for k in own}, assign=True)
    return replica


def save_model(model, tokenizer, out_dir: str):
    """Standard HF artifacts: the full model or, under LoRA, the adapter; plus the tokenizer."""
    os.makedirs(out_dir, exist_ok=True)
    if is_peft(model) and getattr(model.peft_config.get("default"), "task_type", None) == "SEQ_CLS" \
            and getattr(model.get_base_model().config, "quantization_config", None) is None:
        # Reward models are consumed by plain AutoModelForSequenceClassification (the online
        # methods, other tools): merge the adapters into the weights and save the full model.
        # (QLoRA reward models keep the adapter: merging would re-quantize the base.)
        model = model.merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
