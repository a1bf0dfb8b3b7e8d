//! The two protocols over the same logs, against a real `sluice broker` process (see
//! `support`): records produced through Kafka (librdkafka) read back through QUIC (the native
//! client), and records produced natively read back by librdkafka and by rskafka, for every
//! codec, with keys, headers and timestamps at the offsets the producers were given; and the
//! stored batch bytes both protocols return for a partition are the same bytes.

mod support;

#[path = "../../net/tests/common/kafka_raw.rs"]
mod kafka_raw;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::{ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rskafka::client::partition::UnknownTopicHandling;
use sluice_engine::TimestampMs;
use sluice_engine::batch::{BatchHeader, Compression};
use sluice_net::client::{Acks, Client, NewTopic, Producer, ProducerConfig, ProducerRecord};
use support::{Broker, connect, read_records, run};

/// librdkafka's per-operation timeout in these tests.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

const PARTITIONS: i32 = 2;

/// Records per codec and direction.
const RECORDS: usize = 120;

const CODECS: [(&str, Compression); 5] = [
    ("none", Compression::None),
    ("gzip", Compression::Gzip),
    ("snappy", Compression::Snappy),
    ("lz4", Compression::Lz4),
    ("zstd", Compression::Zstd),
];

/// A record as every client sees it, where it landed included.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp: i64,
}

/// Record `i` of a run: partition `i % PARTITIONS`, a key, a value that compresses, headers
/// in a set order (with a null value when `null_header`), and an explicit create time. The
/// offset is not known yet (-1).
fn record(codec: &str, i: usize, null_header: bool) -> Seen {
    let mut headers = vec![
        ("a-index".to_owned(), Some(i.to_string().into_bytes())),
        ("b-codec".to_owned(), Some(codec.as_bytes().to_vec())),
    ];
    if null_header {
        headers.push(("c-null".to_owned(), None));
    }
    Seen {
        partition: (i % PARTITIONS as usize) as i32,
        offset: -1,
        key: Some(format!("key-{i}").into_bytes()),
        value: Some(format!("{codec}-value-{i}-").repeat(1 + i % 7).into_bytes()),
        headers,
        timestamp: 1_650_000_000_000 + i as i64 * 1_000,
    }
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn rdkafka_config(broker: &Broker) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", broker.kafka.to_string());
    config
}

/// Produces `records` with librdkafka and the codec `codec`; returns them with their offsets.
fn produce_rdkafka(broker: &Broker, codec: &str, topic: &str, records: &[Seen]) -> Vec<Seen> {
    let producer: FutureProducer = rdkafka_config(broker)
        .set("compression.codec", codec)
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("rdkafka producer");
    let deliveries = tokio_runtime().block_on(join_all(records.iter().map(|record| {
        let mut headers = OwnedHeaders::new();
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        let mut kafka = FutureRecord::to(topic)
            .partition(record.partition)
            .timestamp(record.timestamp)
            .headers(headers);
        if let Some(key) = &record.key {
            kafka = kafka.key(key);
        }
        if let Some(value) = &record.value {
            kafka = kafka.payload(value);
        }
        producer.send(kafka, Timeout::After(KAFKA_TIMEOUT))
    })));
    records
        .iter()
        .zip(deliveries)
        .map(|(record, delivery)| {
            let delivery =
                delivery.unwrap_or_else(|(error, _)| panic!("{topic}: rdkafka delivery: {error}"));
            assert_eq!(delivery.partition, record.partition, "{topic}");
            Seen {
                offset: delivery.offset,
                ..record.clone()
            }
        })
        .collect()
}

/// Produces `records` with the native producer and `compression`; returns them with their
/// offsets.
async fn produce_native(
    client: &Client,
    compression: Compression,
    topic: &str,
    records: &[Seen],
) -> Vec<Seen> {
    let config = ProducerConfig {
        acks: Acks::All,
        compression,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).expect("native producer");
    let acks: Vec<_> = records
        .iter()
        .map(|record| {
            let mut native = ProducerRecord {
                topic: topic.into(),
                partition: Some(record.partition),
                key: record.key.clone().map(Bytes::from),
                value: record.value.clone().map(Bytes::from),
                headers: Vec::new(),
                timestamp: Some(TimestampMs(record.timestamp)),
            };
            for (key, value) in &record.headers {
                native = native.with_header(key.clone(), value.clone().map(Bytes::from));
            }
            producer.send(native)
        })
        .collect();
    let mut produced = Vec::with_capacity(records.len());
    for (record, ack) in records.iter().zip(join_all(acks).await) {
        let metadata = ack.unwrap_or_else(|error| panic!("{topic}: native produce: {error}"));
        assert_eq!(metadata.partition, record.partition, "{topic}");
        produced.push(Seen {
            offset: metadata.offset,
            ..record.clone()
        });
    }
    produced
}

