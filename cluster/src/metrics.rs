//! Per-shard counters, summed across shards when the admin endpoint is scraped.
//!
//! Each shard owns its `ShardMetrics` (`!Send`, `Cell`/`RefCell`); nothing is shared or locked
//! on the data path.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use sluice_engine::{Offset, TopicPartition};

use crate::shard::ProduceOk;

/// Byte and record counters of one topic on one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TopicCounters {
    /// Bytes appended.
    pub bytes_in: u64,
    /// Records appended.
    pub records_in: u64,
    /// Bytes served to fetches.
    pub bytes_out: u64,
    /// Produce requests that failed.
    pub produce_errors: u64,
}

/// Latency histogram bounds in microseconds for the Prometheus `le` buckets.
pub const LATENCY_BUCKETS_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 1_000_000,
];

/// Requests and latency of one API on one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiCounters {
    /// Requests handled.
    pub requests: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Count of requests at or below each bound of `LATENCY_BUCKETS_US` (cumulative).
    pub latency_buckets: Vec<u64>,
    /// Sum of latencies in microseconds.
    pub latency_sum_us: u64,
}

/// A `Send` copy of one or more shards' counters, for scraping.
#[derive(Clone, Debug, Default)]
pub struct MetricsSnapshot {
    /// Per-topic counters.
    pub topics: HashMap<Arc<str>, TopicCounters>,
    /// Per-API request counters, keyed by API name (e.g. `kafka_produce`, `native_fetch`).
    pub apis: HashMap<&'static str, ApiCounters>,
    /// Partitions owned, per shard.
    pub partitions_per_shard: Vec<(u16, u64)>,
    /// Tasks spawned or I/O operations, per shard: (shard, name, value).
    pub shard_gauges: Vec<(u16, &'static str, u64)>,
    /// Committed offsets of consumer groups: (group, partition, offset).
    pub committed_offsets: Vec<(String, TopicPartition, Offset)>,
    /// High watermark of every partition.
    pub high_watermarks: Vec<(TopicPartition, Offset)>,
    /// Of every partition led here, each follower's lag in offsets behind the leader's log
    /// end (`None`: its position is not known in the current epoch yet).
    pub replica_lag: Vec<(TopicPartition, sluice_engine::BrokerId, Option<i64>)>,
}

impl MetricsSnapshot {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: MetricsSnapshot) {
        for (topic, counters) in other.topics {
            let mine = self.topics.entry(topic).or_default();
            mine.bytes_in += counters.bytes_in;
            mine.records_in += counters.records_in;
            mine.bytes_out += counters.bytes_out;
            mine.produce_errors += counters.produce_errors;
        }
        for (api, counters) in other.apis {
            let mine = self.apis.entry(api).or_default();
            mine.requests += counters.requests;
            mine.errors += counters.errors;
            mine.latency_sum_us += counters.latency_sum_us;
            if mine.latency_buckets.is_empty() {
                mine.latency_buckets = vec![0; LATENCY_BUCKETS_US.len()];
            }
            for (a, b) in mine
                .latency_buckets
                .iter_mut()
                .zip(&counters.latency_buckets)
            {
                *a += b;
            }
        }
        self.partitions_per_shard.extend(other.partitions_per_shard);
        self.shard_gauges.extend(other.shard_gauges);
        self.committed_offsets.extend(other.committed_offsets);
        self.high_watermarks.extend(other.high_watermarks);
        self.replica_lag.extend(other.replica_lag);
    }

    /// Consumer lag per group and partition: high watermark minus committed offset (never
    /// negative), sorted by group, topic and partition.
    pub fn consumer_lag(&self) -> Vec<(String, TopicPartition, i64)> {
        let watermarks: HashMap<&TopicPartition, Offset> = self
            .high_watermarks
            .iter()
            .map(|(tp, hw)| (tp, *hw))
            .collect();
        let mut lag: Vec<(String, TopicPartition, i64)> = self
            .committed_offsets
            .iter()
            .filter_map(|(group, tp, committed)| {
                let hw = watermarks.get(tp)?;
                Some((group.clone(), tp.clone(), (hw.0 - committed.0).max(0)))
            })
            .collect();
        lag.sort();
        lag
    }
}

/// Counters of one shard.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    topics: RefCell<HashMap<Arc<str>, TopicCounters>>,
    apis: RefCell<HashMap<&'static str, ApiCounters>>,
    /// Runtime counters accumulated from `rt::stats_delta`.
    runtime: RefCell<HashMap<&'static str, u64>>,
    /// Produce requests handled on this shard.
    pub produce_requests: Cell<u64>,
    /// Fetch requests handled on this shard.
    pub fetch_requests: Cell<u64>,
}

impl ShardMetrics {
    /// Counts one produce to `tp`.
    pub fn record_produce(&self, tp: &TopicPartition, bytes: u64, ok: Option<&ProduceOk>) {
        self.produce_requests.set(self.produce_requests.get() + 1);
        let mut topics = self.topics.borrow_mut();
        let counters = topics.entry(Arc::clone(&tp.topic)).or_default();
        match ok {
            Some(ok) => {
                counters.bytes_in += bytes;
                counters.records_in += (ok.last_offset.0 - ok.base_offset.0 + 1) as u64;
            }
            None => counters.produce_errors += 1,
        }
    }

    /// Counts one fetch from `tp`.
    pub fn record_fetch(&self, tp: &TopicPartition, bytes: u64) {
        self.fetch_requests.set(self.fetch_requests.get() + 1);
        let mut topics = self.topics.borrow_mut();
        topics.entry(Arc::clone(&tp.topic)).or_default().bytes_out += bytes;
    }

    /// Counts one request of `api` that took `latency` and failed if `error`.
    pub fn record_request(&self, api: &'static str, latency: std::time::Duration, error: bool) {
        let mut apis = self.apis.borrow_mut();
        let counters = apis.entry(api).or_insert_with(|| ApiCounters {
            latency_buckets: vec![0; LATENCY_BUCKETS_US.len()],
            ..ApiCounters::default()
        });
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        counters.requests += 1;
        counters.errors += u64::from(error);
        counters.latency_sum_us = counters.latency_sum_us.saturating_add(micros);
        for (bucket, bound) in counters.latency_buckets.iter_mut().zip(LATENCY_BUCKETS_US) {
            if micros <= *bound {
                *bucket += 1;
            }
        }
    }

    /// A `Send` copy of this shard's counters; `shard` labels the runtime counters. Must run on
    /// the shard's own executor (it reads the runtime's statistics).
    pub fn snapshot(&self, shard: u16) -> MetricsSnapshot {
        let mut runtime = self.runtime.borrow_mut();
        for (name, delta) in sluice_engine::rt::stats_delta() {
            *runtime.entry(name).or_default() += delta;
        }
        MetricsSnapshot {
            topics: self.topics.borrow().clone(),
            apis: self.apis.borrow().clone(),
            shard_gauges: runtime
                .iter()
                .map(|(name, value)| (shard, *name, *value))
                .collect(),
            ..MetricsSnapshot::default()
        }
    }

    /// A copy of the per-topic counters.
    pub fn topics(&self) -> Vec<(Arc<str>, TopicCounters)> {
        self.topics
            .borrow()
            .iter()
            .map(|(k, v)| (Arc::clone(k), *v))
            .collect()
    }
}
