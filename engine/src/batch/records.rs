//! Record v2: the records inside a RecordBatch v2, and the zigzag varints they are framed with.
//!
//! A record is a zigzag varint length followed by that many bytes:
//!
//! | field | type |
//! |---|---|
//! | attributes (unused, 0) | i8 |
//! | timestamp delta (from the batch base timestamp) | varlong |
//! | offset delta (from the batch base offset) | varint |
//! | key length (-1 for null) | varint |
//! | key | bytes |
//! | value length (-1 for null) | varint |
//! | value | bytes |
//! | header count | varint |
//! | per header: key length, key (UTF-8), value length (-1 for null), value | |
//!
//! Main items: [`encode_record`] (used by the batch builder), [`RecordDecoder`] and
//! [`decode_batch`] (iterate the [`Record`]s of a validated batch), the varint helpers.
//!
//! Decoding never trusts a length from the input: every length is checked against the bytes
//! that remain before it is used, nothing is allocated from a declared count (header vectors
//! are capped by the bytes left), and every failure is a [`BatchError::CorruptRecords`] or a
//! [`BatchError::Decompress`], never a panic. Uncompressed records are zero-copy [`Bytes`]
//! slices of the batch; compressed ones are slices of one decompressed buffer per batch.
//!
//! Must not depend on: anything network or protocol specific.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;

use super::compression::decompress;
use super::{BatchError, BatchHeader, Compression, HEADER_BYTES, validate};
use crate::limits::RECORDS_DECOMPRESSED_BYTES_MAX;
use crate::types::{Offset, TimestampMs};

/// Largest encoding of a zigzag varint (i32) in bytes.
pub const VARINT_BYTES_MAX: usize = 5;
/// Largest encoding of a zigzag varlong (i64) in bytes.
pub const VARLONG_BYTES_MAX: usize = 10;

/// Zigzag-maps an i32 so that small magnitudes of either sign encode short.
fn zigzag32(n: i32) -> u32 {
    ((n << 1) ^ (n >> 31)) as u32
}

