//! Recovery of damaged or missing index files: truncated, garbage, missing, and a crash between
//! the log write and the index write. Each test writes a log, damages index files while it is
//! closed, reopens it, and checks the report, the rebuilt files (byte-identical to what the write
//! path produced) and that lookups through the indexes serve the right batches.

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{append, batch, cache, header, open, payload, read_all, tp};
use sluice_engine::log::{
    CheckpointStatus, Durability, IndexDamage, IndexKind, LogConfig, PartitionLog, RebuiltIndex,
    partition_dir,
};
use sluice_engine::rt::block_on;
use sluice_engine::{Offset, TimestampMs, TopicPartition};

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 32 << 10,
        index_interval_bytes: 256,
        preallocate_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

/// One large segment with an index entry for every batch, so the active indexes span blocks.
fn every_batch_indexed() -> LogConfig {
    LogConfig {
        segment_bytes: 4 << 20,
        index_interval_bytes: 0,
        preallocate_bytes: 1 << 20,
        ..LogConfig::default()
    }
}

/// Appends one small batch per `i` in `range` (timestamp `i`), pipelined and awaited every
/// 100th so the tests stay quick, then waits for all of them; keeps what was sent.
async fn append_small(log: &PartitionLog, range: std::ops::Range<u64>, sent: &mut Vec<Bytes>) {
    for i in range {
        let b = batch(1, 40, i as i64, i);
        sent.push(b.clone());
        let pending = log.append(b, sluice_engine::LeaderEpoch(0), Durability::Written);
        if i % 100 == 99 {
            pending.await.unwrap();
        }
    }
    log.flush().await;
}

fn index_files(data: &Path, tp: &TopicPartition) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(partition_dir(data, tp))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.extension()
                .is_some_and(|e| e == "index" || e == "timeindex")
        })
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

fn file(data: &Path, tp: &TopicPartition, base: Offset, extension: &str) -> PathBuf {
    partition_dir(data, tp).join(format!("{:020}.{extension}", base.0))
}

/// Writes 100 batches with rising timestamps into 32 KiB segments and closes cleanly.
async fn build(data: &Path, tp: &TopicPartition) -> (Vec<Bytes>, Vec<Offset>) {
    let cache = cache();
    let (log, _) = open(data, tp, config(), &cache).await;
    let mut sent = Vec::new();
    for i in 0..100u64 {
        let b = batch(2, 700, 10_000 + 10 * i as i64, i);
        append(&log, b.clone(), Durability::Written).await;
        sent.push(b);
    }
    let bases = log.segment_bases();
    assert!(bases.len() >= 4, "{bases:?}");
    log.close().await.unwrap();
    (sent, bases)
}

/// Checks every batch is served, with a cold cache, starting from each batch's middle offset
/// (so each read goes through an index lookup).
async fn check_lookups(log: &PartitionLog, sent: &[Bytes]) {
    let all = read_all(log, Offset(0)).await;
    assert_eq!(all.len(), sent.len());
    for (i, s) in sent.iter().enumerate() {
        let base = header(&all[i]).base_offset;
        let slice = log
            .read(base.plus(1), 1, log.log_end_offset())
            .await
            .unwrap();
        assert_eq!(payload(&slice.batches[0]), payload(s), "batch {i}");
    }
    let found = log
        .offset_for_timestamp(TimestampMs(10_000 + 10 * 33 - 5))
        .await
        .unwrap();
    assert_eq!(
        found.unwrap().offset,
        Offset(66),
        "first batch at or after the timestamp"
    );
}

async fn reopen_and_check(
    data: &Path,
    tp: &TopicPartition,
    sent: &[Bytes],
    original: &BTreeMap<PathBuf, Vec<u8>>,
) -> Vec<RebuiltIndex> {
    let (log, report) = open(data, tp, config(), &common::cache()).await;
    assert!(report.truncations.is_empty(), "{report:?}");
    assert_eq!(log.log_end_offset(), Offset(200));
    check_lookups(&log, sent).await;
    log.close().await.unwrap();
    assert_eq!(
        &index_files(data, tp),
        original,
        "indexes rebuilt byte for byte"
    );
    report.rebuilt_indexes
}

// Goal: a sealed segment's offset index cut short is detected (size disagrees with the
// checkpoint) and rebuilt exactly.
#[test]
fn truncated_sealed_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("index-truncated");
    block_on(async {
        let (sent, bases) = build(dir.path(), &tp).await;
        let original = index_files(dir.path(), &tp);
        let path = file(dir.path(), &tp, bases[0], "index");
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let rebuilt = reopen_and_check(dir.path(), &tp, &sent, &original).await;
        assert_eq!(
            rebuilt,
            vec![RebuiltIndex {
                segment: bases[0],
                kind: IndexKind::Offset,
                damage: IndexDamage::WrongSize
            }]
        );
    });
}

