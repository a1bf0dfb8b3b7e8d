# Issue row 7: broker RSS with 1,000 partitions under steady produce, broker --cores 1.
# Target: <= 256 MiB, independent of retained bytes: the report's timeline samples the
# broker's RSS every second while retained bytes grow by the produced amount. The Kafka
# protocol is used because one Produce request carries batches of many partitions; a native
# produce request carries one partition (see RESULTS.md), which at 50 records/s/partition
# would make a request per record.
broker_start --cores 1
perf produce rss-1000p-kafka --protocol kafka --cpus 1 \
    --topic rss --partitions 1000 --acks 1 --record-size 1024 --keys uniform:1000000 \
    --rate 50000 --producers 1 --batch-bytes 16KiB --linger-ms 5 --in-flight 5 \
    --warmup 5 --duration 60
broker_stop
