//! Cluster metadata: topics, partitions, placement and configs, as one immutable, versioned
//! snapshot per revision.
//!
//! One writer (shard 0 on a single broker; the controller quorum in a cluster) applies
//! [`MetadataCommand`]s through a [`MetadataStore`] and publishes the resulting
//! `Arc<MetadataSnapshot>` to every shard. Shards only read snapshots, and a snapshot with an
//! older revision than the one a shard holds is ignored (broadcasts may arrive out of order).
//!
//! Must not depend on: the network layer.

mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use sluice_engine::{BrokerId, LeaderEpoch, PartitionId, Revision, ShardId, TopicPartition};

use crate::config::{ConfigError, TopicConfig};

pub use store::{
    FileMetadataStore, MetadataStore, PlacementContext, apply, replace_missing_shards,
};

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
    /// All replicas, preferred leader first.
    pub replicas: Vec<BrokerId>,
    /// In-sync replicas.
    pub isr: Vec<BrokerId>,
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
