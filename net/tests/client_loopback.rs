//! The client library against an in-memory broker over real QUIC on loopback.
//!
//! The broker here is a test double, not the real server: two shard endpoints, topics held
//! in memory, partitions placed on shard `partition % 2`, a produce to the wrong shard
//! answered with `NotOwner`. It follows net/PROTOCOL.md closely enough to exercise the
//! client end to end: bootstrap, routing to shard endpoints, pooled connections, batching,
//! retries, long-poll fetches, seeks and the admin calls. The real broker is tested by the
//! multi-process tests in `tools/tests/`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{Either, join_all, select};
use sluice_engine::batch::{self, Compression};
use sluice_engine::limits::BATCH_BYTES_MAX;
use sluice_engine::util::Notify;
use sluice_engine::{Offset, TimestampMs, rt};
use sluice_net::client::{
    Acks, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, ConsumerError, NewTopic,
    ProduceError, Producer, ProducerConfig, ProducerRecord, Seek,
};
use sluice_net::native::messages::{
    BrokerEndpoint, ErrorCode, OffsetQuery, PartitionInfo, Request, Response, TopicInfo,
};
use sluice_net::native::stream::{ReadFrameError, answer_frame_error, read_frame, write_frame};
use sluice_net::quic::{self, tls};

/// Far beyond what any of these tests needs; only a hang reaches it.
const TEST_DEADLINE: Duration = Duration::from_secs(120);

fn run<T>(future: impl Future<Output = T>) -> T {
    rt::block_on(async move {
        let deadline = rt::sleep(TEST_DEADLINE);
        futures::pin_mut!(future, deadline);
        match select(future, deadline).await {
            Either::Left((output, _)) => output,
            Either::Right(_) => panic!("test did not finish within {TEST_DEADLINE:?}"),
        }
    })
}

struct Log {
    /// (base offset, batch bytes with the offset assigned).
    batches: Vec<(i64, Bytes)>,
    start: i64,
    end: i64,
}

struct Topic {
    partitions: Vec<Log>,
    configs: BTreeMap<String, String>,
}

/// The in-memory broker's state, shared by its two shard endpoints (one executor).
struct Broker {
    shards: Vec<SocketAddr>,
    topics: RefCell<BTreeMap<String, Topic>>,
    appended: Notify,
    /// Produce requests to answer with `NotOwner` before serving them.
    not_owner: Cell<u32>,
    produce_requests: Cell<u32>,
    fetch_requests: Cell<u32>,
    list_offset_requests: Cell<u32>,
}

