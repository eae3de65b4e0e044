#!/usr/bin/env bash
# The main job, end to end: install what is missing, build, then personalize
# the stories260K model to one Shakespeare speaker on this device:
#   1. ingest the speaker's speeches into a private device store (sqlite),
#   2. measure the frozen model's held-out loss on them,
#   3. fine-tune a LoRA adapter on the training split, on the CPU,
#   4. measure the held-out loss again, and
#   5. sample text from the model without and with the adapter; then
#   6. simulate a fleet: every Shakespeare speaker with 20+ lines is a device,
#      and federated rounds (FFA-LoRA, FedAvg) improve a shared adapter
#      (plait-sim's default experiment; report in out/demo/sim/report.md).
# Environment: PLAIT_ASSETS (default ../shared/assets), SPEAKER (default
# GLOUCESTER), STEPS (default 150), THREADS (default: all cores), OUT (default
# out/demo), SIM (default 1; 0 skips step 6).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
scripts/install-deps.sh
export PLAIT_ASSETS=${PLAIT_ASSETS:-$root/../shared/assets}
speaker=${SPEAKER:-GLOUCESTER}
steps=${STEPS:-150}
threads=${THREADS:-$(nproc 2>/dev/null || echo 2)}
out=${OUT:-out/demo}
for f in stories260K.bin tok512.bin tinyshakespeare.txt; do
  [ -f "$PLAIT_ASSETS/$f" ] || { echo "demo: $PLAIT_ASSETS/$f not found (set PLAIT_ASSETS)" >&2; exit 1; }
done

echo "== building (release)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$threads" --target plait-agent plait-sim >/dev/null
agent=build/client/plait-agent

mkdir -p "$out"
rm -f "$out/device.db" "$out/device.db-wal" "$out/device.db-shm"
# One record per speech: the blocks of tinyshakespeare.txt whose first line is "SPEAKER:".
awk -v who="$speaker:" 'BEGIN { RS = ""; ORS = "\n\n" } { split($0, l, "\n"); if (l[1] == who) print }' \
  "$PLAIT_ASSETS/tinyshakespeare.txt" > "$out/speeches.txt"
[ -s "$out/speeches.txt" ] || { echo "demo: no speeches by '$speaker'" >&2; exit 1; }

echo "== 1. ingest $speaker's speeches into the device store"
$agent ingest --db "$out/device.db" --text "$out/speeches.txt"
rm -f "$out/speeches.txt"   # the store now holds the only copy

echo "== 2-4. fine-tune a LoRA adapter (rank 8 on wq,wv) for $steps steps on $threads threads"
$agent train --db "$out/device.db" --out "$out/adapter.safetensors" --steps "$steps" \
  --lr 3e-3 --warmup 10 --cosine --threads "$threads" --log-every 25

echo "== held-out evaluation"
$agent eval --db "$out/device.db" --adapter "$out/adapter.safetensors" --threads "$threads"

prompt="$speaker:"
echo "== 5. sample without the adapter (prompt '$prompt', temperature 0.8, seed 7)"
$agent generate --prompt "$prompt" --temperature 0.8 --top-p 0.9 --steps 120 --seed 7
echo "== 5. sample with the adapter"
$agent generate --adapter "$out/adapter.safetensors" --prompt "$prompt" --temperature 0.8 --top-p 0.9 --steps 120 --seed 7
if [ "${SIM:-1}" != 0 ]; then
  echo "== 6. federated: simulate a fleet of Shakespeare speakers (20 rounds, 10 devices per round)"
  build/sim/plait-sim --out "$out/sim" --threads "$threads"
fi
echo "== done: store $out/device.db, adapter $out/adapter.safetensors; fleet report $out/sim/report.md"
