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

/// Block size all direct-IO positions and lengths are aligned to.
pub const DIO_ALIGN_BYTES: usize = 4096;

const _: () = assert!(DIO_ALIGN_BYTES.is_power_of_two());
const _: () = assert!(BATCH_BYTES_MAX.is_multiple_of(DIO_ALIGN_BYTES));
// Any batch accepted uncompressed must also decode when its records arrive compressed.
const _: () = assert!(RECORDS_DECOMPRESSED_BYTES_MAX >= BATCH_BYTES_MAX);
