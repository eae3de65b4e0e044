#!/usr/bin/env bash
# Build plait and run its whole test suite.
#   scripts/test.sh              release build (-O2 -Werror), all tests
#   scripts/test.sh --sanitize   debug build with ASan+UBSan, all tests
#   scripts/test.sh --soak       release build, only the soak tests (label soak)
#   scripts/test.sh --tsan       ThreadSanitizer build, the service, round and simulator tests
# The soak tests run only with --soak (PLAIT_SOAK_SCALE=N makes them longer).
# Build trees: build/, build-san/, build-tsan/. Extra arguments go to ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
mode=release
case "${1:-}" in
  --sanitize) mode=sanitize; shift ;;
  --soak) mode=soak; shift ;;
  --tsan) mode=tsan; shift ;;
esac
jobs=$(nproc 2>/dev/null || echo 2)
if [ "$mode" = sanitize ]; then
  dir=build-san
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DPLAIT_ASAN=ON -DPLAIT_UBSAN=ON -DPLAIT_WERROR=ON >/dev/null
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
  export PLAIT_TEST_SANITIZED=1
elif [ "$mode" = tsan ]; then
  dir=build-tsan
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DPLAIT_TSAN=ON -DPLAIT_WERROR=ON >/dev/null
  # halt_on_error: a race in the aggregator child process kills it, which fails the test
  export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
  export PLAIT_TEST_SANITIZED=1
  cmake --build "$dir" -j "$jobs" --target plait-aggregator plait-agent plait-sim integ_server check_round check_sim
  cd "$dir"
  ctest --output-on-failure -j "$jobs" -R '^(integ_server|unit_round|unit_sim)$' "$@"
  exit
else
  dir=build
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release -DPLAIT_WERROR=ON >/dev/null
fi
cmake --build "$dir" -j "$jobs"
cd "$dir"
if [ "$mode" = soak ]; then
  ctest --output-on-failure -L soak "$@"
else
  ctest --output-on-failure -j "$jobs" -LE soak "$@"
fi
