//! The replication drivers over real engine logs: a leader partition served by
//! `serve_replica_fetch` and two follower shards driven by `Fetcher`, joined by the in-memory
//! transport, all on one shard runtime thread.

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use sluice_cluster::metadata::PartitionEpoch;
use sluice_cluster::peer::{PeerCall, PeerError, PeerRequest, PeerResponse, PeerTransport};
use sluice_cluster::replication::{
    FetchTarget, Fetcher, FollowerCore, InMemoryTransport, LeaderAction, LeaderCore,
    LeaderPositions, LeaderReplica, LeaderShard, PartitionState, ProduceId,
    ReplicaFetchPartitionResponse, ReplicaFetchRequest, ReplicaFetchResponse,
    ReplicaFetchTransport, ReplicationConfig, ReplicationSettings, ShardReplication,
    TransportError, wire,
};
use sluice_engine::batch::builder::{SimpleRecord, build_batch};
use sluice_engine::batch::{BatchHeader, Compression};
use sluice_engine::log::{BatchCache, Durability, LogConfig, PartitionLog, partition_dir};
use sluice_engine::rt::block_on;
use sluice_engine::{BrokerId, LeaderEpoch, Offset, ShardId, TimestampMs, TopicPartition};

fn batch(seed: u64) -> bytes::Bytes {
    let records: Vec<SimpleRecord> = (0..2)
        .map(|i| SimpleRecord {
            key: Some(format!("k{seed}-{i}").into_bytes()),
            value: Some(vec![seed as u8; 300]),
            headers: Vec::new(),
            timestamp: TimestampMs(0),
        })
        .collect();
    build_batch(&records, Compression::None).unwrap()
}

async fn open(data: &std::path::Path, broker: i32, tp: &TopicPartition) -> Rc<PartitionLog> {
    let config = LogConfig {
        segment_bytes: 8 << 10,
        preallocate_bytes: 64 << 10,
        ..LogConfig::default()
    };
    let dir = partition_dir(&data.join(format!("broker-{broker}")), tp);
    let cache = Rc::new(BatchCache::new(4 << 20));
    let (log, _) = PartitionLog::open(dir, tp.clone(), config, cache)
        .await
        .unwrap();
    Rc::new(log)
}

async fn read_all(log: &PartitionLog) -> Vec<bytes::Bytes> {
    let end = log.log_end_offset();
    let mut next = Offset(0);
    let mut out = Vec::new();
    for _ in 0..1_000 {
        if next >= end {
            break;
        }
        let slice = log.read(next, 1 << 20, end).await.unwrap();
        next = slice.next_offset;
        out.extend(slice.batches);
    }
    out
}

/// The leader state of `tp` on `log` as `state` says, with the log as it is now.
fn leader_replica(
    tp: &TopicPartition,
    log: &Rc<PartitionLog>,
    state: &PartitionState,
    config: ReplicationConfig,
) -> Rc<LeaderReplica> {
    let positions = LeaderPositions {
        next_offset: log.next_offset(),
        durable_end: log.log_end_offset(),
        high_watermark: log.high_watermark(),
    };
    let now = sluice_engine::rt::clock::now();
    let core = LeaderCore::new(tp.clone(), state.leader, state, positions, config, now);
    Rc::new(LeaderReplica {
        core: RefCell::new(core),
        log: log.clone(),
    })
}

/// A transport whose leader actions a test takes.
trait QueuedActions {
    fn take(&self) -> Vec<(TopicPartition, LeaderAction)>;
}

impl QueuedActions for InMemoryTransport {
    fn take(&self) -> Vec<(TopicPartition, LeaderAction)> {
        self.take_actions()
    }
}

/// Runs fetch rounds of every fetcher until `settled` holds, handing the leader actions the
/// rounds queued to `on_action`; panics if it does not hold within 200 rounds and 20 s.
async fn run_until<T: ReplicaFetchTransport + QueuedActions>(
    fetchers: &[Fetcher<T>],
    mut on_action: impl FnMut(LeaderAction),
    settled: impl Fn() -> bool,
) {
    let deadline = sluice_engine::rt::clock::now() + Duration::from_secs(20);
    for _ in 0..200 {
        let mut progressed = 0;
        for fetcher in fetchers {
            progressed += fetcher.run_round().await;
            for (_, action) in fetcher.transport().take() {
                on_action(action);
            }
        }
        if settled() {
            return;
        }
        assert!(
            sluice_engine::rt::clock::now() < deadline,
            "replication stalled"
        );
        if progressed == 0 {
            // Let a back-off pass (1 ms) before the next round.
            sluice_engine::rt::sleep(Duration::from_millis(2)).await;
        }
    }
    panic!("replication did not settle in 200 rounds");
}