/// Zigzag-maps an i64 so that small magnitudes of either sign encode short.
fn zigzag64(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

/// Bytes of an unsigned LEB128 encoding of `n`.
fn unsigned_varint_bytes(n: u64) -> usize {
    // One byte per started group of 7 bits; zero still takes one byte.
    let bits = 64 - (n | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Bytes of the zigzag varint encoding of `n`.
pub fn varint_bytes(n: i32) -> usize {
    unsigned_varint_bytes(u64::from(zigzag32(n)))
}

/// Bytes of the zigzag varlong encoding of `n`.
pub fn varlong_bytes(n: i64) -> usize {
    unsigned_varint_bytes(zigzag64(n))
}

fn put_unsigned_varint(buf: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        buf.push((n as u8) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

/// Appends the zigzag varint encoding of `n`.
pub fn put_varint(buf: &mut Vec<u8>, n: i32) {
    put_unsigned_varint(buf, u64::from(zigzag32(n)));
}

/// Appends the zigzag varlong encoding of `n`.
pub fn put_varlong(buf: &mut Vec<u8>, n: i64) {
    put_unsigned_varint(buf, zigzag64(n));
}

/// Length field value for an optional byte string: -1 for null.
fn nullable_length(bytes: Option<&[u8]>) -> i32 {
    match bytes {
        None => -1,
        Some(bytes) => i32::try_from(bytes.len()).expect("field length checked against i32"),
    }
}

/// Bytes of a length-prefixed optional byte string.
fn nullable_field_bytes(bytes: Option<&[u8]>) -> usize {
    let length = nullable_length(bytes);
    varint_bytes(length) + bytes.map_or(0, <[u8]>::len)
}

/// The parts of one record to encode; deltas are relative to the batch's base offset and base
/// timestamp.
#[derive(Clone, Copy, Debug)]
pub struct RecordParts<'a> {
    /// Offset of this record minus the batch base offset.
    pub offset_delta: i32,
    /// Timestamp of this record minus the batch base timestamp (wrapping, as Kafka does).
    pub timestamp_delta: i64,
    /// Record key, `None` for a null key.
    pub key: Option<&'a [u8]>,
    /// Record value, `None` for a null value (a tombstone).
    pub value: Option<&'a [u8]>,
    /// Record headers: UTF-8 key and optional value.
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
}

impl RecordParts<'_> {
    /// Bytes of the record body, that is everything after its length varint.
    ///
    /// Returns `None` when a field or the body is longer than an i32 length can say.
    pub fn body_bytes(&self) -> Option<usize> {
        let fits = |bytes: Option<&[u8]>| bytes.is_none_or(|b| i32::try_from(b.len()).is_ok());
        if !fits(self.key) || !fits(self.value) {
            return None;
        }
        let header_count = i32::try_from(self.headers.len()).ok()?;
        let mut total = 1 // attributes
            + varlong_bytes(self.timestamp_delta)
            + varint_bytes(self.offset_delta)
            + nullable_field_bytes(self.key)
            + nullable_field_bytes(self.value)
            + varint_bytes(header_count);
        for (key, value) in self.headers {
            if !fits(Some(key.as_bytes())) || !fits(*value) {
                return None;
            }
            total = total
                .checked_add(nullable_field_bytes(Some(key.as_bytes())))?
                .checked_add(nullable_field_bytes(*value))?;
        }
        i32::try_from(total).ok()?;
        Some(total)
    }

    /// Bytes of the whole record, length varint included, or `None` as for
    /// [`body_bytes`](Self::body_bytes).
    pub fn encoded_bytes(&self) -> Option<usize> {
        let body = self.body_bytes()?;
        let length = i32::try_from(body).expect("body_bytes checked against i32");
        body.checked_add(varint_bytes(length))
    }
}

fn put_nullable(buf: &mut Vec<u8>, bytes: Option<&[u8]>) {
    put_varint(buf, nullable_length(bytes));
    if let Some(bytes) = bytes {
        buf.extend_from_slice(bytes);
    }
}

/// Appends one encoded record (length varint, then body) to `buf` and returns its size.
///
/// `body_bytes` must be `parts.body_bytes()`; the caller has it already because it checks the
/// size against its limit before encoding. Does not allocate beyond growing `buf`.
pub fn encode_record(buf: &mut Vec<u8>, parts: &RecordParts<'_>, body_bytes: usize) -> usize {
    let start = buf.len();
    let length = i32::try_from(body_bytes).expect("body_bytes checked against i32");
    put_varint(buf, length);
    let body_start = buf.len();
    buf.push(0); // attributes: unused in v2
    put_varlong(buf, parts.timestamp_delta);
    put_varint(buf, parts.offset_delta);
    put_nullable(buf, parts.key);
    put_nullable(buf, parts.value);
    let header_count = i32::try_from(parts.headers.len()).expect("header count checked");
    put_varint(buf, header_count);
    for (key, value) in parts.headers {
        put_nullable(buf, Some(key.as_bytes()));
        put_nullable(buf, *value);
    }
    assert_eq!(
        buf.len() - body_start,
        body_bytes,
        "record body size mismatch"
    );
    buf.len() - start
}

/// Smallest possible encoded record: length, attributes, timestamp delta, offset delta, key
/// length, value length and header count, one byte each.
pub const RECORD_BYTES_MIN: usize = 7;
/// Smallest possible encoded header: key length and value length, one byte each.
const HEADER_RECORD_BYTES_MIN: usize = 2;

/// One record header as decoded: the key is UTF-8 by contract but not checked here, since the
/// broker passes headers through untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Header key bytes (UTF-8 when written by a conforming client).
    pub key: Bytes,
    /// Header value, `None` for null.
    pub value: Option<Bytes>,
}

impl Header {
    /// The key as a string, if it is valid UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.key).ok()
    }
}

/// One decoded record with its absolute offset and timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Base offset of the batch plus the record's offset delta.
    pub offset: Offset,
    /// Create time (base timestamp plus delta), or the batch's max timestamp when the batch
    /// uses log-append time.
    pub timestamp: TimestampMs,
    /// Record key, `None` for null.
    pub key: Option<Bytes>,
    /// Record value, `None` for null (a tombstone).
    pub value: Option<Bytes>,
    /// Record headers in order.
    pub headers: Vec<Header>,
}

