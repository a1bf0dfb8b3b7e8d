//! Partition replication: one leader and R-1 followers per partition, the high watermark,
//! leader epochs with follower truncation on leader change (no KIP-101 or KIP-279 anomalies),
//! the in-sync replica set with `replica.lag.time.max.ms`, `min.insync.replicas` and acks=all.
//!
//! # Main types
//!
//! - [`LeaderCore`] and [`FollowerCore`]: per-partition sans-IO state machines (STYLE §5).
//!   Inputs carry the time and a read-only [`LogView`] of the local log; outputs are actions the
//!   driver applies ([`LeaderAction`], [`FollowerAction`]). They never read a clock or do I/O,
//!   so the deterministic simulation (`cluster/tests/sim_replication.rs`) runs them unchanged.
//! - [`ReplicaFetchRequest`] / [`ReplicaFetchResponse`]: the protocol-neutral wire messages, one
//!   request per (follower shard, leader shard) pair carrying many partitions.
//! - [`Fetcher`]: the per-shard follower driver over real `PartitionLog`s: it groups the
//!   shard's follower partitions by leader (broker, shard), keeps one request in flight per
//!   leader through a [`ReplicaFetchTransport`], and applies the follower actions.
//!   [`serve_replica_fetch`] is the leader half: it answers a request from the shard's
//!   [`LeaderReplica`]s. [`InMemoryTransport`] connects the two in one process for tests.
//!
//! - [`ShardReplication`]: the per-shard driver in a cluster: roles from metadata, the leaders'
//!   long-polled fetch serving and acks=all waiters, the fetcher over the peer links
//!   ([`PeerFetchTransport`], messages encoded by [`wire`]), ISR proposals to the controller.
//!
//! Must not depend on: `sluice-net`, sockets, or protocol codecs.

mod driver;
mod fetcher;
mod follower;
mod leader;
mod messages;
mod serve;
pub mod wire;

use std::time::Duration;

use sluice_engine::log::PartitionLog;
use sluice_engine::{BrokerId, LeaderEpoch, Offset};

use crate::metadata::PartitionEpoch;

pub use driver::{
    IsrProposer, PeerFetchTransport, ReplicationSettings, ReplicationWait, ShardReplication,
};
pub use fetcher::{
    FetchTarget, Fetcher, FetcherStats, InMemoryTransport, LeaderShard, ReplicaFetchTransport,
    TransportError,
};
pub use follower::{FollowerAction, FollowerCore};
pub use leader::{
    Acks, FetchAnswer, IsrProposal, LeaderAction, LeaderCore, LeaderPositions, ProduceId,
};
pub use messages::{
    ReplicaError, ReplicaFetchPartition, ReplicaFetchPartitionResponse, ReplicaFetchRequest,
    ReplicaFetchResponse,
};
pub use serve::{LeaderReplica, serve_replica_fetch};

/// Replication settings of a partition (Kafka's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicationConfig {
    /// `replica.lag.time.max.ms`: a follower not caught up for this long leaves the ISR.
    pub replica_lag_time_max: Duration,
    /// `min.insync.replicas`: the smallest ISR an acks=all produce is accepted with.
    pub min_insync_replicas: usize,
    /// How long an ISR proposal may stay unanswered before the leader sends it again
    /// (unchanged: it stays pending until the controller answers).
    pub isr_change_retry: Duration,
}

impl Default for ReplicationConfig {
    /// Kafka's defaults: 30 s lag, `min.insync.replicas` 1; a proposal retried after 5 s.
    fn default() -> ReplicationConfig {
        ReplicationConfig {
            replica_lag_time_max: Duration::from_secs(30),
            min_insync_replicas: 1,
            isr_change_retry: Duration::from_secs(5),
        }
    }
}

/// A partition's leadership as the controller published it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionState {
    /// The leader.
    pub leader: BrokerId,
    /// The leader epoch, bumped on every leader change.
    pub leader_epoch: LeaderEpoch,
    /// The partition epoch, bumped on every leader, replica or ISR change; ISR proposals
    /// name it.
    pub partition_epoch: PartitionEpoch,
    /// Every replica, preferred leader first.
    pub replicas: Vec<BrokerId>,
    /// The in-sync replicas (the leader included).
    pub isr: Vec<BrokerId>,
}

impl From<&crate::metadata::PartitionMeta> for PartitionState {
    fn from(meta: &crate::metadata::PartitionMeta) -> PartitionState {
        PartitionState {
            leader: meta.leader,
            leader_epoch: meta.leader_epoch,
            partition_epoch: meta.partition_epoch,
            replicas: meta.replicas.clone(),
            isr: meta.isr.clone(),
        }
    }
}

/// The read-only questions the cores ask of a local log; all answered from memory.
pub trait LogView {
    /// The first readable offset.
    fn log_start_offset(&self) -> Offset;
    /// The offset after the last written batch.
    fn log_end_offset(&self) -> Offset;
    /// The epoch of the log's last batch that carries one.
    fn latest_epoch(&self) -> Option<LeaderEpoch>;
    /// OffsetsForLeaderEpoch on this log (see `PartitionLog::end_offset_for_epoch`).
    fn end_offset_for_epoch(&self, epoch: LeaderEpoch) -> (LeaderEpoch, Offset);
}

impl LogView for PartitionLog {
    fn log_start_offset(&self) -> Offset {
        PartitionLog::log_start_offset(self)
    }
    fn log_end_offset(&self) -> Offset {
        PartitionLog::log_end_offset(self)
    }
    fn latest_epoch(&self) -> Option<LeaderEpoch> {
        PartitionLog::latest_epoch(self)
    }
    fn end_offset_for_epoch(&self, epoch: LeaderEpoch) -> (LeaderEpoch, Offset) {
        PartitionLog::end_offset_for_epoch(self, epoch)
    }
}
