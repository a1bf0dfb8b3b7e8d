//! [`ShardReplication`]: the replication driver of one shard in a cluster. It joins the
//! sans-IO cores to the shard's logs, its peer links and the controller:
//!
//! - the partitions this broker leads, each a [`LeaderReplica`] (core and log), serving
//!   replica fetches from the followers' shards (`PeerKind::ReplicaFetch`, long-polled until
//!   a led log grows) and completing acks=all produces as the high watermark passes them;
//! - the partitions it follows, in a [`Fetcher`] whose per-leader loops fetch over the peer
//!   links ([`PeerFetchTransport`]);
//! - a ticker (ISR shrink for followers that fall behind, re-proposals), ISR proposals handed
//!   to the shard's proposer (which commits them as `AlterPartition`).
//!
//! Roles come from metadata: the shard calls [`ShardReplication::lead`],
//! [`ShardReplication::follow`] or [`ShardReplication::release`] for each of its partitions
//! on every snapshot. Leaving leadership completes the waiting acks=all produces with
//! `NotLeader`; a new epoch always gets a fresh core (nothing is truncated on becoming
//! follower: the fetcher's first answer re-validates the tail).
//!
//! Shard-local (`!Send`); never holds a `RefCell` borrow across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use sluice_engine::log::PartitionLog;
use sluice_engine::util::Notify;
use sluice_engine::{BrokerId, Offset, ShardId, TopicPartition};

use super::fetcher::{FetchTarget, Fetcher, FetcherStats, ReplicaFetchTransport, TransportError};
use super::follower::FollowerCore;
use super::leader::{IsrProposal, LeaderAction, LeaderCore, LeaderPositions, ProduceId};
use super::messages::{ReplicaError, ReplicaFetchRequest, ReplicaFetchResponse};
use super::serve::{LeaderReplica, serve_replica_fetch};
use super::{PartitionState, ReplicationConfig, wire};
use crate::peer::{PeerError, PeerKind, PeerRequest, PeerTransport};

/// Broker-wide replication settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicationSettings {
    /// `replica.lag.time.max.ms`.
    pub replica_lag_time_max: Duration,
    /// How long an ISR proposal may stay unanswered before it is sent again (unchanged).
    pub isr_change_retry: Duration,
    /// Most batch bytes one replica fetch answer carries (`replica.fetch.response.max.bytes`).
    pub fetch_max_bytes: u32,
    /// Longest a leader holds a replica fetch that has nothing new (`replica.fetch.wait.max.ms`).
    pub fetch_max_wait: Duration,
    /// Longest an acks=all produce waits for the in-sync replicas after its local append.
    pub produce_timeout: Duration,
}

impl ReplicationSettings {
    /// Kafka's defaults where it has them (30 s lag, 500 ms fetch wait), with the replication
    /// wait of an acks=all produce at twice the lag: by then a follower that stopped fetching
    /// has been proposed out of the ISR, and a leader that cannot commit that is cut off.
    pub fn with_lag(replica_lag_time_max: Duration) -> ReplicationSettings {
        ReplicationSettings {
            replica_lag_time_max,
            isr_change_retry: Duration::from_secs(1),
            fetch_max_bytes: 4 << 20,
            fetch_max_wait: Duration::from_millis(500),
            produce_timeout: (replica_lag_time_max * 2).max(Duration::from_secs(1)),
        }
    }
}

/// Commits an ISR proposal (the shard sends it to the controller as `AlterPartition`).
pub type IsrProposer = Box<dyn Fn(IsrProposal)>;

/// How often leaders check for lagging followers.
const TICK: Duration = Duration::from_millis(100);
/// How long a follower partition waits after an error before fetching again.
const FETCH_BACKOFF: Duration = Duration::from_millis(100);
/// How long a fetch loop sleeps when none of its partitions is ready.
const FETCH_IDLE: Duration = Duration::from_millis(1);

struct Led {
    replica: Rc<LeaderReplica>,
    /// The partition's "new data for consumers" signal, bumped when the high watermark moves.
    visible: Rc<Notify>,
}

/// The acknowledgement of one acks=all produce by the in-sync replicas.
pub type ReplicationWait = oneshot::Receiver<Result<(), ReplicaError>>;

/// One shard's replication driver (see the module docs).
pub struct ShardReplication {
    /// This driver, for the tasks it spawns.
    this: std::rc::Weak<ShardReplication>,
    local: BrokerId,
    shard: ShardId,
    settings: ReplicationSettings,
    fetcher: Fetcher<PeerFetchTransport>,
    /// Never borrowed across an `.await`.
    leaders: RefCell<HashMap<TopicPartition, Led>>,
    /// acks=all produces waiting for the high watermark. Never borrowed across an `.await`.
    waiters: RefCell<HashMap<ProduceId, oneshot::Sender<Result<(), ReplicaError>>>>,
    next_produce: Cell<u64>,
    /// Bumped when a led log grows: wakes long-polled replica fetches.
    appended: Notify,
    proposer: IsrProposer,
    stop: Cell<bool>,
}

