//! Bad input and failing storage: malformed batches, oversized batches, write, allocation and
//! sync failures injected through `sluice_engine::io::faults`, and a real full file system
//! (a small loop-mounted ext4 image). In every case the failing append gets a typed error,
//! nothing already stored changes, and the log stays readable.

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::small_fs::{SmallFs, ballast};
use common::{append, batch, cache, config, open, payload, read_all, tp};
use sluice_engine::batch::BatchError;
use sluice_engine::io::faults::{self, Failure, Op, Plan};
use sluice_engine::log::{AdminError, AppendError, Durability, LogConfig, PartitionLog};
use sluice_engine::rt::block_on;
use sluice_engine::{LeaderEpoch, Offset, TimestampMs};

fn edit(b: &Bytes, f: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut owned = BytesMut::from(&b[..]);
    f(&mut owned);
    owned.freeze()
}

/// Tells whether an error is the one a case expects.
type Matcher = Box<dyn Fn(&AppendError) -> bool>;

async fn check_unchanged(log: &PartitionLog, good: &[Bytes]) {
    assert_eq!(log.log_end_offset(), Offset(good.len() as i64 * 2));
    assert_eq!(log.next_offset(), log.log_end_offset());
    let got = read_all(log, Offset(0)).await;
    assert_eq!(got.len(), good.len());
    for (g, s) in got.iter().zip(good) {
        assert_eq!(payload(g), payload(s));
    }
}

// Goal: malformed input gets a typed error naming the problem and leaves the log unchanged,
// including when a bad batch follows a good one in the same record set.
#[test]
fn bad_batches_are_rejected_without_side_effects() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("bad-input");
        let config = LogConfig {
            max_batch_bytes: 4_000,
            ..config(1 << 20)
        };
        let (log, _) = open(dir.path(), &tp, config, &cache()).await;
        let good = batch(2, 100, 0, 1);
        append(&log, good.clone(), Durability::Synced).await;
        let len = good.len();
        let cases: Vec<(&str, Bytes, Matcher)> = vec![
            (
                "wrong crc",
                edit(&good, |b| b[len - 1] ^= 1),
                Box::new(|e| {
                    matches!(
                        e,
                        AppendError::InvalidBatch {
                            index: 0,
                            error: BatchError::CrcMismatch { .. }
                        }
                    )
                }),
            ),
            (
                "wrong magic",
                edit(&good, |b| b[16] = 1),
                Box::new(|e| {
                    matches!(
                        e,
                        AppendError::InvalidBatch {
                            error: BatchError::UnsupportedMagic(1),
                            ..
                        }
                    )
                }),
            ),
            (
                "length below a header",
                edit(&good, |b| b[8..12].copy_from_slice(&5i32.to_be_bytes())),
                Box::new(|e| {
                    matches!(
                        e,
                        AppendError::InvalidBatch {
                            error: BatchError::InvalidLength { .. },
                            ..
                        }
                    )
                }),
            ),
            (
                "negative length",
                edit(&good, |b| b[8..12].copy_from_slice(&(-1i32).to_be_bytes())),
                Box::new(|e| {
                    matches!(
                        e,
                        AppendError::InvalidBatch {
                            error: BatchError::InvalidLength { .. },
                            ..
                        }
                    )
                }),
            ),
            (
                "length past the buffer",
                edit(&good, |b| {
                    b[8..12].copy_from_slice(&(len as i32 + 100).to_be_bytes())
                }),
                Box::new(|e| {
                    matches!(
                        e,
                        AppendError::InvalidBatch {
                            error: BatchError::Truncated { .. },
                            ..
                        }
                    )
                }),
            ),
            (
                "impossible length",
                edit(&good, |b| b[8..12].copy_from_slice(&i32::MAX.to_be_bytes())),
                Box::new(|e| matches!(e, AppendError::BatchTooLarge { limit: 4_000, .. })),
            ),
            (
                "oversized batch",
                batch(4, 2_000, 0, 2),
                Box::new(|e| {
                    matches!(
                        e,
                        AppendError::BatchTooLarge {
                            index: 0,
                            limit: 4_000,
                            ..
                        }
                    )
                }),
            ),
            (
                "good then bad",
                [good.clone(), edit(&good, |b| b[len - 1] ^= 1)]
                    .concat()
                    .into(),
                Box::new(|e| matches!(e, AppendError::InvalidBatch { index: 1, .. })),
            ),
            (
                "empty",
                Bytes::new(),
                Box::new(|e| matches!(e, AppendError::Empty)),
            ),
            (
                "truncated header",
                good.slice(..30),
                Box::new(|e| {
                    matches!(
                        e,
                        AppendError::InvalidBatch {
                            error: BatchError::Truncated { .. },
                            ..
                        }
                    )
                }),
            ),
        ];
        for (name, input, expected) in &cases {
            let error = log
                .append(input.clone(), LeaderEpoch(1), Durability::Synced)
                .await
                .unwrap_err();
            assert!(expected(&error), "{name}: unexpected {error:?}");
            check_unchanged(&log, std::slice::from_ref(&good)).await;
        }
        log.close().await.unwrap();
        let (log, report) = open(dir.path(), &tp, config, &cache()).await;
        assert!(report.is_clean());
        check_unchanged(&log, std::slice::from_ref(&good)).await;
        log.close().await.unwrap();
    });
}

