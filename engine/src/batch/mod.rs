//! Kafka RecordBatch v2 (magic 2): the unit Sluice stores, replicates and serves.
//!
//! This module parses and validates batch headers in place, without copying: a batch is a
//! byte slice, and [`BatchHeader`] is the decoded 61-byte header beside it. The broker never
//! re-encodes records; it checks a batch's framing and CRC and rewrites only the base offset
//! and partition leader epoch, which the CRC does not cover.
//!
//! Byte layout (big-endian), see `engine/FORMAT.md`:
//!
//! | at | field | type |
//! |---:|---|---|
//! | 0 | base offset | i64 |
//! | 8 | batch length (bytes after this field) | i32 |
//! | 12 | partition leader epoch | i32 |
//! | 16 | magic (= 2) | i8 |
//! | 17 | CRC-32C of bytes 21.. | u32 |
//! | 21 | attributes | i16 |
//! | 23 | last offset delta | i32 |
//! | 27 | base timestamp | i64 |
//! | 35 | max timestamp | i64 |
//! | 43 | producer id | i64 |
//! | 51 | producer epoch | i16 |
//! | 53 | base sequence | i32 |
//! | 57 | record count | i32 |
//! | 61 | records | |
//!
//! Submodules: [`builder`] builds batches ([`BatchBuilder`], [`build_batch`]), [`records`]
//! encodes and decodes the Record v2 entries inside ([`RecordDecoder`], [`decode_batch`]), and
//! [`compression`] implements the four Kafka codecs with bounded decompression.
//!
//! Must not depend on: anything network or protocol specific.

use crate::types::{LeaderEpoch, Offset, TimestampMs};

pub mod builder;
pub mod compression;
pub mod records;

pub use builder::{BatchBuilder, BuildError, ProducerIdentity, SimpleRecord, build_batch};
pub use compression::CompressionError;
pub use records::{Header, Record, RecordDecoder, decode_batch};

/// Size of the fixed RecordBatch v2 header.
pub const HEADER_BYTES: usize = 61;
/// Bytes before the batch length field's coverage starts (base offset + length field).
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The only record batch format Sluice accepts.
pub const MAGIC_V2: i8 = 2;

const OFFSET_BASE_OFFSET: usize = 0;
const OFFSET_LENGTH: usize = 8;
const OFFSET_LEADER_EPOCH: usize = 12;
const OFFSET_MAGIC: usize = 16;
const OFFSET_CRC: usize = 17;
const OFFSET_ATTRIBUTES: usize = 21;
const OFFSET_LAST_OFFSET_DELTA: usize = 23;
const OFFSET_BASE_TIMESTAMP: usize = 27;
const OFFSET_MAX_TIMESTAMP: usize = 35;
const OFFSET_PRODUCER_ID: usize = 43;
const OFFSET_PRODUCER_EPOCH: usize = 51;
const OFFSET_BASE_SEQUENCE: usize = 53;
const OFFSET_RECORD_COUNT: usize = 57;

const _: () = assert!(OFFSET_RECORD_COUNT + 4 == HEADER_BYTES);
const _: () = assert!(OFFSET_LENGTH + 4 == LOG_OVERHEAD_BYTES);

