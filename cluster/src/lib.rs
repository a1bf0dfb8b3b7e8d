//! The Sluice cluster layer: the shard root that owns a shard's partition replicas, metadata
//! (topics, partitions, placement, configs) with its single writer, and the typed cross-shard
//! messages, the controller quorum (`controller`, raft-rs), the peer-link trait (`peer`), the
//! group coordinators (`group`) and partition replication (`replication`).
//!
//! Must not depend on: `sluice-net` or any socket or protocol type; it talks to peers only
//! through traits the network layer implements.

pub mod config;
pub mod controller;
pub mod fatal;
pub mod group;
pub mod limits;
pub mod metadata;
pub mod metrics;
pub mod partition;
pub mod peer;
pub mod placement;
pub mod replication;
pub mod shard;
