//! Per-shard counters, summed across shards when the admin endpoint is scraped.
//!
//! Each shard owns its `ShardMetrics` (`!Send`, `Cell`/`RefCell`); nothing is shared or locked
//! on the data path.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::Arc;

use sluice_engine::TopicPartition;

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

/// Counters of one shard.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    topics: RefCell<HashMap<Arc<str>, TopicCounters>>,
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

    /// A copy of the per-topic counters.
    pub fn topics(&self) -> Vec<(Arc<str>, TopicCounters)> {
        self.topics.borrow().iter().map(|(k, v)| (Arc::clone(k), *v)).collect()
    }
}
