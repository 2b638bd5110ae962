"""Benchmarks, run as ``python -m prefopt.bench [gpu-check|memory] ...``: trainer throughput and
memory against TRL (throughput), the one-command GPU check (gpu), fsdp2 memory per rank (memory).
They print tables and write JSON; committed results live in ``prefopt/bench/results/``."""
