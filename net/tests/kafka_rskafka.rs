//! Compatibility with rskafka, an independent pure-Rust Kafka client (its own protocol codec,
//! record encoding and compression): produce and fetch with every codec, keys, headers and
//! timestamps; create and delete topics; earliest, latest and by-time offsets; DeleteRecords.

mod common;

use std::collections::BTreeMap;

use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;

async fn client() -> Client {
    ClientBuilder::new(vec![common::broker().bootstrap()])
        .build()
        .await
        .expect("rskafka client")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn record(i: i64, codec: &str) -> Record {
    Record {
        key: Some(format!("key-{i}").into_bytes()),
        value: Some(format!("{codec}-value-{i}-").repeat(10).into_bytes()),
        headers: BTreeMap::from([("index".to_string(), i.to_string().into_bytes())]),
        timestamp: Utc
            .timestamp_millis_opt(1_650_000_000_000 + i * 1000)
            .unwrap(),
    }
}

// Goal: rskafka's producer and fetcher agree with the broker for every codec: offsets are
// dense, and key, value, headers and timestamp come back as sent. Method: one 2-partition
// topic per codec created through rskafka's controller client, ten records per partition.
#[test]
fn rskafka_every_codec_round_trip() {
    runtime().block_on(async {
        let client = client().await;
        let controller = client.controller_client().expect("controller client");
        for (codec, compression) in [
            ("none", Compression::NoCompression),
            ("gzip", Compression::Gzip),
            ("snappy", Compression::Snappy),
            ("lz4", Compression::Lz4),
            ("zstd", Compression::Zstd),
        ] {
            let topic = format!("rs-codec-{codec}");
            controller
                .create_topic(&topic, 2, 1, 5_000)
                .await
                .expect("create topic");
            for partition in 0..2 {
                let pc = client
                    .partition_client(&topic, partition, UnknownTopicHandling::Retry)
                    .await
                    .expect("partition client");
                let records: Vec<Record> = (0..10).map(|i| record(i, codec)).collect();
                let offsets = pc
                    .produce(records.clone(), compression)
                    .await
                    .expect("produce");
                assert_eq!(
                    offsets,
                    (0..10).collect::<Vec<i64>>(),
                    "{codec} p{partition}"
                );
                let (fetched, high_watermark) = pc
                    .fetch_records(0, 1..1_000_000, 1_000)
                    .await
                    .expect("fetch");
                assert_eq!(high_watermark, 10);
                assert_eq!(fetched.len(), 10, "{codec} p{partition}");
                for (i, got) in fetched.iter().enumerate() {
                    assert_eq!(got.offset, i as i64);
                    assert_eq!(got.record, records[i], "{codec} p{partition} record {i}");
                }
            }
        }
    });
}

// Goal: offsets and deletion through rskafka: earliest and latest, by timestamp, DeleteRecords
// moving the earliest offset, a long-poll fetch at the end that returns empty after its wait,
// and topic deletion. Method: one partition with ten records one second apart.
#[test]
fn rskafka_offsets_delete_records_and_topics() {
    runtime().block_on(async {
        let client = client().await;
        let controller = client.controller_client().expect("controller client");
        let topic = "rs-offsets";
        controller
            .create_topic(topic, 1, 1, 5_000)
            .await
            .expect("create topic");
        let duplicate = controller.create_topic(topic, 1, 1, 5_000).await;
        assert!(duplicate.is_err(), "creating {topic} twice succeeded");
        let pc = client
            .partition_client(topic, 0, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        let records: Vec<Record> = (0..10).map(|i| record(i, "none")).collect();
        pc.produce(records, Compression::NoCompression)
            .await
            .expect("produce");
        assert_eq!(
            pc.get_offset(OffsetAt::Earliest).await.expect("earliest"),
            0
        );
        assert_eq!(pc.get_offset(OffsetAt::Latest).await.expect("latest"), 10);
        let at = Utc.timestamp_millis_opt(1_650_000_000_000 + 4_500).unwrap();
        assert_eq!(
            pc.get_offset(OffsetAt::Timestamp(at))
                .await
                .expect("by time"),
            5
        );

        pc.delete_records(3, 5_000).await.expect("delete records");
        assert_eq!(
            pc.get_offset(OffsetAt::Earliest).await.expect("earliest"),
            3
        );
        let (fetched, _) = pc
            .fetch_records(3, 1..1_000_000, 1_000)
            .await
            .expect("fetch");
        assert_eq!(fetched.first().map(|r| r.offset), Some(3));

        // Nothing past the end: the fetch waits its max wait and returns nothing.
        let (empty, high_watermark) = pc
            .fetch_records(10, 1..1_000_000, 200)
            .await
            .expect("fetch at end");
        assert!(empty.is_empty());
        assert_eq!(high_watermark, 10);

        controller
            .delete_topic(topic, 5_000)
            .await
            .expect("delete topic");
        let topics = client.list_topics().await.expect("list topics");
        assert!(
            topics.iter().all(|t| t.name != topic),
            "{topic} still listed"
        );
    });
}
