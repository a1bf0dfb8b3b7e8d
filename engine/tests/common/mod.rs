//! Helpers shared by the log's integration tests: batch construction, configs, runtime.

#![allow(dead_code)]

pub mod small_fs;

use std::path::Path;
use std::rc::Rc;

use bytes::Bytes;
use sluice_engine::batch::builder::{SimpleRecord, build_batch};
use sluice_engine::batch::{BatchHeader, Compression};
use sluice_engine::log::{
    BatchCache, Durability, LogConfig, PartitionLog, RecoveryReport, partition_dir,
};
use sluice_engine::{LeaderEpoch, Offset, TimestampMs, TopicPartition};

/// A valid uncompressed batch of `records` records whose values are derived from `seed`, each
/// `value_bytes` long, all stamped `timestamp`.
pub fn batch(records: usize, value_bytes: usize, timestamp: i64, seed: u64) -> Bytes {
    let records: Vec<SimpleRecord> = (0..records)
        .map(|i| {
            let mut value = vec![0u8; value_bytes];
            let mut x = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(i as u64 + 1);
            for byte in value.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *byte = x as u8;
            }
            SimpleRecord {
                key: Some(format!("k{seed}-{i}").into_bytes()),
                value: Some(value),
                headers: Vec::new(),
                timestamp: TimestampMs(timestamp),
            }
        })
        .collect();
    build_batch(&records, Compression::None).expect("test batch builds")
}

/// The bytes of a stored batch that the log never changes (everything after the base offset
/// and the partition leader epoch).
pub fn payload(batch: &[u8]) -> &[u8] {
    &batch[16..]
}

/// Parses a stored batch's header.
pub fn header(batch: &[u8]) -> BatchHeader {
    BatchHeader::parse(batch, usize::MAX).expect("stored batch parses")
}

/// A small-segment config for tests: everything else at Kafka's defaults.
pub fn config(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        preallocate_bytes: 64 << 10,
        ..LogConfig::default()
    }
}

pub fn tp(name: &str) -> TopicPartition {
    TopicPartition::new(name, 0)
}

pub fn cache() -> Rc<BatchCache> {
    Rc::new(BatchCache::new(8 << 20))
}

/// Opens the log of `tp` under `data`.
pub async fn open(
    data: &Path,
    tp: &TopicPartition,
    config: LogConfig,
    cache: &Rc<BatchCache>,
) -> (PartitionLog, RecoveryReport) {
    PartitionLog::open(partition_dir(data, tp), tp.clone(), config, cache.clone())
        .await
        .expect("log opens")
}

/// Appends and waits, returning the base offset.
pub async fn append(log: &PartitionLog, batch: Bytes, durability: Durability) -> Offset {
    log.append(batch, LeaderEpoch(1), durability)
        .await
        .expect("append succeeds")
        .base_offset
}

/// Reads everything from `from` to the log end, one batch per element.
pub async fn read_all(log: &PartitionLog, from: Offset) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut next = from;
    let end = log.log_end_offset();
    while next < end {
        let slice = log.read(next, 1 << 20, end).await.expect("read succeeds");
        assert!(!slice.is_empty(), "no progress reading at {next}");
        next = slice.next_offset;
        out.extend(slice.batches);
    }
    out
}

/// Makes the next creation of the checkpoint's temporary file on this thread fail with ENOSPC.
pub fn fail_next_checkpoint() {
    use sluice_engine::io::faults::{self, Failure, Op, Plan};
    faults::inject(Plan {
        op: Op::Create,
        path_contains: "partition.checkpoint".into(),
        skip: 0,
        count: 1,
        failure: Failure::NoSpace,
    });
}
