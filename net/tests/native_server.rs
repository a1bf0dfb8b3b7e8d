//! The native protocol server end to end: in-process brokers (shards on their own threads,
//! each with a `Shard` on a temp data dir and `serve_native` on its own UDP port) and a raw
//! client built from `quic::connect` and the frame functions, so these tests check the wire
//! semantics of net/PROTOCOL.md rather than a client library's.
//!
//! One two-shard broker is shared by most tests (each uses its own topics), which also shows
//! that one client's bad input leaves the broker serving the others. Tests that need other
//! settings (a small connection budget, no auto-create, a shutdown) start their own.

mod native_raw;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::channel::oneshot;
use futures::future::{Either, select};
use futures::stream::FuturesUnordered;
use sluice_cluster::metadata::{BrokerInfo, FileMetadataStore};
use sluice_cluster::shard::{Shard, ShardConfig, ShardMsg};
use sluice_engine::batch::set_base_offset;
use sluice_engine::rt::shards::{self, ShardContext, ShardsConfig};
use sluice_engine::{BrokerId, Offset, rt};
use sluice_net::native::frame::{self, FrameError, PROTOCOL_VERSION};
use sluice_net::native::messages::{ErrorCode, OffsetQuery, Request, Response};
use sluice_net::native::stream::{ReadFrameError, read_frame, write_frame};
use sluice_net::native::{CLOSE_SHUTTING_DOWN, NativeServerConfig, serve_native_until};
use sluice_net::quic::tls::{self, ServerIdentity, ServerTlsOptions};

use native_raw::{RawClient as Client, assert_error, batch};

/// Far beyond what any of these tests needs; only a lost wake-up or a hang reaches it.
const TEST_DEADLINE: Duration = Duration::from_secs(120);

/// Runs `future` on a fresh executor on this thread, failing the test if it hangs.
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

/// Settings of a test broker.
#[derive(Clone, Copy)]
struct Options {
    shards: usize,
    auto_create_topics: bool,
    connection_buffer_bytes: Option<usize>,
}

/// A running in-process broker. Its shards run until the test process exits, or until
/// [`TestBroker::stop`].
struct TestBroker {
    /// QUIC endpoint of each shard.
    endpoints: Vec<SocketAddr>,
    stops: Mutex<Vec<oneshot::Sender<()>>>,
    stopped: Mutex<std::sync::mpsc::Receiver<u16>>,
    _dir: tempfile::TempDir,
}

/// The two-shard broker shared by this test binary, started on first use.
fn broker() -> &'static TestBroker {
    static BROKER: OnceLock<TestBroker> = OnceLock::new();
    BROKER.get_or_init(|| {
        TestBroker::start(Options {
            shards: 2,
            auto_create_topics: true,
            connection_buffer_bytes: None,
        })
    })
}

/// A UDP port that was free a moment ago.
fn free_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral port");
    socket.local_addr().expect("local addr").port()
}