// Goal: a failed write fails the appends of its round and those queued behind it, rolls the
// assigned offsets back, keeps the log (and the cache) readable, and the next append reuses
// the offsets.
// Method: write one append (the segment's first write also preallocates, so later small
// writes need no allocation), then issue four appends without awaiting. The first goes out at
// once (rt::spawn polls the writer right away, and it runs until its first IO is in flight);
// its block is partially filled, so the other three queue behind it and go in the next write,
// which the injected fault fails.
#[test]
fn failed_write_fails_the_round_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("write-fails");
        let (log, _) = open(dir.path(), &tp, config(1 << 20), &cache()).await;
        let good = vec![batch(2, 100, 0, 1), batch(2, 100, 0, 2)];
        assert_eq!(
            append(&log, good[0].clone(), Durability::Written).await,
            Offset(0)
        );
        faults::inject(Plan {
            op: Op::Write,
            path_contains: ".log".into(),
            skip: 1,
            count: 1,
            failure: Failure::Io,
        });
        let mut pending = vec![log.append(good[1].clone(), LeaderEpoch(1), Durability::Written)];
        for i in 0..3 {
            pending.push(log.append(
                batch(2, 100, 0, 10 + i),
                LeaderEpoch(1),
                Durability::Written,
            ));
        }
        let bases: Vec<_> = pending
            .iter()
            .map(|p| p.info().unwrap().base_offset)
            .collect();
        assert_eq!(bases, vec![Offset(2), Offset(4), Offset(6), Offset(8)]);
        let results = futures::future::join_all(pending).await;
        assert!(results[0].is_ok(), "{:?}", results[0]);
        for result in &results[1..] {
            assert!(matches!(result, Err(AppendError::Io(_))), "{result:?}");
        }
        faults::clear();
        check_unchanged(&log, &good).await;
        assert_eq!(
            append(&log, batch(2, 100, 0, 2), Durability::Synced).await,
            Offset(4)
        );

        // Allocation failure (a full disk at a preallocation step) is typed as no space.
        faults::inject(Plan {
            op: Op::Allocate,
            path_contains: String::new(),
            skip: 0,
            count: 1,
            failure: Failure::NoSpace,
        });
        let big = batch(1, 70_000, 0, 3);
        let result = log
            .append(big.clone(), LeaderEpoch(1), Durability::Written)
            .await;
        assert!(matches!(result, Err(AppendError::NoSpace(_))), "{result:?}");
        faults::clear();
        assert_eq!(append(&log, big, Durability::Written).await, Offset(6));
        log.close().await.unwrap();
    });
}

