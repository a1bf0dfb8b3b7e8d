//! Append, read, roll, reopen and group commit of the partition log on real files through the
//! DMA facade.

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

mod common;

use common::{append, batch, cache, config, header, open, payload, read_all, tp};
use futures::future::join_all;
use sluice_engine::log::{AppendError, AppendWindow, Durability, LogConfig, ReadError};
use sluice_engine::rt::block_on;
use sluice_engine::{LeaderEpoch, Offset};

// Goal: appended batches come back byte-for-byte (except the assigned base offset and epoch)
// from the cache, from disk, and after a clean reopen.
// Method: append batches of varied sizes, read them with a cold cache and a warm one, close,
// reopen and read again.
#[test]
fn append_read_reopen_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("round-trip");
        let cache = cache();
        let (log, report) = open(dir.path(), &tp, config(64 << 10), &cache).await;
        assert!(report.created);
        let mut sent = Vec::new();
        for i in 0..40u64 {
            let b = batch(
                1 + (i as usize % 5),
                100 + 37 * i as usize,
                1_000 + i as i64,
                i,
            );
            let base = append(&log, b.clone(), Durability::Written).await;
            assert_eq!(
                base,
                Offset(
                    sent.iter()
                        .map(|b: &bytes::Bytes| header(b).record_count as i64)
                        .sum()
                )
            );
            sent.push(b);
        }
        assert!(log.segment_count() > 1, "64 KiB segments roll");
        let cached = read_all(&log, Offset(0)).await;
        check_same(&sent, &cached);
        log.close().await.unwrap();

        let cold = common::cache();
        let (log, report) = open(dir.path(), &tp, config(64 << 10), &cold).await;
        assert!(report.clean_shutdown, "{report:?}");
        assert!(report.scanned_segments.is_empty());
        let from_disk = read_all(&log, Offset(0)).await;
        check_same(&sent, &from_disk);
        assert!(log.stats().disk_reads > 0);
        assert_eq!(log.stats().cache_reads, 0);
        log.close().await.unwrap();
    });
}

fn check_same(sent: &[bytes::Bytes], got: &[bytes::Bytes]) {
    assert_eq!(sent.len(), got.len());
    let mut next = 0i64;
    for (s, g) in sent.iter().zip(got) {
        assert_eq!(payload(s), payload(g));
        let h = header(g);
        assert_eq!(h.base_offset, Offset(next));
        assert_eq!(h.leader_epoch, LeaderEpoch(1));
        next = h.next_offset().0;
    }
}

// Goal: an append window keeps at most its limit in flight, stores every batch in staging
// order across several write rounds' worth, and reports a rejected append when it is awaited
// without losing what was stored before it.
// Method: 60 batches of ~30 KiB (about two write rounds) through a window of 4, checked after
// every call; read back and compare; then an append with an epoch below the log's latest, whose
// error `finish` returns, and one more append that still lands after the stored batches.
#[test]
fn append_window_keeps_its_limit_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("window");
        let (log, _) = open(dir.path(), &tp, config(64 << 20), &cache()).await;
        let mut window = AppendWindow::new(4);
        let mut sent = Vec::new();
        for i in 0..60u64 {
            let b = batch(3, 10_000, 1_000 + i as i64, i);
            window
                .append(&log, b.clone(), LeaderEpoch(1), Durability::Written)
                .await
                .unwrap();
            assert!(window.len() <= 4, "{} appends in flight", window.len());
            sent.push(b);
        }
        assert!(!window.is_empty());
        window.finish().await.unwrap();
        check_same(&sent, &read_all(&log, Offset(0)).await);

        let mut window = AppendWindow::new(4);
        let b = batch(1, 100, 2_000, 99);
        window
            .append(&log, b, LeaderEpoch(0), Durability::Written)
            .await
            .unwrap();
        let error = window.finish().await.unwrap_err();
        assert!(
            matches!(error, AppendError::StaleEpoch { .. }),
            "a stale epoch: {error:?}"
        );
        let last = batch(2, 100, 3_000, 100);
        let mut window = AppendWindow::new(1);
        window
            .append(&log, last.clone(), LeaderEpoch(1), Durability::Written)
            .await
            .unwrap();
        window.finish().await.unwrap();
        sent.push(last);
        check_same(&sent, &read_all(&log, Offset(0)).await);
        log.close().await.unwrap();
    });
}