impl TestBroker {
    fn start(options: Options) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp data dir");
        let endpoints: Vec<SocketAddr> = (0..options.shards)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_udp_port())))
            .collect();
        let (store, mut snapshot) =
            FileMetadataStore::open(&dir.path().join("__metadata")).expect("metadata store");
        let node = BrokerId(1);
        snapshot.controller = node;
        snapshot.brokers = vec![BrokerInfo {
            id: node,
            kafka: "127.0.0.1:9".parse().expect("addr"),
            quic: endpoints.clone(),
        }];
        let snapshot = Arc::new(snapshot);
        // As the broker does: the TLS identity is made once, before the shards start.
        let tls = ServerTlsOptions {
            identity: ServerIdentity::SelfSigned {
                dir: dir.path().join("tls"),
                names: tls::default_self_signed_names(),
            },
            client_ca: None,
        };
        let mut native = NativeServerConfig::new(endpoints[0], &tls).expect("server config");
        native.auto_create_topics = options.auto_create_topics;
        if let Some(bytes) = options.connection_buffer_bytes {
            native.connection_buffer_bytes = bytes;
        }
        let store = Arc::new(Mutex::new(Some(store)));
        let (stops, stop_receivers): (Vec<_>, Vec<_>) = (0..options.shards)
            .map(|_| oneshot::channel::<()>())
            .unzip();
        let stop_receivers = Arc::new(Mutex::new(
            stop_receivers.into_iter().map(Some).collect::<Vec<_>>(),
        ));
        let (stopped_sender, stopped) = std::sync::mpsc::channel();
        let data_dir = dir.path().to_path_buf();
        let endpoints_for_shards = endpoints.clone();
        let config = ShardsConfig {
            count: options.shards,
            cpus: Vec::new(),
            io_memory_bytes: sluice_engine::rt::env::IO_MEMORY_BYTES_DEFAULT,
            inbox_capacity: sluice_cluster::limits::SHARD_INBOX_CAPACITY,
            name: "native-test".into(),
            idle_poll: std::time::Duration::ZERO,
        };
        let handle = shards::start(config, move |context: ShardContext<ShardMsg>| {
            let snapshot = Arc::clone(&snapshot);
            let data_dir = data_dir.clone();
            let id = context.id.0;
            let store = if id == 0 {
                store.lock().expect("start-up lock").take()
            } else {
                None
            };
            let stop = stop_receivers.lock().expect("start-up lock")[usize::from(id)]
                .take()
                .expect("one stop receiver per shard");
            let mut native = native.clone();
            native.listen = endpoints_for_shards[usize::from(id)];
            let stopped_sender = stopped_sender.clone();
            async move {
                let shard_config = ShardConfig {
                    node,
                    data_dir,
                    cache_bytes: 16 << 20,
                    replication: sluice_cluster::replication::ReplicationSettings::with_lag(
                        std::time::Duration::from_secs(30),
                    ),
                };
                let shard = Shard::start(context, shard_config, snapshot, store, None).await;
                let stop = async move {
                    let _ = stop.await;
                };
                serve_native_until(std::rc::Rc::clone(&shard), native, stop)
                    .await
                    .expect("native server serves");
                shard.shutdown().await;
                let _ = stopped_sender.send(id);
            }
        })
        .expect("shards start");
        // The shards run until the test process exits (or stop() ends them).
        std::mem::forget(handle);
        let broker = TestBroker {
            endpoints,
            stops: Mutex::new(stops),
            stopped: Mutex::new(stopped),
            _dir: dir,
        };
        // Ready once every shard answers. On a thread of its own: the caller may already be
        // inside an executor, and executors do not nest.
        for endpoint in broker.endpoints.clone() {
            std::thread::spawn(move || {
                run(async move {
                    let deadline = rt::clock::now() + Duration::from_secs(30);
                    loop {
                        if let Ok(client) = Client::try_connect(endpoint).await {
                            let (answer, _) =
                                client.call(&Request::Metadata { topics: None }).await;
                            assert!(matches!(answer, Response::Metadata { .. }), "{answer:?}");
                            return;
                        }
                        assert!(rt::clock::now() < deadline, "{endpoint} never answered");
                        rt::sleep(Duration::from_millis(10)).await;
                    }
                })
            })
            .join()
            .expect("broker answers");
        }
        broker
    }

    /// Signals every shard to stop, and waits until each has drained and shut down.
    fn stop(&self) {
        for stop in self.stops.lock().expect("lock").drain(..) {
            let _ = stop.send(());
        }
        let stopped = self.stopped.lock().expect("lock");
        for _ in 0..self.endpoints.len() {
            stopped
                .recv_timeout(Duration::from_secs(30))
                .expect("every shard stops");
        }
    }
}

/// `batch` as the broker stores it: with its assigned base offset and leader epoch 0.
fn stored(batch: &Bytes, base_offset: i64) -> Bytes {
    let mut bytes = BytesMut::from(&batch[..]);
    set_base_offset(&mut bytes, Offset(base_offset));
    sluice_engine::batch::set_leader_epoch(&mut bytes, sluice_engine::LeaderEpoch(0));
    bytes.freeze()
}

