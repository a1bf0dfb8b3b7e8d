//! Peer-link frames (sans-IO): encoding and decoding, no sockets.
//!
//! ```text
//! length      u32  bytes after this field
//! crc32c      u32  over everything after this field
//! correlation u64  echoed by the answer
//! kind        u8   cluster::peer::PeerKind
//! flags       u8   0 request, 1 one-way request, 2 answer, 3 error answer, 4 unsupported
//! header_len  u32
//! header      header_len bytes
//! payload     the rest (record batches, never re-encoded)
//! ```
//! All integers little endian. A connection starts with a hello from the connecting side:
//! `b"SLPEER01"`, its node id (i32) and its shard id (u16); the acceptor refuses a shard id
//! that is not its own (links join shard i to shard i).
//!
//! Must not depend on: sockets or the runtime.

use bytes::{BufMut, Bytes, BytesMut};

/// Hello magic.
pub const HELLO_MAGIC: &[u8; 8] = b"SLPEER01";
/// Hello length: magic, node id, shard id.
pub const HELLO_BYTES: usize = 14;
/// Bytes from `crc32c` through `header_len`.
pub const FIXED_BYTES: usize = 4 + 8 + 1 + 1 + 4;

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Flags {
    /// A request that wants an answer.
    Request = 0,
    /// A request without an answer.
    OneWay = 1,
    /// An answer.
    Answer = 2,
    /// An error answer (header: the reason, UTF-8).
    Error = 3,
    /// The receiver does not handle the kind.
    Unsupported = 4,
}

impl Flags {
    fn from_wire(value: u8) -> Option<Flags> {
        match value {
            0 => Some(Flags::Request),
            1 => Some(Flags::OneWay),
            2 => Some(Flags::Answer),
            3 => Some(Flags::Error),
            4 => Some(Flags::Unsupported),
            _ => None,
        }
    }
}

/// A decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Correlation id.
    pub correlation: u64,
    /// Request kind (wire value).
    pub kind: u8,
    /// What it is.
    pub flags: Flags,
    /// Header bytes.
    pub header: Bytes,
    /// Payload bytes (a slice of the received buffer: no copy).
    pub payload: Bytes,
}

/// Why a frame was refused. Any of these closes the connection: the stream position is lost.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The declared length is below the fixed part or above the limit.
    #[error("peer frame length {0} out of range")]
    Length(usize),
    /// The CRC does not match.
    #[error("peer frame checksum mismatch")]
    Checksum,
    /// Unknown flags or a header longer than the frame.
    #[error("malformed peer frame: {0}")]
    Malformed(&'static str),
    /// A bad hello.
    #[error("bad peer hello")]
    Hello,
}

/// Encodes the prefix of a frame (everything before the payload); the payload is written
/// after it unchanged. The CRC covers the payload too.
pub fn encode_prefix(
    correlation: u64,
    kind: u8,
    flags: Flags,
    header: &[u8],
    payload: &[u8],
) -> BytesMut {
    let header_len = u32::try_from(header.len()).expect("peer headers are small");
    let length = FIXED_BYTES + header.len() + payload.len();
    let length = u32::try_from(length).expect("frames are bounded by the link limit");
    let mut out = BytesMut::with_capacity(4 + FIXED_BYTES + header.len());
    out.put_u32_le(length);
    out.put_u32_le(0);
    out.put_u64_le(correlation);
    out.put_u8(kind);
    out.put_u8(flags as u8);
    out.put_u32_le(header_len);
    out.extend_from_slice(header);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[8..]), payload);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks a frame's declared length (the first 4 bytes) against the limit.
pub fn check_length(length: u32, max_bytes: usize) -> Result<usize, FrameError> {
    let length = length as usize;
    if length < FIXED_BYTES || length > max_bytes {
        return Err(FrameError::Length(length));
    }
    Ok(length)
}

