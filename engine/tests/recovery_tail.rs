//! Recovery of damaged segment data: torn tails, garbage after the last batch, flipped bytes in
//! the active segment and in a sealed segment. Each test writes a log, damages its files on
//! purpose while it is not open, reopens it, and checks exactly what survives and what the
//! recovery report says.

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::{append, batch, cache, config, header, open, payload, read_all, tp};
use sluice_engine::batch::BatchError;
use sluice_engine::log::{
    AdminError, AppendError, DamagedEpoch, Durability, EpochEntry, PartitionLog, ReadError,
    TruncationReason, partition_dir,
};
use sluice_engine::rt::block_on;
use sluice_engine::{FilePos, LeaderEpoch, Offset, TimestampMs, TopicPartition};

fn segment_path(data: &Path, tp: &TopicPartition, base: i64, extension: &str) -> PathBuf {
    partition_dir(data, tp).join(format!("{base:020}.{extension}"))
}

/// Appends `count` synced batches of 3 records each and returns them with their file positions.
async fn fill(log: &PartitionLog, count: u64) -> Vec<(Bytes, u64)> {
    let mut out = Vec::new();
    let mut position = 0u64;
    for i in 0..count {
        let b = batch(3, 200 + (i as usize * 13) % 300, 1_000 + i as i64, i);
        append(log, b.clone(), Durability::Synced).await;
        let len = b.len() as u64;
        out.push((b, position));
        position += len;
    }
    out
}

fn assert_prefix(sent: &[(Bytes, u64)], got: &[Bytes], count: usize) {
    assert_eq!(got.len(), count, "surviving batches");
    for ((s, _), g) in sent.iter().zip(got) {
        assert_eq!(payload(s), payload(g));
    }
}

// Goal: a batch cut short at the end of the active segment is truncated at its start, and
// every earlier batch survives.
// Method: write 10 batches, drop the log without closing (a crash), cut the file in the middle
// of the last batch, reopen.
#[test]
fn torn_tail_is_truncated_at_the_last_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("torn");
    block_on(async {
        let cache = cache();
        let (log, _) = open(dir.path(), &tp, config(1 << 20), &cache).await;
        let sent = fill(&log, 10).await;
        drop(log);
        let (last, last_position) = sent.last().unwrap().clone();
        let cut = last_position + last.len() as u64 / 2;
        let file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), &tp, 0, "log"))
            .unwrap();
        file.set_len(cut).unwrap();
        drop(file);

        let (log, report) = open(dir.path(), &tp, config(1 << 20), &common::cache()).await;
        assert!(!report.clean_shutdown);
        assert_eq!(report.scanned_segments, vec![Offset(0)]);
        assert_eq!(report.truncations.len(), 1, "{report:?}");
        let truncation = &report.truncations[0];
        assert_eq!(truncation.segment, Offset(0));
        assert_eq!(truncation.position, FilePos(last_position));
        assert_eq!(truncation.bytes, cut - last_position);
        assert!(matches!(
            truncation.reason,
            TruncationReason::InvalidBatch(BatchError::Truncated { .. })
        ));
        assert_eq!(log.log_end_offset(), Offset(27));
        let got = read_all(&log, Offset(0)).await;
        assert_prefix(&sent, &got, 9);
        // The log continues where it was cut.
        assert_eq!(
            append(&log, batch(1, 10, 0, 99), Durability::Synced).await,
            Offset(27)
        );
        log.close().await.unwrap();
    });
}

// Goal: garbage written after the last batch (in preallocated space) is discarded and reported
// with its exact length; all batches survive.
#[test]
fn garbage_after_last_batch_is_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("garbage");
    block_on(async {
        let cache = cache();
        let (log, _) = open(dir.path(), &tp, config(1 << 20), &cache).await;
        let sent = fill(&log, 6).await;
        drop(log);
        let (last, last_position) = sent.last().unwrap().clone();
        let end = last_position + last.len() as u64;
        let garbage: Vec<u8> = (0..777u32).map(|i| (i % 251) as u8 | 1).collect();
        let mut file = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), &tp, 0, "log"))
            .unwrap();
        file.seek(SeekFrom::Start(end)).unwrap();
        file.write_all(&garbage).unwrap();
        drop(file);

        let (log, report) = open(dir.path(), &tp, config(1 << 20), &common::cache()).await;
        assert_eq!(report.truncations.len(), 1, "{report:?}");
        assert_eq!(report.truncations[0].position, FilePos(end));
        assert_eq!(report.truncations[0].bytes, garbage.len() as u64);
        assert_eq!(log.log_end_offset(), Offset(18));
        assert_prefix(&sent, &read_all(&log, Offset(0)).await, 6);
        let len = std::fs::metadata(segment_path(dir.path(), &tp, 0, "log"))
            .unwrap()
            .len();
        assert_eq!(len, end, "the garbage is gone from the file");
        log.close().await.unwrap();
    });
}

