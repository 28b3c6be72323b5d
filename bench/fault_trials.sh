#!/usr/bin/env bash
# Fault trials: how a job ends, and how it recovers, when one of its ranks
# or hosts fails. Every figure printed comes from the runs made here.
#
# On this host (mpirun -np 4: scheduler, server, 2 workers; ml-100k u1,
# blocks schedule, checkpoints every few epochs), once training is under
# way, for each of scheduler / server / worker:
#   kill -9  through `psrec launch` with restarts: seconds from the kill to
#            the failed attempt's end, its exit status, the first error
#            line, then the final test RMSE after the automatic restart
#            against a fault-free run's (same launch, no fault);
#   SIGSTOP  under bare mpirun: seconds from the stop to mpirun's exit, the
#            exit status and the first error line (the stopped rank is
#            continued and killed afterwards if it is still there).
# On three simulated hosts (tests/hosts/hosts.sh; needs root and
# namespaces, else those rows are skipped, saying why), rank 1 (the server)
# and a worker on h1, h1's link cut once training is under way:
#   short    a 4 s cut with --timeout 30: seconds from the cut to the end,
#            exit status, final test RMSE against a fault-free run across
#            the hosts;
#   long     the link stays down until the job has ended (at most 150 s)
#            with --timeout 20: seconds from the cut to mpirun's exit, and
#            how many processes are left on h1 (polled for 30 s, link down).
# A trial that does not end within its limit is killed and shown as HANG.
#
#   bench/fault_trials.sh [--trials N] [--only one|hosts] [--out FILE]
#
# PSREC_BUILD: build directory (default build/); PSREC_DATA: data sets
# (default ../shared/data beside the source tree). Run as root with Open
# MPI on PATH. Prints a markdown table (and writes it to --out).
set -u

src=$(cd "$(dirname "$0")/.." && pwd)
build=${PSREC_BUILD:-$src/build}
data=${PSREC_DATA:-$src/../shared/data}
psrec=$build/psrec
hosts=$src/tests/hosts/hosts.sh
trials=5 only="" out=""
while [ $# -gt 0 ]; do
    case "$1" in
    --trials) trials=${2:?}; shift 2 ;;
    --only) only=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    *) echo "usage: $0 [--trials N] [--only one|hosts] [--out FILE]" >&2; exit 2 ;;
    esac
