//! Recycled segments: retention keeps the largest deleted segment file as a spare, the next roll
//! writes the new segment over it, stale batches past the new data are never served, and after
//! a crash recovery stops exactly where the new data ends even when a whole, valid stale batch
//! starts there.

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{append, batch, cache, config, header, open, payload, read_all, tp};
use sluice_engine::log::{Durability, LogConfig, PartitionLog, TruncationReason, partition_dir};
use sluice_engine::rt::block_on;
use sluice_engine::{Offset, TimestampMs, TopicPartition};

/// Bytes of every test batch: two blocks, so segments of 128 batches are exactly 1 MiB (the
/// smallest file kept for reuse) and batch boundaries fall on block boundaries.
const BATCH_BYTES: usize = 8192;

/// Batches per segment.
const PER_SEGMENT: usize = (1 << 20) / BATCH_BYTES;

/// A batch of exactly `BATCH_BYTES` with one record derived from `seed`.
fn block_batch(seed: u64) -> Bytes {
    let value = (BATCH_BYTES - 200..BATCH_BYTES)
        .find(|&value| batch(1, value, 1_000, seed).len() == BATCH_BYTES)
        .expect("a value size giving an exact batch");
    let b = batch(1, value, 1_000, seed);
    assert_eq!(b.len(), BATCH_BYTES);
    b
}

/// 1 MiB segments; retention by size keeps 2 MiB.
fn recycling_config() -> LogConfig {
    LogConfig {
        retention_bytes: Some(2 << 20),
        retention_ms: None,
        ..config(1 << 20)
    }
}

fn recycle_files(data: &Path, tp: &TopicPartition) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(partition_dir(data, tp))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("recycle-")
        })
        .collect();
    files.sort();
    files
}

fn segment_file(data: &Path, tp: &TopicPartition, base: Offset) -> PathBuf {
    partition_dir(data, tp).join(format!("{:020}.log", base.0))
}

/// Appends `count` batches (seeds from `seed`), returning them.
async fn fill(log: &PartitionLog, count: usize, seed: u64) -> Vec<Bytes> {
    let mut sent = Vec::with_capacity(count);
    for i in 0..count {
        let b = block_batch(seed + i as u64);
        append(log, b.clone(), Durability::Written).await;
        sent.push(b);
    }
    sent
}

fn check_same(got: &[Bytes], want: &[Bytes]) {
    assert_eq!(got.len(), want.len(), "batch count");
    for (index, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(payload(g), payload(w), "batch {index} differs");
    }
}

/// Builds a log of four full segments and a few batches, applies retention (which keeps one
/// deleted file as the spare) and returns the log with every batch still retained.
async fn retired(data: &Path, tp: &TopicPartition) -> (PartitionLog, Vec<Bytes>) {
    let (log, _) = open(data, tp, recycling_config(), &cache()).await;
    let sent = fill(&log, 4 * PER_SEGMENT + 10, 0).await;
    assert_eq!(log.segment_count(), 5);
    log.set_high_watermark(log.log_end_offset());
    let report = log.apply_retention(TimestampMs(0)).await.unwrap();
    assert_eq!(report.deleted_segments.len(), 2, "{report:?}");
    let spares = recycle_files(data, tp);
    assert_eq!(spares.len(), 1, "one spare kept: {spares:?}");
    // The spare is the newest of the two deleted segments, named by its end offset.
    let end = report.deleted_segments[1].0 + PER_SEGMENT as i64;
    assert!(
        spares[0].ends_with(format!("recycle-{end:020}.log")),
        "{spares:?}"
    );
    assert_eq!(std::fs::metadata(&spares[0]).unwrap().len(), 1 << 20);
    for base in &report.deleted_segments {
        assert!(
            !segment_file(data, tp, *base).exists(),
            "segment {base} deleted"
        );
    }
    let kept = sent[2 * PER_SEGMENT..].to_vec();
    check_same(&read_all(&log, log.log_start_offset()).await, &kept);
    (log, kept)
}