// Goal: reads honour the offset range rules: mid-batch start returns the containing batch, at
// least one batch even past max_bytes, nothing past `upper`, typed errors outside the log.
#[test]
fn read_bounds() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("bounds");
        let cache = cache();
        let (log, _) = open(dir.path(), &tp, config(1 << 20), &cache).await;
        for i in 0..5 {
            append(&log, batch(10, 500, 0, i), Durability::Written).await;
        }
        // Offsets 0..50, ten per batch.
        let slice = log.read(Offset(13), 1, Offset(50)).await.unwrap();
        assert_eq!(
            slice.batches.len(),
            1,
            "at least one batch even over max_bytes"
        );
        assert_eq!(header(&slice.batches[0]).base_offset, Offset(10));
        assert_eq!(slice.next_offset, Offset(20));
        let slice = log.read(Offset(0), 1 << 20, Offset(25)).await.unwrap();
        assert_eq!(
            slice.next_offset,
            Offset(20),
            "the batch holding 25 ends past upper"
        );
        let slice = log.read(Offset(50), 1 << 20, Offset(50)).await.unwrap();
        assert!(slice.is_empty());
        assert!(matches!(
            log.read(Offset(51), 1 << 20, Offset(60)).await,
            Err(ReadError::OffsetOutOfRange {
                requested: Offset(51),
                log_end: Offset(50),
                ..
            })
        ));
        log.close().await.unwrap();
    });
}

// Goal: concurrent Synced appends share fdatasyncs (group commit) and all resolve.
// Method: issue 200 appends without awaiting in between, then await all; count syncs.
#[test]
fn group_commit_shares_syncs() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("group");
        let cache = cache();
        let (log, _) = open(dir.path(), &tp, config(1 << 20), &cache).await;
        let pending: Vec<_> = (0..200)
            .map(|i| log.append(batch(1, 100, 0, i), LeaderEpoch(0), Durability::Synced))
            .collect();
        let offsets: Vec<Offset> = pending
            .iter()
            .map(|p| p.info().unwrap().base_offset)
            .collect();
        assert_eq!(
            offsets,
            (0..200).map(Offset).collect::<Vec<_>>(),
            "call order is log order"
        );
        for result in join_all(pending).await {
            result.unwrap();
        }
        let stats = log.stats();
        assert_eq!(stats.appends, 200);
        assert!(stats.syncs >= 1);
        assert!(stats.syncs < 20, "syncs are shared: {stats:?}");
        assert!(stats.writes < 20, "writes are shared: {stats:?}");
        log.close().await.unwrap();
    });
}

// Goal: flush.messages and flush.ms sync without any Synced append.
#[test]
fn flush_policies_sync_in_background() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let by_messages = LogConfig {
            flush_messages: Some(3),
            ..config(1 << 20)
        };
        let cache = cache();
        let (log, _) = open(dir.path(), &tp("flush-messages"), by_messages, &cache).await;
        append(&log, batch(2, 10, 0, 0), Durability::Written).await;
        log.flush().await;
        assert_eq!(log.stats().syncs, 0);
        append(&log, batch(2, 10, 0, 1), Durability::Written).await;
        log.flush().await;
        assert_eq!(
            log.stats().syncs,
            1,
            "4 unsynced records reach flush.messages = 3"
        );
        log.close().await.unwrap();

        let by_time = LogConfig {
            flush_ms: Some(5),
            ..config(1 << 20)
        };
        let (log, _) = open(dir.path(), &tp("flush-ms"), by_time, &cache).await;
        append(&log, batch(1, 10, 0, 0), Durability::Written).await;
        let deadline = sluice_engine::rt::clock::now() + std::time::Duration::from_secs(10);
        while log.stats().syncs == 0 {
            assert!(
                sluice_engine::rt::clock::now() < deadline,
                "flush.ms never synced"
            );
            sluice_engine::rt::sleep(std::time::Duration::from_millis(1)).await;
        }
        log.close().await.unwrap();
    });
}

