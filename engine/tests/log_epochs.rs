//! The leader-epoch cache and the follower append: leader appends stamp and record epochs,
//! `end_offset_for_epoch` answers OffsetsForLeaderEpoch, follower appends keep the leader's
//! offsets and epochs and refuse what does not continue the log, truncation, failed writes and
//! delete-records cut the cache, and the cache survives clean closes, crashes, and a torn or
//! garbage `leader-epoch.checkpoint` (rebuilt from the batch headers).

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use bytes::{Bytes, BytesMut};
use common::{batch, cache, config, header, open, payload, read_all, tp};
use sluice_engine::io::faults::{self, Failure, Op, Plan};
use sluice_engine::log::{
    AppendError, CheckpointStatus, Durability, EpochEntry, PartitionLog, partition_dir,
};
use sluice_engine::rt::block_on;
use sluice_engine::{LeaderEpoch, Offset};

const EPOCH_FILE: &str = "leader-epoch.checkpoint";

fn entries(pairs: &[(i32, i64)]) -> Vec<EpochEntry> {
    pairs
        .iter()
        .map(|&(epoch, start)| EpochEntry {
            epoch: LeaderEpoch(epoch),
            start_offset: Offset(start),
        })
        .collect()
}

/// Appends a two-record batch as leader of `epoch`; returns its base offset.
async fn lead(log: &PartitionLog, epoch: i32, seed: u64) -> Offset {
    log.append(
        batch(2, 200, 0, seed),
        LeaderEpoch(epoch),
        Durability::Written,
    )
    .await
    .expect("leader append succeeds")
    .base_offset
}

/// Appends epochs 1 (offsets 0..6), 3 (6..10) and 4 (10..16) as leader: eight batches.
async fn three_epochs(log: &PartitionLog) {
    for (i, epoch) in [1, 1, 1, 3, 3, 4, 4, 4].into_iter().enumerate() {
        lead(log, epoch, i as u64).await;
    }
}

fn epoch_query(log: &PartitionLog, epoch: i32) -> (i32, i64) {
    let (epoch, end) = log.end_offset_for_epoch(LeaderEpoch(epoch));
    (epoch.0, end.0)
}

// Goal: a leader append stamps its epoch into every batch header and the first batch of each
// new epoch adds a cache entry; a deposed leader's lower epoch is refused with nothing stored;
// OffsetsForLeaderEpoch answers follow the entries.
#[test]
fn leader_appends_stamp_and_record_epochs() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let (log, _) = open(dir.path(), &tp("lead"), config(1 << 20), &cache()).await;
        assert_eq!(log.latest_epoch(), None);
        assert_eq!(epoch_query(&log, 0), (0, 0));
        three_epochs(&log).await;
        assert_eq!(log.leader_epochs(), entries(&[(1, 0), (3, 6), (4, 10)]));
        assert_eq!(log.latest_epoch(), Some(LeaderEpoch(4)));
        let stamped: Vec<i32> = read_all(&log, Offset(0))
            .await
            .iter()
            .map(|b| header(b).leader_epoch.0)
            .collect();
        assert_eq!(stamped, [1, 1, 1, 3, 3, 4, 4, 4]);
        for (asked, answer) in [(0, (0, 0)), (1, (1, 6)), (2, (1, 6)), (3, (3, 10))] {
            assert_eq!(epoch_query(&log, asked), answer, "epoch {asked}");
        }
        assert_eq!(epoch_query(&log, 4), (4, 16));
        assert_eq!(epoch_query(&log, 9), (4, 16));

        let stale = log
            .append(batch(1, 10, 0, 99), LeaderEpoch(3), Durability::Written)
            .await;
        assert!(
            matches!(
                stale,
                Err(AppendError::StaleEpoch {
                    epoch: LeaderEpoch(3),
                    latest: LeaderEpoch(4)
                })
            ),
            "{stale:?}"
        );
        assert_eq!(log.log_end_offset(), Offset(16));
        assert_eq!(log.leader_epochs().len(), 3);
        log.close().await.unwrap();
    });
}

