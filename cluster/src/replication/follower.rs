//! [`FollowerCore`]: the follower side of one partition's replication, as a sans-IO state
//! machine.
//!
//! It decides what to fetch next (its log end and the epoch of its last batch, so the leader can
//! check that its log is on the leader's), and turns a fetch answer into [`FollowerAction`]s:
//! truncate where the logs diverge, append the fetched batches, advance the high watermark.
//! The driver carries them out on the log and reports back (`on_truncated`, `on_appended`).
//!
//! Truncation follows Kafka's KIP-320/KIP-279 rule: given the leader's diverging epoch `(e,
//! end)`, the follower looks up its own end for `e`; if it knows `e`, it truncates to the lower
//! of the two ends, and if it does not, to its own end for the largest epoch below `e`, then
//! fetches again so the leader re-validates. A follower never truncates to its high watermark
//! blindly (the KIP-101 bug): becoming a follower, even of a new epoch, truncates nothing; the
//! first fetch re-validates the tail. Data below the high watermark is truncated only when the
//! leader's log ends below it, which happens only after an unclean leader election (a leader
//! from the ISR holds every record below any replica's high watermark); then, as Kafka does,
//! the follower warns, truncates and lowers its high watermark with the log.
//!
//! A follower reports a position only once its appends are durable: the driver appends with
//! `Durability::Synced` and calls `on_appended` afterwards, so the offset a leader counts for the
//! high watermark survives a crash of the follower.
//!
//! Must not depend on: the runtime, the clock, the log's I/O, or any protocol crate.

use bytes::Bytes;
use sluice_engine::{BrokerId, LeaderEpoch, Offset, TopicPartition};

use super::messages::{ReplicaError, ReplicaFetchPartition, ReplicaFetchPartitionResponse};
use super::{LogView, PartitionState};

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowerAction {
    /// Truncate the log to this offset (`truncate_to`), then call `on_truncated`.
    Truncate(Offset),
    /// Append these batches as they are (`append_replicated`, `Durability::Synced`), then call
    /// `on_appended` (or `on_append_failed`).
    Append(Bytes),
    /// The high watermark advanced to this offset: store it in the log.
    HighWatermark(Offset),
    /// The leader could not serve the partition now; fetch it again after a back-off.
    Retry(ReplicaError),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Ready to fetch.
    Idle,
    /// A fetch is in flight.
    Fetching,
    /// Waiting for the driver to truncate.
    Truncating,
    /// Waiting for the driver to append; the leader's high watermark at the fetch.
    Appending { leader_high_watermark: Offset },
    /// The leader refused our epoch as stale: wait for new metadata.
    Fenced,
    /// The fetch offset is below the leader's log start: this needs the log reset to the
    /// leader's log start, which the engine does not offer yet.
    BelowLeaderStart,
}

/// The follower side of one partition; lives on the shard that owns the partition.
#[derive(Debug)]
pub struct FollowerCore {
    tp: TopicPartition,
    leader: BrokerId,
    epoch: LeaderEpoch,
    phase: Phase,
    /// The local log's end, as last reported. Invariant: `>= high_watermark`.
    log_end: Offset,
    log_start: Offset,
    latest_epoch: Option<LeaderEpoch>,
    /// Invariant: `<= log_end`; never decreases, except when the leader's log ends below it
    /// (an unclean leader election, see `truncation_target`).
    high_watermark: Offset,
}

impl FollowerCore {
    /// Follows `state.leader` in `state.leader_epoch` with the log as it is (nothing is
    /// truncated: the first fetch re-validates the tail against the leader's log).
    ///
    /// # Panics
    /// If `state` names `local` as leader.
    pub fn new(
        tp: TopicPartition,
        local: BrokerId,
        state: &PartitionState,
        log: &dyn LogView,
        high_watermark: Offset,
    ) -> FollowerCore {
        assert_ne!(state.leader, local, "{tp}: follower core on the leader");
        let log_end = log.log_end_offset();
        assert!(
            high_watermark <= log_end,
            "{tp}: high watermark past the log end"
        );
        FollowerCore {
            tp,
            leader: state.leader,
            epoch: state.leader_epoch,
            phase: Phase::Idle,
            log_end,
            log_start: log.log_start_offset(),
            latest_epoch: log.latest_epoch(),
            high_watermark,
        }
    }