// Goal: a flipped byte inside a batch of the active segment truncates the log at that batch
// (its CRC fails); the batches before it survive, and the report names the CRC mismatch.
#[test]
fn flipped_byte_in_active_segment_truncates_there() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("flip-active");
    block_on(async {
        let cache = cache();
        let (log, _) = open(dir.path(), &tp, config(1 << 20), &cache).await;
        let sent = fill(&log, 12).await;
        drop(log);
        let (victim, victim_position) = sent[5].clone();
        flip(
            &segment_path(dir.path(), &tp, 0, "log"),
            victim_position + victim.len() as u64 - 10,
        );

        let (log, report) = open(dir.path(), &tp, config(1 << 20), &common::cache()).await;
        assert_eq!(report.truncations.len(), 1, "{report:?}");
        let truncation = &report.truncations[0];
        assert_eq!(truncation.position, FilePos(victim_position));
        assert!(matches!(
            truncation.reason,
            TruncationReason::InvalidBatch(BatchError::CrcMismatch { .. })
        ));
        // Everything from the bad batch on is discarded; the report measures it up to the last
        // non-zero byte (the preallocated space after it is zeros).
        let rest: Vec<u8> = sent[5..].iter().flat_map(|(b, _)| b.to_vec()).collect();
        let measured = rest.iter().rposition(|byte| *byte != 0).unwrap() as u64 + 1;
        assert_eq!(truncation.bytes, measured);
        assert_eq!(log.log_end_offset(), Offset(15));
        assert_prefix(&sent, &read_all(&log, Offset(0)).await, 5);
        log.close().await.unwrap();
    });
}

fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x40;
    let mut file = OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(&bytes[at as usize..at as usize + 1])
        .unwrap();
}

/// Reads a log of 3-record batches whose third batch (offsets 6..9, at `position` of segment 0)
/// is damaged: from 0 the two batches before it are served, from 6 the read fails with the
/// damage, which this returns.
async fn read_up_to_third_batch(log: &PartitionLog, position: u64) -> BatchError {
    let before = log
        .read(Offset(0), 1 << 20, log.log_end_offset())
        .await
        .unwrap();
    assert_eq!(
        before.batches.len(),
        2,
        "the batches before the bad one are served"
    );
    assert_eq!(before.next_offset, Offset(6));
    match log.read(Offset(6), 1 << 20, log.log_end_offset()).await {
        Err(ReadError::Corrupt {
            segment,
            position: at,
            error,
        }) => {
            assert_eq!(segment, Offset(0));
            assert_eq!(at, FilePos(position));
            error
        }
        other => panic!("expected a corrupt batch error, got {other:?}"),
    }
}

// Goal: a base offset changed on disk in a sealed segment (outside the batch CRC, and not
// scanned at open) is reported as a typed error when read, never a panic; the batches before it
// are served. Method: 40 batches of 3 records in 8 KiB segments, closed cleanly; the third
// batch's base offset (6) set to 9, inside its segment's offsets (the read path refuses any
// outside them already); reopen and read from 0, then from 6.
#[test]
fn changed_base_offset_in_sealed_segment_is_caught_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("rebased-sealed");
    block_on(async {
        let RebasedLog { log, position, .. } = rebase_third_batch(dir.path(), &tp, 9).await;
        let error = read_up_to_third_batch(&log, position).await;
        assert_eq!(
            error,
            BatchError::UnexpectedBaseOffset {
                base_offset: 9,
                expected: 6
            }
        );
        log.close().await.unwrap();
    });
}

