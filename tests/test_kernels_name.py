"""The repository's kernels/ folder (installed as prefopt_kernels) must not break the PyPI package
``kernels`` that transformers imports, when Python runs from the repository root (``python -m``,
notebooks): there, the folder is first on sys.path under that name."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(importlib.util.find_spec("kernels") is None, reason="the PyPI package kernels is not installed")
def test_transformers_hub_kernels_import_from_the_repository_root():
    code = ("import kernels, prefopt_kernels, transformers.integrations.hub_kernels as h; "
            "assert os.path.dirname(kernels.__file__) != os.path.join(sys.argv[1], 'kernels'), kernels.__file__; "
            "assert callable(prefopt_kernels.fused_logprobs); print('ok')")
    out = subprocess.run([sys.executable, "-c", "import os, sys; " + code, ROOT], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