// Goal: the roll after retention writes the new segment over the spare file (written blocks,
// no new file), and readers get exactly the new batches, never the stale ones past them; the
// spare survives a clean restart before it is used.
// Method: retire a segment, close and reopen (the spare is adopted), append until the log
// rolls, check the spare file became the new segment (same size, still there) and the
// recycling counter; read everything back; close and reopen clean.
#[test]
fn the_next_roll_writes_over_the_spare() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("recycle-roll");
    block_on(async {
        let (log, mut kept) = retired(dir.path(), &tp).await;
        log.close().await.unwrap();
        let (log, report) = open(dir.path(), &tp, recycling_config(), &cache()).await;
        assert!(report.clean_shutdown, "{report:?}");
        assert_eq!(
            recycle_files(dir.path(), &tp).len(),
            1,
            "spare kept across restart"
        );
        // The active segment holds 10 batches; 118 more fill it and one more rolls.
        kept.extend(fill(&log, PER_SEGMENT - 10 + 3, 1_000).await);
        assert_eq!(log.stats().recycled_segments, 1);
        assert!(recycle_files(dir.path(), &tp).is_empty(), "spare used");
        let active = *log.segment_bases().last().unwrap();
        let file = std::fs::metadata(segment_file(dir.path(), &tp, active)).unwrap();
        assert!(
            file.len() >= 1 << 20,
            "written over the spare: {} bytes",
            file.len()
        );
        check_same(&read_all(&log, log.log_start_offset()).await, &kept);
        log.close().await.unwrap();
        let (log, report) = open(dir.path(), &tp, recycling_config(), &cache()).await;
        assert!(report.clean_shutdown, "{report:?}");
        check_same(&read_all(&log, log.log_start_offset()).await, &kept);
        log.close().await.unwrap();
    });
}

// Goal: after a crash, recovery of a segment written over a spare stops exactly at the end of
// the new data, even where a whole stale batch with a valid CRC starts there (the worst case:
// same batch sizes, data ending on a block boundary so no zero padding covers it), reports it,
// and the log continues from there.
// Method: retire a segment, roll into the spare, append 5 block-sized batches (ending at a
// block boundary, in front of the old segment's sixth batch), drop the log without closing,
// reopen; check the end offset, the truncation report (an offset gap to a stale offset below
// the segment's base), the batches read back, and that appends continue.
#[test]
fn recovery_stops_at_stale_batches_of_a_recycled_segment() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("recycle-crash");
    block_on(async {
        let (log, mut kept) = retired(dir.path(), &tp).await;
        kept.extend(fill(&log, PER_SEGMENT - 10, 2_000).await);
        let before = log.segment_count();
        kept.extend(fill(&log, 5, 3_000).await);
        assert_eq!(log.segment_count(), before + 1, "rolled");
        assert_eq!(log.stats().recycled_segments, 1);
        let active = *log.segment_bases().last().unwrap();
        let end = log.log_end_offset();
        assert_eq!(end.0, active.0 + 5);
        drop(log);

        // The stale batch right after the new data is whole and valid, below the base.
        let bytes = std::fs::read(segment_file(dir.path(), &tp, active)).unwrap();
        let stale = header(&bytes[5 * BATCH_BYTES..]);
        assert!(stale.base_offset < active, "{stale:?}");
        assert!(
            sluice_engine::batch::validate(&bytes[5 * BATCH_BYTES..6 * BATCH_BYTES], usize::MAX)
                .is_ok()
        );

        let (log, report) = open(dir.path(), &tp, recycling_config(), &cache()).await;
        assert!(!report.clean_shutdown);
        assert_eq!(log.log_end_offset(), end, "{report:?}");
        assert_eq!(report.truncations.len(), 1, "{report:?}");
        let truncation = &report.truncations[0];
        assert_eq!(truncation.segment, active);
        assert_eq!(truncation.position.0, 5 * BATCH_BYTES as u64);
        assert!(
            matches!(
                truncation.reason,
                TruncationReason::OffsetGap { expected, found } if expected == end && found < active
            ),
            "{truncation:?}"
        );
        check_same(&read_all(&log, log.log_start_offset()).await, &kept);
        kept.extend(fill(&log, 3, 4_000).await);
        check_same(&read_all(&log, log.log_start_offset()).await, &kept);
        log.close().await.unwrap();
    });
}
