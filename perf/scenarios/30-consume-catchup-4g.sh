# Issue row 4: catch-up consume of 4 GiB, QUIC and Kafka, broker --cores 1.
# Target: >= 0.8 x min(O_DIRECT read, loopback transport). The topic is filled first (4 GiB
# of 1 KiB records, acks=1); the broker restarts before each read so that its cache of recent
# batches is cold and the read comes from the disk.
broker_start --cores 1
perf produce consume-catchup-fill --protocol quic --cpus 1 \
    --topic catchup --partitions 1 --acks 1 --record-size 1024 \
    --producers 2 --batch-bytes 1MiB --linger-ms 5 --in-flight 8 --warmup 0 --bytes 4GiB
for protocol in quic kafka; do
    broker_restart
    perf consume "consume-catchup-4g-$protocol" --protocol "$protocol" --cpus 1 \
        --topic catchup --partitions 1 --fetch-bytes 4MiB --warmup 0
done
broker_stop
