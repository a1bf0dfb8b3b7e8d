//! Compatibility with librdkafka (the C client behind kcat, confluent-kafka and many others),
//! through the `rdkafka` crate built from source: produce and consume with every codec, keys,
//! headers and timestamps; admin create/delete topics, configs and partitions; offsets by
//! timestamp, watermarks and DeleteRecords. librdkafka negotiates versions from ApiVersions,
//! so this also checks that what is advertised is what it can use.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::{ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::Message;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use sluice_engine::batch::{BatchHeader, Compression};

const TIMEOUT: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", common::broker().bootstrap());
    config
}

fn admin() -> AdminClient<DefaultClientContext> {
    config().create().expect("admin client")
}

fn producer(codec: &str) -> FutureProducer {
    config()
        .set("compression.codec", codec)
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("message.timeout.ms", "30000")
        .set("allow.auto.create.topics", "true")
        .create()
        .expect("producer")
}

fn consumer() -> BaseConsumer {
    // librdkafka requires a group id even for assign(); no group API is used (FindCoordinator
    // answers COORDINATOR_NOT_AVAILABLE until consumer groups exist).
    config()
        .set("group.id", "sluice-rdkafka-test")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer")
}

async fn create_topic(admin: &AdminClient<DefaultClientContext>, topic: &NewTopic<'_>) {
    let results = admin
        .create_topics([topic], &AdminOptions::new())
        .await
        .expect("create_topics request");
    assert_eq!(results.len(), 1);
    assert!(
        results[0].is_ok(),
        "create {}: {:?}",
        topic.name,
        results[0]
    );
}

/// Reads `count` messages from the start of every partition of `topic`.
fn consume_all(topic: &str, partitions: i32, count: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer = consumer();
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + TIMEOUT;
    let mut messages = Vec::new();
    while messages.len() < count {
        assert!(
            Instant::now() < deadline,
            "consumed {} of {count} from {topic}",
            messages.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => messages.push(message.detach()),
            Some(Err(error)) => panic!("consume {topic}: {error}"),
            None => {}
        }
    }
    messages
}

/// The compression codec of the first stored batch of `topic`-0, read with a raw fetch.
fn stored_codec(topic: &str) -> Compression {
    let mut raw = common::Raw::connect();
    let request = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(0)
                        .with_partition_max_bytes(1 << 20),
                ]),
        ]);
    let ResponseKind::Fetch(response) = raw.call(11, request) else {
        panic!("kind")
    };
    let records = response.responses[0].partitions[0]
        .records
        .clone()
        .expect("records");
    let header = BatchHeader::parse(&records, 1 << 20).expect("stored batch header");
    header.attributes.compression().expect("known codec")
}

// Goal: records produced by librdkafka with each codec come back to a librdkafka consumer
// unchanged (key, value, headers, create timestamp, dense offsets per partition), and the
// broker stores the producer's compressed batch as sent. Method: per codec, a 3-partition
// topic (partitions land on both shards), 30 records, consume from the beginning, compare;
// then read the stored batch's attributes with a raw fetch.
#[test]
fn rdkafka_every_codec_round_trip() {
    let rt = runtime();
    let admin = admin();
    for (codec, expected) in [
        ("none", Compression::None),
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ] {
        let topic = format!("rd-codec-{codec}");
        rt.block_on(create_topic(
            &admin,
            &NewTopic::new(&topic, 3, TopicReplication::Fixed(1)),
        ));
        let producer = producer(codec);
        let base_ts = 1_600_000_000_000i64;
        let sent: Vec<(String, String, i64, i32)> = (0..30)
            .map(|i| {
                let value = format!("value-{codec}-{i}-").repeat(20);
                (
                    format!("key-{i}"),
                    value,
                    base_ts + i64::from(i) * 1000,
                    i % 3,
                )
            })
            .collect();
        let deliveries = rt.block_on(futures::future::join_all(sent.iter().enumerate().map(
            |(i, (key, value, ts, partition))| {
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "index",
                        value: Some(&i.to_string()),
                    })
                    .insert(Header {
                        key: "empty",
                        value: None::<&[u8]>,
                    });
                let record = FutureRecord::to(&topic)
                    .key(key)
                    .payload(value)
                    .partition(*partition)
                    .timestamp(*ts)
                    .headers(headers);
                producer.send(record, Timeout::After(TIMEOUT))
            },
        )));
        let mut offsets: HashMap<i32, Vec<i64>> = HashMap::new();
        for delivery in deliveries {
            let delivery = delivery.unwrap_or_else(|(e, _)| panic!("{codec} delivery: {e}"));
            offsets
                .entry(delivery.partition)
                .or_default()
                .push(delivery.offset);
        }
        for (partition, mut list) in offsets {
            list.sort_unstable();
            assert_eq!(
                list,
                (0..10).collect::<Vec<_>>(),
                "{codec} partition {partition} offsets"
            );
        }

        let messages = consume_all(&topic, 3, sent.len());
        for message in &messages {
            let key = std::str::from_utf8(message.key().expect("key")).expect("utf8 key");
            let index: usize = key.trim_start_matches("key-").parse().expect("index");
            let (_, value, ts, partition) = &sent[index];
            assert_eq!(
                message.payload(),
                Some(value.as_bytes()),
                "{codec} {key} value"
            );
            assert_eq!(message.partition(), *partition, "{codec} {key} partition");
            assert_eq!(
                message.timestamp().to_millis(),
                Some(*ts),
                "{codec} {key} timestamp"
            );
            let headers = message.headers().expect("headers");
            assert_eq!(headers.count(), 2, "{codec} {key} headers");
            let first = headers.get(0);
            assert_eq!(first.key, "index");
            assert_eq!(first.value, Some(index.to_string().as_bytes()));
            let second = headers.get(1);
            assert_eq!((second.key, second.value), ("empty", None));
        }
        assert_eq!(
            stored_codec(&topic),
            expected,
            "{codec}: batch stored as the producer sent it"
        );
    }
}

