//! Property test of the partition log against a reference model: a `Vec` of batches split into
//! segments by Kafka's roll rules, with the log start offset.
//!
//! Random operation sequences (appends with varied sizes and timestamps, forced rolls,
//! retention by time and size, delete-records, truncation, clean and unclean reopens) run
//! against a real log on real files; after every operation the log's end, start and segment
//! bases must match the model, and reads and timestamp lookups must return what the model says.

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::{batch, header, payload};
use proptest::prelude::*;
use sluice_engine::log::{Durability, LogConfig, PartitionLog};
use sluice_engine::rt::block_on;
use sluice_engine::{LeaderEpoch, Offset, TimestampMs};

#[derive(Clone, Debug)]
enum Step {
    Append {
        records: usize,
        value_bytes: usize,
        timestamp_step: i64,
        synced: bool,
    },
    Roll,
    Retention {
        now_step: i64,
    },
    DeleteRecords {
        fraction: f64,
    },
    Truncate {
        fraction: f64,
    },
    Reopen {
        clean: bool,
    },
    Read {
        fraction: f64,
        max_bytes: usize,
    },
    FindTimestamp {
        fraction: f64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (1..4usize, 0..1_500usize, -30..120i64, any::<bool>()).prop_map(
            |(records, value_bytes, timestamp_step, synced)| Step::Append {
                records,
                value_bytes,
                timestamp_step,
                synced,
            }
        ),
        1 => Just(Step::Roll),
        1 => (0..3_000i64).prop_map(|now_step| Step::Retention { now_step }),
        1 => (0.0..1.0f64).prop_map(|fraction| Step::DeleteRecords { fraction }),
        1 => (0.0..1.0f64).prop_map(|fraction| Step::Truncate { fraction }),
        1 => any::<bool>().prop_map(|clean| Step::Reopen { clean }),
        3 => (0.0..1.0f64, 1..20_000usize).prop_map(|(fraction, max_bytes)| Step::Read {
            fraction,
            max_bytes
        }),
        1 => (0.0..1.0f64).prop_map(|fraction| Step::FindTimestamp { fraction }),
    ]
}

#[derive(Clone, Debug)]
struct ModelBatch {
    base: i64,
    next: i64,
    max_timestamp: i64,
    bytes: Bytes,
}

#[derive(Clone, Debug, Default)]
struct ModelSegment {
    base: i64,
    batches: Vec<ModelBatch>,
}

impl ModelSegment {
    fn bytes(&self) -> u64 {
        self.batches.iter().map(|b| b.bytes.len() as u64).sum()
    }
    fn end(&self) -> i64 {
        self.batches.last().map_or(self.base, |b| b.next)
    }
    fn max_timestamp(&self) -> Option<i64> {
        self.batches.iter().map(|b| b.max_timestamp).max()
    }
}

/// The reference: segments of batches and the log start offset.
#[derive(Debug)]
struct Model {
    config: LogConfig,
    segments: Vec<ModelSegment>,
    log_start: i64,
}

impl Model {
    fn end(&self) -> i64 {
        self.segments.last().unwrap().end()
    }
    fn batches(&self) -> impl Iterator<Item = &ModelBatch> {
        self.segments.iter().flat_map(|s| s.batches.iter())
    }

    fn append(&mut self, bytes: Bytes) {
        let h = header(&bytes);
        let active = self.segments.last().unwrap();
        let first_max = active.batches.first().map(|b| b.max_timestamp);
        let roll = !active.batches.is_empty()
            && (active.bytes() + bytes.len() as u64 > self.config.segment_bytes
                || first_max.is_some_and(|first| {
                    h.max_timestamp.0.saturating_sub(first) > self.config.segment_ms
                }));
        if roll {
            let base = self.end();
            self.segments.push(ModelSegment {
                base,
                batches: Vec::new(),
            });
        }
        let base = self.end();
        let next = base + i64::from(h.last_offset_delta) + 1;
        let max_timestamp = h.max_timestamp.0;
        self.segments.last_mut().unwrap().batches.push(ModelBatch {
            base,
            next,
            max_timestamp,
            bytes,
        });
    }