// Goal: a follower's log built with `append_replicated` from the leader's stored batches is
// byte-identical to the leader's and has the same epoch cache; batches that would make epochs go
// backwards, that skip offsets or that fail their CRC are refused with nothing stored.
#[test]
fn replicated_appends_keep_offsets_and_epochs() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let cache = cache();
        let (leader, _) = open(dir.path(), &tp("leader"), config(1 << 20), &cache).await;
        let (follower, _) = open(dir.path(), &tp("follower"), config(1 << 20), &cache).await;
        three_epochs(&leader).await;
        let stored = read_all(&leader, Offset(0)).await;
        // Two batches per call, as a fetch response would carry them.
        for pair in stored[..6].chunks(2) {
            let set: Bytes = pair.concat().into();
            follower
                .append_replicated(set, Durability::Synced)
                .await
                .unwrap();
        }
        // A batch of epoch 3 after epoch 4 data: refused.
        let regress = follower
            .append_replicated(with_epoch(&stored[6], 3), Durability::Written)
            .await;
        assert!(
            matches!(
                regress,
                Err(AppendError::EpochRegression {
                    index: 0,
                    epoch: LeaderEpoch(3),
                    latest: LeaderEpoch(4)
                })
            ),
            "{regress:?}"
        );
        // A regression inside one record set is caught before anything is stored.
        let set: Bytes = [with_epoch(&stored[6], 6), with_epoch(&stored[7], 5)]
            .concat()
            .into();
        let inner = follower.append_replicated(set, Durability::Written).await;
        assert!(
            matches!(inner, Err(AppendError::EpochRegression { index: 1, .. })),
            "{inner:?}"
        );
        // Skipping a batch: offset mismatch.
        let gap = follower
            .append_replicated(stored[7].clone(), Durability::Written)
            .await;
        assert!(
            matches!(gap, Err(AppendError::OffsetMismatch { index: 0, .. })),
            "{gap:?}"
        );
        // A flipped payload byte: CRC mismatch.
        let mut torn = BytesMut::from(&stored[6][..]);
        let last = torn.len() - 1;
        torn[last] ^= 0x40;
        let corrupt = follower
            .append_replicated(torn.freeze(), Durability::Written)
            .await;
        assert!(
            matches!(corrupt, Err(AppendError::InvalidBatch { index: 0, .. })),
            "{corrupt:?}"
        );
        assert_eq!(follower.log_end_offset(), Offset(12));
        let rest: Bytes = stored[6..].concat().into();
        follower
            .append_replicated(rest, Durability::Written)
            .await
            .unwrap();
        assert_eq!(read_all(&follower, Offset(0)).await, stored);
        assert_eq!(follower.leader_epochs(), leader.leader_epochs());
        leader.close().await.unwrap();
        follower.close().await.unwrap();
    });
}

/// The batch with its partition-leader-epoch field set (outside the CRC, so still valid).
fn with_epoch(b: &Bytes, epoch: i32) -> Bytes {
    let mut owned = BytesMut::from(&b[..]);
    sluice_engine::batch::set_leader_epoch(&mut owned, LeaderEpoch(epoch));
    owned.freeze()
}

// Goal: truncation removes the entries at or past the new end (so a re-elected follower's log
// answers for what it holds), a failed write removes the entries its rolled-back offsets
// carried, and delete-records prunes entries wholly below the new log start.
#[test]
fn truncation_failed_writes_and_delete_records_cut_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let (log, _) = open(dir.path(), &tp("cut"), config(4096), &cache()).await;
        three_epochs(&log).await;
        assert_eq!(log.truncate_to(Offset(10)).await.unwrap(), Offset(10));
        assert_eq!(log.leader_epochs(), entries(&[(1, 0), (3, 6)]));
        assert_eq!(epoch_query(&log, 4), (3, 10));
        // Truncating into the middle of a batch cuts the whole batch.
        assert_eq!(log.truncate_to(Offset(7)).await.unwrap(), Offset(6));
        assert_eq!(log.leader_epochs(), entries(&[(1, 0)]));

        // A write that fails takes the entry of its new epoch with it.
        faults::inject(Plan {
            op: Op::Write,
            path_contains: ".log".into(),
            skip: 0,
            count: 1,
            failure: Failure::Io,
        });
        let failed = log
            .append(batch(1, 10, 0, 50), LeaderEpoch(5), Durability::Written)
            .await;
        faults::clear();
        assert!(matches!(failed, Err(AppendError::Io(_))), "{failed:?}");
        assert_eq!(log.leader_epochs(), entries(&[(1, 0)]));
        assert_eq!(lead(&log, 5, 51).await, Offset(6));
        assert_eq!(lead(&log, 6, 52).await, Offset(8));
        assert_eq!(log.leader_epochs(), entries(&[(1, 0), (5, 6), (6, 8)]));

        log.roll().await.unwrap();
        log.delete_records(Offset(7)).await.unwrap();
        // Epoch 1 ends at 6, below the log start: pruned. Epoch 5 covers 7 and keeps its start.
        assert_eq!(log.leader_epochs(), entries(&[(5, 6), (6, 8)]));
        assert_eq!(epoch_query(&log, 1), (1, 7));
        assert_eq!(epoch_query(&log, 5), (5, 8));
        log.close().await.unwrap();
        let (log, report) = open(dir.path(), &tp("cut"), config(4096), &cache()).await;
        assert_eq!(report.epoch_checkpoint, CheckpointStatus::Valid);
        assert_eq!(log.leader_epochs(), entries(&[(5, 6), (6, 8)]));
        log.close().await.unwrap();
    });
}

