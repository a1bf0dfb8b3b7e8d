# Issue row 8: 10,000 partitions: create, produce to all, restart, serve again within 10 s.
# broker --cores 1. The restart time is from launching the broker to its listeners accepting
# (every partition opened and recovered), plus the produce to all 10,000 partitions after it.
broker_start --cores 1
perf produce partitions-10k-fill --protocol kafka --cpus 1 \
    --topic wide --partitions 10000 --acks 1 --record-size 1024 --keys seq \
    --batch-bytes 16KiB --linger-ms 5 --warmup 0 --records 100000
broker_restart
echo "{\"restart_ready_ms\": $BROKER_READY_MS}" > "$RESULTS/partitions-10k-restart.json"
perf produce partitions-10k-after-restart --protocol kafka --cpus 1 \
    --topic wide --partitions 10000 --acks 1 --record-size 1024 --keys seq \
    --batch-bytes 16KiB --linger-ms 5 --warmup 0 --records 20000
broker_stop