// Goal: a round split into two writes (the rewritten tail block, then the rest) whose first
// write fails while the second lands leaves no never-acknowledged batch for recovery to find.
// Method: a small batch (its block written padded); one injected .log write failure; an
// append of two batches, the first over a block long and ending on a block boundary, so the
// round is split and only its first write fails; the append fails. Append the first batch
// again (same offsets, not padded), drop the log (a crash) and reopen: the second batch, whose
// bytes the landed write put right after the retried one, must not be read back.
#[test]
fn failed_half_of_a_split_round_leaves_no_batch_behind() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let name = "split-round";
        let tp = tp(name);
        let (log, _) = open(dir.path(), &tp, config(1 << 20), &cache()).await;
        let first = batch(2, 100, 0, 1);
        assert_eq!(
            append(&log, first.clone(), Durability::Written).await,
            Offset(0)
        );
        // `long` ends exactly at a block boundary, so its retry is not padded with zeros and
        // the lost batch's bytes (from that boundary on) would stay.
        let long = (2_000..4_100)
            .map(|value_bytes| batch(2, value_bytes, 0, 2))
            .find(|long| first.len() + long.len() == 2 * 4096)
            .expect("a batch size that ends on a block boundary");
        let lost = batch(2, 100, 0, 3);
        faults::inject(Plan {
            op: Op::Write,
            path_contains: ".log".into(),
            skip: 0,
            count: 1,
            failure: Failure::Io,
        });
        let both = Bytes::from([&long[..], &lost[..]].concat());
        let result = log.append(both, LeaderEpoch(1), Durability::Written).await;
        assert!(matches!(result, Err(AppendError::Io(_))), "{result:?}");
        faults::clear();
        assert_eq!(
            append(&log, long.clone(), Durability::Written).await,
            Offset(2)
        );
        drop(log);
        reopen_holding(dir.path(), name, &[first, long], 2).await;
    });
}

// Goal: a split round still in flight behind a round that fails (so it completes in an
// abandoned generation) and whose own second write lands leaves no never-acknowledged batch
// for recovery to find.
// Method: no preallocation (no allocation holds rounds back); one small batch written, then a
// small append whose padded round is in flight while two large appends queue behind it, so
// that both go out at once as split rounds (rewritten block, then the rest). Three injected
// .log write failures: round two's writes and round three's first fail; round three's second
// lands with a whole batch (`lost`) in it (`last` fills the block past it). Append again up
// to `lost`'s start (a block boundary, so nothing pads over it), drop the log (a crash) and
// reopen: `lost` must not be read back. Without the scrub it is.
#[test]
fn landed_half_of_a_round_behind_a_failed_one_leaves_no_batch_behind() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let name = "split-behind-failed";
        let tp = tp(name);
        let no_preallocation = LogConfig {
            preallocate_bytes: 0,
            ..config(8 << 20)
        };
        let (log, _) = open(dir.path(), &tp, no_preallocation, &cache()).await;
        let first = batch(2, 100, 0, 1);
        assert_eq!(
            append(&log, first.clone(), Durability::Written).await,
            Offset(0)
        );
        let small = batch(2, 100, 0, 2);
        let in_flight = log.append(small.clone(), LeaderEpoch(1), Durability::Written);
        let big = batch(2, 300_000, 0, 3);
        // Ends on a block boundary, so the retry's padded round writes nothing past it.
        let aligned = (250_000..252_100)
            .map(|value_bytes| batch(2, value_bytes, 0, 4))
            .find(|c| (first.len() + small.len() + big.len() + c.len()).is_multiple_of(4096))
            .expect("a batch size that ends on a block boundary");
        let lost = batch(2, 5_000, 0, 5);
        let last = batch(2, 3_000, 0, 6);
        faults::inject(Plan {
            op: Op::Write,
            path_contains: ".log".into(),
            skip: 0,
            count: 3,
            failure: Failure::Io,
        });
        let second = log.append(big.clone(), LeaderEpoch(1), Durability::Written);
        let third = log.append(
            Bytes::from([&aligned[..], &lost[..], &last[..]].concat()),
            LeaderEpoch(1),
            Durability::Written,
        );
        let (in_flight, second, third) = futures::join!(in_flight, second, third);
        assert!(in_flight.is_ok(), "{in_flight:?}");
        assert!(matches!(second, Err(AppendError::Io(_))), "{second:?}");
        assert!(matches!(third, Err(AppendError::Io(_))), "{third:?}");
        faults::clear();
        assert_eq!(
            append(&log, big.clone(), Durability::Written).await,
            Offset(4)
        );
        assert_eq!(
            append(&log, aligned.clone(), Durability::Written).await,
            Offset(6)
        );
        drop(log);
        reopen_holding(dir.path(), name, &[first, small, big, aligned], 4).await;
    });
}

