#!/bin/bash
# Adapter bytes down per device per round (docs/performance.md, "Adapter downloads"):
# a real plait-aggregator and N real plait-agent processes on loopback (TLS, plain rounds),
# rank 173 on all seven projections of stories260K (999,940 adapter parameters), 3 rounds of
# one local step each. Prints the aggregator's "round committed" lines (downloads and the mean
# bytes per download of that round) and its download counters.
#
# usage: [MODE=fedit|ffa] [BUILD=build] [PLAIT_ASSETS=../shared/assets] \
#        scripts/measure-downloads.sh N DOWNLOAD_DELTA_BITS OUTDIR
set -u
N=$1; BITS=$2; D=$3
B=${BUILD:-build}
AGG=$B/aggregator/plait-aggregator; AG=$B/client/plait-agent
ASSETS=${PLAIT_ASSETS:-../shared/assets}
rm -rf $D; mkdir -p $D
$AGG init $D/dep --base-model $ASSETS/stories260K.bin --set secure_agg=false --set lora_mode=${MODE:-fedit} \
  --set lora_targets=wq,wk,wv,wo,w1,w2,w3 --set lora_rank=173 --set quant_bits=16 --set target_cohort=$N \
  --set min_cohort=$N --set overselect=1 --set selection_timeout_s=600 --set round_timeout_s=900 \
  --set local_steps=1 --set batch=1 --set seq_len=16 --set lr=0.01 --set retry_ms=500 --set idle_timeout_s=600 \
  --set auth_timeout_s=120 --set max_preauth_per_addr=400 --set max_preauth_connections=100 --set max_connections=400 \
  --set download_delta_bits=$BITS >/dev/null || exit 1
head -c 400000 $ASSETS/tinyshakespeare.txt > $D/text.txt
for i in $(seq 0 $((N-1))); do
  $AGG enroll $D/dep --device dev$i --out-key $D/dev$i.key --out-cert $D/dev$i.crt >/dev/null || exit 1
  $AG ingest --db $D/dev$i.db --text $D/text.txt >/dev/null 2>&1 || exit 1
done
$AGG serve $D/dep --port 0 --metrics-port 0 --port-file $D/ports.json > $D/server.log 2>&1 &
SP=$!
for k in $(seq 100); do [ -s $D/ports.json ] && break; sleep 0.2; done
PORT=$(python3 -c "import json;print(json.load(open('$D/ports.json'))['port'])")
MPORT=$(python3 -c "import json;print(json.load(open('$D/ports.json'))['metrics_port'])")
pids=""
for i in $(seq 0 $((N-1))); do
  PLAIT_ASSETS=$ASSETS $AG join --server 127.0.0.1:$PORT --ca $D/dep/ca.crt --cert $D/dev$i.crt --key $D/dev$i.key \
    --db $D/dev$i.db --state $D/dev$i.state --daemon --rounds 3 --rejoin-ms 200 --seed $((i+1)) \
    --allow-plain-aggregation --max-runtime 1500 > /dev/null 2> $D/dev$i.log &
  pids="$pids $!"
done
# (an agent that counted a failed connection attempt may wait in a 4th round: stop it after the
# 3rd commit rather than wait for its selection timeout)
for k in $(seq 3000); do grep -q 'round committed round=3 ' $D/server.log && break; sleep 1; done
sleep 5
for p in $pids; do kill $p 2>/dev/null; wait $p 2>/dev/null; done
python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:$MPORT/metrics').read().decode())" \
  > $D/metrics.txt
kill $SP; wait $SP
grep -o 'round committed[^"]*' $D/server.log
grep adapter_download $D/metrics.txt | grep -v '^#'