// Goal: a sealed segment's time index overwritten with garbage of the same size is detected by
// the entry checks and rebuilt exactly.
#[test]
fn garbage_sealed_time_index_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("index-garbage");
    block_on(async {
        let (sent, bases) = build(dir.path(), &tp).await;
        let original = index_files(dir.path(), &tp);
        let path = file(dir.path(), &tp, bases[1], "timeindex");
        let len = original[&path].len();
        let garbage: Vec<u8> = (0..len).map(|i| (i * 7919 % 256) as u8).collect();
        std::fs::write(&path, garbage).unwrap();
        let rebuilt = reopen_and_check(dir.path(), &tp, &sent, &original).await;
        assert_eq!(rebuilt.len(), 1, "{rebuilt:?}");
        assert_eq!(
            (rebuilt[0].segment, rebuilt[0].kind),
            (bases[1], IndexKind::Time)
        );
        assert!(matches!(
            rebuilt[0].damage,
            IndexDamage::NonMonotonic | IndexDamage::PastEnd
        ));
    });
}

// Goal: missing index files of a sealed segment are recreated; an active segment whose entries
// fit in one block has no index files after a clean close (the partial blocks are in the
// clean-shutdown marker), and a clean reopen serves lookups from the marker's blocks.
#[test]
fn missing_index_files_are_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("index-missing");
    block_on(async {
        let (sent, bases) = build(dir.path(), &tp).await;
        let original = index_files(dir.path(), &tp);
        let active = *bases.last().unwrap();
        for extension in ["index", "timeindex"] {
            assert!(!file(dir.path(), &tp, active, extension).exists());
            std::fs::remove_file(file(dir.path(), &tp, bases[0], extension)).unwrap();
        }
        let (log, report) = open(dir.path(), &tp, config(), &common::cache()).await;
        let missing = |segment, kind| RebuiltIndex {
            segment,
            kind,
            damage: IndexDamage::Missing,
        };
        assert_eq!(
            report.rebuilt_indexes,
            vec![
                missing(bases[0], IndexKind::Offset),
                missing(bases[0], IndexKind::Time)
            ],
            "{report:?}"
        );
        assert!(report.clean_shutdown, "{report:?}");
        check_lookups(&log, &sent).await;
        log.close().await.unwrap();
        assert_eq!(index_files(dir.path(), &tp), original);
    });
}

// Goal: with the checkpoint lost, every segment is scanned and a sealed segment's index that
// lacks its last entries (a crash between the log write and the index write of a roll) is
// rebuilt; nothing is lost.
#[test]
fn lost_checkpoint_scans_everything_and_repairs_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("index-incomplete-sealed");
    block_on(async {
        let (sent, bases) = build(dir.path(), &tp).await;
        let original = index_files(dir.path(), &tp);
        std::fs::remove_file(partition_dir(dir.path(), &tp).join("partition.checkpoint")).unwrap();
        let path = file(dir.path(), &tp, bases[2], "index");
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 16)
            .unwrap();
        let (log, report) = open(dir.path(), &tp, config(), &common::cache()).await;
        assert_eq!(report.checkpoint, CheckpointStatus::Missing);
        // The clean-shutdown marker still vouches for the active segment.
        assert!(report.clean_shutdown);
        assert_eq!(report.scanned_segments, bases[..bases.len() - 1]);
        assert_eq!(
            report.rebuilt_indexes,
            vec![RebuiltIndex {
                segment: bases[2],
                kind: IndexKind::Offset,
                damage: IndexDamage::Incomplete
            }]
        );
        check_lookups(&log, &sent).await;
        log.close().await.unwrap();
        assert_eq!(index_files(dir.path(), &tp), original);
    });
}