/// What was wrong with one record; becomes [`BatchError::CorruptRecords`] with its position.
#[derive(Debug)]
enum RecordFault {
    Truncated {
        field: &'static str,
        needed: usize,
        remaining: usize,
    },
    VarintTooLong {
        field: &'static str,
    },
    InvalidLength {
        field: &'static str,
        length: i64,
    },
    OffsetDelta {
        delta: i32,
        previous: Option<i32>,
        last: i32,
    },
    BodySize {
        declared: usize,
        consumed: usize,
    },
}

impl fmt::Display for RecordFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordFault::Truncated {
                field,
                needed,
                remaining,
            } => {
                write!(f, "{field} needs {needed} bytes, {remaining} remain")
            }
            RecordFault::VarintTooLong { field } => write!(f, "{field} varint too long"),
            RecordFault::InvalidLength { field, length } => {
                write!(f, "invalid {field} {length}")
            }
            RecordFault::OffsetDelta {
                delta,
                previous: Some(previous),
                last,
            } => {
                write!(f, "offset delta {delta} after {previous} not in 0..={last}")
            }
            RecordFault::OffsetDelta {
                delta,
                previous: None,
                last,
            } => {
                write!(f, "offset delta {delta} not in 0..={last}")
            }
            RecordFault::BodySize { declared, consumed } => {
                write!(
                    f,
                    "record declared {declared} bytes, fields take {consumed}"
                )
            }
        }
    }
}

