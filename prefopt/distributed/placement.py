"""Where every model lives and how it is wrapped: the one place for placement.

``trainer.strategy`` picks how the processes of a run share the work:

- ``none``: one process, the whole model on its device.
- ``ddp``: torch's ``DistributedDataParallel``: every process holds the whole model, gradients are
  all-reduced in buckets during the backward pass (overlapped with it).
- ``fsdp2``: PyTorch's ``fully_shard``: each decoder layer and the root are sharded over the
  processes, so parameters, gradients and optimizer state are 1/world per process; a layer's weights
  are all-gathered just before its forward and freed after.
- ``auto``: ``none`` for one process, ``ddp`` for several.

Every builder (policy, reference, reward model, critic) calls :meth:`Placement.trainable` or
:meth:`Placement.frozen`; everything that needs whole weights outside a training forward
(generation, evaluation, the rollout's scoring passes, the final ``model/``) goes through
:meth:`Placement.gathered`, which gathers each model once and frees it after.

Why the loss runs *as the policy's forward* (:meth:`Placement.call`): DDP only arms its gradient
reduction, and FSDP2 only gathers the root's parameters (embeddings, final norm, output head),
inside a forward of the wrapped module. prefopt's log-prob path calls the decoder and reads the
output head's weight itself (the fused kernel), bypassing ``model.forward``; running the whole
objective loss inside one registered forward covers every path an objective can take.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from prefopt.core.errors import UserError
from prefopt.core.modules import is_sharded

STRATEGIES = ("auto", "none", "ddp", "fsdp2")
_CALL = "prefopt_call"  # the method registered as an FSDP forward on a sharded root


def resolve_strategy(name: str, world_size: int) -> str:
    if name not in STRATEGIES:
        raise UserError(f"trainer.strategy='{name}' is not known; accepted: {', '.join(STRATEGIES)}")
    if name == "auto":
        return "none" if world_size == 1 else "ddp"
    if name == "none" and world_size > 1:
        raise UserError(f"trainer.strategy=none with {world_size} processes would train {world_size} independent "
                        "copies; accepted: auto, ddp or fsdp2 (or launch one process)")
    return name


def _env_world() -> tuple[int, int, int]:
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # One SLURM task per process without torchrun (Hydra's submitit launcher): submitit's
        # helper derives RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT from SLURM's variables.
        try:
            from submitit.helpers import TorchDistributedEnvironment

            TorchDistributedEnvironment().export()
        except ImportError:
            pass
    return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")))


def _fsdp():
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    return FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method


class _Caller(nn.Module):
    """DDP wraps a module and syncs gradients of what ran inside its forward: this forward runs
    any function (the objective's loss) with the policy registered as the submodule."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(*args, **kwargs)


def _decoder_layers(model) -> list:
    """Every decoder layer of every transformers model inside ``model`` (the policy, a critic
    attached to it, ...), found by the class names each model declares in ``_no_split_modules``
    (the layers that must stay whole on one device: the natural unit of sharding)."""
    names = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names]


def _call(self, fn, *args, **kwargs):
    return fn(*args, **kwargs)


