//! Appending to one partition log: the engine's write path alone (validation, offset
//! assignment, cache insert, the writer's O_DIRECT rounds), no network.
//!
//! Storage: a fresh log in a temporary directory under `SLUICE_BENCH_DIR` (default: the
//! system temp dir), which must be on a file system that supports O_DIRECT (ext4, xfs; not
//! tmpfs). Input: batches just under 64 KiB holding 60 records of 1 KiB, appended through an
//! `AppendWindow` of 64 appends (as `sluice-perf log-bench` does), `Written` (no fdatasync)
//! and `Synced` (group-committed fdatasync). Each sample opens a new log; throughput is in
//! batch bytes. The disk's own bandwidth, which bounds
//! these figures, is measured by `sluice-perf reference` (see perf/RESULTS.md).

// criterion_group! generates a public function without docs.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice_benches::sample_records;
use sluice_engine::batch::{Compression, build_batch};
use sluice_engine::log::{AppendWindow, BatchCache, Durability, LogConfig, PartitionLog};
use sluice_engine::rt::{block_on, clock};
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
        let mut window = AppendWindow::new(INFLIGHT);
        for _ in 0..count {
            window
                .append(&log, batch.clone(), LeaderEpoch(0), durability)
                .await
                .expect("append");
        }
        window.finish().await.expect("append");
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
