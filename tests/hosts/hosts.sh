#!/usr/bin/env bash
# Simulated hosts on one machine, for the multi-host tests.
#
# Each host is a network + UTS + mount namespace held open by one sleeping
# process: its own address on a private bridge, its own hostname, its own
# /tmp and /dev/shm (tmpfs). The bridge lives inside host h0's namespace
# and the veth pairs join h0 to the others, so nothing is added to the
# machine's own network namespace: no address there, no route, no bridge,
# and every interface disappears with the namespaces. Open MPI reaches the
# hosts through an rsh agent that enters them (nsenter), the filesystem
# outside /tmp and /dev/shm being the same everywhere (a shared filesystem).
#
#   hosts.sh up DIR [--same-hostname]   make h0 h1 h2 (DIR: state, not under /tmp)
#   hosts.sh down DIR                   end every process on them, remove all
#   hosts.sh exec DIR HOST CMD...       run CMD on HOST (h0.., its address or name)
#   hosts.sh agent DIR HOST CMD...      the rsh agent (DIR/agent calls this)
#   hosts.sh link DIR HOST up|down      plug or unplug HOST's cable
#   hosts.sh procs DIR HOST             pids of the processes on HOST (one a line)
#   hosts.sh check                      0 when namespaces can be made here,
#                                       else 77 and the reason on stdout
#
# `up` starts a keeper process that owns the hosts: it tears everything down
# on `down`, when the process that called `up` (its parent, or the pid in
# PSREC_HOSTS_OWNER) exits, or after
# PSREC_HOSTS_MAX_S seconds (default 1800), whichever comes first, so a
# crashed or killed test leaves nothing behind. After `up`, DIR holds
# hostfile (the three addresses), agent (for --mca plm_rsh_agent), subnet
# (for --mca *_if_include) and hosts ("name address pid hostname" lines).
#
# Each host gives up on a TCP peer that stops answering after about 13 s of
# retransmissions (net.ipv4.tcp_retries2 = 5 in its network namespace;
# PSREC_HOSTS_TCP_RETRIES2 overrides, 15 is Linux's default of about 15
# minutes): that is how mpirun learns that an unplugged host's daemon is
# gone after the job aborted, as docs/design.md asks of a cluster's hosts.
set -u

here=$(cd "$(dirname "$0")" && pwd)
self=$here/$(basename "$0")
N=3

die() { echo "hosts.sh: $*" >&2; exit 1; }

check() {
    [ "$(id -u)" = 0 ] || { echo "not root: network namespaces need root"; return 77; }
    for t in ip unshare nsenter mount; do
        command -v "$t" >/dev/null 2>&1 || { echo "no '$t' (iproute2/util-linux) on PATH"; return 77; }
    done
    if ! unshare --net --uts --mount true 2>/dev/null; then
        echo "cannot make network/UTS/mount namespaces here (unshare failed: no CAP_SYS_ADMIN?)"
        return 77
    fi
    if ! unshare --net sh -c 'ip link add psrecchk0 type bridge && ip link del psrecchk0 &&
                              ip link add psrecchk1 type veth peer name psrecchk2' \
         >/dev/null 2>&1; then
        echo "cannot make a bridge and a veth pair inside a network namespace"
        return 77
    fi
    if ! unshare --mount --propagation private sh -c 'mount -t tmpfs tmpfs /tmp' \
         >/dev/null 2>&1; then
        echo "cannot mount a private /tmp inside a mount namespace"
        return 77
    fi
    return 0
}

# The subnet: private, and used only inside the namespaces made here.
net_of() { echo "10.213.7"; }

host_field() { # DIR HOST FIELD(1 name, 2 address, 3 pid, 4 hostname)
    local line
    line=$(awk -v h="$2" '$1 == h || $2 == h || $4 == h { print; exit }' "$1/hosts" 2>/dev/null)
    [ -n "$line" ] || return 1
    echo "$line" | awk -v f="$3" '{ print $f }'
}

