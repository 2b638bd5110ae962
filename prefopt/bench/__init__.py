"""Benchmarks, run as ``python -m prefopt.bench [gpu-check|memory|kernels] ...``: trainer throughput
and memory against TRL (throughput, with its world and workers), the one-command GPU check (gpu),
fsdp2 memory per rank (memory), the fused log-prob kernel against its alternatives (kernels).
They print tables and write JSON; committed results live in ``prefopt/bench/results/``."""
