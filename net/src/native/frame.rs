//! The native protocol's frame: a fixed prefix, an rkyv header, and the payload bytes.
//!
//! Main items: [`Prefix`] (the fixed 24 bytes), [`FrameHeader`] (the header types a frame
//! carries: `messages::Request` and `messages::Response`, serialised with rkyv and validated
//! with bytecheck on receipt), [`Frame`] (a decoded frame), [`decode`] (incremental decoding
//! from a byte buffer), [`encode_head`] / [`encode_head_chunks`] / [`encode`] /
//! [`encode_rejection`], and [`FrameError`]. The byte layout and the version rules are
//! specified in `net/PROTOCOL.md`; change both together.
//!
//! This module is sans-IO: it never touches a socket or the runtime (see `stream` for
//! quinn streams). It must not depend on storage types; the payload is opaque bytes (record
//! batches, carried unchanged).
//!
//! Decoding never panics and never allocates more than the limits allow: every length in a
//! prefix is checked against `limits.rs` before anything is sized from it.

use bytes::{BufMut, Bytes, BytesMut};
use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::limits::{FRAME_HEADER_BYTES_MAX, FRAME_PAYLOAD_BYTES_MAX};
use crate::native::messages::{self, ErrorCode, Request, Response};

/// The first four bytes of every frame, in every protocol version.
pub const MAGIC: [u8; 4] = *b"SLCF";

/// The protocol version this build writes, and the newest it reads.
///
/// Bump it for any change to the prefix's meaning or to a header type in `messages` (rkyv
/// layouts are not self-describing: adding a field or an enum variant changes them).
/// Version 2 added `Request::Produce::sequence`, `ErrorCode::OutOfOrderSequence` and the
/// consumer group requests; no build that speaks version 1 was released, so version 1 is no
/// longer read. Version 3 narrowed the CRC to the prefix and header ([`frame_crc`]); a
/// version-2 peer gets a version-rejection frame naming version 3.
pub const PROTOCOL_VERSION: u16 = 3;

/// The oldest protocol version this build still reads.
pub const PROTOCOL_VERSION_MIN: u16 = 3;

/// Bytes of the fixed prefix; a multiple of 8 so the header that follows stays 8-byte aligned
/// in an 8-byte-aligned buffer.
pub const PREFIX_BYTES: usize = 24;

/// Bytes of the prefix before its CRC field, which the CRC covers (except in a rejection).
const PREFIX_CRC_COVERED_BYTES: usize = 16;

/// Prefix flag: this frame rejects the peer's protocol version. Its header is empty and its
/// payload is a UTF-8 explanation. Understood by every version.
pub const FLAG_VERSION_REJECTED: u16 = 1 << 0;

/// Flags this build understands; any other bit is reserved and must be zero.
const FLAGS_KNOWN: u16 = FLAG_VERSION_REJECTED;

const _: () = assert!(PREFIX_BYTES.is_multiple_of(8));
const _: () = assert!(PREFIX_CRC_COVERED_BYTES < PREFIX_BYTES);
const _: () = assert!(PROTOCOL_VERSION_MIN <= PROTOCOL_VERSION);

/// A header type a frame can carry: serialised with rkyv, validated with bytecheck.
///
/// Implemented for [`Request`] (client to server) and [`Response`] (server to client).
pub trait FrameHeader: rkyv::Archive + Sized {
    /// Serialises the header.
    fn to_archive(&self) -> AlignedVec;

    /// Validates and deserialises a header; `bytes` is aligned for `Self::Archived`.
    fn from_archive(bytes: &[u8]) -> Result<Self, rancor::Error>;
}

impl FrameHeader for Request {
    fn to_archive(&self) -> AlignedVec {
        messages::encode(self)
    }

    fn from_archive(bytes: &[u8]) -> Result<Self, rancor::Error> {
        messages::decode_request(bytes)
    }
}

impl FrameHeader for Response {
    fn to_archive(&self) -> AlignedVec {
        messages::encode(self)
    }

    fn from_archive(bytes: &[u8]) -> Result<Self, rancor::Error> {
        messages::decode_response(bytes)
    }
}

/// The fixed first [`PREFIX_BYTES`] of a frame, little-endian:
/// magic (4), version (u16), flags (u16), header length (u32), payload length (u32),
/// CRC-32C ([`frame_crc`]) (u32), reserved zero (u32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    /// Protocol version of the frame.
    pub version: u16,
    /// Flag bits ([`FLAG_VERSION_REJECTED`]).
    pub flags: u16,
    /// Bytes of the rkyv header after the prefix.
    pub header_bytes: u32,
    /// Bytes of payload after the header.
    pub payload_bytes: u32,
    /// CRC-32C (Castagnoli) of what [`frame_crc`] covers.
    pub crc32c: u32,
}