/// Every record of `topic` through the native consumer, `count` in all.
async fn read_native(client: &Client, topic: &str, count: usize) -> Vec<Seen> {
    let partitions: Vec<(&str, i32)> = (0..PARTITIONS).map(|p| (topic, p)).collect();
    let (records, _) = read_records(client, &partitions, count).await;
    let mut seen: Vec<Seen> = records
        .into_iter()
        .map(|record| Seen {
            partition: record.partition,
            offset: record.offset,
            key: record.key.map(|k| k.to_vec()),
            value: record.value.map(|v| v.to_vec()),
            headers: record
                .headers
                .into_iter()
                .map(|h| {
                    let key = String::from_utf8(h.key.to_vec()).expect("utf-8 header key");
                    (key, h.value.map(|v| v.to_vec()))
                })
                .collect(),
            timestamp: record.timestamp.0,
        })
        .collect();
    seen.sort();
    seen
}

/// Every record of `topic` through librdkafka, `count` in all.
fn read_rdkafka(broker: &Broker, topic: &str, count: usize) -> Vec<Seen> {
    // librdkafka wants a group id even for assign(); no group API is used.
    let consumer: BaseConsumer = rdkafka_config(broker)
        .set("group.id", "sluice-cross-protocol")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("rdkafka consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + KAFKA_TIMEOUT;
    let mut seen = Vec::with_capacity(count);
    // Bounded by the deadline.
    while seen.len() < count {
        assert!(
            Instant::now() < deadline,
            "{topic}: rdkafka consumed {} of {count}",
            seen.len()
        );
        let message = match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => message,
            Some(Err(error)) => panic!("{topic}: rdkafka consume: {error}"),
            None => continue,
        };
        let headers = message.headers().map_or_else(Vec::new, |headers| {
            headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect()
        });
        seen.push(Seen {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
            timestamp: message.timestamp().to_millis().expect("a create time"),
        });
    }
    seen.sort();
    seen
}

/// Every record of `topic` through rskafka, `count` in all. rskafka keeps headers in a map
/// (sorted by key, no null values), so `record` uses keys in sorted order and no nulls for
/// runs that rskafka reads.
fn read_rskafka(broker: &Broker, topic: &str, count: usize) -> Vec<Seen> {
    tokio_runtime().block_on(async {
        let client = rskafka::client::ClientBuilder::new(vec![broker.kafka.to_string()])
            .build()
            .await
            .expect("rskafka client");
        let mut seen = Vec::with_capacity(count);
        for partition in 0..PARTITIONS {
            let pc = client
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await
                .expect("rskafka partition client");
            let mut offset = 0;
            // Bounded: each fetch returns records up to the high watermark, at least one when
            // the offset is below it.
            loop {
                let (records, high_watermark) = pc
                    .fetch_records(offset, 1..1_000_000, 1_000)
                    .await
                    .expect("rskafka fetch");
                if offset >= high_watermark {
                    break;
                }
                assert!(!records.is_empty(), "{topic}-{partition}: rskafka stalled");
                for record in records {
                    offset = record.offset + 1;
                    seen.push(Seen {
                        partition,
                        offset: record.offset,
                        key: record.record.key,
                        value: record.record.value,
                        headers: record
                            .record
                            .headers
                            .into_iter()
                            .map(|(k, v)| (k, Some(v)))
                            .collect(),
                        timestamp: record.record.timestamp.timestamp_millis(),
                    });
                }
            }
        }
        assert_eq!(seen.len(), count, "{topic}: rskafka record count");
        seen.sort();
        seen
    })
}

/// The stored batches of `topic`-`partition` from offset 0 through a raw Kafka fetch.
fn kafka_stored(broker: &Broker, topic: &str, partition: i32) -> Bytes {
    let mut raw = kafka_raw::Raw::connect_to(broker.kafka);
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(4 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(partition)
                        .with_partition_max_bytes(4 << 20),
                ]),
        ]);
    let ResponseKind::Fetch(response) = raw.call(11, request) else {
        panic!("fetch answered with another kind")
    };
    let data = &response.responses[0].partitions[0];
    assert_eq!(data.error_code, 0, "{topic}-{partition}: kafka fetch");
    data.records.clone().expect("records")
}

