//! The shard root: everything one shard owns, and the typed messages between shards.
//!
//! A [`Shard`] is built on its executor thread and never leaves it (`!Send`, held in an `Rc`).
//! It owns the [`PartitionReplica`]s placed on it, its copy of the metadata snapshot, its
//! metrics, and, on shard 0, the single metadata writer. Requests for a partition owned by
//! another shard travel as a [`ShardMsg`] through the channel mesh and come back on a oneshot
//! reply; the native protocol connects clients straight to the owner so its data path never
//! takes that hop, while Kafka TCP connections land on any shard and forward.
//!
//! Must not depend on: sockets or protocol types.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use sluice_engine::batch::BatchError;
use sluice_engine::log::{BatchCache, LogConfig};
use sluice_engine::rt::shards::{Mesh, Overloaded, ShardContext};
use sluice_engine::{BrokerId, LeaderEpoch, Offset, ShardId, TimestampMs, TopicPartition};

use crate::controller::{Controller, ControllerBoot, ControllerConfig, Observer, ObserverConfig};
use crate::group::{
    GroupConfig, GroupError, GroupListing, GroupRequest, GroupResponse, GroupShard, OFFSETS_TOPIC,
    partition_for,
};
use crate::metadata::{
    FileMetadataStore, MetadataCommand, MetadataError, MetadataSnapshot, MetadataStore,
    PlacementContext,
};
use crate::metrics::ShardMetrics;
use crate::partition::PartitionReplica;
use crate::peer::{PeerError, PeerKind, PeerRequest, PeerResponse, PeerTransport};
use crate::replication::{IsrProposal, ReplicationSettings, ShardReplication};

/// How many replicas must have a produce before it is acknowledged (Kafka `acks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acks {
    /// 0: the producer does not wait; the write still happens.
    None,
    /// 1: written by the leader.
    Leader,
    /// all (-1): in every in-sync replica, and fdatasync'ed.
    All,
}

/// A successful produce to one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProduceOk {
    /// Offset assigned to the first record.
    pub base_offset: Offset,
    /// Offset of the last record.
    pub last_offset: Offset,
    /// Broker append time when the topic uses `LogAppendTime`.
    pub log_append_time: Option<TimestampMs>,
    /// Log start offset after the append.
    pub log_start_offset: Offset,
}

/// Why a produce to one partition failed. Each maps to one Kafka error code in `net`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// No such topic or partition.
    #[error("unknown topic or partition {0}")]
    UnknownTopicOrPartition(String),
    /// The record batch is malformed (CRC, magic, length, record count).
    #[error("corrupt record batch: {0}")]
    Corrupt(#[from] BatchError),
    /// A batch is larger than the topic's `max.message.bytes`.
    #[error("record batch of {size} bytes exceeds max.message.bytes {max}")]
    MessageTooLarge {
        /// Batch size.
        size: usize,
        /// Limit.
        max: u64,
    },
    /// The storage layer failed the append (disk full, I/O error).
    #[error("storage error: {0}")]
    Storage(String),
    /// The owning shard's inbox is full; retry later.
    #[error("shard overloaded, retry")]
    Overloaded,
    /// The broker is shutting down.
    #[error("broker shutting down")]
    ShuttingDown,
    /// This broker is not the partition's leader (a follower or not a replica): the client's
    /// metadata is stale.
    #[error("not the leader of {0}")]
    NotLeader(String),
    /// acks=all refused before the append: the in-sync replica set is smaller than the topic's
    /// `min.insync.replicas`. Retriable: the ISR grows back when followers catch up.
    #[error("{tp}: {isr} in-sync replicas, min.insync.replicas is {min}")]
    NotEnoughReplicas {
        /// Partition.
        tp: String,
        /// In-sync replicas now.
        isr: usize,
        /// The topic's `min.insync.replicas`.
        min: usize,
    },
    /// acks=all appended, but the ISR was below `min.insync.replicas` when the replicas had it:
    /// the records may be visible; the producer retries (Kafka
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND).
    #[error("{0}: not enough in-sync replicas after the append")]
    NotEnoughReplicasAfterAppend(String),
    /// acks=all appended, but the in-sync replicas did not all have it within the replication
    /// timeout (a follower is cut off and not yet removed from the ISR, or this broker lost
    /// its leadership without learning it). The records may still become visible.
    #[error("{0}: replication did not complete in time")]
    Timeout(String),
}

/// Which offset to look up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset.
    Earliest,
    /// The high watermark (next offset to be written and visible).
    Latest,
    /// The first offset whose timestamp is at least this.
    Timestamp(TimestampMs),
}

/// A fetch from one partition.
#[derive(Clone, Copy, Debug)]
pub struct FetchRequest {
    /// First offset wanted.
    pub from: Offset,
    /// Soft byte limit: at least one batch is returned, except that 0 returns none, only the
    /// partition's offsets (for a response whose byte budget is already spent).
    pub max_bytes: usize,
    /// How long to wait for data when there is none at `from`.
    pub max_wait: Duration,
}

/// Data returned by a fetch.
#[derive(Clone, Debug, Default)]
pub struct FetchData {
    /// Whole record batches, unchanged from disk.
    pub batches: Vec<Bytes>,
    /// Visible end of the log.
    pub high_watermark: Offset,
    /// First offset still in the log.
    pub log_start_offset: Offset,
}

impl FetchData {
    /// Total bytes of batch data.
    pub fn bytes(&self) -> usize {
        self.batches.iter().map(Bytes::len).sum()
    }
}

/// Why a fetch or offset lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// No such topic or partition.
    #[error("unknown topic or partition {0}")]
    UnknownTopicOrPartition(String),
    /// The offset is below the log start or past the end.
    #[error("offset {requested} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        /// Requested offset.
        requested: Offset,
        /// Log start offset.
        log_start: Offset,
        /// Log end offset.
        log_end: Offset,
    },
    /// The storage layer failed (I/O error, corrupt data on disk).
    #[error("storage error: {0}")]
    Storage(String),
    /// The owning shard's inbox is full; retry later.
    #[error("shard overloaded, retry")]
    Overloaded,
    /// This broker is not the partition's leader: the client's metadata is stale.
    #[error("not the leader of {0}")]
    NotLeader(String),
    /// Records of an internal topic cannot be deleted (its records are the groups' state).
    #[error("records of internal topic {0} cannot be deleted")]
    InternalTopic(String),
    /// A new leader's high watermark has not reached the start of its epoch yet (just after a
    /// failover it may lag the previous leader's): the latest offset, or a lookup by time that
    /// finds nothing below it, could move backwards for the client. Retriable (Kafka's
    /// OFFSET_NOT_AVAILABLE, KIP-207); it clears once the followers catch up.
    #[error("offsets of {0} not available: its high watermark is behind its leader epoch start")]
    OffsetNotAvailable(String),
}

