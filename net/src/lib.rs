//! sluice-net: the network layer. The Kafka wire protocol listener lives in [`kafka`]; the
//! native QUIC protocol and the admin endpoint grow beside it.
//!
//! Must not depend on: segment files or any engine type beyond the runtime facade and
//! vocabulary types; storage is reached only through `sluice_cluster::shard::Shard`.

pub mod kafka;
pub mod limits;
