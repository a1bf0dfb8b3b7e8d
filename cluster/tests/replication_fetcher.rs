//! The replication drivers over real engine logs: a leader partition served by
//! `serve_replica_fetch` and two follower shards driven by `Fetcher`, joined by the in-memory
//! transport, all on one shard runtime thread.

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use sluice_cluster::replication::{
    FetchTarget, Fetcher, FollowerCore, InMemoryTransport, LeaderAction, LeaderCore,
    LeaderPositions, LeaderReplica, LeaderShard, PartitionState, ProduceId, ReplicationConfig,
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
            replicas: vec![BrokerId(1), BrokerId(2), BrokerId(3)],
            isr: vec![BrokerId(1), BrokerId(2), BrokerId(3)],
        };
        let config = ReplicationConfig {
            min_insync_replicas: 2,
            ..ReplicationConfig::default()
        };
        let positions = LeaderPositions {
            next_offset: leader_log.next_offset(),
            durable_end: leader_log.log_end_offset(),
            high_watermark: leader_log.high_watermark(),
        };
        let now = sluice_engine::rt::clock::now();
        let core = LeaderCore::new(tp.clone(), BrokerId(1), &state, positions, config, now);
        let mut shard = LeaderShard::new();
        shard.insert(
            tp.clone(),
            Rc::new(LeaderReplica {
                core: RefCell::new(core),
                log: leader_log.clone(),
            }),
        );
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
        let deadline = sluice_engine::rt::clock::now() + Duration::from_secs(20);
        for _ in 0..200 {
            let mut progressed = 0;
            for fetcher in &fetchers {
                progressed += fetcher.run_round().await;
                for (_, action) in fetcher.transport().take_actions() {
                    if let LeaderAction::Complete { id, result } = action {
                        completed.insert(id, result.is_ok());
                    }
                }
            }
            let settled = fetchers.iter().all(|f| f.high_watermark(&tp) == Some(end));
            if leader_log.high_watermark() == end && settled {
                break;
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
