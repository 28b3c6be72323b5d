#!/usr/bin/env bash
# Runs a psrec job on this machine under mpirun with the right flags for a
# small box (oversubscription, root allowed), e.g.
#   cluster/local.sh 5 cluster/examples/ml100k.ini --servers 2
# The first argument is the number of ranks: 1 scheduler + servers + workers.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
np=${1:?usage: cluster/local.sh NRANKS [JOB.ini] [--key value ...]}
shift
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun --oversubscribe --bind-to none -np "$np" "$top/build/psrec" train "$@"
