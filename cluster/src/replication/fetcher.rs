//! The per-shard follower driver: [`Fetcher`] holds the shard's follower partitions (a
//! [`FollowerCore`] and the `PartitionLog` it drives each), groups them by leader
//! ([`FetchTarget`]: broker and shard), sends one batched [`ReplicaFetchRequest`] per leader at
//! a time through a [`ReplicaFetchTransport`], and applies the cores' actions to the logs
//! (truncate, append with `Durability::Synced`, set the high watermark).
//!
//! [`Fetcher::run_round`] sends one request to every leader that has partitions ready, handles
//! the answers as they arrive, and returns (tests step with it); [`Fetcher::run`] runs one
//! fetch loop per leader until stopped, so a leader that long-polls an idle request never
//! delays the fetches from the others. The partitions of one answer append concurrently.
//!
//! [`InMemoryTransport`] answers requests from leader partitions in the same process, for tests.
//!
//! Must not depend on: the network layer (it implements [`ReplicaFetchTransport`]).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sluice_engine::log::{Durability, PartitionLog};
use sluice_engine::util::Notify;
use sluice_engine::{BrokerId, Offset, ShardId, TopicPartition};

use super::follower::{FollowerAction, FollowerCore};
use super::leader::LeaderAction;
use super::messages::{ReplicaFetchPartitionResponse, ReplicaFetchRequest, ReplicaFetchResponse};
use super::serve::{LeaderReplica, serve_replica_fetch};

/// Where a follower partition fetches from: the leader broker and the shard owning the
/// partition there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FetchTarget {
    /// The leader broker.
    pub leader: BrokerId,
    /// The shard owning the partition on the leader.
    pub shard: ShardId,
}

/// Why a replica fetch got no answer. Every variant is retried by the fetcher after a back-off;
/// the partitions of the request fetch again from where they were.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No link to the leader (not connected, connection lost).
    #[error("leader {} unreachable", .0.0)]
    Unreachable(BrokerId),
    /// The leader did not answer in time.
    #[error("replica fetch timed out")]
    Timeout,
    /// The leader failed the request or answered something that could not be decoded.
    #[error("replica fetch failed: {0}")]
    Failed(String),
}

/// Carries replica fetches to leader shards (`PeerFetchTransport` over the peer links).
pub trait ReplicaFetchTransport {
    /// Sends `request` to `shard` of broker `leader` and waits for its answer.
    fn replica_fetch(
        &self,
        leader: BrokerId,
        shard: ShardId,
        request: ReplicaFetchRequest,
    ) -> impl Future<Output = Result<ReplicaFetchResponse, TransportError>>;
}

/// Counters of one fetcher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FetcherStats {
    /// Requests sent.
    pub requests: u64,
    /// Requests without an answer.
    pub transport_errors: u64,
    /// Batch bytes appended.
    pub appended_bytes: u64,
    /// Truncations done.
    pub truncations: u64,
    /// Appends or truncations that failed on the log.
    pub log_errors: u64,
}

struct FollowerPartition {
    /// Distinguishes this core from earlier ones of the same partition: an answer to a fetch
    /// sent for an earlier core (another leader or epoch) is dropped, not fed to this one.
    generation: u64,
    core: FollowerCore,
    log: Rc<PartitionLog>,
    target: FetchTarget,
    /// Not fetched again before this time (after an error).
    backoff_until: Option<Instant>,
    /// Invariant: false until the core re-read the log once no earlier operation on it was in
    /// flight (`FollowerCore::reread_log`); nothing is fetched before.
    started: bool,
}

/// The shard's follower partitions and their fetching. Lives on one shard (`!Send`).
pub struct Fetcher<T> {
    local: BrokerId,
    transport: T,
    max_bytes: u32,
    max_wait_ms: u32,
    backoff: Duration,
    /// Never borrowed across an `.await`.
    partitions: RefCell<BTreeMap<TopicPartition, FollowerPartition>>,
    /// Bumped when a partition is added (a new leader may need a fetch loop).
    added: Notify,
    /// The next `FollowerPartition::generation`.
    generations: Cell<u64>,
    /// Truncations and appends issued and not finished, per partition, whatever core issued
    /// them (see [`LogOperation`]). Never borrowed across an `.await`.
    operations: RefCell<BTreeMap<TopicPartition, u32>>,
    /// Bumped when a partition's last operation in flight ends.
    operations_ended: Notify,
    stats: Cell<FetcherStats>,
}