// Goal: a failed fdatasync fails the Synced appends waiting on it and makes the log refuse
// appends (the state of unsynced data is unknown) while reads keep working; reopening recovers.
#[test]
fn failed_sync_poisons_until_reopened() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("sync-fails");
        let (log, _) = open(dir.path(), &tp, config(1 << 20), &cache()).await;
        let first = batch(2, 100, 0, 1);
        append(&log, first.clone(), Durability::Synced).await;
        faults::inject(Plan {
            op: Op::Sync,
            path_contains: ".log".into(),
            skip: 0,
            count: 1,
            failure: Failure::Io,
        });
        let result = log
            .append(batch(2, 100, 0, 2), LeaderEpoch(1), Durability::Synced)
            .await;
        assert!(matches!(result, Err(AppendError::Failed)), "{result:?}");
        faults::clear();
        let result = log
            .append(batch(2, 100, 0, 3), LeaderEpoch(1), Durability::Written)
            .await;
        assert!(matches!(result, Err(AppendError::Failed)), "{result:?}");
        assert_eq!(
            read_all(&log, Offset(0)).await.len(),
            2,
            "written data stays readable"
        );
        assert!(matches!(log.close().await, Err(AdminError::Failed)));
        drop(log);
        let (log, report) = open(dir.path(), &tp, config(1 << 20), &cache()).await;
        assert!(!report.clean_shutdown);
        assert_eq!(log.log_end_offset(), Offset(4));
        assert_eq!(
            append(&log, batch(1, 10, 0, 4), Durability::Synced).await,
            Offset(4)
        );
        log.close().await.unwrap();
    });
}