/// Many epochs over many small segments, so recovery has sealed segments to trust or walk.
async fn many_epochs(log: &PartitionLog) -> Vec<EpochEntry> {
    let mut expected = Vec::new();
    for epoch in 0..12 {
        let start = lead(log, epoch, epoch as u64 * 100).await;
        expected.push(EpochEntry {
            epoch: LeaderEpoch(epoch),
            start_offset: start,
        });
        for i in 0..(epoch % 4) {
            lead(log, epoch, epoch as u64 * 100 + i as u64 + 1).await;
        }
    }
    assert!(log.segment_count() > 3, "the test needs sealed segments");
    expected
}

fn epoch_path(data: &Path, name: &str) -> std::path::PathBuf {
    partition_dir(data, &tp(name)).join(EPOCH_FILE)
}

// Goal: the cache is the same after a clean close and after a crash (the log dropped without
// close: the tail is scanned and its epochs rebuilt from the headers).
#[test]
fn epochs_survive_close_and_crash() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let (log, _) = open(dir.path(), &tp("reopen"), config(4096), &cache()).await;
        let expected = many_epochs(&log).await;
        assert_eq!(log.leader_epochs(), expected);
        log.close().await.unwrap();
        let (log, report) = open(dir.path(), &tp("reopen"), config(4096), &cache()).await;
        assert!(report.clean_shutdown);
        assert_eq!(report.epoch_checkpoint, CheckpointStatus::Valid);
        assert_eq!(log.leader_epochs(), expected);
        // New epochs past the recovery point, then a crash.
        let start = lead(&log, 20, 7).await;
        lead(&log, 21, 8).await;
        log.flush().await;
        drop(log);
        let (log, report) = open(dir.path(), &tp("reopen"), config(4096), &cache()).await;
        assert!(!report.clean_shutdown);
        let mut after = expected.clone();
        after.push(EpochEntry {
            epoch: LeaderEpoch(20),
            start_offset: start,
        });
        after.push(EpochEntry {
            epoch: LeaderEpoch(21),
            start_offset: start.plus(2),
        });
        assert_eq!(log.leader_epochs(), after);
        log.close().await.unwrap();
    });
}

// Goal: a torn, a garbage and a missing `leader-epoch.checkpoint` are each detected at open,
// reported, and the cache rebuilt from the batch headers equals the one the appends built; the
// rebuilt file is written back and trusted on the next open.
#[test]
fn damaged_epoch_file_is_rebuilt_from_batch_headers() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let name = "damaged";
        let (log, _) = open(dir.path(), &tp(name), config(4096), &cache()).await;
        let expected = many_epochs(&log).await;
        log.close().await.unwrap();
        let path = epoch_path(dir.path(), name);
        let good = std::fs::read(&path).unwrap();
        // The file is padded to a whole block; its envelope's length field says where it ends.
        let length = u32::from_be_bytes(good[8..12].try_into().unwrap()) as usize;
        assert!(length > 12 * expected.len(), "one row per entry");
        let damages: Vec<(&str, Option<Vec<u8>>)> = vec![
            ("torn", Some(good[..length / 2].to_vec())),
            (
                "garbage",
                Some((0..good.len()).map(|i| (i * 31 + 7) as u8).collect()),
            ),
            ("flipped", {
                let mut flipped = good.clone();
                flipped[20] ^= 0x01;
                Some(flipped)
            }),
            ("missing", None),
        ];
        for (what, content) in damages {
            match content {
                Some(bytes) => std::fs::write(&path, bytes).unwrap(),
                None => std::fs::remove_file(&path).unwrap(),
            }
            let (log, report) = open(dir.path(), &tp(name), config(4096), &cache()).await;
            match (what, &report.epoch_checkpoint) {
                ("missing", CheckpointStatus::Missing) => {}
                ("missing", other) => panic!("missing file reported {other:?}"),
                (_, CheckpointStatus::Damaged(_)) => {}
                (_, other) => panic!("{what} file reported {other:?}"),
            }
            assert_eq!(log.leader_epochs(), expected, "{what}");
            log.close().await.unwrap();
            let (log, report) = open(dir.path(), &tp(name), config(4096), &cache()).await;
            assert_eq!(report.epoch_checkpoint, CheckpointStatus::Valid, "{what}");
            assert_eq!(log.leader_epochs(), expected, "{what}");
            log.close().await.unwrap();
        }
        // The data itself was never touched.
        let (log, _) = open(dir.path(), &tp(name), config(4096), &cache()).await;
        let got = read_all(&log, Offset(0)).await;
        assert!(got.iter().all(|b| !payload(b).is_empty()));
        log.close().await.unwrap();
    });
}
