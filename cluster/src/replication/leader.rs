//! [`LeaderCore`]: the leader side of one partition's replication, as a sans-IO state machine.
//!
//! It knows the replica set and the ISR (from metadata), each follower's validated log end and
//! last caught-up time, the high watermark, and the acks=all appends waiting for it. Inputs are
//! method calls carrying the time and a read-only view of the leader's log ([`LogView`]);
//! outputs are [`LeaderAction`]s for the driver (set the high watermark, complete an acks=all
//! produce, propose an ISR change to the controller). It never reads a clock and does no I/O.
//!
//! Rules (Kafka's, with the Raft commit rule on top):
//!
//! - A follower's position counts only when its fetch is on the leader's log: the request's
//!   `(last_fetched_epoch, fetch_offset)` is checked with the epoch cache, and a follower whose
//!   log diverges gets `diverging_epoch` instead of batches and no position.
//! - High watermark = the minimum log end over the maximal ISR (committed ISR plus a proposed
//!   expansion, KIP-497 style), counting the leader's own *durable* end. It advances only when
//!   that minimum covers an offset of the leader's own epoch (Raft's rule: never commit inherited
//!   entries by counting replicas alone), and never moves backwards while the leader holds its
//!   epoch.
//! - Consumers are served a high watermark only once it has reached the leader's epoch start
//!   ([`LeaderCore::consumer_high_watermark`], KIP-207 style): before that the new leader's
//!   high watermark may lag the old leader's, and showing it would move a consumer's high
//!   watermark backwards.
//! - acks=all: refused with `NotEnoughReplicas` when the committed ISR is smaller than
//!   `min.insync.replicas`; a waiter completes when the high watermark passes its last offset,
//!   with `NotEnoughReplicasAfterAppend` if the ISR is then smaller than the minimum.
//! - ISR shrink: a follower not caught up for `replica.lag.time.max.ms` (Kafka's caught-up
//!   rule: its fetch reached the leader's log end, or the log end of its previous fetch).
//!   ISR expand: a follower whose log end reached the high watermark and the epoch start.
//!   Both are proposals carrying the leader epoch; one at a time, applied when the controller's
//!   new [`PartitionState`] arrives. A proposal stays pending (a proposed expansion in the
//!   maximal ISR) until that answer, however long it takes: the controller may still commit
//!   it. Unanswered, it is sent again unchanged every `isr_change_retry`. Each proposal names
//!   the partition epoch of the state it was made from, and the controller refuses it once
//!   that is not current (Kafka's INVALID_UPDATE_VERSION), so a delayed or repeated copy
//!   never undoes a later change; the leader then waits for the newer state.
//!
//! Must not depend on: the runtime, the clock, the log's I/O, or any protocol crate.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Instant;

use sluice_engine::{BrokerId, LeaderEpoch, Offset, TopicPartition};

use super::messages::{ReplicaError, ReplicaFetchPartition};
use super::{LogView, PartitionState, ReplicationConfig};
use crate::metadata::PartitionEpoch;

/// Identifies one acks=all produce waiting for replication; chosen by the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProduceId(pub u64);

/// An ISR change for the controller to commit (Kafka's AlterPartition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrProposal {
    /// The partition.
    pub tp: TopicPartition,
    /// The proposing leader.
    pub leader: BrokerId,
    /// The leader epoch the proposal was made in; the controller refuses another.
    pub leader_epoch: LeaderEpoch,
    /// The partition epoch of the state the proposal was made from; the controller refuses
    /// it once another change is committed (Kafka's `partition_epoch` in AlterPartition).
    pub partition_epoch: PartitionEpoch,
    /// The proposed ISR, sorted, the leader included.
    pub isr: Vec<BrokerId>,
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaderAction {
    /// The high watermark advanced to this offset: store it in the log and wake fetches.
    HighWatermark(Offset),
    /// An acks=all produce is done.
    Complete {
        /// The produce.
        id: ProduceId,
        /// Its outcome.
        result: Result<(), ReplicaError>,
    },
    /// Send this ISR change to the controller.
    ProposeIsr(IsrProposal),
}