fn error(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

impl Broker {
    fn topic_info(&self, name: &str, topic: &Topic) -> TopicInfo {
        TopicInfo {
            name: name.to_owned(),
            partitions: topic
                .partitions
                .iter()
                .enumerate()
                .map(|(p, log)| PartitionInfo {
                    partition: p as i32,
                    leader: 1,
                    shard: (p % 2) as u16,
                    replicas: vec![1],
                    isr: vec![1],
                    log_start_offset: log.start,
                    log_end_offset: log.end,
                    high_watermark: log.end,
                    size_bytes: log.batches.iter().map(|(_, b)| b.len() as u64).sum(),
                })
                .collect(),
            configs: topic
                .configs
                .iter()
                .map(|(k, v)| (k.clone(), v.clone(), true))
                .collect(),
        }
    }

    async fn handle(&self, shard: u16, request: Request, payload: Bytes) -> (Response, Bytes) {
        let empty = Bytes::new();
        let check_owner = |topic: &str, partition: i32| -> Result<(), Response> {
            let topics = self.topics.borrow();
            let Some(t) = topics.get(topic) else {
                return Err(error(ErrorCode::UnknownTopicOrPartition, "no such topic"));
            };
            if partition < 0 || partition as usize >= t.partitions.len() {
                return Err(error(
                    ErrorCode::UnknownTopicOrPartition,
                    "no such partition",
                ));
            }
            if (partition % 2) as u16 != shard {
                return Err(error(ErrorCode::NotOwner, "another shard owns it"));
            }
            Ok(())
        };
        match request {
            Request::Metadata { topics: wanted } => {
                let topics = self.topics.borrow();
                // As the real broker without auto-creation: a named topic must exist.
                let missing = wanted
                    .iter()
                    .flatten()
                    .find(|name| !topics.contains_key(*name));
                if let Some(name) = missing {
                    let message = format!("unknown topic {name}");
                    return (error(ErrorCode::UnknownTopicOrPartition, message), empty);
                }
                let topics = topics
                    .iter()
                    .filter(|(n, _)| wanted.as_ref().is_none_or(|w| w.contains(n)))
                    .map(|(n, t)| self.topic_info(n, t))
                    .collect();
                let brokers = vec![BrokerEndpoint {
                    id: 1,
                    shards: self.shards.iter().map(ToString::to_string).collect(),
                    kafka: "127.0.0.1:9092".into(),
                }];
                let cluster_id = "test".into();
                let answer = Response::Metadata {
                    cluster_id,
                    brokers,
                    topics,
                };
                (answer, empty)
            }
            Request::CreateTopic {
                name,
                partitions,
                configs,
                ..
            } => {
                let mut topics = self.topics.borrow_mut();
                if topics.contains_key(&name) {
                    let message = format!("topic {name} already exists");
                    return (error(ErrorCode::TopicExists, message), empty);
                }
                let logs = (0..partitions)
                    .map(|_| Log {
                        batches: vec![],
                        start: 0,
                        end: 0,
                    })
                    .collect();
                let topic = Topic {
                    partitions: logs,
                    configs: configs.into_iter().collect(),
                };
                topics.insert(name, topic);
                (Response::Done { value: 0 }, empty)
            }
            Request::DeleteTopic { name } => match self.topics.borrow_mut().remove(&name) {
                Some(_) => (Response::Done { value: 0 }, empty),
                None => (
                    error(ErrorCode::UnknownTopicOrPartition, "no such topic"),
                    empty,
                ),
            },
            Request::DescribeTopic { name } => match self.topics.borrow().get(&name) {
                Some(topic) => {
                    let topic = self.topic_info(&name, topic);
                    (Response::Topic { topic }, empty)
                }
                None => (
                    error(ErrorCode::UnknownTopicOrPartition, "no such topic"),
                    empty,
                ),
            },
            Request::AlterConfig { name, changes } => {
                let mut topics = self.topics.borrow_mut();
                let Some(topic) = topics.get_mut(&name) else {
                    return (
                        error(ErrorCode::UnknownTopicOrPartition, "no such topic"),
                        empty,
                    );
                };
                for (key, value) in changes {
                    match value {
                        Some(value) => topic.configs.insert(key, value),
                        None => topic.configs.remove(&key),
                    };
                }
                (Response::Done { value: 0 }, empty)
            }
            Request::Produce {
                topic, partition, ..
            } => {
                self.produce_requests.set(self.produce_requests.get() + 1);
                if self.not_owner.get() > 0 {
                    self.not_owner.set(self.not_owner.get() - 1);
                    return (error(ErrorCode::NotOwner, "moved, try again"), empty);
                }
                if let Err(answer) = check_owner(&topic, partition) {
                    return (answer, empty);
                }
                let mut topics = self.topics.borrow_mut();
                let t = topics.get_mut(&topic).expect("checked");
                let limit = t
                    .configs
                    .get("max.message.bytes")
                    .map_or(BATCH_BYTES_MAX, |v| v.parse().expect("number"));
                let log = &mut t.partitions[partition as usize];
                let base = log.end;
                let mut rest = &payload[..];
                while !rest.is_empty() {
                    let header = match batch::validate_produced(rest, BATCH_BYTES_MAX) {
                        Ok(header) => header,
                        Err(e) => return (error(ErrorCode::CorruptMessage, e.to_string()), empty),
                    };
                    let total = header.total_bytes();
                    if total > limit {
                        let message = format!("batch of {total} bytes exceeds {limit}");
                        return (error(ErrorCode::MessageTooLarge, message), empty);
                    }
                    let mut bytes = rest[..total].to_vec();
                    batch::set_base_offset(&mut bytes, Offset(log.end));
                    log.batches.push((log.end, Bytes::from(bytes)));
                    log.end += i64::from(header.last_offset_delta) + 1;
                    rest = &rest[total..];
                }
                let answer = Response::Produced {
                    base_offset: base,
                    last_offset: log.end - 1,
                    log_append_time: -1,
                };
                drop(topics);
                self.appended.notify();
                (answer, empty)
            }
            Request::Fetch {
                topic,
                partition,
                offset,
                max_bytes,
                max_wait_ms,
            } => {
                self.fetch_requests.set(self.fetch_requests.get() + 1);
                if let Err(answer) = check_owner(&topic, partition) {
                    return (answer, empty);
                }
                let deadline = rt::clock::now() + Duration::from_millis(u64::from(max_wait_ms));
                loop {
                    let seen = self.appended.version();
                    {
                        let topics = self.topics.borrow();
                        let Some(t) = topics.get(&topic) else {
                            return (error(ErrorCode::UnknownTopicOrPartition, "gone"), empty);
                        };
                        let log = &t.partitions[partition as usize];
                        if offset < log.start || offset > log.end {
                            let message =
                                format!("offset {offset} outside {}..{}", log.start, log.end);
                            return (error(ErrorCode::OffsetOutOfRange, message), empty);
                        }
                        let mut payload = Vec::new();
                        for (i, (_, bytes)) in log.batches.iter().enumerate() {
                            // By the offsets the broker assigned, not the stored bytes, which
                            // a test may have changed since.
                            let end = log.batches.get(i + 1).map_or(log.end, |(base, _)| *base);
                            if end <= offset {
                                continue;
                            }
                            if !payload.is_empty()
                                && payload.len() + bytes.len() > max_bytes as usize
                            {
                                break;
                            }
                            payload.extend_from_slice(bytes);
                        }
                        if !payload.is_empty() || rt::clock::now() >= deadline {
                            let answer = Response::Fetched {
                                high_watermark: log.end,
                                log_start_offset: log.start,
                            };
                            return (answer, Bytes::from(payload));
                        }
                    }
                    let wait = deadline.saturating_duration_since(rt::clock::now());
                    let changed = self.appended.changed(seen);
                    let timer = rt::sleep(wait);
                    futures::pin_mut!(changed, timer);
                    let _ = select(changed, timer).await;
                }
            }
            Request::ListOffset {
                topic,
                partition,
                query,
            } => {
                self.list_offset_requests
                    .set(self.list_offset_requests.get() + 1);
                if let Err(answer) = check_owner(&topic, partition) {
                    return (answer, empty);
                }
                let topics = self.topics.borrow();
                let log = &topics[&topic].partitions[partition as usize];
                let (offset, timestamp) = match query {
                    OffsetQuery::Earliest => (log.start, -1),
                    OffsetQuery::Latest => (log.end, -1),
                    OffsetQuery::Timestamp { ms } => log
                        .batches
                        .iter()
                        .flat_map(|(_, bytes)| {
                            batch::decode_batch(bytes, BATCH_BYTES_MAX)
                                .expect("valid")
                                .map(|r| r.expect("valid"))
                        })
                        .find(|r| r.timestamp.0 >= ms && r.offset.0 >= log.start)
                        .map_or((-1, -1), |r| (r.offset.0, r.timestamp.0)),
                };
                (Response::Offset { offset, timestamp }, empty)
            }
            Request::DeleteRecords {
                topic,
                partition,
                before,
            } => {
                if let Err(answer) = check_owner(&topic, partition) {
                    return (answer, empty);
                }
                let mut topics = self.topics.borrow_mut();
                let log =
                    &mut topics.get_mut(&topic).expect("checked").partitions[partition as usize];
                log.start = if before < 0 {
                    log.end
                } else {
                    before.min(log.end)
                };
                (Response::Done { value: log.start }, empty)
            }
            Request::CreatePartitions { name, total } => {
                let mut topics = self.topics.borrow_mut();
                let Some(topic) = topics.get_mut(&name) else {
                    return (
                        error(ErrorCode::UnknownTopicOrPartition, "no such topic"),
                        empty,
                    );
                };
                while (topic.partitions.len() as i32) < total {
                    topic.partitions.push(Log {
                        batches: vec![],
                        start: 0,
                        end: 0,
                    });
                }
                (Response::Done { value: 0 }, empty)
            }
            // This fake broker has no consumer groups (tools/tests/groups_native.rs tests
            // them against the real one).
            other => (
                error(ErrorCode::InvalidRequest, format!("unsupported: {other:?}")),
                empty,
            ),
        }
    }
}

/// Starts the two shard endpoints of an in-memory broker on this executor.
fn start_broker(dir: &std::path::Path) -> Rc<Broker> {
    let options = tls::ServerTlsOptions {
        identity: tls::ServerIdentity::SelfSigned {
            dir: dir.to_path_buf(),
            names: tls::default_self_signed_names(),
        },
        client_ca: None,
    };
    let config = tls::server_config(&options).expect("server config");
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("literal");
    let endpoints: Vec<quinn::Endpoint> = (0..2)
        .map(|_| quic::server_endpoint(loopback, config.clone()).expect("endpoint"))
        .collect();
    let broker = Rc::new(Broker {
        shards: endpoints
            .iter()
            .map(|e| e.local_addr().expect("bound"))
            .collect(),
        topics: RefCell::new(BTreeMap::new()),
        appended: Notify::new(),
        not_owner: Cell::new(0),
        produce_requests: Cell::new(0),
        fetch_requests: Cell::new(0),
        list_offset_requests: Cell::new(0),
    });
    for (shard, endpoint) in endpoints.into_iter().enumerate() {
        let broker = Rc::clone(&broker);
        rt::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let broker = Rc::clone(&broker);
                rt::spawn(serve_connection(broker, shard as u16, incoming)).detach();
            }
        })
        .detach();
    }
    broker
}

