# Issue row 6: end to end at 20,000 records/s (open loop), acks=all, 4 partitions, 1 KiB
# records, broker --cores 1. Target: p99 <= 2 x the reference's p99 64 KiB fdatasync latency.
for protocol in quic kafka; do
    broker_start --cores 1
    perf e2e "e2e-20k-acksall-$protocol" --protocol "$protocol" --cpus 1 \
        --topic e2e-acksall --partitions 4 --acks all --record-size 1024 --rate 20000 \
        --producers 1 --consumers 1 --batch-bytes 64KiB --linger-ms 0 --in-flight 5 \
        --fetch-wait-ms 100 --warmup 5 --duration 30
    broker_stop
done
