//! sluice-net: the native QUIC protocol (server side and the Rust client library), the Kafka
//! protocol listener, and the admin HTTP endpoint.
//!
//! Must not depend on: segment files or other storage internals; partitions are reached only
//! through `sluice_cluster::shard::Shard`.

pub mod client;
pub mod kafka;
pub mod limits;
pub mod native;
