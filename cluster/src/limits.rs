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

/// Partitions of `__consumer_offsets` when created with the default config. Kafka uses 50 to
/// spread coordinators over many brokers; a single broker spreads them over its shards, and
/// every partition costs an open log and a preallocated segment (~4 MiB of disk), so 16.
pub const OFFSETS_TOPIC_PARTITIONS_DEFAULT: i32 = 16;

/// Most partitions `__consumer_offsets` may be configured with.
pub const OFFSETS_TOPIC_PARTITIONS_MAX: i32 = 1_000;

/// Interval of the group coordinator's timer (session expiry, rebalance deadlines, offsets
/// retention). Timeouts fire up to this late; each tick scans the shard's groups, so 100 ms
/// costs ~10 scans a second and keeps session expiry within 2% of a 6 s session.
pub const GROUP_TICK_MS: u64 = 100;

/// Longest group id, member id, group instance id, protocol type, protocol name or client id
/// the group coordinator accepts: the longest string an `__consumer_offsets` record holds (an
/// `i16` length, as in Kafka). Flexible Kafka request versions (compact strings) and the native
/// protocol bound strings only by the frame size, so longer ones are refused when the request
/// arrives (Kafka itself would fail writing the record). A member keeps at most six such
/// strings, so at most ~192 KiB of them.
pub const GROUP_STRING_BYTES_MAX: usize = i16::MAX as usize;

/// Most (topic, partition) entries a classic consumer group tracks from its members'
/// assignments (which member owns which partition, over all members; also the most one
/// DescribeGroups answer lists). Kafka treats assignments as opaque bytes, so a member whose
/// assignment does not fit what is left is simply not tracked: commits for untracked
/// partitions are accepted, as Kafka accepts them all. An entry costs 8 bytes in the table (up
/// to 24 while it is built, 24 in a description), so a group's table stays under 24 MiB however
/// large its assignments; 1M entries is ten topics at [`TOPIC_PARTITIONS_MAX`].
pub const GROUP_OWNED_PARTITIONS_MAX: usize = 1_000_000;

/// Bytes read per step when replaying an offsets partition at load. One read buffer of this
/// size lives while a partition loads.
pub const GROUP_LOAD_READ_BYTES: usize = 1 << 20;

/// Partitions a shard opens at once when metadata places them there (start-up, topic
/// creation). Each open reads the log's tail (one 256 KiB scan buffer) and its small files;
/// 64 keeps io_uring busy while bounding the transient buffers to about 16 MiB per shard.
pub const PARTITION_OPENS_INFLIGHT_MAX: usize = 64;

/// Partitions a shard closes at once at shutdown. A close syncs no file of its own: it waits
/// twice for a shared sync of the file system (`sluice_engine::io::sync_file_system`), which
/// serves every close waiting at that moment, so the number of syncs is about twice the
/// partitions divided by this. 1,024 makes it a few dozen for 10,000 partitions (with 64, a
/// shutdown took over 600 syncs, each writing back whatever else the file system had dirty),
/// while a close in flight holds a few KiB (the marker and its write buffer): a few MiB.
pub const SHUTDOWN_CLOSES_INFLIGHT_MAX: usize = 1024;

const _: () = assert!(OFFSETS_TOPIC_PARTITIONS_DEFAULT <= OFFSETS_TOPIC_PARTITIONS_MAX);
const _: () = assert!(OFFSETS_TOPIC_PARTITIONS_MAX <= TOPIC_PARTITIONS_MAX);
const _: () = assert!(TOPIC_NAME_BYTES_MAX <= GROUP_STRING_BYTES_MAX);
const _: () = assert!(GROUP_OWNED_PARTITIONS_MAX >= TOPIC_PARTITIONS_MAX as usize);
const _: () = assert!(GROUP_OWNED_PARTITIONS_MAX <= u32::MAX as usize);
