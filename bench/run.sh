#!/usr/bin/env bash
# The benchmark set in one command. For each rating shape it trains biased
# MF at dim 32 (AdaGrad, l2 0.05) with psrec's blocks schedule under mpirun
# (1 scheduler + 1 server + 2 workers on this host: unix sockets, the item
# rows in the server's memory; then once more with PSREC_SHARED_ROWS=off,
# the item rows moving by messages as between hosts) and --local, and with
# the single-process baselines on the same data:
#   psrec --local 1 worker     psrec's own one-worker run;
#   sgd_baseline 2 threads     a plain LIBMF-style trainer (bench/
#                              sgd_baseline.c): the same kernel on a grid
#                              of blocks, no servers, no messages.
# Shapes: "ml20m" (20M ratings, 138k users x 27k items, cache-resident
# item rows) and "dram" (50M ratings, 5M users x 500k items: rows do not
# fit in cache). Then, unless left out, the 10^8 end-to-end run
# (bench/scale_bench.sh), push/pull against raw ZeroMQ and the serving
# latency benchmark.
#
# The table: configuration, M updates/s (mean over epochs 2..E), seconds
# per epoch, final test RMSE, the noise floor and how far above it, wall
# seconds of the whole command (loading, every epoch with its evaluation,
# exit), peak RSS (one process; for mpirun the largest rank and the sum of
# all), and the ratio of updates/s to the first sgd_baseline row of the
# same shape. The baseline runs again after the psrec rows: its second row
# shows how far the machine's speed moved meanwhile.
#
# Then, per shape, N more runs of the baseline and of psrec under mpirun
# taken in turn (--pairs N, default 3, 0 with --quick): the machine's
# speed swings by up to 2x within minutes, so the median ratio of these
# interleaved pairs is the figure that compares the two.
#
#   bench/run.sh [--quick] [--only LIST] [--epochs E] [--dram-epochs E]
#                [--pairs N] [--minibatch] [--keep]
#   --quick        small shapes (2M and 5M ratings), 3 epochs, no 10^8 run:
#                  a check that everything runs, in a few minutes
#   --only LIST    comma-separated subset of ml20m,dram,scale,pushpull,serve
#   --pairs N      interleaved baseline/mpirun pairs per shape (default 3)
#   --minibatch    also the minibatch schedule under mpirun on ml20m (slow)
#   --keep         keep the generated data (in $PSREC_BENCH_DIR or build/bench)
# PSREC_BUILD picks the build directory (default build/; it is configured
# and built Release with -march=native first).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
quick=0 only=ml20m,dram,scale,pushpull,serve epochs=5 depochs=3 minibatch=0 keep=0 pairs=
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1; shift ;;
    --only) only=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --dram-epochs) depochs=$2; shift 2 ;;
    --minibatch) minibatch=1; shift ;;
    --pairs) pairs=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,38p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
if [ "$quick" = 1 ]; then
  epochs=3 depochs=3
  [ -n "$pairs" ] || pairs=0
  [ "$only" = ml20m,dram,scale,pushpull,serve ] && only=ml20m,dram,pushpull,serve