/// Decodes the `length` bytes that followed the length field.
pub fn decode(body: Bytes) -> Result<Frame, FrameError> {
    if body.len() < FIXED_BYTES {
        return Err(FrameError::Length(body.len()));
    }
    let crc = u32::from_le_bytes(body[0..4].try_into().expect("4 bytes"));
    if crc32c::crc32c(&body[4..]) != crc {
        return Err(FrameError::Checksum);
    }
    let correlation = u64::from_le_bytes(body[4..12].try_into().expect("8 bytes"));
    let kind = body[12];
    let flags = Flags::from_wire(body[13]).ok_or(FrameError::Malformed("unknown flags"))?;
    let header_len = u32::from_le_bytes(body[14..18].try_into().expect("4 bytes")) as usize;
    if header_len > body.len() - FIXED_BYTES {
        return Err(FrameError::Malformed("header longer than the frame"));
    }
    let header = body.slice(FIXED_BYTES..FIXED_BYTES + header_len);
    let payload = body.slice(FIXED_BYTES + header_len..);
    Ok(Frame {
        correlation,
        kind,
        flags,
        header,
        payload,
    })
}

/// The hello a connecting shard sends.
pub fn hello(node: i32, shard: u16) -> [u8; HELLO_BYTES] {
    let mut out = [0; HELLO_BYTES];
    out[..8].copy_from_slice(HELLO_MAGIC);
    out[8..12].copy_from_slice(&node.to_le_bytes());
    out[12..14].copy_from_slice(&shard.to_le_bytes());
    out
}

/// Decodes a hello into (node, shard).
pub fn decode_hello(bytes: &[u8; HELLO_BYTES]) -> Result<(i32, u16), FrameError> {
    if &bytes[..8] != HELLO_MAGIC {
        return Err(FrameError::Hello);
    }
    let node = i32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let shard = u16::from_le_bytes(bytes[12..14].try_into().expect("2 bytes"));
    Ok((node, shard))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(header: &[u8], payload: &[u8]) -> Bytes {
        let mut all = encode_prefix(7, 3, Flags::Request, header, payload);
        all.extend_from_slice(payload);
        all.freeze()
    }

    // Goal: a frame round-trips with header and payload apart, and the payload is a slice of
    // the received buffer. Method: encode, decode the body after the length field.
    #[test]
    fn round_trip() {
        let all = frame_bytes(b"head", b"batch bytes");
        let length = u32::from_le_bytes(all[..4].try_into().expect("4"));
        assert_eq!(check_length(length, 1 << 20), Ok(all.len() - 4));
        let frame = decode(all.slice(4..)).expect("decodes");
        assert_eq!(frame.correlation, 7);
        assert_eq!(frame.kind, 3);
        assert_eq!(frame.flags, Flags::Request);
        assert_eq!(&frame.header[..], b"head");
        assert_eq!(&frame.payload[..], b"batch bytes");
        assert_eq!(
            frame.payload.as_ptr(),
            all[all.len() - 11..].as_ptr(),
            "no copy"
        );
    }

    // Goal: every corruption is refused with a clear error, never a panic. Method: flip each
    // byte of a frame in turn, and feed bad lengths and headers.
    #[test]
    fn corruption_is_refused() {
        let all = frame_bytes(b"h", b"payload");
        for i in 4..all.len() {
            let mut bad = all.to_vec();
            bad[i] ^= 0x01;
            let result = decode(Bytes::from(bad).slice(4..));
            assert!(result.is_err(), "flipped byte {i} accepted");
        }
        assert_eq!(check_length(3, 1 << 20), Err(FrameError::Length(3)));
        assert_eq!(
            check_length(1 << 21, 1 << 20),
            Err(FrameError::Length(1 << 21))
        );
        assert_eq!(
            decode(Bytes::from_static(b"short")),
            Err(FrameError::Length(5))
        );
        let hello = hello(3, 1);
        assert_eq!(decode_hello(&hello), Ok((3, 1)));
        let mut bad = hello;
        bad[0] = b'X';
        assert_eq!(decode_hello(&bad), Err(FrameError::Hello));
    }
}
