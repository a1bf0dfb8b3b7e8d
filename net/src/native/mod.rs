//! The native protocol over QUIC: one frame per request and per answer, each pair on its own
//! bidirectional stream.
//!
//! Main items: [`frame`] (the sans-IO frame codec), [`messages`] (the typed request and
//! response headers frames carry), [`stream`] (reading and writing frames on quinn streams),
//! [`server`] (the broker side: [`serve_native`] on every shard), [`order`] (the ordering of
//! a connection's pipelined produce requests per partition), `groups` (the server's group
//! requests) and [`error`] (the one mapping from domain errors to [`messages::ErrorCode`]).
//! The byte-exact specification and the
//! message semantics are in `net/PROTOCOL.md`.
//!
//! Must not depend on: storage. Only [`server`] knows the shard (through the
//! `sluice_cluster::shard::Shard` API); frames, messages and streams are plain bytes and types
//! that the client library shares.

pub mod error;
pub mod frame;
mod groups;
pub mod messages;
pub mod order;
pub mod server;
pub mod stream;

pub use server::{CLOSE_SHUTTING_DOWN, NativeServerConfig, serve_native, serve_native_until};
