#!/usr/bin/env bash
# Sparse (click data) benchmark. Generates CTR lines with `psrec gen --ctr`
# (39 fields, one categorical feature each, 10^6 features with Zipf-like
# popularity, labels from a planted logistic FM; the Bayes AUC is printed
# beside the results) and trains fm (k 16, libsvm), ffm (k 4, libffm) and
# deep (DeepFM defaults, libffm) on them:
#   psrec mpirun     1 scheduler + 1 server + 2 workers (mpirun -np 4)
#   psrec --local    the same roles as threads of one process
#   fm_baseline      a plain single-process trainer (bench/fm_baseline.c):
#                    per-example AdaGrad on a dense table, 2 lock-free
#                    threads, psrec's update rule and defaults (fm, ffm)
#   xLearn           only when given (--xlearn PATH to xlearn_train): a peer
#                    built outside the project, never a dependency
# Per run: each epoch's training examples/s (training alone, no
# evaluation), seconds, test AUC and log loss; then a table row: mean
# examples/s over epochs 2..E, training seconds, wall seconds of the whole
# command (loading and evaluation included), final and best test AUC and
# the final log loss.
#
# Then, per model, N interleaved pairs (--pairs, default 3): the baseline
# (and xLearn, trained without a validation file so that its epoch time is
# training alone) against psrec under mpirun, taken in turn; the machine's
# speed swings, so the median of the pair ratios is the figure to compare.
# With --before PATH (another build's psrec, e.g. one made from main), the
# pairs are that psrec against this one, both under mpirun (deep included),
# each run's per-epoch test AUC and log loss printed beside its rate: the
# before/after figure of a change.
#
#   bench/sparse_bench.sh [--quick] [--lines "1000000 5000000"] [--epochs E]
#        [--models fm,ffm,deep] [--pairs N] [--runs mpirun,local,baseline,peers]
#        [--xlearn PATH] [--before PATH] [--keep]
#   --quick    200000 lines, 2 epochs, 1 pair: a check that everything runs
# PSREC_BUILD picks the build directory (default build/), PSREC_BENCH_DIR
# the data and output directory (default build/bench), PSREC_TRAIN_ARGS
# adds `psrec train` options (e.g. "--timeout 300" where loading a big
# file on a busy machine outlasts the default wait). A failed run is
# reported with the end of its output and the rest go on.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
sizes="1000000 5000000" epochs=5 models=fm,ffm,deep pairs=3 keep=0
runs=mpirun,local,baseline,peers xlearn=${XLEARN:-} threads=2 before=
extra=${PSREC_TRAIN_ARGS:-} # more `psrec train` options, e.g. "--timeout 300" for big files
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) sizes=200000; epochs=2; pairs=1; shift ;;
    --lines) sizes=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --models) models=$2; shift 2 ;;
    --pairs) pairs=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --xlearn) xlearn=$2; shift 2 ;;
    --before) before=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,37p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
has() { case ",$2," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

build=${PSREC_BUILD:-$top/build}
if [ ! -x "$build/psrec" ] || [ ! -x "$build/fm_baseline" ]; then
  "$top/cluster/deps.sh"
  "$top/cluster/build.sh" "$build"
fi
psrec=$build/psrec
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=${PSREC_BENCH_DIR:-$top/build/bench}
mkdir -p "$work"
table=$work/sparse_table.txt
: > "$table"

dim_of() { case $1 in fm) echo 16 ;; ffm) echo 4 ;; *) echo 0 ;; esac; }
label() { case $1 in deep) echo "deep (defaults)" ;; *) echo "$1 k=$(dim_of "$1")" ;; esac; }
ms() { date +%s%N; }

# One table row from per-epoch lines "epoch ex_per_s seconds auc logloss".
row() {
  local name=$1 file=$2 wall=$3
  awk -v name="$name" -v wall="$wall" '
    { e = $1; if (e > 1 || n == 0) { if (e > 1 && !warm) { sr = 0; n = 0; warm = 1 } sr += $2; n++ }
      secs += $3; auc = $4; ll = $5; if ($4 > best) best = $4 }
    END { printf "%-34s %10.0f %9.1f %8.1f %8.4f %8.4f %8.4f\n", name, sr / n, secs, wall,
                 auc, best, ll }' "$file" | tee -a "$table"
}