impl Prefix {
    /// Parses and checks a prefix: magic, reserved bits, lengths against the limits, and the
    /// version (except for version-rejection frames, which every version must understand).
    /// Nothing is allocated, so a hostile length costs nothing.
    pub fn parse(bytes: &[u8; PREFIX_BYTES]) -> Result<Self, FrameError> {
        let magic: [u8; 4] = field(bytes, 0);
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let prefix = Prefix {
            version: u16::from_le_bytes(field(bytes, 4)),
            flags: u16::from_le_bytes(field(bytes, 6)),
            header_bytes: u32::from_le_bytes(field(bytes, 8)),
            payload_bytes: u32::from_le_bytes(field(bytes, 12)),
            crc32c: u32::from_le_bytes(field(bytes, 16)),
        };
        let reserved = u32::from_le_bytes(field(bytes, 20));
        if prefix.flags & !FLAGS_KNOWN != 0 || reserved != 0 {
            return Err(FrameError::ReservedBits {
                flags: prefix.flags,
                reserved,
            });
        }
        let header_bytes = prefix.header_bytes as usize;
        if header_bytes > FRAME_HEADER_BYTES_MAX {
            return Err(FrameError::HeaderTooLarge {
                bytes: header_bytes,
                max: FRAME_HEADER_BYTES_MAX,
            });
        }
        let payload_bytes = prefix.payload_bytes as usize;
        if payload_bytes > FRAME_PAYLOAD_BYTES_MAX {
            return Err(FrameError::PayloadTooLarge {
                bytes: payload_bytes,
                max: FRAME_PAYLOAD_BYTES_MAX,
            });
        }
        if !prefix.is_rejection()
            && !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&prefix.version)
        {
            return Err(FrameError::UnsupportedVersion {
                version: prefix.version,
            });
        }
        Ok(prefix)
    }

    /// Whether this frame rejects the peer's protocol version.
    pub fn is_rejection(&self) -> bool {
        self.flags & FLAG_VERSION_REJECTED != 0
    }

    /// Bytes of the whole frame: prefix, header and payload.
    pub fn frame_bytes(&self) -> usize {
        PREFIX_BYTES + self.header_bytes as usize + self.payload_bytes as usize
    }

    /// The prefix's bytes.
    pub fn to_bytes(&self) -> [u8; PREFIX_BYTES] {
        let mut bytes = [0u8; PREFIX_BYTES];
        bytes[0..4].copy_from_slice(&MAGIC);
        bytes[4..6].copy_from_slice(&self.version.to_le_bytes());
        bytes[6..8].copy_from_slice(&self.flags.to_le_bytes());
        bytes[8..12].copy_from_slice(&self.header_bytes.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.payload_bytes.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.crc32c.to_le_bytes());
        // 20..24 reserved, zero.
        bytes
    }
}

/// The CRC-32C a frame's prefix carries (its own `crc32c` field is ignored): of the prefix up
/// to that field (magic, version, flags and both lengths) followed by the header; for a
/// version-rejection frame, frozen in every version, of its header (empty) followed by its
/// payload, the explanation.
///
/// A payload is record batches (a `Produce` request, a `Fetched` answer), and each batch
/// carries its own CRC-32C over everything from its attributes to its end, which the
/// receiver checks before using the batch (the broker before appending, the client before
/// decoding), as for the Kafka protocol. The fields before the attributes are checked
/// otherwise: length and magic by the framing, base offset and leader epoch overwritten by
/// the broker on produce, base offsets checked to ascend by the client on fetch. Covering the
/// payload here as well, as version 2 did, checked every byte twice on each side. The payload
/// length is covered, so a frame cannot lose its last batches unnoticed. The transport (QUIC's
/// AEAD) authenticates every byte.
pub fn frame_crc(prefix: &Prefix, header: &[u8], chunks: &[impl AsRef<[u8]>]) -> u32 {
    if prefix.is_rejection() {
        return chunks.iter().fold(crc32c::crc32c(header), |crc, chunk| {
            crc32c::crc32c_append(crc, chunk.as_ref())
        });
    }
    let covered = crc32c::crc32c(&prefix.to_bytes()[..PREFIX_CRC_COVERED_BYTES]);
    crc32c::crc32c_append(covered, header)
}

