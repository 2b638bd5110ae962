"""Value functions for PPO: a value head on the policy, or a separate critic.

V[b, t] is the value of the state *before* token t (prefix x, y_<t), read from the hidden state at
position t−1, the same alignment as the log-probs in :class:`prefopt.models.logprobs.TokenStats`.

- ``critic=shared``: a linear head on the policy's last hidden states. It reuses the hidden states
  of the policy forward that computed the log-probs just before (a forward hook), so the value
  costs no extra pass; its gradient also flows into the shared trunk (or its LoRA adapters).
- ``critic=separate``: its own decoder + linear head, initialized from ``algo.critic_path``, else
  from the reward model when the reward is one (TRL's default), else from the policy's initial
  weights with a zero head.

Either way the value parameters are registered as a submodule of the policy, so the one trainer
optimizes, clips and checkpoints them with the policy's; they are left out of the saved policy
artifact (``model/`` stays a plain policy).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from prefopt.core.errors import UserError
from prefopt.models.logprobs import _unwrap, find_head


def _align(v: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] per-position outputs → value of token t at column t (from position t−1), masked."""
    out = torch.zeros_like(v)
    out[:, 1:] = v[:, :-1]
    m = torch.zeros_like(loss_mask, dtype=torch.bool)
    m[:, 1:] = loss_mask[:, 1:].bool()
    return out * m


class SharedValueHead(nn.Module):
    def __init__(self, policy):
        super().__init__()
        head = find_head(policy)
        if head is None:
            raise UserError("algo.critic=shared needs a policy whose decoder prefopt can read; accepted: algo.critic=separate")
        hidden = head.weight.shape[1]
        self.v = nn.Linear(hidden, 1)
        nn.init.zeros_(self.v.weight)
        nn.init.zeros_(self.v.bias)
        self._captured = None
        # nn.Module attribute assignment would register the decoder as our submodule: avoid it.
        object.__setattr__(self, "_decoder", head.decoder)
        self._hook = head.decoder.register_forward_hook(self._capture, with_kwargs=True)

    def _capture(self, module, args, kwargs, output):
        self._captured = (kwargs.get("input_ids"), output.last_hidden_state)

    def values(self, batch) -> torch.Tensor:
        ids = batch["input_ids"]
        cap, self._captured = self._captured, None
        if cap is not None and cap[0] is ids:
            h = cap[1]
        else:
            h = self._decoder(input_ids=ids, attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
        v = self.v(h.to(self.v.weight.dtype)).squeeze(-1).float()
        return _align(v, batch["loss_mask"])


class Critic(nn.Module):
    """A sequence-classification model with one output used per token."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def values(self, batch) -> torch.Tensor:
        base = _unwrap(self.model)
        decoder = getattr(base, base.base_model_prefix)
        h = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).last_hidden_state
        v = base.score(h.to(base.score.weight.dtype)).squeeze(-1).float()
        return _align(v, batch["loss_mask"])


def build_value_model(acfg, policy, mcfg, base_path: Optional[str], reward_cfg=None, vocab_size=None, seed: int = 0,
                      device=None, pad_token_id=None):
    """The value model of ``algo.critic``, attached to ``policy`` as submodule ``prefopt_value``."""
    if acfg.critic == "shared":
        vm = SharedValueHead(policy)
        desc = "value head on the policy"
    else:
        from transformers import AutoConfig, AutoModelForSequenceClassification

        path = acfg.critic_path
        if path is None and reward_cfg is not None and reward_cfg.kind == "model":
            path = reward_cfg.path
        src = path or base_path
        if src is None and mcfg.arch is not None:
            arch = dict(mcfg.arch)
            config = AutoConfig.for_model(arch.pop("model_type"), **arch, num_labels=1, pad_token_id=pad_token_id)
            config.vocab_size = config.vocab_size if "vocab_size" in mcfg.arch else vocab_size
            torch.manual_seed(seed)
            model = AutoModelForSequenceClassification.from_config(config)
        else:
            try:
                model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1)
            except (OSError, ValueError) as e:
                raise UserError(f"algo.critic_path: cannot load '{src}' as a critic ({str(e).splitlines()[0]})") from None
        if path is None:
            nn.init.zeros_(model.score.weight)  # V ≡ 0 at the start: the trunk is the policy's, the head new
        model.config.use_cache = False
        vm = Critic(model)
        desc = f"separate critic from {'the policy' if path is None else path}"
    base = _unwrap(policy)
    policy.add_module("prefopt_value", vm) if not hasattr(policy, "get_base_model") else base.add_module("prefopt_value", vm)
    if device is not None:
        vm.to(device)
    # Keep the value weights out of the saved policy: model/ stays a plain causal LM.
    keys = [f"prefopt_value.{k}" for k in vm.state_dict()]
    base._keys_to_ignore_on_save = list(getattr(base, "_keys_to_ignore_on_save", None) or []) + keys
    return vm, desc
