# Issue row 5: end to end at 50,000 records/s (open loop), acks=1, 4 partitions, 1 KiB
# records, broker --cores 1. Target: p99 <= 1 ms, p99.9 <= 3 ms, latency counted from each
# record's intended send time.
for protocol in quic kafka; do
    broker_start --cores 1
    perf e2e "e2e-50k-acks1-$protocol" --protocol "$protocol" --cpus 1 \
        --topic e2e-acks1 --partitions 4 --acks 1 --record-size 1024 --rate 50000 \
        --producers 1 --consumers 1 --batch-bytes 64KiB --linger-ms 0 --in-flight 5 \
        --fetch-wait-ms 100 --warmup 5 --duration 30
    broker_stop
done