// Goal: a timestamp lookup whose answer is a batch with a base offset changed on disk reports
// the batch as corrupt rather than answering with the wrong offset. Method: the third batch
// (6..9, timestamp 1002) rebased to 9 in a sealed segment; look up 1002.
#[test]
fn changed_base_offset_is_caught_by_timestamp_lookup() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("rebased-time");
    block_on(async {
        let RebasedLog { log, position, .. } = rebase_third_batch(dir.path(), &tp, 9).await;
        let result = log.offset_for_timestamp(TimestampMs(1_002)).await;
        let found = match &result {
            Err(ReadError::Corrupt {
                segment,
                position,
                error,
            }) => Some((*segment, *position, error.clone())),
            _ => None,
        };
        assert_third_batch_rebased(found, position, 9, &result);
        let found = log.offset_for_timestamp(TimestampMs(1_001)).await.unwrap();
        assert_eq!(found.unwrap().offset, Offset(3), "batches before it answer");
        log.close().await.unwrap();
    });
}

/// Writes 40 batches of 3 records in 8 KiB segments, closes the log, sets the base offset of
/// the third batch (offsets 6..9, in segment 0) to `rebased`, and reopens it. Returns the log,
/// the third batch's position, and the segment bases.
async fn rebase_third_batch(data: &Path, tp: &TopicPartition, rebased: i64) -> RebasedLog {
    let (log, _) = open(data, tp, config(8 << 10), &cache()).await;
    let sent = fill(&log, 40).await;
    let bases = log.segment_bases();
    assert!(bases.len() >= 4, "8 KiB segments roll: {bases:?}");
    log.close().await.unwrap();
    let (_, position) = sent[2];
    let path = segment_path(data, tp, 0, "log");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = position as usize;
    assert_eq!(bytes[at..at + 8], 6i64.to_be_bytes());
    bytes[at..at + 8].copy_from_slice(&rebased.to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let (log, _) = open(data, tp, config(8 << 10), &cache()).await;
    RebasedLog {
        log,
        position,
        bases,
    }
}

struct RebasedLog {
    log: PartitionLog,
    position: u64,
    bases: Vec<Offset>,
}

/// Checks that `found` (segment, position and error of a corrupt-batch error taken from
/// `result`) names the third batch, at `position` of segment 0, rebased to `rebased`.
fn assert_third_batch_rebased(
    found: Option<(Offset, FilePos, BatchError)>,
    position: u64,
    rebased: i64,
    result: &dyn std::fmt::Debug,
) {
    let Some((segment, at, error)) = found else {
        panic!("expected a corrupt batch error, got {result:?}");
    };
    assert_eq!(segment, Offset(0));
    assert_eq!(at, FilePos(position));
    let expected = BatchError::UnexpectedBaseOffset {
        base_offset: rebased,
        expected: 6,
    };
    assert_eq!(error, expected);
}

/// Truncates at `offset` expecting the changed third batch to be reported as corrupt, with
/// nothing removed: the same segments, and the same log end after a reopen.
async fn truncate_refuses_rebased(data: &Path, tp: &TopicPartition, offset: i64, rebased: i64) {
    let RebasedLog {
        log,
        position,
        bases,
    } = rebase_third_batch(data, tp, rebased).await;
    let end = log.log_end_offset();
    let result = log.truncate_to(Offset(offset)).await;
    let found = match &result {
        Err(AdminError::Corrupt {
            segment,
            position,
            error,
        }) => Some((*segment, *position, error.clone())),
        _ => None,
    };
    assert_third_batch_rebased(found, position, rebased, &result);
    assert_eq!(log.segment_bases(), bases);
    drop(log);
    let (log, _) = open(data, tp, config(8 << 10), &cache()).await;
    assert_eq!(log.segment_bases(), bases, "nothing removed");
    assert_eq!(log.log_end_offset(), end);
    log.close().await.unwrap();
}

// Goal: truncate_to into a sealed segment whose batch holding the offset has a base offset
// raised past it on disk (outside the CRC) reports the batch as corrupt instead of asserting.
// Method: the third batch (6..9) rebased to 7; truncate to 6.
#[test]
fn raised_base_offset_fails_truncation_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    block_on(truncate_refuses_rebased(
        dir.path(),
        &tp("rebased-raised"),
        6,
        7,
    ));
}

// Goal: truncate_to past a batch whose base offset has its sign bit set on disk reports the
// batch as corrupt instead of panicking in the index rebuild of the kept part.
// Method: the third batch (6..9) rebased to `6 | i64::MIN`; truncate to 12, in the same segment.
#[test]
fn negative_base_offset_fails_truncation_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    block_on(truncate_refuses_rebased(
        dir.path(),
        &tp("rebased-negative"),
        12,
        6 | i64::MIN,
    ));
}