    /// Re-reads the local log (its end, start and latest epoch) and the stored high watermark,
    /// before this core's first fetch. The driver calls it once no earlier operation on the log
    /// is in flight: an append or truncation of the core this one replaced, or the appends the
    /// replica staged while it led, may still have been running when this core was built, and
    /// the first fetch must start from the log as they left it.
    ///
    /// # Panics
    /// If a fetch was already made, or the high watermark is past the log end.
    pub fn reread_log(&mut self, log: &dyn LogView, high_watermark: Offset) {
        assert_eq!(
            self.phase,
            Phase::Idle,
            "{}: log re-read after the first fetch",
            self.tp
        );
        self.refresh(log);
        assert!(
            high_watermark <= self.log_end,
            "{}: high watermark {high_watermark} past the log end {}",
            self.tp,
            self.log_end
        );
        self.high_watermark = high_watermark;
    }

    /// The partition.
    pub fn tp(&self) -> &TopicPartition {
        &self.tp
    }

    /// The leader followed.
    pub fn leader(&self) -> BrokerId {
        self.leader
    }

    /// The leader epoch followed.
    pub fn epoch(&self) -> LeaderEpoch {
        self.epoch
    }

    /// The follower's high watermark: `min(own log end, leader's high watermark)`, never
    /// decreasing.
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// True while the follower is waiting for new metadata or a log reset (nothing to fetch).
    pub fn is_stalled(&self) -> bool {
        matches!(self.phase, Phase::Fenced | Phase::BelowLeaderStart)
    }

    /// The next fetch for this partition, if it is ready for one (marks it in flight).
    pub fn next_fetch(&mut self) -> Option<ReplicaFetchPartition> {
        if self.phase != Phase::Idle {
            return None;
        }
        self.phase = Phase::Fetching;
        Some(ReplicaFetchPartition {
            tp: self.tp.clone(),
            current_leader_epoch: self.epoch,
            fetch_offset: self.log_end,
            last_fetched_epoch: self.latest_epoch,
            log_start_offset: self.log_start,
        })
    }

    /// The fetch failed in transport (no answer): fetch again.
    pub fn on_fetch_failed(&mut self) {
        assert_eq!(
            self.phase,
            Phase::Fetching,
            "{}: no fetch in flight",
            self.tp
        );
        self.phase = Phase::Idle;
    }

    /// The leader's answer for this partition. `log` is the local log.
    pub fn on_response(
        &mut self,
        response: &ReplicaFetchPartitionResponse,
        log: &dyn LogView,
    ) -> Vec<FollowerAction> {
        assert_eq!(
            self.phase,
            Phase::Fetching,
            "{}: answer without a fetch",
            self.tp
        );
        assert_eq!(
            response.tp, self.tp,
            "{}: answer for another partition",
            self.tp
        );
        // Only this core's driver writes a follower's log, and only between its fetches: the
        // driver starts a core once earlier operations on the log ended (`reread_log`), and a
        // replica that is not the leader stages no appends of its own.
        assert_eq!(
            log.log_end_offset(),
            self.log_end,
            "{}: the log changed under a fetch",
            self.tp
        );
        self.phase = Phase::Idle;
        match response.error {
            Some(ReplicaError::FencedLeaderEpoch) => {
                self.phase = Phase::Fenced;
                return Vec::new();
            }
            Some(ReplicaError::OffsetOutOfRange) if self.log_end < response.log_start_offset => {
                self.phase = Phase::BelowLeaderStart;
                return Vec::new();
            }
            Some(error) => return vec![FollowerAction::Retry(error)],
            None => {}
        }
        if let Some((epoch, end)) = response.diverging_epoch {
            let target = self.truncation_target(epoch, end, log);
            self.phase = Phase::Truncating;
            return vec![FollowerAction::Truncate(target)];
        }
        if !response.batches.is_empty() {
            self.phase = Phase::Appending {
                leader_high_watermark: response.high_watermark,
            };
            return vec![FollowerAction::Append(response.batches.clone())];
        }
        self.advance_high_watermark(response.high_watermark)
            .into_iter()
            .collect()
    }

