# Issue row 8: 10,000 partitions: create, produce to all, restart, serve again within 10 s.
# broker --cores 1. A partition at rest keeps one file open (its active segment's log; index
# files are opened only to write a block), so the open-files hard limit must exceed the
# partitions plus sockets and the runtime's own descriptors (2,048 kept spare); where it does
# not, the run uses as many thousands of partitions as fit and says so in run.log.
# Recorded in partitions-wide-create.json (time for `sluice topic create` to return, every
# partition opened), partitions-wide-restart.json (the clean shutdown time, the time from
# launching the broker to its listeners accepting, every partition opened and recovered, and
# the broker's open descriptors after the fill and after the restart), the produce to every
# partition after it (its own report); then the same after kill -9
# (partitions-wide-crash-restart.json).
wide=10000
fds=$(ulimit -Hn)
if [ "$fds" != unlimited ] && [ $((wide + 2048)) -gt "$fds" ]; then
    wide=$(( (fds - 2048) / 1000 * 1000 ))
    log "open-files hard limit $fds is below 10000 partitions + 2048: running with $wide"
fi
broker_fds() { find "/proc/$BROKER_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
broker_start --cores 1
log "partitions-wide: load $(cut -d' ' -f1-3 /proc/loadavg): sluice topic create wide --partitions $wide"
create_started=$(date +%s%N)
"$SLUICE" topic create wide --partitions "$wide" --brokers "127.0.0.1:$QUIC_PORT" >> "$RESULTS/run.log" 2>&1
create_ms=$(( ($(date +%s%N) - create_started) / 1000000 ))
echo "{\"partitions\": $wide, \"create_ms\": $create_ms, \"fds_after_create\": $(broker_fds)}" \
    > "$RESULTS/partitions-wide-create.json"
log "partitions-wide: $wide partitions created in ${create_ms} ms, broker fds $(broker_fds)"
perf produce "partitions-wide-fill" --protocol kafka --cpus 1 \
    --topic wide --partitions "$wide" --acks 1 --record-size 1024 --keys seq \
    --batch-bytes 16KiB --linger-ms 5 --warmup 0 --records $((wide * 10))
fill_fds=$(broker_fds)
log "partitions-wide: load $(cut -d' ' -f1-3 /proc/loadavg): clean shutdown"
stop_started=$(date +%s%N)
broker_stop
stop_ms=$(( ($(date +%s%N) - stop_started) / 1000000 ))
broker_launch
restart_fds=$(broker_fds)
echo "{\"partitions\": $wide, \"shutdown_ms\": $stop_ms, \"restart_ready_ms\": $BROKER_READY_MS, \"fds_after_fill\": $fill_fds, \"fds_after_restart\": $restart_fds}" \
    > "$RESULTS/partitions-wide-restart.json"
log "partitions-wide: $wide partitions, shutdown ${stop_ms} ms, ready after ${BROKER_READY_MS} ms, fds $fill_fds after fill, $restart_fds after restart"
perf produce "partitions-wide-after-restart" --protocol kafka --cpus 1 \
    --topic wide --partitions "$wide" --acks 1 --record-size 1024 --keys seq \
    --batch-bytes 16KiB --linger-ms 5 --warmup 0 --records $((wide * 2))
# A crash restart: kill -9, then every partition's tail is recovered at start.
log "partitions-wide: load $(cut -d' ' -f1-3 /proc/loadavg): kill -9"
kill -KILL "$BROKER_PID"
wait "$BROKER_PID" || true
BROKER_PID=""
broker_launch
echo "{\"partitions\": $wide, \"kill9_restart_ready_ms\": $BROKER_READY_MS, \"fds_after_restart\": $(broker_fds)}" \
    > "$RESULTS/partitions-wide-crash-restart.json"
log "partitions-wide: $wide partitions, ready ${BROKER_READY_MS} ms after kill -9, fds $(broker_fds)"
perf produce "partitions-wide-after-crash" --protocol kafka --cpus 1 \
    --topic wide --partitions "$wide" --acks 1 --record-size 1024 --keys seq \
    --batch-bytes 16KiB --linger-ms 5 --warmup 0 --records $((wide * 2))
log "partitions-wide: load $(cut -d' ' -f1-3 /proc/loadavg): clean shutdown after the crash restart"
stop_started=$(date +%s%N)
broker_stop
log "partitions-wide: clean shutdown $(( ($(date +%s%N) - stop_started) / 1000000 )) ms"