# psrec's metrics JSONL -> epoch lines
from_metrics() {
  awk -F'[:,}]' '
    /"final": 1/ { next }  # the result record, not an epoch
    { for (i = 1; i <= NF; i++) gsub(/[ "{]/, "", $i)
      for (i = 1; i < NF; i++) {
        if ($i == "epoch") e = $(i+1); if ($i == "examples_per_s") r = $(i+1)
        if ($i == "seconds") s = $(i+1); if ($i == "test_auc") a = $(i+1)
        if ($i == "test_logloss") l = $(i+1) }
      print e, r, s, a, l }' "$1"
}

# fm_baseline output -> epoch lines
from_baseline() {
  awk '$1 == "epoch" { split($2, ep, "/"); print ep[1], $9, $11, $6, $8 }' "$1"
}

# xLearn output (colours stripped) -> epoch lines; n: training lines
from_xlearn() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" | awk -v n="$2" '
    /^\[ *[0-9]+%/ { sub(/^\[[^]]*\]/, ""); t = $NF
                     if (NF >= 5) { auc = $4; ll = $3 } else { auc = -1; ll = -1 }
                     print $1, n / t, t, auc, ll }'
}

psrec_run() { # binary model data mode -> epoch lines in $work/last.ep
  local bin=$1 model=$2 tr=$3 te=$4 mode=$5 m=$work/metrics.jsonl
  local dim; dim=$(dim_of "$model")
  local args=(train --servers 1 --model "$model" --train "$tr" --test "$te" --epochs "$epochs"
              --metrics "$m" --progress off --log_level warn)
  [ "$dim" = 0 ] || args+=(--dim "$dim")
  rm -f "$m"
  local t0; t0=$(ms)
  local rc=0
  if [ "$mode" = mpirun ]; then
    mpirun --oversubscribe --bind-to none -np 4 "$bin" "${args[@]}" $extra \
        > "$work/last.out" 2>&1 || rc=$?
  else
    # one training run: no refit on all the data after the validation carve
    # (a build from before the key has none to turn off)
    local refit=(); "$bin" train --help 2>&1 | grep -q refit && refit=(--refit 0)
    "$bin" "${args[@]}" $extra "${refit[@]}" --local --workers 2 > "$work/last.out" 2>&1 || rc=$?
  fi
  wall=$(( ($(ms) - t0) / 1000000 ))
  if [ "$rc" != 0 ]; then # keep going: one failed run should not lose the others
    { echo "   $model $mode FAILED (exit $rc):"; tail -5 "$work/last.out" | sed 's/^/     /'; } \
        | tee -a "$table" >&2
    : > "$work/last.ep"
    return 1
  fi
  from_metrics "$m" > "$work/last.ep"
}

baseline_run() {
  local model=$1 tr=$2 te=$3 t0; t0=$(ms)
  "$build/fm_baseline" "$tr" "$te" --model "$model" --dim "$(dim_of "$model")" \
      --epochs "$epochs" --threads "$threads" > "$work/last.out"
  wall=$(( ($(ms) - t0) / 1000000 ))
  from_baseline "$work/last.out" > "$work/last.ep"
}

xlearn_run() { # model tr te validate(0/1) ntrain
  local model=$1 tr=$2 te=$3 val=$4 n=$5 t0 s=1
  [ "$model" = ffm ] && s=2
  local args=("$tr" -s "$s" -k "$(dim_of "$model")" -e "$epochs" -nthread "$threads"
              --dis-es --no-bin -m none -l "$work/xlearn")
  [ "$val" = 1 ] && args+=(-v "$te" -x auc)
  t0=$(ms)
  USER=${USER:-bench} "$xlearn" "${args[@]}" > "$work/last.out" 2>&1
  wall=$(( ($(ms) - t0) / 1000000 ))
  from_xlearn "$work/last.out" "$n" > "$work/last.ep"
}

show() { # name
  awk '{ printf "    epoch %2d  %10.0f ex/s  %7.2f s  auc %7.4f  logloss %7.4f\n", $1, $2, $3, $4, $5 }' \
      "$work/last.ep" >&2
  row "$1" "$work/last.ep" "$(awk -v w="$wall" 'BEGIN { printf "%.1f", w / 1000 }')"
}

mean_rate() { awk '{ if ($1 > 1 || n == 0) { if ($1 > 1 && !w) { s = 0; n = 0; w = 1 } s += $2; n++ } } END { printf "%.0f", s / n }' "$work/last.ep"; }

quality() { awk '{ a = a sprintf(" %.4f", $4); l = l sprintf(" %.3f", $5) } END { printf "auc%s, logloss%s", a, l }' "$work/last.ep"; }

median() { sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

for lines in $sizes; do
  data=$work/ctr_$lines
  if [ ! -f "$data.train.ffm" ] || [ ! -f "$data.train.libsvm" ]; then
    echo "== generating $lines CTR lines" >&2
    "$psrec" gen --ctr --out "$data" --lines "$lines" --seed 1 --formats libsvm,ffm >&2
  fi
  bayes=$(awk -F= '$1 == "bayes_auc" { print $2 }' "$data.info")
  ntrain=$(awk -F= '$1 == "train_lines" { print $2 }' "$data.info")
  {
    echo
    echo "== $lines lines ($ntrain train), 39 fields, Bayes AUC $bayes, $epochs epochs, $(nproc) cores"
    printf "%-34s %10s %9s %8s %8s %8s %8s\n" "configuration" "train ex/s" "train s" "wall s" \
        "auc" "best" "logloss"
  } | tee -a "$table"
  for model in ${models//,/ }; do
    if [ "$model" = fm ]; then tr=$data.train.libsvm te=$data.test.libsvm
    else tr=$data.train.ffm te=$data.test.ffm; fi
    if has mpirun "$runs"; then
      echo "-- $model psrec mpirun 1+1+2" >&2
      psrec_run "$psrec" "$model" "$tr" "$te" mpirun && show "$(label "$model") psrec mpirun 1+1+2"
    fi
    if has local "$runs"; then
      echo "-- $model psrec --local 1 server 2 workers" >&2
      psrec_run "$psrec" "$model" "$tr" "$te" local && show "$(label "$model") psrec --local"
    fi
    if has baseline "$runs" && [ "$model" != deep ]; then
      echo "-- $model fm_baseline $threads threads" >&2
      baseline_run "$model" "$tr" "$te"; show "$(label "$model") fm_baseline ${threads}t"
    fi
    if has peers "$runs" && [ -n "$xlearn" ] && [ "$model" != deep ]; then
      echo "-- $model xLearn $threads threads" >&2
      xlearn_run "$model" "$tr" "$te" 1 "$ntrain"; show "$(label "$model") xLearn ${threads}t (+eval)"
    fi
    [ "$pairs" -gt 0 ] || continue
    if [ -n "$before" ]; then
      rp=()
      for p in $(seq "$pairs"); do
        psrec_run "$before" "$model" "$tr" "$te" mpirun || continue; b=$(mean_rate); qb=$(quality)
        psrec_run "$psrec" "$model" "$tr" "$te" mpirun || continue; m=$(mean_rate); qm=$(quality)
        rp+=("$(awk -v a="$m" -v b="$b" 'BEGIN { print a / b }')")
        printf '   pair %s (load %s): before %s ex/s (%s); after %s ex/s (%s)\n' "$p" \
            "$(cut -d' ' -f1 /proc/loadavg)" "$b" "$qb" "$m" "$qm" | tee -a "$table"
      done
      [ "${#rp[@]}" -gt 0 ] &&
        echo "   $model: median after / before over ${#rp[@]} pairs: $(printf '%s\n' "${rp[@]}" | median)" | tee -a "$table"
      continue
    fi
    [ "$model" = deep ] && continue
    rb=() rx=()
    for p in $(seq "$pairs"); do
      baseline_run "$model" "$tr" "$te"; b=$(mean_rate)
      psrec_run "$psrec" "$model" "$tr" "$te" mpirun || continue; m=$(mean_rate)
      rb+=("$(awk -v a="$m" -v b="$b" 'BEGIN { print a / b }')")
      line="   pair $p: baseline $b, psrec mpirun $m ex/s"
      if [ -n "$xlearn" ] && has peers "$runs"; then
        xlearn_run "$model" "$tr" "$te" 0 "$ntrain"; x=$(mean_rate)
        psrec_run "$psrec" "$model" "$tr" "$te" mpirun || continue; m2=$(mean_rate)
        rx+=("$(awk -v a="$m2" -v b="$x" 'BEGIN { print a / b }')")
        line="$line; xLearn (training alone) $x, psrec mpirun $m2 ex/s"
      fi
      echo "$line" | tee -a "$table"
    done
    [ "${#rb[@]}" -gt 0 ] &&
      echo "   $model: median psrec mpirun / fm_baseline over ${#rb[@]} pairs: $(printf '%s\n' "${rb[@]}" | median)" | tee -a "$table"
    if [ "${#rx[@]}" -gt 0 ]; then
      echo "   $model: median psrec mpirun / xLearn over ${#rx[@]} pairs: $(printf '%s\n' "${rx[@]}" | median)" | tee -a "$table"
    fi
  done
  [ "$keep" = 1 ] || rm -f "$data".*.libsvm "$data".*.ffm
done
echo "(machine: $(nproc) cores, $(uname -m); load average $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$table"