/// Per-partition state for describe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    /// Owning shard.
    pub shard: ShardId,
    /// First offset in the log.
    pub log_start_offset: Offset,
    /// Next offset to be assigned.
    pub log_end_offset: Offset,
    /// Visible end.
    pub high_watermark: Offset,
    /// Bytes on disk.
    pub size_bytes: u64,
}

type Reply<T> = oneshot::Sender<T>;

/// An offset lookup's answer: the offset (`None`: no record at or after the timestamp) and, for
/// lookups by time, the matching record's timestamp.
pub type OffsetAnswer = (Option<Offset>, Option<TimestampMs>);

/// The one message type between shards. Each variant says who sends it to whom, its lane, and
/// what happens if it is dropped or the inbox is full.
#[non_exhaustive]
pub enum ShardMsg {
    /// net (Kafka listener) on any shard → owner of `tp`. Lane: the shared inbox. Full inbox:
    /// the sender answers the client with a retriable error (the client retries).
    Produce {
        /// Partition.
        tp: TopicPartition,
        /// One or more record batches.
        batches: Bytes,
        /// Required acknowledgement.
        acks: Acks,
        /// Reply lane.
        reply: Reply<Result<ProduceOk, ProduceError>>,
    },
    /// net on any shard → owner of `tp`. Full inbox: retriable error to the client.
    Fetch {
        /// Partition.
        tp: TopicPartition,
        /// What to read.
        request: FetchRequest,
        /// Reply lane.
        reply: Reply<Result<FetchData, FetchError>>,
    },
    /// net on any shard → owner of `tp`. Full inbox: retriable error to the client.
    ListOffset {
        /// Partition.
        tp: TopicPartition,
        /// Which offset.
        spec: OffsetSpec,
        /// Reply lane: offset and its timestamp if looked up by time (`None` offset: no match).
        reply: Reply<Result<OffsetAnswer, FetchError>>,
    },
    /// net on any shard → owner of `tp` (Kafka OffsetForLeaderEpoch). Full inbox: retriable
    /// error to the client.
    EpochEnd {
        /// Partition.
        tp: TopicPartition,
        /// The epoch asked about.
        epoch: LeaderEpoch,
        /// Reply lane: the largest epoch in the log at or below it, and where it ends.
        reply: Reply<Result<(LeaderEpoch, Offset), FetchError>>,
    },
    /// net on any shard → owner of `tp`. Full inbox: retriable error to the client.
    DeleteRecords {
        /// Partition.
        tp: TopicPartition,
        /// New log start offset (`-1`: the high watermark).
        before: Offset,
        /// Reply lane: the new log start offset.
        reply: Reply<Result<Offset, FetchError>>,
    },
    /// any shard → owner of `tp` (describe). Full inbox: error to the admin client.
    Status {
        /// Partition.
        tp: TopicPartition,
        /// Reply lane.
        reply: Reply<Option<PartitionStatus>>,
    },
    /// any shard → shard 0 (the metadata writer). Sent with waiting (`Mesh::send`), never
    /// dropped; a dropped reply means the broker is stopping.
    Command {
        /// The change.
        command: MetadataCommand,
        /// Reply lane: the new snapshot.
        reply: Reply<Result<Arc<MetadataSnapshot>, MetadataError>>,
    },
    /// admin endpoint on shard 0 → every other shard, per scrape. Full inbox: that shard's
    /// counters are missing from this scrape only.
    CollectMetrics {
        /// Reply lane.
        reply: Reply<crate::metrics::MetricsSnapshot>,
    },
    /// net (Kafka listener, native server) on any shard → the shard owning partition
    /// `partition` of `__consumer_offsets`, which coordinates the group. Lane: the shared inbox
    /// (`try_send`). Full inbox: the sender answers the request's retriable "overloaded" error.
    /// A dropped reply (the partition closed or moved while the request waited, e.g. a join
    /// waiting for the rebalance) is answered NOT_COORDINATOR, so the client looks the
    /// coordinator up again.
    Group {
        /// Offsets partition of the group.
        partition: i32,
        /// The request.
        request: GroupRequest,
        /// Reply lane.
        reply: Reply<GroupResponse>,
    },
    /// net on any shard → every shard (ListGroups). Full inbox or dropped reply: that shard's
    /// groups are missing from this listing only.
    ListGroups {
        /// Reply lane: the groups this shard coordinates.
        reply: Reply<Vec<GroupListing>>,
    },
    /// shard 0 → every shard when this broker loses or regains contact with the active
    /// controller (see `Shard::isolated`). Sent with waiting, never dropped.
    Isolated {
        /// Cut off for a whole session.
        isolated: bool,
    },
    /// shard 0 → every shard after each metadata change. Sent with waiting, never dropped;
    /// `done` fires once the shard has opened or closed its partitions to match.
    Metadata {
        /// The new snapshot; older revisions than the shard holds are ignored.
        snapshot: Arc<MetadataSnapshot>,
        /// Acknowledgement lane.
        done: Reply<()>,
    },
}

/// Shares of the maintenance task queue against the default queue's 1000: retention and other
/// background work get about 1/11 of the shard when produce and fetch are busy.
const MAINTENANCE_SHARES: usize = 100;

/// The single metadata writer, present on shard 0 only.
struct MetadataWriter {
    store: FileMetadataStore,
    /// Serialises commands: prepare, persist, publish happen one change at a time.
    lock: sluice_engine::rt::sync::Semaphore,
}

/// Static facts every shard needs.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    /// This broker.
    pub node: BrokerId,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Bytes of recent batches each shard caches for tailing readers.
    pub cache_bytes: usize,
    /// Replication settings (used in a cluster).
    pub replication: ReplicationSettings,
}

/// One shard's root. Lives on its executor thread only.
pub struct Shard {
    id: ShardId,
    count: usize,
    config: ShardConfig,
    mesh: OnceCell<Mesh<ShardMsg>>,
    metadata: RefCell<Arc<MetadataSnapshot>>,
    /// Invariant: holds exactly the partitions the current snapshot places on this shard,
    /// once `reconcile` has run for it.
    partitions: RefCell<HashMap<TopicPartition, Rc<PartitionReplica>>>,
    cache: Rc<BatchCache>,
    writer: Option<MetadataWriter>,
    stopping: Cell<bool>,
    /// Serialises `reconcile`: snapshots may arrive while the previous one is still opening
    /// partitions (the controller publishes during start-up), and two reconciles at once could
    /// open one partition twice.
    reconciling: sluice_engine::rt::sync::Semaphore,
    /// The group coordinators of the offsets partitions on this shard, once started.
    groups: OnceCell<Rc<GroupShard>>,
    /// Shard 0 of a cluster voter: the controller quorum member, once started.
    controller: OnceCell<Rc<Controller>>,
    /// Shard 0 of a broker outside the quorum: the metadata puller, once started.
    observer: OnceCell<Rc<Observer>>,
    /// In a cluster: the replication driver of this shard's partitions.
    replication: OnceCell<Rc<ShardReplication>>,
    /// In a cluster: this shard's links to the same shard of the other brokers.
    peers: Option<Rc<dyn PeerTransport>>,
    /// In a cluster: this broker has not reached the active controller for a whole session
    /// (shard 0 tells every shard). It leads nothing meanwhile and refuses metadata requests,
    /// so clients go to brokers that know the current leaders.
    isolated: Cell<bool>,
    /// Counters scraped by the admin endpoint.
    pub metrics: ShardMetrics,
}

