//! Many partitions opening and closing together, made durable by shared syncs of the file
//! system (`io::sync_file_system`) instead of syncs of their own: what creation leaves on disk
//! and how it reopens after a crash, what a clean close of many partitions leaves (a marker
//! that the next open trusts, with the high watermark, the epochs and the index tails), and
//! that a failed shared sync never leaves a marker claiming a clean state.

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::rc::Rc;

use futures::future::join_all;
use sluice_engine::io::faults::{self, Failure, Op, Plan};
use sluice_engine::log::{
    AdminError, BatchCache, Durability, LogConfig, OpenError, PartitionLog, RecoveryReport,
    partition_dir,
};
use sluice_engine::rt::block_on;
use sluice_engine::{LeaderEpoch, Offset, TimestampMs, TopicPartition};

const PARTITIONS: i32 = 300;
/// Partitions whose indexes get whole blocks on disk (every batch indexed).
const INDEXED_PARTITIONS: i32 = 4;
/// Batches appended to those: 700 offset entries (5,600 bytes) and 700 time entries (8,400
/// bytes) each, so each index has whole blocks in its file and a partial one in memory.
const INDEXED_BATCHES: u64 = 700;

fn config(p: i32) -> LogConfig {
    LogConfig {
        index_interval_bytes: if p < INDEXED_PARTITIONS { 0 } else { 4096 },
        preallocate_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

fn tps(name: &str) -> Vec<TopicPartition> {
    (0..PARTITIONS)
        .map(|p| TopicPartition::new(name, p))
        .collect()
}

async fn open_all(
    data: &Path,
    tps: &[TopicPartition],
    cache: &Rc<BatchCache>,
) -> Vec<(PartitionLog, RecoveryReport)> {
    join_all(
        tps.iter()
            .map(|tp| common::open(data, tp, config(tp.partition.0), cache)),
    )
    .await
}

fn file_names(data: &Path, tp: &TopicPartition) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(partition_dir(data, tp))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Opens every partition and fills it (`fill`).
async fn open_filled(
    data: &Path,
    tps: &[TopicPartition],
    cache: &Rc<BatchCache>,
) -> Vec<PartitionLog> {
    let logs: Vec<PartitionLog> = open_all(data, tps, cache)
        .await
        .into_iter()
        .map(|(log, _)| log)
        .collect();
    fill(&logs).await;
    logs
}

/// Appends to every partition (`INDEXED_BATCHES` to the indexed ones, three to the others),
/// stamped with epoch 3 and then 4, and sets the high watermark to the log end minus one.
async fn fill(logs: &[PartitionLog]) {
    let appends = logs.iter().enumerate().map(|(p, log)| async move {
        let batches = if (p as i32) < INDEXED_PARTITIONS {
            INDEXED_BATCHES
        } else {
            3
        };
        for i in 0..batches {
            let epoch = LeaderEpoch(if i < batches / 2 { 3 } else { 4 });
            let pending = log.append(
                common::batch(1, 40, 1_000 + i as i64, p as u64 * 10_000 + i),
                epoch,
                Durability::Written,
            );
            if i % 100 == 99 || i + 1 == batches {
                pending.await.unwrap();
            }
        }
        log.flush().await;
        log.set_high_watermark(Offset(log.log_end_offset().0 - 1));
    });
    join_all(appends).await;
}

/// Checks one partition's log as `fill` left it: every batch, lookups by offset and by
/// timestamp through its indexes, and its epochs.
async fn check_filled(p: i32, log: &PartitionLog) {
    let batches = if p < INDEXED_PARTITIONS {
        INDEXED_BATCHES
    } else {
        3
    };
    assert_eq!(
        log.log_end_offset(),
        Offset(batches as i64),
        "partition {p}"
    );
    let all = common::read_all(log, Offset(0)).await;
    assert_eq!(all.len() as u64, batches, "partition {p}");
    for (i, got) in all.iter().enumerate() {
        let want = common::batch(1, 40, 1_000 + i as i64, p as u64 * 10_000 + i as u64);
        assert_eq!(
            common::payload(got),
            common::payload(&want),
            "partition {p}"
        );
    }
    let last = Offset(batches as i64 - 1);
    let slice = log.read(last, 1, log.log_end_offset()).await.unwrap();
    assert_eq!(common::header(&slice.batches[0]).base_offset, last);
    let found = log
        .offset_for_timestamp(TimestampMs(1_000 + last.0))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.offset, last, "partition {p}");
    assert_eq!(log.latest_epoch(), Some(LeaderEpoch(4)), "partition {p}");
    assert_eq!(
        log.end_offset_for_epoch(LeaderEpoch(3)),
        (LeaderEpoch(3), Offset((batches / 2) as i64)),
        "partition {p}"
    );
}

// Goal: creating many partitions at once writes only what a new log needs (its directory and
// an empty active segment file, made durable by shared syncs), and a crash right after every
// open returned loses none of them: each reopens empty and takes appends.
// Method: open 300 new logs concurrently, list their directories, drop the logs without
// closing them (a process crash, files as left), reopen all and append to each.
#[test]
fn created_partitions_reopen_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let tps = tps("created");
    block_on(async {
        let cache = Rc::new(BatchCache::new(16 << 20));
        let opened = open_all(dir.path(), &tps, &cache).await;
        assert!(opened.iter().all(|(_, report)| report.created));
        for tp in &tps {
            assert_eq!(
                file_names(dir.path(), tp),
                vec!["00000000000000000000.log".to_owned()],
                "{tp}: no index, checkpoint or epoch file for a new log"
            );
        }
        drop(opened);

        let reopened = open_all(dir.path(), &tps, &cache).await;
        for (log, report) in &reopened {
            assert!(!report.clean_shutdown, "{report:?}");
            assert!(report.is_clean(), "{report:?}");
            assert_eq!(log.log_end_offset(), Offset(0));
        }
        let appends = reopened.iter().map(|(log, _)| async move {
            common::append(log, common::batch(2, 10, 5, 1), Durability::Synced).await
        });
        assert!(
            join_all(appends)
                .await
                .into_iter()
                .all(|offset| offset == Offset(0))
        );
        for result in join_all(reopened.iter().map(|(log, _)| log.close())).await {
            result.unwrap();
        }
    });
}