// Goal: followers driven by the fetcher end with logs byte-identical to the leader's (offsets
// and epochs kept), the leader's high watermark reaches its log end and releases every acks=all
// produce, follower high watermarks follow, a transport failure is retried, and a follower whose
// log holds a batch of an older epoch that the leader never had truncates it (diverging epoch)
// and converges.
// Method: three real logs in one process; the leader appends ten batches in epoch 1; follower 3
// starts with one stray epoch-0 batch; fetch rounds run until the high watermark settles
// (bounded to 200 rounds and 20 s).
#[test]
fn fetchers_replicate_real_logs() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = TopicPartition::new("replicated", 0);
        let leader_log = open(dir.path(), 1, &tp).await;
        let log2 = open(dir.path(), 2, &tp).await;
        let log3 = open(dir.path(), 3, &tp).await;
        log3.append(batch(99), LeaderEpoch(0), Durability::Synced)
            .await
            .unwrap();

        let state = PartitionState {
            leader: BrokerId(1),
            leader_epoch: LeaderEpoch(1),
            partition_epoch: PartitionEpoch(0),
            replicas: vec![BrokerId(1), BrokerId(2), BrokerId(3)],
            isr: vec![BrokerId(1), BrokerId(2), BrokerId(3)],
        };
        let config = ReplicationConfig {
            min_insync_replicas: 2,
            ..ReplicationConfig::default()
        };
        let mut shard = LeaderShard::new();
        shard.insert(tp.clone(), leader_replica(&tp, &leader_log, &state, config));
        let shard = Rc::new(shard);
        for i in 0..10u64 {
            let info = leader_log
                .append(batch(i), LeaderEpoch(1), Durability::Synced)
                .await
                .unwrap();
            let replica = &shard[&tp];
            let mut core = replica.core.borrow_mut();
            core.wait_for_replication(ProduceId(i), info.last_offset);
            for action in core.on_local_end(leader_log.log_end_offset()) {
                if let LeaderAction::HighWatermark(offset) = action {
                    leader_log.set_high_watermark(offset);
                }
            }
        }
        let end = leader_log.log_end_offset();
        assert_eq!(end, Offset(20));
        assert_eq!(
            leader_log.high_watermark(),
            Offset(0),
            "followers hold it back"
        );

        let target = FetchTarget {
            leader: BrokerId(1),
            shard: ShardId(0),
        };
        let mut fetchers = Vec::new();
        for (id, log) in [(2, &log2), (3, &log3)] {
            let transport = InMemoryTransport::default();
            transport.set_leader_shard(target, shard.clone());
            let fetcher = Fetcher::new(BrokerId(id), transport, 4 << 10, Duration::ZERO)
                .with_backoff(Duration::from_millis(1));
            let core = FollowerCore::new(
                tp.clone(),
                BrokerId(id),
                &state,
                &**log,
                log.high_watermark(),
            );
            fetcher.add(core, log.clone(), target);
            fetchers.push(fetcher);
        }
        fetchers[0].transport().fail_next(1);
        let mut completed: BTreeMap<ProduceId, bool> = BTreeMap::new();
        let on_action = |action| {
            if let LeaderAction::Complete { id, result } = action {
                completed.insert(id, result.is_ok());
            }
        };
        let settled = || {
            leader_log.high_watermark() == end
                && fetchers.iter().all(|f| f.high_watermark(&tp) == Some(end))
        };
        run_until(&fetchers, on_action, settled).await;
        assert_eq!(leader_log.high_watermark(), end);
        assert_eq!(completed.len(), 10, "every acks=all produce completed");
        assert!(completed.values().all(|ok| *ok));
        let expected = read_all(&leader_log).await;
        for (log, fetcher) in [(&log2, &fetchers[0]), (&log3, &fetchers[1])] {
            assert_eq!(
                read_all(log).await,
                expected,
                "follower log matches byte for byte"
            );
            assert_eq!(log.leader_epochs(), leader_log.leader_epochs());
            assert_eq!(log.high_watermark(), end);
            assert_eq!(fetcher.high_watermark(&tp), Some(end));
        }
        for stored in &expected {
            let header = BatchHeader::parse(stored, usize::MAX).unwrap();
            assert_eq!(header.leader_epoch, LeaderEpoch(1));
        }
        assert_eq!(fetchers[0].stats().transport_errors, 1);
        assert_eq!(
            fetchers[1].stats().truncations,
            1,
            "the stray epoch-0 batch was cut"
        );
        for log in [&leader_log, &log2, &log3] {
            log.close().await.unwrap();
        }
    });
}