impl ShardReplication {
    /// A driver for shard `shard` of broker `local`, fetching over `peers`.
    pub fn new(
        local: BrokerId,
        shard: ShardId,
        peers: Rc<dyn PeerTransport>,
        settings: ReplicationSettings,
        proposer: IsrProposer,
    ) -> Rc<ShardReplication> {
        let transport = PeerFetchTransport { peers, shard };
        let fetcher = Fetcher::new(
            local,
            transport,
            settings.fetch_max_bytes,
            settings.fetch_max_wait,
        )
        .with_backoff(FETCH_BACKOFF);
        Rc::new_cyclic(|this| ShardReplication {
            this: this.clone(),
            local,
            shard,
            settings,
            fetcher,
            leaders: RefCell::new(HashMap::new()),
            waiters: RefCell::new(HashMap::new()),
            next_produce: Cell::new(0),
            appended: Notify::new(),
            proposer,
            stop: Cell::new(false),
        })
    }

    /// Starts the fetch loops and the leaders' ticker; both run until [`Self::stop`].
    pub fn start(self: &Rc<Self>) {
        let this = Rc::clone(self);
        sluice_engine::rt::spawn(async move {
            this.fetcher.run(&this.stop, FETCH_IDLE).await;
        })
        .detach();
        let weak = Rc::downgrade(self);
        sluice_engine::rt::spawn(async move {
            // Runs for the life of the driver; ends when it stops or is dropped.
            loop {
                sluice_engine::rt::sleep(TICK).await;
                let Some(this) = weak.upgrade() else { return };
                if this.stop.get() {
                    return;
                }
                this.tick();
            }
        })
        .detach();
    }