async fn serve_connection(broker: Rc<Broker>, shard: u16, incoming: quinn::Incoming) {
    let Ok(connection) = incoming.await else {
        return;
    };
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let broker = Rc::clone(&broker);
        rt::spawn(async move {
            match read_frame::<Request>(&mut recv).await {
                Ok(frame) => {
                    let (answer, payload) = broker.handle(shard, frame.header, frame.payload).await;
                    let _ = write_frame(&mut send, &answer, payload).await;
                }
                Err(ReadFrameError::Frame(error)) => {
                    let _ = answer_frame_error(&mut send, &mut recv, &error).await;
                }
                Err(_) => {}
            }
        })
        .detach();
    }
}

fn client_config(broker: &Broker) -> ClientConfig {
    ClientConfig {
        retry_backoff: Duration::from_millis(1),
        retry_backoff_max: Duration::from_millis(5),
        ..ClientConfig::new([broker.shards[0].to_string()])
    }
}

fn record(i: usize, partition: Option<i32>) -> ProducerRecord {
    let mut record = ProducerRecord::new("events", format!("value-{i}"))
        .with_key(format!("key-{}", i % 13))
        .with_header("index", Some(Bytes::from(i.to_string())))
        .with_timestamp(TimestampMs(1_000_000 + i as i64));
    record.partition = partition;
    record
}