// Goal: on a really full file system the append fails with NoSpace, everything acknowledged
// stays readable, and appends work again once space is freed (also after a reopen).
// Method: mount a 64 MiB ext4 image, fill most of it with a ballast file, append 64 KiB batches
// until the disk is full, delete the ballast, append again. Needs root (mount); skipped with a
// message otherwise.
#[test]
fn full_disk_fails_cleanly_and_recovers() {
    let fs = match SmallFs::new(64) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipping full_disk_fails_cleanly_and_recovers: {why}");
            return;
        }
    };
    let data = fs.mount.join("data");
    std::fs::create_dir(&data).unwrap();
    let ballast_path = fs.mount.join("ballast");
    ballast(&ballast_path, fs.free_bytes() - (6 << 20));
    block_on(async {
        let tp = tp("full");
        let config = LogConfig {
            segment_bytes: 1 << 30,
            preallocate_bytes: 1 << 20,
            ..LogConfig::default()
        };
        let (log, _) = open(&data, &tp, config, &cache()).await;
        let mut acked = Vec::new();
        let mut failure = None;
        for i in 0..400u64 {
            let b = batch(1, 64 << 10, 0, i);
            match log
                .append(b.clone(), LeaderEpoch(1), Durability::Synced)
                .await
            {
                Ok(_) => acked.push(b),
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        let failure = failure.expect("the disk filled up");
        assert!(matches!(failure, AppendError::NoSpace(_)), "{failure:?}");
        assert!(acked.len() > 10, "some appends fit: {}", acked.len());
        let check = |got: Vec<Bytes>, acked: &[Bytes]| {
            assert_eq!(got.len(), acked.len());
            for (g, a) in got.iter().zip(acked) {
                assert_eq!(payload(g), payload(a));
            }
        };
        check(read_all(&log, Offset(0)).await, &acked);
        // Still full: still a clean error.
        let again = log
            .append(
                batch(1, 64 << 10, 0, 999),
                LeaderEpoch(1),
                Durability::Synced,
            )
            .await;
        assert!(matches!(again, Err(AppendError::NoSpace(_))), "{again:?}");

        std::fs::remove_file(&ballast_path).unwrap();
        for i in 0..5u64 {
            let b = batch(1, 64 << 10, 0, 1_000 + i);
            append(&log, b.clone(), Durability::Synced).await;
            acked.push(b);
        }
        check(read_all(&log, Offset(0)).await, &acked);
        log.close().await.unwrap();
        let (log, report) = open(&data, &tp, config, &cache()).await;
        assert!(report.clean_shutdown, "{report:?}");
        check(read_all(&log, Offset(0)).await, &acked);
        log.close().await.unwrap();
    });
    drop(fs);
}

// Goal: the per-partition write backlog is bounded: appends beyond it fail with a typed,
// retriable error instead of growing memory, and everything accepted is written.
// Method: queue 80 appends of 1 MiB without awaiting (the device cannot keep up within one
// call), count rejections, then check the log holds exactly the accepted ones.
#[test]
fn write_backlog_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("backlog");
        let config = LogConfig {
            max_batch_bytes: 2 << 20,
            ..config(1 << 30)
        };
        let (log, _) = open(dir.path(), &tp, config, &cache()).await;
        let big = batch(1, 1 << 20, 0, 1);
        let pending: Vec<_> = (0..80)
            .map(|_| log.append(big.clone(), LeaderEpoch(1), Durability::Written))
            .collect();
        let mut accepted = 0i64;
        let mut overloaded = 0;
        for result in futures::future::join_all(pending).await {
            match result {
                Ok(info) => {
                    assert_eq!(
                        info.base_offset,
                        Offset(accepted),
                        "accepted appends are dense"
                    );
                    accepted += 1;
                }
                Err(AppendError::Overloaded { limit, .. }) => {
                    assert_eq!(limit, sluice_engine::limits::QUEUED_BYTES_MAX);
                    overloaded += 1;
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            overloaded > 0,
            "80 MiB queued at once exceeds the backlog bound"
        );
        let fit = (sluice_engine::limits::QUEUED_BYTES_MAX / big.len()) as i64;
        assert!(
            accepted >= fit,
            "the bound admits at least its size ({fit} appends): {accepted}"
        );
        assert_eq!(log.log_end_offset(), Offset(accepted));
        log.close().await.unwrap();
    });
}

/// Appends `count` synced batches of 2 records (offsets `2i, 2i + 1`) and returns them.
async fn fill(log: &PartitionLog, count: u64) -> Vec<Bytes> {
    let mut sent = Vec::new();
    for i in 0..count {
        let b = batch(2, 300, 1_000 + i as i64, i);
        append(log, b.clone(), Durability::Synced).await;
        sent.push(b);
    }
    sent
}

/// Reopens the log at `dir` (a typed error, not a panic, when it cannot) and checks that it
/// holds at least the first `kept` batches of `sent`, unchanged, and at most all of them.
async fn reopen_holding(dir: &std::path::Path, name: &str, sent: &[Bytes], kept: usize) {
    let tp = tp(name);
    let opened = PartitionLog::open(
        sluice_engine::log::partition_dir(dir, &tp),
        tp.clone(),
        config(8 << 10),
        cache(),
    )
    .await;
    let (log, _) = opened.unwrap_or_else(|error| panic!("{name}: reopen failed: {error}"));
    let got = read_all(&log, Offset(0)).await;
    assert!(got.len() >= kept && got.len() <= sent.len(), "{name}");
    for (s, g) in sent.iter().zip(&got) {
        assert_eq!(payload(s), payload(g), "{name}");
    }
    assert_eq!(log.log_end_offset(), Offset(got.len() as i64 * 2), "{name}");
    log.close().await.unwrap();
}

