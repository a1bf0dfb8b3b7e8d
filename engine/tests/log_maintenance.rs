//! Retention (by time, by size, below the log start), delete-records, reads across segment
//! boundaries, timestamp lookups, follower truncation and follower appends, on real files.

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::{append, batch, cache, config, header, open, payload, read_all, tp};
use sluice_engine::log::{AdminError, AppendError, Durability, LogConfig, ReadError};
use sluice_engine::rt::block_on;
use sluice_engine::{LeaderEpoch, Offset, TimestampMs};

/// Appends `count` batches of 2 records with timestamps `first_ts + 1000 * i`.
async fn fill(log: &sluice_engine::log::PartitionLog, count: u64, first_ts: i64) -> Vec<Bytes> {
    let mut sent = Vec::new();
    for i in 0..count {
        let b = batch(2, 900, first_ts + 1_000 * i as i64, i);
        append(log, b.clone(), Durability::Written).await;
        sent.push(b);
    }
    sent
}

// Goal: a read that spans segments returns contiguous batches across the boundaries, from the
// cache and from disk alike.
#[test]
fn reads_cross_segment_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("boundaries");
        let (log, _) = open(dir.path(), &tp, config(8 << 10), &common::cache()).await;
        let sent = fill(&log, 30, 0).await;
        log.set_high_watermark(log.log_end_offset());
        let bases = log.segment_bases();
        assert!(bases.len() >= 5, "{bases:?}");
        log.close().await.unwrap();
        let (log, _) = open(dir.path(), &tp, config(8 << 10), &common::cache()).await;
        // Start in the middle of the first segment; one read spans several segments.
        let slice = log
            .read(Offset(3), 40 << 10, log.log_end_offset())
            .await
            .unwrap();
        let first = header(&slice.batches[0]).base_offset;
        assert_eq!(first, Offset(2));
        assert!(header(slice.batches.last().unwrap()).base_offset > bases[2]);
        for (i, got) in slice.batches.iter().enumerate() {
            assert_eq!(payload(got), payload(&sent[1 + i]));
        }
        assert_eq!(read_all(&log, Offset(0)).await.len(), 30);
        log.close().await.unwrap();
    });
}

// Goal: retention.ms deletes the oldest sealed segments whose max timestamp is older than
// now - retention.ms, never the active segment; the log start offset follows and persists.
#[test]
fn retention_by_time() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("retention-time");
        let config = LogConfig {
            retention_ms: Some(10_000),
            ..config(8 << 10)
        };
        let (log, _) = open(dir.path(), &tp, config, &cache()).await;
        let sent = fill(&log, 30, 0).await;
        log.set_high_watermark(log.log_end_offset());
        let bases = log.segment_bases();
        // Segment i holds the batches with timestamps up to its last batch's.
        let report = log.apply_retention(TimestampMs(0)).await.unwrap();
        assert!(report.deleted_segments.is_empty(), "nothing is old yet");
        // now - retention = 15_000: segments whose max timestamp is below 15_000 go.
        let report = log.apply_retention(TimestampMs(25_000)).await.unwrap();
        let kept_first = log.segment_bases()[0];
        assert!(!report.deleted_segments.is_empty());
        assert_eq!(
            report.deleted_segments,
            bases[..report.deleted_segments.len()]
        );
        assert_eq!(log.log_start_offset(), kept_first);
        assert_eq!(report.log_start_offset, kept_first);
        // Every deleted segment's batches were older than 15_000; the first kept one is not.
        let first_kept_batch = (kept_first.0 / 2) as usize;
        assert!(header(&sent[first_kept_batch - 1]).max_timestamp.0 < 15_000);
        let kept_segment_last = (log.segment_bases()[1].0 / 2 - 1) as usize;
        assert!(header(&sent[kept_segment_last]).max_timestamp.0 >= 15_000);
        assert!(matches!(
            log.read(Offset(0), 1 << 20, log.log_end_offset()).await,
            Err(ReadError::OffsetOutOfRange { log_start, .. }) if log_start == kept_first
        ));
        // Everything expired: all sealed segments go, the active one stays.
        log.apply_retention(TimestampMs(1_000_000)).await.unwrap();
        assert_eq!(log.segment_count(), 1);
        assert_eq!(log.segment_bases()[0], *bases.last().unwrap());
        log.close().await.unwrap();
        let (log, report) = open(dir.path(), &tp, config, &cache()).await;
        assert!(report.clean_shutdown);
        assert_eq!(log.log_start_offset(), *bases.last().unwrap());
        assert_eq!(log.log_end_offset(), Offset(60));
        log.close().await.unwrap();
    });
}

