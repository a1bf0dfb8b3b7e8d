//! Limits of the storage engine. Every constant has its unit in its name, says why it has its
//! value and what it costs, and relations between limits are asserted at compile time.

/// Largest record batch the engine accepts, header included.
///
/// Matches Kafka's default `message.max.bytes` neighbourhood with room for large batches;
/// one batch of this size is the largest single copy on the append path.
pub const BATCH_BYTES_MAX: usize = 16 << 20;

/// Largest size the records of one compressed batch may decompress to.
///
/// Decompression stops with a typed error past this many bytes, so a small "zip bomb" batch
/// costs at most this much memory for as long as its records are being decoded. Four times
/// [`BATCH_BYTES_MAX`] leaves room for the 4-10x ratios text and JSON reach with gzip or zstd,
/// while keeping one decode's buffer far below a shard's memory. Batches are only decompressed
/// off the produce and fetch paths (compaction, tools, the client library), one at a time per
/// task.
pub const RECORDS_DECOMPRESSED_BYTES_MAX: usize = 4 * BATCH_BYTES_MAX;

/// Threads of a shard's blocking pool, which runs the file operations io_uring cannot issue
/// (`ftruncate`, `rename`, `unlink`, `mkdir`, `syncfs`) and rare blocking work.
///
/// They wait on the device, not the CPU (a truncate that frees blocks may discard them
/// synchronously, one to a partial block reads that block to zero its tail), so several in
/// flight overlap their waits: the 10,000 log trims of a shutdown of 10,000 partitions queued
/// 1.3 s behind one thread here and 0.35 s behind 8 (perf/RESULTS.md, "Many partitions: shared
/// syncs"). Each costs an idle thread per shard.
pub const BLOCKING_THREADS_PER_SHARD: usize = 8;

/// Block size all direct-IO positions and lengths are aligned to.
pub const DIO_ALIGN_BYTES: usize = 4096;

/// Smallest `segment.bytes` a log accepts.
///
/// One direct-IO block: smaller segments would roll on every append and make every write a
/// roll (create, seal, checkpoint). Tests use small segments to exercise rolling.
pub const SEGMENT_BYTES_MIN: u64 = DIO_ALIGN_BYTES as u64;

/// Largest `segment.bytes` a log accepts.
///
/// Index entries store file positions as `u32` and Kafka caps the setting at `i32::MAX`; a
/// segment may exceed its configured size by at most one append (one record set), which still
/// fits in `u32` because [`APPEND_BYTES_MAX`] is far below the remaining headroom.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;

/// Largest record set (one or more batches) accepted by one append call.
///
/// Bounds the per-append copy and the largest single write round; the network layers cap
/// request sizes well below this.
pub const APPEND_BYTES_MAX: usize = 64 << 20;

/// Bytes of one offset index entry: relative offset `u32` + file position `u32`.
pub const OFFSET_INDEX_ENTRY_BYTES: usize = 8;

/// Bytes of one time index entry: timestamp `i64` + relative offset `u32`.
pub const TIME_INDEX_ENTRY_BYTES: usize = 12;

/// Largest `index.interval.bytes` accepted (Kafka's own maximum is `i32::MAX`; a sparser index
/// only makes lookups scan more).
pub const INDEX_INTERVAL_BYTES_MAX: u64 = 1 << 30;

/// Most bytes the writer gathers into one write round beyond its first append.
///
/// A round is one aligned DMA buffer allocated for the write and freed after it, so this bounds
/// the write-path memory of one partition (plus one oversized append when a single record set is
/// larger). 1 MiB is past the point where larger sequential writes stop gaining bandwidth on
/// NVMe, and keeps one round well under a millisecond.
pub const WRITE_ROUND_BYTES_MAX: usize = 1 << 20;

/// Most write rounds one partition keeps in flight at once.
///
/// One round at a time leaves the device idle while each completion is processed and the next
/// round is built, and a single 1 MiB request cannot fill a queue that wants several; four
/// overlapping rounds match the queue depth of the `sluice-perf reference` disk measurement.
/// Rounds complete in any order but acknowledgements follow log order. Costs up to four round
/// buffers (`WRITE_ROUNDS_INFLIGHT_MAX * WRITE_ROUND_BYTES_MAX` = 4 MiB) per partition that is
/// writing at full speed.
pub const WRITE_ROUNDS_INFLIGHT_MAX: usize = 4;

/// Most bytes of appends one partition queues for its writer; further appends fail with
/// `AppendError::Overloaded` until the device catches up.
///
/// Bounds the memory a partition's backlog holds when producers outpace the disk (the network
/// layers bound requests per connection, not per partition). 64 MiB is about 30 ms of a fast
/// NVMe drive's write bandwidth: far more than group commit needs to batch.
pub const QUEUED_BYTES_MAX: usize = 64 << 20;

