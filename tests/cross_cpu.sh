#!/usr/bin/env bash
# Run every learning-outcome test (pytest -m outcome: each test that asserts training moved a metric,
# raised a reward or beat chance) under this machine's own instruction set and under forced AVX2
# (ATEN_CPU_CAPABILITY=avx2 + MKL_ENABLE_INSTRUCTIONS=AVX2 make an AVX-512 machine round like an
# AVX2-only one), each at 1 and 2 torch threads, and print each measured value next to its threshold.
#
#   tests/cross_cpu.sh                 # native + avx2, 1 and 2 threads
#   THREADS="1" tests/cross_cpu.sh     # one thread count only
#   tests/cross_cpu.sh -k online       # extra pytest arguments select tests
#
# Exits non-zero if any configuration failed. The table is also written to cross_cpu.json.
set -uo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-"1 2"}
out=${CROSS_CPU_OUT:-cross_cpu.jsonl}
: > "$out"
status=0
for t in $THREADS; do
  for isa in native avx2; do
    echo "== instruction set: $isa, torch threads: $t"
    envs=(OMP_NUM_THREADS="$t" MKL_NUM_THREADS="$t" PREFOPT_OUTCOMES="$PWD/$out")
    # Each instruction set gets its own testbed cache: an AVX2 machine builds its own SFT policy and
    # pairs, and reusing ones built under AVX-512 would hide how its rounding changes them.
    envs+=(PREFOPT_CACHE="${PREFOPT_CACHE:-$PWD/.cache/prefopt-test}-$isa")
    if [ "$isa" = avx2 ]; then envs+=(ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2); fi
    env "${envs[@]}" python -m pytest -q -m outcome -p no:cacheprovider "$@" || status=1
  done
done
python - "$out" <<'PY'
import collections, json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cols = sorted({(r["cpu_capability"], r["threads"]) for r in rows})
table = collections.defaultdict(dict)
for r in rows:
    table[(r["test"], r["name"], r["op"], r["threshold"])][(r["cpu_capability"], r["threads"])] = r["value"]
head = ["test", "measured", "threshold"] + [f"{c} ×{t}" for c, t in cols] + ["min margin"]
print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
worst = None
for (test, name, op, thr), vals in sorted(table.items()):
    margins = [(v - thr) if op == ">" else (thr - v) for v in vals.values()]
    m = min(margins)
    worst = m if worst is None else min(worst, m)
    cells = [f"{vals[c]:.3f}" if c in vals else "—" for c in cols]
    flag = "" if m > 0 else " ✗"
    print(f"| {test.split('::', 1)[-1]} | {name} | {op} {thr:g} | " + " | ".join(cells) + f" | {m:+.3f}{flag} |")
json.dump({"columns": [list(c) for c in cols], "rows": rows}, open(sys.argv[1].replace(".jsonl", "") + ".json", "w"), indent=1)
print(f"{len(table)} outcomes × {len(cols)} configurations; smallest margin {worst:+.3f}" if rows else "no outcomes recorded")
PY
exit $status