// Goal: a truncate_to across several segments that fails part way (here at the checkpoint
// write, at the cut segment's truncation, at the first sync) leaves a log that opens, with
// everything before the cut intact; the failing call returns an error and the log refuses
// appends until reopened. Method: 8 KiB segments, 40 batches; inject one fault, truncate into
// the second segment, clear the fault, drop the log (a crash), reopen.
#[test]
fn failed_multi_segment_truncation_leaves_an_openable_log() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("checkpoint", Op::Create, "partition.checkpoint"),
        ("cut", Op::Truncate, ".log"),
        ("sync", Op::Sync, "truncate-sync"),
    ];
    block_on(async {
        for (name, op, path) in cases {
            let name = format!("truncate-{name}");
            let tp = tp(&name);
            let (log, _) = open(dir.path(), &tp, config(8 << 10), &cache()).await;
            let sent = fill(&log, 40).await;
            let bases = log.segment_bases();
            assert!(bases.len() >= 4, "{name}: 8 KiB segments roll: {bases:?}");
            let cut = bases[1].plus(3);
            let kept = usize::try_from(bases[1].plus(2).0 / 2).unwrap();
            faults::inject(Plan {
                op,
                path_contains: path.into(),
                skip: 0,
                count: 1,
                failure: Failure::NoSpace,
            });
            let result = log.truncate_to(cut).await;
            faults::clear();
            assert!(result.is_err(), "{name}: {result:?}");
            let refused = log
                .append(batch(1, 10, 0, 99), LeaderEpoch(1), Durability::Written)
                .await;
            assert!(matches!(refused, Err(AppendError::Failed)), "{name}");
            drop(log);
            reopen_holding(dir.path(), &name, &sent, kept).await;
        }
    });
}

// Goal: retention and delete-records that fail to write the checkpoint (a full disk) change
// nothing: the same segments, log start and readable records; the next pass does the work,
// and the expired segment's files are gone. Method: 8 KiB segments, 40 batches stamped 1000+,
// retention.ms 1000 at time 3000 (everything sealed expires); each call once with the
// checkpoint's temporary file failing, then again without.
#[test]
fn failed_checkpoint_leaves_retention_to_the_next_pass() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("retention-full");
        let config = LogConfig {
            retention_ms: Some(1_000),
            ..config(8 << 10)
        };
        let (log, _) = open(dir.path(), &tp, config, &cache()).await;
        let sent = fill(&log, 40).await;
        log.set_high_watermark(log.log_end_offset());
        let bases = log.segment_bases();
        assert!(bases.len() >= 4, "8 KiB segments roll: {bases:?}");
        let first_log = log.dir().join(format!("{:020}.log", bases[0].0));
        assert!(first_log.exists());

        common::fail_next_checkpoint();
        let result = log.delete_records(Offset(5)).await;
        assert!(matches!(result, Err(AdminError::Io(_))), "{result:?}");
        assert_eq!(log.log_start_offset(), Offset(0), "delete-records undone");
        assert_eq!(read_all(&log, Offset(0)).await.len(), sent.len());

        common::fail_next_checkpoint();
        let result = log.apply_retention(TimestampMs(3_000)).await;
        assert!(matches!(result, Err(AdminError::Io(_))), "{result:?}");
        faults::clear();
        assert_eq!(log.segment_bases(), bases, "retention undone");
        assert_eq!(log.log_start_offset(), Offset(0));
        assert_eq!(read_all(&log, Offset(0)).await.len(), sent.len());

        let report = log.apply_retention(TimestampMs(3_000)).await.unwrap();
        assert_eq!(report.deleted_segments, bases[..bases.len() - 1]);
        assert!(!first_log.exists(), "the expired segment's file is gone");
        assert_eq!(log.log_start_offset(), bases[bases.len() - 1]);
        log.close().await.unwrap();
    });
}

