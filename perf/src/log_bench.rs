//! `sluice-perf log-bench`: the storage engine alone, against the disk it runs on.
//!
//! Appends `--bytes` of `--batch-bytes` batches of `--record-bytes` records to one partition
//! log (no network), keeping `--inflight` appends outstanding, then reads everything back from
//! disk (catch-up read, the shard cache kept tiny so reads hit the disk). The O_DIRECT
//! reference of the same directory is measured in the same run and every figure is reported as
//! a ratio to it, with the peak resident memory of the process.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;
use sluice_engine::batch::{BatchBuilder, BuildError, Compression};
use sluice_engine::log::{BatchCache, Durability, LogConfig, PartitionLog};
use sluice_engine::rt::{self, clock};
use sluice_engine::{LeaderEpoch, Offset, TimestampMs, TopicPartition};

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
}

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
    let (append, read) = rt::block_on(async move { passes(&run_config, &bench_dir).await })?;
    let _ = std::fs::remove_dir_all(config.dir.join("sluice-log-bench"));
    Ok(LogBenchReport {
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

async fn passes(config: &LogBenchConfig, dir: &std::path::Path) -> anyhow::Result<(f64, f64)> {
    let batch = template_batch(config)?;
    let defaults = LogConfig::default();
    let log_config = LogConfig {
        max_batch_bytes: config.batch_bytes.max(batch.len()),
        preallocate_bytes: config
            .preallocate_bytes
            .unwrap_or(defaults.preallocate_bytes),
        ..defaults
    };
    // A tiny cache so the read pass measures disk reads, not memory.
    let cache = Rc::new(BatchCache::new(1 << 20));
    let tp = TopicPartition::new("bench", 0);
    let (log, _) = PartitionLog::open(dir, tp, log_config, cache)
        .await
        .map_err(|e| anyhow::anyhow!("open: {e}"))?;
    let durability = if config.synced {
        Durability::Synced
    } else {
        Durability::Written
    };
    let appends = config.bytes / batch.len() as u64;
    let start = clock::now();
    let mut pending = VecDeque::with_capacity(config.inflight);
    for _ in 0..appends {
        if pending.len() >= config.inflight {
            let oldest: sluice_engine::log::PendingAppend = pending.pop_front().expect("non-empty");
            oldest.await.map_err(|e| anyhow::anyhow!("append: {e}"))?;
        }
        let append = log.append(batch.clone(), LeaderEpoch(0), durability);
        pending.push_back(append);
    }
    for append in pending {
        append.await.map_err(|e| anyhow::anyhow!("append: {e}"))?;
    }
    let written = appends * batch.len() as u64;
    let append_elapsed = start.elapsed();
    let end = log.log_end_offset();
    let start = clock::now();
    let mut from = Offset(0);
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
        read_bytes == written,
        "read {read_bytes} of {written} bytes"
    );
    log.close()
        .await
        .map_err(|e| anyhow::anyhow!("close: {e}"))?;
    let mb = |bytes: u64, elapsed: std::time::Duration| bytes as f64 / 1e6 / elapsed.as_secs_f64();
    Ok((mb(written, append_elapsed), mb(read_bytes, read_elapsed)))
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