/// A client of `broker` that has created the topic `events` with `partitions` partitions.
async fn connect_with_events(broker: &Broker, partitions: i32) -> Client {
    let client = Client::connect(client_config(broker))
        .await
        .expect("connect");
    client
        .create_topic(NewTopic::new("events", partitions))
        .await
        .expect("create");
    client
}

/// A consumer of `client` with `config`, assigned `events-0` and positioned at offset 0.
fn reading_from_start(client: &Client, config: ConsumerConfig) -> Consumer {
    let consumer = Consumer::new(client, config);
    consumer.assign(&[("events", 0)]);
    consumer.seek("events", 0, Seek::Offset(0)).expect("seek");
    consumer
}

/// Waits until the test broker's request counter `count` reaches `at_least` (the run's
/// deadline bounds it).
async fn wait_for(count: &Cell<u32>, at_least: u32) {
    while count.get() < at_least {
        rt::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads `count` records from `consumer`, failing on a poll error.
async fn consume(consumer: &Consumer, count: usize) -> Vec<sluice_net::client::ConsumerRecord> {
    let mut records = Vec::new();
    while records.len() < count {
        let batch = consumer.poll(Duration::from_secs(10)).await.expect("poll");
        assert!(
            !batch.is_empty(),
            "no record within 10 s after {}",
            records.len()
        );
        records.extend(batch);
    }
    records
}

/// The offsets of `records`, in order.
fn offsets_of(records: &[sluice_net::client::ConsumerRecord]) -> Vec<i64> {
    records.iter().map(|r| r.offset).collect()
}

// Goal: records produced through the library come back from every partition in order with
// identical keys, values, headers and timestamps, for every codec, and the acknowledged
// offsets are the consumed ones. Method: 4 partitions over 2 shard endpoints; produce 3000
// keyed records per codec (acks=all, small batches, pipelining), then consume all partitions
// from the beginning with one consumer.
#[test]
fn produce_then_consume_every_codec() {
    run(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = start_broker(dir.path());
        let client = Client::connect(client_config(&broker))
            .await
            .expect("connect");
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let _ = client.delete_topic("events").await;
            client
                .create_topic(NewTopic::new("events", 4))
                .await
                .expect("create");
            let config = ProducerConfig {
                batch_size: 4096,
                compression: codec,
                acks: Acks::All,
                ..ProducerConfig::default()
            };
            let producer = Producer::new(&client, config).expect("producer");
            let acks: Vec<_> = (0..3000).map(|i| producer.send(record(i, None))).collect();
            let acks: Vec<_> = join_all(acks)
                .await
                .into_iter()
                .map(|a| a.expect("acknowledged"))
                .collect();
            let consumer = Consumer::new(&client, ConsumerConfig::default());
            consumer.assign(&[("events", 0), ("events", 1), ("events", 2), ("events", 3)]);
            let records = consume(&consumer, 3000).await;
            let mut by_partition: HashMap<i32, Vec<_>> = HashMap::new();
            for r in &records {
                by_partition.entry(r.partition).or_default().push(r.clone());
            }
            assert!(by_partition.len() > 1, "keys spread over partitions");
            for (i, ack) in acks.iter().enumerate() {
                let consumed = &by_partition[&ack.partition][ack.offset as usize];
                assert_eq!(consumed.offset, ack.offset, "{codec:?}");
                let expected = record(i, None);
                assert_eq!(consumed.key, expected.key, "{codec:?} record {i}");
                assert_eq!(consumed.value, expected.value, "{codec:?} record {i}");
                assert_eq!(consumed.timestamp, expected.timestamp.expect("set"));
                assert_eq!(consumed.headers.len(), 1);
                assert_eq!(consumed.headers[0].key_str(), Some("index"));
                assert_eq!(
                    consumed.headers[0].value.as_deref(),
                    Some(i.to_string().as_bytes())
                );
            }
            for records in by_partition.values() {
                assert_eq!(
                    offsets_of(records),
                    (0..records.len() as i64).collect::<Vec<_>>()
                );
            }
            assert!(
                consumer
                    .poll(Duration::from_millis(50))
                    .await
                    .expect("poll")
                    .is_empty()
            );
        }
        client.close().await;
    });
}

