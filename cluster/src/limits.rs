//! Limits of the cluster layer. Units in names; each says why it has its value.

/// Most partitions one topic may have. Kafka has no hard limit; 100k bounds metadata size
/// (each partition costs ~100 bytes in every shard's metadata copy).
pub const TOPIC_PARTITIONS_MAX: i32 = 100_000;

/// Longest topic name, as Kafka (249 characters, so that `NAME-PARTITION` fits file names).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Capacity of each shard-to-shard inbox channel. A full inbox becomes backpressure
/// (`Overloaded`); 1024 messages of at most a pointer and a few words each costs ~64 KiB per
/// shard pair.
pub const SHARD_INBOX_CAPACITY: usize = 1024;

/// Largest `max.message.bytes` a topic may set: the engine's batch limit.
pub const MESSAGE_BYTES_MAX: u64 = sluice_engine::limits::BATCH_BYTES_MAX as u64;