/// Reads the `N` bytes at `offset` of the prefix.
fn field<const N: usize>(bytes: &[u8; PREFIX_BYTES], offset: usize) -> [u8; N] {
    bytes[offset..offset + N]
        .try_into()
        .expect("prefix fields lie inside the prefix")
}

/// A decoded, validated frame carrying a header of type `H`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<H> {
    /// The validated header.
    pub header: H,
    /// The payload bytes, exactly as sent.
    pub payload: Bytes,
}

impl<H: FrameHeader> Frame<H> {
    /// Builds a frame from a parsed prefix and the bytes that followed it: checks the CRC,
    /// turns a version-rejection frame into [`FrameError::Rejected`], and validates the
    /// header (copying it into an aligned buffer first if `header` is not aligned).
    pub fn from_parts(prefix: &Prefix, header: &[u8], payload: Bytes) -> Result<Self, FrameError> {
        let header = check_body(prefix, header, &payload)?;
        Ok(Frame { header, payload })
    }
}

/// Checks the bytes after a prefix and returns the header they carry.
fn check_body<H: FrameHeader>(
    prefix: &Prefix,
    header: &[u8],
    payload: &[u8],
) -> Result<H, FrameError> {
    assert_eq!(
        header.len(),
        prefix.header_bytes as usize,
        "caller passes the declared header"
    );
    assert_eq!(
        payload.len(),
        prefix.payload_bytes as usize,
        "caller passes the payload"
    );
    let computed = frame_crc(prefix, header, &[payload]);
    if computed != prefix.crc32c {
        return Err(FrameError::CrcMismatch {
            expected: prefix.crc32c,
            computed,
        });
    }
    if prefix.is_rejection() {
        if !header.is_empty() {
            return Err(FrameError::InvalidHeader {
                reason: "a version-rejection frame must have an empty header".to_owned(),
            });
        }
        return Err(FrameError::Rejected {
            version: prefix.version,
            message: String::from_utf8_lossy(payload).into_owned(),
        });
    }
    parse_header(header)
}

/// Validates (bytecheck) and deserialises a header.
fn parse_header<H: FrameHeader>(bytes: &[u8]) -> Result<H, FrameError> {
    let invalid = |error: rancor::Error| FrameError::InvalidHeader {
        reason: error.to_string(),
    };
    if (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<H::Archived>()) {
        return H::from_archive(bytes).map_err(invalid);
    }
    // rkyv reads archived values in place and so needs them aligned; headers are small, so
    // one copy is cheaper than forcing alignment on every receive buffer.
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(bytes);
    H::from_archive(&aligned).map_err(invalid)
}

/// Progress of [`decode`].
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<H> {
    /// The buffer holds only part of a frame; decode again once it holds at least
    /// `frame_bytes_min` bytes. Once the prefix is in, this is the whole frame's size, already
    /// checked against the limits, so it is safe to reserve.
    NeedMore {
        /// Bytes the buffer must hold before decoding can progress.
        frame_bytes_min: usize,
    },
    /// A whole frame, removed from the front of the buffer.
    Frame(Frame<H>),
}

/// Decodes the frame at the front of `buffer`, which may hold a partial frame.
///
/// On success the frame's bytes are split off the buffer (the payload shares the buffer's
/// memory: no copy). On [`Decoded::NeedMore`] and on error the buffer is left unchanged; an
/// error means the stream is not a valid frame and should be answered and closed.
pub fn decode<H: FrameHeader>(buffer: &mut BytesMut) -> Result<Decoded<H>, FrameError> {
    let Some(prefix_bytes) = buffer.first_chunk::<PREFIX_BYTES>() else {
        return Ok(Decoded::NeedMore {
            frame_bytes_min: PREFIX_BYTES,
        });
    };
    let prefix = Prefix::parse(prefix_bytes)?;
    let frame_bytes = prefix.frame_bytes();
    if buffer.len() < frame_bytes {
        return Ok(Decoded::NeedMore {
            frame_bytes_min: frame_bytes,
        });
    }
    let header_end = PREFIX_BYTES + prefix.header_bytes as usize;
    // Check before consuming, so that an error leaves the buffer as it was.
    let header = check_body(
        &prefix,
        &buffer[PREFIX_BYTES..header_end],
        &buffer[header_end..frame_bytes],
    )?;
    let mut frame = buffer.split_to(frame_bytes);
    let payload = frame.split_off(header_end).freeze();
    Ok(Decoded::Frame(Frame { header, payload }))
}