// Goal: retention.bytes deletes the oldest sealed segments while the rest stays at least that
// large (Kafka's rule).
#[test]
fn retention_by_size() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("retention-size");
        let config = LogConfig {
            retention_bytes: Some(20 << 10),
            retention_ms: None,
            ..config(8 << 10)
        };
        let (log, _) = open(dir.path(), &tp, config, &cache()).await;
        fill(&log, 40, 0).await;
        // Nothing is deleted past the high watermark: here it covers the first segment only.
        log.set_high_watermark(log.segment_bases()[1]);
        let report = log.apply_retention(TimestampMs(i64::MAX)).await.unwrap();
        assert_eq!(report.deleted_segments.len(), 1, "{report:?}");
        log.set_high_watermark(log.log_end_offset());
        let before = log.size_bytes();
        let sizes_before = log.segment_count();
        let report = log.apply_retention(TimestampMs(i64::MAX)).await.unwrap();
        let after = log.size_bytes();
        assert_eq!(before - after, report.deleted_bytes);
        assert!(
            after >= 20 << 10,
            "at least retention.bytes remains: {after}"
        );
        assert_eq!(
            log.segment_count(),
            sizes_before - report.deleted_segments.len()
        );
        // Deleting one more segment would go below retention.bytes.
        let first = log.segments()[0];
        assert!(after - first.size_bytes < 20 << 10);
        let again = log.apply_retention(TimestampMs(i64::MAX)).await.unwrap();
        assert!(again.deleted_segments.is_empty(), "idempotent");
        log.close().await.unwrap();
    });
}

// Goal: delete_records advances the log start (persisted), deletes whole segments below it,
// and rejects offsets past the end.
#[test]
fn delete_records_advances_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("delete-records");
        let (log, _) = open(dir.path(), &tp, config(8 << 10), &cache()).await;
        fill(&log, 30, 0).await;
        let bases = log.segment_bases();
        let target = bases[2].plus(1);
        let report = log.delete_records(target).await.unwrap();
        assert_eq!(report.deleted_segments, bases[..2]);
        assert_eq!(log.log_start_offset(), target);
        let slice = log.read(target, 1, log.log_end_offset()).await.unwrap();
        assert_eq!(
            header(&slice.batches[0]).base_offset,
            bases[2],
            "containing batch"
        );
        assert!(matches!(
            log.delete_records(Offset(61)).await,
            Err(AdminError::OffsetOutOfRange { .. })
        ));
        drop(log); // Unclean: the checkpoint alone carries the log start.
        let (log, _) = open(dir.path(), &tp, config(8 << 10), &cache()).await;
        assert_eq!(log.log_start_offset(), target);
        assert_eq!(log.segment_bases()[0], bases[2]);
        log.close().await.unwrap();
    });
}

// Goal: offset_for_timestamp returns the first batch whose max timestamp reaches the target,
// across segments and through the time index.
#[test]
fn offset_for_timestamp_finds_first_batch() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("timestamps");
        let config = LogConfig {
            index_interval_bytes: 1,
            ..config(8 << 10)
        };
        let (log, _) = open(dir.path(), &tp, config, &cache()).await;
        fill(&log, 30, 100_000).await;
        for (target, expected) in [
            (0, Some(0)),
            (100_000, Some(0)),
            (100_001, Some(2)),
            (112_000, Some(24)),
            (129_000, Some(58)),
            (129_001, None),
        ] {
            let found = log.offset_for_timestamp(TimestampMs(target)).await.unwrap();
            assert_eq!(found.map(|f| f.offset.0), expected, "target {target}");
        }
        log.close().await.unwrap();
    });
}