    /// Stops fetching and ticking, and fails the waiting produces (the broker is stopping).
    pub fn stop(&self) {
        self.stop.set(true);
        self.appended.notify();
        let led: Vec<TopicPartition> = self.leaders.borrow().keys().cloned().collect();
        for tp in led {
            self.release(&tp);
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &ReplicationSettings {
        &self.settings
    }

    /// Fetcher counters.
    pub fn fetcher_stats(&self) -> FetcherStats {
        self.fetcher.stats()
    }

    /// Per led partition and follower: how many offsets the follower is behind the leader's
    /// log end (`None`: position not known in this epoch yet).
    pub fn follower_lag(&self) -> Vec<(TopicPartition, BrokerId, Option<i64>)> {
        let leaders = self.leaders.borrow();
        leaders
            .iter()
            .flat_map(|(tp, led)| {
                let lag = led.replica.core.borrow().follower_lag();
                lag.into_iter()
                    .map(move |(replica, lag)| (tp.clone(), replica, lag))
            })
            .collect()
    }

    /// The leader state of `tp`, if this broker leads it.
    pub fn leader(&self, tp: &TopicPartition) -> Option<Rc<LeaderReplica>> {
        self.leaders
            .borrow()
            .get(tp)
            .map(|led| Rc::clone(&led.replica))
    }

    /// Leads `tp` as `state` says (this broker is its leader). The same epoch keeps the core
    /// and applies the state (ISR or replica changes); a new epoch starts a new core on the
    /// log as it is. Returns the leader state, or `None` if the state is unusable (the ISR
    /// lacks this broker: the partition is then served by nobody here).
    pub fn lead(
        &self,
        tp: &TopicPartition,
        log: &Rc<PartitionLog>,
        visible: &Rc<Notify>,
        state: &PartitionState,
        min_insync_replicas: usize,
    ) -> Option<Rc<LeaderReplica>> {
        debug_assert_eq!(state.leader, self.local);
        let now = sluice_engine::rt::clock::now();
        if let Some(replica) = self.leader(tp) {
            let same_epoch = replica.core.borrow().epoch() == state.leader_epoch;
            if same_epoch && state.isr.contains(&self.local) {
                let actions = {
                    let mut core = replica.core.borrow_mut();
                    core.set_min_insync_replicas(min_insync_replicas);
                    core.on_partition_state(state, now)
                };
                self.apply(tp, actions);
                return Some(replica);
            }
        }
        self.release(tp);
        if !state.isr.contains(&self.local) {
            tracing::error!(%tp, ?state, "metadata names this broker leader outside the ISR");
            return None;
        }
        let positions = LeaderPositions {
            next_offset: log.next_offset(),
            durable_end: log.log_end_offset(),
            high_watermark: log.high_watermark(),
        };
        let config = ReplicationConfig {
            replica_lag_time_max: self.settings.replica_lag_time_max,
            min_insync_replicas,
            isr_change_retry: self.settings.isr_change_retry,
        };
        let mut core = LeaderCore::new(tp.clone(), self.local, state, positions, config, now);
        // Log operations are serial across a partition's cores, as for follower cores: a
        // truncation or append of the follower core this replica had may still be running, and
        // would move the log under the positions just read. The core then serves nothing until
        // the log settled and it read them again (`settle`).
        let log_pending = self.fetcher.log_busy(tp);
        if log_pending {
            core.set_log_pending();
        }
        tracing::info!(%tp, epoch = state.leader_epoch.0, isr = ?state.isr, log_pending, "leading");
        let replica = Rc::new(LeaderReplica {
            core: RefCell::new(core),
            log: Rc::clone(log),
        });
        let led = Led {
            replica: Rc::clone(&replica),
            visible: Rc::clone(visible),
        };
        self.leaders.borrow_mut().insert(tp.clone(), led);
        if log_pending {
            let this = self
                .this
                .upgrade()
                .expect("the driver is alive while it leads");
            let (tp, pending) = (tp.clone(), Rc::clone(&replica));
            sluice_engine::rt::spawn(async move {
                this.fetcher.log_idle(&tp).await;
                this.settle(&tp, &pending);
            })
            .detach();
        } else {
            // A single-replica ISR (RF 1, or the others fenced) can commit what the log holds.
            self.local_end_moved(tp);
        }
        Some(replica)
    }

    /// The log of a leader core built while it was still changing is idle: the core reads
    /// its positions again and starts serving (unless it no longer leads).
    fn settle(&self, tp: &TopicPartition, pending: &Rc<LeaderReplica>) {
        let current = self.leader(tp);
        if !current.is_some_and(|current| Rc::ptr_eq(&current, pending)) {
            return;
        }
        let log = &pending.log;
        let positions = LeaderPositions {
            next_offset: log.next_offset(),
            durable_end: log.log_end_offset(),
            high_watermark: log.high_watermark(),
        };
        let now = sluice_engine::rt::clock::now();
        tracing::info!(%tp, ?positions, "leading on the settled log");
        let actions = pending.core.borrow_mut().on_log_settled(positions, now);
        self.apply(tp, actions);
        self.local_end_moved(tp);
    }

    /// True while the fetcher's truncation or append on `tp`'s log is in flight.
    pub fn log_busy(&self, tp: &TopicPartition) -> bool {
        self.fetcher.log_busy(tp)
    }

    /// Follows `state.leader` for `tp`, whose partition lives on `shard` of every replica.
    /// Keeps fetching unchanged if it already follows that leader in that epoch.
    pub fn follow(&self, tp: &TopicPartition, log: &Rc<PartitionLog>, state: &PartitionState) {
        debug_assert_ne!(state.leader, self.local);
        if self.fetcher.following(tp) == Some((state.leader, state.leader_epoch)) {
            return;
        }
        self.release(tp);
        let core = FollowerCore::new(tp.clone(), self.local, state, &**log, log.high_watermark());
        let target = FetchTarget {
            leader: state.leader,
            shard: self.shard,
        };
        tracing::info!(%tp, leader = state.leader.0, epoch = state.leader_epoch.0, "following");
        self.fetcher.add(core, Rc::clone(log), target);
    }

    /// Neither leads nor follows `tp` any more (it has no leader, moved away, or is closing):
    /// waiting acks=all produces fail with `NotLeader`.
    pub fn release(&self, tp: &TopicPartition) {
        self.fetcher.remove(tp);
        let Some(led) = self.leaders.borrow_mut().remove(tp) else {
            return;
        };
        tracing::info!(%tp, "no longer leading");
        // A replica fetch being served may still hold the state; it finds the partition gone
        // on its next look and answers NotLeader.
        let actions = led.replica.core.borrow_mut().fail_waiters();
        self.apply_completions(actions);
    }

    /// Completes waiters of a core that has left the leaders map.
    fn apply_completions(&self, actions: Vec<LeaderAction>) {
        for action in actions {
            if let LeaderAction::Complete { id, result } = action {
                let waiter = self.waiters.borrow_mut().remove(&id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(result);
                }
            }
        }
    }

    /// Registers an acks=all append of `tp` whose last record is `last_offset`. Call right
    /// after issuing the append (appends are issued in log order, so waiters are too).
    pub fn wait_for(&self, replica: &LeaderReplica, last_offset: Offset) -> ReplicationWait {
        let id = ProduceId(self.next_produce.get());
        self.next_produce.set(id.0 + 1);
        let (done, wait) = oneshot::channel();
        self.waiters.borrow_mut().insert(id, done);
        replica
            .core
            .borrow_mut()
            .wait_for_replication(id, last_offset);
        wait
    }

    /// The local log of a led partition grew (an append completed): the leader's own end
    /// counts toward the high watermark, and long-polled replica fetches wake.
    pub fn local_end_moved(&self, tp: &TopicPartition) {
        let Some(replica) = self.leader(tp) else {
            return;
        };
        let actions = replica
            .core
            .borrow_mut()
            .on_local_end(replica.log.log_end_offset());
        self.apply(tp, actions);
        self.appended.notify();
    }

    /// Answers a follower shard's replica fetch, holding it up to its `max_wait_ms` (at most
    /// the configured fetch wait) while none of its partitions has anything new.
    pub async fn serve(&self, request: &ReplicaFetchRequest) -> ReplicaFetchResponse {
        let wait =
            Duration::from_millis(u64::from(request.max_wait_ms)).min(self.settings.fetch_max_wait);
        let deadline = sluice_engine::rt::clock::now() + wait;
        loop {
            let seen = self.appended.version();
            let lookup = |tp: &TopicPartition| self.leader(tp);
            let now = sluice_engine::rt::clock::now();
            let (response, actions) = serve_replica_fetch(&lookup, request, now).await;
            for (tp, action) in actions {
                self.apply(&tp, vec![action]);
            }
            let news = response
                .partitions
                .iter()
                .any(|p| p.error.is_some() || p.diverging_epoch.is_some() || !p.batches.is_empty());
            let now = sluice_engine::rt::clock::now();
            if news || self.stop.get() || now >= deadline {
                return response;
            }
            let grown = std::pin::pin!(self.appended.changed(seen));
            let timeout = std::pin::pin!(sluice_engine::rt::sleep(deadline - now));
            futures::future::select(grown, timeout).await;
        }
    }

    fn tick(&self) {
        let now = sluice_engine::rt::clock::now();
        let led: Vec<(TopicPartition, Rc<LeaderReplica>)> = self
            .leaders
            .borrow()
            .iter()
            .map(|(tp, led)| (tp.clone(), Rc::clone(&led.replica)))
            .collect();
        for (tp, replica) in led {
            let actions = replica.core.borrow_mut().on_tick(now);
            self.apply(&tp, actions);
        }
    }

    fn apply(&self, tp: &TopicPartition, actions: Vec<LeaderAction>) {
        for action in actions {
            match action {
                LeaderAction::HighWatermark(offset) => {
                    let leaders = self.leaders.borrow();
                    // Actions of a replica fetch are applied after its reads: a newer high
                    // watermark (a local append, another follower's fetch, or the previous
                    // epoch's core) may have been stored meanwhile. The high watermark only
                    // moves forward; an older value is simply obsolete.
                    if let Some(led) = leaders.get(tp)
                        && offset > led.replica.log.high_watermark()
                    {
                        led.replica.log.set_high_watermark(offset);
                        led.visible.notify();
                    }
                }
                // The producer may have stopped waiting (timed out); then nothing happens.
                complete @ LeaderAction::Complete { .. } => self.apply_completions(vec![complete]),
                LeaderAction::ProposeIsr(proposal) => {
                    tracing::info!(%tp, isr = ?proposal.isr, "proposing ISR change");
                    (self.proposer)(proposal);
                }
            }
        }
    }
}

/// The replica fetcher's transport over the shard's peer links: shard i reaches shard i of
/// the leader (the partition lives on the same shard of every replica).
pub struct PeerFetchTransport {
    peers: Rc<dyn PeerTransport>,
    shard: ShardId,
}

impl ReplicaFetchTransport for PeerFetchTransport {
    async fn replica_fetch(
        &self,
        leader: BrokerId,
        shard: ShardId,
        request: ReplicaFetchRequest,
    ) -> Result<ReplicaFetchResponse, TransportError> {
        assert_eq!(
            shard, self.shard,
            "peer links join equal shards; a partition lives on one shard id everywhere"
        );
        let call = self.peers.call(
            leader,
            PeerRequest {
                kind: PeerKind::ReplicaFetch,
                header: wire::encode_request(&request),
                payload: bytes::Bytes::new(),
            },
        );
        match call.await {
            Ok(Ok(response)) => wire::decode_response(response.header, response.payload)
                .map_err(|e| TransportError::Failed(e.to_string())),
            Ok(Err(PeerError::Timeout(_))) => Err(TransportError::Timeout),
            Ok(Err(PeerError::Unreachable { .. } | PeerError::UnknownPeer(_))) | Err(_) => {
                Err(TransportError::Unreachable(leader))
            }
            Ok(Err(other)) => Err(TransportError::Failed(other.to_string())),
        }
    }
}