/// Why an outgoing frame could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The serialised header exceeds [`FRAME_HEADER_BYTES_MAX`].
    #[error("frame header of {bytes} bytes exceeds the limit of {max}")]
    HeaderTooLarge {
        /// Serialised header size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The payload exceeds [`FRAME_PAYLOAD_BYTES_MAX`].
    #[error("frame payload of {bytes} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// Payload size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

/// Encodes the prefix and header of a frame carrying `payload`, for sending the payload
/// separately without copying it. The prefix records the payload's length, so send exactly
/// these bytes.
pub fn encode_head<H: FrameHeader>(header: &H, payload: &[u8]) -> Result<BytesMut, EncodeError> {
    encode_head_chunks(header, &[payload])
}

/// Encodes the prefix and header of a frame whose payload is `chunks` concatenated (for
/// example stored record batches), so the chunks can be sent as they are, without copying
/// them into one buffer. The prefix records their total length; send exactly these bytes.
pub fn encode_head_chunks<H: FrameHeader, C: AsRef<[u8]>>(
    header: &H,
    chunks: &[C],
) -> Result<BytesMut, EncodeError> {
    let payload_bytes: usize = chunks.iter().map(|chunk| chunk.as_ref().len()).sum();
    if payload_bytes > FRAME_PAYLOAD_BYTES_MAX {
        return Err(EncodeError::PayloadTooLarge {
            bytes: payload_bytes,
            max: FRAME_PAYLOAD_BYTES_MAX,
        });
    }
    let header_bytes = header.to_archive();
    if header_bytes.len() > FRAME_HEADER_BYTES_MAX {
        return Err(EncodeError::HeaderTooLarge {
            bytes: header_bytes.len(),
            max: FRAME_HEADER_BYTES_MAX,
        });
    }
    let mut prefix = Prefix {
        version: PROTOCOL_VERSION,
        flags: 0,
        header_bytes: u32::try_from(header_bytes.len()).expect("checked against the limit"),
        payload_bytes: u32::try_from(payload_bytes).expect("checked against the limit"),
        crc32c: 0,
    };
    prefix.crc32c = frame_crc(&prefix, &header_bytes, chunks);
    let mut head = BytesMut::with_capacity(PREFIX_BYTES + header_bytes.len());
    head.put_slice(&prefix.to_bytes());
    head.put_slice(&header_bytes);
    Ok(head)
}

/// Encodes a whole frame into one buffer (copies the payload; for small frames and tests).
pub fn encode<H: FrameHeader>(header: &H, payload: &[u8]) -> Result<BytesMut, EncodeError> {
    let mut frame = encode_head(header, payload)?;
    frame.put_slice(payload);
    Ok(frame)
}

/// Encodes a version-rejection frame: the answer to a frame whose version this build does
/// not read. It names the versions this build speaks, in a form every version can decode.
pub fn encode_rejection(rejected_version: u16) -> BytesMut {
    let message = format!(
        "unsupported protocol version {rejected_version}: this broker speaks versions \
         {PROTOCOL_VERSION_MIN} to {PROTOCOL_VERSION}"
    );
    let mut prefix = Prefix {
        version: PROTOCOL_VERSION,
        flags: FLAG_VERSION_REJECTED,
        header_bytes: 0,
        payload_bytes: u32::try_from(message.len()).expect("short message"),
        crc32c: 0,
    };
    prefix.crc32c = frame_crc(&prefix, &[], &[message.as_bytes()]);
    let mut frame = BytesMut::with_capacity(PREFIX_BYTES + message.len());
    frame.put_slice(&prefix.to_bytes());
    frame.put_slice(message.as_bytes());
    frame
}

/// Why bytes are not a valid frame (or are a version rejection).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The bytes do not start with [`MAGIC`].
    #[error(
        "not a sluice frame (starts with {found:02x?}): is the peer speaking the native protocol?"
    )]
    BadMagic {
        /// The first four bytes found.
        found: [u8; 4],
    },
    /// The frame's version is outside what this build reads.
    #[error(
        "unsupported protocol version {version}: this side speaks versions \
         {PROTOCOL_VERSION_MIN} to {PROTOCOL_VERSION}"
    )]
    UnsupportedVersion {
        /// The version found.
        version: u16,
    },
    /// Reserved flag bits or the reserved word are not zero.
    #[error("reserved frame bits are set (flags {flags:#06x}, reserved word {reserved:#010x})")]
    ReservedBits {
        /// The flags found.
        flags: u16,
        /// The reserved word found.
        reserved: u32,
    },
    /// The declared header length exceeds the limit.
    #[error("frame declares a header of {bytes} bytes, more than the limit of {max}")]
    HeaderTooLarge {
        /// Declared length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The declared payload length exceeds the limit.
    #[error("frame declares a payload of {bytes} bytes, more than the limit of {max}")]
    PayloadTooLarge {
        /// Declared length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The CRC-32C of the frame ([`frame_crc`]) does not match the prefix.
    #[error("frame CRC mismatch: prefix says {expected:#010x}, bytes give {computed:#010x}")]
    CrcMismatch {
        /// CRC in the prefix.
        expected: u32,
        /// CRC of the bytes received.
        computed: u32,
    },
    /// The header failed validation.
    #[error("frame header is invalid: {reason}")]
    InvalidHeader {
        /// What the validator said.
        reason: String,
    },
    /// The peer rejected our protocol version.
    #[error(
        "the peer rejected protocol version {PROTOCOL_VERSION} (it speaks version {version}): \
         {message}"
    )]
    Rejected {
        /// The peer's version.
        version: u16,
        /// The peer's explanation.
        message: String,
    },
}

