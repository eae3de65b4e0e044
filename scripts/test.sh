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
# The dependency arrows (lib depends on nothing of client, aggregator or sim):
# a wrong include fails here, before minutes of building.
scripts/check-layering.sh
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
  # check's per-test timeouts (tcase_set_timeout) are sized for release builds;
  # instrumented code runs 3-10x slower.
  export CK_TIMEOUT_MULTIPLIER=${CK_TIMEOUT_MULTIPLIER:-4}
elif [ "$mode" = tsan ]; then
  dir=build-tsan
  cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DPLAIT_TSAN=ON -DPLAIT_WERROR=ON >/dev/null
  # halt_on_error: a race in the aggregator child process kills it, which fails the test
  export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
  export PLAIT_TEST_SANITIZED=1
  export CK_TIMEOUT_MULTIPLIER=${CK_TIMEOUT_MULTIPLIER:-4}
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
# Tests make their scratch directories here (tmp-TAG-XXXXXX) and leave them for
# inspection; the previous run's go now, so they do not pile up.
rm -rf ./tmp-*
# The failed assertions are printed again at the end, so that a log cut to
# its tail (as CI shows it) still says what failed.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
rc=0
if [ "$mode" = soak ]; then
  ctest --output-on-failure -L soak "$@" 2>&1 | tee "$log" || rc=$?
else
  ctest --output-on-failure -j "$jobs" -LE soak "$@" 2>&1 | tee "$log" || rc=$?
fi
if [ "$rc" -ne 0 ]; then
  echo "== failed checks ($mode) =="
  grep -E ':[FE]:|runtime error|ERROR: AddressSanitizer|Test timeout expired' "$log" | head -40 || true
fi
exit "$rc"