/// Default preallocation step of the active segment (`fallocate`).
///
/// One `fallocate` per step; at most one step of unused but reserved disk space per active
/// segment, released when the segment is sealed or the log closed. 4 MiB is what a partition
/// written slowly reserves, so 1,000 idle partitions reserve at most 4 GiB; segments that
/// start without preallocated space grow from [`PREALLOCATE_BYTES_FIRST`], so partitions that
/// got a few records reserve far less, and one written fast ramps up to
/// [`PREALLOCATE_BURST_BYTES_MAX`].
pub const PREALLOCATE_BYTES_DEFAULT: u64 = 4 << 20;

/// Largest step the active segment's preallocation ramps up to while it is written fast (see
/// `log::preallocate`); a configured step above it is used as configured.
///
/// 64 MiB is about 40 ms of this machine's direct-write bandwidth: one `fallocate` (which
/// drains the writes in flight on the file) per 40 ms of streaming costs about 2% of it.
pub const PREALLOCATE_BURST_BYTES_MAX: u64 = 64 << 20;

/// A preallocation used up within this many milliseconds doubles the next step.
pub const PREALLOCATE_RAMP_MS: u64 = 1000;

/// Largest preallocation step accepted.
pub const PREALLOCATE_BYTES_MAX: u64 = 1 << 30;

/// First preallocation step of a segment that was opened or created without preallocated
/// space; each later step doubles the allocation up to the configured step.
///
/// A partition that receives a few records then reserves 64 KiB instead of a whole step:
/// 10,000 partitions filled with a few records each would otherwise hold 40 GiB of fallocated
/// space at the 4 MiB default. A busy partition reaches the full step after six doublings (six
/// extra `fallocate`s per segment).
pub const PREALLOCATE_BYTES_FIRST: u64 = 64 << 10;

/// Bytes read per step while scanning a segment (recovery, index rebuild, timestamp search).
///
/// One aligned DMA read; the scanner holds one such buffer (plus one oversized batch).
pub const SCAN_CHUNK_BYTES: usize = 256 << 10;

/// Smallest retired segment file a partition keeps for its next roll to write over
/// (`engine/FORMAT.md` §2, "Recycled segments").
///
/// Overwriting blocks that were written before costs the file system nothing: writing into
/// freshly `fallocate`d blocks makes ext4 convert unwritten extents as each write completes
/// (journalled, and through io_uring's worker threads), which on the development VM halves
/// the write bandwidth (fio, 1 MiB writes, 4 in flight: 1.5-1.9 GB/s fresh, 3.7 GB/s over
/// written blocks). A file smaller than this saves less than its rename costs.
pub const SEGMENT_RECYCLE_BYTES_MIN: u64 = 1 << 20;

/// Smallest disk read the fetch path issues; smaller reads waste an IO on header-sized reads.
pub const READ_CHUNK_BYTES_MIN: usize = 64 << 10;

/// Bytes of one read-ahead chunk: one direct read issued ahead of a sequential catch-up reader.
///
/// 1 MiB is the request size of the `sluice-perf reference` read measurement, large enough
/// that per-request costs vanish; a batch straddling two chunks is copied once (at most one
/// batch per chunk).
pub const READ_AHEAD_CHUNK_BYTES: usize = 1 << 20;

/// Read-ahead chunks a partition keeps in flight (or read and not yet consumed) for its
/// sequential reader, while the shard's read-ahead budget allows.
///
/// A catch-up consumer takes a whole fetch (commonly 1 to 4 MiB per partition) from the stream
/// at once, then the response crosses the network and the client asks again: the window must
/// cover one fetch being served plus the next being read, or the device idles during every
/// round trip. Measured with 4 MiB fetches of 1 MiB batches, one partition (sluice-perf
/// consume over Kafka): 4 chunks gave 896-926 MB/s, 8 chunks 1291-1426 MB/s (perf/RESULTS.md).
/// Costs at most `(READ_AHEAD_CHUNKS + 1) * READ_AHEAD_CHUNK_BYTES` = 9 MiB per partition with
/// a catch-up reader; a partition whose reads are served from the cache has none.
pub const READ_AHEAD_CHUNKS: usize = 8;

/// Read-ahead chunks a stream issues whatever the shard's budget: the one read a sequential
/// reader needs to make progress, in flight ahead of it.
pub const READ_AHEAD_CHUNKS_MIN: usize = 1;

/// Read-ahead chunks all the streams of one shard hold together (in flight, or read and not yet
/// consumed) before streams stop growing past [`READ_AHEAD_CHUNKS_MIN`]: 64 MiB, so eight
/// partitions catch up at full depth at once, and a shard with a thousand catch-up readers
/// holds 64 MiB plus one chunk each rather than nine each.
pub const READ_AHEAD_SHARD_CHUNKS_MAX: usize = 64;