// Goal: the admin calls reach the broker and report its errors with their codes; unknown
// topics and partitions are clear errors on every path. Method: run each call once.
#[test]
fn admin_calls_and_errors() {
    run(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = start_broker(dir.path());
        let client = Client::connect(client_config(&broker))
            .await
            .expect("connect");
        client
            .create_topic(NewTopic::new("a", 3).config("max.message.bytes", "1024"))
            .await
            .expect("create");
        let exists = client.create_topic(NewTopic::new("a", 1)).await;
        assert_eq!(
            exists.expect_err("exists").code(),
            Some(ErrorCode::TopicExists)
        );
        assert_eq!(client.list_topics().await.expect("list"), vec!["a"]);
        let described = client.describe_topic("a").await.expect("describe");
        assert_eq!(described.partitions.len(), 3);
        assert_eq!(described.partitions[1].shard, 1);
        client
            .alter_config("a", vec![("retention.ms".into(), Some("5".into()))])
            .await
            .expect("alter");
        let described = client.describe_topic("a").await.expect("describe");
        assert!(
            described
                .configs
                .contains(&("retention.ms".into(), "5".into(), true))
        );
        client.create_partitions("a", 5).await.expect("grow");
        assert_eq!(client.partition_count("a").await.expect("count"), 5);

        let producer = Producer::new(&client, ProducerConfig::default()).expect("producer");
        let too_big = ProducerRecord::new("a", vec![7u8; 4096]).with_partition(0);
        let error = producer
            .send(too_big)
            .await
            .expect_err("over max.message.bytes");
        assert_eq!(error.code(), Some(ErrorCode::MessageTooLarge), "{error}");
        let unknown = producer.send(ProducerRecord::new("nope", "x")).await;
        let error = unknown.expect_err("unknown topic");
        assert!(error.to_string().contains("unknown topic nope"), "{error}");
        let out_of_range = producer
            .send(ProducerRecord::new("a", "x").with_partition(9))
            .await;
        let error = out_of_range.expect_err("no partition 9");
        assert!(error.to_string().contains("has no partition 9"), "{error}");

        let metadata = producer
            .send(ProducerRecord::new("a", "kept").with_partition(1))
            .await
            .expect("small record");
        assert_eq!(metadata.offset, 0);
        let start = client
            .delete_records("a", 1, -1)
            .await
            .expect("delete records");
        assert_eq!(start, 1);
        let earliest = client
            .list_offset("a", 1, OffsetQuery::Earliest)
            .await
            .expect("earliest");
        assert_eq!(earliest.offset, 1);

        let consumer = Consumer::new(&client, ConsumerConfig::default());
        consumer.assign(&[("nope", 0)]);
        let error = consumer
            .poll(Duration::from_secs(10))
            .await
            .expect_err("unknown topic");
        assert!(
            matches!(error.client_error(), Some(ClientError::UnknownTopic { .. })),
            "{error}"
        );
        consumer.assign(&[("a", 1)]);
        consumer.seek("a", 1, Seek::Offset(0)).expect("assigned");
        let error = consumer
            .poll(Duration::from_secs(10))
            .await
            .expect_err("deleted offset");
        assert_eq!(error.code(), Some(ErrorCode::OffsetOutOfRange), "{error}");
        assert!(consumer.seek("a", 2, Seek::End).is_err(), "not assigned");

        client.delete_topic("a").await.expect("delete");
        assert!(client.list_topics().await.expect("list").is_empty());
        let error = client.describe_topic("a").await.expect_err("deleted");
        assert_eq!(error.code(), Some(ErrorCode::UnknownTopicOrPartition));
    });
}

// Goal: a retriable refusal (NotOwner) is retried after a metadata refresh and the records
// still land once each, in order. Method: the broker refuses the first three produce
// requests; produce to one partition with one request in flight and read the log back.
#[test]
fn retriable_errors_are_retried_in_order() {
    run(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = start_broker(dir.path());
        let client = Client::connect(client_config(&broker))
            .await
            .expect("connect");
        client
            .create_topic(NewTopic::new("events", 2))
            .await
            .expect("create");
        broker.not_owner.set(3);
        let config = ProducerConfig {
            batch_size: 256,
            in_flight_max: 1,
            retry_backoff: Duration::from_millis(1),
            retry_backoff_max: Duration::from_millis(2),
            ..ProducerConfig::default()
        };
        let producer = Producer::new(&client, config).expect("producer");
        let acks: Vec<_> = (0..200)
            .map(|i| producer.send(record(i, Some(1))))
            .collect();
        let offsets: Vec<i64> = join_all(acks)
            .await
            .into_iter()
            .map(|a| a.expect("retried until accepted").offset)
            .collect();
        assert_eq!(offsets, (0..200).collect::<Vec<_>>());
        assert!(broker.produce_requests.get() > 3);
        let consumer = Consumer::new(&client, ConsumerConfig::default());
        consumer.assign(&[("events", 1)]);
        let values: Vec<_> = consume(&consumer, 200)
            .await
            .into_iter()
            .map(|r| r.value.expect("value"))
            .collect();
        let expected: Vec<_> = (0..200)
            .map(|i| record(i, None).value.expect("v"))
            .collect();
        assert_eq!(values, expected);
    });
}

