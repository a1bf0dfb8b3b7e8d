//! Building RecordBatch v2 batches: the producer side of the batch format.
//!
//! [`BatchBuilder`] appends records into one buffer that already reserves the 61-byte header,
//! so building an uncompressed batch only fills in the header and computes the CRC: no copy of
//! the records. A compressed build compresses the records once into a second buffer.
//! [`build_batch`] is a one-call helper over [`SimpleRecord`]s for tests and tools.
//!
//! Cost on the producer hot path: per record, one size computation over its fields and one
//! append into the buffer (amortised growth, no per-record allocation). Per batch, one CRC-32C
//! pass over the records (hardware accelerated: ~10+ GB/s, so ~6 us for 64 KiB).
//!
//! A `BatchBuilder` is plain data: `Send`, owned by whichever task fills it.
//!
//! Must not depend on: anything network or protocol specific.

use bytes::Bytes;

use super::compression::{self, CompressionError};
use super::records::{RecordParts, encode_record, varint_bytes};
use super::{
    Attributes, Compression, HEADER_BYTES, LOG_OVERHEAD_BYTES, MAGIC_V2, OFFSET_ATTRIBUTES,
    OFFSET_BASE_OFFSET, OFFSET_BASE_SEQUENCE, OFFSET_BASE_TIMESTAMP, OFFSET_CRC,
    OFFSET_LAST_OFFSET_DELTA, OFFSET_LEADER_EPOCH, OFFSET_LENGTH, OFFSET_MAGIC,
    OFFSET_MAX_TIMESTAMP, OFFSET_PRODUCER_EPOCH, OFFSET_PRODUCER_ID, OFFSET_RECORD_COUNT,
};
use crate::limits::BATCH_BYTES_MAX;
use crate::types::{LeaderEpoch, Offset, TimestampMs};

/// Why a batch could not be built. The builder is unchanged after a failed `push`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Appending the record, or the built batch, would exceed the builder's size limit.
    #[error("batch full: {needed_bytes} bytes needed, limit {limit_bytes}")]
    BatchFull {
        /// Size the batch would have had, header included.
        needed_bytes: usize,
        /// The builder's `batch_bytes_max`.
        limit_bytes: usize,
    },
    /// A field is longer than a Record v2 length (i32) can say.
    #[error("record field too long for a record v2 length")]
    FieldTooLong,
    /// `build` was called on a builder holding no record.
    #[error("cannot build a batch with no records")]
    Empty,
    /// The records could not be compressed.
    #[error(transparent)]
    Compress(#[from] CompressionError),
}

/// Idempotent-producer identity stamped into a batch header. `-1` everywhere means none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerIdentity {
    /// Producer id, or -1.
    pub producer_id: i64,
    /// Producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence number of the batch's first record, or -1.
    pub base_sequence: i32,
}

impl ProducerIdentity {
    /// No idempotent producer: all fields -1, as non-idempotent producers write.
    pub const NONE: ProducerIdentity = ProducerIdentity {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

impl Default for ProducerIdentity {
    fn default() -> Self {
        ProducerIdentity::NONE
    }
}

/// Accumulates records and builds one RecordBatch v2.
///
/// ```
/// use sluice_engine::batch::{BatchBuilder, Compression, validate};
/// use sluice_engine::TimestampMs;
///
/// let mut builder = BatchBuilder::new(1 << 20);
/// builder.push(Some(b"k"), Some(b"v"), &[("h", None)], TimestampMs(1_700_000_000_000))?;
/// let batch = builder.build(Compression::None)?;
/// let header = validate(&batch, 1 << 20)?;
/// assert_eq!(header.record_count, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    /// Invariant: `buf[..HEADER_BYTES]` is header space (filled in by `build`), followed by
    /// exactly `record_count` encoded records with offset deltas `0..record_count`.
    buf: Vec<u8>,
    /// Invariant: `HEADER_BYTES <= batch_bytes_max <= i32::MAX`, and `buf.len()` never
    /// exceeds it.
    batch_bytes_max: usize,
    /// Invariant: `record_count >= 0`, and it equals the records in `buf`.
    record_count: i32,
    /// Timestamp of the first record; meaningful once `record_count > 0`.
    base_timestamp: TimestampMs,
    /// Largest record timestamp so far; meaningful once `record_count > 0`.
    max_timestamp: TimestampMs,
    producer: ProducerIdentity,
    base_offset: Offset,
    leader_epoch: LeaderEpoch,
    transactional: bool,
    control: bool,
}

impl BatchBuilder {
    /// A builder whose batches never exceed `batch_bytes_max` bytes, header included.
    ///
    /// Panics if `batch_bytes_max` is below a header or above `i32::MAX` (a programmer error:
    /// limits come from `limits.rs` or validated config).
    pub fn new(batch_bytes_max: usize) -> BatchBuilder {
        BatchBuilder::with_capacity(batch_bytes_max, 0)
    }