// Goal: truncate_to removes the batch containing the offset and everything after, across
// segments, persists, and lets appends continue from the new end.
#[test]
fn truncate_to_cuts_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("truncate");
        let (log, _) = open(dir.path(), &tp, config(8 << 10), &cache()).await;
        let sent = fill(&log, 30, 0).await;
        log.set_high_watermark(Offset(60));
        let bases = log.segment_bases();
        let target = bases[1].plus(3);
        let end = log.truncate_to(target).await.unwrap();
        assert_eq!(
            end,
            bases[1].plus(2),
            "the batch containing the offset goes"
        );
        assert_eq!(log.log_end_offset(), end);
        assert_eq!(log.high_watermark(), end);
        assert_eq!(log.segment_count(), 2);
        let got = read_all(&log, Offset(0)).await;
        assert_eq!(got.len(), (end.0 / 2) as usize);
        assert_eq!(
            append(&log, batch(1, 10, 0, 77), Durability::Synced).await,
            end
        );
        assert_eq!(
            log.truncate_to(Offset(1_000)).await.unwrap(),
            end.plus(1),
            "no-op past end"
        );
        log.close().await.unwrap();
        let (log, report) = open(dir.path(), &tp, config(8 << 10), &cache()).await;
        assert!(report.clean_shutdown);
        assert_eq!(log.log_end_offset(), end.plus(1));
        let got = read_all(&log, Offset(0)).await;
        for (s, g) in sent.iter().zip(&got[..got.len() - 1]) {
            assert_eq!(payload(s), payload(g));
        }
        log.close().await.unwrap();
    });
}

/// A batch carrying `base` as its base offset (written by hand: the batch module refuses
/// negative offsets, which is what this test feeds the log).
fn with_base(b: &Bytes, base: i64) -> Bytes {
    let mut owned = BytesMut::from(&b[..]);
    owned[..8].copy_from_slice(&base.to_be_bytes());
    owned.freeze()
}

// Goal: follower appends keep the batches' offsets and epochs and must continue the log exactly;
// gaps, overlaps and negative offsets are rejected with nothing stored.
#[test]
fn append_replicated_checks_continuity() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("follower");
        let (log, _) = open(dir.path(), &tp, config(1 << 20), &cache()).await;
        let b = batch(3, 50, 5, 1);
        let info = log
            .append_replicated(with_base(&b, 0), Durability::Synced)
            .await
            .unwrap();
        assert_eq!((info.base_offset, info.last_offset), (Offset(0), Offset(2)));
        let two: Bytes = [with_base(&b, 3), with_base(&b, 6)].concat().into();
        log.append_replicated(two, Durability::Written)
            .await
            .unwrap();
        for (base, expected) in [(10, 9), (8, 9), (-3, 9)] {
            let result = log
                .append_replicated(with_base(&b, base), Durability::Written)
                .await;
            match result {
                Err(AppendError::OffsetMismatch {
                    expected: e, found, ..
                }) => {
                    assert_eq!((e, found), (Offset(expected), Offset(base)));
                }
                other => panic!("base {base}: {other:?}"),
            }
        }
        // A gap inside the record set is caught before anything is stored.
        let gapped: Bytes = [with_base(&b, 9), with_base(&b, 13)].concat().into();
        assert!(matches!(
            log.append_replicated(gapped, Durability::Written).await,
            Err(AppendError::OffsetMismatch { index: 1, .. })
        ));
        assert_eq!(log.log_end_offset(), Offset(9));
        let got = read_all(&log, Offset(0)).await;
        assert_eq!(got.len(), 3);
        let sent_epoch = header(&b).leader_epoch;
        assert!(
            got.iter().all(|g| header(g).leader_epoch == sent_epoch),
            "epochs kept"
        );
        assert_ne!(sent_epoch, LeaderEpoch(1));
        log.close().await.unwrap();
    });
}