// Goal: seeks by timestamp, end and offset, and position, work; a long-poll fetch delivers a
// record produced while it waits; two consumers read independently.
// Method: produce timestamped records, seek, poll; tail the end while producing.
#[test]
fn seeks_and_tailing() {
    run(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = start_broker(dir.path());
        let client = connect_with_events(&broker, 1).await;
        let producer = Producer::new(&client, ProducerConfig::default()).expect("producer");
        for i in 0..100 {
            producer.send_and_forget(record(i, Some(0))).expect("room");
        }
        producer.flush().await.expect("flushed");

        let first = Consumer::new(&client, ConsumerConfig::default());
        let second = Consumer::new(&client, ConsumerConfig::default());
        first.assign(&[("events", 0)]);
        second.assign(&[("events", 0)]);
        first
            .seek("events", 0, Seek::Timestamp(TimestampMs(1_000_040)))
            .expect("seek");
        assert_eq!(first.position("events", 0).await.expect("position"), 40);
        let records = consume(&first, 60).await;
        assert_eq!(records[0].offset, 40);
        assert_eq!(records[0].timestamp, TimestampMs(1_000_040));
        assert_eq!(first.position("events", 0).await.expect("position"), 100);
        let all = consume(&second, 100).await;
        assert_eq!(all.first().map(|r| r.offset), Some(0));
        assert_eq!(all.last().map(|r| r.offset), Some(99));

        first
            .seek("events", 0, Seek::Timestamp(TimestampMs(9_000_000)))
            .expect("seek");
        assert_eq!(
            first
                .position("events", 0)
                .await
                .expect("after every record"),
            100
        );
        first.seek("events", 0, Seek::End).expect("seek");
        // Resolve the end before producing, or the new record could land before it.
        assert_eq!(first.position("events", 0).await.expect("position"), 100);
        let tail = first.poll(Duration::from_millis(20));
        let produce = async {
            producer.send(record(100, Some(0))).await.expect("acked");
        };
        let (tailed, ()) = futures::join!(
            async {
                let mut got = tail.await.expect("poll");
                while got.is_empty() {
                    got = first.poll(Duration::from_secs(10)).await.expect("poll");
                }
                got
            },
            produce
        );
        assert_eq!(tailed.len(), 1);
        assert_eq!(tailed[0].offset, 100);
        first.seek("events", 0, Seek::Offset(98)).expect("seek");
        let again = offsets_of(&consume(&first, 3).await);
        assert_eq!(again, vec![98, 99, 100]);
    });
}

// Goal: a fetcher sends one fetch ahead of the answer it decodes, never more once its buffer
// is full, and an answer fetched ahead for an old position is never delivered after a seek.
// Method: 200 records in 200 batches; a consumer fetching one batch at a time with a one-byte
// buffer; count the broker's fetches while nobody polls, then read, seek back and forward.
// Pass: exactly two fetches (the one buffered and the one sent ahead), then every read is
// contiguous from where the last seek put it.
#[test]
fn fetches_run_one_ahead_within_the_buffer_bound() {
    run(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = start_broker(dir.path());
        let client = connect_with_events(&broker, 1).await;
        let producer = Producer::new(&client, ProducerConfig::default()).expect("producer");
        for i in 0..200 {
            producer.send(record(i, Some(0))).await.expect("acked");
        }
        let config = ConsumerConfig {
            fetch_bytes_max: 1,
            buffer_bytes: 1,
            ..ConsumerConfig::default()
        };
        let consumer = reading_from_start(&client, config);
        wait_for(&broker.fetch_requests, 2).await;
        // A fetcher that ignored the bound would fetch the remaining 198 batches meanwhile.
        rt::sleep(Duration::from_millis(50)).await;
        assert_eq!(broker.fetch_requests.get(), 2);

        assert_eq!(
            offsets_of(&consume(&consumer, 50).await),
            (0..50).collect::<Vec<_>>()
        );
        consumer.seek("events", 0, Seek::Offset(10)).expect("seek");
        assert_eq!(
            offsets_of(&consume(&consumer, 30).await),
            (10..40).collect::<Vec<_>>()
        );
        consumer.seek("events", 0, Seek::Offset(150)).expect("seek");
        assert_eq!(
            offsets_of(&consume(&consumer, 50).await),
            (150..200).collect::<Vec<_>>()
        );
    });
}