// Goal: a flipped byte in a sealed segment below the recovery point is not scanned at open
// (only the tail is), is detected when read (CRC on the disk read path) and reported as a typed
// error; the batches before it are served, and other segments read fine.
#[test]
fn flipped_byte_in_sealed_segment_is_caught_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("flip-sealed");
    block_on(async {
        let cache = cache();
        let (log, _) = open(dir.path(), &tp, config(8 << 10), &cache).await;
        let sent = fill(&log, 40).await;
        let bases = log.segment_bases();
        assert!(bases.len() >= 4, "8 KiB segments roll: {bases:?}");
        log.close().await.unwrap();

        // The third batch of the first segment.
        let (victim, victim_position) = sent[2].clone();
        assert!(header(&victim).record_count == 3);
        flip(
            &segment_path(dir.path(), &tp, 0, "log"),
            victim_position + 70,
        );

        let (log, report) = open(dir.path(), &tp, config(8 << 10), &common::cache()).await;
        assert!(report.truncations.is_empty(), "{report:?}");
        assert!(!report.scanned_segments.contains(&Offset(0)));
        let error = read_up_to_third_batch(&log, victim_position).await;
        assert!(matches!(error, BatchError::CrcMismatch { .. }), "{error}");
        // Later segments are intact.
        let later = read_all(&log, bases[1]).await;
        let first_later = sent
            .iter()
            .position(|(b, _)| payload(b) == payload(&later[0]))
            .unwrap();
        assert_prefix(&sent[first_later..], &later, sent.len() - first_later);
        log.close().await.unwrap();
    });
}

/// Opens the log of `tp` with 8 KiB segments, returning the error rather than panicking.
async fn try_open(
    data: &Path,
    tp: &TopicPartition,
) -> Result<(PartitionLog, sluice_engine::log::RecoveryReport), sluice_engine::log::OpenError> {
    let dir = partition_dir(data, tp);
    PartitionLog::open(dir, tp.clone(), config(8 << 10), cache()).await
}

// Goal: when open truncates a sealed segment the checkpoint lists (its size changed), the
// listed segments after it are deleted only once a checkpoint that no longer lists them is
// durable, so an open that fails on the way (here the checkpoint write) leaves a log the next
// open accepts, with the batches before the damage intact. Method: 40 batches in 8 KiB
// segments, closed cleanly; cut the second segment's file inside its last batch; open with the
// checkpoint's temporary file failing to be created (the open fails), clear it, open again.
#[test]
fn open_truncating_a_listed_segment_survives_a_failed_checkpoint() {
    use sluice_engine::io::faults;
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("cut-listed");
    block_on(async {
        let (log, _) = open(dir.path(), &tp, config(8 << 10), &cache()).await;
        let sent = fill(&log, 40).await;
        let bases = log.segment_bases();
        assert!(bases.len() >= 4, "8 KiB segments roll: {bases:?}");
        log.close().await.unwrap();

        let path = segment_path(dir.path(), &tp, bases[1].0, "log");
        let len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 50)
            .unwrap();
        common::fail_next_checkpoint();
        let opened = try_open(dir.path(), &tp).await;
        faults::clear();
        assert!(opened.is_err(), "the checkpoint write fails the open");

        let opened = try_open(dir.path(), &tp).await;
        let (log, _) = opened.unwrap_or_else(|error| panic!("reopen failed: {error}"));
        let kept = usize::try_from(bases[2].0 / 3 - 1).unwrap();
        assert_eq!(log.log_end_offset(), Offset(kept as i64 * 3));
        assert_prefix(&sent, &read_all(&log, Offset(0)).await, kept);
        log.close().await.unwrap();
    });
}

/// Appends `count` synced batches of 3 records at `epoch` (the first at `first` for their
/// contents) and returns them with their positions in the active segment, which must start
/// with them.
async fn fill_at_epoch(
    log: &PartitionLog,
    epoch: LeaderEpoch,
    first: u64,
    count: u64,
) -> Vec<(Bytes, u64)> {
    let mut out = Vec::new();
    let mut position = 0u64;
    for i in first..first + count {
        let b = batch(3, 200 + (i as usize * 13) % 300, 1_000 + i as i64, i);
        log.append(b.clone(), epoch, Durability::Synced)
            .await
            .unwrap();
        let len = b.len() as u64;
        out.push((b, position));
        position += len;
    }
    out
}

