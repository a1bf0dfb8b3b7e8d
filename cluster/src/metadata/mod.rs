//! Cluster metadata: topics, partitions, placement and configs, as one immutable, versioned
//! snapshot per revision.
//!
//! One writer (shard 0 on a single broker; the controller quorum in a cluster) applies
//! [`MetadataCommand`]s through a [`MetadataStore`] and publishes the resulting
//! `Arc<MetadataSnapshot>` to every shard. Shards only read snapshots, and a snapshot with an
//! older revision than the one a shard holds is ignored (broadcasts may arrive out of order).
//!
//! Format: JSON (the single broker's file, the controller's raft entries and snapshots, the
//! observers' pulls). A field added later is `#[serde(default)]`, so metadata written by
//! older code still loads; a change in how commands apply is gated by the cluster's metadata
//! version ([`METADATA_VERSION`], [`ClusterState::metadata_version`]) so every voter applies
//! each committed entry alike, whichever code wrote it.
//!
//! Must not depend on: the network layer.

mod meta_properties;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use sluice_engine::{BrokerId, LeaderEpoch, PartitionId, Revision, ShardId, TopicPartition};

use crate::config::{ConfigError, TopicConfig};

pub use meta_properties::{
    DataDirIdentity, META_PROPERTIES_FILE, MetaProperties, MetaPropertiesError, Settled,
};
pub use store::{
    ApplyInputs, FileMetadataStore, MetadataStore, PlacementContext, apply, apply_with,
    replace_missing_shards,
};

/// The metadata version this code applies (Kafka's `metadata.version`), which each broker
/// registers with. Version 1 adds partition epochs: [`PartitionMeta::partition_epoch`] counts
/// and `AlterPartition` is refused unless it names the current one. A cluster runs at the
/// lowest version of its registered brokers, so a committed entry is applied alike by every
/// voter while brokers of older code are still registered (rolling upgrade).
pub const METADATA_VERSION: u16 = 1;

/// The first metadata version with partition epochs.
pub const PARTITION_EPOCH_VERSION: u16 = 1;
const _: () = assert!(PARTITION_EPOCH_VERSION <= METADATA_VERSION);

/// A partition's change counter (Kafka's partition epoch, the ISR version that AlterPartition
/// names): bumped by every committed change of the partition's leader, leader epoch, replicas
/// or ISR, from metadata version [`PARTITION_EPOCH_VERSION`] on (0 before).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct PartitionEpoch(pub i32);

/// A topic's unique id (Kafka's topic UUID). Names can be reused after deletion; ids cannot.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct TopicId(pub uuid::Uuid);

/// One partition's placement and replica set.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionMeta {
    /// Partition number.
    pub id: PartitionId,
    /// Owning shard on each replica broker.
    pub shard: ShardId,
    /// Current leader.
    pub leader: BrokerId,
    /// Leader epoch, bumped on every leader change.
    pub leader_epoch: LeaderEpoch,
    /// Bumped on every change of leader, leader epoch, replicas or ISR (see
    /// [`PartitionEpoch`]); 0 in metadata written before partition epochs.
    #[serde(default)]
    pub partition_epoch: PartitionEpoch,
    /// All replicas, preferred leader first.
    pub replicas: Vec<BrokerId>,
    /// In-sync replicas.
    pub isr: Vec<BrokerId>,
    /// A reassignment in progress: the replica set the partition moves to (Kafka's target
    /// replicas). Meanwhile `replicas` is the old set plus the new members, which catch up as
    /// followers; once every target replica is in the ISR, `replicas` becomes the target (the
    /// leader moves first if it is leaving).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_replicas: Option<Vec<BrokerId>>,
}

/// A topic with its partitions and config overrides.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicMeta {
    /// Topic name.
    pub name: Arc<str>,
    /// Unique id.
    pub id: TopicId,
    /// Partitions, indexed by partition number.
    pub partitions: Vec<PartitionMeta>,
    /// Config keys the user set; everything else is the default.
    pub overrides: BTreeMap<String, String>,
    /// `overrides` resolved over the defaults.
    pub config: TopicConfig,
}

