//! Many partitions on one executor: 1,000 logs sharing one batch cache are opened, appended to,
//! read, closed, reopened and read again, all concurrently on one shard.

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::rc::Rc;

use futures::future::join_all;
use sluice_engine::log::{BatchCache, Durability, LogConfig};
use sluice_engine::rt::block_on;
use sluice_engine::{LeaderEpoch, Offset, TopicPartition};

const PARTITIONS: i32 = 1_000;

fn config() -> LogConfig {
    LogConfig {
        preallocate_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

// Goal: a shard holds 1,000 partitions; each keeps its own data, the shared cache serves the
// tail reads, and a clean reopen of all of them trusts the indexes (no scan).
// Method: open all concurrently, append two batches each (one Synced), read back, close all,
// reopen all with a cold cache and read back from disk.
#[test]
fn thousand_partitions_on_one_executor() {
    let dir = tempfile::tempdir().unwrap();
    let tps: Vec<TopicPartition> = (0..PARTITIONS)
        .map(|p| TopicPartition::new("many", p))
        .collect();
    block_on(async {
        let cache = Rc::new(BatchCache::new(16 << 20));
        let opened = join_all(
            tps.iter()
                .map(|tp| common::open(dir.path(), tp, config(), &cache)),
        )
        .await;
        assert!(opened.iter().all(|(_, report)| report.created));
        let logs: Vec<_> = opened.into_iter().map(|(log, _)| log).collect();
        let appends = logs.iter().enumerate().map(|(p, log)| async move {
            let p = p as u64;
            log.append(
                common::batch(2, 100, 1, p),
                LeaderEpoch(1),
                Durability::Written,
            )
            .await
            .unwrap();
            log.append(
                common::batch(3, 50, 2, p + 10_000),
                LeaderEpoch(1),
                Durability::Synced,
            )
            .await
            .unwrap();
        });
        join_all(appends).await;
        for (p, log) in logs.iter().enumerate() {
            let got = common::read_all(log, Offset(0)).await;
            assert_eq!(got.len(), 2);
            assert_eq!(
                common::payload(&got[0]),
                common::payload(&common::batch(2, 100, 1, p as u64))
            );
            assert_eq!(log.log_end_offset(), Offset(5));
        }
        assert!(
            cache.stats().hits >= PARTITIONS as u64,
            "tail reads hit the cache"
        );
        for result in join_all(logs.iter().map(|log| log.close())).await {
            result.unwrap();
        }
        assert_eq!(cache.used_bytes(), 0, "closed logs leave nothing cached");
        drop(logs);

        let cold = Rc::new(BatchCache::new(16 << 20));
        let reopened = join_all(
            tps.iter()
                .map(|tp| common::open(dir.path(), tp, config(), &cold)),
        )
        .await;
        for (p, (log, report)) in reopened.iter().enumerate() {
            assert!(
                report.clean_shutdown && report.scanned_segments.is_empty(),
                "{report:?}"
            );
            let got = common::read_all(log, Offset(0)).await;
            assert_eq!(got.len(), 2);
            assert_eq!(
                common::payload(&got[1]),
                common::payload(&common::batch(3, 50, 2, p as u64 + 10_000))
            );
        }
        for result in join_all(reopened.iter().map(|(log, _)| log.close())).await {
            result.unwrap();
        }
    });
}