/// The shard endpoint that does not own a partition (two shards).
fn other_endpoint(owner: SocketAddr) -> SocketAddr {
    *broker()
        .endpoints
        .iter()
        .find(|e| **e != owner)
        .expect("two shards")
}

// Goal: produce and fetch round-trip through the owning shard of every partition, and the
// fetched payload is exactly the stored batches (the produced bytes with the broker-assigned
// base offset and leader epoch), concatenated. Method: create 4 partitions over 2 shards,
// produce two batches to each partition's owner per metadata, fetch from offset 0 and compare
// bytes; check that both shards own partitions so both servers were exercised.
#[test]
fn produce_and_fetch_on_owning_shards() {
    run(async {
        let admin = Client::connect(broker().endpoints[0]).await;
        admin.create_topic("round-trip", 4, &[]).await;
        let owners = admin.owners("round-trip").await;
        assert_eq!(owners.len(), 4);
        let mut distinct = owners.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 2, "partitions spread over both shards");
        for (partition, owner) in owners.iter().enumerate() {
            let partition = partition as i32;
            let client = Client::connect(*owner).await;
            let first = batch(&["a", "b", "c"]);
            let second = batch(&[&format!("partition {partition}")]);
            let answer = client
                .produce("round-trip", partition, 1, first.clone())
                .await;
            assert_eq!(
                answer,
                Response::Produced {
                    base_offset: 0,
                    last_offset: 2,
                    log_append_time: -1
                }
            );
            let answer = client
                .produce("round-trip", partition, -1, second.clone())
                .await;
            assert_eq!(
                answer,
                Response::Produced {
                    base_offset: 3,
                    last_offset: 3,
                    log_append_time: -1
                }
            );
            let fetched = client.fetch("round-trip", partition, 0, 0).await;
            assert_eq!(fetched.high_watermark, 4);
            assert_eq!(fetched.log_start_offset, 0);
            let mut expected = BytesMut::new();
            expected.extend_from_slice(&stored(&first, 0));
            expected.extend_from_slice(&stored(&second, 3));
            assert!(
                fetched.batches == expected,
                "partition {partition}: fetched bytes differ from the stored batches"
            );
            // At the end: nothing, no wait.
            let tail = client.fetch("round-trip", partition, 4, 0).await;
            assert!(tail.batches.is_empty());
            assert_eq!(tail.high_watermark, 4);
        }
    });
}

// Goal: acks=0 is still answered (every stream gets one answer), and an acks value outside
// 0, 1, -1 is refused without appending. Method: produce with acks 0, then with acks 2, and
// check the log end.
#[test]
fn acks_zero_is_answered_and_bad_acks_refused() {
    run(async {
        let admin = Client::connect(broker().endpoints[0]).await;
        admin.create_topic("acks", 1, &[]).await;
        let owner = Client::connect(admin.owners("acks").await[0]).await;
        let answer = owner.produce("acks", 0, 0, batch(&["x"])).await;
        assert!(
            matches!(answer, Response::Produced { base_offset: 0, .. }),
            "{answer:?}"
        );
        let answer = owner.produce("acks", 0, 2, batch(&["y"])).await;
        let message = assert_error(&answer, ErrorCode::InvalidRequest);
        assert!(message.contains("acks"), "{message}");
        assert_eq!(owner.latest("acks", 0).await, 1);
    });
}

// Goal: the data path never crosses a core: produce and fetch sent to a shard that does not
// own the partition are answered NotOwner (retriable, naming the owner), and nothing is
// appended. Method: send both to the other shard's endpoint; check the owner's log end.
#[test]
fn wrong_shard_answers_not_owner() {
    run(async {
        let admin = Client::connect(broker().endpoints[0]).await;
        admin.create_topic("not-owner", 1, &[]).await;
        let owner = admin.owners("not-owner").await[0];
        let wrong = Client::connect(other_endpoint(owner)).await;
        let answer = wrong.produce("not-owner", 0, 1, batch(&["x"])).await;
        let message = assert_error(&answer, ErrorCode::NotOwner);
        assert!(message.contains(&owner.to_string()), "{message}");
        assert!(ErrorCode::NotOwner.is_retriable());
        let request = Request::Fetch {
            topic: "not-owner".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1024,
            max_wait_ms: 0,
        };
        assert_error(&wrong.call(&request).await.0, ErrorCode::NotOwner);
        // Non-data requests are answered by any shard (forwarded to the owner).
        assert_eq!(wrong.latest("not-owner", 0).await, 0);
    });
}

