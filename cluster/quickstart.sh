#!/usr/bin/env bash
# The README's first command: install what is missing, build, generate a
# MovieLens-1M-shaped synthetic data set and train biased MF on it under
# mpirun (1 scheduler, 1 server, 2 workers).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/cluster/deps.sh"
"$top/cluster/build.sh" "$top/build"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
data=$top/build/demo
mkdir -p "$data"
echo "== generating 1M ratings (6040 users x 3706 items, like MovieLens 1M)"
"$top/build/psrec" gen --out "$data/ml1m" --ratings 1000000 --users 6040 --items 3706 \
    --rank 8 --noise 0.8
echo "== training: mpirun -np 4 (1 scheduler, 1 server, 2 workers)"
mpirun --oversubscribe --bind-to none -np 4 "$top/build/psrec" train \
    --train "$data/ml1m.train.psrd" --test "$data/ml1m.test.psrd" \
    --epochs 10 --l2 0.05 --metrics "$data/metrics.jsonl" "$@"
echo "== per-epoch metrics: $data/metrics.jsonl"
