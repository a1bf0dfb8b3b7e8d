#!/usr/bin/env bash
# Runs the checked-in performance scenarios (perf/scenarios/*.sh, in name order), each against
# a fresh local broker, and writes every JSON report, HDR log and SVG plot into one results
# directory, next to the reference measured at the start of the same run.
#
# usage: perf/run-all.sh [PATTERN]     # PATTERN selects scenario files by substring
# environment:
#   RESULTS    results directory        [perf/results/DATE-TIME]
#   DATA_ROOT  broker data directories; must be on the disk under test [perf/data]
#   NO_BUILD=1 use the binaries already in target/release
#   REF_BYTES  bytes per reference bandwidth measurement [1073741824]
#   NICE       run broker and harness at this nice value (e.g. -10 on a shared machine) [0]
#   SKIP       scenario files to skip, by substring (e.g. 70)
#
# Every broker listens on non-default loopback ports so that a developer's broker or another
# test on the machine is never hit. The machine's load is recorded before every run.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PATTERN=${1:-}
RESULTS=${RESULTS:-$ROOT/perf/results/$(date +%Y%m%d-%H%M%S)}
DATA_ROOT=${DATA_ROOT:-$ROOT/perf/data}
REF_BYTES=${REF_BYTES:-1073741824}
KAFKA_PORT=${KAFKA_PORT:-19092}
QUIC_PORT=${QUIC_PORT:-19192}
ADMIN_PORT=${ADMIN_PORT:-19644}
mkdir -p "$RESULTS" "$DATA_ROOT"
RESULTS=$(cd "$RESULTS" && pwd)
DATA_ROOT=$(cd "$DATA_ROOT" && pwd)
# One run at a time per data directory: two would delete each other's broker data.
exec 9> "$DATA_ROOT/.lock"
flock -n 9 || { echo "another run-all.sh is using $DATA_ROOT" >&2; exit 1; }

if [ -z "${NO_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build --release -p sluice -p sluice-perf)
fi
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# Private copies: a concurrent build in a shared target directory must not swap binaries
# in the middle of a run.
mkdir -p "$RESULTS/bin"
cp "$TARGET/release/sluice" "$TARGET/release/sluice-perf" "$RESULTS/bin/"
SLUICE="$RESULTS/bin/sluice"
PERF="$RESULTS/bin/sluice-perf"
(cd "$ROOT" && git describe --always --dirty --abbrev=12) > "$RESULTS/git.txt" 2>/dev/null || true

log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$RESULTS/run.log" >&2; }

BROKER_PID=""
BROKER_DATA=""
BROKER_ARGS=()

# broker_start [sluice broker flags...]: a fresh data directory, default flags, ports above.
broker_start() {
    BROKER_DATA="$DATA_ROOT/broker"
    rm -rf "$BROKER_DATA"
    mkdir -p "$BROKER_DATA"
    BROKER_ARGS=("$@")
    broker_launch
}

# broker_launch: (re)starts the broker on the current data directory.
broker_launch() {
    if (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then
        log "port $KAFKA_PORT is already taken: another broker is running"
        return 1
    fi
    SLUICE_LOG=${SLUICE_LOG:-warn} nice -n "${NICE:-0}" "$SLUICE" broker --data-dir "$BROKER_DATA" \
        --kafka-listen "127.0.0.1:$KAFKA_PORT" --quic-listen "127.0.0.1:$QUIC_PORT" \
        --admin-listen "127.0.0.1:$ADMIN_PORT" --auto-create-topics false \
        "${BROKER_ARGS[@]}" >> "$RESULTS/broker.log" 2>&1 &
    BROKER_PID=$!
    BROKER_STARTED_NS=$(date +%s%N)
    broker_wait_ready
}

# broker_wait_ready: polls the Kafka port (listeners start after every partition is open).
broker_wait_ready() {
    for _ in $(seq 1 6000); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null; then
            BROKER_READY_MS=$(( ($(date +%s%N) - BROKER_STARTED_NS) / 1000000 ))
            log "broker $BROKER_PID ready after ${BROKER_READY_MS} ms (${BROKER_ARGS[*]})"
            return 0
        fi
        kill -0 "$BROKER_PID" 2>/dev/null || { log "broker exited"; return 1; }
        sleep 0.01
    done
    log "broker not ready after 60 s"
    return 1
}

# broker_stop: SIGTERM (clean shutdown), then wait.
broker_stop() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID"
        wait "$BROKER_PID" || true
    fi
    BROKER_PID=""
}

# broker_restart: clean stop and start on the same data.
broker_restart() {
    broker_stop
    broker_launch
}

# perf SUBCOMMAND NAME [flags...]: one sluice-perf run writing $RESULTS/NAME.{json,hlog,svg},
# pointed at the broker for its --protocol, with the reference and the broker's pid.
perf() {
    local command=$1 name=$2
    shift 2
    local brokers="127.0.0.1:$QUIC_PORT" previous=""
    for arg in "$@"; do
        if [ "$previous" = "--protocol" ] && [ "$arg" = "kafka" ]; then
            brokers="127.0.0.1:$KAFKA_PORT"
        fi
        previous=$arg
    done
    log "$name: load $(cut -d' ' -f1-3 /proc/loadavg): sluice-perf $command $*"
    nice -n "${NICE:-0}" "$PERF" "$command" --brokers "$brokers" --reference "$RESULTS/reference.json" \
        --data-dir "$BROKER_DATA" --broker-pid "$BROKER_PID" --label "$name" \
        --json "$RESULTS/$name.json" "$@" 2>> "$RESULTS/run.log" | tee -a "$RESULTS/run.log"
}

trap broker_stop EXIT

log "reference: load $(cut -d' ' -f1-3 /proc/loadavg)"
"$PERF" reference --dir "$DATA_ROOT" --bytes "$REF_BYTES" --json "$RESULTS/reference.json" \
    >> "$RESULTS/run.log"

for scenario in "$ROOT"/perf/scenarios/*.sh; do
    case "$(basename "$scenario")" in *"$PATTERN"*) ;; *) continue ;; esac
    if [ -n "${SKIP:-}" ]; then
        case "$(basename "$scenario")" in *"$SKIP"*) continue ;; esac
    fi
    log "scenario $(basename "$scenario")"
    # shellcheck source=/dev/null
    source "$scenario"
    broker_stop
done
rm -rf "$DATA_ROOT/broker"
log "results in $RESULTS"