impl Shard {
    /// Builds the shard, joins the mesh, and opens the partitions `initial` places here.
    /// On shard 0 of a single broker, `store` becomes the metadata writer; in a cluster there
    /// is no store and the controller (`start_controller`) writes metadata, and `peers` (this
    /// shard's links to the same shard of the other brokers) carry replication.
    pub async fn start(
        context: ShardContext<ShardMsg>,
        config: ShardConfig,
        initial: Arc<MetadataSnapshot>,
        store: Option<FileMetadataStore>,
        peers: Option<Rc<dyn PeerTransport>>,
    ) -> Rc<Shard> {
        let id = context.id;
        assert!(
            store.is_none() || id == ShardId(0),
            "only shard 0 writes metadata"
        );
        let shard = Rc::new(Shard {
            id,
            count: context.count,
            cache: Rc::new(BatchCache::new(config.cache_bytes)),
            config,
            mesh: OnceCell::new(),
            metadata: RefCell::new(Arc::new(MetadataSnapshot::default())),
            partitions: RefCell::new(HashMap::new()),
            writer: store.map(|store| MetadataWriter {
                store,
                lock: sluice_engine::rt::sync::Semaphore::new(1),
            }),
            stopping: Cell::new(false),
            reconciling: sluice_engine::rt::sync::Semaphore::new(1),
            groups: OnceCell::new(),
            controller: OnceCell::new(),
            observer: OnceCell::new(),
            replication: OnceCell::new(),
            peers: peers.clone(),
            isolated: Cell::new(false),
            metrics: ShardMetrics::default(),
        });
        if let Some(peers) = peers {
            let weak = Rc::downgrade(&shard);
            let proposer = Box::new(move |proposal: IsrProposal| {
                if let Some(shard) = weak.upgrade() {
                    shard.propose_isr(proposal);
                }
            });
            let replication = ShardReplication::new(
                shard.config.node,
                id,
                peers,
                shard.config.replication,
                proposer,
            );
            replication.start();
            assert!(
                shard.replication.set(replication).is_ok(),
                "replication set once"
            );
        }
        let weak = Rc::downgrade(&shard);
        let mesh = context
            .join_mesh(move |msg| {
                if let Some(shard) = weak.upgrade() {
                    shard.receive(msg);
                }
            })
            .await;
        assert!(shard.mesh.set(mesh).is_ok(), "mesh joined once");
        shard.reconcile(initial).await;
        shard.remove_stray_partitions().await;
        shard
    }

    /// A single broker's start-up sweep, on shard 0 (the metadata writer) once its metadata is
    /// loaded: removes the partition directories that no partition of the metadata names
    /// ([`crate::partition::remove_stray_dirs`]: a deleted topic's leftovers, which would
    /// otherwise stay until a topic of the same name came back). It holds the writer's lock,
    /// so no command creates or deletes a partition meanwhile, and every shard opens only
    /// partitions of the snapshot it judges by. A cluster broker does not sweep: the metadata
    /// it starts with may lag the controller's until its raft log or metadata pull catches up.
    /// Nor does a start that created its metadata file: what is on disk was made under other
    /// metadata.
    async fn remove_stray_partitions(&self) {
        let Some(writer) = &self.writer else {
            return;
        };
        let _permit = writer
            .lock
            .acquire_permit(1)
            .await
            .expect("semaphore never closed");
        let snapshot = self.metadata();
        assert!(
            snapshot.cluster.registrations.is_empty(),
            "shard {}: a metadata writer in a cluster",
            self.id.0
        );
        let data_dir = &self.config.data_dir;
        if writer.store.created() {
            // New metadata: partition directories here were made under other metadata (a
            // lost metadata file, or a cluster broker's data started without `--seeds`), and
            // this metadata cannot tell which of them are strays.
            return;
        }
        if data_dir.join(crate::controller::CONTROLLER_DIR).exists() {
            // The data of a cluster voter started without `--seeds`: its partitions are not
            // in this (new) metadata, and are not strays.
            tracing::warn!(
                data_dir = %data_dir.display(),
                "a controller log is in the data directory: stray partitions not swept"
            );
            return;
        }
        // A single broker hosts every partition.
        let hosted: HashSet<String> = snapshot
            .topics
            .values()
            .flat_map(|topic| {
                topic.partitions.iter().map(|partition| {
                    TopicPartition::new(Arc::clone(&topic.name), partition.id.0).to_string()
                })
            })
            .collect();
        let removed = crate::partition::remove_stray_dirs(data_dir, &hosted).await;
        if !removed.is_empty() {
            tracing::info!(count = removed.len(), "stray partition directories removed");
        }
    }

    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Number of shards in the broker.
    pub fn count(&self) -> usize {
        self.count
    }

    /// This broker's node id.
    pub fn node(&self) -> BrokerId {
        self.config.node
    }

    /// The current metadata snapshot.
    pub fn metadata(&self) -> Arc<MetadataSnapshot> {
        Arc::clone(&self.metadata.borrow())
    }

    /// The shard that owns `tp`, if the partition exists.
    pub fn owner(&self, tp: &TopicPartition) -> Option<ShardId> {
        self.metadata.borrow().partition(tp).map(|p| p.shard)
    }

    /// The local replica of `tp` if this shard owns it.
    pub fn local(&self, tp: &TopicPartition) -> Option<Rc<PartitionReplica>> {
        self.partitions.borrow().get(tp).cloned()
    }

    /// Number of partitions this shard owns.
    pub fn partition_count(&self) -> usize {
        self.partitions.borrow().len()
    }

    /// Starts the controller quorum member on shard 0 of a voter (cluster mode). Commands
    /// then go through it instead of the single-broker writer.
    pub fn start_controller(
        self: &Rc<Self>,
        config: ControllerConfig,
        boot: ControllerBoot,
        peers: Rc<dyn PeerTransport>,
    ) {
        assert!(
            self.writer.is_none(),
            "a cluster has no single-broker writer"
        );
        let session = config.session_timeout;
        let controller = Controller::start(config, boot, self, peers);
        assert!(
            self.controller.set(controller).is_ok(),
            "controller started twice"
        );
        self.spawn_isolation_watch(session, move |shard| {
            shard
                .controller
                .get()
                .is_some_and(|c| c.in_contact(session))
        });
    }