done
[ -x "$psrec" ] || { echo "no $psrec: build first (bash cluster/build.sh build)" >&2; exit 1; }
[ -f "$data/ml-100k/u1.base" ] || { echo "no $data/ml-100k/u1.base (set PSREC_DATA)" >&2; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

work=$build/fault-trials-$$
mkdir -p "$work"
rows=$work/rows
: >"$rows"
hdir=""
cleanup() {
    [ -n "$hdir" ] && "$hosts" down "$hdir" >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { echo "$EPOCHREALTIME"; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# The last epoch in a metrics file, or 0.
epochs_done() {
    local e
    e=$(grep -o '"epoch": [0-9]*' "$1" 2>/dev/null | tail -1 | grep -o '[0-9]*$')
    echo "${e:-0}"
}
# The last test RMSE in a metrics file, or "-".
last_rmse() {
    local v
    v=$(grep -o '"test_rmse": [0-9.eE+-]*' "$1" 2>/dev/null | tail -1 | awk '{ print $2 }')
    echo "${v:--}"
}
# The first line of a log that says what went wrong (quotes made safe for
# markdown; at most 260 characters).
first_error() {
    local l
    l=$(grep -m1 -E 'psrec: error:|mpirun noticed|lost communication|ORTE has lost|exited on signal' \
        "$1" 2>/dev/null | cut -c1-260 | tr '|' '/')
    echo "${l:-(none)}"
}
# Waits for pid (a child of this shell) at most $2 s; WAITED is its exit
# status, or HANG (then it is ended).
wait_for() {
    local pid=$1 limit=$2 t0
    t0=$SECONDS
    while kill -0 "$pid" 2>/dev/null; do
        if [ $((SECONDS - t0)) -ge "$limit" ]; then
            # mpirun (or launch) ends its ranks on TERM; KILL if it does not
            kill -TERM "$pid" 2>/dev/null; sleep 3; kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            WAITED=HANG; return
        fi
        sleep 0.05
    done
    wait "$pid"
    WAITED=$?
}
# Waits (at most $3 s) until metrics file $1 shows epoch $2 or pid $4 ends.
wait_epoch() {
    local t0=$SECONDS
    while [ "$(epochs_done "$1")" -lt "$2" ] && [ $((SECONDS - t0)) -lt "$3" ] &&
          kill -0 "$4" 2>/dev/null; do
        sleep 0.05
    done
}
# Waits (at most $2 s) for a file to exist.
wait_file() {
    local t0=$SECONDS
    while [ ! -s "$1" ] && [ $((SECONDS - t0)) -lt "$2" ]; do sleep 0.05; done
}
# Output with each line's time (for "seconds from the fault to ...").
stamp() { while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done; }

row() { echo "| $* |" >>"$rows"; echo "| $* |"; }

job_args() { # DIR EPOCHS EXTRA...
    local d=$1 e=$2
    shift 2
    echo "--train $data/ml-100k/u1.base --test $data/ml-100k/u1.test --servers 1" \
         "--schedule blocks --epochs $e --patience 0 --progress off --log_level info" \
         "--metrics $d/metrics.jsonl $*"
}

# ---- one host ----------------------------------------------------------
EPOCHS=60 EVERY=10 AT=15
mpi1="--oversubscribe --bind-to none -x PSREC_PID_DIR -np 4"

# One run through psrec launch; $3 the signal to send to rank $2 at epoch
# $AT, or "none". Row: seconds from the fault to the attempt's end, its
# exit status, the first error, final RMSE, restarts, launch's status.
launch_trial() { # DIR RANK SIG
    local d=$1 rank=$2 sig=$3 pid tf="" fail
    mkdir -p "$d/pids"
    # shellcheck disable=SC2046
    ( set -o pipefail; PSREC_PID_DIR=$d/pids PSREC_MPIRUN=mpirun "$psrec" launch $mpi1 -- \
        $(job_args "$d" $EPOCHS --checkpoint_dir "$d/ckpt" --checkpoint_every $EVERY \
          --restarts 3 --restart_backoff 1 --timeout 30) 2>&1 | stamp >"$d/out.log" ) &
    pid=$!
    if [ "$sig" != none ]; then
        wait_epoch "$d/metrics.jsonl" $AT 120 "$pid"
        wait_file "$d/pids/rank-$rank.pid" 10
        tf=$(now)
        kill "-$sig" "$(cat "$d/pids/rank-$rank.pid")" 2>/dev/null
    fi
    wait_for "$pid" 600
    LAUNCH_STATUS=$WAITED
    fail=$(grep -m1 'psrec launch: attempt 1 of' "$d/out.log")
    FAULT_SECS=- FAULT_EXIT=-
    if [ -n "$fail" ] && [ -n "$tf" ]; then
        FAULT_SECS=$(secs "$tf" "${fail%% *}")
        FAULT_EXIT=$(echo "$fail" | grep -o 'exit status [0-9]*' | grep -o '[0-9]*$')
    fi
    RESTARTS=$(grep -c 'psrec launch: attempt .* failed' "$d/out.log")
    RMSE=$(last_rmse "$d/metrics.jsonl")
}

# One run under bare mpirun, rank $2 stopped at epoch $AT.
stop_trial() { # DIR RANK
    local d=$1 rank=$2 pid tf victim
    mkdir -p "$d/pids"
    # shellcheck disable=SC2046
    ( PSREC_PID_DIR=$d/pids exec mpirun $mpi1 "$psrec" train \
        $(job_args "$d" 100000 --timeout 30) >"$d/out.log" 2>&1 ) &
    pid=$!
    wait_epoch "$d/metrics.jsonl" $AT 120 "$pid"
    wait_file "$d/pids/rank-$rank.pid" 10
    victim=$(cat "$d/pids/rank-$rank.pid")
    tf=$(now)
    kill -STOP "$victim" 2>/dev/null
    wait_for "$pid" 120
    STOP_SECS=$(secs "$tf" "$(now)")
    STOP_EXIT=$WAITED
    # the runtime's kill may take a moment to reach it (polled, bounded)
    local t0=$SECONDS
    while kill -0 "$victim" 2>/dev/null && [ $((SECONDS - t0)) -lt 10 ]; do sleep 0.1; done
    STOP_LEFT=no
    if kill -0 "$victim" 2>/dev/null; then
        STOP_LEFT=yes
        kill -CONT "$victim" 2>/dev/null; kill -KILL "$victim" 2>/dev/null
    fi
}

role_of() { case $1 in 0) echo scheduler ;; 1) echo server ;; *) echo worker ;; esac; }