@dataclass
class Placement:
    strategy: str = "none"  # none | ddp | fsdp2 (resolved)
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # Mixed precision under fsdp2: the compute / all-gather dtype; gradients are reduced in fp32.
    param_dtype: Optional[torch.dtype] = None
    _ddp: dict = field(default_factory=dict, repr=False)
    _models: list = field(default_factory=list, repr=False)  # every model placed, for gathered()

    # ---- processes ---------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and self.world > 1

    @property
    def grad_scale(self) -> float:
        """Factor on the loss before backward. prefopt's loss on each process is already divided by
        the global unit count, so the wanted gradient is the *sum* over processes; DDP and FSDP2
        average. (FSDP2's ``set_gradient_divide_factor(1)`` would sum, but needs PREMUL_SUM, which
        gloo does not have.)"""
        return float(self.world) if self.strategy in ("ddp", "fsdp2") else 1.0

    def barrier(self):
        if self.distributed:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (building a cache, say); the others then read what it made."""
        if not self.is_main:
            self.barrier()
        try:
            yield
        finally:
            if self.is_main:
                self.barrier()

    def all_sum(self, x: float) -> float:
        if not self.distributed:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item())

    def all_max(self, x: float) -> float:
        if not self.distributed:
            return x
        t = torch.tensor([x], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t.item())

    def broadcast_object(self, obj):
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # ---- models ------------------------------------------------------------------------------
    @property
    def meta_init(self) -> bool:
        """Under fsdp2 only rank 0 reads the weights; the others build the model on ``meta`` (no
        memory) and receive their shards from rank 0 (:meth:`materialize`)."""
        return self.strategy == "fsdp2" and self.world > 1 and not self.is_main

    def _shard(self, model, trainable: bool):
        FSDPModule, MixedPrecisionPolicy, fully_shard, register = _fsdp()
        kw = {}
        if self.param_dtype is not None and self.param_dtype != torch.float32:
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=self.param_dtype, reduce_dtype=torch.float32)
        layers = _decoder_layers(model)
        if not layers:
            raise UserError(f"trainer.strategy=fsdp2: found no decoder layers in {type(model).__name__} to shard "
                            "(its class declares no _no_split_modules); accepted: a transformers decoder model, "
                            "or trainer.strategy=ddp")
        for layer in layers:  # innermost first: each layer its own all-gather unit
            fully_shard(layer, **kw)
        fully_shard(model, **kw)
        # The loss (or a frozen model's scoring) runs as a registered forward of the root, so the
        # root's own parameters are gathered for it and its gradients reduce-scattered after.
        if not hasattr(model, _CALL):
            object.__setattr__(model, _CALL, _call.__get__(model))
        register(model, _CALL)
        if not trainable:
            model.requires_grad_(False)
            # A root keeps its parameters gathered after forward by default (the backward would
            # gather them again at once); a frozen model has no backward: free them.
            model.set_reshard_after_forward(True, recurse=False)
        return model

    def trainable(self, model):
        """The policy (with any value head or critic attached as its submodule) placed for training."""
        self._models.append(model)
        if self.strategy == "fsdp2":
            return self._shard(model, trainable=True)
        model.to(self.device)
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel as DDP

            # find_unused_parameters: a micro-batch may leave some trainable parameters out of its
            # graph (a critic a loss does not read, say); DDP then still finishes its reduction.
            self._ddp[id(model)] = DDP(_Caller(model), find_unused_parameters=True)
        return model

    def frozen(self, model):
        """A model that is only read (the reference, a reward model)."""
        self._models.append(model)
        model.requires_grad_(False)
        if self.strategy == "fsdp2":
            return self._shard(model, trainable=False)
        return model.to(self.device)

    def materialize(self, model, full_state: Optional[dict]):
        """After sharding: give every rank its shards of ``full_state`` (rank 0's full weights and
        buffers; ``None`` elsewhere), broadcast from rank 0 one tensor at a time, so that no rank
        ever holds more than one full copy. Buffers are broadcast by name, persistent or not: a
        non-persistent one (the rotary embedding's ``inv_freq``) is in no state dict and holds
        garbage after ``to_empty``."""
        if self.strategy != "fsdp2" or self.world == 1:
            return model
        import itertools

        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
            model.to_empty(device=self.device)  # a skeleton (every rank but 0; a sharded reference on 0 too)
        buffers = dict(model.named_buffers())
        weights = {k: v for k, v in full_state.items() if k not in buffers} if self.is_main else {}
        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True,
                                                                      strict=False))
        for name, b in buffers.items():
            if self.is_main:
                if name not in full_state:
                    raise RuntimeError(f"materialize: rank 0 has no value for buffer {name}")
                b.data.copy_(full_state[name])
            dist.broadcast(b.data, src=0)
        return model

    def call(self, model, fn: Callable, *args, **kwargs):
        """``fn(*args, **kwargs)`` run as ``model``'s forward (see the module docstring)."""
        if self.strategy == "ddp" and id(model) in self._ddp:
            return self._ddp[id(model)](fn, *args, **kwargs)
        if self.strategy == "fsdp2" and hasattr(model, _CALL):
            return getattr(model, _CALL)(fn, *args, **kwargs)
        return fn(*args, **kwargs)

    def accumulate(self, model, sync: bool):
        """Around one micro-batch's forward and backward: under ddp only the step's last one
        all-reduces (the others accumulate locally). fsdp2 reduce-scatters every micro-batch:
        skipping it would keep unsharded gradients, the memory sharding saves."""
        if self.strategy == "ddp" and id(model) in self._ddp and not sync:
            return self._ddp[id(model)].no_sync()
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def forward_scope(self, model):
        """The block runs as a forward of ``model``'s sharded root: its root parameters are gathered
        on entry and freed on exit, as ``register_fsdp_forward_method`` does around a method (the
        same two FSDP hooks), for code that must hold the module itself (a reference's
        ``active()``). Under no_grad only."""
        if self.strategy != "fsdp2" or not is_sharded(model) or not hasattr(model, "_get_fsdp_state"):
            yield model
            return
        state = model._get_fsdp_state()
        state._pre_forward(model, (), {})
        try:
            yield model
        finally:
            state._post_forward(model, (), None)

    @contextlib.contextmanager
    def gathered(self, *models):
        """Full weights of ``models`` (default: every model placed) on every rank for the block
        (generation, evaluation, saving), gathered once and freed at the end. Every rank must enter
        it (the gathers are collective); inside, a forward neither gathers nor frees anything, so one
        rank alone may run one."""
        FSDPModule = _fsdp()[0]
        models = models or tuple(self._models)
        mods = []
        for model in models:
            for m in (model.modules() if model is not None else ()):
                if isinstance(m, FSDPModule) and all(m is not x for x in mods):
                    mods.append(m)
        if not mods:
            yield
            return
        # set_reshard_after_forward has no getter: keep what it changes, to put it back after.
        saved = []
        for m in mods:
            st = m._get_fsdp_state()
            saved.append((st, st._auto_reshard_after_forward, [(g, g.post_forward_mesh_info) for g in st._fsdp_param_groups]))
            m.set_reshard_after_forward(False, recurse=False)
        # The first forward marks its module as FSDP's root: inside the block a decoder layer may
        # run before its model's root ever did (the rollout's scoring passes call the decoder), so
        # each model's root is initialized as such first.
        for model in models:
            if isinstance(model, FSDPModule):
                model._get_fsdp_state()._lazy_init()
        try:
            for m in mods:
                m.unshard()
            yield
        finally:
            for m in mods:
                m.reshard()
            for st, auto, groups in saved:
                st._auto_reshard_after_forward = auto
                for g, info in groups:
                    g.post_forward_mesh_info = info

    # ---- what a rank holds -------------------------------------------------------------------
    @staticmethod
    def local_bytes(tensors) -> int:
        n = 0
        for t in tensors:
            t = t.to_local() if isinstance(t, DTensor) else t  # a DTensor's own shard
            n += t.numel() * t.element_size()
        return n

    def held_bytes(self, model, optimizer=None) -> dict:
        """Bytes of parameters and optimizer state this rank holds (shards under fsdp2)."""
        params = self.local_bytes(model.parameters())
        opt = 0
        if optimizer is not None:
            for st in optimizer.state.values():
                opt += self.local_bytes(v for v in st.values() if isinstance(v, torch.Tensor) and v.dim() > 0)
        return {"params": params, "optimizer": opt}

    # ---- state -------------------------------------------------------------------------------
    def full_state_dict(self, model) -> Optional[dict]:
        """The whole model's state dict on rank 0's CPU (None on the other ranks); every rank must call it."""
        if not is_sharded(model):
            return {k: v.detach().cpu() for k, v in model.state_dict().items()} if self.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if self.is_main else None


def setup(strategy: str = "auto", cpu: bool = False, dtype: Optional[torch.dtype] = None) -> Placement:
    """The placement of this process: forms the process group (gloo on CPU, NCCL on GPUs) from the
    variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)."""
    rank, world, local = _env_world()
    resolved = resolve_strategy(strategy, world)
    use_cuda = torch.cuda.is_available() and not cpu
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if resolved != "none" and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        if world == 1 and "MASTER_ADDR" not in os.environ:
            # One process asked for ddp/fsdp2 outside torchrun: a group of one (the code path is the same).
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        else:
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    device_id=device if use_cuda else None)
    return Placement(strategy=resolved, rank=rank, world=world, device=device, param_dtype=dtype)
