//! In-process broker for the Kafka compatibility tests: a std thread runs
//! `sluice_engine::rt::shards::start` with two shards, each building a `Shard` (with its group
//! coordinators) on a temp data dir and serving Kafka on 127.0.0.1 at a free port, and admin
//! HTTP on shard 0. [`RunningBroker`] is a broker that can be stopped and restarted. One broker
//! is shared by the tests of a
//! test binary (each test uses its own topics), which also shows that one client's bad input
//! leaves the broker serving the others.

#![allow(dead_code)]

mod kafka_raw;

pub use kafka_raw::Raw;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kafka_protocol::messages::ResponseKind;
use kafka_protocol::protocol::StrBytes;
use sluice_cluster::group::{GroupConfig, ensure_offsets_topic};
use sluice_cluster::metadata::{BrokerInfo, FileMetadataStore, PlacementContext};
use sluice_cluster::shard::{Shard, ShardConfig, ShardMsg};
use sluice_engine::BrokerId;
use sluice_engine::rt::shards::{self, ShardContext, ShardsConfig};
use sluice_net::kafka::{KafkaConfig, serve_kafka_until};

/// A running broker. Lives for the whole test binary.
pub struct TestBroker {
    /// Kafka listener address.
    pub addr: SocketAddr,
    /// Admin HTTP address (`/metrics`).
    pub admin: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Shards per test broker: two, so multi-partition requests cross shards.
pub const SHARDS: usize = 2;

/// The broker shared by this test binary, started on first use.
pub fn broker() -> &'static TestBroker {
    static BROKER: OnceLock<TestBroker> = OnceLock::new();
    BROKER.get_or_init(|| TestBroker::start(SHARDS))
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Group settings for tests: short sessions are allowed and a new group waits briefly for
/// its members, so tests run in seconds.
pub fn test_group_config() -> GroupConfig {
    GroupConfig {
        offsets_topic_partitions: 4,
        session_timeout_min: Duration::from_millis(500),
        initial_rebalance_delay: Duration::from_millis(500),
        ..GroupConfig::default()
    }
}

/// A broker on a data directory the caller keeps, which can be stopped and started again on
/// the same directory and ports.
pub struct RunningBroker {
    /// Kafka listener address.
    pub addr: SocketAddr,
    /// Admin HTTP address.
    pub admin: SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<shards::ShardsHandle>,
}

impl RunningBroker {
    /// Starts `count` shards on `dir`, serving Kafka on `addr` and admin HTTP on `admin`, and
    /// waits until the Kafka port accepts.
    pub fn start(
        dir: &Path,
        addr: SocketAddr,
        admin: SocketAddr,
        count: usize,
        groups: GroupConfig,
    ) -> RunningBroker {
        let (store, mut snapshot) =
            FileMetadataStore::open(&dir.join("__metadata")).expect("metadata store");
        let node = BrokerId(1);
        let context = PlacementContext {
            node,
            shard_count: count,
        };
        ensure_offsets_topic(&store, &mut snapshot, context, &groups).expect("offsets topic");
        snapshot.controller = node;
        snapshot.brokers = vec![BrokerInfo {
            id: node,
            kafka: addr,
            quic: Vec::new(),
        }];
        let snapshot = Arc::new(snapshot);
        let store = Arc::new(Mutex::new(Some(store)));
        let data_dir = dir.to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let config = ShardsConfig {
            count,
            cpus: Vec::new(),
            io_memory_bytes: sluice_engine::rt::env::IO_MEMORY_BYTES_DEFAULT,
            inbox_capacity: sluice_cluster::limits::SHARD_INBOX_CAPACITY,
            name: "kafka-test".into(),
            idle_poll: std::time::Duration::ZERO,
        };
        let handle = shards::start(config, move |context: ShardContext<ShardMsg>| {
            let snapshot = Arc::clone(&snapshot);
            let data_dir = data_dir.clone();
            let groups = groups.clone();
            let stop = Arc::clone(&stop_flag);
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
                    replication: sluice_cluster::replication::ReplicationSettings::with_lag(
                        std::time::Duration::from_secs(30),
                    ),
                };
                let shard = Shard::start(context, shard_config, snapshot, store, None).await;
                shard.start_groups(groups);
                let admin_task = (shard.id().0 == 0).then(|| {
                    sluice_engine::rt::spawn(sluice_net::admin::serve(Rc::clone(&shard), admin))
                });
                let stopped = async {
                    // Polled: the test thread cannot wake an executor directly.
                    while !stop.load(Ordering::Relaxed) {
                        sluice_engine::rt::sleep(Duration::from_millis(10)).await;
                    }
                };
                serve_kafka_until(Rc::clone(&shard), KafkaConfig::new(addr), stopped)
                    .await
                    .expect("kafka listener serves");
                drop(admin_task);
                shard.shutdown().await;
            }
        })
        .expect("shards start");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "broker did not start listening on {addr}"
            );
            std::thread::yield_now();
        }
        wait_groups_ready(addr);
        RunningBroker {
            addr,
            admin,
            stop,
            handle: Some(handle),
        }
    }

    /// Stops every shard (partitions flushed and closed) and waits for them.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            handle.join().expect("shards stop cleanly");
        }
    }

    /// `host:port` for client configs.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }
}

impl TestBroker {
    /// Starts a broker with `count` shards and waits until its Kafka port accepts.
    pub fn start(count: usize) -> TestBroker {
        let dir = tempfile::tempdir().expect("temp data dir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let running = RunningBroker::start(dir.path(), addr, admin, count, test_group_config());
        // The shards run until the test process exits.
        std::mem::forget(running);
        TestBroker {
            addr,
            admin,
            _dir: dir,
        }
    }

    /// `host:port` for client configs.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }
}

/// Waits until every shard's group coordinators have loaded: offset fetches for enough group
/// ids to hit every offsets partition answer without COORDINATOR_NOT_AVAILABLE or
/// COORDINATOR_LOAD_IN_PROGRESS (shards start, and load, independently).
fn wait_groups_ready(addr: SocketAddr) {
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequest, OffsetFetchRequestGroup,
    };
    let mut raw = Raw::connect_to(addr);
    let deadline = Instant::now() + Duration::from_secs(30);
    for i in 0..64 {
        let group = kafka_protocol::messages::GroupId(StrBytes::from_string(format!("ready-{i}")));
        loop {
            let request = OffsetFetchRequest::default().with_groups(vec![
                OffsetFetchRequestGroup::default()
                    .with_group_id(group.clone())
                    .with_topics(None),
            ]);
            let ResponseKind::OffsetFetch(r) = raw.call(9, request) else {
                panic!("offset fetch answered with another kind")
            };
            if r.groups[0].error_code == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "group coordinators never loaded");
            std::thread::yield_now();
        }
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

impl Raw {
    /// A connection to the shared test broker.
    pub fn connect() -> Raw {
        Raw::connect_to(broker().addr)
    }
}

/// A second, well-behaved client of the shared test broker still gets answers.
pub fn assert_broker_serves() {
    let mut raw = Raw::connect();
    let request = kafka_protocol::messages::ApiVersionsRequest::default();
    let ResponseKind::ApiVersions(r) = raw.call(3, request) else {
        panic!("kind")
    };
    assert_eq!(r.error_code, 0);
}