if [ -z "$only" ] || [ "$only" = one ]; then
    echo "## one host: mpirun -np 4, ml-100k u1, blocks, $EPOCHS epochs, checkpoint every $EVERY, fault at epoch $AT"
    d=$work/free; mkdir -p "$d"
    launch_trial "$d" 0 none
    REF=$RMSE
    row "fault-free | - | $LAUNCH_STATUS | - | test RMSE $REF"
    for rank in 0 1 2; do
        for t in $(seq 1 "$trials"); do
            d=$work/kill-$rank-$t; mkdir -p "$d"
            launch_trial "$d" "$rank" KILL
            dev=$(awk -v a="$RMSE" -v b="$REF" 'BEGIN { if (a + 0 > 0) printf "%+.3f%%", (a / b - 1) * 100; else print "-" }')
            row "kill -9 $(role_of $rank) #$t | $FAULT_SECS | $FAULT_EXIT | $(first_error "$d/out.log" | cut -d' ' -f2-) | $RMSE ($dev); launch exit $LAUNCH_STATUS after $RESTARTS restart(s)"
            rm -rf "$d/ckpt"
        done
    done
    for rank in 0 1 2; do
        for t in $(seq 1 "$trials"); do
            d=$work/stop-$rank-$t; mkdir -p "$d"
            stop_trial "$d" "$rank"
            row "SIGSTOP $(role_of $rank) #$t | $STOP_SECS | $STOP_EXIT | $(first_error "$d/out.log") | stopped rank left alive: $STOP_LEFT"
        done
    done
fi

# ---- three simulated hosts ---------------------------------------------
cut_trial() { # DIR LENGTH(short|long)
    local d=$1 kind=$2 pid tc subnet extra epochs
    subnet=$(cat "$hdir/subnet")
    if [ "$kind" = short ]; then extra="--timeout 30"; epochs=100; else extra="--timeout 20"; epochs=100000; fi
    # shellcheck disable=SC2046
    ( exec "$hosts" exec "$hdir" h0 mpirun --oversubscribe --bind-to none \
        --hostfile "$hdir/hostfile" --map-by node --mca plm_rsh_agent "$hdir/agent" \
        --mca plm_rsh_no_tree_spawn 1 --mca oob_tcp_if_include "$subnet" \
        --mca btl_tcp_if_include "$subnet" -np 5 "$psrec" train \
        $(job_args "$d" $epochs $extra) >"$d/out.log" 2>&1 ) &
    pid=$!
    wait_epoch "$d/metrics.jsonl" 2 120 "$pid"
    "$hosts" link "$hdir" h1 down
    tc=$(now)
    if [ "$kind" = short ]; then
        sleep 4 # the fault's length
        "$hosts" link "$hdir" h1 up
        wait_for "$pid" 300
    else
        wait_for "$pid" 150
    fi
    CUT_SECS=$(secs "$tc" "$(now)")
    CUT_EXIT=$WAITED
    # what is left on h1 once mpirun has gone, the link still down (h1's
    # daemon ends when TCP gives up on mpirun): polled for at most 30 s
    local t0=$SECONDS
    while [ "$("$hosts" procs "$hdir" h1 | wc -l)" -gt 0 ] && [ $((SECONDS - t0)) -lt 30 ]; do
        sleep 0.2
    done
    CUT_LEFT=$("$hosts" procs "$hdir" h1 | wc -l)
    "$hosts" link "$hdir" h1 up
    RMSE=$(last_rmse "$d/metrics.jsonl")
}

if [ -z "$only" ] || [ "$only" = hosts ]; then
    hdir=$work/hosts
    if why=$(PSREC_HOSTS_OWNER=$$ "$hosts" up "$hdir" 2>&1); then
        echo "## three simulated hosts: mpirun -np 5 --map-by node, server and a worker on h1"
        d=$work/hosts-free; mkdir -p "$d"
        subnet=$(cat "$hdir/subnet")
        # shellcheck disable=SC2046
        "$hosts" exec "$hdir" h0 mpirun --oversubscribe --bind-to none \
            --hostfile "$hdir/hostfile" --map-by node --mca plm_rsh_agent "$hdir/agent" \
            --mca plm_rsh_no_tree_spawn 1 --mca oob_tcp_if_include "$subnet" \
            --mca btl_tcp_if_include "$subnet" -np 5 "$psrec" train \
            $(job_args "$d" 100 --timeout 30) >"$d/out.log" 2>&1
        st=$?
        HREF=$(last_rmse "$d/metrics.jsonl")
        row "fault-free, 3 hosts | - | $st | - | test RMSE $HREF"
        for kind in short long; do
            for t in $(seq 1 "$trials"); do
                d=$work/cut-$kind-$t; mkdir -p "$d"
                cut_trial "$d" $kind
                if [ $kind = short ]; then
                    rest="test RMSE $RMSE (fault-free $HREF)"
                else
                    rest="processes left on h1: $CUT_LEFT"
                fi
                row "$kind cut of h1 #$t | $CUT_SECS | $CUT_EXIT | $(first_error "$d/out.log") | $rest"
            done
        done
    else
        echo "three simulated hosts skipped: $why"
    fi
fi

{
    echo
    echo "| trial | s from fault to exit | exit | first error line | result |"
    echo "|---|---|---|---|---|"
    cat "$rows"
} | { if [ -n "$out" ]; then tee "$out"; else cat; fi; }