    /// As [`new`](Self::new), reserving room for `capacity_bytes` of records up front so that
    /// filling the batch does not reallocate.
    pub fn with_capacity(batch_bytes_max: usize, capacity_bytes: usize) -> BatchBuilder {
        assert!(
            batch_bytes_max >= HEADER_BYTES,
            "batch_bytes_max {batch_bytes_max} < header"
        );
        assert!(
            i32::try_from(batch_bytes_max).is_ok(),
            "batch_bytes_max {batch_bytes_max} does not fit a batch length"
        );
        let mut buf = Vec::with_capacity(HEADER_BYTES + capacity_bytes.min(batch_bytes_max));
        buf.resize(HEADER_BYTES, 0);
        BatchBuilder {
            buf,
            batch_bytes_max,
            record_count: 0,
            base_timestamp: TimestampMs(-1),
            max_timestamp: TimestampMs(-1),
            producer: ProducerIdentity::NONE,
            base_offset: Offset(0),
            leader_epoch: LeaderEpoch(-1),
            transactional: false,
            control: false,
        }
    }

    /// Sets the idempotent producer id, epoch and base sequence (default: all -1).
    pub fn set_producer(&mut self, producer: ProducerIdentity) -> &mut Self {
        self.producer = producer;
        self
    }

    /// Marks the batch as written inside a transaction.
    pub fn mark_transactional(&mut self) -> &mut Self {
        self.transactional = true;
        self
    }

    /// Marks the batch as a control batch (its records are transaction markers).
    pub fn mark_control(&mut self) -> &mut Self {
        self.control = true;
        self
    }

    /// Sets the base offset written into the header (default 0; brokers rewrite it).
    pub fn set_base_offset(&mut self, base_offset: Offset) -> &mut Self {
        assert!(base_offset.0 >= 0, "negative base offset {base_offset}");
        self.base_offset = base_offset;
        self
    }

    /// Sets the partition leader epoch written into the header (default -1).
    pub fn set_leader_epoch(&mut self, leader_epoch: LeaderEpoch) -> &mut Self {
        self.leader_epoch = leader_epoch;
        self
    }

    /// Records pushed so far.
    pub fn record_count(&self) -> i32 {
        self.record_count
    }

    /// True when no record has been pushed.
    pub fn is_empty(&self) -> bool {
        self.record_count == 0
    }

