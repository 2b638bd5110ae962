"""prefopt_kernels: fused log-prob / entropy / KL over a linear output head.

Depends on torch (and triton for the GPU kernels) only; never imports prefopt.
"""

if __name__ == "kernels":
    # This folder is prefopt_kernels' source, installed under that name. On a sys.path that holds the
    # repository root (``python -m`` or a notebook started there) it shadows the PyPI package
    # ``kernels``, which transformers imports when it is installed; hand that import to the real one.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _root]
    _spec = importlib.machinery.PathFinder.find_spec("kernels", _path)
    if _spec is None:
        raise ImportError("no module named 'kernels' outside prefopt's repository root (prefopt's own fused "
                          "kernels are the package prefopt_kernels)")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module  # the import system returns what sys.modules holds once this file ends
    _spec.loader.exec_module(_module)
else:
    from ._common import FusedOutput
    from .api import fused_logprobs

__all__ = ["fused_logprobs", "FusedOutput"]
