# Issue rows 1 and 2: produce, acks=1, 1 partition, 1 KiB records, broker --cores 1.
# Target: >= 0.8 x limit, the limit being min(O_DIRECT write, loopback transport) of this run.
# The harness is pinned to CPU 1, the broker's one shard to CPU 0.
for protocol in quic kafka; do
    broker_start --cores 1
    perf produce "produce-acks1-$protocol" --protocol "$protocol" --cpus 1 \
        --topic produce-acks1 --partitions 1 --acks 1 --record-size 1024 \
        --producers 2 --batch-bytes 1MiB --linger-ms 5 --in-flight 8 \
        --warmup 5 --duration 20
    broker_stop
done