// Goal: requests for topics or partitions that do not exist get UnknownTopicOrPartition, and
// an invalid topic name in a metadata request gets InvalidTopic. Method: produce, fetch,
// list offsets and describe on a missing topic and a missing partition of an existing topic.
#[test]
fn unknown_topic_or_partition() {
    run(async {
        let client = Client::connect(broker().endpoints[0]).await;
        client.create_topic("one-partition", 1, &[]).await;
        for (topic, partition) in [("no-such-topic", 0), ("one-partition", 7)] {
            let answer = client.produce(topic, partition, 1, batch(&["x"])).await;
            assert_error(&answer, ErrorCode::UnknownTopicOrPartition);
            let request = Request::Fetch {
                topic: topic.into(),
                partition,
                offset: 0,
                max_bytes: 1024,
                max_wait_ms: 0,
            };
            assert_error(
                &client.call(&request).await.0,
                ErrorCode::UnknownTopicOrPartition,
            );
            let request = Request::ListOffset {
                topic: topic.into(),
                partition,
                query: OffsetQuery::Earliest,
            };
            assert_error(
                &client.call(&request).await.0,
                ErrorCode::UnknownTopicOrPartition,
            );
        }
        let request = Request::DescribeTopic {
            name: "no-such-topic".into(),
        };
        assert_error(
            &client.call(&request).await.0,
            ErrorCode::UnknownTopicOrPartition,
        );
        let request = Request::Metadata {
            topics: Some(vec!["bad/name".into()]),
        };
        assert_error(&client.call(&request).await.0, ErrorCode::InvalidTopic);
    });
}

// Goal: with auto-create on (the default), a metadata request naming a missing topic creates
// it with the default partition count, as the Kafka listener does. Method: ask for a new
// topic's metadata, then produce to it.
#[test]
fn metadata_auto_creates_topics() {
    run(async {
        let client = Client::connect(broker().endpoints[0]).await;
        let owners = client.owners("auto-created").await;
        assert_eq!(owners.len(), 1, "default_partitions is 1");
        let owner = Client::connect(owners[0]).await;
        let answer = owner.produce("auto-created", 0, 1, batch(&["x"])).await;
        assert!(matches!(answer, Response::Produced { .. }), "{answer:?}");
    });
}

// Goal: a batch over the topic's max.message.bytes is refused with MessageTooLarge and a
// batch with a corrupt CRC with CorruptMessage; neither appends anything, and the partition
// keeps working. Method: a topic with max.message.bytes=1000; produce 2000 bytes of values,
// then a batch with one flipped byte in its records, then a good batch at offset 0.
#[test]
fn oversized_and_corrupt_batches_are_refused() {
    run(async {
        let admin = Client::connect(broker().endpoints[0]).await;
        admin
            .create_topic("bad-batches", 1, &[("max.message.bytes", "1000")])
            .await;
        let owner = Client::connect(admin.owners("bad-batches").await[0]).await;
        let big = "v".repeat(2000);
        let answer = owner.produce("bad-batches", 0, 1, batch(&[&big])).await;
        assert_error(&answer, ErrorCode::MessageTooLarge);

        let good = batch(&["one", "two"]);
        let mut corrupt = BytesMut::from(&good[..]);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0x01;
        let answer = owner.produce("bad-batches", 0, 1, corrupt.freeze()).await;
        let message = assert_error(&answer, ErrorCode::CorruptMessage);
        assert!(message.to_lowercase().contains("crc"), "{message}");

        // A good batch followed by a corrupt one in one request: all or nothing.
        let mut mixed = BytesMut::from(&good[..]);
        let mut bad = BytesMut::from(&good[..]);
        bad[last] ^= 0x01;
        mixed.extend_from_slice(&bad);
        let answer = owner.produce("bad-batches", 0, 1, mixed.freeze()).await;
        assert_error(&answer, ErrorCode::CorruptMessage);
        assert_eq!(owner.latest("bad-batches", 0).await, 0, "nothing appended");

        let answer = owner.produce("bad-batches", 0, 1, good).await;
        assert!(
            matches!(answer, Response::Produced { base_offset: 0, .. }),
            "{answer:?}"
        );
    });
}

