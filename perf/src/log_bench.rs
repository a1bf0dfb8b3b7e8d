//! `sluice-perf log-bench`: the storage engine alone, against the disk it runs on.
//!
//! Appends `--bytes` of `--batch-bytes` batches of `--record-bytes` records to one partition
//! log (no network), keeping `--inflight` appends outstanding (an `AppendWindow`), then reads
//! everything back from disk (catch-up read, the shard cache kept tiny so reads hit the disk).
//! The O_DIRECT reference of the same directory is measured in the same run and every figure
//! is reported as a ratio to it, with the peak resident memory of the process.
//!
//! A new log writes every segment into freshly preallocated blocks. `--steady-state` measures
//! instead a log that has been running under retention: segments of [`STEADY_SEGMENT_BYTES`],
//! [`STEADY_RETENTION_BYTES`] of `retention.bytes`, first [`STEADY_WARMUP_BYTES`] appended and
//! not measured, retention applied after every roll (as the broker's maintenance task would),
//! so the measured appends go into recycled segment files; the read pass then reads what
//! retention kept.

use std::path::PathBuf;
use std::rc::Rc;

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;
use sluice_engine::batch::{BatchBuilder, BuildError, Compression};
use sluice_engine::log::{AppendWindow, BatchCache, Durability, LogConfig, PartitionLog};
use sluice_engine::rt::{self, clock};
use sluice_engine::{LeaderEpoch, TimestampMs, TopicPartition};

use crate::reference::{self, Reference};

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct LogBenchConfig {
    pub dir: PathBuf,
    pub bytes: u64,
    pub batch_bytes: usize,
    pub record_bytes: usize,
    pub inflight: usize,
    pub synced: bool,
    /// The log's preallocation step (`LogConfig::preallocate_bytes`); `None` keeps the default.
    pub preallocate_bytes: Option<u64>,
    /// Measure a log in steady state under retention (see the module docs).
    pub steady_state: bool,
}

/// Segment size of a `--steady-state` run.
pub const STEADY_SEGMENT_BYTES: u64 = 256 << 20;
/// `retention.bytes` of a `--steady-state` run: two segments.
pub const STEADY_RETENTION_BYTES: u64 = 512 << 20;
/// Bytes appended before a `--steady-state` run measures: enough for retention to have deleted
/// (and kept for reuse) a segment before the measured appends begin.
pub const STEADY_WARMUP_BYTES: u64 = 1 << 30;

/// Results, with the reference they are judged against.
#[derive(Debug, Clone, Serialize)]
pub struct LogBenchReport {
    pub config: LogBenchConfig,
    pub append_mb_per_sec: f64,
    pub append_ratio_to_direct_write: f64,
    /// Against writes into freshly preallocated blocks, which is what a log segment writes.
    pub append_ratio_to_direct_write_fresh: f64,
    pub read_mb_per_sec: f64,
    pub read_ratio_to_direct_read: f64,
    /// Segments rolled into recycled files during the measured appends.
    pub recycled_segments: u64,
    pub peak_rss_mib: f64,
    pub reference: Reference,
}

/// Runs the reference, then the append and read passes.
pub fn run(config: LogBenchConfig) -> anyhow::Result<LogBenchReport> {
    let reference = reference::measure(&config.dir, config.bytes.min(1 << 30))?;
    let bench_dir = config.dir.join("sluice-log-bench");
    let _ = std::fs::remove_dir_all(&bench_dir);
    std::fs::create_dir_all(&bench_dir).context("cannot create bench dir")?;
    let run_config = config.clone();
    let (append, read, recycled_segments) =
        rt::block_on(async move { passes(&run_config, &bench_dir).await })?;
    let _ = std::fs::remove_dir_all(config.dir.join("sluice-log-bench"));
    Ok(LogBenchReport {
        recycled_segments,
        append_ratio_to_direct_write: append / reference.direct_write_mb_per_sec,
        append_ratio_to_direct_write_fresh: append / reference.direct_write_fresh_mb_per_sec,
        read_ratio_to_direct_read: read / reference.direct_read_mb_per_sec,
        append_mb_per_sec: append,
        read_mb_per_sec: read,
        peak_rss_mib: peak_rss_mib(),
        reference,
        config,
    })
}

