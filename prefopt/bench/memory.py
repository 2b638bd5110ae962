"""Memory benchmark of trainer.strategy=fsdp2: what each process holds, 1 process against N.

    python -m prefopt.bench memory                      # 1 vs 2 processes, ~106M-parameter Llama (424 MB fp32)
    python -m prefopt.bench memory --procs 1,2,4 --json out.json

Each configuration is one ``torchrun`` launch of this module's worker, which builds the model the
way ``prefopt-train`` does under fsdp2 (rank 0 materializes it, the other ranks build it on
``meta`` and receive their shards from rank 0: prefopt.distributed.placement), runs two AdamW steps of a
log-prob loss through the fused kernel, and reports per rank: bytes of parameters and of optimizer
state held (the shards), and peak RSS. A table is printed and, with ``--json``, written.
Parameters + optimizer state per rank should fall as 1/N; peak RSS falls less (each process has
torch's own ~300 MB, activations are not sharded, and rank 0 reads the whole checkpoint once).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

from prefopt.core import files

ARCH = dict(model_type="llama", hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
            num_key_value_heads=12, vocab_size=32000, max_position_embeddings=256, tie_word_embeddings=False)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(out: str, batch: int, seq: int):
    import torch

    from prefopt.core.config import ModelConfig
    from prefopt.models.logprobs import token_stats
    from prefopt.models.load import load_policy
    from prefopt.distributed.placement import setup

    place = setup("fsdp2")
    cfg = ModelConfig(arch=dict(ARCH))
    rss_start = _rss_mb()
    model = load_policy(cfg, vocab_size=ARCH["vocab_size"], seed=0, meta=place.meta_init)
    full = {**dict(model.named_buffers()), **model.state_dict()} if place.is_main else None
    place.trainable(model)
    place.materialize(model, full)
    del full
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator().manual_seed(place.rank)
    ids = torch.randint(0, ARCH["vocab_size"], (batch, seq), generator=g)
    am = torch.ones_like(ids)
    lm = torch.ones_like(ids, dtype=torch.bool)
    for _ in range(2):
        loss = place.call(model, lambda: -token_stats(model, ids, am, lm).logps.sum() / lm.sum())
        (loss * place.grad_scale).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    held = place.held_bytes(model, opt)
    row = {"rank": place.rank, "world": place.world, "params_mb": held["params"] / 2**20,
           "optimizer_mb": held["optimizer"] / 2**20, "rss_start_mb": rss_start, "peak_rss_mb": _rss_mb()}
    rows = [None] * place.world
    import torch.distributed as dist

    dist.all_gather_object(rows, row)
    if place.is_main:
        n = sum(p.numel() for p in model.parameters())
        with files.atomic_open(out) as f:
            json.dump({"params_total": n, "ranks": rows}, f)
    dist.barrier()
    dist.destroy_process_group()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m prefopt.bench memory", description=__doc__.splitlines()[0])
    ap.add_argument("--procs", default="1,2", help="process counts, comma-separated")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        return worker(a.worker, a.batch, a.seq)
    results = []
    for n in [int(x) for x in a.procs.split(",")]:
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "r.json")
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONWARNINGS": "ignore"}
            cmd = ["torchrun", "--nproc_per_node", str(n), "--master_port", str(29700 + n), "-m", "prefopt.bench.memory",
                   "--worker", out, "--batch", str(a.batch), "--seq", str(a.seq)]
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if r.returncode != 0:
                sys.exit(f"prefopt.bench.memory: {n} process(es) failed:\n{r.stderr[-3000:]}")
            with open(out) as f:
                res = json.load(f)
        results.append({"procs": n, **res})
    import torch

    print(f"fsdp2 memory per rank: Llama {ARCH['num_hidden_layers']} layers, hidden {ARCH['hidden_size']}, vocab "
          f"{ARCH['vocab_size']} ({results[0]['params_total'] / 1e6:.0f}M params, fp32), AdamW, batch {a.batch}x{a.seq}; "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs")
    print(f"{'procs':>5} {'rank':>4} {'params MB':>10} {'optimizer MB':>13} {'params+opt MB':>14} {'peak RSS MB':>12}")
    for res in results:
        for r in res["ranks"]:
            print(f"{res['procs']:>5} {r['rank']:>4} {r['params_mb']:>10.1f} {r['optimizer_mb']:>13.1f} "
                  f"{r['params_mb'] + r['optimizer_mb']:>14.1f} {r['peak_rss_mb']:>12.0f}")
    if a.json:
        with files.atomic_open(a.json) as f:
            json.dump({"arch": ARCH, "batch": a.batch, "seq": a.seq, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