impl FrameError {
    /// The error code of the answer to a request that failed this way (in one table so the
    /// mapping is reviewed in one place). [`FrameError::UnsupportedVersion`] is answered with
    /// a version-rejection frame, the version-independent form of
    /// [`ErrorCode::UnsupportedVersion`], which a client reads back as
    /// [`FrameError::Rejected`].
    pub fn error_code(&self) -> ErrorCode {
        match self {
            FrameError::BadMagic { .. }
            | FrameError::ReservedBits { .. }
            | FrameError::InvalidHeader { .. } => ErrorCode::InvalidRequest,
            FrameError::CrcMismatch { .. } => ErrorCode::CorruptMessage,
            FrameError::HeaderTooLarge { .. } | FrameError::PayloadTooLarge { .. } => {
                ErrorCode::MessageTooLarge
            }
            FrameError::UnsupportedVersion { .. } | FrameError::Rejected { .. } => {
                ErrorCode::UnsupportedVersion
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::messages::OffsetQuery;
    use expect_test::expect;
    use std::fmt::Debug;

    fn produce(partition: i32) -> Request {
        Request::Produce {
            topic: "t".into(),
            partition,
            acks: 1,
            sequence: None,
        }
    }

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn decode_all<H: FrameHeader>(bytes: &[u8]) -> (Result<Decoded<H>, FrameError>, BytesMut) {
        let mut buffer = BytesMut::from(bytes);
        let result = decode(&mut buffer);
        (result, buffer)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes
            .chunks(8)
            .map(|chunk| format!("{chunk:02x?}\n"))
            .collect()
    }

    fn round_trip_one<H: FrameHeader + Clone + Debug + PartialEq>(header: H) {
        for len in [0, 1, 7, 8, 4096, 1 << 20] {
            let body = payload(len);
            let mut buffer = encode(&header, &body).expect("encode");
            let mut split = encode_head(&header, &body).expect("encode head");
            split.extend_from_slice(&body);
            assert_eq!(buffer, split);
            // The same payload in uneven chunks gives the same bytes.
            let (first, rest) = body.split_at(len / 3);
            let (second, third) = rest.split_at(rest.len() / 2);
            let mut chunked =
                encode_head_chunks(&header, &[first, second, third]).expect("encode chunks");
            chunked.extend_from_slice(&body);
            assert_eq!(buffer, chunked);
            let decoded = decode::<H>(&mut buffer).expect("valid frame");
            let Decoded::Frame(frame) = decoded else {
                panic!("whole frame: {decoded:?}")
            };
            assert_eq!(frame.header, header);
            assert_eq!(frame.payload, body);
            assert!(buffer.is_empty(), "the frame is consumed");
        }
    }

    // Goal: pin the byte layout so a change to the prefix or to rkyv's format is caught.
    // Method: encode a fixed frame and compare its bytes with a reviewed snapshot
    // (net/PROTOCOL.md describes each field).
    #[test]
    fn frame_bytes_are_stable() {
        let frame = encode(&produce(7), b"abc").expect("encode");
        expect![[r#"
            [53, 4c, 43, 46, 03, 00, 00, 00]
            [38, 00, 00, 00, 03, 00, 00, 00]
            [79, c3, 15, 23, 00, 00, 00, 00]
            [01, 00, 00, 00, 74, ff, ff, ff]
            [ff, ff, ff, ff, 07, 00, 00, 00]
            [01, 00, 00, 00, 00, 00, 00, 00]
            [00, 00, 00, 00, 00, 00, 00, 00]
            [00, 00, 00, 00, 00, 00, 00, 00]
            [00, 00, 00, 00, 00, 00, 00, 00]
            [00, 00, 00, 00, 00, 00, 00, 00]
            [61, 62, 63]
        "#]]
        .assert_eq(&hex(&frame));
    }

    // Goal: request and response headers of every shape, with any payload size, survive
    // encode then decode unchanged. Method: round-trip a sample of each through both the
    // whole-frame encoder and head-plus-payload, with payloads from 0 bytes to 1 MiB.
    #[test]
    fn round_trip() {
        round_trip_one(produce(3));
        round_trip_one(Request::Metadata { topics: None });
        round_trip_one(Request::ListOffset {
            topic: "ünïcode".into(),
            partition: i32::MAX,
            query: OffsetQuery::Timestamp { ms: -1 },
        });
        round_trip_one(Response::Error {
            code: ErrorCode::NotOwner,
            message: "partition moved".into(),
        });
        round_trip_one(Response::Fetched {
            high_watermark: 42,
            log_start_offset: 0,
        });
    }

    // Goal: frames sent back to back decode one at a time, in order.
    // Method: concatenate two frames and a partial third, decode repeatedly.
    #[test]
    fn back_to_back_frames() {
        let mut buffer = encode(&produce(1), b"first").expect("encode");
        buffer.extend_from_slice(&encode(&produce(2), b"second").expect("encode"));
        let third = encode(&produce(3), b"third").expect("encode");
        buffer.extend_from_slice(&third[..10]);
        for (partition, body) in [(1, &b"first"[..]), (2, &b"second"[..])] {
            match decode::<Request>(&mut buffer).expect("valid") {
                Decoded::Frame(frame) => {
                    assert_eq!(frame.header, produce(partition));
                    assert_eq!(frame.payload, body);
                }
                other => panic!("expected frame {partition}, got {other:?}"),
            }
        }
        assert_eq!(
            decode::<Request>(&mut buffer).expect("partial"),
            Decoded::NeedMore {
                frame_bytes_min: PREFIX_BYTES
            }
        );
        assert_eq!(buffer.len(), 10);
    }

    // Goal: a frame cut at any byte asks for more bytes, never errs or panics, and leaves the
    // buffer alone. Method: decode every strict prefix of a frame; check the size asked for.
    #[test]
    fn truncated_input_needs_more() {
        let header = Response::Error {
            code: ErrorCode::Internal,
            message: "x".into(),
        };
        let frame = encode(&header, &payload(300)).expect("encode");
        for cut in 0..frame.len() {
            let (result, buffer) = decode_all::<Response>(&frame[..cut]);
            let expected = if cut < PREFIX_BYTES {
                PREFIX_BYTES
            } else {
                frame.len()
            };
            assert_eq!(
                result,
                Ok(Decoded::NeedMore {
                    frame_bytes_min: expected
                }),
                "cut at {cut}"
            );
            assert_eq!(&buffer[..], &frame[..cut], "buffer untouched at cut {cut}");
        }
    }

    // Goal: what the frame checks and what it leaves to the batches. Method: flip each bit of
    // every byte of a frame: in the prefix it must give an error or a request for more bytes,
    // never a frame; in the header a CRC mismatch; in the payload (record batches, which carry
    // their own CRCs) a frame carrying exactly the flipped payload. A rejection frame's
    // explanation is covered: a flip in it gives a CRC mismatch.
    #[test]
    fn flipped_bits_are_caught() {
        let body = payload(64);
        let frame = encode(&produce(5), &body).expect("encode");
        let payload_start = frame.len() - body.len();
        for position in 0..frame.len() {
            for bit in 0..8 {
                let mut corrupted = frame.clone();
                corrupted[position] ^= 1 << bit;
                let (result, buffer) = decode_all::<Request>(&corrupted);
                if position >= payload_start {
                    let Ok(Decoded::Frame(decoded)) = result else {
                        panic!("byte {position} bit {bit}: {result:?}");
                    };
                    assert_eq!(decoded.header, produce(5));
                    assert_eq!(&decoded.payload[..], &corrupted[payload_start..]);
                    continue;
                }
                if position >= PREFIX_BYTES {
                    assert!(
                        matches!(result, Err(FrameError::CrcMismatch { .. })),
                        "byte {position} bit {bit}: {result:?}"
                    );
                } else {
                    assert!(
                        !matches!(result, Ok(Decoded::Frame(_))),
                        "byte {position} bit {bit} decoded as a frame"
                    );
                }
                assert_eq!(buffer, corrupted, "an error leaves the buffer untouched");
            }
        }
        let rejection = encode_rejection(7);
        for position in PREFIX_BYTES..rejection.len() {
            let mut corrupted = rejection.clone();
            corrupted[position] ^= 0x20;
            let (result, _) = decode_all::<Response>(&corrupted);
            assert!(
                matches!(result, Err(FrameError::CrcMismatch { .. })),
                "rejection byte {position}: {result:?}"
            );
        }
    }

    // Goal: lengths over the limits are refused from the prefix alone, before any buffer is
    // sized from them. Method: hand-made prefixes with huge lengths and no body.
    #[test]
    fn oversized_lengths_are_rejected_from_the_prefix() {
        let prefix = |header_bytes, payload_bytes| {
            Prefix {
                version: PROTOCOL_VERSION,
                flags: 0,
                header_bytes,
                payload_bytes,
                crc32c: 0,
            }
            .to_bytes()
        };
        let (result, _) = decode_all::<Request>(&prefix(u32::MAX, 0));
        assert_eq!(
            result,
            Err(FrameError::HeaderTooLarge {
                bytes: u32::MAX as usize,
                max: FRAME_HEADER_BYTES_MAX
            })
        );
        let over = FRAME_PAYLOAD_BYTES_MAX as u32 + 1;
        let (result, buffer) = decode_all::<Request>(&prefix(16, over));
        assert_eq!(
            result,
            Err(FrameError::PayloadTooLarge {
                bytes: over as usize,
                max: FRAME_PAYLOAD_BYTES_MAX
            })
        );
        assert_eq!(
            buffer.capacity(),
            PREFIX_BYTES,
            "nothing was reserved for the payload"
        );
        // At the limits exactly, the decoder asks for the whole frame (and no more).
        let at_limit = prefix(
            FRAME_HEADER_BYTES_MAX as u32,
            FRAME_PAYLOAD_BYTES_MAX as u32,
        );
        let (result, _) = decode_all::<Request>(&at_limit);
        let total = PREFIX_BYTES + FRAME_HEADER_BYTES_MAX + FRAME_PAYLOAD_BYTES_MAX;
        assert_eq!(
            result,
            Ok(Decoded::NeedMore {
                frame_bytes_min: total
            })
        );
    }

    // Goal: the encoder refuses what the decoder would refuse.
    // Method: a payload one byte over the limit, and a header bigger than the header limit.
    #[test]
    fn encoder_enforces_limits() {
        let too_long = vec![0; FRAME_PAYLOAD_BYTES_MAX + 1];
        let error = encode_head(&produce(1), &too_long).expect_err("payload too large");
        assert!(
            matches!(error, EncodeError::PayloadTooLarge { .. }),
            "{error}"
        );
        let header = Response::Error {
            code: ErrorCode::Internal,
            message: "m".repeat(FRAME_HEADER_BYTES_MAX),
        };
        let error = encode_head(&header, b"").expect_err("header too large");
        assert!(
            matches!(error, EncodeError::HeaderTooLarge { .. }),
            "{error}"
        );
    }

    // Goal: the version rule. A frame of an unsupported version is refused from its prefix,
    // and the version-rejection answer decodes (for any version) into a clear error.
    // Method: re-label a frame as version 0, 2, 4 and 65535; decode rejection frames.
    #[test]
    fn unsupported_versions_and_rejections() {
        for version in [0, 2, PROTOCOL_VERSION + 1, u16::MAX] {
            let mut frame = encode(&produce(1), b"x").expect("encode");
            frame[4..6].copy_from_slice(&version.to_le_bytes());
            let (result, _) = decode_all::<Request>(&frame);
            assert_eq!(result, Err(FrameError::UnsupportedVersion { version }));
        }
        let rejection = encode_rejection(7);
        let (result, _) = decode_all::<Response>(&rejection);
        let Err(
            error @ FrameError::Rejected {
                version: PROTOCOL_VERSION,
                ..
            },
        ) = result
        else {
            panic!("expected a rejection, got {result:?}");
        };
        assert_eq!(
            error.to_string(),
            "the peer rejected protocol version 3 (it speaks version 3): unsupported protocol \
             version 7: this broker speaks versions 3 to 3"
        );
        // A rejection from a future version is still understood.
        let mut future = encode_rejection(7);
        future[4..6].copy_from_slice(&(PROTOCOL_VERSION + 5).to_le_bytes());
        let (result, _) = decode_all::<Response>(&future);
        assert!(
            matches!(result, Err(FrameError::Rejected { .. })),
            "{result:?}"
        );
    }

    // Goal: headers are validated, and are readable from unaligned buffers.
    // Method: CRC-correct frames whose header bytes are garbage or empty; a valid frame
    // decoded from a buffer that starts one byte into its allocation.
    #[test]
    fn header_validation_and_alignment() {
        let garbage = [0xffu8; 16];
        let mut prefix = Prefix {
            version: PROTOCOL_VERSION,
            flags: 0,
            header_bytes: garbage.len() as u32,
            payload_bytes: 0,
            crc32c: 0,
        };
        prefix.crc32c = frame_crc(&prefix, &garbage, &[b""]);
        let mut frame = prefix.to_bytes().to_vec();
        frame.extend_from_slice(&garbage);
        let (result, _) = decode_all::<Request>(&frame);
        assert!(
            matches!(result, Err(FrameError::InvalidHeader { .. })),
            "{result:?}"
        );
        let mut empty = Prefix {
            header_bytes: 0,
            ..prefix
        };
        empty.crc32c = frame_crc(&empty, &[], &[b""]);
        let empty = empty.to_bytes();
        let (result, _) = decode_all::<Request>(&empty);
        assert!(
            matches!(result, Err(FrameError::InvalidHeader { .. })),
            "{result:?}"
        );

        let valid = encode(&produce(3), b"aligned?").expect("encode");
        let mut buffer = BytesMut::with_capacity(valid.len() + 1);
        buffer.put_u8(0);
        buffer.extend_from_slice(&valid);
        let _ = buffer.split_to(1);
        let header_address = buffer[PREFIX_BYTES..].as_ptr() as usize;
        let align = std::mem::align_of::<<Request as rkyv::Archive>::Archived>();
        assert_ne!(
            header_address % align,
            0,
            "the test needs a misaligned header"
        );
        match decode::<Request>(&mut buffer).expect("valid") {
            Decoded::Frame(frame) => assert_eq!(frame.header, produce(3)),
            other => panic!("{other:?}"),
        }
    }

    // Goal: reserved bits stay reserved. Method: set an unknown flag, then the reserved word.
    #[test]
    fn reserved_bits_are_rejected() {
        let frame = encode(&produce(1), b"").expect("encode");
        let mut flagged = frame.clone();
        flagged[6] |= 0x80;
        let (result, _) = decode_all::<Request>(&flagged);
        assert!(
            matches!(result, Err(FrameError::ReservedBits { .. })),
            "{result:?}"
        );
        let mut reserved = frame.clone();
        reserved[23] = 1;
        let (result, _) = decode_all::<Request>(&reserved);
        assert!(
            matches!(result, Err(FrameError::ReservedBits { .. })),
            "{result:?}"
        );
    }

    // Goal: each decode failure maps to the intended wire error code.
    // Method: a table of errors and codes, reviewed with net/PROTOCOL.md.
    #[test]
    fn error_code_table() {
        let table = [
            (
                FrameError::BadMagic { found: *b"GET " },
                ErrorCode::InvalidRequest,
            ),
            (
                FrameError::ReservedBits {
                    flags: 2,
                    reserved: 0,
                },
                ErrorCode::InvalidRequest,
            ),
            (
                FrameError::InvalidHeader {
                    reason: String::new(),
                },
                ErrorCode::InvalidRequest,
            ),
            (
                FrameError::CrcMismatch {
                    expected: 1,
                    computed: 2,
                },
                ErrorCode::CorruptMessage,
            ),
            (
                FrameError::HeaderTooLarge { bytes: 1, max: 0 },
                ErrorCode::MessageTooLarge,
            ),
            (
                FrameError::PayloadTooLarge { bytes: 1, max: 0 },
                ErrorCode::MessageTooLarge,
            ),
            (
                FrameError::UnsupportedVersion { version: 9 },
                ErrorCode::UnsupportedVersion,
            ),
            (
                FrameError::Rejected {
                    version: 1,
                    message: String::new(),
                },
                ErrorCode::UnsupportedVersion,
            ),
        ];
        for (error, code) in table {
            assert_eq!(error.error_code(), code, "{error}");
        }
    }
}
