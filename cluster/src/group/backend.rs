//! The group coordinator's driver on the shard that owns an offsets partition.
//!
//! A [`GroupBackend`] owns one partition's [`GroupCoordinator`] and carries out its actions:
//! replies go to the waiting request's oneshot; appends are encoded as one record batch and
//! handed to the partition log at once (so issue order is log order), then awaited strictly in
//! issue order by one drain task per partition, which reports each outcome back to the core.
//! At open, the partition is replayed from its start into a fresh core; until that ends,
//! requests are answered COORDINATOR_LOAD_IN_PROGRESS.
//!
//! [`GroupShard`] is the shard's set of backends plus the timer that ticks them. Both live on
//! one shard (`!Send`, in `Rc`). The queue of appends is bounded by the requests in flight
//! (each request issues at most one append; connections bound their in-flight requests) plus
//! one retention sweep per partition per check interval.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::partition::AppendFuture;
use bytes::Bytes;
use futures::channel::oneshot;
use sluice_engine::batch::{BatchBuilder, BatchHeader, Compression, decode_batch};
use sluice_engine::util::Notify;
use sluice_engine::{Offset, TimestampMs, TopicPartition};

use super::coordinator::{Action, AppendId, GroupCoordinator};
use super::record::{EncodeError, OffsetsRecord};
use super::types::{GroupListing, GroupRequest, GroupResponse};
use super::{GroupConfig, GroupError};
use crate::partition::PartitionReplica;
use crate::shard::Acks;

type Reply = oneshot::Sender<GroupResponse>;

/// One append on its way to the log, in issue order.
type QueuedAppend = (AppendId, Result<AppendFuture, GroupError>);

/// The coordinator of the groups of one offsets partition, on the shard that owns it.
pub struct GroupBackend {
    partition: i32,
    replica: Rc<PartitionReplica>,
    core: RefCell<GroupCoordinator<Reply>>,
    loaded: Cell<bool>,
    closed: Cell<bool>,
    /// Invariant: ids strictly increase from front to back.
    appends: RefCell<VecDeque<QueuedAppend>>,
    /// Bumped when an append is queued or the backend closes.
    queued: Notify,
}

fn now() -> TimestampMs {
    sluice_engine::rt::clock::unix_now_ms()
}

impl GroupBackend {
    fn new(partition: i32, replica: Rc<PartitionReplica>, config: GroupConfig) -> GroupBackend {
        let seed = uuid::Uuid::new_v4().as_u64_pair().0;
        GroupBackend {
            partition,
            replica,
            core: RefCell::new(GroupCoordinator::new(config, seed, now())),
            loaded: Cell::new(false),
            closed: Cell::new(false),
            appends: RefCell::new(VecDeque::new()),
            queued: Notify::new(),
        }
    }

    /// Answers one group request.
    pub async fn handle(&self, request: GroupRequest) -> GroupResponse {
        if self.closed.get() {
            return request.failed(GroupError::NotCoordinator);
        }
        if !self.loaded.get() {
            return request.failed(GroupError::CoordinatorLoadInProgress);
        }
        let now = now();
        let (reply, answer) = oneshot::channel();
        let failed = request.failed(GroupError::NotCoordinator);
        let actions = {
            let mut core = self.core.borrow_mut();
            match request {
                GroupRequest::Join(r) => core.join(now, reply, r),
                GroupRequest::Sync(r) => core.sync(now, reply, r),
                GroupRequest::Commit(r) => core.commit(now, reply, r),
                GroupRequest::ConsumerHeartbeat(r) => core.consumer_heartbeat(now, reply, r),
                GroupRequest::Delete { group_id } => core.delete(reply, &group_id),
                GroupRequest::DeleteOffsets {
                    group_id,
                    partitions,
                } => core.delete_offsets(reply, &group_id, partitions),
                GroupRequest::Heartbeat(r) => {
                    return GroupResponse::Heartbeat(core.heartbeat(now, &r));
                }
                GroupRequest::FetchOffsets(r) => {
                    return GroupResponse::FetchOffsets(core.fetch_offsets(&r));
                }
                GroupRequest::Describe { group_id } => {
                    return GroupResponse::Describe(core.describe(&group_id));
                }
                GroupRequest::Leave(r) => {
                    let (response, actions) = core.leave(now, r);
                    drop(core);
                    self.apply(actions);
                    return GroupResponse::Leave(response);
                }
            }
        };
        self.apply(actions);
        // A dropped reply means the partition closed (moved or shutting down) meanwhile.
        answer.await.unwrap_or(failed)
    }

