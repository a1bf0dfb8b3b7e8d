//! In-process broker for the Kafka compatibility tests: a std thread runs
//! `sluice_engine::rt::shards::start` with two shards, each building a `Shard` on a temp data
//! dir and serving Kafka on 127.0.0.1 at a free port. One broker is shared by the tests of a
//! test binary (each test uses its own topics), which also shows that one client's bad input
//! leaves the broker serving the others.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_cluster::metadata::{BrokerInfo, FileMetadataStore};
use sluice_cluster::shard::{Shard, ShardConfig, ShardMsg};
use sluice_engine::BrokerId;
use sluice_engine::rt::shards::{self, ShardContext, ShardsConfig};
use sluice_net::kafka::{KafkaConfig, serve_kafka};

/// A running broker. Lives for the whole test binary.
pub struct TestBroker {
    /// Kafka listener address.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Shards per test broker: two, so multi-partition requests cross shards.
pub const SHARDS: usize = 2;

/// The broker shared by this test binary, started on first use.
pub fn broker() -> &'static TestBroker {
    static BROKER: OnceLock<TestBroker> = OnceLock::new();
    BROKER.get_or_init(|| TestBroker::start(SHARDS))
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

impl TestBroker {
    /// Starts a broker with `count` shards and waits until its Kafka port accepts.
    pub fn start(count: usize) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp data dir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let (store, mut snapshot) =
            FileMetadataStore::open(&dir.path().join("__metadata")).expect("metadata store");
        let node = BrokerId(1);
        snapshot.controller = node;
        snapshot.brokers = vec![BrokerInfo {
            id: node,
            kafka: addr,
            quic: Vec::new(),
        }];
        let snapshot = Arc::new(snapshot);
        let store = Arc::new(Mutex::new(Some(store)));
        let data_dir = dir.path().to_path_buf();
        let config = ShardsConfig {
            count,
            cpus: Vec::new(),
            io_memory_bytes: sluice_engine::rt::env::IO_MEMORY_BYTES_DEFAULT,
            inbox_capacity: sluice_cluster::limits::SHARD_INBOX_CAPACITY,
            name: "kafka-test".into(),
        };
        let handle = shards::start(config, move |context: ShardContext<ShardMsg>| {
            let snapshot = Arc::clone(&snapshot);
            let data_dir = data_dir.clone();
            let store = if context.id.0 == 0 {
                store.lock().expect("start-up lock").take()
            } else {
                None
            };
            async move {
                let shard_config = ShardConfig {
                    node,
                    data_dir,
                    cache_bytes: 16 << 20,
                };
                let shard = Shard::start(context, shard_config, snapshot, store).await;
                serve_kafka(shard, KafkaConfig::new(addr))
                    .await
                    .expect("kafka listener serves");
            }
        })
        .expect("shards start");
        // The shards run until the test process exits.
        std::mem::forget(handle);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "broker did not start listening on {addr}"
            );
            std::thread::yield_now();
        }
        TestBroker { addr, _dir: dir }
    }

    /// `host:port` for client configs.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }
}

/// Polls `condition` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut condition: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::yield_now();
    }
}

/// A blocking Kafka connection for tests.
pub struct Raw {
    stream: TcpStream,
    correlation_id: i32,
}

impl Raw {
    pub fn connect() -> Raw {
        let stream = TcpStream::connect(broker().addr).expect("connect to broker");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        Raw {
            stream,
            correlation_id: 0,
        }
    }

    pub fn send_frame(&mut self, frame: &[u8]) {
        self.stream.write_all(frame).expect("send");
    }

    /// Sends a request and returns the decoded response.
    pub fn call(&mut self, version: i16, body: impl Into<RequestKind>) -> ResponseKind {
        let body = body.into();
        let api = api_of(&body);
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("raw-test")));
        let mut buf = BytesMut::new();
        buf.put_u32(0);
        header
            .encode(&mut buf, api.request_header_version(version))
            .expect("encode header");
        body.encode(&mut buf, version).expect("encode body");
        let size = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        self.send_frame(&buf);
        let mut frame = self
            .read_frame()
            .unwrap_or_else(|| panic!("no answer to {api:?} v{version}"));
        let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
            .expect("response header");
        assert_eq!(
            header.correlation_id, self.correlation_id,
            "{api:?} v{version}"
        );
        ResponseKind::decode(api, &mut frame, version)
            .unwrap_or_else(|e| panic!("{api:?} v{version} response does not decode: {e}"))
    }

    /// Reads one response frame; `None` if the broker closed the connection.
    pub fn read_frame(&mut self) -> Option<Bytes> {
        let mut size = [0u8; 4];
        if self.stream.read_exact(&mut size).is_err() {
            return None;
        }
        let mut frame = vec![0u8; u32::from_be_bytes(size) as usize];
        self.stream.read_exact(&mut frame).ok()?;
        Some(Bytes::from(frame))
    }

    /// True if the broker closes the connection without answering.
    pub fn closed_without_answer(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}

fn api_of(body: &RequestKind) -> ApiKey {
    match body {
        RequestKind::ApiVersions(_) => ApiKey::ApiVersions,
        RequestKind::Metadata(_) => ApiKey::Metadata,
        RequestKind::Produce(_) => ApiKey::Produce,
        RequestKind::Fetch(_) => ApiKey::Fetch,
        RequestKind::ListOffsets(_) => ApiKey::ListOffsets,
        RequestKind::CreateTopics(_) => ApiKey::CreateTopics,
        RequestKind::DeleteTopics(_) => ApiKey::DeleteTopics,
        RequestKind::CreatePartitions(_) => ApiKey::CreatePartitions,
        RequestKind::DescribeConfigs(_) => ApiKey::DescribeConfigs,
        RequestKind::AlterConfigs(_) => ApiKey::AlterConfigs,
        RequestKind::IncrementalAlterConfigs(_) => ApiKey::IncrementalAlterConfigs,
        RequestKind::DeleteRecords(_) => ApiKey::DeleteRecords,
        RequestKind::OffsetForLeaderEpoch(_) => ApiKey::OffsetForLeaderEpoch,
        RequestKind::DescribeCluster(_) => ApiKey::DescribeCluster,
        RequestKind::FindCoordinator(_) => ApiKey::FindCoordinator,
        other => panic!("test does not send {other:?}"),
    }
}
