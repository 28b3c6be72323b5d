#!/usr/bin/env bash
# The README's second command (and what CI runs): install what is missing,
# build with -Werror, run the whole test suite, then build again with
# AddressSanitizer + UndefinedBehaviorSanitizer and run the suite again.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/cluster/deps.sh"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1

echo "== build (release)"
"$top/cluster/build.sh" "$top/build"
echo "== tests (release)"
# two test programs at a time: the integration tests spend much of their
# time waiting on messages and process start-up, so the 2 cores stay busy
(cd "$top/build" && ctest -j2 --output-on-failure)

echo "== build (address + undefined behaviour sanitizers)"
"$top/cluster/build.sh" "$top/build-asan" -DPSREC_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
echo "== tests (sanitizers)"
# Leak checking is on for every in-process test (the --local cluster runs the
# same role code); the tests that start mpirun turn it off in the ranks, where
# it would report Open MPI's own start-up allocations.
(cd "$top/build-asan" && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
   UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest -j2 --output-on-failure)
echo "== all tests passed"