// Goal: the active segment's indexes after a crash. The write path flushes only whole index
// blocks, so after a crash the file holds a prefix and the rest is rebuilt in memory from the
// scan without a report; when even a whole-block write was lost (crash between the log write
// and the index write), the index is reported as incomplete and rewritten.
// Method: index every batch (interval 0) so the active indexes span several blocks; drop the
// log without closing; reopen; then cut the index files to their first block and reopen again.
#[test]
fn crash_between_log_and_index_write() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("index-crash");
    let config = every_batch_indexed();
    block_on(async {
        let cache = cache();
        let (log, _) = open(dir.path(), &tp, config, &cache).await;
        let mut sent = Vec::new();
        append_small(&log, 0..1500, &mut sent).await;
        drop(log);
        let index = file(dir.path(), &tp, Offset(0), "index");
        let time_index = file(dir.path(), &tp, Offset(0), "timeindex");
        assert!(
            std::fs::metadata(&index).unwrap().len() >= 8192,
            "several blocks flushed"
        );

        let (log, report) = open(dir.path(), &tp, config, &common::cache()).await;
        assert!(report.rebuilt_indexes.is_empty(), "{report:?}");
        assert!(report.truncations.is_empty());
        let got = read_all(&log, Offset(0)).await;
        assert_eq!(got.len(), sent.len());
        let middle = log.read(Offset(1234), 1, Offset(1500)).await.unwrap();
        assert_eq!(payload(&middle.batches[0]), payload(&sent[1234]));
        log.flush().await;
        drop(log);

        for path in [&index, &time_index] {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .unwrap()
                .set_len(4096)
                .unwrap();
        }
        let (log, report) = open(dir.path(), &tp, config, &common::cache()).await;
        let incomplete = |kind| RebuiltIndex {
            segment: Offset(0),
            kind,
            damage: IndexDamage::Incomplete,
        };
        assert_eq!(
            report.rebuilt_indexes,
            vec![incomplete(IndexKind::Offset), incomplete(IndexKind::Time)]
        );
        for i in [0usize, 700, 1499] {
            let slice = log.read(Offset(i as i64), 1, Offset(1500)).await.unwrap();
            assert_eq!(payload(&slice.batches[0]), payload(&sent[i]));
        }
        let found = log
            .offset_for_timestamp(TimestampMs(1_100))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found.offset, Offset(1_100));
        log.close().await.unwrap();
    });
}

// Goal: index blocks written by a log reopened after a clean close (the index files are not
// held open: the state continues from memory and each block is written by reopening the file)
// are exactly what recovery rebuilds from the log.
// Method: index every batch so the active indexes span several blocks; write, close, reopen
// (clean: the partial blocks come back into memory), write across more block boundaries,
// close; keep the index files; remove them and the clean-shutdown marker, reopen (the active
// segment is scanned and its indexes rebuilt), close, and compare byte for byte.
#[test]
fn index_written_after_reopen_matches_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("index-reopen");
    let config = every_batch_indexed();
    block_on(async {
        let mut sent = Vec::new();
        for round in 0..2u64 {
            let (log, report) = open(dir.path(), &tp, config, &cache()).await;
            assert_eq!(report.clean_shutdown, round == 1, "{report:?}");
            append_small(&log, round * 700..(round + 1) * 700, &mut sent).await;
            log.close().await.unwrap();
        }
        let written = index_files(dir.path(), &tp);
        assert_eq!(written.len(), 2);
        // A clean close leaves the whole blocks in the files (the partial ones go to the
        // marker).
        assert!(
            written
                .values()
                .all(|bytes| bytes.len() >= 8192 && bytes.len() % 4096 == 0),
            "several whole blocks"
        );
        for path in written.keys() {
            std::fs::remove_file(path).unwrap();
        }
        std::fs::remove_file(partition_dir(dir.path(), &tp).join("clean_shutdown")).unwrap();
        let (log, report) = open(dir.path(), &tp, config, &cache()).await;
        let missing = |kind| RebuiltIndex {
            segment: Offset(0),
            kind,
            damage: IndexDamage::Missing,
        };
        assert_eq!(
            report.rebuilt_indexes,
            vec![missing(IndexKind::Offset), missing(IndexKind::Time)]
        );
        assert_eq!(log.log_end_offset(), Offset(1_400));
        for i in [0usize, 699, 700, 1_399] {
            let slice = log.read(Offset(i as i64), 1, Offset(1_400)).await.unwrap();
            assert_eq!(payload(&slice.batches[0]), payload(&sent[i]));
        }
        log.close().await.unwrap();
        assert_eq!(
            index_files(dir.path(), &tp),
            written,
            "rebuilt byte for byte"
        );
    });
}

// Goal: opening invalidates the clean-shutdown marker in place, so a crash after a clean open
// is recovered by a scan and never trusted as clean; the next clean close makes it valid again.
// Method: build and close; reopen (clean), drop without closing; reopen: not clean, the
// marker file is still there (zeroed, not removed); close, reopen: clean again.
#[test]
fn crash_after_clean_open_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("marker-in-place");
    let marker = partition_dir(dir.path(), &tp).join("clean_shutdown");
    block_on(async {
        let (sent, _) = build(dir.path(), &tp).await;
        let (log, report) = open(dir.path(), &tp, config(), &cache()).await;
        assert!(report.clean_shutdown, "{report:?}");
        drop(log);
        assert!(
            std::fs::read(&marker)
                .unwrap()
                .iter()
                .all(|byte| *byte == 0),
            "invalidated in place"
        );
        let (log, report) = open(dir.path(), &tp, config(), &cache()).await;
        assert!(!report.clean_shutdown, "{report:?}");
        assert!(!report.scanned_segments.is_empty(), "{report:?}");
        check_lookups(&log, &sent).await;
        log.close().await.unwrap();
        let (log, report) = open(dir.path(), &tp, config(), &cache()).await;
        assert!(report.clean_shutdown, "{report:?}");
        log.close().await.unwrap();
    });
}