// Goal: a clean close of many partitions at once leaves each a marker that the next open
// trusts (no segment scanned): the data, the index lookups (whole index blocks in the files,
// the partial ones carried by the marker), the epochs and the high watermark all come back;
// the checkpoint files are not rewritten for what the marker carries. A crash after that clean
// open is recovered by a scan, with the high watermark no higher than at the close.
// Method: 300 logs, four with every batch indexed (index files with whole blocks), all written
// in two epochs with the high watermark set; close all concurrently; check the files; reopen
// and check everything; drop without closing, reopen and check again.
#[test]
fn clean_close_of_many_partitions_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let tps = tps("closed");
    block_on(async {
        let cache = Rc::new(BatchCache::new(16 << 20));
        let logs = open_filled(dir.path(), &tps, &cache).await;
        let watermarks: Vec<Offset> = logs.iter().map(PartitionLog::high_watermark).collect();
        for result in join_all(logs.iter().map(PartitionLog::close)).await {
            result.unwrap();
        }
        drop(logs);
        for tp in &tps {
            let names = file_names(dir.path(), tp);
            // The high watermark and the epochs changed, but the marker carries them: no
            // checkpoint or epoch file yet. Index files exist only with whole blocks.
            let mut want = vec!["00000000000000000000.log", "clean_shutdown"];
            if tp.partition.0 < INDEXED_PARTITIONS {
                want = vec![
                    "00000000000000000000.index",
                    "00000000000000000000.log",
                    "00000000000000000000.timeindex",
                    "clean_shutdown",
                ];
            }
            assert_eq!(names, want, "{tp}");
        }

        let cold = Rc::new(BatchCache::new(16 << 20));
        let reopened = open_all(dir.path(), &tps, &cold).await;
        for (p, (log, report)) in reopened.iter().enumerate() {
            assert!(report.clean_shutdown, "{report:?}");
            assert!(report.scanned_segments.is_empty(), "{report:?}");
            assert_eq!(log.high_watermark(), watermarks[p], "partition {p}");
            check_filled(p as i32, log).await;
        }
        drop(reopened);

        let recovered = open_all(dir.path(), &tps, &cold).await;
        for (p, (log, report)) in recovered.iter().enumerate() {
            assert!(
                !report.clean_shutdown,
                "the marker was invalidated: {report:?}"
            );
            assert_eq!(report.scanned_segments, vec![Offset(0)]);
            assert!(report.rebuilt_indexes.is_empty(), "{report:?}");
            assert!(log.high_watermark() <= watermarks[p], "partition {p}");
            check_filled(p as i32, log).await;
        }
        for result in join_all(recovered.iter().map(|(log, _)| log.close())).await {
            result.unwrap();
        }
    });
}

/// Writes partition `p`'s marker path fragment, which matches its log and marker files.
fn path_of(tp: &TopicPartition) -> String {
    format!("{tp}/")
}