/// What the driver serves for one partition of a replica fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchAnswer {
    /// Refused (no batches, no position recorded).
    pub error: Option<ReplicaError>,
    /// The follower's log diverges: send this and no batches.
    pub diverging_epoch: Option<(LeaderEpoch, Offset)>,
    /// Read batches from this offset up to the log end (when there is no error or divergence).
    pub read_from: Option<Offset>,
    /// The high watermark to send (after this fetch's effect).
    pub high_watermark: Offset,
    /// Actions caused by the fetch (high watermark, completions, ISR expansion).
    pub actions: Vec<LeaderAction>,
}

#[derive(Clone, Copy, Debug)]
struct Follower {
    /// The follower's log end as last proven by a fetch on the leader's log in this epoch;
    /// `None` until then (or after it diverged).
    log_end: Option<Offset>,
    last_caught_up: Instant,
    /// Time and leader log end of the previous fetch (Kafka's caught-up rule).
    last_fetch: Option<(Instant, Offset)>,
}

#[derive(Clone, Debug)]
struct Waiter {
    id: ProduceId,
    last_offset: Offset,
}

/// An ISR change sent to the controller and not answered yet.
#[derive(Clone, Debug)]
struct Pending {
    /// The proposed ISR; a retry sends the same proposal again (the core's leader, epoch and
    /// partition state do not change while it is pending).
    isr: BTreeSet<BrokerId>,
    /// When it was last sent.
    since: Instant,
}

/// The leader side of one partition; lives on the shard that owns the partition (`!Send` not
/// required: plain data).
#[derive(Debug)]
pub struct LeaderCore {
    tp: TopicPartition,
    local: BrokerId,
    epoch: LeaderEpoch,
    /// The partition epoch of the latest state applied. Invariant: never decreases.
    partition_epoch: PartitionEpoch,
    /// The offset the leader's first own-epoch append gets (its log's next offset at election).
    epoch_start: Offset,
    config: ReplicationConfig,
    replicas: Vec<BrokerId>,
    /// Invariant: contains `local`; a subset of `replicas`.
    isr: BTreeSet<BrokerId>,
    pending: Option<Pending>,
    /// Every replica but `local`.
    followers: BTreeMap<BrokerId, Follower>,
    /// The leader's own durable log end. Invariant: `>= high_watermark`.
    local_end: Offset,
    /// Invariant: never decreases.
    high_watermark: Offset,
    /// Invariant: ordered by `last_offset`, all `>= high_watermark`.
    waiters: VecDeque<Waiter>,
    /// The log may still change under the core: a truncation or append of the follower core
    /// this replica had is in flight, so the positions the core was built with may be stale.
    /// Invariant: while true, no waiters, no produce or replica fetch accepted, and the high
    /// watermark does not move (see [`LeaderCore::set_log_pending`]).
    log_pending: bool,
}

impl LeaderCore {
    /// Becomes leader of `state.leader_epoch` with the log as it is: nothing is truncated.
    /// `next_offset` is the log's next offset (where the first own-epoch append goes),
    /// `durable_end` its durable end and `high_watermark` its stored high watermark.
    ///
    /// # Panics
    /// If `state` does not name `local` as leader or lacks it in the ISR.
    pub fn new(
        tp: TopicPartition,
        local: BrokerId,
        state: &PartitionState,
        positions: LeaderPositions,
        config: ReplicationConfig,
        now: Instant,
    ) -> LeaderCore {
        assert_eq!(state.leader, local, "{tp}: leader core on a non-leader");
        assert!(
            state.isr.contains(&local),
            "{tp}: leader {local:?} is not in the ISR"
        );
        assert!(
            positions.high_watermark <= positions.durable_end,
            "{tp}: high watermark past the durable end"
        );
        let followers = state
            .replicas
            .iter()
            .filter(|replica| **replica != local)
            .map(|replica| {
                let follower = Follower {
                    log_end: None,
                    last_caught_up: now,
                    last_fetch: None,
                };
                (*replica, follower)
            })
            .collect();
        LeaderCore {
            tp,
            local,
            epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            epoch_start: positions.next_offset,
            config,
            replicas: state.replicas.clone(),
            isr: state.isr.iter().copied().collect(),
            pending: None,
            followers,
            local_end: positions.durable_end,
            high_watermark: positions.high_watermark,
            waiters: VecDeque::new(),
            log_pending: false,
        }
    }