fi
[ -n "$pairs" ] || pairs=3
has() { case ",$only," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

build=${PSREC_BUILD:-$top/build}
"$top/cluster/deps.sh"
"$top/cluster/build.sh" "$build"
psrec=$build/psrec
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=${PSREC_BENCH_DIR:-$top/build/bench}
mkdir -p "$work"
table=$work/run_table.txt
: > "$table"

# mean updates/s and s/epoch over epochs after the first, last test RMSE
# and noise floor, from a metrics JSONL file
summarise() {
  awk -F'[:,}]' '
    /"final": 1/ { next }  # the result record, not an epoch
    { for (i = 1; i <= NF; i++) gsub(/[ "{]/, "", $i)
      for (i = 1; i < NF; i++) {
        if ($i == "epoch") e = $(i+1); if ($i == "examples_per_s") r = $(i+1)
        if ($i == "seconds") s = $(i+1); if ($i == "test_rmse" && $(i+1) != "null") t = $(i+1)
        if ($i == "noise_floor") nf = $(i+1) }
      if (e > 1 || NR == 1) { if (e > 1 && !warm) { sr = 0; ss = 0; n = 0; warm = 1 }
                              sr += r; ss += s; n++ } }
    END { if (n == 0) n = 1; printf "%.0f %.4f %.4f %.4f\n", sr / n, ss / n, t, nf }' "$1"
}

# peak RSS in MiB from psrec's "peak memory" log lines: "max/sum" or one
peak_of_log() {
  grep -ho 'peak memory (RSS) of this process: [0-9]*' "$1" | awk '{ v = $NF; s += v;
    if (v > m) m = v; n++ } END { if (n > 1) printf "%d/%d", m, s; else if (n == 1) printf "%d", m;
    else printf "-" }'
}

row() { # name rate sec rmse floor wall rss baseline_rate
  awk -v n="$1" -v r="$2" -v s="$3" -v t="$4" -v f="$5" -v w="$6" -v m="$7" -v b="$8" 'BEGIN {
    above = f > 0 ? sprintf("%.1f%%", 100 * (t / f - 1)) : "-"
    ratio = b > 0 ? sprintf("%.2f", r / b) : "-"
    printf "%-44s %9.2f %8.3f %9.4f %7.4f %7s %7.1f %13s %6s\n", n, r / 1e6, s, t, f, above, w,
      m, ratio }' |
    tee -a "$table"
}

header() {
  printf "\n%-44s %9s %8s %9s %7s %7s %7s %13s %6s\n" "configuration ($1)" "Mupd/s" "s/epoch" \
    "test_rmse" "floor" "above" "wall_s" "peak_RSS_MiB" "ratio" | tee -a "$table"
}

# gen SHAPE_NAME RATINGS USERS ITEMS -> sets $data
gen() {
  data=$work/$1_$2_$3x$4
  if [ ! -f "$data.train.psrd" ]; then
    echo "== generating $1: $2 ratings ($3 users x $4 items)" >&2
    "$psrec" gen --out "$data" --ratings "$2" --users "$3" --items "$4" \
        --rank 16 --noise 0.5 --seed 1 >&2
  fi
}

# mf_shape NAME RATINGS USERS ITEMS EPOCHS
mf_shape() {
  local name=$1 ep=$5
  gen "$@"
  free -g | awk '/Mem:/ { print "   memory: " $7 " GiB available" }' >&2
  local b="" r s t f kb wall
  run_base() { # label: one sgd_baseline run; the first sets the ratios' base b
    echo "== $name: $1" >&2
    /usr/bin/time -o "$work/time.txt" -f "%M %e" "$build/sgd_baseline" "$data.train.psrd" \
        "$data.test.psrd" --threads 2 --epochs "$ep" --dim 32 --l2 0.05 > "$work/base_$name.txt"
    read -r r s t f < <(awk '/^summary/ { print $3, $7, $9, $11 }' "$work/base_$name.txt")
    read -r kb wall < "$work/time.txt"
    [ -n "$b" ] || { b=$r; header "$name"; }
    row "$1" "$r" "$s" "$t" "$f" "$wall" "$(( kb / 1024 ))" "$b"
  }
  run_base "sgd_baseline, 1 process 2 threads"

  run_psrec() { # label log-name command...
    local label=$1 tag=$2; shift 2
    local m=$work/metrics_${name}_$tag.jsonl log=$work/log_${name}_$tag.txt
    echo "== $name: $label" >&2
    rm -f "$m"
    local t0 t1
    t0=$(date +%s.%N)
    "$@" --train "$data.train.psrd" --test "$data.test.psrd" --dim 32 --epochs "$ep" \
        --l2 0.05 --metrics "$m" --progress off --log_level info > "$log" 2>&1 ||
      { echo "   failed; see $log" >&2; return 0; }
    t1=$(date +%s.%N)
    read -r r s t f < <(summarise "$m")
    row "$label" "$r" "$s" "$t" "$f" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
        "$(peak_of_log "$log")" "$b"
  }
  run_psrec "blocks, mpirun 1 sched + 1 server + 2 workers" mpi \
      mpirun --oversubscribe --bind-to none -np 4 "$psrec" train --servers 1
  run_psrec "  the same, item rows by messages" mpimsg \
      mpirun --oversubscribe --bind-to none -x PSREC_SHARED_ROWS=off -np 4 "$psrec" train \
      --servers 1
  run_psrec "blocks, --local 1 server + 2 workers" local2 \
      "$psrec" train --local --refit 0 --servers 1 --workers 2
  run_psrec "blocks, --local 1 worker (psrec baseline)" local1 \
      "$psrec" train --local --refit 0 --servers 1 --workers 1
  if [ "$minibatch" = 1 ] && [ "$name" = ml20m ]; then
    run_psrec "minibatch, mpirun 1 + 1 + 2" minibatch \
        mpirun --oversubscribe --bind-to none -np 4 "$psrec" train --servers 1 \
        --schedule minibatch
  fi
  # the machine's speed drifts (the baseline alone swung 38-60M updates/s
  # on the DRAM shape within an hour): a second baseline run after the
  # psrec rows shows how far it moved while they ran
  run_base "sgd_baseline again, after the rows above"
  if [ "$pairs" -gt 0 ]; then
    local i rates=""
    for i in $(seq "$pairs"); do
      echo "== $name: interleaved pair $i of $pairs" >&2
      "$build/sgd_baseline" "$data.train.psrd" "$data.test.psrd" --threads 2 --epochs "$ep" \
          --dim 32 --l2 0.05 > "$work/base_$name.txt"
      rates="$rates $(awk '/^summary/ { print $3 }' "$work/base_$name.txt")"
      rm -f "$work/pair_$name.jsonl"
      mpirun --oversubscribe --bind-to none -np 4 "$psrec" train --servers 1 \
          --train "$data.train.psrd" --test "$data.test.psrd" --dim 32 --epochs "$ep" \
          --l2 0.05 --metrics "$work/pair_$name.jsonl" --progress off > /dev/null 2>&1 ||
        { echo "   failed" >&2; continue; }
      read -r r s t f < <(summarise "$work/pair_$name.jsonl")
      rates="$rates $r"
    done
    echo "$rates" | awk -v n="$pairs" '{
      for (i = 1; i + 1 <= NF; i += 2) { k++; q[k] = $(i + 1) / $i; b = b " " sprintf("%.1f", $i / 1e6)
                                        p = p " " sprintf("%.1f", $(i + 1) / 1e6) }
      for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (q[j] < q[i]) { t = q[i]; q[i] = q[j]; q[j] = t }
      med = k % 2 ? q[(k + 1) / 2] : (q[k / 2] + q[k / 2 + 1]) / 2
      printf "interleaved pairs (%d): baseline M upd/s%s; mpirun%s; ratio median %.2f (%.2f..%.2f)\n",
        k, b, p, med, q[1], q[k] }' | tee -a "$table"
  fi
  [ "$keep" = 1 ] || rm -f "$data".*.psrd
}

if has ml20m; then
  if [ "$quick" = 1 ]; then mf_shape ml20m-small 2000000 13800 2700 "$epochs"
  else mf_shape ml20m 20000000 138000 27000 "$epochs"; fi
fi
if has dram; then
  if [ "$quick" = 1 ]; then mf_shape dram-small 5000000 500000 50000 "$depochs"
  else mf_shape dram 50000000 5000000 500000 "$depochs"; fi
fi
if has ml20m || has dram; then
  echo "(updates/s: mean over epochs after the first; ratio: to the first sgd_baseline row" \
       "of the same shape; its second row shows the machine's drift meanwhile; machine:" \
       "$(nproc) cores, $(uname -m))" | tee -a "$table"
fi

if has scale; then
  echo; echo "== 10^8 end to end (bench/scale_bench.sh)"
  "$top/bench/scale_bench.sh" | tee -a "$table"
fi
if has pushpull; then
  echo; echo "== push/pull against raw ZeroMQ"
  "$build/pushpull_bench" "$([ "$quick" = 1 ] && echo 1 || echo 2)" | tee -a "$table"
fi
if has serve; then
  echo; echo "== serving"
  "$build/serve_bench" | tee -a "$table"
fi
echo; echo "table written to $table"