// Goal: a replica that stops leading while its own appends are staged but not yet written
// follows the new leader without tripping over them: the new follower core fetches only once
// the log is idle, from the log as the appends left it, and converges on the leader's log
// (the stray record of the old epoch is truncated by the diverging epoch).
// Method: broker 1 leads epoch 2 with one epoch-1 batch (offsets 0..2) and one epoch-2 batch;
// broker 2 holds the epoch-1 batch, stages one more epoch-1 append (offsets 2..4, as the old
// leader), builds a follower core for epoch 2 before that append is written, then lets it
// complete and runs fetch rounds (bounded to 200 rounds and 20 s).
#[test]
fn follower_core_built_under_a_staged_append_refetches() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = TopicPartition::new("role-change", 0);
        let leader_log = open(dir.path(), 1, &tp).await;
        let log2 = open(dir.path(), 2, &tp).await;
        for log in [&leader_log, &log2] {
            log.append(batch(0), LeaderEpoch(1), Durability::Synced)
                .await
                .unwrap();
        }
        let state = PartitionState {
            leader: BrokerId(1),
            leader_epoch: LeaderEpoch(2),
            partition_epoch: PartitionEpoch(0),
            replicas: vec![BrokerId(1), BrokerId(2)],
            isr: vec![BrokerId(1), BrokerId(2)],
        };
        let leader = leader_replica(&tp, &leader_log, &state, ReplicationConfig::default());
        leader_log
            .append(batch(1), LeaderEpoch(2), Durability::Synced)
            .await
            .unwrap();
        let actions = leader
            .core
            .borrow_mut()
            .on_local_end(leader_log.log_end_offset());
        assert!(
            actions.is_empty(),
            "the follower holds the high watermark back"
        );
        let mut shard = LeaderShard::new();
        shard.insert(tp.clone(), leader);
        let target = FetchTarget {
            leader: BrokerId(1),
            shard: ShardId(0),
        };
        let transport = InMemoryTransport::default();
        transport.set_leader_shard(target, Rc::new(shard));
        let fetcher = Fetcher::new(BrokerId(2), transport, 4 << 10, Duration::ZERO)
            .with_backoff(Duration::from_millis(1));

        // The old leader's append: staged, not written when the new core is built.
        let staged = log2.append(batch(7), LeaderEpoch(1), Durability::Written);
        assert_eq!(log2.log_end_offset(), Offset(2));
        let core = FollowerCore::new(
            tp.clone(),
            BrokerId(2),
            &state,
            &*log2,
            log2.high_watermark(),
        );
        fetcher.add(core, log2.clone(), target);
        staged.await.unwrap();
        assert_eq!(
            log2.log_end_offset(),
            Offset(4),
            "the staged append completed"
        );

        let end = leader_log.log_end_offset();
        let fetchers = [fetcher];
        let settled = || fetchers[0].high_watermark(&tp) == Some(end);
        run_until(&fetchers, |_| {}, settled).await;
        let fetcher = &fetchers[0];
        assert_eq!(fetcher.high_watermark(&tp), Some(end));
        assert_eq!(
            fetcher.stats().truncations,
            1,
            "the stray epoch-1 record was cut"
        );
        assert_eq!(read_all(&log2).await, read_all(&leader_log).await);
        assert_eq!(log2.leader_epochs(), leader_log.leader_epochs());
        for log in [&leader_log, &log2] {
            log.close().await.unwrap();
        }
    });
}