/// A read position over a byte slice whose every read is bounds-checked.
struct Cursor<'a> {
    buf: &'a [u8],
    /// Invariant: `pos <= buf.len()`.
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, RecordFault> {
        let byte = *self.buf.get(self.pos).ok_or(RecordFault::Truncated {
            field,
            needed: 1,
            remaining: 0,
        })?;
        self.pos += 1;
        Ok(byte)
    }

    /// Reads an unsigned LEB128 value of at most `bytes_max` bytes and `bits` significant bits.
    fn unsigned_varint(
        &mut self,
        field: &'static str,
        bytes_max: usize,
        bits: u32,
    ) -> Result<u64, RecordFault> {
        let mut value: u64 = 0;
        for i in 0..bytes_max {
            let byte = self.u8(field)?;
            let shift = 7 * i as u32;
            let payload = u64::from(byte & 0x7f);
            // The last byte may only carry the bits that are left.
            if shift + 7 > bits && payload >> (bits - shift) != 0 {
                return Err(RecordFault::VarintTooLong { field });
            }
            value |= payload << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(RecordFault::VarintTooLong { field })
    }

    fn varint(&mut self, field: &'static str) -> Result<i32, RecordFault> {
        let raw = self.unsigned_varint(field, VARINT_BYTES_MAX, 32)?;
        let raw = u32::try_from(raw).expect("at most 32 bits were read");
        Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
    }

    fn varlong(&mut self, field: &'static str) -> Result<i64, RecordFault> {
        let raw = self.unsigned_varint(field, VARLONG_BYTES_MAX, 64)?;
        Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    /// Takes `length` bytes and returns their range within the cursor's slice.
    fn take(&mut self, field: &'static str, length: usize) -> Result<Range<usize>, RecordFault> {
        if length > self.remaining() {
            return Err(RecordFault::Truncated {
                field,
                needed: length,
                remaining: self.remaining(),
            });
        }
        let range = self.pos..self.pos + length;
        self.pos += length;
        Ok(range)
    }

    /// Reads a varint length that must be in `0..=remaining`, or -1 when `nullable`.
    fn length(
        &mut self,
        field: &'static str,
        nullable: bool,
    ) -> Result<Option<usize>, RecordFault> {
        let length = self.varint(field)?;
        if length == -1 && nullable {
            return Ok(None);
        }
        let length = usize::try_from(length).map_err(|_| RecordFault::InvalidLength {
            field,
            length: i64::from(length),
        })?;
        if length > self.remaining() {
            return Err(RecordFault::Truncated {
                field,
                needed: length,
                remaining: self.remaining(),
            });
        }
        Ok(Some(length))
    }
}

/// Iterates the records of one validated batch.
///
/// Yields exactly `record_count` records, then checks that no bytes are left over; after the
/// first error it yields nothing more. Owned by the task decoding; `Send`.
#[derive(Debug)]
pub struct RecordDecoder {
    header: BatchHeader,
    /// The (decompressed) records region.
    records: Bytes,
    /// Invariant: `pos <= records.len()`.
    pos: usize,
    /// Invariant: `0 <= yielded <= header.record_count`.
    yielded: i32,
    previous_delta: Option<i32>,
    done: bool,
}

/// Checks that uncompressed `records` (a batch's bytes after its header) hold exactly
/// `record_count` length-prefixed records and nothing after them, reading only the lengths (a
/// varint per record). What Kafka refuses as "incorrect declared batch size": a batch whose
/// header counts fewer records than it holds would get fewer offsets than its records use.
pub fn check_record_framing(records: &[u8], record_count: i32) -> Result<(), BatchError> {
    let fault = |index: i32, fault: RecordFault| {
        BatchError::CorruptRecords(format!("record {index} of {record_count}: {fault}"))
    };
    let mut cursor = Cursor::new(records);
    for index in 0..record_count {
        let length = cursor
            .varint("record length")
            .map_err(|e| fault(index, e))?;
        let length = usize::try_from(length).map_err(|_| {
            fault(
                index,
                RecordFault::InvalidLength {
                    field: "record length",
                    length: i64::from(length),
                },
            )
        })?;
        cursor.take("record", length).map_err(|e| fault(index, e))?;
    }
    if cursor.remaining() > 0 {
        return Err(BatchError::CorruptRecords(format!(
            "{} bytes after the {record_count} records the header counts",
            cursor.remaining()
        )));
    }
    Ok(())
}

/// Validates the batch at the start of `batch` (CRC and framing) and returns a decoder over
/// its records, decompressing them up to [`RECORDS_DECOMPRESSED_BYTES_MAX`].
pub fn decode_batch(batch: &Bytes, max_batch_bytes: usize) -> Result<RecordDecoder, BatchError> {
    let header = validate(batch, max_batch_bytes)?;
    RecordDecoder::new(header, batch, RECORDS_DECOMPRESSED_BYTES_MAX)
}

impl RecordDecoder {
    /// A decoder over `batch`, whose header `header` was returned by [`validate`] for these
    /// bytes. Compressed records are decompressed now, at most `decompressed_bytes_max`.
    ///
    /// Panics if `batch` is shorter than `header.total_bytes()` (the pair did not come from
    /// one `validate` call: a programmer error).
    pub fn new(
        header: BatchHeader,
        batch: &Bytes,
        decompressed_bytes_max: usize,
    ) -> Result<RecordDecoder, BatchError> {
        let total = header.total_bytes();
        assert!(
            total >= HEADER_BYTES,
            "header with a total size below a header: {total}"
        );
        assert!(
            batch.len() >= total,
            "batch of {} bytes for header of {total}",
            batch.len()
        );
        let stored = batch.slice(HEADER_BYTES..total);
        let records = match header.attributes.compression()? {
            Compression::None => stored,
            codec => {
                // One allocation per compressed batch, bounded by decompressed_bytes_max.
                let mut out = Vec::new();
                decompress(codec, &stored, decompressed_bytes_max, &mut out)?;
                Bytes::from(out)
            }
        };
        let record_count = usize::try_from(header.record_count).map_err(|_| {
            BatchError::CorruptRecords(format!("negative record count {}", header.record_count))
        })?;
        if record_count.saturating_mul(RECORD_BYTES_MIN) > records.len() {
            return Err(BatchError::CorruptRecords(format!(
                "{record_count} records cannot fit in {} bytes",
                records.len()
            )));
        }
        Ok(RecordDecoder {
            header,
            records,
            pos: 0,
            yielded: 0,
            previous_delta: None,
            done: false,
        })
    }

    /// The batch header.
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// Records not yet yielded, by the header's count.
    pub fn remaining_count(&self) -> usize {
        usize::try_from(self.header.record_count - self.yielded).expect("yielded <= record count")
    }

    /// Decodes every remaining record, all or nothing.
    pub fn collect_records(self) -> Result<Vec<Record>, BatchError> {
        self.collect()
    }

    fn corrupt(&mut self, at: usize, fault: &RecordFault) -> BatchError {
        self.done = true;
        BatchError::CorruptRecords(format!("record {} at byte {at}: {fault}", self.yielded))
    }

    fn decode_next(&mut self) -> Result<Record, RecordFault> {
        let mut outer = Cursor {
            buf: &self.records,
            pos: self.pos,
        };
        let length = outer.length("length", false)?.expect("not nullable");
        let body_range = outer.take("record body", length)?;
        let body_start = body_range.start;
        let mut cursor = Cursor::new(&self.records[body_range]);
        let _attributes = cursor.u8("attributes")?;
        let timestamp_delta = cursor.varlong("timestamp delta")?;
        let offset_delta = cursor.varint("offset delta")?;
        let last = self.header.last_offset_delta;
        let increasing = self
            .previous_delta
            .is_none_or(|previous| offset_delta > previous);
        if offset_delta < 0 || offset_delta > last || !increasing {
            return Err(RecordFault::OffsetDelta {
                delta: offset_delta,
                previous: self.previous_delta,
                last,
            });
        }
        let offset = self
            .header
            .base_offset
            .0
            .checked_add(i64::from(offset_delta))
            .ok_or(RecordFault::InvalidLength {
                field: "offset",
                length: i64::from(offset_delta),
            })?;
        let slice = |range: Range<usize>| {
            self.records
                .slice(body_start + range.start..body_start + range.end)
        };
        let key = match cursor.length("key length", true)? {
            None => None,
            Some(length) => Some(slice(cursor.take("key", length)?)),
        };
        let value = match cursor.length("value length", true)? {
            None => None,
            Some(length) => Some(slice(cursor.take("value", length)?)),
        };
        let header_count = cursor.varint("header count")?;
        let header_count =
            usize::try_from(header_count).map_err(|_| RecordFault::InvalidLength {
                field: "header count",
                length: i64::from(header_count),
            })?;
        if header_count.saturating_mul(HEADER_RECORD_BYTES_MIN) > cursor.remaining() {
            return Err(RecordFault::Truncated {
                field: "headers",
                needed: header_count.saturating_mul(HEADER_RECORD_BYTES_MIN),
                remaining: cursor.remaining(),
            });
        }
        // Capacity bounded by the bytes left in this record, checked just above.
        let mut headers = Vec::with_capacity(header_count);
        for _ in 0..header_count {
            let key_length = cursor
                .length("header key length", false)?
                .expect("not nullable");
            let key = slice(cursor.take("header key", key_length)?);
            let value = match cursor.length("header value length", true)? {
                None => None,
                Some(length) => Some(slice(cursor.take("header value", length)?)),
            };
            headers.push(Header { key, value });
        }
        if cursor.remaining() != 0 {
            return Err(RecordFault::BodySize {
                declared: length,
                consumed: cursor.pos,
            });
        }
        let timestamp = if self.header.attributes.is_log_append_time() {
            self.header.max_timestamp
        } else {
            TimestampMs(self.header.base_timestamp.0.wrapping_add(timestamp_delta))
        };
        self.pos = outer.pos;
        self.previous_delta = Some(offset_delta);
        Ok(Record {
            offset: Offset(offset),
            timestamp,
            key,
            value,
            headers,
        })
    }
}

impl Iterator for RecordDecoder {
    type Item = Result<Record, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        assert!(self.pos <= self.records.len(), "decoder past its records");
        if self.yielded == self.header.record_count {
            self.done = true;
            let left = self.records.len() - self.pos;
            if left != 0 {
                return Some(Err(BatchError::CorruptRecords(format!(
                    "{left} bytes after the last of {} records",
                    self.header.record_count
                ))));
            }
            return None;
        }
        let at = self.pos;
        match self.decode_next() {
            Ok(record) => {
                assert!(self.pos > at, "a decoded record consumed no bytes");
                self.yielded += 1;
                Some(Ok(record))
            }
            Err(fault) => Some(Err(self.corrupt(at, &fault))),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            (0, Some(0))
        } else {
            (0, Some(self.remaining_count() + 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use expect_test::{Expect, expect};

    use super::*;
    use crate::batch::{BatchBuilder, SimpleRecord, build_batch, compute_crc};
    use crate::limits::BATCH_BYTES_MAX;

    /// One line per record, or the error that stopped decoding.
    fn dump(batch: &Bytes) -> String {
        let decoder = match decode_batch(batch, BATCH_BYTES_MAX) {
            Ok(decoder) => decoder,
            Err(error) => return format!("error: {error}"),
        };
        let mut lines = Vec::new();
        for record in decoder {
            match record {
                Ok(r) => {
                    let text = |b: &Option<Bytes>| match b {
                        None => "null".to_owned(),
                        Some(b) => format!("{:?}", String::from_utf8_lossy(b)),
                    };
                    let headers: Vec<String> = r
                        .headers
                        .iter()
                        .map(|h| format!("{:?}={}", h.key_str().unwrap_or("?"), text(&h.value)))
                        .collect();
                    lines.push(format!(
                        "@{} ts={} key={} value={} headers=[{}]",
                        r.offset,
                        r.timestamp.0,
                        text(&r.key),
                        text(&r.value),
                        headers.join(", ")
                    ));
                }
                Err(error) => lines.push(format!("error: {error}")),
            }
        }
        lines.join("\n")
    }

    fn check(batch: &Bytes, expect: Expect) {
        expect.assert_eq(&dump(batch));
    }

    /// A batch with a hand-written records region and a correct CRC, base offset 100.
    fn raw_batch(records: &[u8], record_count: i32, last_offset_delta: i32) -> Bytes {
        let mut builder = BatchBuilder::new(BATCH_BYTES_MAX);
        builder.set_base_offset(Offset(100));
        builder
            .push(None, Some(b"x"), &[], TimestampMs(5_000))
            .expect("push");
        let built = builder.build(Compression::None).expect("build");
        let mut batch = built[..HEADER_BYTES].to_vec();
        batch.extend_from_slice(records);
        let length = i32::try_from(batch.len() - 12).expect("small");
        batch[8..12].copy_from_slice(&length.to_be_bytes());
        batch[23..27].copy_from_slice(&last_offset_delta.to_be_bytes());
        batch[57..61].copy_from_slice(&record_count.to_be_bytes());
        let crc = compute_crc(&batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(batch)
    }

    /// Encodes one record body by hand from varint-level parts, with its length prefix.
    fn raw_record(parts: &[&[u8]]) -> Vec<u8> {
        let body: Vec<u8> = parts.concat();
        let mut out = Vec::new();
        put_varint(&mut out, i32::try_from(body.len()).expect("small"));
        out.extend_from_slice(&body);
        out
    }

    fn varint(n: i32) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, n);
        out
    }

    // Goal: varint sizes agree with the encoder and with Kafka's zigzag encoding.
    // Method: encode boundary values and compare with known byte strings.
    #[test]
    fn varint_known_encodings() {
        let cases: &[(i32, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (63, &[0x7e]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (i32::MAX, &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i32::MIN, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for &(n, expected) in cases {
            let mut buf = Vec::new();
            put_varint(&mut buf, n);
            assert_eq!(buf, expected, "varint {n}");
            assert_eq!(varint_bytes(n), expected.len(), "varint size {n}");
            assert_eq!(Cursor::new(&buf).varint("n").expect("decodes"), n);
        }
        for n in [0, 1, -1, i64::MIN, i64::MAX, 1 << 40, -(1 << 40)] {
            let mut buf = Vec::new();
            put_varlong(&mut buf, n);
            assert_eq!(buf.len(), varlong_bytes(n), "varlong size {n}");
            assert_eq!(Cursor::new(&buf).varlong("n").expect("decodes"), n);
        }
        assert_eq!(varlong_bytes(i64::MIN), VARLONG_BYTES_MAX);
        // Overlong and overflowing encodings are rejected, as is a missing final byte.
        for bad in [
            &[0xff_u8, 0xff, 0xff, 0xff, 0xff, 0x01][..],
            &[0xff, 0xff, 0xff, 0xff, 0x10],
        ] {
            assert!(Cursor::new(bad).varint("n").is_err(), "{bad:?}");
        }
        assert!(Cursor::new(&[0x80]).varint("n").is_err());
        assert!(Cursor::new(&[0xff; 9]).varlong("n").is_err());
        assert!(
            Cursor::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02])
                .varlong("n")
                .is_err()
        );
    }

    // Goal: decoding gives back what the builder was given: offsets, timestamps (including a
    // timestamp before the base), null and empty keys and values, headers with null values.
    // Method: build uncompressed and zstd batches of the same records, snapshot the dump.
    #[test]
    fn decode_built_batches() {
        let records = [
            SimpleRecord {
                key: Some(b"k1".to_vec()),
                value: Some(b"hello".to_vec()),
                headers: vec![("a".into(), Some(b"1".to_vec())), ("b".into(), None)],
                timestamp: TimestampMs(1_700_000_000_000),
            },
            SimpleRecord {
                key: None,
                value: None,
                headers: vec![],
                timestamp: TimestampMs(1_699_999_999_000),
            },
            SimpleRecord {
                key: Some(vec![]),
                value: Some(vec![]),
                headers: vec![],
                timestamp: TimestampMs(1_700_000_000_500),
            },
        ];
        let expected = expect![[r#"
            @0 ts=1700000000000 key="k1" value="hello" headers=["a"="1", "b"=null]
            @1 ts=1699999999000 key=null value=null headers=[]
            @2 ts=1700000000500 key="" value="" headers=[]"#]];
        let plain = dump(&build_batch(&records, Compression::None).expect("build"));
        let zstd = dump(&build_batch(&records, Compression::Zstd).expect("build"));
        assert_eq!(plain, zstd, "compressed and plain batches decode alike");
        expected.assert_eq(&plain);
    }

    // Goal: uncompressed records are zero-copy slices of the batch buffer.
    // Method: compare the decoded value's address range with the batch's.
    #[test]
    fn uncompressed_values_borrow_the_batch() {
        let batch =
            build_batch(&[SimpleRecord::value(vec![7; 100])], Compression::None).expect("build");
        let record = decode_batch(&batch, BATCH_BYTES_MAX)
            .expect("valid")
            .next()
            .expect("one record")
            .expect("decodes");
        let value = record.value.expect("value");
        let batch_range = batch.as_ptr() as usize..batch.as_ptr() as usize + batch.len();
        assert!(
            batch_range.contains(&(value.as_ptr() as usize)),
            "value is a slice of batch"
        );
    }

    // Goal: with log-append time every record carries the batch's max timestamp.
    // Method: set the timestamp-type bit on a built batch, fix the CRC, decode.
    #[test]
    fn log_append_time_uses_max_timestamp() {
        let records = [
            SimpleRecord {
                timestamp: TimestampMs(10),
                ..SimpleRecord::value("a")
            },
            SimpleRecord {
                timestamp: TimestampMs(30),
                ..SimpleRecord::value("b")
            },
        ];
        let mut batch = build_batch(&records, Compression::None)
            .expect("build")
            .to_vec();
        batch[22] |= 0x08;
        let crc = compute_crc(&batch);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
        check(
            &Bytes::from(batch),
            expect![[r#"
                @0 ts=30 key=null value="a" headers=[]
                @1 ts=30 key=null value="b" headers=[]"#]],
        );
    }

    // Goal: every malformed length or count in the records is a typed error with its
    // position, never a panic or an allocation sized by the input.
    // Method: hand-write record regions with one defect each inside a CRC-valid batch.
    #[test]
    fn malformed_records_are_errors() {
        let ok = raw_record(&[&[0, 0, 0], &varint(-1), &varint(1), b"v", &varint(0)]);
        let two_ok: Vec<u8> = [ok.clone(), {
            let mut second = ok.clone();
            second[3] = 2; // offset delta 1
            second
        }]
        .concat();
        check(
            &raw_batch(&ok, 1, 0),
            expect![[r#"@100 ts=5000 key=null value="v" headers=[]"#]],
        );
        check(
            &raw_batch(&two_ok, 2, 1),
            expect![[r#"
                @100 ts=5000 key=null value="v" headers=[]
                @101 ts=5000 key=null value="v" headers=[]"#]],
        );
        // Fewer records than the header says.
        check(
            &raw_batch(&[ok.clone(), vec![0; 7]].concat(), 2, 1),
            expect![[r#"
                @100 ts=5000 key=null value="v" headers=[]
                error: corrupt records: record 1 at byte 8: attributes needs 1 bytes, 0 remain"#]],
        );
        check(
            &raw_batch(&ok, 2, 1),
            expect!["error: corrupt records: 2 records cannot fit in 8 bytes"],
        );
        // Bytes left after the declared records.
        check(
            &raw_batch(&two_ok, 1, 1),
            expect![[r#"
                @100 ts=5000 key=null value="v" headers=[]
                error: corrupt records: 8 bytes after the last of 1 records"#]],
        );
        // A record length beyond the records.
        let mut long = ok.clone();
        long[0] = 40;
        long.extend_from_slice(&[0; 6]);
        check(
            &raw_batch(&long, 1, 0),
            expect![[r#"
                error: corrupt records: record 0 at byte 0: length needs 20 bytes, 13 remain"#]],
        );
        // In order: a key length beyond the record, a key length of -2, a negative header
        // count, a header count of i32::MAX (must not allocate), a null header key, bytes
        // left in the record body, an overlong varint, an offset delta past the last.
        let cases = [
            raw_record(&[&[0, 0, 0], &varint(50), &varint(1), b"v", &varint(0)]),
            raw_record(&[&[0, 0, 0], &varint(-2), &varint(1), b"v", &varint(0)]),
            raw_record(&[&[0, 0, 0], &varint(-1), &varint(1), b"v", &varint(-5)]),
            raw_record(&[&[0, 0, 0], &varint(-1), &varint(1), b"v", &varint(i32::MAX)]),
            raw_record(&[
                &[0, 0, 0],
                &varint(-1),
                &varint(1),
                b"v",
                &varint(1),
                &[1, 1],
            ]),
            raw_record(&[&[0, 0, 0], &varint(-1), &varint(1), b"v", &varint(0), &[0]]),
            raw_record(&[
                &[0, 0],
                &[0xff; 6],
                &varint(-1),
                &varint(1),
                b"v",
                &varint(0),
            ]),
            raw_record(&[&[0, 0, 4], &varint(-1), &varint(1), b"v", &varint(0)]),
        ];
        let dumps: Vec<String> = cases.iter().map(|r| dump(&raw_batch(r, 1, 1))).collect();
        expect![[r#"
            error: corrupt records: record 0 at byte 0: key length needs 50 bytes, 3 remain
            error: corrupt records: record 0 at byte 0: invalid key length -2
            error: corrupt records: record 0 at byte 0: invalid header count -5
            error: corrupt records: record 0 at byte 0: headers needs 4294967294 bytes, 0 remain
            error: corrupt records: record 0 at byte 0: invalid header key length -1
            error: corrupt records: record 0 at byte 0: record declared 8 bytes, fields take 7
            error: corrupt records: record 0 at byte 0: offset delta varint too long
            error: corrupt records: record 0 at byte 0: offset delta 2 not in 0..=1"#]]
        .assert_eq(&dumps.join("\n"));
    }

    // Goal: a compressed batch whose records decompress past the limit is a typed error.
    // Method: decode a zstd batch of 1 MiB of zeros with a 64 KiB limit.
    #[test]
    fn decompression_limit_is_enforced() {
        let batch = build_batch(&[SimpleRecord::value(vec![0; 1 << 20])], Compression::Zstd)
            .expect("build");
        let header = validate(&batch, BATCH_BYTES_MAX).expect("valid");
        let error = RecordDecoder::new(header, &batch, 64 * 1024).expect_err("too large");
        expect!["Zstd data decompresses to more than 65536 bytes"].assert_eq(&error.to_string());
    }
}
