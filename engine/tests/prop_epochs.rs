//! Property test of the leader-epoch cache against a reference model: the `(epoch, start)` of
//! every epoch rise among the batches appended so far (truncated ones removed), pruned of the
//! entries wholly below the log start.
//!
//! Random operation sequences (leader appends that keep or raise the epoch, follower appends of
//! batches carrying their own epoch, stale-epoch appends that must be refused, truncation,
//! delete-records, rolls, clean and unclean reopens, and reopens after the epoch file was
//! replaced by garbage) run against a real log on real files; after every operation
//! `end_offset_for_epoch` must answer as the model does for every epoch in range, and
//! `latest_epoch` must match.

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::BytesMut;
use common::batch;
use proptest::prelude::*;
use sluice_engine::log::{AppendError, Durability, LogConfig, PartitionLog};
use sluice_engine::rt::block_on;
use sluice_engine::{LeaderEpoch, Offset};

#[derive(Clone, Debug)]
enum Step {
    Lead {
        bump: i32,
        records: usize,
    },
    Follow {
        bump: i32,
        records: usize,
    },
    Stale,
    Truncate {
        fraction: f64,
    },
    DeleteRecords {
        fraction: f64,
    },
    Roll,
    Reopen {
        clean: bool,
        garbage_epoch_file: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..3i32, 1..4usize).prop_map(|(bump, records)| Step::Lead { bump, records }),
        4 => (0..3i32, 1..4usize).prop_map(|(bump, records)| Step::Follow { bump, records }),
        1 => Just(Step::Stale),
        2 => (0.0..1.0f64).prop_map(|fraction| Step::Truncate { fraction }),
        1 => (0.0..1.0f64).prop_map(|fraction| Step::DeleteRecords { fraction }),
        1 => Just(Step::Roll),
        2 => (any::<bool>(), any::<bool>())
            .prop_map(|(clean, garbage_epoch_file)| Step::Reopen { clean, garbage_epoch_file }),
    ]
}

/// The reference: one `(base, next, epoch)` per batch, and the log start.
#[derive(Default)]
struct Model {
    batches: Vec<(i64, i64, i32)>,
    log_start: i64,
}

impl Model {
    fn end(&self) -> i64 {
        self.batches.last().map_or(0, |b| b.1)
    }

    /// The epoch of the last batch (what a leader append may not go below).
    fn latest(&self) -> Option<i32> {
        self.batches.last().map(|b| b.2)
    }

    /// The epoch rises whose range holds readable offsets (`[log_start, end)`).
    fn entries(&self) -> Vec<(i32, i64)> {
        let mut entries: Vec<(i32, i64)> = Vec::new();
        for &(base, _, epoch) in &self.batches {
            if entries.last().is_none_or(|last| epoch > last.0) {
                entries.push((epoch, base));
            }
        }
        let ends: Vec<i64> = (0..entries.len())
            .map(|i| entries.get(i + 1).map_or(self.end(), |next| next.1))
            .collect();
        entries
            .into_iter()
            .zip(ends)
            .filter(|(_, end)| *end > self.log_start)
            .map(|(entry, _)| entry)
            .collect()
    }

    fn end_offset_for(&self, requested: i32) -> (i32, i64) {
        let entries = self.entries();
        let after = entries.partition_point(|entry| entry.0 <= requested);
        let end = entries.get(after).map_or(self.end(), |entry| entry.1);
        let epoch = after
            .checked_sub(1)
            .map_or(requested, |floor| entries[floor].0);
        (epoch, end.clamp(self.log_start, self.end()))
    }

    /// `truncate_to`: the batch containing `offset` and everything after go.
    fn truncate(&mut self, offset: i64) -> i64 {
        self.batches.retain(|b| b.1 <= offset);
        self.end()
    }
}

fn check(log: &PartitionLog, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.log_end_offset(), Offset(model.end()));
    let live = model.entries().last().map(|entry| entry.0);
    prop_assert_eq!(log.latest_epoch().map(|e| e.0), live);
    let top = model.latest().unwrap_or(0) + 2;
    for requested in -1..=top {
        let (epoch, end) = log.end_offset_for_epoch(LeaderEpoch(requested));
        prop_assert_eq!(
            (epoch.0, end.0),
            model.end_offset_for(requested),
            "epoch {}",
            requested
        );
    }
    Ok(())
}

