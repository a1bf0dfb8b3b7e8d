//! sluice-net: the native QUIC protocol (server side and the Rust client library), the Kafka
//! protocol listener, and the admin HTTP endpoint.
//!
//! Main modules: [`quic`] (quinn on the thread-per-core runtime, TLS, endpoints), [`native`]
//! (the native protocol's frames, headers, streams and its per-shard server), [`kafka`] (the
//! Kafka listener), [`peer`] (peer links between brokers over TCP), [`domain`] (what both
//! protocols share over the shard API), [`admin`], [`client`], [`limits`].
//!
//! Must not depend on: segment files or other storage internals (partitions are reached only
//! through `sluice_cluster::shard::Shard`); glommio by name (the runtime is reached through
//! `sluice_engine::rt`).

pub mod admin;
pub mod client;
pub mod domain;
pub mod kafka;
pub mod limits;
pub mod native;
pub mod peer;
pub mod quic;