    /// Size an uncompressed build would have now, header included.
    pub fn uncompressed_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Appends one record with the next offset delta.
    ///
    /// Fails with [`BuildError::BatchFull`] when the uncompressed batch would exceed the
    /// builder's limit; the builder is then unchanged, so the caller can build what it has and
    /// push the record into a fresh builder.
    pub fn push(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
        timestamp: TimestampMs,
    ) -> Result<(), BuildError> {
        assert!(
            self.record_count >= 0,
            "negative record count {}",
            self.record_count
        );
        assert!(
            self.buf.len() <= self.batch_bytes_max,
            "builder over its limit"
        );
        let base_timestamp = if self.record_count == 0 {
            timestamp
        } else {
            self.base_timestamp
        };
        let parts = RecordParts {
            offset_delta: self.record_count,
            // Wrapping, as Kafka computes it: decoders add it back with wrapping arithmetic.
            timestamp_delta: timestamp.0.wrapping_sub(base_timestamp.0),
            key,
            value,
            headers,
        };
        let body_bytes = parts.body_bytes().ok_or(BuildError::FieldTooLong)?;
        let body_length = i32::try_from(body_bytes).expect("body_bytes checked against i32");
        let record_bytes = body_bytes + varint_bytes(body_length);
        let needed_bytes = self.buf.len().saturating_add(record_bytes);
        if needed_bytes > self.batch_bytes_max {
            return Err(BuildError::BatchFull {
                needed_bytes,
                limit_bytes: self.batch_bytes_max,
            });
        }
        let written = encode_record(&mut self.buf, &parts, body_bytes);
        assert_eq!(
            written, record_bytes,
            "record size estimate differs from encoding"
        );
        if self.record_count == 0 {
            self.base_timestamp = timestamp;
            self.max_timestamp = timestamp;
        } else {
            self.max_timestamp = self.max_timestamp.max(timestamp);
        }
        // Cannot overflow: every record takes at least 7 bytes and the batch fits in i32.
        self.record_count += 1;
        Ok(())
    }

    /// Builds the batch with the records compressed by `compression`.
    ///
    /// Fails with [`BuildError::Empty`] when no record was pushed, and with
    /// [`BuildError::BatchFull`] when a compressed batch comes out larger than the limit
    /// (incompressible data grows slightly).
    pub fn build(mut self, compression: Compression) -> Result<Bytes, BuildError> {
        if self.record_count == 0 {
            return Err(BuildError::Empty);
        }
        let mut out = match compression {
            Compression::None => {
                let mut buf = std::mem::take(&mut self.buf);
                self.write_header_fields(&mut buf[..HEADER_BYTES], compression);
                buf
            }
            codec => {
                let records = &self.buf[HEADER_BYTES..];
                // One allocation per compressed batch; codecs shrink records, typically 2-5x.
                let mut out = Vec::with_capacity(HEADER_BYTES + records.len() / 2);
                out.resize(HEADER_BYTES, 0);
                compression::compress(codec, records, &mut out)?;
                self.write_header_fields(&mut out[..HEADER_BYTES], codec);
                out
            }
        };
        if out.len() > self.batch_bytes_max {
            return Err(BuildError::BatchFull {
                needed_bytes: out.len(),
                limit_bytes: self.batch_bytes_max,
            });
        }
        let batch_length =
            i32::try_from(out.len() - LOG_OVERHEAD_BYTES).expect("batch size checked against i32");
        out[OFFSET_LENGTH..OFFSET_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
        let crc = super::compute_crc(&out);
        out[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(Bytes::from(out))
    }

    /// Fills every header field except the length and the CRC, which depend on the final size.
    fn write_header_fields(&self, header: &mut [u8], compression: Compression) {
        assert_eq!(header.len(), HEADER_BYTES, "header slice of the wrong size");
        assert!(self.record_count > 0, "header of an empty batch");
        let attributes = Attributes::new(compression, self.transactional, self.control);
        let mut put = |at: usize, bytes: &[u8]| header[at..at + bytes.len()].copy_from_slice(bytes);
        put(OFFSET_BASE_OFFSET, &self.base_offset.0.to_be_bytes());
        put(OFFSET_LEADER_EPOCH, &self.leader_epoch.0.to_be_bytes());
        put(OFFSET_MAGIC, &MAGIC_V2.to_be_bytes());
        put(OFFSET_ATTRIBUTES, &attributes.0.to_be_bytes());
        put(
            OFFSET_LAST_OFFSET_DELTA,
            &(self.record_count - 1).to_be_bytes(),
        );
        put(OFFSET_BASE_TIMESTAMP, &self.base_timestamp.0.to_be_bytes());
        put(OFFSET_MAX_TIMESTAMP, &self.max_timestamp.0.to_be_bytes());
        put(OFFSET_PRODUCER_ID, &self.producer.producer_id.to_be_bytes());
        put(
            OFFSET_PRODUCER_EPOCH,
            &self.producer.producer_epoch.to_be_bytes(),
        );
        put(
            OFFSET_BASE_SEQUENCE,
            &self.producer.base_sequence.to_be_bytes(),
        );
        put(OFFSET_RECORD_COUNT, &self.record_count.to_be_bytes());
    }
}

/// An owned record for [`build_batch`]: convenient in tests and tools, not on hot paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimpleRecord {
    /// Record key, `None` for null.
    pub key: Option<Vec<u8>>,
    /// Record value, `None` for null (a tombstone).
    pub value: Option<Vec<u8>>,
    /// Headers: UTF-8 key and optional value.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Record timestamp (create time).
    pub timestamp: TimestampMs,
}

impl SimpleRecord {
    /// A record with only a value, timestamp 0.
    pub fn value(value: impl Into<Vec<u8>>) -> SimpleRecord {
        SimpleRecord {
            value: Some(value.into()),
            ..SimpleRecord::default()
        }
    }
}

/// Builds one batch (base offset 0, no producer id) holding `records`, limited to
/// [`BATCH_BYTES_MAX`].
pub fn build_batch(
    records: &[SimpleRecord],
    compression: Compression,
) -> Result<Bytes, BuildError> {
    let mut builder = BatchBuilder::new(BATCH_BYTES_MAX);
    let mut headers: Vec<(&str, Option<&[u8]>)> = Vec::new();
    for record in records {
        headers.clear();
        headers.extend(
            record
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref())),
        );
        builder.push(
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
            record.timestamp,
        )?;
    }
    builder.build(compression)
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;
    use crate::batch::{validate, validate_produced};