    /// KIP-279: truncate to the lower of the leader's and our own end for the diverging
    /// epoch; if we do not have that epoch, to our end of the largest epoch below it (and the
    /// next fetch re-validates).
    ///
    /// A target below the high watermark means the leader lacks records this replica counted
    /// as committed: only an unclean leader election elects such a leader (a clean one comes
    /// from the ISR and holds them all). The leader's log is the truth then; the high watermark
    /// goes down with the log, as the log's own `truncate_to` clamps it.
    fn truncation_target(
        &mut self,
        epoch: LeaderEpoch,
        leader_end: Offset,
        log: &dyn LogView,
    ) -> Offset {
        let (own_epoch, own_end) = log.end_offset_for_epoch(epoch);
        let target = if own_epoch == epoch {
            own_end.min(leader_end)
        } else {
            own_end
        };
        let target = target.min(self.log_end);
        if target < self.high_watermark {
            tracing::warn!(
                tp = %self.tp,
                %target,
                high_watermark = %self.high_watermark,
                ?epoch,
                %leader_end,
                %own_end,
                "truncating below the high watermark: the leader's log ends below it \
                 (an unclean leader election); committed records are lost"
            );
            self.high_watermark = target;
        }
        target
    }

    /// The driver truncated the log as asked. `log` is the local log.
    pub fn on_truncated(&mut self, log: &dyn LogView) {
        assert_eq!(
            self.phase,
            Phase::Truncating,
            "{}: truncation not asked",
            self.tp
        );
        self.refresh(log);
        if self.log_end < self.high_watermark {
            // The log cuts whole batches: a target inside one (only below the high watermark
            // after an unclean election, where the logs' batches differ) ends the log lower.
            // The log clamps its high watermark the same way.
            self.high_watermark = self.log_end;
        }
        self.phase = Phase::Idle;
    }

    /// The driver appended the fetched batches durably. `log` is the local log.
    pub fn on_appended(&mut self, log: &dyn LogView) -> Vec<FollowerAction> {
        let Phase::Appending {
            leader_high_watermark,
        } = self.phase
        else {
            panic!("{}: append not asked", self.tp);
        };
        let before = self.log_end;
        self.refresh(log);
        assert!(
            self.log_end > before,
            "{}: append did not extend the log",
            self.tp
        );
        self.phase = Phase::Idle;
        self.advance_high_watermark(leader_high_watermark)
            .into_iter()
            .collect()
    }

    /// The append failed (the driver logs why); fetch again from the log end.
    pub fn on_append_failed(&mut self, log: &dyn LogView) {
        assert!(
            matches!(self.phase, Phase::Appending { .. }),
            "{}: append not asked",
            self.tp
        );
        self.refresh(log);
        self.phase = Phase::Idle;
    }

    fn refresh(&mut self, log: &dyn LogView) {
        self.log_end = log.log_end_offset();
        self.log_start = log.log_start_offset();
        self.latest_epoch = log.latest_epoch();
    }

    fn advance_high_watermark(&mut self, leader: Offset) -> Option<FollowerAction> {
        let candidate = leader.min(self.log_end);
        if candidate <= self.high_watermark {
            return None;
        }
        self.high_watermark = candidate;
        Some(FollowerAction::HighWatermark(candidate))
    }
}