/// Where a roll is made to fail, and what the failing append must see.
struct RollFault {
    name: &'static str,
    op: Op,
    /// The file the fault matches, from the new segment's base and the old active one's.
    path: fn(Offset, Offset) -> String,
    failure: Failure,
    /// Whether the log refuses appends until reopened afterwards (a failed fdatasync).
    poisons: bool,
}

fn segment_file(base: Offset, extension: &str) -> String {
    format!("{:020}.{extension}", base.0)
}

/// Appends `batch` with epoch 2 until one fails, clearing and re-arming `fault` before each
/// append so that it matches the files of the roll that append would do. Returns the batches
/// appended and the error.
async fn append_until_roll_fails(
    log: &PartitionLog,
    fault: &RollFault,
    sent: &mut Vec<Bytes>,
) -> AppendError {
    for i in 0..64u64 {
        faults::clear();
        let active = *log.segment_bases().last().unwrap();
        faults::inject(Plan {
            op: fault.op,
            path_contains: (fault.path)(log.next_offset(), active),
            skip: 0,
            count: 1,
            failure: fault.failure,
        });
        let b = batch(2, 300, 2_000 + i as i64, 100 + i);
        match log
            .append(b.clone(), LeaderEpoch(2), Durability::Written)
            .await
        {
            Ok(_) => sent.push(b),
            Err(error) => {
                faults::clear();
                return error;
            }
        }
    }
    panic!("{}: no roll failed", fault.name);
}

async fn check_holds(log: &PartitionLog, sent: &[Bytes], name: &str) {
    assert_eq!(
        log.log_end_offset(),
        Offset(sent.len() as i64 * 2),
        "{name}"
    );
    assert_eq!(log.next_offset(), log.log_end_offset(), "{name}");
    let got = read_all(log, Offset(0)).await;
    assert_eq!(got.len(), sent.len(), "{name}");
    for (g, s) in got.iter().zip(sent) {
        assert_eq!(payload(g), payload(s), "{name}");
    }
}

