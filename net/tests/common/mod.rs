//! In-process broker for the Kafka compatibility tests: a std thread runs
//! `sluice_engine::rt::shards::start` with two shards, each building a `Shard` on a temp data
//! dir and serving Kafka on 127.0.0.1 at a free port. One broker is shared by the tests of a
//! test binary (each test uses its own topics), which also shows that one client's bad input
//! leaves the broker serving the others.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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