/// Largest fetch a single `read` call serves (beyond the first batch, which is always served
/// whole). Bounds the read buffer of one fetch.
pub const READ_BYTES_MAX: usize = 64 << 20;

/// How many recent `(next offset -> file position)` pairs a partition remembers so that
/// sequential catch-up readers skip the index lookup. 24 bytes each.
pub const READ_MEMO_ENTRIES: usize = 4;

/// Most bytes recovery reads past a corrupt tail to measure how much it discards (it stops
/// earlier, at the first whole block of zeros, which is where preallocated space begins).
///
/// A whole segment: the report must say how much was really discarded (a flipped byte early in
/// an active segment discards the rest of it). The cost is one sequential read of the discarded
/// bytes, only when recovery truncates. Truncation itself does not depend on it.
pub const RECOVERY_GARBAGE_PROBE_BYTES_MAX: u64 = SEGMENT_BYTES_MAX + APPEND_BYTES_MAX as u64;

/// Most segments one partition may hold; bounds the in-memory segment table (about 100 bytes
/// each) and the checkpoint (40 bytes each). At the default 1 GiB segment size this is 64 TiB.
pub const SEGMENTS_MAX: usize = 65_536;

/// Most bytes of the leader-epoch checkpoint read at open (12 bytes per epoch entry, so about
/// 87 000 leader changes within retention). A longer file is treated as damaged and the cache is
/// rebuilt from the batch headers; the cost is one 1 MiB read per partition open at most.
pub const EPOCH_FILE_BYTES_MAX: usize = 1 << 20;

/// Largest batch cache budget accepted per shard.
pub const BATCH_CACHE_BYTES_MAX: usize = 64 << 30;

const _: () = assert!(DIO_ALIGN_BYTES.is_power_of_two());
const _: () = assert!(BATCH_BYTES_MAX.is_multiple_of(DIO_ALIGN_BYTES));
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_MAX);
const _: () = assert!(SEGMENT_RECYCLE_BYTES_MIN.is_multiple_of(DIO_ALIGN_BYTES as u64));
const _: () = assert!(SEGMENT_BYTES_MAX + APPEND_BYTES_MAX as u64 <= u32::MAX as u64);
const _: () = assert!(APPEND_BYTES_MAX >= BATCH_BYTES_MAX);
const _: () = assert!(QUEUED_BYTES_MAX >= WRITE_ROUND_BYTES_MAX);
const _: () = assert!(WRITE_ROUNDS_INFLIGHT_MAX >= 1);
const _: () = assert!(QUEUED_BYTES_MAX >= WRITE_ROUNDS_INFLIGHT_MAX * WRITE_ROUND_BYTES_MAX);
const _: () = assert!(WRITE_ROUND_BYTES_MAX.is_multiple_of(DIO_ALIGN_BYTES));
const _: () = assert!(PREALLOCATE_BYTES_DEFAULT.is_multiple_of(DIO_ALIGN_BYTES as u64));
const _: () = assert!(PREALLOCATE_BYTES_FIRST.is_multiple_of(DIO_ALIGN_BYTES as u64));
const _: () = assert!(PREALLOCATE_BYTES_FIRST <= PREALLOCATE_BYTES_DEFAULT);
const _: () = assert!(PREALLOCATE_BYTES_MAX.is_multiple_of(DIO_ALIGN_BYTES as u64));
const _: () = assert!(PREALLOCATE_BURST_BYTES_MAX.is_multiple_of(PREALLOCATE_BYTES_DEFAULT));
const _: () = assert!(SCAN_CHUNK_BYTES.is_multiple_of(DIO_ALIGN_BYTES));
const _: () = assert!(READ_CHUNK_BYTES_MIN.is_multiple_of(DIO_ALIGN_BYTES));
const _: () = assert!(READ_BYTES_MAX >= READ_CHUNK_BYTES_MIN);
const _: () = assert!(READ_AHEAD_CHUNK_BYTES.is_multiple_of(DIO_ALIGN_BYTES));
const _: () = assert!(READ_AHEAD_CHUNKS_MIN >= 1);
const _: () = assert!(READ_AHEAD_CHUNKS >= READ_AHEAD_CHUNKS_MIN);
const _: () = assert!(READ_AHEAD_SHARD_CHUNKS_MAX >= READ_AHEAD_CHUNKS);
const _: () = assert!(DIO_ALIGN_BYTES.is_multiple_of(OFFSET_INDEX_ENTRY_BYTES));
// Any batch accepted uncompressed must also decode when its records arrive compressed.
const _: () = assert!(RECORDS_DECOMPRESSED_BYTES_MAX >= BATCH_BYTES_MAX);