    /// The log was still changing when this core was built (a follower core's truncation or
    /// append in flight): until [`Self::on_log_settled`], produces and replica fetches are
    /// refused (`NotLeader`, both retried by their senders), the local end is ignored and the
    /// high watermark stays. A truncation running under a leader core would otherwise move its
    /// durable end and epoch start backwards, under waiters and follower positions it counted.
    ///
    /// # Panics
    /// If the core has waiters already.
    pub fn set_log_pending(&mut self) {
        assert!(
            self.waiters.is_empty(),
            "{}: log pending with waiters",
            self.tp
        );
        self.log_pending = true;
    }

    /// True until the log the core was built on settled (see [`Self::set_log_pending`]).
    pub fn is_log_pending(&self) -> bool {
        self.log_pending
    }

    /// The log settled: the core takes its positions as they are now (like a new core), and
    /// starts serving.
    ///
    /// # Panics
    /// If the log was not pending, or `positions` have the high watermark past the durable end.
    pub fn on_log_settled(
        &mut self,
        positions: LeaderPositions,
        now: Instant,
    ) -> Vec<LeaderAction> {
        assert!(self.log_pending, "{}: log settled twice", self.tp);
        assert!(
            self.waiters.is_empty(),
            "{}: waiters while pending",
            self.tp
        );
        assert!(
            positions.high_watermark <= positions.durable_end,
            "{}: high watermark past the durable end",
            self.tp
        );
        self.log_pending = false;
        self.epoch_start = positions.next_offset;
        self.local_end = positions.durable_end;
        // Not a step back: the high watermark never moved while pending, and the log's can
        // only have gone down with a truncation (below it only after an unclean election).
        self.high_watermark = positions.high_watermark;
        for follower in self.followers.values_mut() {
            follower.log_end = None;
            follower.last_caught_up = now;
            follower.last_fetch = None;
        }
        let mut actions = Vec::new();
        self.advance_high_watermark(&mut actions);
        actions
    }

    /// The leader epoch.
    pub fn epoch(&self) -> LeaderEpoch {
        self.epoch
    }

    /// The high watermark (what followers are sent).
    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// The high watermark consumers may read below, or `None` while it has not reached the
    /// leader's epoch start (answer consumers with a retriable "not available" error then).
    pub fn consumer_high_watermark(&self) -> Option<Offset> {
        (self.high_watermark >= self.epoch_start).then_some(self.high_watermark)
    }

    /// The committed ISR, sorted.
    pub fn isr(&self) -> Vec<BrokerId> {
        self.isr.iter().copied().collect()
    }

    /// The offset where this leader's epoch starts.
    pub fn epoch_start(&self) -> Offset {
        self.epoch_start
    }

    /// Applies a changed `min.insync.replicas` (a topic config change).
    pub fn set_min_insync_replicas(&mut self, min_insync_replicas: usize) {
        self.config.min_insync_replicas = min_insync_replicas;
    }

    /// The `min.insync.replicas` in force.
    pub fn min_insync_replicas(&self) -> usize {
        self.config.min_insync_replicas
    }

    /// Checks an append before it is made: acks=all needs a committed ISR of at least
    /// `min.insync.replicas`.
    pub fn check_produce(&self, acks: Acks) -> Result<(), ReplicaError> {
        if self.log_pending {
            return Err(ReplicaError::NotLeader);
        }
        if acks == Acks::All && self.isr.len() < self.config.min_insync_replicas {
            return Err(ReplicaError::NotEnoughReplicas);
        }
        Ok(())
    }

    /// Registers an acks=all append whose last record is `last_offset` (appends registered in
    /// log order). It completes through a later [`LeaderAction::Complete`].
    pub fn wait_for_replication(&mut self, id: ProduceId, last_offset: Offset) {
        assert!(
            !self.log_pending,
            "{}: produce accepted while the log is pending",
            self.tp
        );
        assert!(
            last_offset >= self.high_watermark,
            "{}: waiter for {last_offset} below the high watermark {}",
            self.tp,
            self.high_watermark
        );
        assert!(
            last_offset >= self.epoch_start,
            "{}: waiter for {last_offset} before the epoch start {}",
            self.tp,
            self.epoch_start
        );
        if let Some(last) = self.waiters.back() {
            assert!(
                last.last_offset < last_offset,
                "{}: waiters out of log order",
                self.tp
            );
        }
        self.waiters.push_back(Waiter { id, last_offset });
    }

