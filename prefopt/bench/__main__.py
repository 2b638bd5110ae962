"""``python -m prefopt.bench``: the throughput benchmark; ``gpu-check``, ``memory``, ``kernels``, ``roofline`` (the
machine's GEMM rates and bandwidth alone) and ``decode`` (the rollout engines side by side) pick the others."""

import sys

from prefopt.bench import decode, gpu, kernels, memory, roofline, throughput

COMMANDS = {"gpu-check": gpu.main, "memory": memory.main, "kernels": kernels.main, "roofline": roofline.main,
            "decode": decode.main}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return throughput.main(argv)


if __name__ == "__main__":
    main()