    /// Starts the observer on shard 0 of a broker outside the quorum (cluster mode): it pulls
    /// metadata from the voters and forwards commands to the controller.
    pub fn start_observer(self: &Rc<Self>, config: ObserverConfig, peers: Rc<dyn PeerTransport>) {
        assert!(
            self.writer.is_none() && self.controller.get().is_none(),
            "an observer has neither a single-broker writer nor a controller"
        );
        let observer = Observer::start(config, self, peers);
        assert!(
            self.observer.set(observer).is_ok(),
            "observer started twice"
        );
    }

    /// The controller of this voter (shard 0 only).
    pub fn controller(&self) -> Option<&Rc<Controller>> {
        self.controller.get()
    }

    /// Handles a request from a peer broker's shard with the same id as this one.
    pub async fn handle_peer(&self, request: PeerRequest) -> Result<PeerResponse, PeerError> {
        match request.kind {
            PeerKind::Raft | PeerKind::Heartbeat | PeerKind::Command | PeerKind::MetadataFetch => {
                match self.controller.get() {
                    Some(controller) => controller.handle_peer(request).await,
                    None => Err(PeerError::Unsupported),
                }
            }
            PeerKind::ReplicaFetch => {
                let Some(replication) = self.replication.get() else {
                    return Err(PeerError::Unsupported);
                };
                let fetch = crate::replication::wire::decode_request(request.header)
                    .map_err(|e| PeerError::Remote(e.to_string()))?;
                let answer = replication.serve(&fetch).await;
                let (header, payload) = crate::replication::wire::encode_response(&answer);
                Ok(PeerResponse { header, payload })
            }
        }
    }

    /// Sends a leader's ISR change to the controller as `AlterPartition`. The leader core
    /// proposes again if it is not committed, so a failure is only logged.
    fn propose_isr(self: Rc<Self>, proposal: IsrProposal) {
        sluice_engine::rt::spawn(async move {
            let command = MetadataCommand::AlterPartition {
                topic: proposal.tp.topic.to_string(),
                partition: proposal.tp.partition,
                leader: proposal.leader,
                leader_epoch: proposal.leader_epoch,
                partition_epoch: Some(proposal.partition_epoch),
                isr: proposal.isr.clone(),
            };
            if let Err(error) = self.command(command).await {
                tracing::info!(tp = %proposal.tp, %error, "ISR change not committed");
            }
        })
        .detach();
    }

    /// True when this broker is part of a multi-broker cluster (metadata lists
    /// registrations).
    fn clustered(&self) -> bool {
        !self.metadata.borrow().cluster.registrations.is_empty()
    }

    /// In a cluster, whether this broker leads `tp` now.
    fn leads(&self, tp: &TopicPartition) -> bool {
        !self.clustered()
            || (!self.isolated.get()
                && self
                    .metadata
                    .borrow()
                    .partition(tp)
                    .is_some_and(|p| p.leader == self.config.node))
    }

    /// True while this broker is cut off from the active controller for longer than a
    /// session: the controller has fenced it (or will), and another broker leads what it led.
    pub fn isolated(&self) -> bool {
        self.isolated.get()
    }

    /// Enters or leaves isolation on this shard: entering gives up every leadership (waiting
    /// acks=all produces fail with NotLeader at once instead of timing out); leaving takes
    /// the roles the current metadata names again.
    async fn set_isolated(&self, isolated: bool) {
        let _one_at_a_time = self
            .reconciling
            .acquire_permit(1)
            .await
            .expect("semaphore never closed");
        if self.isolated.replace(isolated) == isolated {
            return;
        }
        let snapshot = self.metadata();
        let replicas: Vec<(TopicPartition, Rc<PartitionReplica>)> = self
            .partitions
            .borrow()
            .iter()
            .map(|(tp, replica)| (tp.clone(), Rc::clone(replica)))
            .collect();
        for (tp, replica) in replicas {
            let Some(meta) = snapshot.partition(&tp) else {
                continue;
            };
            self.update_role(&tp, &replica, meta);
        }
    }

    /// Shard 0 in a cluster: tells every shard when `in_contact` (the controller or observer
    /// reached the active controller recently) has been false for longer than `session`, and
    /// when it is true again. Runs for the life of the shard.
    fn spawn_isolation_watch(
        self: &Rc<Self>,
        session: Duration,
        in_contact: impl Fn(&Shard) -> bool + 'static,
    ) {
        let weak = Rc::downgrade(self);
        sluice_engine::rt::spawn(async move {
            let mut lost_since = None;
            let mut isolated = false;
            loop {
                sluice_engine::rt::sleep(session / 8).await;
                let Some(shard) = weak.upgrade() else { return };
                if shard.stopping.get() {
                    return;
                }
                let now = sluice_engine::rt::clock::now();
                let since = if in_contact(&shard) {
                    lost_since = None;
                    None
                } else {
                    Some(*lost_since.get_or_insert(now))
                };
                let cut_off = since.is_some_and(|since| now.duration_since(since) > session);
                if cut_off == isolated {
                    continue;
                }
                isolated = cut_off;
                tracing::warn!(
                    isolated,
                    "contact with the active controller {}",
                    if isolated {
                        "lost for a session: leading nothing"
                    } else {
                        "back"
                    }
                );
                for to in 0..shard.count {
                    let to = ShardId(u16::try_from(to).expect("shard ids fit in u16"));
                    let _ = shard.mesh().send(to, ShardMsg::Isolated { isolated }).await;
                }
            }
        })
        .detach();
    }

    fn mesh(&self) -> &Mesh<ShardMsg> {
        self.mesh.get().expect("mesh joined in start")
    }

    /// Appends to `tp` wherever it lives (locally, or by message to the owning shard) in two
    /// steps: the append is issued before this returns, and the returned future waits for the
    /// acknowledgement `acks` asks for. Call order is log order
    /// for the partition, also when the partition lives on another shard: the mesh channel to
    /// a shard is FIFO and the owner issues forwarded produces in the order they arrive
    /// ([`Self::receive`]). Connections use it to pipeline a client's produces.
    pub fn produce_start(
        self: &Rc<Self>,
        tp: TopicPartition,
        batches: Bytes,
        acks: Acks,
    ) -> impl Future<Output = Result<ProduceOk, ProduceError>> + use<> {
        enum Issued<L> {
            Local(L),
            Forwarded(oneshot::Receiver<Result<ProduceOk, ProduceError>>),
        }
        let issued = match self.owner(&tp) {
            None => Err(ProduceError::UnknownTopicOrPartition(tp.to_string())),
            Some(owner) if owner == self.id => self
                .produce_local_start(&tp, batches, acks)
                .map(Issued::Local),
            Some(owner) => {
                let (reply, answer) = oneshot::channel();
                let msg = ShardMsg::Produce {
                    tp,
                    batches,
                    acks,
                    reply,
                };
                self.forward(owner, msg)
                    .map(|()| Issued::Forwarded(answer))
                    .map_err(|()| ProduceError::Overloaded)
            }
        };
        async move {
            match issued? {
                Issued::Local(pending) => pending.await,
                Issued::Forwarded(answer) => {
                    answer.await.unwrap_or(Err(ProduceError::ShuttingDown))
                }
            }
        }
    }