/// The in-memory leader answering badly: its first answer names every partition twice, its
/// second names none, later ones are right.
#[derive(Default)]
struct UnrulyLeader {
    inner: InMemoryTransport,
    answers: Cell<u32>,
}

impl ReplicaFetchTransport for UnrulyLeader {
    async fn replica_fetch(
        &self,
        leader: BrokerId,
        shard: ShardId,
        request: ReplicaFetchRequest,
    ) -> Result<ReplicaFetchResponse, TransportError> {
        let mut response = self.inner.replica_fetch(leader, shard, request).await?;
        let answer = self.answers.get();
        self.answers.set(answer + 1);
        match answer {
            0 => response.partitions.extend(response.partitions.clone()),
            1 => response.partitions.clear(),
            _ => {}
        }
        Ok(response)
    }
}

impl QueuedActions for UnrulyLeader {
    fn take(&self) -> Vec<(TopicPartition, LeaderAction)> {
        self.inner.take_actions()
    }
}

// Goal: a leader that answers a partition twice, or leaves it out, neither crashes the follower
// nor stalls it: a repeated answer is ignored, a missing one is fetched again.
// Method: a follower fetches three batches, one per answer, through a transport whose first
// answer repeats the partition (its batches included) and whose second answer is empty; fetch
// rounds run until the follower's high watermark reaches the leader's end (bounded to 200
// rounds and 20 s).
#[test]
fn repeated_and_missing_answers_are_survived() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = TopicPartition::new("unruly", 0);
        let leader_log = open(dir.path(), 1, &tp).await;
        let log2 = open(dir.path(), 2, &tp).await;
        let state = PartitionState {
            leader: BrokerId(1),
            leader_epoch: LeaderEpoch(1),
            partition_epoch: PartitionEpoch(0),
            replicas: vec![BrokerId(1), BrokerId(2)],
            isr: vec![BrokerId(1)],
        };
        let leader = leader_replica(&tp, &leader_log, &state, ReplicationConfig::default());
        for i in 0..3 {
            leader_log
                .append(batch(i), LeaderEpoch(1), Durability::Synced)
                .await
                .unwrap();
        }
        let end = leader_log.log_end_offset();
        for action in leader.core.borrow_mut().on_local_end(end) {
            if let LeaderAction::HighWatermark(offset) = action {
                leader_log.set_high_watermark(offset);
            }
        }
        let mut shard = LeaderShard::new();
        shard.insert(tp.clone(), leader);
        let target = FetchTarget {
            leader: BrokerId(1),
            shard: ShardId(0),
        };
        let transport = UnrulyLeader::default();
        transport.inner.set_leader_shard(target, Rc::new(shard));
        let fetcher = Fetcher::new(BrokerId(2), transport, 1, Duration::ZERO)
            .with_backoff(Duration::from_millis(1));
        let core = FollowerCore::new(tp.clone(), BrokerId(2), &state, &*log2, Offset(0));
        fetcher.add(core, log2.clone(), target);
        let fetchers = [fetcher];
        let settled = || fetchers[0].high_watermark(&tp) == Some(end);
        run_until(&fetchers, |_| {}, settled).await;
        assert!(fetchers[0].transport().answers.get() > 2);
        assert_eq!(read_all(&log2).await, read_all(&leader_log).await);
        for log in [&leader_log, &log2] {
            log.close().await.unwrap();
        }
    });
}

/// Peer links whose replica fetches the test answers by hand.
#[derive(Default)]
struct ScriptedPeers {
    calls: RefCell<Vec<(PeerRequest, PeerReply)>>,
}

type PeerReply = futures::channel::oneshot::Sender<Result<PeerResponse, PeerError>>;

impl PeerTransport for ScriptedPeers {
    fn call(&self, _to: BrokerId, request: PeerRequest) -> PeerCall {
        let (reply, answer) = futures::channel::oneshot::channel();
        self.calls.borrow_mut().push((request, reply));
        answer
    }
    fn send(&self, _to: BrokerId, _request: PeerRequest) -> Result<(), PeerError> {
        Ok(())
    }
    fn set_address(&self, _peer: BrokerId, _cluster: std::net::SocketAddr) {}
}

