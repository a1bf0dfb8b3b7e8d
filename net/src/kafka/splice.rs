//! Record sets spliced into an encoded Kafka message, so that batches go from their own buffers
//! to the socket without being copied into the message: fetched batches into a Fetch response
//! (the broker), produced batches into a Produce request (`sluice-perf`'s Kafka client).
//!
//! `kafka-protocol` encodes a `records` field by copying its bytes into the message buffer,
//! and a partition's batches come as several buffers (cache entries, read-ahead chunks) that
//! would first be joined: two copies of every byte. Instead the encoder is given a 16-byte
//! placeholder in each `records` field ([`Placeholders::add`]); after encoding, [`splice`]
//! finds each placeholder (a per-message random nonce and its index, in encoding order),
//! rewrites its length prefix for the real record set, and returns the frame as chunks: the
//! encoded parts between placeholders and the batches themselves. Small pieces are copied
//! into shared chunks ([`SPLICE_COPY_BYTES_MAX`]) so that a message of many tiny batches is
//! still written with few system calls.
//!
//! A placeholder that cannot be found with the expected prefix (a topic name that happens to
//! hold the nonce) is an error for that one message, never a panic.
//!
//! Must not depend on: the shard API.

use std::hash::{BuildHasher, Hasher};

use bytes::{BufMut, Bytes, BytesMut};

use crate::limits::SPLICE_COPY_BYTES_MAX;

/// Bytes of one placeholder: the nonce, then the index.
const PLACEHOLDER_BYTES: usize = 16;

/// The record sets of one message, each standing in the encoded message as a placeholder.
pub struct Placeholders {
    nonce: [u8; 8],
    records: Vec<Vec<Bytes>>,
}

impl Default for Placeholders {
    fn default() -> Self {
        Self::new()
    }
}

impl Placeholders {
    /// No record sets yet, with a fresh random nonce.
    pub fn new() -> Placeholders {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(0x5c1c_e5e1_ce00_0000);
        Placeholders {
            nonce: hasher.finish().to_be_bytes(),
            records: Vec::new(),
        }
    }

    /// Registers a record set (batches back to back) and returns the placeholder to encode in
    /// its `records` field. Record sets must be added in the order the encoder writes them.
    pub fn add(&mut self, batches: Vec<Bytes>) -> Bytes {
        let placeholder = Bytes::copy_from_slice(&self.placeholder(self.records.len()));
        self.records.push(batches);
        placeholder
    }

    fn placeholder(&self, index: usize) -> [u8; PLACEHOLDER_BYTES] {
        let mut placeholder = [0u8; PLACEHOLDER_BYTES];
        placeholder[..8].copy_from_slice(&self.nonce);
        placeholder[8..].copy_from_slice(&(index as u64).to_be_bytes());
        placeholder
    }
}

/// How the encoded `records` fields carry their length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordsPrefix {
    /// `INT32` length (non-flexible versions).
    Int32,
    /// Unsigned varint of length + 1 (`COMPACT_RECORDS`, flexible versions).
    Compact,
}

impl RecordsPrefix {
    fn encode(self, len: usize, out: &mut BytesMut) -> Result<(), String> {
        match self {
            RecordsPrefix::Int32 => {
                let len = i32::try_from(len).map_err(|_| format!("record set of {len} bytes"))?;
                out.put_i32(len);
            }
            RecordsPrefix::Compact => {
                let mut value = u64::try_from(len).expect("usize fits u64") + 1;
                while value >= 0x80 {
                    out.put_u8((value as u8 & 0x7f) | 0x80);
                    value >>= 7;
                }
                out.put_u8(value as u8);
            }
        }
        Ok(())
    }

    /// The prefix the encoder wrote for a placeholder.
    fn of_placeholder(self) -> &'static [u8] {
        const INT32: [u8; 4] = (PLACEHOLDER_BYTES as i32).to_be_bytes();
        const COMPACT: [u8; 1] = [PLACEHOLDER_BYTES as u8 + 1];
        match self {
            RecordsPrefix::Int32 => &INT32,
            RecordsPrefix::Compact => &COMPACT,
        }
    }
}

