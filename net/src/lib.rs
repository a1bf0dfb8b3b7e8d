//! sluice-net: the network layer.
//!
//! Main modules: [`quic`] (quinn on the thread-per-core runtime, TLS, endpoints), [`native`]
//! (the native protocol's frames and how they travel on QUIC streams), [`limits`].
//! The Kafka listener, routing to shards and the admin endpoint will live here too.
//!
//! Must not depend on: segment files or any storage type beyond the engine's vocabulary and
//! batch format; glommio by name (the runtime is reached through `sluice_engine::rt`).

pub mod limits;
pub mod native;
pub mod quic;