// Goal: a failed shared sync while closing fails that partition's close and leaves no marker
// claiming a clean state, whichever sync fails (before the marker, or the marker's own); the
// other partitions closing with it close cleanly; the failed one recovers by a scan with
// nothing lost.
// Method: 300 logs written; a fault fails partition 7's first shared sync, or its second (the
// marker's, after the marker was written); close all concurrently; reopen all.
#[test]
fn failed_shared_sync_leaves_no_clean_marker() {
    for skip in [0, 1] {
        let dir = tempfile::tempdir().unwrap();
        let tps = tps("sync-fails");
        block_on(async {
            let cache = Rc::new(BatchCache::new(16 << 20));
            let logs = open_filled(dir.path(), &tps, &cache).await;
            faults::inject(Plan {
                op: Op::SyncFileSystem,
                path_contains: path_of(&tps[7]),
                skip,
                count: 1,
                failure: Failure::Io,
            });
            let results = join_all(logs.iter().map(PartitionLog::close)).await;
            faults::clear();
            for (p, result) in results.into_iter().enumerate() {
                if p == 7 {
                    assert!(
                        matches!(result, Err(AdminError::Io(_))),
                        "skip {skip}: {result:?}"
                    );
                } else {
                    result.unwrap();
                }
            }
            drop(logs);
            let reopened = open_all(dir.path(), &tps, &cache).await;
            for (p, (log, report)) in reopened.iter().enumerate() {
                assert_eq!(report.clean_shutdown, p != 7, "skip {skip}: {report:?}");
                check_filled(p as i32, log).await;
            }
            for result in join_all(reopened.iter().map(|(log, _)| log.close())).await {
                result.unwrap();
            }
        });
    }
}

// Goal: a close that must rewrite the checkpoint files (more epochs in the active segment than
// a marker carries) stages them, and a failed shared sync before they are renamed into place
// leaves the old files and no marker; the next open scans and finds every epoch.
// Method: one log with 70 leader epochs in its active segment; fail its first shared sync at
// close; reopen (not clean: the epochs come from the scan) and close; reopen (clean: the epoch
// file, rewritten at that close, holds them all).
#[test]
fn failed_sync_before_checkpoint_rename_keeps_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let tp = TopicPartition::new("epochs", 0);
    block_on(async {
        let cache = Rc::new(BatchCache::new(8 << 20));
        let (log, _) = common::open(dir.path(), &tp, config(9), &cache).await;
        for epoch in 0..70 {
            log.append(
                common::batch(1, 10, epoch as i64, epoch),
                LeaderEpoch(epoch as i32),
                Durability::Written,
            )
            .await
            .unwrap();
        }
        faults::inject(Plan {
            op: Op::SyncFileSystem,
            path_contains: path_of(&tp),
            skip: 0,
            count: 1,
            failure: Failure::Io,
        });
        let result = log.close().await;
        faults::clear();
        assert!(matches!(result, Err(AdminError::Io(_))), "{result:?}");
        drop(log);
        assert!(
            !partition_dir(dir.path(), &tp)
                .join("leader-epoch.checkpoint")
                .exists(),
            "not renamed into place"
        );
        for clean in [false, true] {
            let (log, report) = common::open(dir.path(), &tp, config(9), &cache).await;
            assert_eq!(report.clean_shutdown, clean, "{report:?}");
            assert_eq!(log.latest_epoch(), Some(LeaderEpoch(69)));
            for epoch in [0, 33, 68] {
                assert_eq!(
                    log.end_offset_for_epoch(LeaderEpoch(epoch)),
                    (LeaderEpoch(epoch), Offset(i64::from(epoch) + 1))
                );
            }
            log.close().await.unwrap();
        }
    });
}

// Goal: a failed shared sync while a new partition is created fails its open (nothing
// acknowledges a partition whose files may not be durable); opening it again succeeds.
// Method: fail the shared sync of one of ten partitions opening together.
#[test]
fn failed_shared_sync_fails_creation() {
    let dir = tempfile::tempdir().unwrap();
    let tps: Vec<TopicPartition> = (0..10).map(|p| TopicPartition::new("create", p)).collect();
    block_on(async {
        let cache = Rc::new(BatchCache::new(8 << 20));
        faults::inject(Plan {
            op: Op::SyncFileSystem,
            path_contains: path_of(&tps[3]),
            skip: 0,
            count: 1,
            failure: Failure::Io,
        });
        let opened = join_all(tps.iter().map(|tp| {
            PartitionLog::open(
                partition_dir(dir.path(), tp),
                tp.clone(),
                config(9),
                cache.clone(),
            )
        }))
        .await;
        faults::clear();
        for (p, result) in opened.into_iter().enumerate() {
            match result {
                Ok((log, _)) => {
                    assert_ne!(p, 3);
                    log.close().await.unwrap();
                }
                Err(error) => {
                    assert_eq!(p, 3);
                    assert!(matches!(error, OpenError::Io { .. }), "{error}");
                }
            }
        }
        let (log, _) = common::open(dir.path(), &tps[3], config(9), &cache).await;
        assert_eq!(log.log_end_offset(), Offset(0));
        log.close().await.unwrap();
    });
}