impl TopicMeta {
    /// The partition with this number, if it exists.
    pub fn partition(&self, partition: PartitionId) -> Option<&PartitionMeta> {
        usize::try_from(partition.0)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

/// How clients reach one broker.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrokerInfo {
    /// Node id.
    pub id: BrokerId,
    /// Advertised Kafka listener.
    pub kafka: SocketAddr,
    /// QUIC endpoint of each shard, indexed by shard id.
    pub quic: Vec<SocketAddr>,
}

/// A broker as it registered with the controller quorum (cluster mode only).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BrokerRegistration {
    /// Node id.
    pub id: BrokerId,
    /// Advertised Kafka listener.
    pub kafka: SocketAddr,
    /// QUIC endpoint of each shard, indexed by shard id (so its length is the shard count).
    pub quic: Vec<SocketAddr>,
    /// Cluster (peer link) listener of shard 0; shard i listens on its port plus i.
    pub cluster: SocketAddr,
    /// Fenced: missed its session timeout (or never heartbeated this controller term); it
    /// leads nothing, is in no ISR of more than one member, and clients are not told of it.
    pub fenced: bool,
    /// The highest metadata version the broker's code applies ([`METADATA_VERSION`]); 0 in a
    /// registration of a broker older than metadata versions.
    #[serde(default)]
    pub metadata_version: u16,
}

impl BrokerRegistration {
    /// Shards the broker runs.
    pub fn shard_count(&self) -> usize {
        self.quic.len()
    }

    /// How clients reach it.
    pub fn info(&self) -> BrokerInfo {
        BrokerInfo {
            id: self.id,
            kafka: self.kafka,
            quic: self.quic.clone(),
        }
    }
}

/// Replicated cluster facts (empty on a single broker): registrations and the counters every
/// broker derives identically from the committed log.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ClusterState {
    /// Registered brokers, sorted by id. Invariant: ids are unique.
    pub registrations: Vec<BrokerRegistration>,
    /// Partition leader changes made by the controller (fencing, unfencing, preferred).
    pub leader_elections_total: u64,
    /// ISR shrinks accepted (AlterPartition or fencing).
    pub isr_shrinks_total: u64,
    /// ISR expansions accepted (AlterPartition).
    pub isr_expands_total: u64,
}

impl ClusterState {
    /// The registration of `id`.
    pub fn registration(&self, id: BrokerId) -> Option<&BrokerRegistration> {
        self.registrations.iter().find(|r| r.id == id)
    }

    /// True if `id` is registered and not fenced.
    pub fn is_live(&self, id: BrokerId) -> bool {
        self.registration(id).is_some_and(|r| !r.fenced)
    }

    /// The metadata version the cluster runs: the lowest any registered broker (fenced or
    /// not) supports, 0 before any registered. It derives from committed registrations only,
    /// so every voter computes the same version for every entry.
    pub fn metadata_version(&self) -> u16 {
        self.registrations
            .iter()
            .map(|r| r.metadata_version)
            .min()
            .unwrap_or(0)
    }
}

/// An immutable view of all metadata at one revision. Shared between shards via `Arc`.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct MetadataSnapshot {
    /// Increases with every applied change.
    pub revision: Revision,
    /// Stable id of this cluster, made when the data directory is first initialised.
    pub cluster_id: String,
    /// The controller (on a single broker: itself).
    pub controller: BrokerId,
    /// Live brokers.
    pub brokers: Vec<BrokerInfo>,
    /// Topics by name.
    pub topics: BTreeMap<Arc<str>, TopicMeta>,
    /// Cluster membership (empty on a single broker, whose `brokers` is set at start-up).
    #[serde(default)]
    pub cluster: ClusterState,
}

impl MetadataSnapshot {
    /// Looks up a topic by name.
    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    /// Looks up a partition.
    pub fn partition(&self, tp: &TopicPartition) -> Option<&PartitionMeta> {
        self.topic(&tp.topic)
            .and_then(|topic| topic.partition(tp.partition))
    }

    /// The broker with this id.
    pub fn broker(&self, id: BrokerId) -> Option<&BrokerInfo> {
        self.brokers.iter().find(|b| b.id == id)
    }
}

