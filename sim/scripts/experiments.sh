#!/bin/sh
# Reproduce the experiments of docs/researcher-guide.md (small settings that
# finish on a 2-core machine). Usage: sim/scripts/experiments.sh BUILD_DIR OUT_DIR
# Writes runs under OUT_DIR and the comparison charts into docs/img/.
set -eu
BUILD=${1:-build}
OUT=${2:-sim-experiments}
SIM="$BUILD/sim/plait-sim"
mkdir -p "$OUT" docs/img
COMMON="--rounds 20 --clients-per-round 10 --eval-every 2 --quiet"

# 1. FedAvg (10 local steps) vs FedSGD (1 local step), FFA-LoRA, no personalization.
"$SIM" $COMMON --personal-clients 0 --local-steps 10 --out "$OUT/fedavg" > "$OUT/fedavg.txt"
"$SIM" $COMMON --personal-clients 0 --local-steps 1 --out "$OUT/fedsgd" > "$OUT/fedsgd.txt"
"$SIM" compare --out docs/img/fedavg-vs-fedsgd.svg --title "FedAvg (10 local steps) vs FedSGD (1 step), global loss" \
    "FedAvg E=10=$OUT/fedavg" "FedSGD E=1=$OUT/fedsgd"

# 2. LoRA aggregation modes on global and personalized loss.
for m in ffa fedit fedsa; do
    "$SIM" $COMMON --centralized --centralized-steps 2000 --set eval.centralized_batch=4 --lora-mode $m \
        --out "$OUT/mode-$m" > "$OUT/mode-$m.txt"
done
"$SIM" compare --out docs/img/modes-global.svg --title "LoRA modes: global adapter" \
    "FFA-LoRA=$OUT/mode-ffa" "FedIT=$OUT/mode-fedit" "FedSA-LoRA=$OUT/mode-fedsa"
"$SIM" compare --out docs/img/modes-personal.svg --metric personal --title "LoRA modes: personalized" \
    "FFA-LoRA=$OUT/mode-ffa" "FedIT=$OUT/mode-fedit" "FedSA-LoRA=$OUT/mode-fedsa"
cp "$OUT/mode-ffa/loss.svg" docs/img/demo-ffa.svg

# 3. The centralized baseline by number of steps (experiment 2's runs hold the 2,000-step one).
for m in ffa fedit; do
    for n in 200 500 1000 4000; do
        "$SIM" --centralized-only --centralized-steps $n --set eval.centralized_batch=4 --lora-mode $m --quiet \
            --out "$OUT/central-$m-$n" \
            > "$OUT/central-$m-$n.txt"
    done
done

# 4. Validated personalization vs the global adapter, every client (the defaults), FedIT, 30 rounds;
#    FedSA-LoRA's validated personal B over 100 rounds; the tuned centralized reference.
"$SIM" --rounds 30 --eval-every 30 --lora-mode fedit --quiet --out "$OUT/personal-fedit" > "$OUT/personal-fedit.txt"
"$SIM" --rounds 30 --eval-every 30 --lora-mode fedit --set eval.personal_lambda=1 --quiet \
    --out "$OUT/personal-fedit-ditto" > "$OUT/personal-fedit-ditto.txt"
"$SIM" --rounds 100 --eval-every 10 --lora-mode fedsa --set eval.personal_rounds=10 --set eval.personal_lr=3e-3 \
    --set eval.personal_steps=40 --set eval.personal_val_every=5 --quiet --out "$OUT/personal-fedsa" \
    > "$OUT/personal-fedsa.txt"
"$SIM" --centralized-only --lora-mode fedit --quiet --out "$OUT/central-default" > "$OUT/central-default.txt"