    /// Appends to a partition this shard owns in two steps: the append is issued before this
    /// returns (so call order is log order for the partition), and the returned future waits
    /// for the acknowledgement `acks` asks for; both steps count in the produce metrics.
    pub fn produce_local_start(
        self: &Rc<Self>,
        tp: &TopicPartition,
        batches: Bytes,
        acks: Acks,
    ) -> Result<impl Future<Output = Result<ProduceOk, ProduceError>> + use<>, ProduceError> {
        if self.stopping.get() {
            return Err(ProduceError::ShuttingDown);
        }
        if !self.leads(tp) {
            return Err(ProduceError::NotLeader(tp.to_string()));
        }
        let replica = self
            .local(tp)
            .ok_or_else(|| ProduceError::UnknownTopicOrPartition(tp.to_string()))?;
        let bytes = batches.len() as u64;
        let pending = match replica.produce_start(batches, acks) {
            Ok(pending) => pending,
            Err(error) => {
                self.metrics.record_produce(tp, bytes, None);
                return Err(error);
            }
        };
        let tp = tp.clone();
        let shard = Rc::clone(self);
        Ok(async move {
            let result = pending.await;
            shard
                .metrics
                .record_produce(&tp, bytes, result.as_ref().ok());
            result
        })
    }

    /// Reads from `tp` wherever it lives, waiting up to `request.max_wait` for data.
    pub async fn fetch(
        &self,
        tp: TopicPartition,
        request: FetchRequest,
    ) -> Result<FetchData, FetchError> {
        let Some(owner) = self.owner(&tp) else {
            return Err(FetchError::UnknownTopicOrPartition(tp.to_string()));
        };
        if owner == self.id {
            return self.fetch_local(&tp, request).await;
        }
        let (reply, answer) = oneshot::channel();
        self.forward(owner, ShardMsg::Fetch { tp, request, reply })
            .map_err(|()| FetchError::Overloaded)?;
        answer.await.unwrap_or(Err(FetchError::Overloaded))
    }

    /// The replica of `tp` on this shard, if this broker leads it: what fetches, offset
    /// lookups and DeleteRecords are served from (a follower answers NotLeader, as in Kafka).
    fn leading_replica(&self, tp: &TopicPartition) -> Result<Rc<PartitionReplica>, FetchError> {
        if !self.leads(tp) {
            return Err(FetchError::NotLeader(tp.to_string()));
        }
        self.local(tp)
            .ok_or_else(|| FetchError::UnknownTopicOrPartition(tp.to_string()))
    }

    /// Reads from a partition this shard owns.
    pub async fn fetch_local(
        &self,
        tp: &TopicPartition,
        request: FetchRequest,
    ) -> Result<FetchData, FetchError> {
        let replica = self.leading_replica(tp)?;
        let data = replica.fetch(request).await?;
        self.metrics.record_fetch(tp, data.bytes() as u64);
        Ok(data)
    }

    /// Looks up an offset of `tp` wherever it lives.
    pub async fn list_offset(
        &self,
        tp: TopicPartition,
        spec: OffsetSpec,
    ) -> Result<OffsetAnswer, FetchError> {
        let Some(owner) = self.owner(&tp) else {
            return Err(FetchError::UnknownTopicOrPartition(tp.to_string()));
        };
        if owner == self.id {
            let replica = self.leading_replica(&tp)?;
            return replica.list_offset(spec).await;
        }
        let (reply, answer) = oneshot::channel();
        self.forward(owner, ShardMsg::ListOffset { tp, spec, reply })
            .map_err(|()| FetchError::Overloaded)?;
        answer.await.unwrap_or(Err(FetchError::Overloaded))
    }

    /// The largest epoch at or below `epoch` in the log of `tp` and the offset where it ends
    /// (the next epoch's start, or the log end), answered by its leader wherever it lives: what
    /// a consumer checks its position against after a leader change (Kafka's KIP-320).
    pub async fn end_offset_for_epoch(
        &self,
        tp: TopicPartition,
        epoch: LeaderEpoch,
    ) -> Result<(LeaderEpoch, Offset), FetchError> {
        let Some(owner) = self.owner(&tp) else {
            return Err(FetchError::UnknownTopicOrPartition(tp.to_string()));
        };
        if owner == self.id {
            let replica = self.leading_replica(&tp)?;
            return Ok(replica.log().end_offset_for_epoch(epoch));
        }
        let (reply, answer) = oneshot::channel();
        self.forward(owner, ShardMsg::EpochEnd { tp, epoch, reply })
            .map_err(|()| FetchError::Overloaded)?;
        answer.await.unwrap_or(Err(FetchError::Overloaded))
    }

    /// Advances the log start offset of `tp` (Kafka DeleteRecords), on its leader only, and
    /// never for an internal topic.
    pub async fn delete_records(
        &self,
        tp: TopicPartition,
        before: Offset,
    ) -> Result<Offset, FetchError> {
        if crate::group::is_internal_topic(&tp.topic) {
            return Err(FetchError::InternalTopic(tp.topic.to_string()));
        }
        let Some(owner) = self.owner(&tp) else {
            return Err(FetchError::UnknownTopicOrPartition(tp.to_string()));
        };
        if owner == self.id {
            let replica = self.leading_replica(&tp)?;
            return replica.delete_records(before).await;
        }
        let (reply, answer) = oneshot::channel();
        self.forward(owner, ShardMsg::DeleteRecords { tp, before, reply })
            .map_err(|()| FetchError::Overloaded)?;
        answer.await.unwrap_or(Err(FetchError::Overloaded))
    }

    /// Offsets and size of `tp`, for describe.
    pub async fn status(&self, tp: TopicPartition) -> Option<PartitionStatus> {
        let owner = self.owner(&tp)?;
        if owner == self.id {
            return Some(self.local(&tp)?.status(self.id));
        }
        let (reply, answer) = oneshot::channel();
        self.forward(owner, ShardMsg::Status { tp, reply }).ok()?;
        answer.await.ok().flatten()
    }

