//! The native protocol over QUIC: one frame per request and per answer, each pair on its own
//! bidirectional stream.
//!
//! Main items: [`frame`] (the sans-IO frame codec), [`messages`] (the typed request and
//! response headers frames carry) and [`stream`] (reading and writing frames on quinn
//! streams). The byte-exact specification is `net/PROTOCOL.md`.
//!
//! Must not depend on: the shard runtime (frames are plain bytes), storage.

pub mod frame;
pub mod messages;
pub mod stream;
