"""``model.dtype=auto``: bf16 where the hardware computes it natively, fp32 elsewhere.

The rule, applied once at start-up (the choice is printed with its reason):

- **LoRA** (``model.lora.r > 0``, not 4-bit) on a CPU whose kernels run bf16 natively (AVX512_BF16 or
  AMX, and torch dispatching its AVX-512 kernels), or on a CUDA device that supports bf16: the frozen
  base weights are bfloat16, so every forward and backward matmul through them runs in bf16. The LoRA
  weights stay float32 (peft keeps adapters in fp32 over a bf16 base and casts their inputs), and so
  does the optimizer state, which only holds LoRA parameters.
- **Everything else is float32**: full fine-tuning (bf16 master weights and Adam moments would round
  small updates away: prefopt keeps no separate fp32 master copy), 4-bit (its compute dtype is
  ``model.bnb_4bit_compute_dtype``), and CPUs without native bf16 (AVX2-only, or an AVX-512 machine
  told to compute like an AVX2 one with ``ATEN_CPU_CAPABILITY=avx2``), where bf16 is emulated and
  slower than fp32.

An explicit ``model.dtype=bfloat16`` is honoured everywhere; on a CPU without native bf16 it is
warned as slow. The log-probs that enter a loss are computed in fp32 from the bf16 hidden states
(the fused kernel upcasts), so only the decoder runs in bf16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prefopt.core.config import ModelConfig


@dataclass
class Precision:
    dtype: str  # the model.dtype the run uses: float32 | bfloat16 | float16
    reason: str  # one line for the start-up banner
    slow: bool = False  # bf16 asked for where it is emulated


def native_bf16_cpu() -> tuple:
    """(True, what) when torch's CPU kernels compute bf16 natively here, else (False, why not)."""
    cap = torch.backends.cpu.get_cpu_capability()
    if "AVX512" not in cap:
        return False, f"torch dispatches {cap} kernels (no AVX-512 bf16 instructions in use)"
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    avx512_bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    if amx or avx512_bf16:
        return True, "AMX" if amx else "AVX512_BF16"
    return False, "the CPU has AVX-512 but neither AVX512_BF16 nor AMX"


def _native_bf16(cuda: bool) -> tuple:
    if cuda:
        ok = torch.cuda.is_bf16_supported()
        return ok, f"CUDA device {'supports' if ok else 'lacks'} bf16"
    return native_bf16_cpu()


def resolve(cfg: ModelConfig, *, cuda: bool = False) -> Precision:
    """The dtype ``cfg.dtype`` stands for on this machine (``cuda``: the run's device is a GPU)."""
    native, what = _native_bf16(cuda)
    if cfg.dtype != "auto":
        slow = cfg.dtype == "bfloat16" and not cuda and not native
        why = f"model.dtype={cfg.dtype}" + (f"; bf16 is emulated here ({what}): slower than float32" if slow else "")
        return Precision(cfg.dtype, why, slow)
    if cfg.load_in_4bit:
        return Precision("float32", "model.dtype=auto → float32 (4-bit: compute in model.bnb_4bit_compute_dtype)")
    if cfg.lora.r <= 0:
        return Precision("float32", "model.dtype=auto → float32 (full fine-tuning keeps fp32 weights and optimizer state)")
    if not native:
        return Precision("float32", f"model.dtype=auto → float32 (no native bf16: {what})")
    return Precision("bfloat16", f"model.dtype=auto → bfloat16 base weights, float32 LoRA weights and optimizer state "
                                 f"(native bf16: {what})")
