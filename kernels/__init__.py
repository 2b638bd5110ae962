"""prefopt_kernels: fused log-prob / entropy / KL over a linear output head.

Depends on torch (and triton for the GPU kernels) only; never imports prefopt.
"""

from ._common import FusedOutput
from .api import fused_logprobs

__all__ = ["fused_logprobs", "FusedOutput"]
