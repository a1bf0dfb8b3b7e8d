//! The native protocol over QUIC: frames, typed headers, the per-shard server and the client.

pub mod messages;
