//! Finding where a read of an offset starts: the segment search in memory plus the binary
//! search of the segment's sparse offset index, which is read from disk one 4 KiB block per
//! probe with O_DIRECT (indexes are never held in memory), as a consumer's first fetch at an
//! arbitrary offset does.
//!
//! Storage: a log in a temporary directory under `SLUICE_BENCH_DIR` (default: the system temp
//! dir; must support O_DIRECT). Input: 256 MiB of 16 KiB batches in one sealed segment with the
//! default `index.interval.bytes` (4096): 16,384 index entries in 32 blocks, so a lookup takes
//! about 5-6 block reads. Offsets are drawn from a fixed-seed generator. The active segment's
//! lookup is measured too (its unflushed tail is in memory, whole blocks on disk).

// criterion_group! generates a public function without docs.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use sluice_benches::sample_records;
use sluice_engine::batch::{Compression, build_batch};
use sluice_engine::log::{AppendWindow, BatchCache, Durability, LogConfig, PartitionLog};
use sluice_engine::rt::{block_on, clock};
use sluice_engine::{LeaderEpoch, Offset, TopicPartition};

const LOG_BYTES: u64 = 256 << 20;

fn bench_dir() -> PathBuf {
    std::env::var_os("SLUICE_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Builds the log: one sealed segment of `LOG_BYTES`, then an active one of the same size.
async fn build_log(dir: &std::path::Path) -> PartitionLog {
    let records = sample_records(15 << 10, 1 << 10);
    let batch = build_batch(&records, Compression::None).expect("build");
    let config = LogConfig {
        segment_bytes: LOG_BYTES,
        ..LogConfig::default()
    };
    let cache = Rc::new(BatchCache::new(1 << 20));
    let (log, _) = PartitionLog::open(dir, TopicPartition::new("bench", 0), config, cache)
        .await
        .expect("log opens");
    let count = 2 * LOG_BYTES / batch.len() as u64 - 2;
    let mut window = AppendWindow::new(64);
    for _ in 0..count {
        window
            .append(&log, batch.clone(), LeaderEpoch(0), Durability::Written)
            .await
            .expect("append");
    }
    window.finish().await.expect("append");
    assert_eq!(log.segment_count(), 2, "{:?}", log.segments());
    log
}

/// Looks up `iters` pseudo-random offsets below `end` (from `start`), timing the lookups.
async fn lookups(log: &PartitionLog, start: Offset, end: Offset, iters: u64) -> Duration {
    let span = u64::try_from(end.0 - start.0).expect("end after start");
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let begin = clock::now();
    for _ in 0..iters {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = Offset(start.0 + i64::try_from(state % span).expect("fits"));
        let (segment, _) = log.index_position(offset).await.expect("lookup");
        assert!(segment <= offset);
    }
    begin.elapsed()
}

fn offset_index_lookup(c: &mut Criterion) {
    let dir = tempfile::tempdir_in(bench_dir()).expect("temp dir");
    let mut group = c.benchmark_group("offset_index_lookup");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    // The executor (and the log, which is !Send) lives inside one block_on per sample, so the
    // log is built once and reopened per sample (open of a cleanly closed log reads no data).
    block_on(async {
        let log = build_log(dir.path()).await;
        log.close().await.expect("close");
    });
    for (name, sealed) in [("sealed_segment", true), ("active_segment", false)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let path = dir.path().to_path_buf();
                block_on(async move {
                    let cache = Rc::new(BatchCache::new(1 << 20));
                    let config = LogConfig {
                        segment_bytes: LOG_BYTES,
                        ..LogConfig::default()
                    };
                    let (log, _) =
                        PartitionLog::open(&path, TopicPartition::new("bench", 0), config, cache)
                            .await
                            .expect("log reopens");
                    let segments = log.segments();
                    let segment = if sealed { segments[0] } else { segments[1] };
                    let elapsed =
                        lookups(&log, segment.base_offset, segment.end_offset, iters).await;
                    log.close().await.expect("close");
                    elapsed
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, offset_index_lookup);
criterion_main!(benches);
