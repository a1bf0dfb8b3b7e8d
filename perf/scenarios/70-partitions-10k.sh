# Issue row 8: 10,000 partitions: create, produce to all, restart, serve again within 10 s.
# broker --cores 1. Each partition keeps 3 files open (log, offset index, time index), so the
# open-files hard limit must exceed 3 x partitions; where it does not (sandboxes), the run
# uses as many thousands of partitions as fit and says so in run.log.
# Recorded in partitions-wide-restart.json: the clean shutdown time, the time from launching
# the broker to its listeners accepting (every partition opened and recovered), and the
# produce to every partition after it (its own report); then the same after kill -9
# (partitions-wide-crash-restart.json).
wide=10000
fds=$(ulimit -Hn)
if [ "$fds" != unlimited ] && [ $((wide * 3 + 1024)) -gt "$fds" ]; then
    wide=$(( (fds - 1024) / 3 / 1000 * 1000 ))
    log "open-files hard limit $fds is below 3 x 10000 partitions: running with $wide"
fi
broker_start --cores 1
perf produce "partitions-wide-fill" --protocol kafka --cpus 1 \
    --topic wide --partitions "$wide" --acks 1 --record-size 1024 --keys seq \
    --batch-bytes 16KiB --linger-ms 5 --warmup 0 --records $((wide * 10))
stop_started=$(date +%s%N)
broker_stop
stop_ms=$(( ($(date +%s%N) - stop_started) / 1000000 ))
broker_launch
echo "{\"partitions\": $wide, \"shutdown_ms\": $stop_ms, \"restart_ready_ms\": $BROKER_READY_MS}" \
    > "$RESULTS/partitions-wide-restart.json"
log "partitions-wide: $wide partitions, shutdown ${stop_ms} ms, ready after ${BROKER_READY_MS} ms"
perf produce "partitions-wide-after-restart" --protocol kafka --cpus 1 \
    --topic wide --partitions "$wide" --acks 1 --record-size 1024 --keys seq \
    --batch-bytes 16KiB --linger-ms 5 --warmup 0 --records $((wide * 2))
# A crash restart: kill -9, then every partition's tail is recovered at start.
kill -KILL "$BROKER_PID"
wait "$BROKER_PID" || true
BROKER_PID=""
broker_launch
echo "{\"partitions\": $wide, \"kill9_restart_ready_ms\": $BROKER_READY_MS}" \
    > "$RESULTS/partitions-wide-crash-restart.json"
log "partitions-wide: $wide partitions, ready ${BROKER_READY_MS} ms after kill -9"
perf produce "partitions-wide-after-crash" --protocol kafka --cpus 1 \
    --topic wide --partitions "$wide" --acks 1 --record-size 1024 --keys seq \
    --batch-bytes 16KiB --linger-ms 5 --warmup 0 --records $((wide * 2))
broker_stop
