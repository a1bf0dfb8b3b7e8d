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
//! Main items: [`encode_record`] (used by the batch builder), the varint helpers.
//!
//! Must not depend on: anything network or protocol specific.

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
    assert_eq!(buf.len() - body_start, body_bytes, "record body size mismatch");
    buf.len() - start
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
        let mut buf = Vec::new();
        put_varlong(&mut buf, i64::MIN);
        assert_eq!(buf.len(), VARLONG_BYTES_MAX);
        assert_eq!(varlong_bytes(i64::MIN), VARLONG_BYTES_MAX);
        assert_eq!(varlong_bytes(0), 1);
    }
}