/// Waits (bounded to 20 s) until `done` holds.
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = sluice_engine::rt::clock::now() + Duration::from_secs(20);
    while !done() {
        assert!(sluice_engine::rt::clock::now() < deadline, "{what}");
        sluice_engine::rt::sleep(Duration::from_millis(1)).await;
    }
}

// Goal: a replica elected leader while its follower truncation is still running neither
// builds its leader core on the log end the truncation is about to cut (its durable end would
// move backwards: an assert) nor serves before the truncation ended; it leads on the
// truncated log once it settled.
// Method: broker 2 holds four epoch-1 batches (offsets 0..8) and follows broker 1 in epoch 2
// through hand-answered peer links; the answer is a diverging epoch (1 ends at 2), and while
// the truncation to 2 is in flight broker 2 is made leader of epoch 3. Once the truncation
// ended, its local end (2) is reported; the leader core then starts its epoch at 2.
#[test]
fn leader_core_built_under_a_truncation_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = TopicPartition::new("truncating", 0);
        let log = open(dir.path(), 2, &tp).await;
        for i in 0..4 {
            log.append(batch(i), LeaderEpoch(1), Durability::Synced)
                .await
                .unwrap();
        }
        assert_eq!(log.log_end_offset(), Offset(8));
        let peers = Rc::new(ScriptedPeers::default());
        let settings = ReplicationSettings::with_lag(Duration::from_secs(30));
        let driver = ShardReplication::new(
            BrokerId(2),
            ShardId(0),
            peers.clone(),
            settings,
            Box::new(|_| {}),
        );
        driver.start();
        let follow = PartitionState {
            leader: BrokerId(1),
            leader_epoch: LeaderEpoch(2),
            partition_epoch: PartitionEpoch(0),
            replicas: vec![BrokerId(1), BrokerId(2)],
            isr: vec![BrokerId(1), BrokerId(2)],
        };
        driver.follow(&tp, &log, &follow);
        wait_until("no replica fetch sent", || !peers.calls.borrow().is_empty()).await;
        let (request, reply) = peers.calls.borrow_mut().pop().unwrap();
        let request = wire::decode_request(request.header).unwrap();
        assert_eq!(request.partitions[0].fetch_offset, Offset(8));
        let answer = ReplicaFetchResponse {
            partitions: vec![ReplicaFetchPartitionResponse {
                tp: tp.clone(),
                error: None,
                high_watermark: Offset(0),
                log_start_offset: Offset(0),
                log_end_offset: Offset(2),
                diverging_epoch: Some((LeaderEpoch(1), Offset(2))),
                batches: bytes::Bytes::new(),
            }],
        };
        let (header, payload) = wire::encode_response(&answer);
        reply.send(Ok(PeerResponse { header, payload })).unwrap();
        let mut truncating = false;
        for _ in 0..10_000 {
            if driver.log_busy(&tp) {
                truncating = true;
                break;
            }
            sluice_engine::rt::yield_now().await;
        }
        assert!(truncating, "the truncation was not seen in flight");

        let lead = PartitionState {
            leader: BrokerId(2),
            leader_epoch: LeaderEpoch(3),
            partition_epoch: PartitionEpoch(0),
            replicas: vec![BrokerId(1), BrokerId(2)],
            isr: vec![BrokerId(2)],
        };
        let visible = Rc::new(sluice_engine::util::Notify::new());
        let leader = driver.lead(&tp, &log, &visible, &lead, 1).unwrap();
        wait_until("the truncation did not end", || !driver.log_busy(&tp)).await;
        assert_eq!(log.log_end_offset(), Offset(2));
        driver.local_end_moved(&tp);
        wait_until("the leader never settled", || {
            !leader.core.borrow().is_log_pending()
        })
        .await;
        assert_eq!(leader.core.borrow().epoch_start(), Offset(2));
        let info = log
            .append(batch(9), LeaderEpoch(3), Durability::Synced)
            .await
            .unwrap();
        assert_eq!(info.base_offset, Offset(2));
        driver.local_end_moved(&tp);
        assert_eq!(
            log.high_watermark(),
            Offset(4),
            "a single-replica ISR commits"
        );
        driver.stop();
        log.close().await.unwrap();
    });
}