// Goal: a leader epoch field damaged on disk in the scanned tail (it lies outside the batch
// CRC, so the batch passes every check) is not learned: after a crash the log reopens with
// every batch intact, the report names the damaged batch, the epoch cache is what the batches
// really say, and appends of the real epoch succeed; a newer epoch written just before a later
// crash is still learned.
// Method: epoch 5 throughout; 4 batches, a forced roll (the epoch file and checkpoint name
// epoch 5), 6 batches in the active segment; drop the log (a crash); overwrite the epoch of the
// active segment's third batch (offsets 18..21), 5, with 0x7fff0005; reopen and append at 5.
// Then append at epoch 6, crash again, reopen: 6 is learned from its one batch.
#[test]
fn damaged_epoch_field_in_the_tail_is_not_learned() {
    let dir = tempfile::tempdir().unwrap();
    let tp = tp("damaged-epoch");
    let damaged = 0x7fff_0005;
    block_on(async {
        let (log, _) = open(dir.path(), &tp, config(1 << 20), &cache()).await;
        let mut sent = fill_at_epoch(&log, LeaderEpoch(5), 0, 4).await;
        log.roll().await.unwrap();
        let active = fill_at_epoch(&log, LeaderEpoch(5), 4, 6).await;
        sent.extend(active.iter().cloned());
        assert_eq!(log.segment_bases(), vec![Offset(0), Offset(12)]);
        drop(log);
        let path = segment_path(dir.path(), &tp, 12, "log");
        let at = active[2].1 + 12;
        let mut file = OpenOptions::new().write(true).open(&path).unwrap();
        file.seek(SeekFrom::Start(at)).unwrap();
        file.write_all(&i32::to_be_bytes(damaged)).unwrap();
        drop(file);

        let (log, report) = open(dir.path(), &tp, config(1 << 20), &cache()).await;
        let next = batch(3, 100, 2_000, 100);
        let appended = log
            .append(next.clone(), LeaderEpoch(5), Durability::Synced)
            .await;
        let info = appended.unwrap_or_else(|error| panic!("append at the real epoch: {error}"));
        assert_eq!(info.base_offset, Offset(30));
        let real = vec![EpochEntry {
            epoch: LeaderEpoch(5),
            start_offset: Offset(0),
        }];
        assert_eq!(log.leader_epochs(), real);
        assert_eq!(log.latest_epoch(), Some(LeaderEpoch(5)));
        assert_eq!(report.scanned_segments, vec![Offset(12)], "{report:?}");
        assert!(report.truncations.is_empty(), "{report:?}");
        assert_eq!(
            report.damaged_epochs,
            vec![DamagedEpoch {
                offset: Offset(18),
                epoch: LeaderEpoch(damaged),
            }]
        );
        assert!(!report.is_clean());
        sent.push((next, 0));
        assert_prefix(&sent, &read_all(&log, Offset(0)).await, sent.len());
        assert_eq!(
            header(&read_all(&log, Offset(18)).await[0]).leader_epoch,
            LeaderEpoch(damaged),
            "the damaged batch itself is kept as stored"
        );

        // A newer leader's first batch, written just before a crash, is learned.
        let newer = batch(3, 100, 2_001, 101);
        log.append(newer.clone(), LeaderEpoch(6), Durability::Synced)
            .await
            .unwrap();
        sent.push((newer, 0));
        drop(log);
        let (log, report) = open(dir.path(), &tp, config(1 << 20), &cache()).await;
        assert_eq!(report.damaged_epochs.len(), 1, "{report:?}");
        let mut learned = real.clone();
        learned.push(EpochEntry {
            epoch: LeaderEpoch(6),
            start_offset: Offset(33),
        });
        assert_eq!(log.leader_epochs(), learned);
        assert_prefix(&sent, &read_all(&log, Offset(0)).await, sent.len());
        let stale = log
            .append(batch(1, 10, 2_002, 102), LeaderEpoch(5), Durability::Synced)
            .await;
        assert!(
            matches!(stale, Err(AppendError::StaleEpoch { .. })),
            "{stale:?}"
        );
        log.append(batch(1, 10, 2_002, 102), LeaderEpoch(6), Durability::Synced)
            .await
            .unwrap();
        log.close().await.unwrap();
    });
}