in_host() { # DIR HOST CMD...
    local dir=$1 host=$2 pid
    shift 2
    pid=$(host_field "$dir" "$host" 3) || die "no host '$host' in $dir/hosts"
    exec nsenter -t "$pid" -n -u -m -- "$@"
}

# Every process in a host's network namespace other than the holder, by pid.
procs_in() { # PID
    local ino
    ino=$(stat -L -c %i "/proc/$1/ns/net" 2>/dev/null) || return 0
    stat -L -c '%i %n' /proc/[0-9]*/ns/net 2>/dev/null |
        awk -v i="$ino" -v me="$1" '$1 == i { split($2, a, "/"); if (a[3] != me) print a[3] }'
}

# The keeper: makes the hosts, then waits for the word to end them.
keep() { # DIR OWNER SAME
    local dir=$1 owner=$2 same=$3 net i pid hn deadline
    net=$(net_of)
    local pids=()
    teardown() {
        local p h
        for p in "${pids[@]}"; do
            for h in $(procs_in "$p"); do kill -KILL "$h" 2>/dev/null; done
        done
        for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
        wait 2>/dev/null
        rm -f "$dir/hosts" "$dir/hostfile" "$dir/agent" "$dir/subnet" "$dir/ready" \
              "$dir/stop" "$dir/keeper"
        echo gone >"$dir/gone"
    }
    trap 'teardown; exit 0' TERM INT HUP
    for i in $(seq 0 $((N - 1))); do
        if [ "$same" = 1 ]; then hn="psrec$owner"; else hn="psrec$owner-h$i"; fi
        # private tmpfs on /tmp and /dev/shm, then hold the namespaces open
        unshare --net --uts --mount --propagation private -- sh -c \
            "mount -t tmpfs -o size=256m tmpfs /tmp && mount -t tmpfs -o size=256m tmpfs /dev/shm &&
             hostname '$hn' && ip link set lo up && exec sleep 100000" &
        pids+=($!)
        echo "h$i $net.$((i + 1)) $! $hn" >>"$dir/hosts.new"
    done
    # wait (bounded) for every holder to be in its namespaces with its name
    deadline=$((SECONDS + 30))
    for i in $(seq 0 $((N - 1))); do
        pid=${pids[$i]}
        hn=$(awk -v h="h$i" '$1 == h { print $4 }' "$dir/hosts.new")
        until [ "$(nsenter -t "$pid" -u hostname 2>/dev/null)" = "$hn" ]; do
            if [ $SECONDS -ge $deadline ] || ! kill -0 "$pid" 2>/dev/null; then
                echo "host h$i did not start" >"$dir/failed"; teardown; exit 1
            fi
            sleep 0.1
        done
    done
    local p0=${pids[0]} err
    if ! err=$(
        set -e
        nsenter -t "$p0" -n ip link add br0 type bridge 2>&1
        nsenter -t "$p0" -n ip link set br0 up
        nsenter -t "$p0" -n ip addr add "$net.1/24" dev br0
        for i in $(seq 1 $((N - 1))); do
            nsenter -t "$p0" -n ip link add "v$i" type veth peer name eth0 netns "${pids[$i]}"
            nsenter -t "$p0" -n ip link set "v$i" master br0 up
            nsenter -t "${pids[$i]}" -n ip addr add "$net.$((i + 1))/24" dev eth0
            nsenter -t "${pids[$i]}" -n ip link set eth0 up
        done 2>&1
    ); then
        echo "network setup failed: $err" >"$dir/failed"; teardown; exit 1
    fi
    for i in $(seq 0 $((N - 1))); do
        # /proc/sys/net is the writer's network namespace's
        if ! err=$(nsenter -t "${pids[$i]}" -n sh -c \
                   "echo ${PSREC_HOSTS_TCP_RETRIES2:-5} >/proc/sys/net/ipv4/tcp_retries2" 2>&1); then
            echo "tcp_retries2 on h$i: $err" >"$dir/failed"; teardown; exit 1
        fi
    done
    mv "$dir/hosts.new" "$dir/hosts"
    for i in $(seq 1 $N); do echo "$net.$i slots=4"; done >"$dir/hostfile"
    echo "$net.0/24" >"$dir/subnet"
    printf '#!/bin/sh\n# rsh agent: $1 the host, the rest the command\nexec %s agent %s "$@"\n' \
        "$self" "$dir" >"$dir/agent"
    chmod +x "$dir/agent"
    echo $$ >"$dir/keeper"
    touch "$dir/ready"
    deadline=$((SECONDS + ${PSREC_HOSTS_MAX_S:-1800}))
    while [ ! -e "$dir/stop" ] && kill -0 "$owner" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
        sleep 0.5
    done
    teardown
}

