#!/usr/bin/env bash
# Build plait and run its whole test suite.
#   scripts/test.sh              release build (-O2 -Werror), all tests
#   scripts/test.sh --sanitize   debug build with ASan+UBSan, all tests
# Build trees: build/ and build-san/. Extra arguments go to ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
mode=release
if [ "${1:-}" = "--sanitize" ]; then mode=sanitize; shift; fi
jobs=$(nproc 2>/dev/null || echo 2)
if [ "$mode" = sanitize ]; then
  dir=build-san
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DPLAIT_ASAN=ON -DPLAIT_UBSAN=ON -DPLAIT_WERROR=ON >/dev/null
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  export PLAIT_TEST_SANITIZED=1
else
  dir=build
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DPLAIT_WERROR=ON >/dev/null
fi
cmake --build "$dir" -j "$jobs"
cd "$dir"
ctest --output-on-failure -j "$jobs" "$@"
