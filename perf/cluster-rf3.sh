#!/usr/bin/env bash
# Replicated produce: three brokers on 127.0.0.1-3 (one shard each, spread over the CPUs), an
# RF=3 topic with min.insync.replicas=2, acks=all over QUIC; then the same load against one
# broker with an RF=1 topic, so the report gives the cost of replication on this machine.
#
#   perf/cluster-rf3.sh [RESULTS_DIR]
#
# Uses target/release/{sluice,sluice-perf} (CARGO_TARGET_DIR is honoured). A benchmark, not a
# test: it asserts nothing and writes one JSON per run into RESULTS_DIR.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
SLUICE=$TARGET/release/sluice
PERF=$TARGET/release/sluice-perf
OUT=${1:-$ROOT/perf/results/cluster-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=$(mktemp -d "$ROOT/perf/data/cluster.XXXXXX")
CPUS=$(nproc)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

LOAD=(--acks all --record-size 1024 --partitions 16 --producers 2 --batch-bytes 256KiB
      --linger-ms 5 --in-flight 8 --warmup 5 --duration 20)

# One broker: ID, seeds (empty: a cluster of one).
start() {
    local id=$1 seeds=$2 ip=127.0.0.$1
    local args=(broker --node-id "$id" --data-dir "$DATA/broker-$id" --cores 1
        --cpuset $(( (id - 1) % CPUS )) --kafka-listen "$ip:19092" --quic-listen "$ip:19192"
        --admin-listen "$ip:19644" --cluster-listen "$ip:19145")
    [ -n "$seeds" ] && args+=(--seeds "$seeds")
    "$SLUICE" "${args[@]}" >> "$OUT/broker-$id.log" 2>&1 &
    PIDS+=($!)
}

wait_admin() {
    for _ in $(seq 1 100); do
        curl -sf "http://$1:19644/health" >/dev/null && return 0
        sleep 0.1
    done
    echo "broker at $1 did not come up" >&2
    exit 1
}

"$PERF" reference --dir "$DATA" --bytes 1073741824 --json "$OUT/reference.json" > "$OUT/reference.txt"

seeds=1@127.0.0.1:19145,2@127.0.0.2:19145,3@127.0.0.3:19145
for id in 1 2 3; do start "$id" "$seeds"; done
for id in 1 2 3; do wait_admin "127.0.0.$id"; done
# The controller needs a moment to register everyone; creation is retried until it takes.
for _ in $(seq 1 50); do
    "$SLUICE" topic create rf3 --partitions 16 --replicas 3 --config min.insync.replicas=2 \
        --brokers 127.0.0.1:19192 2>/dev/null && break
    sleep 0.2
done
"$PERF" produce --protocol quic --brokers 127.0.0.1:19192 --topic rf3 "${LOAD[@]}" \
    --reference "$OUT/reference.json" --json "$OUT/rf3-quic.json" | tee "$OUT/rf3-quic.txt"
"$PERF" produce --protocol kafka --brokers 127.0.0.1:19092 --topic rf3 "${LOAD[@]}" \
    --reference "$OUT/reference.json" --json "$OUT/rf3-kafka.json" | tee "$OUT/rf3-kafka.txt"
curl -s http://127.0.0.1:19644/metrics | grep -E '^sluice_(replica_lag|under_replicated)' \
    > "$OUT/rf3-metrics.txt" || true
# A broker that died during the run is reported by its log; the script goes on.
for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || echo "broker $pid had exited" >&2; done
wait 2>/dev/null || true
PIDS=()

start 1 ""
wait_admin 127.0.0.1
"$PERF" produce --protocol quic --brokers 127.0.0.1:19192 --topic rf1 "${LOAD[@]}" \
    --reference "$OUT/reference.json" --json "$OUT/rf1-quic.json" | tee "$OUT/rf1-quic.txt"
"$PERF" produce --protocol kafka --brokers 127.0.0.1:19092 --topic rf1 "${LOAD[@]}" \
    --reference "$OUT/reference.json" --json "$OUT/rf1-kafka.json" | tee "$OUT/rf1-kafka.txt"
echo "results in $OUT"