    /// Carries out the core's actions in order. Never awaits, so appends reach the log in the
    /// order the core issued them.
    fn apply(&self, actions: Vec<Action<Reply>>) {
        for action in actions {
            match action {
                Action::Reply(reply, response) => {
                    // The requester may have gone away (connection closed); nothing to do.
                    let _ = reply.send(response);
                }
                Action::Append { id, records } => {
                    let pending = encode(&records).and_then(|batch| {
                        self.replica
                            .append_ordered(batch, Acks::All)
                            .map_err(|e| GroupError::Storage(e.to_string()))
                    });
                    let mut appends = self.appends.borrow_mut();
                    assert!(
                        appends.back().is_none_or(|(last, _)| *last < id),
                        "offsets partition {}: append {id:?} queued out of order",
                        self.partition
                    );
                    appends.push_back((id, pending));
                    drop(appends);
                    self.queued.notify();
                }
            }
        }
    }

    /// Awaits queued appends in order and reports each to the core. Runs until the backend
    /// closes (closing wakes it).
    async fn drain(weak: Weak<GroupBackend>) {
        let Some(backend) = weak.upgrade() else {
            return;
        };
        loop {
            if backend.closed.get() {
                return;
            }
            let seen = backend.queued.version();
            let next = backend.appends.borrow_mut().pop_front();
            let Some((id, pending)) = next else {
                backend.queued.changed(seen).await;
                continue;
            };
            let result = match pending {
                Ok(pending) => match pending.await {
                    Ok(_) => Ok(()),
                    Err(error) => Err(GroupError::Storage(error.to_string())),
                },
                Err(error) => Err(error),
            };
            if backend.closed.get() {
                return;
            }
            let actions = backend.core.borrow_mut().append_done(now(), id, result);
            backend.apply(actions);
        }
    }

    /// Replays the partition from its start into the core, then opens it for requests.
    async fn load(weak: Weak<GroupBackend>) {
        let Some(backend) = weak.upgrade() else {
            return;
        };
        let log = backend.replica.log();
        // The whole local log: as leader, all of it is what every replica will agree on
        // (the tail above the high watermark becomes committed with the leader's next append).
        let end = log.log_end_offset();
        let mut from = log.log_start_offset();
        let mut records = 0u64;
        let started = sluice_engine::rt::clock::now();
        // Bounded: each round moves `from` forward by at least one batch, up to `end`.
        while from < end && !backend.closed.get() {
            let slice = match log
                .read(from, crate::limits::GROUP_LOAD_READ_BYTES, end)
                .await
            {
                Ok(slice) => slice,
                Err(error) => {
                    tracing::error!(
                        partition = backend.partition, %error,
                        "cannot read offsets partition; its groups stay unavailable"
                    );
                    return;
                }
            };
            if slice.next_offset <= from {
                break;
            }
            for chunk in &slice.batches {
                records += backend.replay_chunk(chunk);
            }
            from = slice.next_offset;
            sluice_engine::rt::yield_if_needed().await;
        }
        backend.core.borrow_mut().finish_load(now());
        backend.loaded.set(true);
        tracing::info!(
            partition = backend.partition,
            records,
            ms = started.elapsed().as_millis() as u64,
            "offsets partition loaded"
        );
    }

    fn replay_chunk(&self, chunk: &Bytes) -> u64 {
        let mut count = 0;
        let mut rest = chunk.clone();
        let mut core = self.core.borrow_mut();
        let now = now();
        while !rest.is_empty() {
            let header = match BatchHeader::parse(&rest, usize::MAX) {
                Ok(header) => header,
                Err(error) => {
                    tracing::error!(partition = self.partition, %error, "bad batch in offsets");
                    return count;
                }
            };
            let batch = rest.split_to(header.total_bytes().min(rest.len()));
            if header.attributes.is_control() {
                // A leader's epoch marker (`PartitionReplica::mark_epoch_start`).
                continue;
            }
            let decoded = decode_batch(&batch, sluice_engine::limits::BATCH_BYTES_MAX)
                .and_then(|d| d.collect_records());
            let records = match decoded {
                Ok(records) => records,
                Err(error) => {
                    tracing::error!(partition = self.partition, %error, "bad batch in offsets");
                    continue;
                }
            };
            for record in records {
                match OffsetsRecord::decode(record.key.as_deref(), record.value.as_deref()) {
                    Ok(decoded) => {
                        core.replay(now, decoded);
                        count += 1;
                    }
                    Err(error) => tracing::warn!(
                        partition = self.partition, offset = record.offset.0, %error,
                        "skipping undecodable offsets record"
                    ),
                }
            }
        }
        count
    }

    fn tick(&self) {
        if !self.loaded.get() || self.closed.get() {
            return;
        }
        let actions = self.core.borrow_mut().tick(now());
        self.apply(actions);
    }