/// Why a byte slice is not a valid record batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// Fewer bytes than a header, or than the header's declared length.
    #[error("truncated batch: need {needed} bytes, have {have}")]
    Truncated {
        /// Bytes the batch needs.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// The declared length is smaller than a header or larger than allowed.
    #[error("invalid batch length {length} (limit {limit})")]
    InvalidLength {
        /// The declared batch length field.
        length: i32,
        /// The largest total batch size allowed here.
        limit: usize,
    },
    /// A magic byte other than 2.
    #[error("unsupported record batch magic {0}")]
    UnsupportedMagic(i8),
    /// The stored CRC does not match the bytes.
    #[error("batch crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC carried by the batch.
        stored: u32,
        /// CRC computed over the batch.
        computed: u32,
    },
    /// Record count and offset delta are inconsistent or negative.
    #[error("invalid record count {record_count} with last offset delta {last_offset_delta}")]
    InvalidRecordCount {
        /// The record count field.
        record_count: i32,
        /// The last offset delta field.
        last_offset_delta: i32,
    },
    /// The offset after the batch (base offset plus last offset delta plus one) does not fit
    /// an offset.
    #[error(
        "base offset {base_offset} plus last offset delta {last_offset_delta} leaves no offset \
         after the batch"
    )]
    OffsetOverflow {
        /// The base offset field.
        base_offset: i64,
        /// The last offset delta field.
        last_offset_delta: i32,
    },
    /// A batch starts below `floor`: below 0, or inside the offsets of the batches before it
    /// (a log's offsets only ascend). The base offset lies outside the batch CRC, so only this
    /// check catches it changed.
    #[error("batch base offset {base_offset} is below {floor}: offsets only ascend through a log")]
    OffsetsGoBack {
        /// The base offset field.
        base_offset: i64,
        /// The lowest offset the batch may start at.
        floor: i64,
    },
    /// A batch of a log does not start where the log continues (`expected`): the first batch
    /// a read serves must hold the offset read from, and each later one start where the one
    /// before ended. Only a base offset changed on disk (it lies outside the batch CRC) does
    /// that.
    #[error("batch base offset {base_offset} where the log continues at offset {expected}")]
    UnexpectedBaseOffset {
        /// The base offset field.
        base_offset: i64,
        /// Where the log continues.
        expected: i64,
    },
    /// A batch's last offset is below `floor`, an offset it must hold (the fetch offset, for
    /// the first batch of a fetch answer).
    #[error("batch's last offset {last_offset} is below offset {floor}, which it must hold")]
    EndsBelow {
        /// The batch's last offset.
        last_offset: i64,
        /// The offset the batch must hold.
        floor: i64,
    },
    /// Compression codec bits name no known codec.
    #[error("unknown compression codec {0}")]
    UnknownCompression(u8),
    /// The records inside the batch could not be decoded.
    #[error("corrupt records: {0}")]
    CorruptRecords(String),
    /// The records could not be decompressed, or decompress past the limit.
    #[error(transparent)]
    Decompress(#[from] CompressionError),
}

/// Compression codec of a batch, from attribute bits 0-2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Compression {
    /// No compression.
    #[default]
    None = 0,
    /// gzip (RFC 1952).
    Gzip = 1,
    /// Snappy, xerial-framed as the Java client writes it (raw blocks are accepted too).
    Snappy = 2,
    /// LZ4 frame format.
    Lz4 = 3,
    /// Zstandard.
    Zstd = 4,
}

impl Compression {
    /// Decodes the codec from the low three attribute bits.
    pub fn from_bits(bits: u8) -> Result<Compression, BatchError> {
        match bits {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(BatchError::UnknownCompression(other)),
        }
    }

    /// Parses a codec name as used on command lines and in configs.
    pub fn from_name(name: &str) -> Option<Compression> {
        match name {
            "none" | "uncompressed" => Some(Compression::None),
            "gzip" => Some(Compression::Gzip),
            "snappy" => Some(Compression::Snappy),
            "lz4" => Some(Compression::Lz4),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// Batch attribute flags (the 16-bit attributes field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Attributes(pub i16);

impl Attributes {
    const COMPRESSION_MASK: i16 = 0x07;
    const TIMESTAMP_TYPE_LOG_APPEND: i16 = 0x08;
    const TRANSACTIONAL: i16 = 0x10;
    const CONTROL: i16 = 0x20;
    const DELETE_HORIZON: i16 = 0x40;

    /// The compression codec bits, validated.
    pub fn compression(self) -> Result<Compression, BatchError> {
        Compression::from_bits((self.0 & Self::COMPRESSION_MASK) as u8)
    }
    /// True when timestamps are the broker's log-append time rather than the producer's.
    pub fn is_log_append_time(self) -> bool {
        self.0 & Self::TIMESTAMP_TYPE_LOG_APPEND != 0
    }
    /// True for batches written inside a transaction.
    pub fn is_transactional(self) -> bool {
        self.0 & Self::TRANSACTIONAL != 0
    }
    /// True for control batches (transaction markers).
    pub fn is_control(self) -> bool {
        self.0 & Self::CONTROL != 0
    }
    /// True when the base timestamp carries a compaction delete horizon.
    pub fn has_delete_horizon(self) -> bool {
        self.0 & Self::DELETE_HORIZON != 0
    }
    /// Builds attributes from parts.
    pub fn new(compression: Compression, transactional: bool, control: bool) -> Attributes {
        let mut bits = compression as i16;
        if transactional {
            bits |= Self::TRANSACTIONAL;
        }
        if control {
            bits |= Self::CONTROL;
        }
        Attributes(bits)
    }
}

/// The decoded fixed header of one record batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: Offset,
    /// The length field: bytes after the length field itself.
    pub batch_length: i32,
    /// Leader epoch stamped by the broker that appended the batch.
    pub leader_epoch: LeaderEpoch,
    /// Always 2 once parsed.
    pub magic: i8,
    /// CRC-32C over the bytes from attributes to the end.
    pub crc: u32,
    /// Flags: codec, timestamp type, transactional, control.
    pub attributes: Attributes,
    /// Offset of the last record minus the base offset.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: TimestampMs,
    /// Largest timestamp in the batch.
    pub max_timestamp: TimestampMs,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Idempotent producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: i32,
    /// Number of records in the batch.
    pub record_count: i32,
}

fn read_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}
fn read_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(buf[at..at + 4].try_into().expect("slice of 4 bytes"))
}
fn read_i64(buf: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(buf[at..at + 8].try_into().expect("slice of 8 bytes"))
}

