//! Appending to one partition log: the engine's write path alone (validation, offset
//! assignment, cache insert, the writer's O_DIRECT rounds), no network.
//!
//! Storage: a fresh log in a temporary directory under `SLUICE_BENCH_DIR` (default: the
//! system temp dir), which must be on a file system that supports O_DIRECT (ext4, xfs; not
//! tmpfs). Input: batches just under 64 KiB holding 60 records of 1 KiB, appended with 64
//! appends outstanding and a yield to the IO poll every write round's worth (as `sluice-perf
//! log-bench` does), `Written` (no fdatasync) and `Synced` (group-committed fdatasync). Each
//! sample opens a new log; throughput is in batch bytes. The disk's own bandwidth, which bounds
//! these figures, is measured by `sluice-perf reference` (see perf/RESULTS.md).

// criterion_group! generates a public function without docs.
#![allow(missing_docs)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_benches::sample_records;
use sluice_engine::batch::{Compression, build_batch};
use sluice_engine::limits::WRITE_ROUND_BYTES_MAX;
use sluice_engine::log::{BatchCache, Durability, LogConfig, PartitionLog};
use sluice_engine::rt::{block_on, clock, yield_to_io};
use sluice_engine::{LeaderEpoch, TopicPartition};

const INFLIGHT: usize = 64;

fn bench_dir() -> PathBuf {
    std::env::var_os("SLUICE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Appends `count` copies of `batch` to a new log and returns the time the appends took.
fn append_run(batch: &Bytes, count: u64, durability: Durability) -> Duration {
    let dir = tempfile::tempdir_in(bench_dir()).expect("temp dir");
    let batch = batch.clone();
    block_on(async move {
        let config = LogConfig {
            max_batch_bytes: batch.len(),
            ..LogConfig::default()
        };
        let cache = Rc::new(BatchCache::new(16 << 20));
        let (log, _) =
            PartitionLog::open(dir.path(), TopicPartition::new("bench", 0), config, cache)
                .await
                .expect("log opens");
        let start = clock::now();
        let mut pending = VecDeque::with_capacity(INFLIGHT);
        // Rounds the writer issues reach the disk only when this task waits (see
        // `rt::yield_to_io`): yield once per round's worth of appends.
        let appends_per_round = WRITE_ROUND_BYTES_MAX.div_ceil(batch.len()).max(1) as u64;
        for appended in 0..count {
            if pending.len() == INFLIGHT {
                let oldest: sluice_engine::log::PendingAppend =
                    pending.pop_front().expect("not empty");
                oldest.await.expect("append");
            }
            pending.push_back(log.append(batch.clone(), LeaderEpoch(0), durability));
            if (appended + 1) % appends_per_round == 0 {
                yield_to_io().await;
            }
        }
        for append in pending {
            append.await.expect("append");
        }
        let elapsed = start.elapsed();
        log.close().await.expect("close");
        elapsed
    })
}

fn segment_append(c: &mut Criterion) {
    let records = sample_records(60 << 10, 1 << 10);
    let batch = build_batch(&records, Compression::None).expect("build");
    assert!(batch.len() <= 64 << 10, "batch of {} bytes", batch.len());
    let mut group = c.benchmark_group("segment_append_64k_batches");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("written", |b| {
        b.iter_custom(|iters| append_run(&batch, iters, Durability::Written))
    });
    group.bench_function("synced", |b| {
        b.iter_custom(|iters| append_run(&batch, iters, Durability::Synced))
    });
    group.finish();
}

criterion_group!(benches, segment_append);
criterion_main!(benches);