cmd=${1:-}
shift || true
case "$cmd" in
check)
    check; exit $? ;;
up)
    dir=${1:?usage: hosts.sh up DIR [--same-hostname]}
    same=0
    [ "${2:-}" = --same-hostname ] && same=1
    why=$(check) || { echo "hosts.sh: skipped: $why"; exit 77; }
    case "$dir" in /tmp/*|/dev/shm/*) die "DIR must not be under /tmp or /dev/shm (private per host)";; esac
    mkdir -p "$dir" || die "cannot make $dir"
    if k=$(cat "$dir/keeper" 2>/dev/null) && kill -0 "$k" 2>/dev/null; then
        die "$dir is in use (keeper $k); one directory per set of hosts"
    fi
    rm -f "$dir/ready" "$dir/failed" "$dir/gone" "$dir/stop" "$dir/hosts.new"
    # the keeper outlives this script; it watches the caller (our parent)
    setsid "$self" keep "$dir" "${PSREC_HOSTS_OWNER:-$PPID}" "$same" </dev/null >"$dir/keeper.log" 2>&1 &
    for _ in $(seq 1 600); do
        [ -e "$dir/ready" ] && { cat "$dir/hosts"; exit 0; }
        [ -e "$dir/failed" ] && die "$(cat "$dir/failed")"
        sleep 0.1
    done
    touch "$dir/stop"
    die "hosts not ready after 60 s (see $dir/keeper.log)" ;;
keep)
    keep "$@" ;;
down)
    dir=${1:?usage: hosts.sh down DIR}
    [ -d "$dir" ] || exit 0
    touch "$dir/stop"
    k=$(cat "$dir/keeper" 2>/dev/null || true)
    for _ in $(seq 1 300); do
        [ -e "$dir/gone" ] && break
        [ -n "$k" ] && ! kill -0 "$k" 2>/dev/null && break
        sleep 0.1
    done
    # the keeper is gone or stuck: end what is left by hand
    if [ -e "$dir/hosts" ]; then
        while read -r _ _ pid _; do
            for p in $(procs_in "$pid"); do kill -KILL "$p" 2>/dev/null; done
            kill -KILL "$pid" 2>/dev/null
        done <"$dir/hosts"
        [ -n "$k" ] && kill -KILL "$k" 2>/dev/null
    fi
    rm -rf "$dir" ;;
exec)
    dir=${1:?}; host=${2:?}; shift 2
    in_host "$dir" "$host" "$@" ;;
agent)
    # Open MPI calls: agent HOST CMD (CMD one string for a shell)
    dir=${1:?}; host=${2:?}; shift 2
    in_host "$dir" "$host" sh -c "$*" ;;
procs)
    dir=${1:?}; host=${2:?}
    pid=$(host_field "$dir" "$host" 3) || die "no host '$host' in $dir/hosts"
    procs_in "$pid" ;;
link)
    dir=${1:?}; host=${2:?}; state=${3:?}
    name=$(host_field "$dir" "$host" 1) || die "no host '$host'"
    [ "$name" = h0 ] && die "h0 carries the bridge; cut h1 or h2"
    p0=$(host_field "$dir" h0 3)
    exec nsenter -t "$p0" -n ip link set "v${name#h}" "$state" ;;
*)
    die "usage: hosts.sh up|down|exec|agent|link|procs|check ..." ;;
esac
