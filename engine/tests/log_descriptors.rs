//! Open files per partition: a partition at rest holds one descriptor (its active segment's
//! log); the index files are opened only to write a block, to seal or close, and for a lookup.
//! Counted in `/proc/self/fd`, so this file holds a single test: tests of one binary share the
//! process and would count each other's files.

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::rc::Rc;
use std::time::Duration;

use futures::future::join_all;
use sluice_engine::log::{BatchCache, Durability, LogConfig, PartitionLog};
use sluice_engine::rt::block_on;
use sluice_engine::{LeaderEpoch, Offset, TimestampMs, TopicPartition};

const PARTITIONS: i32 = 400;
/// Partitions that get enough batches to flush whole index blocks while open.
const FULL_INDEX_PARTITIONS: i32 = 8;
/// Batches appended to each of those: every batch is indexed (interval 0), so 700 offset
/// entries of 8 bytes and 700 time entries of 12 bytes fill at least one block of each index.
const FULL_INDEX_BATCHES: u64 = 700;
/// Descriptors the runtime and the test itself may open beside the partitions' files (io_uring
/// rings, eventfds, the temp directory, glommio's blocking pool).
const SLACK_FDS: usize = 64;

fn config() -> LogConfig {
    LogConfig {
        index_interval_bytes: 0,
        preallocate_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Waits (bounded) until at most `limit` descriptors are open, then returns the count. Files
/// dropped rather than closed are closed by the runtime at its next IO cycle, so a few cycles
/// may pass before the count settles; this is condition polling, not a timing threshold.
async fn settled_fds(limit: usize) -> usize {
    for _ in 0..200 {
        let count = open_fds();
        if count <= limit {
            return count;
        }
        sluice_engine::rt::sleep(Duration::from_millis(5)).await;
    }
    open_fds()
}

async fn append_all(logs: &[PartitionLog]) {
    let appends = logs.iter().enumerate().map(|(p, log)| async move {
        let batches = if (p as i32) < FULL_INDEX_PARTITIONS {
            FULL_INDEX_BATCHES
        } else {
            3
        };
        for i in 0..batches {
            let pending = log.append(
                common::batch(1, 40, 1_000 + i as i64, p as u64 * 10_000 + i),
                LeaderEpoch(1),
                Durability::Written,
            );
            if i % 50 == 49 || i + 1 == batches {
                pending.await.unwrap();
            }
        }
    });
    join_all(appends).await;
    for log in logs {
        log.flush().await;
    }
}

// Goal: with many partitions open on one shard, the process holds at most one descriptor per
// partition plus a constant: after creation, after appends that flush index blocks, after
// lookups by offset and by timestamp through the active indexes, and after a clean reopen.
// Method: count /proc/self/fd before opening anything and at each of those points.
#[test]
fn one_descriptor_per_partition_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let tps: Vec<TopicPartition> = (0..PARTITIONS)
        .map(|p| TopicPartition::new("fds", p))
        .collect();
    block_on(async {
        // The runtime's own descriptors exist once block_on runs.
        let baseline = open_fds();
        let limit = baseline + PARTITIONS as usize + SLACK_FDS;
        let cache = Rc::new(BatchCache::new(16 << 20));
        let opened = join_all(
            tps.iter()
                .map(|tp| common::open(dir.path(), tp, config(), &cache)),
        )
        .await;
        let logs: Vec<PartitionLog> = opened.into_iter().map(|(log, _)| log).collect();
        let created = settled_fds(limit).await;
        assert!(
            created <= limit,
            "{created} open after creating, limit {limit}"
        );

        append_all(&logs).await;
        let flushed = settled_fds(limit).await;
        assert!(
            flushed <= limit,
            "{flushed} open after appends, limit {limit}"
        );
        let index = std::fs::metadata(
            sluice_engine::log::partition_dir(dir.path(), &tps[0]).join(format!("{:020}.index", 0)),
        )
        .unwrap();
        assert!(index.len() >= 4096, "index blocks were flushed while open");

        for result in join_all(logs.iter().map(PartitionLog::close)).await {
            result.unwrap();
        }
        drop(logs);
        let closed = settled_fds(baseline + SLACK_FDS).await;
        assert!(
            closed <= baseline + SLACK_FDS,
            "{closed} open after closing"
        );

        // A cold cache: reads go to disk through the active segments' indexes.
        let cold = Rc::new(BatchCache::new(16 << 20));
        let reopened = join_all(
            tps.iter()
                .map(|tp| common::open(dir.path(), tp, config(), &cold)),
        )
        .await;
        assert!(reopened.iter().all(|(_, report)| report.clean_shutdown));
        let logs: Vec<PartitionLog> = reopened.into_iter().map(|(log, _)| log).collect();
        let reopened_fds = settled_fds(limit).await;
        assert!(
            reopened_fds <= limit,
            "{reopened_fds} open after reopening, limit {limit}"
        );
        for (p, log) in logs.iter().enumerate() {
            let (target, timestamp) = if (p as i32) < FULL_INDEX_PARTITIONS {
                (Offset(650), 1_650)
            } else {
                (Offset(1), 1_001)
            };
            let slice = log.read(target, 1, log.log_end_offset()).await.unwrap();
            assert_eq!(common::header(&slice.batches[0]).base_offset, target);
            let found = log
                .offset_for_timestamp(TimestampMs(timestamp))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(found.offset, target, "partition {p}");
        }
        let looked_up = settled_fds(limit).await;
        assert!(
            looked_up <= limit,
            "{looked_up} open after lookups, limit {limit}"
        );
        for result in join_all(logs.iter().map(PartitionLog::close)).await {
            result.unwrap();
        }
    });
}