/// Produces three single-record batches to `events-0` of a new test broker, lets `change`
/// rewrite the stored bytes of batch `index`, then reads from offset 0 with `fetch_bytes_max`
/// until a poll fails: the records delivered and the error. A poll that waits 10 s for nothing
/// fails the test (the consumer stalled).
async fn read_after_change(
    index: usize,
    change: impl FnOnce(&mut Vec<u8>),
    fetch_bytes_max: u32,
) -> (Vec<sluice_net::client::ConsumerRecord>, ConsumerError) {
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = start_broker(dir.path());
    let client = connect_with_events(&broker, 1).await;
    let producer = Producer::new(&client, ProducerConfig::default()).expect("producer");
    for i in 0..3 {
        producer.send(record(i, Some(0))).await.expect("acked");
    }
    {
        let mut topics = broker.topics.borrow_mut();
        let log = &mut topics.get_mut("events").expect("topic").partitions[0];
        assert_eq!(log.batches.len(), 3, "one batch per acknowledged send");
        let (_, stored) = &mut log.batches[index];
        let mut changed = stored.to_vec();
        change(&mut changed);
        *stored = Bytes::from(changed);
    }
    let config = ConsumerConfig {
        fetch_bytes_max,
        ..ConsumerConfig::default()
    };
    let consumer = reading_from_start(&client, config);
    let mut delivered = Vec::new();
    loop {
        match consumer.poll(Duration::from_secs(10)).await {
            Ok(records) => {
                assert!(
                    !records.is_empty(),
                    "neither records nor an error within 10 s after {} records",
                    delivered.len()
                );
                delivered.extend(records);
            }
            Err(error) => return (delivered, error),
        }
    }
}

// Goal: the client checks every fetched batch (the frame's CRC covers only its prefix and
// header, net/PROTOCOL.md "Integrity"): a batch whose bytes changed after the broker took it
// stops its partition with `Corrupt` at that offset, and the records before it are delivered.
// Method: flip the last byte of the second of three single-record batches (inside its CRC's
// span) in the test broker's store; read one batch per fetch.
#[test]
fn corrupt_fetched_batches_are_refused() {
    run(async {
        let flip_last = |bytes: &mut Vec<u8>| {
            let last = bytes.len() - 1;
            bytes[last] ^= 0x01;
        };
        let (records, error) = read_after_change(1, flip_last, 1).await;
        assert_eq!(offsets_of(&records), vec![0]);
        assert_eq!(records[0].value.as_deref(), Some(&b"value-0"[..]));
        assert!(
            matches!(
                error,
                ConsumerError::Corrupt {
                    offset: 1,
                    source: batch::BatchError::CrcMismatch { .. },
                    ..
                }
            ),
            "{error}"
        );
    });
}

// Goal: base offsets, which no CRC covers, cannot take a consumer backwards, stall it, or panic
// it: an answer whose batches go back, whose first batch ends below the fetch offset, or whose
// offsets overflow is refused as `Corrupt`. Method: rewrite stored base offsets in the test
// broker; read all three batches in one answer, then one batch per fetch.
#[test]
fn fetched_base_offsets_must_ascend() {
    run(async {
        let to_zero = |bytes: &mut Vec<u8>| batch::set_base_offset(bytes, Offset(0));
        let (records, error) = read_after_change(2, to_zero, 1 << 20).await;
        assert_eq!(
            offsets_of(&records),
            Vec::<i64>::new(),
            "nothing of a refused answer is delivered"
        );
        assert!(
            matches!(
                error,
                ConsumerError::Corrupt {
                    offset: 0,
                    source: batch::BatchError::OffsetsGoBack {
                        base_offset: 0,
                        floor: 2
                    },
                    ..
                }
            ),
            "{error}"
        );

        let (records, error) = read_after_change(2, to_zero, 1).await;
        assert_eq!(offsets_of(&records), vec![0, 1]);
        assert!(
            matches!(
                error,
                ConsumerError::Corrupt {
                    offset: 2,
                    source: batch::BatchError::EndsBelow {
                        last_offset: 0,
                        floor: 2
                    },
                    ..
                }
            ),
            "{error}"
        );

        let to_max = |bytes: &mut Vec<u8>| batch::set_base_offset(bytes, Offset(i64::MAX));
        let (records, error) = read_after_change(1, to_max, 1 << 20).await;
        assert_eq!(offsets_of(&records), Vec::<i64>::new());
        assert!(
            matches!(
                error,
                ConsumerError::Corrupt {
                    source: batch::BatchError::OffsetOverflow { .. },
                    ..
                }
            ),
            "{error}"
        );
    });
}

