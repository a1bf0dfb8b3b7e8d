//! A window of appends kept in flight by one caller that stages them back to back (a bulk
//! loader, `sluice-perf log-bench`, the criterion benches): at most `limit` outstanding, the
//! oldest awaited before another is staged, and a yield to the shard's IO poll
//! ([`crate::rt::yield_to_io`]) every write round's worth of staged bytes. Without that yield
//! the rounds the writer issues stay queued in user space while the caller stages more, and the
//! disk idles (perf/RESULTS.md, "Rounds reach the disk"). The broker does not need it: its tasks
//! wait on the network between requests.
//!
//! Shard-local (`!Send`), like the log it appends to.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::limits::WRITE_ROUND_BYTES_MAX;
use crate::log::{AppendError, Durability, PartitionLog, PendingAppend};
use crate::types::LeaderEpoch;

/// Appends in flight, at most `limit`. See the module docs.
#[derive(Debug)]
pub struct AppendWindow {
    /// Invariant: at most `limit`, oldest first.
    pending: VecDeque<PendingAppend>,
    limit: usize,
    /// Bytes staged since the last yield to the IO poll.
    unyielded: usize,
}

impl AppendWindow {
    /// An empty window of at most `limit` appends in flight.
    pub fn new(limit: usize) -> AppendWindow {
        assert!(limit >= 1, "an append window holds at least one append");
        AppendWindow {
            pending: VecDeque::with_capacity(limit),
            limit,
            unyielded: 0,
        }
    }

    /// Appends `batches` to `log` as the leader ([`PartitionLog::append`]), first waiting for
    /// the oldest append when `limit` are outstanding. Returns the error of that oldest append
    /// if it failed (a rejected append fails when it is awaited, so its error comes back from a
    /// later call or from [`AppendWindow::finish`]).
    pub async fn append(
        &mut self,
        log: &PartitionLog,
        batches: Bytes,
        leader_epoch: LeaderEpoch,
        durability: Durability,
    ) -> Result<(), AppendError> {
        if self.pending.len() >= self.limit {
            let oldest = self.pending.pop_front().expect("a full window");
            oldest.await?;
        }
        self.unyielded += batches.len();
        self.pending
            .push_back(log.append(batches, leader_epoch, durability));
        assert!(self.pending.len() <= self.limit, "append window overfilled");
        if self.unyielded >= WRITE_ROUND_BYTES_MAX {
            self.unyielded = 0;
            crate::rt::yield_to_io().await;
        }
        Ok(())
    }

    /// Appends in flight.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no append is in flight.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Waits for every append in flight; the first error found, if any.
    pub async fn finish(self) -> Result<(), AppendError> {
        let mut first_error = None;
        for append in self.pending {
            if let Err(error) = append.await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