    /// The leader's own log became durable up to `durable_end` (as acks=all demands).
    pub fn on_local_end(&mut self, durable_end: Offset) -> Vec<LeaderAction> {
        if self.log_pending {
            // The log may be moving back (a truncation); `on_log_settled` reads it afresh.
            return Vec::new();
        }
        assert!(
            durable_end >= self.local_end,
            "{}: leader durable end moved back from {} to {durable_end}",
            self.tp,
            self.local_end
        );
        self.local_end = durable_end;
        let mut actions = Vec::new();
        self.advance_high_watermark(&mut actions);
        actions
    }

    /// Answers one partition of a replica fetch from `replica` (the driver then reads the
    /// batches from `read_from`).
    pub fn on_fetch(
        &mut self,
        replica: BrokerId,
        request: &ReplicaFetchPartition,
        log: &dyn LogView,
        now: Instant,
    ) -> FetchAnswer {
        let mut answer = FetchAnswer {
            error: None,
            diverging_epoch: None,
            read_from: None,
            high_watermark: self.high_watermark,
            actions: Vec::new(),
        };
        if let Err(error) = self.check_fetch(replica, request) {
            answer.error = Some(error);
            return answer;
        }
        let log_end = log.log_end_offset();
        if let Some(last_epoch) = request.last_fetched_epoch {
            let (epoch, end) = log.end_offset_for_epoch(last_epoch);
            if epoch != last_epoch || end < request.fetch_offset {
                answer.diverging_epoch = Some((epoch, end));
                self.follower_mut(replica).log_end = None;
                return answer;
            }
        }
        if request.fetch_offset > log_end || request.fetch_offset < log.log_start_offset() {
            answer.error = Some(ReplicaError::OffsetOutOfRange);
            return answer;
        }
        self.record_position(replica, request.fetch_offset, log_end, now);
        self.maybe_expand(replica, request.fetch_offset, now, &mut answer.actions);
        self.advance_high_watermark(&mut answer.actions);
        answer.high_watermark = self.high_watermark;
        answer.read_from = Some(request.fetch_offset);
        answer
    }

    fn check_fetch(
        &self,
        replica: BrokerId,
        request: &ReplicaFetchPartition,
    ) -> Result<(), ReplicaError> {
        assert_eq!(request.tp, self.tp, "fetch routed to the wrong partition");
        if request.current_leader_epoch < self.epoch {
            return Err(ReplicaError::FencedLeaderEpoch);
        }
        if request.current_leader_epoch > self.epoch {
            return Err(ReplicaError::UnknownLeaderEpoch);
        }
        if replica == self.local || !self.followers.contains_key(&replica) {
            return Err(ReplicaError::UnknownReplica);
        }
        if self.log_pending {
            return Err(ReplicaError::NotLeader);
        }
        Ok(())
    }

    fn follower_mut(&mut self, replica: BrokerId) -> &mut Follower {
        self.followers
            .get_mut(&replica)
            .expect("fetch checked the replica")
    }

    /// Kafka's `Replica.updateFetchState`: caught up when the fetch reached the leader's log
    /// end, or the leader's log end at the previous fetch (then as of that fetch).
    fn record_position(
        &mut self,
        replica: BrokerId,
        offset: Offset,
        log_end: Offset,
        now: Instant,
    ) {
        let follower = self.follower_mut(replica);
        if offset >= log_end {
            follower.last_caught_up = follower.last_caught_up.max(now);
        } else if let Some((time, end)) = follower.last_fetch
            && offset >= end
        {
            follower.last_caught_up = follower.last_caught_up.max(time);
        }
        follower.last_fetch = Some((now, log_end));
        follower.log_end = Some(offset);
    }