// Goal: a long-polling fetch answers as soon as a produce brings data, with that data, rather
// than at its max wait. Method: a fetch at the end of an empty partition asking to wait 30 s
// (the cap) is sent first; once the server has received it (its stream is acknowledged) and a
// later request on the same connection has been answered, so the fetch is already waiting, a
// second client produces. Had the wait not been woken, the answer would come after 30 s
// with no data, and the payload assertion would fail.
#[test]
fn long_poll_fetch_is_woken_by_produce() {
    run(async {
        let admin = Client::connect(broker().endpoints[0]).await;
        admin.create_topic("long-poll", 1, &[]).await;
        let owner = admin.owners("long-poll").await[0];
        let consumer = Client::connect(owner).await;
        let (mut send, mut recv) = consumer.connection.open_bi().await.expect("stream");
        let request = Request::Fetch {
            topic: "long-poll".into(),
            partition: 0,
            offset: 0,
            max_bytes: 1 << 20,
            max_wait_ms: 30_000,
        };
        write_frame(&mut send, &request, Bytes::new())
            .await
            .expect("send fetch");
        let _ = send.stopped().await;
        assert_eq!(consumer.latest("long-poll", 0).await, 0);

        let producer = Client::connect(owner).await;
        let data = batch(&["wake up"]);
        let answer = producer.produce("long-poll", 0, 1, data.clone()).await;
        assert!(matches!(answer, Response::Produced { .. }), "{answer:?}");
        let answer = read_frame::<Response>(&mut recv)
            .await
            .expect("fetch answer");
        assert_eq!(
            answer.header,
            Response::Fetched {
                high_watermark: 1,
                log_start_offset: 0
            }
        );
        assert!(answer.payload == stored(&data, 0), "the produced batch");
    });
}