/// A request on its way to one leader, with the generation of each partition's core at the
/// time it was built.
struct Outgoing {
    request: ReplicaFetchRequest,
    generations: BTreeMap<TopicPartition, u64>,
}

/// How often [`Fetcher::run`] looks at its stop flag when nothing else wakes it.
const RUN_CHECK_PERIOD: Duration = Duration::from_millis(100);

impl<T: ReplicaFetchTransport> Fetcher<T> {
    /// A fetcher for broker `local`: each request asks for at most `max_bytes` (Kafka's
    /// `replica.fetch.response.max.bytes`) and lets the leader wait `max_wait` for data.
    pub fn new(local: BrokerId, transport: T, max_bytes: u32, max_wait: Duration) -> Fetcher<T> {
        assert!(max_bytes > 0, "replica fetch max bytes must be positive");
        Fetcher {
            local,
            transport,
            max_bytes,
            max_wait_ms: u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX),
            backoff: Duration::from_millis(100),
            partitions: RefCell::new(BTreeMap::new()),
            added: Notify::new(),
            generations: Cell::new(0),
            operations: RefCell::new(BTreeMap::new()),
            operations_ended: Notify::new(),
            stats: Cell::new(FetcherStats::default()),
        }
    }

    /// Sets how long a partition waits before fetching again after an error (default 100 ms).
    #[must_use]
    pub fn with_backoff(mut self, backoff: Duration) -> Fetcher<T> {
        self.backoff = backoff;
        self
    }

    /// The transport (tests reach their in-memory leaders through it).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// Starts following a partition (replacing any earlier core for it, as on a new epoch).
    pub fn add(&self, core: FollowerCore, log: Rc<PartitionLog>, target: FetchTarget) {
        assert_eq!(
            core.leader(),
            target.leader,
            "{}: target is not the leader",
            core.tp()
        );
        assert_ne!(
            target.leader,
            self.local,
            "{}: following ourselves",
            core.tp()
        );
        let generation = self.generations.get();
        self.generations.set(generation + 1);
        let partition = FollowerPartition {
            generation,
            core,
            log,
            target,
            backoff_until: None,
            started: false,
        };
        let tp = partition.core.tp().clone();
        self.partitions.borrow_mut().insert(tp, partition);
        self.added.notify();
    }

    /// True while a truncation or append this fetcher issued on `tp`'s log (for any core of
    /// the partition) has not finished.
    pub fn log_busy(&self, tp: &TopicPartition) -> bool {
        self.operations.borrow().contains_key(tp)
    }

    /// Waits until no truncation or append this fetcher issued on `tp`'s log is in flight.
    pub async fn log_idle(&self, tp: &TopicPartition) {
        loop {
            let seen = self.operations_ended.version();
            if !self.log_busy(tp) {
                return;
            }
            self.operations_ended.changed(seen).await;
        }
    }

    /// Stops following a partition (it became leader, or moved away).
    pub fn remove(&self, tp: &TopicPartition) -> Option<FollowerCore> {
        self.partitions
            .borrow_mut()
            .remove(tp)
            .map(|partition| partition.core)
    }

    /// The leader and epoch a follower partition follows.
    pub fn following(&self, tp: &TopicPartition) -> Option<(BrokerId, sluice_engine::LeaderEpoch)> {
        self.partitions
            .borrow()
            .get(tp)
            .map(|partition| (partition.core.leader(), partition.core.epoch()))
    }

    /// A follower partition's high watermark.
    pub fn high_watermark(&self, tp: &TopicPartition) -> Option<Offset> {
        self.partitions
            .borrow()
            .get(tp)
            .map(|partition| partition.core.high_watermark())
    }

    /// Counters.
    pub fn stats(&self) -> FetcherStats {
        self.stats.get()
    }

    fn count(&self, f: impl FnOnce(&mut FetcherStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    /// The requests of one round: per leader (or for `only` that one), every partition ready
    /// to fetch.
    fn build_requests(
        &self,
        now: Instant,
        only: Option<FetchTarget>,
    ) -> Vec<(FetchTarget, Outgoing)> {
        let mut by_target: BTreeMap<FetchTarget, Outgoing> = BTreeMap::new();
        let mut partitions = self.partitions.borrow_mut();
        let operations = self.operations.borrow();
        for (tp, partition) in partitions.iter_mut() {
            if only.is_some_and(|only| only != partition.target) {
                continue;
            }
            if !partition.started {
                // Log operations are serial across cores: a new core (another leader or
                // epoch) fetches only once the previous core's truncation or append and the
                // appends staged while this replica led are done, and from the log as they
                // left it. Its first fetch then re-validates the whole tail with the leader.
                let log = &partition.log;
                if operations.contains_key(tp) || log.next_offset() != log.log_end_offset() {
                    continue;
                }
                partition.core.reread_log(&**log, log.high_watermark());
                partition.started = true;
            }
            if partition.backoff_until.is_some_and(|until| now < until) {
                continue;
            }
            partition.backoff_until = None;
            let Some(fetch) = partition.core.next_fetch() else {
                continue;
            };
            let outgoing = by_target
                .entry(partition.target)
                .or_insert_with(|| Outgoing {
                    request: ReplicaFetchRequest {
                        replica: self.local,
                        max_bytes: self.max_bytes,
                        max_wait_ms: self.max_wait_ms,
                        partitions: Vec::new(),
                    },
                    generations: BTreeMap::new(),
                });
            outgoing
                .generations
                .insert(fetch.tp.clone(), partition.generation);
            outgoing.request.partitions.push(fetch);
        }
        by_target.into_iter().collect()
    }

    /// Runs `f` on `tp`'s follower state if it is still the one of `generation` (not removed,
    /// not replaced by a core for another leader or epoch since).
    fn with_partition<R>(
        &self,
        tp: &TopicPartition,
        generation: u64,
        f: impl FnOnce(&mut FollowerPartition) -> R,
    ) -> Option<R> {
        let mut partitions = self.partitions.borrow_mut();
        partitions
            .get_mut(tp)
            .filter(|partition| partition.generation == generation)
            .map(f)
    }

    /// The leaders the shard's follower partitions fetch from.
    fn targets(&self) -> BTreeSet<FetchTarget> {
        self.partitions
            .borrow()
            .values()
            .map(|p| p.target)
            .collect()
    }

    /// One round: one request to every leader with partitions ready, answers handled as they
    /// arrive. Returns the number of partitions that appended or truncated.
    pub async fn run_round(&self) -> usize {
        let now = sluice_engine::rt::clock::now();
        let requests = self.build_requests(now, None);
        let mut inflight: FuturesUnordered<_> = requests
            .into_iter()
            .map(|(target, outgoing)| self.fetch_from(target, outgoing))
            .collect();
        let mut progressed = 0;
        while let Some(moved) = inflight.next().await {
            progressed += moved;
        }
        progressed
    }

    /// Sends one request to `target` and applies its answer (or backs its partitions off).
    /// Returns the number of partitions that appended or truncated.
    async fn fetch_from(&self, target: FetchTarget, outgoing: Outgoing) -> usize {
        let Outgoing {
            request,
            generations,
        } = outgoing;
        self.count(|stats| stats.requests += 1);
        let result = self
            .transport
            .replica_fetch(target.leader, target.shard, request)
            .await;
        match result {
            Ok(response) => self.handle_response(response, generations).await,
            Err(error) => {
                tracing::debug!(leader = target.leader.0, %error, "replica fetch failed");
                self.count(|stats| stats.transport_errors += 1);
                self.fetch_failed(&generations);
                0
            }
        }
    }

    /// The fetches of these partitions got no answer: they fetch again after a back-off.
    fn fetch_failed(&self, generations: &BTreeMap<TopicPartition, u64>) {
        let until = sluice_engine::rt::clock::now() + self.backoff;
        for (tp, generation) in generations {
            self.with_partition(tp, *generation, |partition| {
                partition.core.on_fetch_failed();
                partition.backoff_until = Some(until);
            });
        }
    }

    /// Fetches until `stop` is set, with one loop per leader so that a leader with nothing new
    /// (long-polling the request) never delays fetches from the others. A loop sleeps `idle`
    /// when none of its partitions is ready, and ends when no partition follows its leader
    /// any more; loops for new leaders start as partitions are added. Runs for as long as the
    /// shard follows partitions.
    pub async fn run(&self, stop: &Cell<bool>, idle: Duration) {
        let mut loops = FuturesUnordered::new();
        let mut running = BTreeSet::new();
        while !stop.get() {
            let seen = self.added.version();
            for target in self.targets() {
                if running.insert(target) {
                    loops.push(self.run_target(target, stop, idle));
                }
            }
            // Woken by a loop ending, a partition added, or the period (to notice `stop`).
            let period = std::pin::pin!(sluice_engine::rt::sleep(RUN_CHECK_PERIOD));
            let added = std::pin::pin!(self.added.changed(seen));
            let woken = futures::future::select(period, added);
            if loops.is_empty() {
                woken.await;
                continue;
            }
            match futures::future::select(loops.next(), woken).await {
                futures::future::Either::Left((Some(target), _)) => {
                    running.remove(&target);
                }
                futures::future::Either::Left((None, _)) | futures::future::Either::Right(_) => {}
            }
        }
        // Let the loops see `stop` (each checks it between requests).
        while loops.next().await.is_some() {}
    }

    /// The fetch loop of one leader; returns `target` when it ends.
    async fn run_target(
        &self,
        target: FetchTarget,
        stop: &Cell<bool>,
        idle: Duration,
    ) -> FetchTarget {
        while !stop.get() && self.targets().contains(&target) {
            let now = sluice_engine::rt::clock::now();
            match self.build_requests(now, Some(target)).pop() {
                Some((_, outgoing)) => {
                    self.fetch_from(target, outgoing).await;
                }
                None => sluice_engine::rt::sleep(idle).await,
            }
        }
        target
    }

    async fn handle_response(
        &self,
        response: ReplicaFetchResponse,
        mut generations: BTreeMap<TopicPartition, u64>,
    ) -> usize {
        // The leader is a peer, not trusted to answer as asked: each partition of the request
        // takes one answer, the first; an answer for a partition the request did not carry,
        // or a second one, is ignored (decoding already refuses repeats on peer links).
        let answered: Vec<_> = response
            .partitions
            .into_iter()
            .filter_map(|answer| {
                let generation = generations.remove(&answer.tp)?;
                Some(self.handle_partition(answer, generation))
            })
            .collect();
        // A partition left without an answer fetches again, as after a transport failure.
        if !generations.is_empty() {
            tracing::debug!(
                count = generations.len(),
                "replica fetch answer left partitions out"
            );
            self.fetch_failed(&generations);
        }
        // Partitions append (each with its own fdatasync) concurrently.
        let changed = futures::future::join_all(answered).await;
        changed.into_iter().filter(|changed| *changed).count()
    }

    /// Applies one partition's answer; true if the log changed.
    async fn handle_partition(
        &self,
        answer: ReplicaFetchPartitionResponse,
        generation: u64,
    ) -> bool {
        // Removed or replaced (a new leader or epoch) while the fetch was in flight: the
        // answer is for a core that no longer exists; drop it.
        let Some((log, actions)) = self.with_partition(&answer.tp, generation, |partition| {
            let actions = partition.core.on_response(&answer, &*partition.log);
            (partition.log.clone(), actions)
        }) else {
            return false;
        };
        let mut changed = false;
        for action in actions {
            changed |= self.apply(&answer.tp, generation, &log, action).await;
        }
        changed
    }

    async fn apply(
        &self,
        tp: &TopicPartition,
        generation: u64,
        log: &Rc<PartitionLog>,
        action: FollowerAction,
    ) -> bool {
        match action {
            FollowerAction::Truncate(offset) => {
                let _operation = LogOperation::start(self, tp);
                let result = log.truncate_to(offset).await;
                if let Err(error) = &result {
                    tracing::warn!(%tp, %offset, %error, "follower truncation failed");
                    self.count(|stats| stats.log_errors += 1);
                } else {
                    self.count(|stats| stats.truncations += 1);
                }
                self.with_partition(tp, generation, |partition| {
                    partition.core.on_truncated(&**log);
                });
                result.is_ok()
            }
            FollowerAction::Append(batches) => {
                let bytes = batches.len() as u64;
                let operation = LogOperation::start(self, tp);
                let result = log.append_replicated(batches, Durability::Synced).await;
                drop(operation);
                let follow_up = self.with_partition(tp, generation, |partition| match &result {
                    Ok(_) => partition.core.on_appended(&**log),
                    Err(error) => {
                        tracing::warn!(%tp, %error, "follower append failed");
                        partition.core.on_append_failed(&**log);
                        partition.backoff_until =
                            Some(sluice_engine::rt::clock::now() + self.backoff);
                        Vec::new()
                    }
                });
                let Some(follow_up) = follow_up else {
                    return result.is_ok();
                };
                match result {
                    Ok(_) => self.count(|stats| stats.appended_bytes += bytes),
                    Err(_) => self.count(|stats| stats.log_errors += 1),
                }
                for action in follow_up {
                    if let FollowerAction::HighWatermark(offset) = action
                        && offset > log.high_watermark()
                    {
                        log.set_high_watermark(offset);
                    }
                }
                true
            }
            FollowerAction::HighWatermark(offset) => {
                // Only forward (the core's high watermark never decreases; the log may hold
                // a later one already).
                if offset > log.high_watermark() {
                    log.set_high_watermark(offset);
                }
                false
            }
            FollowerAction::Retry(error) => {
                tracing::debug!(%tp, %error, "replica fetch refused; backing off");
                self.with_partition(tp, generation, |partition| {
                    partition.backoff_until = Some(sluice_engine::rt::clock::now() + self.backoff);
                });
                false
            }
        }
    }
}

/// One truncation or append in flight on a follower partition's log, counted in
/// `Fetcher::operations` from before it is issued until it finished (or its future was dropped).
struct LogOperation<'a> {
    operations: &'a RefCell<BTreeMap<TopicPartition, u32>>,
    ended: &'a Notify,
    tp: TopicPartition,
}