/// Checks that both protocols return the same stored bytes for every partition of `topic`,
/// and that the first batch is stored with `codec` (the producer's batch was kept as sent).
async fn assert_same_stored_bytes(
    broker: &Broker,
    client: &Client,
    topic: &str,
    codec: Compression,
) {
    for partition in 0..PARTITIONS {
        let native = client
            .fetch(topic, partition, 0, 4 << 20, Duration::ZERO)
            .await
            .unwrap_or_else(|error| panic!("{topic}-{partition}: native fetch: {error}"))
            .batches;
        let kafka = kafka_stored(broker, topic, partition);
        assert!(!native.is_empty(), "{topic}-{partition}: stored batches");
        assert!(
            native == kafka,
            "{topic}-{partition}: native fetch returned {} bytes, kafka fetch {} bytes, and \
             they differ",
            native.len(),
            kafka.len()
        );
        let header = BatchHeader::parse(&native, native.len()).expect("stored batch header");
        assert_eq!(
            header.attributes.compression().expect("known codec"),
            codec,
            "{topic}-{partition}: stored codec"
        );
    }
}

fn assert_same_records(topic: &str, reader: &str, got: &[Seen], sent: &[Seen]) {
    let mut sent = sent.to_vec();
    sent.sort();
    assert_eq!(got.len(), sent.len(), "{topic}: {reader} record count");
    for (got, want) in got.iter().zip(&sent) {
        assert_eq!(got, want, "{topic}: {reader} record");
    }
}

// Goal: records librdkafka produced with each codec read back through QUIC with the keys,
// values, headers (a null value included), timestamps and offsets librdkafka was given, and
// the native and Kafka fetches return the same stored bytes. Method: one real broker; per
// codec a 2-partition topic, 120 records produced by librdkafka with acks=all, read by the
// native consumer; then a native fetch and a raw Kafka fetch of each partition compared byte
// for byte, and the stored codec checked.
#[test]
fn kafka_produce_native_read() {
    let broker = Broker::start();
    for (name, codec) in CODECS {
        let topic = format!("k2n-{name}");
        run(async {
            let client = connect(&broker).await;
            client
                .create_topic(NewTopic::new(topic.clone(), PARTITIONS))
                .await
                .expect("create topic");
            client.close().await;
        });
        let records: Vec<Seen> = (0..RECORDS).map(|i| record(name, i, true)).collect();
        let produced = produce_rdkafka(&broker, name, &topic, &records);
        run(async {
            let client = connect(&broker).await;
            let seen = read_native(&client, &topic, RECORDS).await;
            assert_same_records(&topic, "native consumer", &seen, &produced);
            assert_same_stored_bytes(&broker, &client, &topic, codec).await;
            client.close().await;
        });
    }
}

// Goal: records the native producer sent with each codec read back through Kafka, by
// librdkafka and by rskafka (two independent decoders), with the keys, values, headers,
// timestamps and offsets the producer was given, and the native and Kafka fetches return the
// same stored bytes. Method: one real broker; per codec a 2-partition topic, 120 records
// produced natively with acks=all, read by both Kafka clients; then the byte comparison.
#[test]
fn native_produce_kafka_read() {
    let broker = Broker::start();
    for (name, codec) in CODECS {
        let topic = format!("n2k-{name}");
        // rskafka cannot represent a null header value.
        let records: Vec<Seen> = (0..RECORDS).map(|i| record(name, i, false)).collect();
        let produced = run(async {
            let client = connect(&broker).await;
            client
                .create_topic(NewTopic::new(topic.clone(), PARTITIONS))
                .await
                .expect("create topic");
            let produced = produce_native(&client, codec, &topic, &records).await;
            assert_same_stored_bytes(&broker, &client, &topic, codec).await;
            client.close().await;
            produced
        });
        let seen = read_rdkafka(&broker, &topic, RECORDS);
        assert_same_records(&topic, "librdkafka", &seen, &produced);
        let seen = read_rskafka(&broker, &topic, RECORDS);
        assert_same_records(&topic, "rskafka", &seen, &produced);
    }
}