    fn close(&self) {
        self.closed.set(true);
        let dropped = self.core.borrow_mut().abandon();
        self.appends.borrow_mut().clear();
        self.queued.notify();
        if dropped > 0 {
            tracing::info!(
                partition = self.partition,
                dropped,
                "offsets partition closed with requests waiting"
            );
        }
    }
}

/// Encodes records as one uncompressed batch.
fn encode(records: &[OffsetsRecord]) -> Result<Bytes, GroupError> {
    let mut builder = BatchBuilder::new(sluice_engine::limits::BATCH_BYTES_MAX);
    let timestamp = now();
    for record in records {
        // The core refuses over-long strings when requests arrive; should one get here anyway,
        // the append fails (as a storage error) instead of the broker.
        let unencodable = |error: EncodeError| {
            tracing::error!(group = record.group(), %error, "group record does not encode");
            GroupError::Storage(format!("group record does not encode: {error}"))
        };
        let key = record.encode_key().map_err(unencodable)?;
        let value = record.encode_value().map_err(unencodable)?;
        builder
            .push(Some(&key), value.as_deref(), &[], timestamp)
            .map_err(|e| GroupError::Storage(format!("group records too large: {e}")))?;
    }
    builder
        .build(Compression::None)
        .map_err(|e| GroupError::Storage(e.to_string()))
}

/// The group coordinators of one shard: a backend per offsets partition it owns.
pub struct GroupShard {
    config: GroupConfig,
    backends: RefCell<HashMap<i32, Rc<GroupBackend>>>,
}

impl GroupShard {
    /// An empty set; call [`Self::spawn_ticker`] once.
    pub fn new(config: GroupConfig) -> GroupShard {
        GroupShard {
            config,
            backends: RefCell::new(HashMap::new()),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    /// Starts coordinating the groups of offsets partition `partition`, whose replica this
    /// shard just opened: replays it in the background.
    pub fn open(&self, partition: i32, replica: Rc<PartitionReplica>) {
        if self.backends.borrow().contains_key(&partition) {
            return;
        }
        let backend = Rc::new(GroupBackend::new(partition, replica, self.config.clone()));
        self.backends
            .borrow_mut()
            .insert(partition, Rc::clone(&backend));
        let weak = Rc::downgrade(&backend);
        drop(backend);
        sluice_engine::rt::spawn(GroupBackend::load(weak.clone())).detach();
        sluice_engine::rt::spawn(GroupBackend::drain(weak)).detach();
    }

    /// Stops coordinating `partition` (it is closing or moving): waiting requests are answered
    /// NOT_COORDINATOR and the backend lets go of the replica.
    pub fn close(&self, partition: i32) {
        let backend = self.backends.borrow_mut().remove(&partition);
        if let Some(backend) = backend {
            backend.close();
        }
    }

    /// Closes every backend (shutdown).
    pub fn close_all(&self) {
        let backends: Vec<Rc<GroupBackend>> =
            self.backends.borrow_mut().drain().map(|(_, b)| b).collect();
        for backend in backends {
            backend.close();
        }
    }

    /// The backend of `partition`, if this shard coordinates it.
    pub fn backend(&self, partition: i32) -> Option<Rc<GroupBackend>> {
        self.backends.borrow().get(&partition).cloned()
    }

    /// Every group this shard coordinates (loaded partitions only).
    pub fn list(&self) -> Vec<GroupListing> {
        let backends = self.backends.borrow();
        backends
            .values()
            .filter(|b| b.loaded.get())
            .flat_map(|b| b.core.borrow().list())
            .collect()
    }

    /// Every committed offset this shard holds: (group, partition, offset).
    pub fn committed(&self) -> Vec<(String, TopicPartition, Offset)> {
        let backends = self.backends.borrow();
        backends
            .values()
            .flat_map(|b| b.core.borrow().committed())
            .collect()
    }

    /// Ticks every backend every [`crate::limits::GROUP_TICK_MS`] until `self` is dropped.
    pub fn spawn_ticker(self: &Rc<Self>) {
        let weak = Rc::downgrade(self);
        sluice_engine::rt::spawn(async move {
            // Runs for the life of the shard's group coordinators.
            loop {
                sluice_engine::rt::sleep(Duration::from_millis(crate::limits::GROUP_TICK_MS)).await;
                let Some(shard) = weak.upgrade() else { return };
                let backends: Vec<Rc<GroupBackend>> =
                    shard.backends.borrow().values().cloned().collect();
                drop(shard);
                for backend in backends {
                    backend.tick();
                }
            }
        })
        .detach();
    }
}