// Goal: a tailing reader (reading right after each append) is served from the batch cache and
// never touches the disk; a reader that falls behind the cache budget reads from disk.
#[test]
fn tailing_readers_never_touch_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("tail");
        let small = std::rc::Rc::new(sluice_engine::log::BatchCache::new(64 << 10));
        let (log, _) = open(dir.path(), &tp, config(1 << 20), &small).await;
        let mut next = Offset(0);
        for i in 0..200 {
            append(&log, batch(2, 1_000, 0, i), Durability::Written).await;
            let slice = log.read(next, 1 << 20, log.log_end_offset()).await.unwrap();
            assert_eq!(slice.batches.len(), 1);
            next = slice.next_offset;
        }
        assert_eq!(log.stats().disk_reads, 0, "{:?}", log.stats());
        assert_eq!(log.stats().cache_reads, 200);
        assert!(
            small.used_bytes() <= 64 << 10,
            "the cache stays within its budget"
        );
        assert!(small.stats().evictions > 0);
        // The beginning was evicted: reading it goes to disk.
        let slice = log
            .read(Offset(0), 1 << 20, log.log_end_offset())
            .await
            .unwrap();
        assert!(!slice.is_empty());
        assert_eq!(log.stats().disk_reads, 1);
        log.close().await.unwrap();
    });
}

// Goal: segment.ms rolls by record timestamps (Kafka's rule: the incoming batch's max timestamp
// against the active segment's first batch's).
#[test]
fn segment_ms_rolls_by_record_time() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("segment-ms");
        let config = LogConfig {
            segment_ms: 1_000,
            ..config(1 << 20)
        };
        let (log, _) = open(dir.path(), &tp, config, &cache()).await;
        for (i, timestamp) in [0, 500, 1_000, 1_001, 1_500, 2_001, 2_002]
            .into_iter()
            .enumerate()
        {
            append(&log, batch(1, 10, timestamp, i as u64), Durability::Written).await;
        }
        // First batches at 0 and 1_001 start segments; 1_001 - 0 > 1000 and 2_002 - 1_001 > 1000.
        assert_eq!(log.segment_bases(), vec![Offset(0), Offset(3), Offset(6)]);
        log.close().await.unwrap();
    });
}

// Goal: remove deletes the partition's directory and leaves the log closed.
#[test]
fn remove_deletes_everything() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("remove");
        let (log, _) = open(dir.path(), &tp, config(8 << 10), &cache()).await;
        for i in 0..20 {
            append(&log, batch(2, 500, 0, i), Durability::Written).await;
        }
        let path = log.dir().to_path_buf();
        assert!(path.join("00000000000000000000.log").exists());
        log.remove().await.unwrap();
        assert!(!path.exists());
        let result = log
            .append(batch(1, 1, 0, 0), LeaderEpoch(0), Durability::Written)
            .await;
        assert!(matches!(
            result,
            Err(sluice_engine::log::AppendError::Closed)
        ));
        assert!(matches!(
            log.read(Offset(0), 1, Offset(1)).await,
            Err(ReadError::Closed)
        ));
        let (log, report) = open(dir.path(), &tp, config(8 << 10), &cache()).await;
        assert!(report.created);
        assert_eq!(log.log_end_offset(), Offset(0));
        log.close().await.unwrap();
    });
}