    fn roll(&mut self) {
        if !self.segments.last().unwrap().batches.is_empty() {
            let base = self.end();
            self.segments.push(ModelSegment {
                base,
                batches: Vec::new(),
            });
        }
    }

    /// Kafka's prefix rules: below the log start, then by time, then by size.
    fn retention(&mut self, now: i64) -> usize {
        let sealed = self.segments.len() - 1;
        let mut count = 0;
        while count < sealed && self.segments[count].end() <= self.log_start {
            count += 1;
        }
        if let Some(retention_ms) = self.config.retention_ms {
            while count < sealed
                && self.segments[count]
                    .max_timestamp()
                    .is_some_and(|max| max < now - retention_ms)
            {
                count += 1;
            }
        }
        if let Some(retention_bytes) = self.config.retention_bytes {
            let total: u64 = self.segments[count..].iter().map(ModelSegment::bytes).sum();
            let mut excess = total as i128 - retention_bytes as i128;
            while count < sealed && excess - self.segments[count].bytes() as i128 >= 0 {
                excess -= self.segments[count].bytes() as i128;
                count += 1;
            }
        }
        self.segments.drain(..count);
        self.log_start = self.log_start.max(self.segments[0].base);
        count
    }

    fn delete_records(&mut self, before: i64) {
        if before > self.log_start {
            self.log_start = before;
        }
        let sealed = self.segments.len() - 1;
        let count = self.segments[..sealed]
            .iter()
            .take_while(|s| s.end() <= self.log_start)
            .count();
        self.segments.drain(..count);
        self.log_start = self.log_start.max(self.segments[0].base);
    }

    fn truncate(&mut self, offset: i64) -> i64 {
        if offset >= self.end() {
            return self.end();
        }
        let index = self
            .segments
            .iter()
            .rposition(|s| s.base <= offset)
            .unwrap();
        self.segments.truncate(index + 1);
        let segment = self.segments.last_mut().unwrap();
        let keep = segment
            .batches
            .iter()
            .position(|b| b.next > offset)
            .unwrap();
        segment.batches.truncate(keep);
        let end = self.end();
        self.log_start = self.log_start.min(end);
        end
    }

    /// The batches a read from `from` returns.
    fn read(&self, from: i64, max_bytes: usize) -> Vec<&ModelBatch> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for b in self.batches().filter(|b| b.next > from) {
            if !out.is_empty() && bytes + b.bytes.len() > max_bytes {
                break;
            }
            bytes += b.bytes.len();
            out.push(b);
        }
        out
    }

    fn find_timestamp(&self, target: i64) -> Option<i64> {
        self.batches()
            .find(|b| b.next > self.log_start && b.max_timestamp >= target)
            .map(|b| b.base.max(self.log_start))
    }
}

async fn check(log: &PartitionLog, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(log.log_end_offset(), Offset(model.end()));
    prop_assert_eq!(log.log_start_offset(), Offset(model.log_start));
    let bases: Vec<Offset> = model.segments.iter().map(|s| Offset(s.base)).collect();
    prop_assert_eq!(log.segment_bases(), bases);
    Ok(())
}