impl<'a> LogOperation<'a> {
    fn start<T>(fetcher: &'a Fetcher<T>, tp: &TopicPartition) -> LogOperation<'a> {
        *fetcher
            .operations
            .borrow_mut()
            .entry(tp.clone())
            .or_insert(0) += 1;
        LogOperation {
            operations: &fetcher.operations,
            ended: &fetcher.operations_ended,
            tp: tp.clone(),
        }
    }
}

impl Drop for LogOperation<'_> {
    fn drop(&mut self) {
        let mut operations = self.operations.borrow_mut();
        let count = operations
            .get_mut(&self.tp)
            .expect("a log operation in flight is counted");
        assert!(*count > 0, "{}: log operation count underflow", self.tp);
        *count -= 1;
        if *count == 0 {
            operations.remove(&self.tp);
            self.ended.notify();
        }
    }
}

/// Leader partitions of one (broker, shard), as the in-memory transport serves them.
pub type LeaderShard = BTreeMap<TopicPartition, Rc<LeaderReplica>>;

/// A [`ReplicaFetchTransport`] answering from leader partitions in the same process (tests).
/// High-watermark actions are applied to the leader logs at once; the other leader actions
/// (acks=all completions, ISR proposals) are queued for the test to take.
#[derive(Default)]
pub struct InMemoryTransport {
    leaders: RefCell<BTreeMap<FetchTarget, Rc<LeaderShard>>>,
    actions: RefCell<Vec<(TopicPartition, LeaderAction)>>,
    /// Requests to fail with `Unreachable` before answering again.
    fail_next: Cell<u32>,
}