impl BatchHeader {
    /// Decodes the fixed header at the start of `buf` without checking the CRC or the
    /// records. Checks only that the header is present, the magic is 2, the declared length
    /// is at least a header and at most `max_batch_bytes` in total, the record count and last
    /// offset delta are not negative, and the offset after the batch exists.
    pub fn parse(buf: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_BYTES {
            return Err(BatchError::Truncated {
                needed: HEADER_BYTES,
                have: buf.len(),
            });
        }
        let batch_length = read_i32(buf, OFFSET_LENGTH);
        if total_of_length(batch_length, max_batch_bytes).is_none() {
            return Err(BatchError::InvalidLength {
                length: batch_length,
                limit: max_batch_bytes,
            });
        }
        let magic = buf[OFFSET_MAGIC] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        let header = BatchHeader {
            base_offset: Offset(read_i64(buf, OFFSET_BASE_OFFSET)),
            batch_length,
            leader_epoch: LeaderEpoch(read_i32(buf, OFFSET_LEADER_EPOCH)),
            magic,
            crc: read_i32(buf, OFFSET_CRC) as u32,
            attributes: Attributes(read_i16(buf, OFFSET_ATTRIBUTES)),
            last_offset_delta: read_i32(buf, OFFSET_LAST_OFFSET_DELTA),
            base_timestamp: TimestampMs(read_i64(buf, OFFSET_BASE_TIMESTAMP)),
            max_timestamp: TimestampMs(read_i64(buf, OFFSET_MAX_TIMESTAMP)),
            producer_id: read_i64(buf, OFFSET_PRODUCER_ID),
            producer_epoch: read_i16(buf, OFFSET_PRODUCER_EPOCH),
            base_sequence: read_i32(buf, OFFSET_BASE_SEQUENCE),
            record_count: read_i32(buf, OFFSET_RECORD_COUNT),
        };
        if header.last_offset_delta < 0 || header.record_count < 0 {
            return Err(BatchError::InvalidRecordCount {
                record_count: header.record_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        // `next_offset` must exist.
        if header
            .base_offset
            .0
            .checked_add(i64::from(header.last_offset_delta) + 1)
            .is_none()
        {
            return Err(BatchError::OffsetOverflow {
                base_offset: header.base_offset.0,
                last_offset_delta: header.last_offset_delta,
            });
        }
        header.attributes.compression()?;
        Ok(header)
    }

    /// Total bytes of the batch including the base offset and length fields.
    pub fn total_bytes(&self) -> usize {
        LOG_OVERHEAD_BYTES + self.batch_length as usize
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> Offset {
        self.base_offset.plus(i64::from(self.last_offset_delta))
    }

    /// Offset just past the batch.
    pub fn next_offset(&self) -> Offset {
        self.last_offset().plus(1)
    }
}

/// The total bytes of a batch whose length field says `batch_length`, if that length is at
/// least a header and the total at most `max_batch_bytes`.
fn total_of_length(batch_length: i32, max_batch_bytes: usize) -> Option<usize> {
    let min_length = (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32;
    let total = LOG_OVERHEAD_BYTES + usize::try_from(batch_length).ok()?;
    (batch_length >= min_length && total <= max_batch_bytes).then_some(total)
}

/// The total bytes a batch declares in its first [`LOG_OVERHEAD_BYTES`] (base offset and
/// length field), if [`BatchHeader::parse`] would accept that length; nothing else is checked.
/// For readers that frame batches before they hold them whole.
pub fn declared_total_bytes(
    prefix: &[u8; LOG_OVERHEAD_BYTES],
    max_batch_bytes: usize,
) -> Option<usize> {
    total_of_length(read_i32(prefix, OFFSET_LENGTH), max_batch_bytes)
}

/// The offset after the whole batches packed back to back at the start of `buf` (a fetch
/// answer, say), read from their headers alone, without checking CRCs: where a consumer's
/// next fetch starts while it still checks and decodes these. `None` if `buf` does not start
/// with a whole batch; the scan stops at a batch cut short or a header that does not parse,
/// which a full decode then reports.
pub fn next_offset_after_whole_batches(buf: &[u8], max_batch_bytes: usize) -> Option<Offset> {
    let mut next = None;
    let mut rest = buf;
    // Bounded by `buf`: each pass moves past one whole batch of at least a header.
    while let Ok(header) = BatchHeader::parse(rest, max_batch_bytes) {
        let Some(after) = rest.get(header.total_bytes()..) else {
            break;
        };
        next = Some(header.next_offset());
        rest = after;
    }
    next
}

/// Computes the CRC-32C a batch should carry (over attributes..end).
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[OFFSET_ATTRIBUTES..])
}

/// Parses the header and checks the whole batch: its length fits in `buf`, and its CRC matches.
///
/// `buf` may hold more bytes after the batch; the batch is `&buf[..header.total_bytes()]`.
pub fn validate(buf: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf, max_batch_bytes)?;
    let total = header.total_bytes();
    if buf.len() < total {
        return Err(BatchError::Truncated {
            needed: total,
            have: buf.len(),
        });
    }
    let computed = compute_crc(&buf[..total]);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(header)
}

/// Checks what the broker requires of a batch from a producer, on top of [`validate`]: at least
/// one record and a last offset delta equal to the record count minus one, so that offsets
/// assigned from the base are dense; and, when the records are not compressed, exactly that
/// many records ([`records::check_record_framing`]). Compressed records are not opened: the
/// broker never decompresses (Kafka does, to validate each record).
pub fn validate_produced(buf: &[u8], max_batch_bytes: usize) -> Result<BatchHeader, BatchError> {
    let header = validate(buf, max_batch_bytes)?;
    if header.record_count < 1 || header.last_offset_delta != header.record_count - 1 {
        return Err(BatchError::InvalidRecordCount {
            record_count: header.record_count,
            last_offset_delta: header.last_offset_delta,
        });
    }
    if header.attributes.compression()? == Compression::None {
        let records = &buf[HEADER_BYTES..header.total_bytes()];
        records::check_record_framing(records, header.record_count)?;
    }
    Ok(header)
}

/// Rewrites the base offset of the batch at the start of `buf`. The CRC does not cover it.
pub fn set_base_offset(buf: &mut [u8], base_offset: Offset) {
    assert!(
        buf.len() >= HEADER_BYTES,
        "set_base_offset on a slice shorter than a header"
    );
    assert!(base_offset.0 >= 0, "negative base offset {base_offset}");
    buf[OFFSET_BASE_OFFSET..OFFSET_BASE_OFFSET + 8].copy_from_slice(&base_offset.0.to_be_bytes());
}

/// Rewrites the partition leader epoch of the batch at the start of `buf`. The CRC does not
/// cover it.
pub fn set_leader_epoch(buf: &mut [u8], epoch: LeaderEpoch) {
    assert!(
        buf.len() >= HEADER_BYTES,
        "set_leader_epoch on a slice shorter than a header"
    );
    buf[OFFSET_LEADER_EPOCH..OFFSET_LEADER_EPOCH + 4].copy_from_slice(&epoch.0.to_be_bytes());
}

/// Iterates over the validated batches packed back to back in `buf`, as in a produce request's
/// record set or a fetch response. Stops with an error at the first invalid batch.
pub fn iter_batches(buf: &[u8], max_batch_bytes: usize) -> BatchIter<'_> {
    BatchIter {
        buf,
        max_batch_bytes,
    }
}

/// Iterator returned by [`iter_batches`]: yields `(header, batch bytes)`.
#[derive(Debug)]
pub struct BatchIter<'a> {
    buf: &'a [u8],
    max_batch_bytes: usize,
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<(BatchHeader, &'a [u8]), BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        match validate(self.buf, self.max_batch_bytes) {
            Ok(header) => {
                let (batch, rest) = self.buf.split_at(header.total_bytes());
                self.buf = rest;
                Some(Ok((header, batch)))
            }
            Err(error) => {
                self.buf = &[];
                Some(Err(error))
            }
        }
    }
}