fn run(config: LogConfig, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let tp = common::tp("prop");
    block_on(async {
        let (mut log, _) = common::open(dir.path(), &tp, config, &common::cache()).await;
        let mut model = Model {
            config,
            segments: vec![ModelSegment::default()],
            log_start: 0,
        };
        let mut timestamp = 1_000i64;
        let mut now = 0i64;
        let mut seed = 0u64;
        for step in steps {
            match step {
                Step::Append {
                    records,
                    value_bytes,
                    timestamp_step,
                    synced,
                } => {
                    timestamp = (timestamp + timestamp_step).max(0);
                    seed += 1;
                    let b = batch(records, value_bytes, timestamp, seed);
                    let durability = if synced {
                        Durability::Synced
                    } else {
                        Durability::Written
                    };
                    let info = log
                        .append(b.clone(), LeaderEpoch(2), durability)
                        .await
                        .unwrap();
                    prop_assert_eq!(info.base_offset, Offset(model.end()));
                    model.append(b);
                }
                Step::Roll => {
                    log.roll().await.unwrap();
                    model.roll();
                }
                Step::Retention { now_step } => {
                    now = now.max(timestamp) + now_step;
                    // The model knows no high watermark: everything is below it.
                    log.set_high_watermark(log.log_end_offset());
                    let report = log.apply_retention(TimestampMs(now)).await.unwrap();
                    let deleted = model.retention(now);
                    prop_assert_eq!(report.deleted_segments.len(), deleted);
                }
                Step::DeleteRecords { fraction } => {
                    let target = model.log_start
                        + ((model.end() - model.log_start) as f64 * fraction) as i64;
                    log.delete_records(Offset(target)).await.unwrap();
                    model.delete_records(target);
                }
                Step::Truncate { fraction } => {
                    let target = model.log_start
                        + ((model.end() - model.log_start) as f64 * fraction) as i64;
                    let end = log.truncate_to(Offset(target)).await.unwrap();
                    prop_assert_eq!(end, Offset(model.truncate(target)));
                }
                Step::Reopen { clean } => {
                    if clean {
                        log.close().await.unwrap();
                    }
                    drop(log);
                    let (reopened, report) =
                        common::open(dir.path(), &tp, config, &common::cache()).await;
                    prop_assert_eq!(report.clean_shutdown, clean);
                    prop_assert!(report.truncations.is_empty(), "{:?}", report);
                    prop_assert!(report.rebuilt_indexes.is_empty(), "{:?}", report);
                    log = reopened;
                }
                Step::Read {
                    fraction,
                    max_bytes,
                } => {
                    let from = model.log_start
                        + ((model.end() - model.log_start) as f64 * fraction) as i64;
                    let slice = log
                        .read(Offset(from), max_bytes, Offset(model.end()))
                        .await
                        .unwrap();
                    let expected = model.read(from, max_bytes);
                    prop_assert_eq!(slice.batches.len(), expected.len(), "read from {}", from);
                    for (got, want) in slice.batches.iter().zip(&expected) {
                        prop_assert_eq!(header(got).base_offset, Offset(want.base));
                        prop_assert_eq!(payload(got), payload(&want.bytes));
                    }
                    let next = expected.last().map_or(from, |b| b.next);
                    prop_assert_eq!(slice.next_offset, Offset(next));
                }
                Step::FindTimestamp { fraction } => {
                    let target = 900 + ((timestamp - 800) as f64 * fraction) as i64;
                    let found = log.offset_for_timestamp(TimestampMs(target)).await.unwrap();
                    prop_assert_eq!(found.map(|f| f.offset.0), model.find_timestamp(target));
                }
            }
            check(&log, &model).await?;
        }
        log.close().await.unwrap();
        Ok(())
    })
}

fn config() -> impl Strategy<Value = LogConfig> {
    (
        prop_oneof![Just(4_096u64), Just(8_192), Just(20_000)],
        prop_oneof![Just(0u32), Just(100), Just(4_096)],
        prop_oneof![Just(None), Just(Some(500i64)), Just(Some(5_000))],
        prop_oneof![Just(None), Just(Some(10_000u64)), Just(Some(40_000))],
        prop_oneof![Just(1_000i64), Just(i64::MAX / 2)],
    )
        .prop_map(
            |(segment_bytes, index_interval_bytes, retention_ms, retention_bytes, segment_ms)| {
                LogConfig {
                    segment_bytes,
                    segment_ms,
                    index_interval_bytes,
                    retention_ms,
                    retention_bytes,
                    preallocate_bytes: 16 << 10,
                    ..LogConfig::default()
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    // Goal: the log behaves as the model under any sequence of operations (see module docs).
    #[test]
    fn log_matches_model(config in config(), steps in prop::collection::vec(step(), 1..60)) {
        run(config, steps)?;
    }
}
