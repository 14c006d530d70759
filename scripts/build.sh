#!/usr/bin/env bash
# Builds the release binary in build/ and, with --sanitize, the
# AddressSanitizer + UndefinedBehaviorSanitizer build in build-asan/.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$JOBS"
if [ "${1:-}" = "--sanitize" ]; then
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DAIRAVATA_SANITIZE=ON >/dev/null
    cmake --build build-asan -j"$JOBS"
fi