/// Replaces the placeholders of `frame` (a whole message: the 4-byte size, header, body) with
/// their record sets and fixes the size. Returns the frame as chunks to write in order.
pub fn splice(
    frame: BytesMut,
    prefix: RecordsPrefix,
    placeholders: Placeholders,
) -> Result<Vec<Bytes>, String> {
    let old_prefix = prefix.of_placeholder();
    // Find every placeholder first, so that the new size is known before anything is emitted.
    let mut positions = Vec::with_capacity(placeholders.records.len());
    let mut from = 4;
    for index in 0..placeholders.records.len() {
        let needle = placeholders.placeholder(index);
        let found = frame[from..]
            .windows(PLACEHOLDER_BYTES)
            .position(|window| window == needle)
            .map(|at| from + at)
            .ok_or_else(|| format!("record set placeholder {index} not found"))?;
        let start = found
            .checked_sub(old_prefix.len())
            .filter(|&start| start >= from && &frame[start..found] == old_prefix)
            .ok_or_else(|| format!("record set placeholder {index} without its length prefix"))?;
        positions.push((start, found + PLACEHOLDER_BYTES));
        from = found + PLACEHOLDER_BYTES;
    }

    let mut out = Chunks::default();
    let mut frame = frame.freeze();
    let mut consumed = 0;
    let mut size_delta: i64 = 0;
    let mut prefixes = Vec::with_capacity(positions.len());
    for records in &placeholders.records {
        let len: usize = records.iter().map(Bytes::len).sum();
        let mut encoded = BytesMut::with_capacity(5);
        prefix.encode(len, &mut encoded)?;
        size_delta += (encoded.len() + len) as i64 - (old_prefix.len() + PLACEHOLDER_BYTES) as i64;
        prefixes.push(encoded);
    }
    let size = i64::from(u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")));
    let size = u32::try_from(size + size_delta)
        .ok()
        .filter(|&size| i32::try_from(size).is_ok())
        .ok_or_else(|| format!("message of {} bytes is too large", size + size_delta))?;
    out.copy(&size.to_be_bytes());
    consumed += 4;
    for ((records, (start, end)), encoded) in placeholders
        .records
        .into_iter()
        .zip(positions)
        .zip(prefixes)
    {
        out.copy(&frame[consumed..start]);
        out.copy(&encoded);
        for batch in records {
            out.push(batch);
        }
        consumed = end;
    }
    let rest = frame.split_off(consumed);
    out.copy(&rest);
    Ok(out.finish())
}

/// Output chunks: small pieces are copied together, large ones are passed by reference.
#[derive(Default)]
struct Chunks {
    done: Vec<Bytes>,
    small: BytesMut,
}

impl Chunks {
    fn copy(&mut self, bytes: &[u8]) {
        self.small.extend_from_slice(bytes);
    }

    fn push(&mut self, bytes: Bytes) {
        if bytes.len() <= SPLICE_COPY_BYTES_MAX {
            self.copy(&bytes);
            return;
        }
        self.flush();
        self.done.push(bytes);
    }

    fn flush(&mut self) {
        if !self.small.is_empty() {
            self.done.push(self.small.split().freeze());
        }
    }

    fn finish(mut self) -> Vec<Bytes> {
        self.flush();
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concat(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    /// A frame as the encoder would write it: size, some bytes, then per record set its
    /// prefix and placeholder (or, for `expected`, its real prefix and bytes), then a trailer.
    fn frame(prefix: RecordsPrefix, sets: &[Bytes], placeholders: Option<&[Bytes]>) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_slice(b"header");
        for (index, set) in sets.iter().enumerate() {
            body.put_slice(b"partition");
            let field = placeholders.map_or(set.clone(), |p| p[index].clone());
            prefix
                .encode(field.len(), &mut body)
                .expect("test sizes fit");
            body.put_slice(&field);
        }
        body.put_slice(b"trailer");
        let mut frame = BytesMut::new();
        frame.put_u32(body.len() as u32);
        frame.put_slice(&body);
        frame
    }

    // Goal: the spliced frame is byte for byte what encoding the record sets inline gives, for
    // both prefix kinds, with empty, small and large record sets.
    #[test]
    fn splice_matches_inline_encoding() {
        for prefix in [RecordsPrefix::Int32, RecordsPrefix::Compact] {
            let big = Bytes::from(vec![7u8; SPLICE_COPY_BYTES_MAX + 1]);
            let sets = [
                vec![Bytes::from_static(b"a"), Bytes::from_static(b"bc")],
                vec![big.clone(), Bytes::from_static(b"tail"), big.clone()],
                vec![Bytes::new()],
            ];
            let joined: Vec<Bytes> = sets.iter().map(|s| Bytes::from(concat(s))).collect();
            let mut placeholders = Placeholders::new();
            let stand_ins: Vec<Bytes> = sets.iter().map(|s| placeholders.add(s.clone())).collect();
            let encoded = frame(prefix, &joined, Some(&stand_ins));
            let chunks = splice(encoded, prefix, placeholders).expect("spliced");
            let expected = frame(prefix, &joined, None);
            assert_eq!(concat(&chunks), expected.to_vec(), "{prefix:?}");
            // The large batches are passed through, not copied.
            assert!(
                chunks.iter().any(|c| c.as_ptr() == big.as_ptr()),
                "{prefix:?}"
            );
        }
    }

    // Goal: a placeholder that is missing, or whose length prefix is not the one the encoder
    // writes, is an error for the response and nothing else.
    #[test]
    fn missing_or_mangled_placeholder_is_an_error() {
        let mut placeholders = Placeholders::new();
        let stand_in = placeholders.add(vec![Bytes::from_static(b"x")]);
        let mut encoded = BytesMut::new();
        encoded.put_u32(20);
        encoded.put_slice(&[0, 0, 0, 99]);
        encoded.put_slice(&stand_in);
        let error = splice(encoded, RecordsPrefix::Int32, placeholders).expect_err("mangled");
        assert!(error.contains("length prefix"), "{error}");

        let mut placeholders = Placeholders::new();
        placeholders.add(vec![Bytes::from_static(b"x")]);
        let mut encoded = BytesMut::new();
        encoded.put_u32(4);
        encoded.put_slice(b"none");
        let error = splice(encoded, RecordsPrefix::Compact, placeholders).expect_err("missing");
        assert!(error.contains("not found"), "{error}");
    }
}
