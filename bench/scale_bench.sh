#!/usr/bin/env bash
# End-to-end at scale: generate 10^8 interactions (10M users x 1M items) as
# text, convert them to the binary format, train 10 epochs under mpirun
# (1 scheduler, 1 server, 2 workers), evaluate, checkpoint; prints the
# seconds of each stage, the peak memory of each rank and the final RMSE
# beside the noise floor.
#
#   bench/scale_bench.sh [--ratings N] [--users U] [--items I] [--epochs E]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
ratings=100000000 users=10000000 items=1000000 epochs=10
while [ $# -gt 0 ]; do
  case "$1" in
    --ratings) ratings=$2; shift 2 ;;
    --users) users=$2; shift 2 ;;
    --items) items=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
"$top/cluster/deps.sh"
build=${PSREC_BUILD:-$top/build}
"$top/cluster/build.sh" "$build"
psrec=$build/psrec
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=${PSREC_BENCH_DIR:-$top/build/bench}/scale
rm -rf "$work"
mkdir -p "$work"
now() { date +%s%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }

t0=$(now)
"$psrec" gen --out "$work/big" --ratings "$ratings" --users "$users" --items "$items" \
    --rank 8 --noise 0.5 --format text --seed 3 > "$work/gen.log"
t1=$(now)
"$psrec" convert "$work/big.train.tsv" "$work/big.train.psrd" > "$work/convert.log"
"$psrec" convert "$work/big.test.tsv" "$work/big.test.psrd" >> "$work/convert.log"
rm -f "$work"/big.*.tsv
t2=$(now)
mpirun --oversubscribe --bind-to none -np 4 "$psrec" train \
    --train "$work/big.train.psrd" --test "$work/big.test.psrd" --epochs "$epochs" \
    --eval_every "$epochs" --optimizer rowwise_adagrad --lr 0.1 --l2 0.05 \
    --checkpoint_dir "$work/ckpt" --checkpoint_every "$epochs" --metrics "$work/metrics.jsonl" \
    --progress off --log_level info > "$work/train.log" 2>&1
t3=$(now)

floor=$(grep -o 'noise floor[^:]*: [0-9.]*' "$work/gen.log" | awk '{print $NF}')
rmse=$(grep -o 'final test RMSE [0-9.]*' "$work/train.log" | awk '{print $NF}')
echo
echo "end to end: $ratings interactions, $users users x $items items, $epochs epochs"
printf "%-44s %8s\n" "stage" "seconds"
printf "%-44s %8s\n" "generate (text)" "$(secs "$t0" "$t1")"
printf "%-44s %8s\n" "convert to .psrd (train + test)" "$(secs "$t1" "$t2")"
printf "%-44s %8s\n" "train + evaluate + checkpoint (mpirun 4 ranks)" "$(secs "$t2" "$t3")"
printf "%-44s %8s\n" "total" "$(secs "$t0" "$t3")"
echo
grep -h "peak memory" "$work/train.log" | sed 's/^[^ ]* [A-Z] //' | sort
grep -h "checkpoint .*rows" "$work/train.log" | sed 's/^[^ ]* [A-Z] //' || true
grep "^epoch" "$work/train.log" | tail -3
echo "final test RMSE $rmse, noise floor $floor"