// Goal: describe shows each partition's owner and offsets, and the topic's configs with the
// overrides marked; DeleteRecords moves the log start, AlterConfig and CreatePartitions take
// effect. Method: produce 3 records to one partition of a two-partition topic, describe, then
// delete records before offset 2, alter a config, grow to 3 partitions and describe again.
#[test]
fn describe_and_admin_requests() {
    run(async {
        let admin = Client::connect(broker().endpoints[0]).await;
        admin
            .create_topic("described", 2, &[("retention.ms", "60000")])
            .await;
        let owners = admin.owners("described").await;
        let owner = Client::connect(owners[1]).await;
        let answer = owner
            .produce("described", 1, 1, batch(&["a", "b", "c"]))
            .await;
        assert!(matches!(answer, Response::Produced { .. }), "{answer:?}");
        let describe = || async {
            let request = Request::DescribeTopic {
                name: "described".into(),
            };
            match admin.call(&request).await.0 {
                Response::Topic { topic } => topic,
                other => panic!("describe: {other:?}"),
            }
        };
        let topic = describe().await;
        assert_eq!(topic.partitions.len(), 2);
        let p1 = &topic.partitions[1];
        assert_eq!(
            (p1.log_start_offset, p1.log_end_offset, p1.high_watermark),
            (0, 3, 3)
        );
        assert!(p1.size_bytes > 0);
        assert_eq!(topic.partitions[0].log_end_offset, 0);
        let retention = topic
            .configs
            .iter()
            .find(|(k, _, _)| k == "retention.ms")
            .expect("retention.ms described");
        assert_eq!(
            retention,
            &("retention.ms".to_owned(), "60000".to_owned(), true)
        );
        assert!(
            topic
                .configs
                .iter()
                .any(|(k, _, is_override)| k == "max.message.bytes" && !is_override)
        );

        let request = Request::DeleteRecords {
            topic: "described".into(),
            partition: 1,
            before: 2,
        };
        assert_eq!(admin.call(&request).await.0, Response::Done { value: 2 });
        let request = Request::AlterConfig {
            name: "described".into(),
            changes: vec![
                ("retention.ms".into(), None),
                ("segment.ms".into(), Some("3600000".into())),
            ],
        };
        assert_eq!(admin.call(&request).await.0, Response::Done { value: 0 });
        let request = Request::AlterConfig {
            name: "described".into(),
            changes: vec![("no.such.key".into(), Some("1".into()))],
        };
        assert_error(&admin.call(&request).await.0, ErrorCode::InvalidConfig);
        let request = Request::CreatePartitions {
            name: "described".into(),
            total: 3,
        };
        assert_eq!(admin.call(&request).await.0, Response::Done { value: 0 });

        let topic = describe().await;
        assert_eq!(topic.partitions.len(), 3);
        assert_eq!(topic.partitions[1].log_start_offset, 2);
        let override_of = |key: &str| {
            topic
                .configs
                .iter()
                .find(|(k, _, _)| k == key)
                .map(|(_, v, o)| (v.clone(), *o))
        };
        assert_eq!(override_of("segment.ms"), Some(("3600000".into(), true)));
        assert_eq!(override_of("retention.ms").map(|(_, o)| o), Some(false));

        let request = Request::CreateTopic {
            name: "described".into(),
            partitions: 1,
            replication: 1,
            configs: Vec::new(),
        };
        assert_error(&admin.call(&request).await.0, ErrorCode::TopicExists);
        let request = Request::DeleteTopic {
            name: "described".into(),
        };
        assert_eq!(admin.call(&request).await.0, Response::Done { value: 0 });
        let request = Request::DescribeTopic {
            name: "described".into(),
        };
        assert_error(
            &admin.call(&request).await.0,
            ErrorCode::UnknownTopicOrPartition,
        );
    });
}

// Goal: bad input on one stream fails that request only: a frame with a bad magic, a frame cut
// short, a frame with a bad CRC and a request header that fails validation each get an error
// answer, and the same connection and another client keep working. Method: raw bytes on
// streams of one connection, then a metadata request on it and on a second connection.
#[test]
fn malformed_frames_fail_only_their_request() {
    run(async {
        let endpoint = broker().endpoints[1];
        let client = Client::connect(endpoint).await;
        let bystander = Client::connect(endpoint).await;

        let answer = client
            .call_raw(b"GET / HTTP/1.1\r\nHost: sluice\r\n\r\n")
            .await
            .expect("an answer");
        assert_error(&answer, ErrorCode::InvalidRequest);

        let whole = frame::encode(&Request::Metadata { topics: None }, b"").expect("encode");
        let answer = client
            .call_raw(&whole[..whole.len() - 3])
            .await
            .expect("an answer");
        let message = assert_error(&answer, ErrorCode::InvalidRequest);
        assert!(message.contains("ended"), "{message}");

        let mut flipped = whole.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let answer = client.call_raw(&flipped).await.expect("an answer");
        assert_error(&answer, ErrorCode::CorruptMessage);

        // A well-formed prefix and CRC around a header that is not a valid request.
        let garbage = [0xa5u8; 32];
        let mut prefix = frame::Prefix {
            version: PROTOCOL_VERSION,
            flags: 0,
            header_bytes: garbage.len() as u32,
            payload_bytes: 0,
            crc32c: 0,
        };
        prefix.crc32c = frame::frame_crc(&prefix, &garbage, &[b""]);
        let mut invalid = prefix.to_bytes().to_vec();
        invalid.extend_from_slice(&garbage);
        let answer = client.call_raw(&invalid).await.expect("an answer");
        assert_error(&answer, ErrorCode::InvalidRequest);

        // A payload on a request that carries none.
        let answer = client
            .call_with(
                &Request::Metadata { topics: None },
                Bytes::from_static(b"x"),
            )
            .await
            .0;
        assert_error(&answer, ErrorCode::InvalidRequest);

        for survivor in [&client, &bystander] {
            let (answer, _) = survivor.call(&Request::Metadata { topics: None }).await;
            assert!(matches!(answer, Response::Metadata { .. }), "{answer:?}");
        }
    });
}