    fn maybe_expand(
        &mut self,
        replica: BrokerId,
        offset: Offset,
        now: Instant,
        actions: &mut Vec<LeaderAction>,
    ) {
        let caught_up = offset >= self.high_watermark && offset >= self.epoch_start;
        if !caught_up || self.isr.contains(&replica) || self.pending.is_some() {
            return;
        }
        let mut isr = self.isr.clone();
        isr.insert(replica);
        self.propose(isr, now, actions);
    }

    fn propose(&mut self, isr: BTreeSet<BrokerId>, now: Instant, actions: &mut Vec<LeaderAction>) {
        assert!(
            isr.contains(&self.local),
            "{}: ISR proposal without the leader",
            self.tp
        );
        assert_ne!(
            isr, self.isr,
            "{}: ISR proposal that changes nothing",
            self.tp
        );
        assert!(
            self.pending.is_none(),
            "{}: a second ISR proposal while one is pending",
            self.tp
        );
        actions.push(LeaderAction::ProposeIsr(self.isr_proposal(&isr)));
        self.pending = Some(Pending { isr, since: now });
    }

    fn isr_proposal(&self, isr: &BTreeSet<BrokerId>) -> IsrProposal {
        IsrProposal {
            tp: self.tp.clone(),
            leader: self.local,
            leader_epoch: self.epoch,
            partition_epoch: self.partition_epoch,
            isr: isr.iter().copied().collect(),
        }
    }

    /// Periodic work: proposes an ISR shrink for followers not caught up within
    /// `replica.lag.time.max.ms`, and re-proposes a change the controller has not answered.
    pub fn on_tick(&mut self, now: Instant) -> Vec<LeaderAction> {
        let mut actions = Vec::new();
        if self.log_pending {
            // Followers cannot fetch yet: their lag does not count.
            return actions;
        }
        if let Some(pending) = &self.pending {
            // One change at a time, kept until the controller's answer (a new partition
            // state): a proposed expansion stays in the maximal ISR until then, because the
            // controller may still commit it, and the high watermark must not pass what the
            // new member holds (Kafka's PendingExpandIsr). An unanswered proposal (lost, or
            // the controller busy) is sent again unchanged: the controller applies it at most
            // once, as a copy names a partition epoch that is then no longer current.
            if now.saturating_duration_since(pending.since) >= self.config.isr_change_retry {
                actions.push(LeaderAction::ProposeIsr(self.isr_proposal(&pending.isr)));
                self.pending = Some(Pending {
                    isr: pending.isr.clone(),
                    since: now,
                });
            }
            return actions;
        }
        let lagging: Vec<BrokerId> = self
            .isr
            .iter()
            .filter(|replica| **replica != self.local)
            .filter(|replica| {
                let follower = &self.followers[*replica];
                now.saturating_duration_since(follower.last_caught_up)
                    > self.config.replica_lag_time_max
            })
            .copied()
            .collect();
        if !lagging.is_empty() {
            let mut isr = self.isr.clone();
            for replica in &lagging {
                isr.remove(replica);
            }
            self.propose(isr, now, &mut actions);
        }
        actions
    }

    /// The controller published a new state for the partition in the same epoch (an ISR or
    /// replica-set change). A state of another epoch or leader needs a new core (see
    /// [`LeaderCore::resign`]).
    ///
    /// # Panics
    /// If `state` is of another epoch or leader, or its ISR lacks the leader.
    pub fn on_partition_state(
        &mut self,
        state: &PartitionState,
        now: Instant,
    ) -> Vec<LeaderAction> {
        assert_eq!(
            state.leader_epoch, self.epoch,
            "{}: state of another epoch",
            self.tp
        );
        assert_eq!(
            state.leader, self.local,
            "{}: state of another leader",
            self.tp
        );
        let isr: BTreeSet<BrokerId> = state.isr.iter().copied().collect();
        assert!(
            isr.contains(&self.local),
            "{}: ISR without its leader",
            self.tp
        );
        if state.partition_epoch < self.partition_epoch {
            // Older than a state already applied (Kafka skips it too): nothing to learn.
            return Vec::new();
        }
        // The controller's answer: the proposal was applied, or another change came first
        // (the proposal is then refused as stale, and the core decides afresh from the new
        // state). An unchanged state answers nothing: the proposal stays pending.
        let answered = self.pending.as_ref().is_some_and(|p| p.isr == isr)
            || state.partition_epoch != self.partition_epoch
            || isr != self.isr
            || state.replicas != self.replicas;
        if answered {
            self.pending = None;
        }
        self.partition_epoch = state.partition_epoch;
        self.isr = isr;
        self.replicas = state.replicas.clone();
        let local = self.local;
        self.followers
            .retain(|replica, _| state.replicas.contains(replica));
        for replica in state.replicas.iter().filter(|replica| **replica != local) {
            self.followers.entry(*replica).or_insert(Follower {
                log_end: None,
                last_caught_up: now,
                last_fetch: None,
            });
        }
        let mut actions = Vec::new();
        self.advance_high_watermark(&mut actions);
        actions
    }