    /// Applies a metadata change through shard 0 and returns once every shard has opened or
    /// closed its partitions to match.
    pub async fn command(
        &self,
        command: MetadataCommand,
    ) -> Result<Arc<MetadataSnapshot>, MetadataError> {
        match &command {
            MetadataCommand::DeleteTopic { name }
            | MetadataCommand::CreatePartitions { name, .. }
                if crate::group::is_internal_topic(name) =>
            {
                return Err(MetadataError::InternalTopic(name.clone()));
            }
            _ => {}
        }
        if self.id == ShardId(0) {
            return self.command_local(command).await;
        }
        let (reply, answer) = oneshot::channel();
        if self
            .mesh()
            .send(ShardId(0), ShardMsg::Command { command, reply })
            .await
            .is_err()
        {
            return Err(MetadataError::Storage("metadata writer is gone".into()));
        }
        answer.await.unwrap_or(Err(MetadataError::Storage(
            "metadata writer is gone".into(),
        )))
    }

    async fn command_local(
        &self,
        command: MetadataCommand,
    ) -> Result<Arc<MetadataSnapshot>, MetadataError> {
        if let Some(controller) = self.controller.get() {
            return controller.submit(command).await;
        }
        if let Some(observer) = self.observer.get() {
            return observer.submit(command).await;
        }
        let writer = self.writer.as_ref().ok_or(MetadataError::NotController)?;
        let _permit = writer
            .lock
            .acquire_permit(1)
            .await
            .expect("semaphore never closed");
        let current = self.metadata();
        let context = PlacementContext {
            node: self.config.node,
            shard_count: self.count,
        };
        let next = crate::metadata::apply(&current, &command, context)?;
        writer.store.persist(&next).await?;
        let next = Arc::new(next);
        self.publish(Arc::clone(&next)).await;
        Ok(next)
    }

    /// Sends `snapshot` to every shard (itself included) and waits until all have reconciled.
    pub(crate) async fn publish(&self, snapshot: Arc<MetadataSnapshot>) {
        let mut acks = Vec::with_capacity(self.count);
        for to in 0..self.count {
            let (done, ack) = oneshot::channel();
            let to = ShardId(u16::try_from(to).expect("shard ids fit in u16"));
            let msg = ShardMsg::Metadata {
                snapshot: Arc::clone(&snapshot),
                done,
            };
            if self.mesh().send(to, msg).await.is_ok() {
                acks.push(ack);
            }
        }
        for ack in acks {
            // A dropped ack means that shard is stopping; nothing to wait for.
            let _ = ack.await;
        }
    }

    /// Starts this shard's group coordinators: the offsets partitions it owns are replayed in
    /// the background, and later ones are picked up as metadata places them here. Call once,
    /// after [`Shard::start`]; until then group requests answer COORDINATOR_NOT_AVAILABLE.
    pub fn start_groups(self: &Rc<Self>, config: GroupConfig) {
        let groups = Rc::new(GroupShard::new(config));
        groups.spawn_ticker();
        let local: Vec<(i32, Rc<PartitionReplica>)> = self
            .partitions
            .borrow()
            .iter()
            .filter(|(tp, replica)| {
                &*tp.topic == OFFSETS_TOPIC
                    && matches!(
                        replica.role(),
                        crate::partition::Role::Single | crate::partition::Role::Leader(_)
                    )
            })
            .map(|(tp, replica)| (tp.partition.0, Rc::clone(replica)))
            .collect();
        for (partition, replica) in local {
            groups.open(partition, replica);
        }
        assert!(self.groups.set(groups).is_ok(), "groups started twice");
    }

    /// Sends a group request to the group's coordinator shard and returns its answer.
    /// Commits for partitions that do not exist are answered UNKNOWN_TOPIC_OR_PARTITION here.
    pub async fn group(&self, request: GroupRequest) -> GroupResponse {
        let snapshot = self.metadata();
        let Some(topic) = snapshot.topic(OFFSETS_TOPIC) else {
            return request.failed(GroupError::CoordinatorNotAvailable);
        };
        let count = i32::try_from(topic.partitions.len()).expect("partition count fits i32");
        if count == 0 {
            return request.failed(GroupError::CoordinatorNotAvailable);
        }
        let partition = partition_for(request.group_id(), count);
        let owner = topic.partitions[partition as usize].shard;
        if !snapshot.cluster.registrations.is_empty()
            && topic.partitions[partition as usize].leader != self.config.node
        {
            // In a cluster only the leader of the group's offsets partition coordinates it.
            return request.failed(GroupError::NotCoordinator);
        }
        let (request, unknown) = match request {
            GroupRequest::Commit(mut commit) => {
                let (known, unknown): (Vec<_>, Vec<_>) = commit
                    .offsets
                    .into_iter()
                    .partition(|o| snapshot.partition(&o.tp).is_some());
                commit.offsets = known;
                (GroupRequest::Commit(commit), unknown)
            }
            GroupRequest::ConsumerHeartbeat(mut heartbeat) => {
                // The coordinator core reads no metadata: give it the partition counts.
                heartbeat.partition_counts = heartbeat
                    .topics
                    .iter()
                    .map(|t| {
                        let count = snapshot.topic(t).map_or(0, |m| m.partitions.len());
                        (t.clone(), i32::try_from(count).unwrap_or(i32::MAX))
                    })
                    .collect();
                (GroupRequest::ConsumerHeartbeat(heartbeat), Vec::new())
            }
            other => (other, Vec::new()),
        };
        let mut response = match &request {
            GroupRequest::Commit(commit) if commit.offsets.is_empty() => {
                GroupResponse::Commit(crate::group::CommitResponse::default())
            }
            _ if owner == self.id => self.group_local(partition, request).await,
            _ => {
                let (reply, answer) = oneshot::channel();
                let failed = request.failed(GroupError::NotCoordinator);
                let overloaded = request.failed(GroupError::Overloaded);
                let msg = ShardMsg::Group {
                    partition,
                    request,
                    reply,
                };
                match self.forward(owner, msg) {
                    Ok(()) => answer.await.unwrap_or(failed),
                    Err(()) => overloaded,
                }
            }
        };
        if let GroupResponse::Commit(commit) = &mut response {
            commit.partitions.extend(
                unknown
                    .into_iter()
                    .map(|o| (o.tp, Some(GroupError::UnknownTopicOrPartition))),
            );
        }
        response
    }

    async fn group_local(&self, partition: i32, request: GroupRequest) -> GroupResponse {
        let Some(groups) = self.groups.get() else {
            return request.failed(GroupError::CoordinatorNotAvailable);
        };
        match groups.backend(partition) {
            Some(backend) => backend.handle(request).await,
            // The metadata places the partition here but it is not open (yet, or it failed).
            None => request.failed(GroupError::CoordinatorNotAvailable),
        }
    }

    /// Every group of the broker (ListGroups), gathered from every shard.
    pub async fn list_groups(&self) -> Vec<GroupListing> {
        let mut all = self.local_groups();
        let mut answers = Vec::new();
        for to in 0..self.count {
            let to = ShardId(u16::try_from(to).expect("shard ids fit in u16"));
            if to == self.id {
                continue;
            }
            let (reply, answer) = oneshot::channel();
            if self.forward(to, ShardMsg::ListGroups { reply }).is_ok() {
                answers.push(answer);
            }
        }
        for answer in answers {
            if let Ok(groups) = answer.await {
                all.extend(groups);
            }
        }
        all.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        all
    }