// Goal: a roll that fails (a full disk when the new segment file is created or preallocated,
// when the old one's index tails are written or its file trimmed, or when the epoch file or
// the checkpoint is written) fails the append that needed it with a typed error and changes
// nothing stored; once the fault clears the next append rolls and is stored, and the log
// reopens holding everything, after a clean close and after a crash right after the failure.
// A failed fdatasync while sealing is the exception: it poisons the log until reopened.
// Method: 8 KiB segments, batches of about 700 bytes; one fault per case, armed for the roll's
// own files (the new segment's base is the next offset), so only the roll can hit it.
#[test]
fn failed_roll_fails_the_append_and_the_log_recovers() {
    let cases = [
        RollFault {
            name: "create",
            op: Op::Create,
            path: |new, _| segment_file(new, "log"),
            failure: Failure::NoSpace,
            poisons: false,
        },
        RollFault {
            name: "preallocate",
            op: Op::Allocate,
            path: |new, _| segment_file(new, "log"),
            failure: Failure::NoSpace,
            poisons: false,
        },
        RollFault {
            name: "seal-index",
            op: Op::Write,
            path: |_, old| segment_file(old, "index"),
            failure: Failure::NoSpace,
            poisons: false,
        },
        RollFault {
            name: "seal-time-index",
            op: Op::Create,
            path: |_, old| segment_file(old, "timeindex"),
            failure: Failure::NoSpace,
            poisons: false,
        },
        RollFault {
            name: "seal-trim",
            op: Op::Truncate,
            path: |_, old| segment_file(old, "log"),
            failure: Failure::NoSpace,
            poisons: false,
        },
        RollFault {
            name: "epoch-checkpoint",
            op: Op::Create,
            path: |_, _| "leader-epoch.checkpoint".into(),
            failure: Failure::NoSpace,
            poisons: false,
        },
        RollFault {
            name: "checkpoint",
            op: Op::Create,
            path: |_, _| "partition.checkpoint".into(),
            failure: Failure::NoSpace,
            poisons: false,
        },
        RollFault {
            name: "checkpoint-write",
            op: Op::Write,
            path: |_, _| "partition.checkpoint".into(),
            failure: Failure::NoSpace,
            poisons: false,
        },
        RollFault {
            name: "seal-sync",
            op: Op::Sync,
            path: |_, old| segment_file(old, "log"),
            failure: Failure::Io,
            poisons: true,
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        for fault in &cases {
            for crash in [false, true] {
                let name = format!(
                    "roll-{}-{}",
                    fault.name,
                    if crash { "crash" } else { "close" }
                );
                let tp = tp(&name);
                let (log, _) = open(dir.path(), &tp, config(8 << 10), &cache()).await;
                let mut sent = fill(&log, 4).await;
                let segments = log.segment_count();
                let error = append_until_roll_fails(&log, fault, &mut sent).await;
                if fault.poisons {
                    assert!(matches!(error, AppendError::Failed), "{name}: {error:?}");
                } else {
                    assert!(
                        matches!(error, AppendError::NoSpace(_)),
                        "{name}: {error:?}"
                    );
                }
                assert_eq!(log.segment_count(), segments, "{name}: no segment added");
                check_holds(&log, &sent, &name).await;
                if crash || fault.poisons {
                    drop(log);
                } else {
                    let next = batch(2, 300, 3_000, 7);
                    let result = log
                        .append(next.clone(), LeaderEpoch(2), Durability::Synced)
                        .await;
                    let info = result.unwrap_or_else(|e| panic!("{name}: append after: {e:?}"));
                    assert_eq!(info.base_offset, Offset(sent.len() as i64 * 2), "{name}");
                    sent.push(next);
                    assert_eq!(log.segment_count(), segments + 1, "{name}: rolled now");
                    check_holds(&log, &sent, &name).await;
                    log.close().await.unwrap();
                }
                let (log, report) = open(dir.path(), &tp, config(8 << 10), &cache()).await;
                if !crash && !fault.poisons {
                    assert!(report.clean_shutdown, "{name}: {report:?}");
                    assert!(report.is_clean(), "{name}: {report:?}");
                }
                check_holds(&log, &sent, &name).await;
                let next = batch(2, 300, 3_000, 8);
                let result = log
                    .append(next.clone(), LeaderEpoch(2), Durability::Synced)
                    .await;
                result.unwrap_or_else(|e| panic!("{name}: append after reopen: {e:?}"));
                sent.push(next);
                check_holds(&log, &sent, &name).await;
                log.close().await.unwrap();
            }
        }
    });
}

// Goal: a forced roll that fails on a full disk returns the error and leaves the log as it
// was; once the fault clears it rolls. Method: 8 KiB segments, two batches, the new segment
// file's creation failing once.
#[test]
fn failed_forced_roll_returns_its_error() {
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let tp = tp("forced-roll-full");
        let (log, _) = open(dir.path(), &tp, config(8 << 10), &cache()).await;
        let sent = fill(&log, 2).await;
        faults::inject(Plan {
            op: Op::Create,
            path_contains: segment_file(Offset(4), "log"),
            skip: 0,
            count: 1,
            failure: Failure::NoSpace,
        });
        let result = log.roll().await;
        faults::clear();
        assert!(matches!(result, Err(AdminError::Io(_))), "{result:?}");
        assert_eq!(log.segment_bases(), vec![Offset(0)]);
        check_holds(&log, &sent, "forced").await;
        log.roll().await.unwrap();
        assert_eq!(log.segment_bases(), vec![Offset(0), Offset(4)]);
        log.close().await.unwrap();
    });
}