impl InMemoryTransport {
    /// Serves `shard` as the leader partitions of `target`.
    pub fn set_leader_shard(&self, target: FetchTarget, shard: Rc<LeaderShard>) {
        self.leaders.borrow_mut().insert(target, shard);
    }

    /// Makes the next `count` requests fail in transport.
    pub fn fail_next(&self, count: u32) {
        self.fail_next.set(count);
    }

    /// Takes the queued leader actions.
    pub fn take_actions(&self) -> Vec<(TopicPartition, LeaderAction)> {
        std::mem::take(&mut *self.actions.borrow_mut())
    }
}

impl ReplicaFetchTransport for InMemoryTransport {
    async fn replica_fetch(
        &self,
        leader: BrokerId,
        shard: ShardId,
        request: ReplicaFetchRequest,
    ) -> Result<ReplicaFetchResponse, TransportError> {
        if self.fail_next.get() > 0 {
            self.fail_next.set(self.fail_next.get() - 1);
            return Err(TransportError::Unreachable(leader));
        }
        let Some(leaders) = self
            .leaders
            .borrow()
            .get(&FetchTarget { leader, shard })
            .cloned()
        else {
            return Err(TransportError::Unreachable(leader));
        };
        let now = sluice_engine::rt::clock::now();
        let lookup = |tp: &TopicPartition| leaders.get(tp).cloned();
        let (response, actions) = serve_replica_fetch(&lookup, &request, now).await;
        for (tp, action) in actions {
            match action {
                LeaderAction::HighWatermark(offset) => {
                    if let Some(replica) = leaders.get(&tp) {
                        replica.log.set_high_watermark(offset);
                    }
                }
                other => self.actions.borrow_mut().push((tp, other)),
            }
        }
        Ok(response)
    }
}