    /// Gives up leadership (a new epoch, or the broker stops leading): every waiting acks=all
    /// produce completes with `NotLeader`.
    pub fn resign(mut self) -> Vec<LeaderAction> {
        self.fail_waiters()
    }

    /// [`Self::resign`] for a core still shared with a request in progress: the waiters
    /// complete with `NotLeader` and the core takes no more (the driver drops it).
    pub fn fail_waiters(&mut self) -> Vec<LeaderAction> {
        self.waiters
            .drain(..)
            .map(|waiter| LeaderAction::Complete {
                id: waiter.id,
                result: Err(ReplicaError::NotLeader),
            })
            .collect()
    }

    /// Each follower's lag behind the leader's log end, in offsets: `None` while its position
    /// in this epoch is unknown (no fetch on the leader's log yet).
    pub fn follower_lag(&self) -> Vec<(BrokerId, Option<i64>)> {
        self.followers
            .iter()
            .map(|(replica, follower)| {
                let lag = follower
                    .log_end
                    .map(|end| (self.local_end.0 - end.0).max(0));
                (*replica, lag)
            })
            .collect()
    }

    /// The maximal ISR: the committed ISR plus a proposed expansion (a proposed shrink still
    /// counts the leaving members until it is committed).
    fn maximal_isr(&self) -> BTreeSet<BrokerId> {
        let mut isr = self.isr.clone();
        if let Some(pending) = &self.pending {
            isr.extend(pending.isr.iter().copied());
        }
        isr
    }

    fn advance_high_watermark(&mut self, actions: &mut Vec<LeaderAction>) {
        if self.log_pending {
            return;
        }
        let mut candidate = self.local_end;
        for replica in self.maximal_isr() {
            if replica == self.local {
                continue;
            }
            match self.followers.get(&replica).and_then(|f| f.log_end) {
                Some(end) => candidate = candidate.min(end),
                // A member whose position is unknown holds the high watermark.
                None => return,
            }
        }
        // Raft's rule: only an offset of the leader's own epoch commits (and with it
        // everything before).
        if candidate <= self.high_watermark || candidate <= self.epoch_start {
            return;
        }
        assert!(
            candidate <= self.local_end,
            "{}: high watermark {candidate} past the leader's durable end",
            self.tp
        );
        self.high_watermark = candidate;
        actions.push(LeaderAction::HighWatermark(candidate));
        let enough = self.isr.len() >= self.config.min_insync_replicas;
        while let Some(waiter) = self.waiters.front() {
            if waiter.last_offset >= candidate {
                break;
            }
            let waiter = self.waiters.pop_front().expect("front exists");
            let result = if enough {
                Ok(())
            } else {
                Err(ReplicaError::NotEnoughReplicasAfterAppend)
            };
            actions.push(LeaderAction::Complete {
                id: waiter.id,
                result,
            });
        }
    }
}

/// The leader log's positions when it becomes leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderPositions {
    /// The log's next offset: where the first append of the new epoch goes.
    pub next_offset: Offset,
    /// The log's durable end.
    pub durable_end: Offset,
    /// The stored high watermark.
    pub high_watermark: Offset,
}

/// The producer's acknowledgement level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// acks=0 or acks=1: the leader's own write.
    Leader,
    /// acks=all: every ISR member.
    All,
}