/// A change to metadata. Applied in order by the single metadata writer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum MetadataCommand {
    /// Create a topic.
    CreateTopic {
        /// Name.
        name: String,
        /// Number of partitions.
        partitions: i32,
        /// Replication factor.
        replication: i16,
        /// Config overrides.
        overrides: BTreeMap<String, String>,
    },
    /// Delete a topic and its data.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// Set (`Some`) or remove (`None`) config overrides; `replace` drops every other override
    /// first (Kafka's legacy AlterConfigs semantics).
    AlterConfig {
        /// Topic name.
        name: String,
        /// Keys to set or remove.
        changes: Vec<(String, Option<String>)>,
        /// Replace all overrides instead of merging.
        replace: bool,
    },
    /// Grow a topic to `total` partitions.
    CreatePartitions {
        /// Topic name.
        name: String,
        /// New total partition count.
        total: i32,
    },
    /// A broker joins or re-registers (new endpoints), and is unfenced: partitions left
    /// without a leader whose ISR names it get it as leader.
    RegisterBroker {
        /// What it announced.
        registration: BrokerRegistration,
    },
    /// A broker missed its session timeout: it leaves every ISR it is not the last member of,
    /// and the partitions it led get a new leader from the ISR (or none: offline).
    FenceBroker {
        /// The broker.
        id: BrokerId,
    },
    /// The partition leader changes the ISR (Kafka's AlterPartition). Refused unless `leader`
    /// and `leader_epoch` are the partition's current ones and, from metadata version
    /// [`PARTITION_EPOCH_VERSION`] on, `partition_epoch` is too.
    AlterPartition {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: PartitionId,
        /// The leader sending it.
        leader: BrokerId,
        /// The leader's epoch.
        leader_epoch: LeaderEpoch,
        /// The partition epoch of the state the leader made the change from (`None` in
        /// entries written before partition epochs).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        partition_epoch: Option<PartitionEpoch>,
        /// New in-sync replicas: a subset of the replicas containing the leader.
        isr: Vec<BrokerId>,
    },
    /// Move leadership back to each partition's preferred replica where it is live and in
    /// sync (Kafka's auto.leader.rebalance).
    ElectPreferredLeaders,
    /// Move a partition to another replica set with no downtime (Kafka's
    /// AlterPartitionReassignments): the new replicas are added and catch up, then the
    /// partition moves to exactly `replicas` (first: the preferred leader).
    ReassignPartition {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: PartitionId,
        /// The new replica set: distinct live brokers.
        replicas: Vec<BrokerId>,
    },
}

/// Why a metadata change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// A topic with that name exists.
    #[error("topic {0} already exists")]
    TopicExists(String),
    /// No topic with that name.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// The name is empty, too long, `.`/`..`, or has characters outside `[a-zA-Z0-9._-]`.
    #[error("invalid topic name {0:?}: use 1-249 characters of [a-zA-Z0-9._-]")]
    InvalidTopicName(String),
    /// Bad partition count.
    #[error("invalid partition count {0}")]
    InvalidPartitions(i32),
    /// Bad replication factor for the brokers available.
    #[error("invalid replication factor {factor}: {brokers} broker(s) available")]
    InvalidReplicationFactor {
        /// Requested factor.
        factor: i16,
        /// Brokers that could host replicas.
        brokers: usize,
    },
    /// A config key or value was rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The metadata could not be persisted; the change was not applied.
    #[error("cannot persist metadata: {0}")]
    Storage(String),
    /// This broker is not the metadata writer.
    #[error("not the controller")]
    NotController,
    /// An AlterPartition named a leader or epoch that is no longer current.
    #[error("stale leader epoch for {topic}-{partition}: current leader {leader} epoch {epoch}")]
    StaleLeaderEpoch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Current leader.
        leader: i32,
        /// Current leader epoch.
        epoch: i32,
    },
    /// An AlterPartition was made from a state of the partition that is no longer current
    /// (Kafka's INVALID_UPDATE_VERSION): a delayed or repeated proposal that another change
    /// overtook. The leader waits for the new state and decides again.
    #[error("stale partition epoch for {topic}-{partition}: current partition epoch {epoch}")]
    StalePartitionEpoch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Current partition epoch.
        epoch: i32,
    },
    /// A cluster command named replicas that are not the partition's, or an ISR without its
    /// leader.
    #[error("invalid replica assignment: {0}")]
    InvalidReplicaAssignment(String),
    /// The controller refused the command for a reason only it could see (a forwarded
    /// command that raced another change).
    #[error("controller refused the change: {0}")]
    Refused(String),
    /// The command would delete or repartition an internal topic (`__consumer_offsets`: its
    /// partition count places the groups, and deleting it loses every committed offset).
    #[error("{0} is an internal topic: it cannot be deleted or repartitioned")]
    InternalTopic(String),
}

/// Checks a topic name the way Kafka does.
pub fn validate_topic_name(name: &str) -> Result<(), MetadataError> {
    let valid = !name.is_empty()
        && name.len() <= crate::limits::TOPIC_NAME_BYTES_MAX
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(MetadataError::InvalidTopicName(name.into()))
    }
}
