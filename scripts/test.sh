#!/usr/bin/env bash
# Runs the whole test suite: installs missing dependencies, builds the
# release and sanitizer builds, runs the C unit tests (ctest) and the
# command-line tests (pytest) against both, and prints one closing line
# "N passed, N failed, N skipped". Exits non-zero if anything failed.
#
# Environment: AIRAVATA_SHARED points at the shared reference data
# (default ../shared next to the repository).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

scripts/install-deps.sh || { echo "0 passed, 1 failed"; exit 1; }
scripts/build.sh --sanitize || { echo "0 passed, 1 failed"; exit 1; }

export AIRAVATA_SHARED=${AIRAVATA_SHARED:-$ROOT/../shared}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
RESULTS=$(mktemp -d)
trap 'rm -rf "$RESULTS"' EXIT

status=0
for build in build build-asan; do
    echo "== unit tests ($build)"
    (cd "$build" && ctest --output-on-failure --output-junit "$RESULTS/ctest-$build.xml") || status=1
    echo "== command-line tests ($build)"
    AIRAVATA_BIN="$ROOT/$build/airavata" AIRAVATA_BUILD="$ROOT/$build" \
        .venv/bin/python -m pytest -q tests/cli --junitxml="$RESULTS/pytest-$build.xml"
    rc=$?
    # pytest exits 5 when it collected no tests; that is not a failure here.
    [ $rc -ne 0 ] && [ $rc -ne 5 ] && status=1
done

.venv/bin/python scripts/count_results.py "$RESULTS"/*.xml || status=1
exit $status
