//! The Sluice storage engine.
//!
//! Owns the on-disk record batch format (Kafka RecordBatch v2), segments and their indexes,
//! the partition log with recovery and retention, and the shard runtime facade (`rt`).
//! It depends on no other Sluice crate and knows nothing about sockets or protocols beyond the
//! socket types the runtime facade re-exports.

pub mod batch;
pub mod io;
pub mod limits;
pub mod log;
pub mod rt;
pub mod types;
pub mod util;

pub use types::{
    BrokerId, FilePos, LeaderEpoch, Offset, PartitionId, RelativeOffset, Revision, ShardId,
    TimestampMs, TopicPartition,
};