// Goal: when the fetch offset falls out of the log while records fetched ahead are still
// buffered, `reset_on_out_of_range` moves the partition as a seek does: the buffered records are
// dropped with it, and `poll` goes on from the new position instead of failing on records below
// it. Method: ten single-record batches of 1000-byte values; a consumer whose buffer holds two
// records, polling one at a time; once it has buffered 0 and 1 and fetched 2 ahead, the test
// broker's log start moves to 5, so the next fetch ahead (3) is out of range while 2 is buffered;
// the test polls only at points the broker's request counts mark.
#[test]
fn out_of_range_reset_drops_what_was_fetched_ahead() {
    run(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = start_broker(dir.path());
        let client = connect_with_events(&broker, 1).await;
        let producer = Producer::new(&client, ProducerConfig::default()).expect("producer");
        for i in 0..10u8 {
            let mut record = ProducerRecord::new("events", vec![i; 1000]);
            record.partition = Some(0);
            producer.send(record).await.expect("acked");
        }
        let config = ConsumerConfig {
            fetch_bytes_max: 1,
            // More than one record's charge (1000 bytes plus a small overhead), less than two.
            buffer_bytes: 1500,
            poll_records_max: 1,
            reset_on_out_of_range: Some(Seek::Beginning),
            ..ConsumerConfig::default()
        };
        let consumer = reading_from_start(&client, config);
        wait_for(&broker.fetch_requests, 3).await;
        rt::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            broker.fetch_requests.get(),
            3,
            "0 and 1 buffered, 2 fetched ahead"
        );
        broker
            .topics
            .borrow_mut()
            .get_mut("events")
            .expect("topic")
            .partitions[0]
            .start = 5;
        let poll_one = || async {
            let records = consumer.poll(Duration::from_secs(10)).await.expect("poll");
            assert_eq!(records.len(), 1, "one record per poll");
            records[0].offset
        };
        // Assigning resolved `ConsumerConfig::start` with one already.
        let list_offsets_before = broker.list_offset_requests.get();
        let mut offsets = vec![poll_one().await];
        // Room for 2, which the fetcher takes from the answer it fetched ahead while it fetches
        // 3 ahead: out of range.
        wait_for(&broker.fetch_requests, 4).await;
        offsets.push(poll_one().await);
        // The fetcher resets once 3 is out of range, with 2 buffered, and resolves the
        // beginning with a ListOffset; nothing is polled meanwhile.
        wait_for(&broker.list_offset_requests, list_offsets_before + 1).await;
        while offsets.last() != Some(&9) {
            let records = consumer.poll(Duration::from_secs(10)).await.expect("poll");
            assert!(!records.is_empty(), "nothing within 10 s after {offsets:?}");
            offsets.extend(offsets_of(&records));
        }
        assert_eq!(offsets, vec![0, 1, 5, 6, 7, 8, 9]);
    });
}

// Goal: bootstrap skips an address that does not answer and reports a clear error when none
// does. Method: list a dead UDP port first, then the broker; then only dead ports.
#[test]
fn bootstrap_tries_every_address() {
    run(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = start_broker(dir.path());
        // A bound socket that never answers: QUIC gets no reply at all.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let dead = silent.local_addr().expect("bound").to_string();
        let config = ClientConfig {
            connect_timeout: Duration::from_millis(300),
            ..ClientConfig::new([dead.clone(), broker.shards[0].to_string()])
        };
        let client = Client::connect(config)
            .await
            .expect("second address answers");
        assert_eq!(client.metadata().brokers[0].shards.len(), 2);
        let config = ClientConfig {
            connect_timeout: Duration::from_millis(300),
            ..ClientConfig::new([dead.clone()])
        };
        let error = Client::connect(config).await.expect_err("nobody answers");
        assert!(matches!(error, ClientError::NoBroker { .. }), "{error}");
        assert!(
            error
                .to_string()
                .starts_with(&format!("no broker answered at {dead}")),
            "{error}"
        );
        let error = Client::connect(ClientConfig::new(["not an address"])).await;
        assert!(
            matches!(error, Err(ClientError::Resolve { .. })),
            "{error:?}"
        );
        drop(silent);
    });
}

// Goal: a producer dropped with records still lingering fails them with `Closed` rather than
// leaving their futures pending forever. Method: linger of an hour, drop, await.
#[test]
fn dropped_producer_fails_pending_records() {
    run(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = start_broker(dir.path());
        let client = connect_with_events(&broker, 1).await;
        let config = ProducerConfig {
            linger: Duration::from_secs(3600),
            ..ProducerConfig::default()
        };
        let producer = Producer::new(&client, config).expect("producer");
        let pending = producer.send(record(1, Some(0)));
        drop(producer);
        assert!(matches!(pending.await, Err(ProduceError::Closed)));
    });
}

// Goal: acks=0 records are reported sent once written, and closing the client delivers the
// bytes still in flight instead of discarding them. Method: produce with acks=0, flush,
// close at once, then count what the broker appended.
#[test]
fn acks_zero_reaches_the_broker_before_close() {
    run(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = start_broker(dir.path());
        let client = Client::connect(client_config(&broker))
            .await
            .expect("connect");
        client
            .create_topic(NewTopic::new("events", 2))
            .await
            .expect("create");
        let config = ProducerConfig {
            acks: Acks::None,
            batch_size: 1024,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(&client, config).expect("producer");
        let acks: Vec<_> = (0..2000)
            .map(|i| producer.send(record(i, Some((i % 2) as i32))))
            .collect();
        producer.flush().await.expect("written");
        for ack in join_all(acks).await {
            assert_eq!(ack.expect("sent").offset, -1, "acks=0 has no offsets");
        }
        client.close().await;
        let topics = broker.topics.borrow();
        let ends: Vec<i64> = topics["events"].partitions.iter().map(|l| l.end).collect();
        assert_eq!(ends, vec![1000, 1000]);
    });
}