// Goal: librdkafka's admin API works: create (with configs, validate-only, duplicates and bad
// names refused), describe and alter topic configs, describe the broker, grow partitions,
// delete. Method: AdminClient calls checked against each other and against Metadata.
#[test]
fn rdkafka_admin_topics_and_configs() {
    let rt = runtime();
    let admin = admin();
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let topic = "rd-admin";
    let new = NewTopic::new(topic, 2, TopicReplication::Fixed(1)).set("retention.ms", "3600000");
    rt.block_on(create_topic(&admin, &new));

    let again = rt
        .block_on(admin.create_topics([&new], &options))
        .expect("request");
    assert_eq!(
        again[0],
        Err((topic.to_string(), RDKafkaErrorCode::TopicAlreadyExists))
    );
    let bad = NewTopic::new("bad/name", 1, TopicReplication::Fixed(1));
    let bad = rt
        .block_on(admin.create_topics([&bad], &options))
        .expect("request");
    assert_eq!(
        bad[0],
        Err(("bad/name".to_string(), RDKafkaErrorCode::InvalidTopic))
    );
    let too_many = NewTopic::new("rd-admin-rf3", 1, TopicReplication::Fixed(3));
    let too_many = rt
        .block_on(admin.create_topics([&too_many], &options))
        .expect("request");
    assert_eq!(
        too_many[0],
        Err((
            "rd-admin-rf3".to_string(),
            RDKafkaErrorCode::InvalidReplicationFactor
        ))
    );
    let validate = NewTopic::new("rd-admin-validate", 1, TopicReplication::Fixed(1));
    let validated = rt
        .block_on(
            admin.create_topics(
                [&validate],
                &AdminOptions::new()
                    .operation_timeout(Some(TIMEOUT))
                    .validate_only(true),
            ),
        )
        .expect("request");
    assert!(validated[0].is_ok(), "{:?}", validated[0]);

    let describe = |rt: &tokio::runtime::Runtime| {
        let spec = ResourceSpecifier::Topic(topic);
        let results = rt
            .block_on(admin.describe_configs([&spec], &options))
            .expect("request");
        results
            .into_iter()
            .next()
            .expect("one result")
            .expect("described")
    };
    let described = describe(&rt);
    let entries = described.entry_map();
    let retention = entries.get("retention.ms").expect("retention.ms listed");
    assert_eq!(retention.value.as_deref(), Some("3600000"));
    assert_eq!(retention.source, ConfigSource::DynamicTopic);
    let segment = entries.get("segment.bytes").expect("segment.bytes listed");
    assert_eq!(segment.value.as_deref(), Some("1073741824"));
    assert_eq!(segment.source, ConfigSource::Default);

    let alter = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("retention.ms", "7200000");
    let altered = rt
        .block_on(admin.alter_configs([&alter], &options))
        .expect("request");
    assert!(altered[0].is_ok(), "{:?}", altered[0]);
    let described = describe(&rt);
    let retention = described.get("retention.ms").expect("retention.ms listed");
    assert_eq!(retention.value.as_deref(), Some("7200000"));
    let bad_value = AlterConfig::new(ResourceSpecifier::Topic(topic)).set("retention.ms", "soon");
    // rdkafka 0.39 reports every AlterConfigs resource as Ok whatever the broker answered (the
    // raw tests check the INVALID_CONFIG code), so check that nothing changed instead.
    rt.block_on(admin.alter_configs([&bad_value], &options))
        .expect("request");
    let described = describe(&rt);
    let retention = described.get("retention.ms").expect("retention.ms listed");
    assert_eq!(
        retention.value.as_deref(),
        Some("7200000"),
        "invalid value was applied"
    );

    let broker = ResourceSpecifier::Broker(1);
    let broker = rt
        .block_on(admin.describe_configs([&broker], &options))
        .expect("request");
    let broker = broker
        .into_iter()
        .next()
        .expect("one")
        .expect("broker described");
    assert_eq!(
        broker
            .get("auto.create.topics.enable")
            .and_then(|e| e.value.as_deref()),
        Some("true")
    );

    let grow = NewPartitions::new(topic, 4);
    let grown = rt
        .block_on(admin.create_partitions([&grow], &options))
        .expect("request");
    assert!(grown[0].is_ok(), "{:?}", grown[0]);
    let metadata = admin
        .inner()
        .fetch_metadata(Some(topic), TIMEOUT)
        .expect("metadata");
    assert_eq!(metadata.topics()[0].partitions().len(), 4);

    let deleted = rt
        .block_on(admin.delete_topics(&[topic], &options))
        .expect("request");
    assert!(deleted[0].is_ok(), "{:?}", deleted[0]);
    let metadata = admin
        .inner()
        .fetch_metadata(None, TIMEOUT)
        .expect("metadata");
    let names: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    assert!(
        !names.contains(&topic),
        "deleted topic still listed: {names:?}"
    );
    assert!(
        !names.contains(&"rd-admin-validate"),
        "validate_only created a topic"
    );
}