fn template_batch(config: &LogBenchConfig) -> anyhow::Result<Bytes> {
    let mut builder = BatchBuilder::new(config.batch_bytes);
    let value = vec![0x61u8; config.record_bytes];
    let now = clock::unix_now_ms();
    loop {
        match builder.push(None, Some(&value), &[], TimestampMs(now.0)) {
            Ok(()) => {}
            Err(BuildError::BatchFull { .. }) => break,
            Err(error) => return Err(error.into()),
        }
    }
    Ok(builder.build(Compression::None)?)
}

/// Appends `count` copies of `batch` with `inflight` outstanding; in steady state, applies
/// retention after every roll.
async fn append_pass(
    log: &PartitionLog,
    batch: &Bytes,
    count: u64,
    config: &LogBenchConfig,
) -> anyhow::Result<()> {
    let durability = if config.synced {
        Durability::Synced
    } else {
        Durability::Written
    };
    let mut segments = log.segment_count();
    let mut window = AppendWindow::new(config.inflight);
    for _ in 0..count {
        window
            .append(log, batch.clone(), LeaderEpoch(0), durability)
            .await
            .map_err(|e| anyhow::anyhow!("append: {e}"))?;
        if config.steady_state && log.segment_count() > segments {
            // The broker applies retention below the high watermark, which follows the log end
            // on a single broker; here the written end stands in for it.
            log.set_high_watermark(log.high_watermark().max(log.log_end_offset()));
            log.apply_retention(clock::unix_now_ms())
                .await
                .map_err(|e| anyhow::anyhow!("retention: {e}"))?;
            segments = log.segment_count();
        }
    }
    window
        .finish()
        .await
        .map_err(|e| anyhow::anyhow!("append: {e}"))?;
    Ok(())
}

async fn passes(config: &LogBenchConfig, dir: &std::path::Path) -> anyhow::Result<(f64, f64, u64)> {
    let batch = template_batch(config)?;
    let defaults = LogConfig::default();
    let log_config = LogConfig {
        max_batch_bytes: config.batch_bytes.max(batch.len()),
        preallocate_bytes: config
            .preallocate_bytes
            .unwrap_or(defaults.preallocate_bytes),
        ..defaults
    };
    let log_config = if config.steady_state {
        LogConfig {
            segment_bytes: STEADY_SEGMENT_BYTES,
            retention_bytes: Some(STEADY_RETENTION_BYTES),
            retention_ms: None,
            ..log_config
        }
    } else {
        log_config
    };
    // A tiny cache so the read pass measures disk reads, not memory.
    let cache = Rc::new(BatchCache::new(1 << 20));
    let tp = TopicPartition::new("bench", 0);
    let (log, _) = PartitionLog::open(dir, tp, log_config, cache)
        .await
        .map_err(|e| anyhow::anyhow!("open: {e}"))?;
    if config.steady_state {
        append_pass(
            &log,
            &batch,
            STEADY_WARMUP_BYTES / batch.len() as u64,
            config,
        )
        .await?;
    }
    let recycled_before = log.stats().recycled_segments;
    let appends = config.bytes / batch.len() as u64;
    let start = clock::now();
    append_pass(&log, &batch, appends, config).await?;
    let written = appends * batch.len() as u64;
    let append_elapsed = start.elapsed();
    let recycled = log.stats().recycled_segments - recycled_before;
    anyhow::ensure!(
        !config.steady_state || recycled > 0,
        "steady state, yet no segment was recycled"
    );
    let end = log.log_end_offset();
    let start = clock::now();
    let mut from = log.log_start_offset();
    let expected = if config.steady_state {
        log.size_bytes()
    } else {
        written
    };
    let mut read_bytes = 0u64;
    while from < end {
        let slice = log
            .read(from, 1 << 20, end)
            .await
            .map_err(|e| anyhow::anyhow!("read: {e}"))?;
        anyhow::ensure!(!slice.is_empty(), "read returned nothing at {from}");
        read_bytes += slice.bytes() as u64;
        from = slice.next_offset;
    }
    let read_elapsed = start.elapsed();
    anyhow::ensure!(
        read_bytes == expected,
        "read {read_bytes} of {expected} bytes"
    );
    log.close()
        .await
        .map_err(|e| anyhow::anyhow!("close: {e}"))?;
    let mb = |bytes: u64, elapsed: std::time::Duration| bytes as f64 / 1e6 / elapsed.as_secs_f64();
    Ok((
        mb(written, append_elapsed),
        mb(read_bytes, read_elapsed),
        recycled,
    ))
}

/// Peak resident set size of this process (VmHWM), in MiB.
pub fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
