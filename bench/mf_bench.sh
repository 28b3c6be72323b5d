#!/usr/bin/env bash
# MF throughput benchmark: generates ratings shaped like MovieLens 20M
# (138k users x 27k items) and trains biased MF at dim 32 under mpirun
# (1 scheduler, 1 server, 2 workers over tcp) and with --local (the same
# roles as threads over inproc), with both schedules (blocks: DSGD, the
# default; minibatch: pull/push every minibatch), plus a one-worker run as
# the single-process baseline. Prints updates/s, seconds per epoch and the
# final test RMSE beside the noise floor. Figures come from the run.
#
#   bench/mf_bench.sh [--ratings N] [--epochs E] [--dim K] [--keep]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
ratings=20000000 users=138000 items=27000 epochs=5 dim=32 l2=0.05 keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --ratings) ratings=$2; shift 2 ;;
    --users) users=$2; shift 2 ;;
    --items) items=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --dim) dim=$2; shift 2 ;;
    --l2) l2=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

"$top/cluster/deps.sh"
build=${PSREC_BUILD:-$top/build}
"$top/cluster/build.sh" "$build"
psrec=$build/psrec
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=${PSREC_BENCH_DIR:-$top/build/bench}
mkdir -p "$work"
data=$work/mf_${ratings}_${users}x${items}
if [ ! -f "$data.train.psrd" ]; then
  echo "== generating $ratings ratings ($users users x $items items)"
  t0=$(date +%s%N)
  "$psrec" gen --out "$data" --ratings "$ratings" --users "$users" --items "$items" \
      --rank 16 --noise 0.5 --seed 1
  echo "   generated in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
fi

# mean examples/s and s/epoch over epochs after the first (warm-up), last RMSE
summarise() {
  awk -F'[:,}]' '
    /"final": 1/ { next }  # the result record, not an epoch
    { for (i = 1; i <= NF; i++) { gsub(/[ "{]/, "", $i) }
      for (i = 1; i < NF; i++) {
        if ($i == "epoch") e = $(i+1); if ($i == "examples_per_s") r = $(i+1);
        if ($i == "seconds") s = $(i+1); if ($i == "test_rmse") t = $(i+1);
        if ($i == "noise_floor") nf = $(i+1) }
      if (e > 1 || NR == 1) { if (e > 1 && !warm) { sr = 0; ss = 0; n = 0; warm = 1 }
                              sr += r; ss += s; n++ }
    }
    END { printf "%12.3f %10.2f %10.4f %10.4f %8.1f%%\n", sr / n / 1e6, ss / n, t, nf, 100 * (t / nf - 1) }' "$1"
}

run() {
  local name=$1; shift
  local m=$work/metrics_$name.jsonl
  echo "== $name: $*" >&2
  "$@" --train "$data.train.psrd" \
      --test "$data.test.psrd" --dim "$dim" --epochs "$epochs" --l2 "$l2" --metrics "$m" \
      --progress off --log_level warn >&2
  printf "%-36s " "$name"
  summarise "$m"
}

echo
{
  printf "%-36s %12s %10s %10s %10s %9s\n" "configuration" "Mupdates/s" "s/epoch" \
      "test_rmse" "floor" "above"
  run "blocks, mpirun 1+1+2 ranks" \
      mpirun --oversubscribe --bind-to none -np 4 "$psrec" train --servers 1
  # --refit 0: speed of one training run (a --local train would otherwise
  # train again on all the data after the validation carve)
  run "blocks, --local 1 server 2 workers" "$psrec" train --local --refit 0 --servers 1 \
      --workers 2
  run "blocks, --local 1 worker (baseline)" "$psrec" train --local --refit 0 --servers 1 \
      --workers 1
  run "minibatch, mpirun 1+1+2 ranks" \
      mpirun --oversubscribe --bind-to none -np 4 "$psrec" train --servers 1 \
      --schedule minibatch
} | tee "$work/mf_bench.txt"
echo "(updates/s: mean over epochs 2..$epochs; machine: $(nproc) cores, $(uname -m))"
[ "$keep" = 1 ] || rm -f "$data".*.psrd