    fn hex(bytes: &[u8]) -> String {
        let lines: Vec<String> = bytes
            .chunks(16)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        lines.join("\n")
    }

    fn check(records: &[SimpleRecord], expect: Expect) {
        let batch = build_batch(records, Compression::None).expect("build");
        validate_produced(&batch, BATCH_BYTES_MAX).expect("built batch validates");
        expect.assert_eq(&hex(&batch));
    }

    // Goal: the byte layout of a built batch is exactly RecordBatch v2.
    // Method: snapshot the bytes of a small batch; the fields were checked by hand against the
    // layout table in batch/mod.rs: length 0x46 = 82 - 12, magic 2, count 2, record lengths
    // 0x1a and 0x0c (zigzag 13 and 6), timestamp delta -1 as zigzag 0x01, nulls as 0x01.
    #[test]
    fn layout_of_two_records() {
        let records = [
            SimpleRecord {
                key: Some(b"k".to_vec()),
                value: Some(b"v1".to_vec()),
                headers: vec![("h".into(), Some(b"x".to_vec()))],
                timestamp: TimestampMs(1000),
            },
            SimpleRecord {
                key: None,
                value: None,
                headers: vec![],
                timestamp: TimestampMs(999),
            },
        ];
        check(
            &records,
            expect![[r#"
                00 00 00 00 00 00 00 00 00 00 00 46 ff ff ff ff
                02 ed 19 09 0d 00 00 00 00 00 01 00 00 00 00 00
                00 03 e8 00 00 00 00 00 00 03 e8 ff ff ff ff ff
                ff ff ff ff ff ff ff ff ff 00 00 00 02 1a 00 00
                00 02 6b 04 76 31 02 02 68 02 78 0c 00 01 02 01
                01 00"#]],
        );
    }

    // Goal: header fields follow the builder's settings.
    // Method: build with producer identity, flags, base offset and epoch set; parse it back.
    #[test]
    fn header_fields_follow_settings() {
        let mut builder = BatchBuilder::new(1 << 16);
        builder
            .set_producer(ProducerIdentity {
                producer_id: 7,
                producer_epoch: 3,
                base_sequence: 42,
            })
            .mark_transactional()
            .set_base_offset(Offset(100))
            .set_leader_epoch(LeaderEpoch(5));
        for ts in [50, 70, 60] {
            builder
                .push(None, Some(b"v"), &[], TimestampMs(ts))
                .expect("push");
        }
        let batch = builder.build(Compression::None).expect("build");
        let header = validate(&batch, 1 << 16).expect("valid");
        assert_eq!(header.base_offset, Offset(100));
        assert_eq!(header.leader_epoch, LeaderEpoch(5));
        assert_eq!(header.producer_id, 7);
        assert_eq!(header.producer_epoch, 3);
        assert_eq!(header.base_sequence, 42);
        assert!(header.attributes.is_transactional());
        assert!(!header.attributes.is_control());
        assert_eq!(header.record_count, 3);
        assert_eq!(header.last_offset_delta, 2);
        assert_eq!(header.base_timestamp, TimestampMs(50));
        assert_eq!(header.max_timestamp, TimestampMs(70));
        assert_eq!(header.total_bytes(), batch.len());
    }

    // Goal: the size limit is enforced with a typed error and leaves the builder usable.
    // Method: fill a small builder until push fails; the failed record is not in the batch.
    #[test]
    fn limit_rejects_without_changing_the_builder() {
        let limit = 200;
        let mut builder = BatchBuilder::new(limit);
        let value = [0xab_u8; 40];
        let mut pushed = 0;
        let error = loop {
            match builder.push(None, Some(&value), &[], TimestampMs(0)) {
                Ok(()) => pushed += 1,
                Err(error) => break error,
            }
        };
        assert!(
            matches!(
                error,
                BuildError::BatchFull {
                    limit_bytes: 200,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(builder.record_count(), pushed);
        assert!(builder.uncompressed_bytes() <= limit);
        let batch = builder.build(Compression::None).expect("build");
        let header = validate_produced(&batch, limit).expect("valid");
        assert_eq!(header.record_count, pushed);
        assert!(batch.len() <= limit);
    }

    // Goal: a compressed build carries the codec bits and compresses exactly the records of
    // the uncompressed build, with the same header fields otherwise.
    // Method: build the same records both ways per codec and compare header and records.
    #[test]
    fn compressed_build_wraps_the_same_records() {
        let records: Vec<SimpleRecord> = (0..50)
            .map(|i| SimpleRecord {
                key: Some(format!("key-{i}").into_bytes()),
                value: Some(vec![b'x'; 100 + i]),
                headers: vec![("trace".into(), Some(vec![i as u8]))],
                timestamp: TimestampMs(1_000 + i as i64),
            })
            .collect();
        let plain = build_batch(&records, Compression::None).expect("build");
        let plain_header = validate_produced(&plain, BATCH_BYTES_MAX).expect("valid");
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let batch = build_batch(&records, codec).expect("build");
            let header = validate_produced(&batch, BATCH_BYTES_MAX).expect("valid");
            assert_eq!(header.attributes.compression(), Ok(codec));
            assert!(
                batch.len() < plain.len(),
                "{codec:?} compresses repetitive records"
            );
            assert_eq!(header.record_count, plain_header.record_count);
            assert_eq!(header.max_timestamp, plain_header.max_timestamp);
            let mut records_out = Vec::new();
            compression::decompress(codec, &batch[HEADER_BYTES..], 1 << 20, &mut records_out)
                .expect("decompress");
            assert!(
                records_out[..] == plain[HEADER_BYTES..],
                "{codec:?} records differ"
            );
        }
    }

    // Goal: building an empty batch is a typed error, not a malformed batch.
    // Method: build without pushing.
    #[test]
    fn empty_build_is_an_error() {
        let builder = BatchBuilder::new(1024);
        assert_eq!(builder.build(Compression::None), Err(BuildError::Empty));
    }
}