    fn local_groups(&self) -> Vec<GroupListing> {
        self.groups.get().map(|g| g.list()).unwrap_or_default()
    }

    fn forward(&self, to: ShardId, msg: ShardMsg) -> Result<(), ()> {
        self.mesh().try_send(to, msg).map_err(|Overloaded(_)| ())
    }

    /// Takes one message from another shard. A produce is issued here, in arrival order, so a
    /// sender's produces to one partition append in the order it sent them; everything else
    /// runs as its own task.
    fn receive(self: Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Produce {
                tp,
                batches,
                acks,
                reply,
            } => {
                let pending = self.produce_local_start(&tp, batches, acks);
                sluice_engine::rt::spawn(async move {
                    let result = match pending {
                        Ok(pending) => pending.await,
                        Err(error) => Err(error),
                    };
                    let _ = reply.send(result);
                })
                .detach();
            }
            msg => {
                sluice_engine::rt::spawn(async move { self.handle(msg).await }).detach();
            }
        }
    }

    async fn handle(self: Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Produce { .. } => unreachable!("produces are issued in Shard::receive"),
            ShardMsg::Fetch { tp, request, reply } => {
                let _ = reply.send(self.fetch_local(&tp, request).await);
            }
            ShardMsg::ListOffset { tp, spec, reply } => {
                let _ = reply.send(self.list_offset(tp, spec).await);
            }
            ShardMsg::EpochEnd { tp, epoch, reply } => {
                let _ = reply.send(self.end_offset_for_epoch(tp, epoch).await);
            }
            ShardMsg::DeleteRecords { tp, before, reply } => {
                let _ = reply.send(self.delete_records(tp, before).await);
            }
            ShardMsg::Status { tp, reply } => {
                let _ = reply.send(self.local(&tp).map(|r| r.status(self.id)));
            }
            ShardMsg::Command { command, reply } => {
                let _ = reply.send(self.command_local(command).await);
            }
            ShardMsg::CollectMetrics { reply } => {
                let _ = reply.send(self.local_metrics());
            }
            ShardMsg::Group {
                partition,
                request,
                reply,
            } => {
                let _ = reply.send(self.group_local(partition, request).await);
            }
            ShardMsg::ListGroups { reply } => {
                let _ = reply.send(self.local_groups());
            }
            ShardMsg::Metadata { snapshot, done } => {
                self.reconcile(snapshot).await;
                let _ = done.send(());
            }
            ShardMsg::Isolated { isolated } => self.set_isolated(isolated).await,
        }
    }

    /// Adopts `snapshot` if it is newer, then opens partitions newly placed here and closes
    /// (and, for deleted topics, removes) partitions no longer placed here.
    async fn reconcile(&self, snapshot: Arc<MetadataSnapshot>) {
        let _one_at_a_time = self
            .reconciling
            .acquire_permit(1)
            .await
            .expect("semaphore never closed");
        if snapshot.revision < self.metadata.borrow().revision {
            return;
        }
        let previous = self.metadata.replace(Arc::clone(&snapshot));
        let node = self.config.node;
        // Brokers outside the seeds are reachable at the address they registered.
        if let Some(peers) = &self.peers {
            for registration in &snapshot.cluster.registrations {
                if registration.id != node {
                    peers.set_address(registration.id, registration.cluster);
                }
            }
        }
        let clustered = !snapshot.cluster.registrations.is_empty();
        // A single broker holds every partition; in a cluster, the ones it is a replica of.
        let here = |p: &crate::metadata::PartitionMeta| {
            p.shard == self.id && (!clustered || p.replicas.contains(&node))
        };
        let mut wanted = Vec::new();
        for topic in snapshot.topics.values() {
            for partition in &topic.partitions {
                if here(partition) {
                    wanted.push((
                        TopicPartition::new(Arc::clone(&topic.name), partition.id.0),
                        topic,
                        partition,
                    ));
                }
            }
        }
        // Close what is no longer ours; remove data of deleted topics (or re-created ones).
        let stale: Vec<(TopicPartition, Rc<PartitionReplica>)> = {
            let partitions = self.partitions.borrow();
            partitions
                .iter()
                .filter(|(tp, replica)| {
                    snapshot
                        .topic(&tp.topic)
                        .and_then(|t| t.partition(tp.partition).map(|p| (t, p)))
                        .is_none_or(|(t, p)| !here(p) || t.id != replica.topic_id())
                })
                .map(|(tp, replica)| (tp.clone(), Rc::clone(replica)))
                .collect()
        };
        for (tp, replica) in stale {
            self.partitions.borrow_mut().remove(&tp);
            if &*tp.topic == OFFSETS_TOPIC
                && let Some(groups) = self.groups.get()
            {
                groups.close(tp.partition.0);
            }
            if let Some(replication) = self.replication.get() {
                replication.release(&tp);
            }
            // Data goes with deleted topics, and in a cluster with replicas moved off this
            // broker (a reassignment); a partition moving between shards keeps its files.
            let deleted = snapshot
                .topic(&tp.topic)
                .and_then(|t| t.partition(tp.partition).map(|p| (t, p)))
                .is_none_or(|(t, p)| {
                    t.id != replica.topic_id() || (clustered && !p.replicas.contains(&node))
                });
            PartitionReplica::close(replica, deleted).await;
        }
        drop(previous);
        let mut to_open = Vec::new();
        for (tp, topic, meta) in wanted {
            match self.local(&tp) {
                Some(replica) => {
                    replica.update_config(&topic.config);
                    self.update_role(&tp, &replica, meta);
                }
                None => to_open.push((tp, topic, meta)),
            }
        }
        // Opening is IO-bound (recovery reads the tail, preallocation, index files); opened
        // together, io_uring overlaps them, which is what makes a restart with thousands of
        // partitions take seconds (perf scenario 70). Reconciles run one at a time, so no other
        // task opens these partitions meanwhile.
        use futures::StreamExt;
        futures::stream::iter(to_open)
            .for_each_concurrent(
                crate::limits::PARTITION_OPENS_INFLIGHT_MAX,
                |(tp, topic, meta)| self.reconcile_open(tp, topic, meta),
            )
            .await;
    }

    /// Gives `replica` the role `meta` names for this broker, and in a cluster starts or
    /// stops coordinating the groups of an offsets partition as its leadership comes and goes
    /// (the new leader replays the partition, so it coordinates from the log every replica
    /// agrees on).
    fn update_role(
        &self,
        tp: &TopicPartition,
        replica: &Rc<PartitionReplica>,
        meta: &crate::metadata::PartitionMeta,
    ) {
        let offline;
        let meta = if self.isolated.get() && meta.leader == self.config.node {
            // Cut off from the controller: another broker leads this by now.
            offline = crate::metadata::PartitionMeta {
                leader: crate::controller::election::NO_LEADER,
                ..meta.clone()
            };
            &offline
        } else {
            meta
        };
        replica.update_role(meta, self.config.node);
        if &*tp.topic != OFFSETS_TOPIC {
            return;
        }
        let Some(groups) = self.groups.get() else {
            return;
        };
        match replica.role() {
            crate::partition::Role::Single | crate::partition::Role::Leader(_) => {
                groups.open(tp.partition.0, Rc::clone(replica));
            }
            crate::partition::Role::Follower | crate::partition::Role::Offline => {
                groups.close(tp.partition.0);
            }
        }
    }

    /// Opens (recovering) one partition newly placed here and registers it.
    async fn reconcile_open(
        &self,
        tp: TopicPartition,
        topic: &crate::metadata::TopicMeta,
        meta: &crate::metadata::PartitionMeta,
    ) {
        let config = log_config(&topic.config);
        let opened = PartitionReplica::open(
            &self.config.data_dir,
            tp.clone(),
            topic.id,
            config,
            Rc::clone(&self.cache),
            topic.config.clone(),
            self.replication.get().cloned(),
        )
        .await;
        match opened {
            Ok(replica) => {
                let replica = Rc::new(replica);
                let previous = self
                    .partitions
                    .borrow_mut()
                    .insert(tp.clone(), Rc::clone(&replica));
                assert!(
                    previous.is_none(),
                    "partition {tp} opened twice on shard {}",
                    self.id.0
                );
                // The snapshot may have moved on while the log opened; the reconcile of the
                // newer one (queued behind this) corrects the role.
                self.update_role(&tp, &replica, meta);
            }
            Err(error) => {
                tracing::error!(partition = %tp, %error, "cannot open partition");
            }
        }
    }

    /// Starts the shard's maintenance loop in a low-share background task queue: every
    /// `interval`, retention is applied to each partition this shard owns.
    pub fn spawn_maintenance(self: &Rc<Self>, interval: Duration) {
        let queue = sluice_engine::rt::create_task_queue("maintenance", MAINTENANCE_SHARES);
        let weak = Rc::downgrade(self);
        sluice_engine::rt::spawn_into(
            async move {
                // Runs for the life of the shard; ends when the shard is dropped or stops.
                loop {
                    sluice_engine::rt::sleep(interval).await;
                    let Some(shard) = weak.upgrade() else { return };
                    if shard.stopping.get() {
                        return;
                    }
                    // One replica held at a time, so a partition closing meanwhile does not
                    // wait for the whole pass.
                    let tps: Vec<TopicPartition> =
                        shard.partitions.borrow().keys().cloned().collect();
                    drop(shard);
                    for tp in tps {
                        let Some(shard) = weak.upgrade() else { return };
                        if shard.stopping.get() {
                            return;
                        }
                        let replica = shard.partitions.borrow().get(&tp).cloned();
                        drop(shard);
                        if let Some(replica) = replica {
                            replica.apply_retention().await;
                        }
                        sluice_engine::rt::yield_if_needed().await;
                    }
                }
            },
            queue,
        )
        .detach();
    }

    fn local_metrics(&self) -> crate::metrics::MetricsSnapshot {
        let mut snapshot = self.metrics.snapshot(self.id.0);
        snapshot
            .partitions_per_shard
            .push((self.id.0, self.partition_count() as u64));
        if let Some(groups) = self.groups.get() {
            snapshot.committed_offsets = groups.committed();
        }
        snapshot.high_watermarks = self
            .partitions
            .borrow()
            .iter()
            .map(|(tp, replica)| (tp.clone(), replica.log().high_watermark()))
            .collect();
        if let Some(replication) = self.replication.get() {
            snapshot.replica_lag = replication.follower_lag();
            let stats = replication.fetcher_stats();
            for (name, value) in [
                ("replica_fetch_requests", stats.requests),
                ("replica_fetch_errors", stats.transport_errors),
                ("replica_fetched_bytes", stats.appended_bytes),
                ("replica_truncations", stats.truncations),
                ("replica_log_errors", stats.log_errors),
            ] {
                snapshot.shard_gauges.push((self.id.0, name, value));
            }
        }
        snapshot
    }

    /// Counters of every shard, summed (per-shard gauges kept apart).
    pub async fn collect_metrics(&self) -> crate::metrics::MetricsSnapshot {
        let mut total = self.local_metrics();
        let mut answers = Vec::new();
        for to in 0..self.count {
            let to = ShardId(u16::try_from(to).expect("shard ids fit in u16"));
            if to == self.id {
                continue;
            }
            let (reply, answer) = oneshot::channel();
            if self.forward(to, ShardMsg::CollectMetrics { reply }).is_ok() {
                answers.push(answer);
            }
        }
        for answer in answers {
            if let Ok(snapshot) = answer.await {
                total.merge(snapshot);
            }
        }
        total
    }

    /// Stops accepting produce requests, then flushes and closes every partition.
    pub async fn shutdown(&self) {
        self.stopping.set(true);
        if let Some(replication) = self.replication.get() {
            replication.stop();
        }
        if let Some(groups) = self.groups.get() {
            groups.close_all();
        }
        let replicas: Vec<Rc<PartitionReplica>> = self
            .partitions
            .borrow_mut()
            .drain()
            .map(|(_, r)| r)
            .collect();
        // Closing is IO-bound: each partition trims its segment and writes its clean-shutdown
        // marker, waiting for shared syncs of the file system before and after the marker.
        // One at a time, 6,000 partitions took 204 s to stop (perf/RESULTS.md); closed
        // together, their IO overlaps and one sync serves all the closes waiting for it. The
        // bound keeps the in-flight IO and the close futures' memory small.
        use futures::StreamExt;
        futures::stream::iter(replicas)
            .for_each_concurrent(crate::limits::SHUTDOWN_CLOSES_INFLIGHT_MAX, |replica| {
                PartitionReplica::close(replica, false)
            })
            .await;
    }
}

/// Maps a topic's config to the engine's log config.
pub fn log_config(config: &crate::config::TopicConfig) -> LogConfig {
    LogConfig {
        segment_bytes: config.segment_bytes,
        segment_ms: config.segment_ms,
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
        index_interval_bytes: config.index_interval_bytes,
        flush_messages: config.flush_messages,
        flush_ms: config.flush_ms,
        // The cluster layer enforces max.message.bytes (with Kafka's error); the log's own
        // limit is the engine's, so lowering the topic limit never strands stored batches.
        max_batch_bytes: sluice_engine::limits::BATCH_BYTES_MAX,
        ..LogConfig::default()
    }
}