// Goal: a frame of a protocol version the server does not read is answered with a
// version-rejection frame, which the client reads as UnsupportedVersion; the connection keeps
// working. Method: relabel a valid frame with the next version.
#[test]
fn future_version_is_rejected() {
    run(async {
        let client = Client::connect(broker().endpoints[0]).await;
        let mut future = frame::encode(&Request::Metadata { topics: None }, b"")
            .expect("encode")
            .to_vec();
        future[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
        match client.call_raw(&future).await {
            Err(ReadFrameError::Frame(error @ FrameError::Rejected { .. })) => {
                assert_eq!(error.error_code(), ErrorCode::UnsupportedVersion);
                let expected = format!("unsupported protocol version {}", PROTOCOL_VERSION + 1);
                assert!(error.to_string().contains(&expected), "{error}");
            }
            other => panic!("expected a version rejection, got {other:?}"),
        }
        let (answer, _) = client.call(&Request::Metadata { topics: None }).await;
        assert!(matches!(answer, Response::Metadata { .. }), "{answer:?}");
    });
}

// Goal: the per-connection byte budget. A frame larger than the whole budget is refused with
// MessageTooLarge; frames that do not fit while another holds the budget wait and then
// succeed; beyond NATIVE_BUDGET_WAITERS_MAX waiting streams, one more is refused with
// Overloaded instead of waiting. Method: a one-shard broker with a 64 KiB budget. A "holder"
// stream sends the prefix and part of a 40 KiB produce and stalls, holding 40 KiB; a metadata
// round trip on the same connection makes sure the server has reserved it. Then
// NATIVE_BUDGET_WAITERS_MAX + 1 more 40 KiB produces are sent: exactly one is refused with
// Overloaded, and the others complete once the holder finishes its frame.
#[test]
fn connection_budget_waits_and_refuses() {
    let broker = TestBroker::start(Options {
        shards: 1,
        auto_create_topics: false,
        connection_buffer_bytes: Some(64 << 10),
    });
    run(async {
        let client = Client::connect(broker.endpoints[0]).await;
        client.create_topic("budget", 1, &[]).await;
        let value = "v".repeat(40 << 10);
        let big = batch(&[&value]);
        let request = Request::Produce {
            topic: "budget".into(),
            partition: 0,
            acks: 1,
            sequence: None,
        };

        let huge = batch(&[&"h".repeat(100 << 10)]);
        let answer = client.produce("budget", 0, 1, huge).await;
        let message = assert_error(&answer, ErrorCode::MessageTooLarge);
        assert!(message.contains("budget"), "{message}");

        let whole = frame::encode(&request, &big).expect("encode");
        let (mut holder_send, mut holder_recv) = client.connection.open_bi().await.expect("stream");
        let split = whole.len() / 2;
        holder_send
            .write_all(&whole[..split])
            .await
            .expect("first half");
        let (answer, _) = client.call(&Request::Metadata { topics: None }).await;
        assert!(matches!(answer, Response::Metadata { .. }), "{answer:?}");

        let waiters = sluice_net::limits::NATIVE_BUDGET_WAITERS_MAX;
        let mut contenders: FuturesUnordered<_> = (0..=waiters)
            .map(|_| client.produce("budget", 0, 1, big.clone()))
            .collect();
        // While the holder holds its 40 KiB, no contender fits: the only one that can be
        // answered is the one refused for lack of a waiting slot.
        let first = contenders.next().await.expect("a contender");
        let message = assert_error(&first, ErrorCode::Overloaded);
        assert!(message.contains("wait"), "{message}");
        let finish_holder = async {
            holder_send
                .write_all(&whole[split..])
                .await
                .expect("second half");
            holder_send.finish().expect("finish");
            read_frame::<Response>(&mut holder_recv)
                .await
                .expect("holder answer")
                .header
        };
        let (answers, holder) = futures::join!(contenders.collect::<Vec<_>>(), finish_holder);
        assert!(matches!(holder, Response::Produced { .. }), "{holder:?}");
        assert_eq!(answers.len(), waiters);
        for answer in &answers {
            assert!(matches!(answer, Response::Produced { .. }), "{answers:?}");
        }
        assert_eq!(client.latest("budget", 0).await, 1 + waiters as i64);
    });
    broker.stop();
}

// Goal: with auto-create off, a metadata request naming a missing topic fails with
// UnknownTopicOrPartition and creates nothing. Method: a broker with auto_create_topics off.
#[test]
fn metadata_without_auto_create() {
    let broker = TestBroker::start(Options {
        shards: 1,
        auto_create_topics: false,
        connection_buffer_bytes: None,
    });
    run(async {
        let client = Client::connect(broker.endpoints[0]).await;
        let request = Request::Metadata {
            topics: Some(vec!["missing".into()]),
        };
        let message = assert_error(
            &client.call(&request).await.0,
            ErrorCode::UnknownTopicOrPartition,
        );
        assert!(message.contains("missing"), "{message}");
        match client.call(&Request::Metadata { topics: None }).await.0 {
            Response::Metadata {
                topics, brokers, ..
            } => {
                assert!(topics.is_empty(), "{topics:?}");
                assert_eq!(brokers.len(), 1);
                assert_eq!(brokers[0].shards, vec![broker.endpoints[0].to_string()]);
            }
            other => panic!("{other:?}"),
        }
    });
    broker.stop();
}

// Goal: graceful shutdown. When the broker stops, a long-polling fetch answers at once with
// what there is (not after its wait), the connection is then closed with CLOSE_SHUTTING_DOWN,
// and the shard shuts down. Method: a one-shard broker; a fetch waiting 30 s, then stop();
// the fetch answer must be an empty Fetched and the connection's close reason the
// shutting-down code.
#[test]
fn shutdown_drains_and_closes() {
    let broker = TestBroker::start(Options {
        shards: 1,
        auto_create_topics: true,
        connection_buffer_bytes: None,
    });
    let endpoint = broker.endpoints[0];
    let (ready_sender, ready) = std::sync::mpsc::channel();
    let client_thread = std::thread::spawn(move || {
        run(async move {
            let client = Client::connect(endpoint).await;
            client.create_topic("draining", 1, &[]).await;
            let (mut send, mut recv) = client.connection.open_bi().await.expect("stream");
            let request = Request::Fetch {
                topic: "draining".into(),
                partition: 0,
                offset: 0,
                max_bytes: 1024,
                max_wait_ms: 30_000,
            };
            write_frame(&mut send, &request, Bytes::new())
                .await
                .expect("send fetch");
            let _ = send.stopped().await;
            assert_eq!(client.latest("draining", 0).await, 0);
            ready_sender.send(()).expect("test thread waits");
            let answer = read_frame::<Response>(&mut recv)
                .await
                .expect("fetch answer");
            let closed = client.connection.closed().await;
            (answer.header, answer.payload, closed)
        })
    });
    ready
        .recv_timeout(Duration::from_secs(60))
        .expect("fetch in flight");
    broker.stop();
    let (header, payload, closed) = client_thread.join().expect("client thread");
    assert_eq!(
        header,
        Response::Fetched {
            high_watermark: 0,
            log_start_offset: 0
        }
    );
    assert!(payload.is_empty());
    match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(CLOSE_SHUTTING_DOWN)
            );
            assert_eq!(&close.reason[..], b"broker shutting down");
        }
        other => panic!("expected an application close, got {other:?}"),
    }
}
