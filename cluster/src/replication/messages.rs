//! The replica fetch wire messages as plain owned types, protocol-neutral: one
//! [`ReplicaFetchRequest`] carries every partition a follower shard fetches from one leader
//! shard, and one [`ReplicaFetchResponse`] answers them all. Kafka's Fetch v12+ is the model
//! (KIP-320 `diverging_epoch`, `last_fetched_epoch`, `current_leader_epoch`).
//!
//! Batches are the leader's stored batch bytes, never re-encoded: the follower appends them as
//! they are (`PartitionLog::append_replicated`), so offsets, epochs and CRCs arrive unchanged.
//! The peer transport (in `net`) encodes these; nothing here does I/O.
//!
//! Must not depend on: the network layer, the log, or any codec.

use bytes::Bytes;
use sluice_engine::{BrokerId, LeaderEpoch, Offset, TopicPartition};

/// A follower shard's fetch from one leader shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaFetchRequest {
    /// The fetching follower broker.
    pub replica: BrokerId,
    /// Most batch bytes in the whole response (at least one batch is always returned, as in
    /// Kafka, so a batch larger than this still replicates).
    pub max_bytes: u32,
    /// Longest the leader may hold the request when it has nothing new (long poll).
    pub max_wait_ms: u32,
    /// One entry per partition, each at most once.
    pub partitions: Vec<ReplicaFetchPartition>,
}

/// One partition of a [`ReplicaFetchRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaFetchPartition {
    /// The partition.
    pub tp: TopicPartition,
    /// The leader epoch the follower believes current; the leader refuses a lower one
    /// (`FencedLeaderEpoch`) and a higher one (`UnknownLeaderEpoch`).
    pub current_leader_epoch: LeaderEpoch,
    /// The follower's log end offset: where to read from, and proof of what it holds.
    pub fetch_offset: Offset,
    /// The epoch of the follower's last batch (`None` for an empty log): the leader checks that
    /// `(last_fetched_epoch, fetch_offset)` is on its own log, and answers a diverging epoch
    /// otherwise.
    pub last_fetched_epoch: Option<LeaderEpoch>,
    /// The follower's log start offset.
    pub log_start_offset: Offset,
}

/// The leader's answer to a [`ReplicaFetchRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaFetchResponse {
    /// One entry per requested partition, in request order.
    pub partitions: Vec<ReplicaFetchPartitionResponse>,
}

/// One partition of a [`ReplicaFetchResponse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaFetchPartitionResponse {
    /// The partition.
    pub tp: TopicPartition,
    /// Why nothing was served, if so.
    pub error: Option<ReplicaError>,
    /// The leader's high watermark.
    pub high_watermark: Offset,
    /// The leader's log start offset.
    pub log_start_offset: Offset,
    /// The leader's log end offset.
    pub log_end_offset: Offset,
    /// When the follower's `(last_fetched_epoch, fetch_offset)` is not on the leader's log: the
    /// largest leader epoch `<=` the follower's and where it ends on the leader. The follower
    /// truncates (see `FollowerCore`) and fetches again; no batches come with it.
    pub diverging_epoch: Option<(LeaderEpoch, Offset)>,
    /// Stored batches from `fetch_offset` on, concatenated, byte for byte as the leader holds
    /// them.
    pub batches: Bytes,
}

/// Per-partition replication errors, protocol-neutral (the network layer maps them to Kafka
/// codes in its one mapping function).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// This broker does not lead the partition (Kafka NOT_LEADER_OR_FOLLOWER).
    #[error("not the leader of the partition")]
    NotLeader,
    /// The request's epoch is older than the leader's (Kafka FENCED_LEADER_EPOCH): the
    /// follower has stale metadata.
    #[error("leader epoch is fenced")]
    FencedLeaderEpoch,
    /// The request's epoch is newer than the leader's (Kafka UNKNOWN_LEADER_EPOCH): the leader
    /// has not learned it yet; retry.
    #[error("leader epoch is unknown to the leader")]
    UnknownLeaderEpoch,
    /// The fetching broker is not a replica of the partition (Kafka
    /// REPLICA_NOT_AVAILABLE-like; Kafka answers NOT_LEADER_OR_FOLLOWER).
    #[error("broker is not a replica of the partition")]
    UnknownReplica,
    /// The fetch offset is outside the leader's log (Kafka OFFSET_OUT_OF_RANGE).
    #[error("fetch offset out of range")]
    OffsetOutOfRange,
    /// acks=all refused before the append: the ISR is smaller than `min.insync.replicas`
    /// (Kafka NOT_ENOUGH_REPLICAS).
    #[error("not enough in-sync replicas")]
    NotEnoughReplicas,
    /// acks=all appended, but the ISR was smaller than `min.insync.replicas` when the high
    /// watermark passed the append (Kafka NOT_ENOUGH_REPLICAS_AFTER_APPEND). The records may
    /// be visible; the producer retries.
    #[error("not enough in-sync replicas after the append")]
    NotEnoughReplicasAfterAppend,
    /// The leader read its log and failed (an IO error or a corrupt batch; the leader's own
    /// reads report the detail).
    #[error("the leader could not read its log")]
    StorageError,
}
