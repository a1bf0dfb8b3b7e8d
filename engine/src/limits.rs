//! Limits of the storage engine. Every constant has its unit in its name, says why it has its
//! value and what it costs, and relations between limits are asserted at compile time.

/// Largest record batch the engine accepts, header included.
///
/// Matches Kafka's default `message.max.bytes` neighbourhood with room for large batches;
/// one batch of this size is the largest single copy on the append path.
pub const BATCH_BYTES_MAX: usize = 16 << 20;

/// Block size all direct-IO positions and lengths are aligned to.
pub const DIO_ALIGN_BYTES: usize = 4096;

const _: () = assert!(DIO_ALIGN_BYTES.is_power_of_two());
const _: () = assert!(BATCH_BYTES_MAX.is_multiple_of(DIO_ALIGN_BYTES));
