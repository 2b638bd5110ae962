"""The machine a benchmark ran on: CPU, cores, torch's CPU capability and threads, load average, and
the versions of the packages measured. Every benchmark's JSON records these next to its numbers."""

from __future__ import annotations

import os
import platform


def cpu_model(default: str = "") -> str:
    """The CPU's model name from /proc/cpuinfo (``default`` where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return default


def machine() -> dict:
    cpu = cpu_model(platform.processor() or "")
    import torch

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "platform": platform.platform(), "python": platform.python_version(), "gpu": None}


def load_average() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for p in ("prefopt", "torch", "transformers", "trl", "liger-kernel"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out