// Goal: offsets by timestamp, watermarks and DeleteRecords through librdkafka. Method: ten
// records one second apart into one partition; look up times between and after them; delete
// the first five and read from the beginning again.
#[test]
fn rdkafka_offsets_by_time_and_delete_records() {
    let rt = runtime();
    let admin = admin();
    let topic = "rd-offsets";
    rt.block_on(create_topic(
        &admin,
        &NewTopic::new(topic, 1, TopicReplication::Fixed(1)),
    ));
    let producer = producer("none");
    let base_ts = 1_700_000_000_000i64;
    for i in 0..10i64 {
        let value = format!("v{i}");
        let record = FutureRecord::<(), _>::to(topic)
            .payload(&value)
            .timestamp(base_ts + i * 1000);
        let delivery = rt.block_on(producer.send(record, Timeout::After(TIMEOUT)));
        assert_eq!(delivery.expect("delivered").offset, i);
    }
    let consumer = consumer();
    assert_eq!(
        consumer
            .fetch_watermarks(topic, 0, TIMEOUT)
            .expect("watermarks"),
        (0, 10)
    );
    let lookup = |ts: i64| {
        let mut wanted = TopicPartitionList::new();
        wanted
            .add_partition_offset(topic, 0, Offset::Offset(ts))
            .expect("tpl");
        let found = consumer
            .offsets_for_times(wanted, TIMEOUT)
            .expect("offsets_for_times");
        found.find_partition(topic, 0).expect("partition").offset()
    };
    assert_eq!(lookup(base_ts), Offset::Offset(0));
    assert_eq!(lookup(base_ts + 3500), Offset::Offset(4));
    assert_eq!(lookup(base_ts + 9000), Offset::Offset(9));
    assert_eq!(lookup(base_ts + 60_000), Offset::End);

    let mut cut = TopicPartitionList::new();
    cut.add_partition_offset(topic, 0, Offset::Offset(5))
        .expect("tpl");
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let result = rt
        .block_on(admin.delete_records(&cut, &options))
        .expect("delete_records");
    let element = result.find_partition(topic, 0).expect("partition");
    assert!(element.error().is_ok(), "{:?}", element.error());
    assert_eq!(element.offset(), Offset::Offset(5));
    assert_eq!(
        consumer
            .fetch_watermarks(topic, 0, TIMEOUT)
            .expect("watermarks"),
        (5, 10)
    );
    let messages = consume_all(topic, 1, 5);
    let offsets: Vec<i64> = messages.iter().map(|m| m.offset()).collect();
    assert_eq!(offsets, vec![5, 6, 7, 8, 9]);
}

// Goal: a producer writing to a topic that does not exist gets it auto-created (Kafka's
// default auto.create.topics.enable=true) with the default partition count.
#[test]
fn rdkafka_auto_creates_topic() {
    let rt = runtime();
    let topic = "rd-auto-created";
    let producer = producer("none");
    let record = FutureRecord::to(topic).key("k").payload("v");
    let delivery = rt.block_on(producer.send(record, Timeout::After(TIMEOUT)));
    assert_eq!(delivery.expect("delivered").offset, 0);
    let metadata = admin()
        .inner()
        .fetch_metadata(Some(topic), TIMEOUT)
        .expect("metadata");
    assert_eq!(metadata.topics()[0].partitions().len(), 1);
    let messages = consume_all(topic, 1, 1);
    assert_eq!(messages[0].payload(), Some(&b"v"[..]));
}
