# Issue row 3: produce, acks=all (fdatasync, group commit), 16 partitions, broker --cores 2.
# Target: >= 0.6 x limit. Broker and harness share both CPUs.
for protocol in quic kafka; do
    broker_start --cores 2
    perf produce "produce-acksall-16p-$protocol" --protocol "$protocol" \
        --topic produce-acksall --partitions 16 --acks all --record-size 1024 \
        --producers 2 --threads 2 --batch-bytes 256KiB --linger-ms 5 --in-flight 8 \
        --warmup 5 --duration 20
    broker_stop
done