/// Small segments, so truncation, delete-records and rebuilds cross segment boundaries.
fn config() -> LogConfig {
    common::config(4096)
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let tp = common::tp("prop-epochs");
    block_on(async {
        let (mut log, _) = common::open(dir.path(), &tp, config(), &common::cache()).await;
        let mut model = Model::default();
        let mut epoch = 0i32;
        let mut seed = 0u64;
        for step in steps {
            match step {
                Step::Lead { bump, records } => {
                    epoch += bump;
                    seed += 1;
                    let b = batch(records, 100, 0, seed);
                    let info = log
                        .append(b, LeaderEpoch(epoch), Durability::Written)
                        .await
                        .unwrap();
                    prop_assert_eq!(info.base_offset, Offset(model.end()));
                    model
                        .batches
                        .push((model.end(), info.last_offset.0 + 1, epoch));
                }
                Step::Follow { bump, records } => {
                    epoch += bump;
                    seed += 1;
                    let mut owned = BytesMut::from(&batch(records, 100, 0, seed)[..]);
                    sluice_engine::batch::set_base_offset(&mut owned, Offset(model.end()));
                    sluice_engine::batch::set_leader_epoch(&mut owned, LeaderEpoch(epoch));
                    let info = log
                        .append_replicated(owned.freeze(), Durability::Synced)
                        .await
                        .unwrap();
                    model
                        .batches
                        .push((model.end(), info.last_offset.0 + 1, epoch));
                }
                Step::Stale => {
                    // Only against a live epoch: when no readable batch is left and the epoch
                    // file was rebuilt, the log no longer knows its epoch (FORMAT.md §6), and
                    // fencing a deposed leader is the replication layer's job.
                    let live = model.entries().last().map(|entry| entry.0);
                    if let Some(latest) = live.filter(|latest| *latest > 0) {
                        seed += 1;
                        let result = log
                            .append(
                                batch(1, 10, 0, seed),
                                LeaderEpoch(latest - 1),
                                Durability::Written,
                            )
                            .await;
                        let refused = matches!(result, Err(AppendError::StaleEpoch { .. }));
                        prop_assert!(refused, "{:?}", result);
                    }
                }
                Step::Truncate { fraction } => {
                    let target = model.log_start
                        + ((model.end() - model.log_start) as f64 * fraction) as i64;
                    let end = log.truncate_to(Offset(target)).await.unwrap();
                    prop_assert_eq!(end, Offset(model.truncate(target)));
                    // Cutting the batch that holds the log start moves the start down with it.
                    model.log_start = log.log_start_offset().0;
                }
                Step::DeleteRecords { fraction } => {
                    let target = model.log_start
                        + ((model.end() - model.log_start) as f64 * fraction) as i64;
                    log.delete_records(Offset(target)).await.unwrap();
                    model.log_start = model.log_start.max(target);
                }
                Step::Roll => log.roll().await.unwrap(),
                Step::Reopen {
                    clean,
                    garbage_epoch_file,
                } => {
                    if clean {
                        log.close().await.unwrap();
                    } else {
                        log.flush().await;
                    }
                    drop(log);
                    if garbage_epoch_file {
                        let path = sluice_engine::log::partition_dir(dir.path(), &tp)
                            .join("leader-epoch.checkpoint");
                        std::fs::write(&path, vec![0x5a; 300]).unwrap();
                    }
                    let (reopened, _) =
                        common::open(dir.path(), &tp, config(), &common::cache()).await;
                    log = reopened;
                    model.log_start = log.log_start_offset().0;
                }
            }
            check(&log, &model)?;
        }
        log.close().await.unwrap();
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    // Goal and method: see the file header.
    #[test]
    fn epoch_cache_matches_model(steps in prop::collection::vec(step(), 1..50)) {
        run(steps)?;
    }
}
