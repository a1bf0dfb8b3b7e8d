//! Kafka framing and message decoding: the 4-byte size prefix, the request header, the body
//! through the `kafka-protocol` crate, and encoding a response with its header and size.
//!
//! Nothing here allocates in proportion to a declared length: a frame's buffer grows with the
//! bytes that arrive, and a body's arrays are bounded by [`super::guard`] before decoding.
//!
//! Must not depend on: the shard API; it knows bytes and messages only.

use bytes::{BufMut, Bytes, BytesMut};
use futures::io::{AsyncRead, AsyncReadExt};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::guard::{self, GuardError};
use super::splice::{Placeholders, RecordsPrefix, splice};
use super::versions::{self, is_supported};
use crate::limits::{KAFKA_READ_CHUNK_BYTES, KAFKA_REQUEST_BYTES_MIN};

/// Why a request could not be read or decoded. The connection that sent it is closed (as Kafka
/// does), except for an ApiVersions request at an unknown version, which gets an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The size prefix exceeds the limit (or is negative).
    #[error("request of {size} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Declared size.
        size: i64,
        /// Limit.
        max: usize,
    },
    /// The size prefix is too small to hold a request header.
    #[error("request of {size} bytes is too small for a header")]
    FrameTooSmall {
        /// Declared size.
        size: i64,
    },
    /// The connection closed in the middle of a frame.
    #[error("connection closed after {have} of {size} request bytes")]
    Truncated {
        /// Declared size.
        size: usize,
        /// Bytes received.
        have: usize,
    },
    /// An API key Kafka does not define.
    #[error("unknown api key {0}")]
    UnknownApiKey(i16),
    /// A known API at a version this broker does not implement.
    #[error("unsupported version {version} of {api:?}")]
    UnsupportedVersion {
        /// The API.
        api: ApiKey,
        /// The version asked for.
        version: i16,
    },
    /// The request header does not decode.
    #[error("malformed request header: {0}")]
    Header(String),
    /// The body fails the allocation pre-check.
    #[error("malformed {api:?} v{version} request: {source}")]
    Shape {
        /// The API.
        api: ApiKey,
        /// The version.
        version: i16,
        /// What the pre-check found.
        source: GuardError,
    },
    /// The body does not decode.
    #[error("malformed {api:?} v{version} request: {reason}")]
    Body {
        /// The API.
        api: ApiKey,
        /// The version.
        version: i16,
        /// The decoder's message.
        reason: String,
    },
}

/// An error reading a frame: the socket failed, or the frame is invalid.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The frame is invalid.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Reads one size-prefixed frame. `Ok(None)` is a clean close between frames.
///
/// The declared size is checked against `max_bytes` before anything is allocated; the buffer
/// then holds at most [`KAFKA_READ_CHUNK_BYTES`] or twice the bytes received, whichever is
/// more.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max_bytes: usize,
) -> Result<Option<Bytes>, ReadError> {
    let mut prefix = [0u8; 4];
    let mut have = 0;
    while have < prefix.len() {
        let n = reader.read(&mut prefix[have..]).await?;
        if n == 0 {
            if have == 0 {
                return Ok(None);
            }
            return Err(DecodeError::Truncated { size: 4, have }.into());
        }
        have += n;
    }
    let declared = i32::from_be_bytes(prefix);
    let size = check_frame_size(declared, max_bytes)?;
    // Allocation on the request path: the whole frame at once when it is at most
    // `KAFKA_READ_CHUNK_BYTES` (the common produce request fits), else grown by doubling so
    // that the buffer stays within twice the bytes the peer has actually sent plus one chunk.
    // Each byte is zeroed once, when the buffer grows over it, and the capacity is exactly
    // `size` at the end: a record set appended without a copy keeps this buffer alive in the
    // batch cache, which counts only the record bytes.
    let mut buf: Vec<u8> = Vec::new();
    let mut filled = 0;
    while filled < size {
        if filled == buf.len() {
            let len = (2 * filled).max(KAFKA_READ_CHUNK_BYTES).min(size);
            buf.reserve_exact(len - filled);
            buf.resize(len, 0);
        }
        let n = reader.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(DecodeError::Truncated { size, have: filled }.into());
        }
        filled += n;
        assert!(filled <= buf.len(), "read past the buffer");
    }
    debug_assert_eq!(buf.capacity(), size, "frame buffer holds only the frame");
    assert_eq!(buf.len(), size, "frame read past its declared size");
    Ok(Some(Bytes::from(buf)))
}

/// Validates a declared frame size.
pub fn check_frame_size(declared: i32, max_bytes: usize) -> Result<usize, DecodeError> {
    let size = i64::from(declared);
    if size < 0 || size as u64 > max_bytes as u64 {
        return Err(DecodeError::FrameTooLarge {
            size,
            max: max_bytes,
        });
    }
    if (size as usize) < KAFKA_REQUEST_BYTES_MIN {
        return Err(DecodeError::FrameTooSmall { size });
    }
    Ok(size as usize)
}

/// A decoded request.
#[derive(Debug)]
pub struct Request {
    /// The API.
    pub api: ApiKey,
    /// The request header (version, correlation id, client id).
    pub header: RequestHeader,
    /// The body.
    pub body: RequestKind,
    /// The client's address, set by the connection (group members report it as their host).
    pub peer: Option<std::net::SocketAddr>,
}

/// What a frame turned out to be.
// Moved once per request; boxing the large variant would add an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Decoded {
    /// A request this broker implements.
    Request(Request),
    /// ApiVersions at a version this broker does not speak: answer with a v0 response listing
    /// the supported versions and UNSUPPORTED_VERSION, so the client retries (KIP-511).
    ApiVersionsFallback {
        /// Echoed in the response header.
        correlation_id: i32,
    },
}

/// Decodes a frame (without its size prefix). `Bytes` fields of the body (produce records)
/// are slices of `frame`, not copies.
pub fn decode_request(mut frame: Bytes) -> Result<Decoded, DecodeError> {
    if frame.len() < KAFKA_REQUEST_BYTES_MIN {
        return Err(DecodeError::FrameTooSmall {
            size: frame.len() as i64,
        });
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let api = ApiKey::try_from(key).map_err(|()| DecodeError::UnknownApiKey(key))?;
    if !is_supported(api, version) {
        if api == ApiKey::ApiVersions {
            let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            return Ok(Decoded::ApiVersionsFallback { correlation_id });
        }
        return Err(DecodeError::UnsupportedVersion { api, version });
    }
    let header_version = api.request_header_version(version);
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|e| DecodeError::Header(e.to_string()))?;
    guard::check(api, version, &frame).map_err(|source| DecodeError::Shape {
        api,
        version,
        source,
    })?;
    let body = RequestKind::decode(api, &mut frame, version).map_err(|e| DecodeError::Body {
        api,
        version,
        reason: e.to_string(),
    })?;
    Ok(Decoded::Request(Request {
        api,
        header,
        body,
        peer: None,
    }))
}

/// Why a response could not be encoded (a bug: our own values do not fit the version).
#[derive(Debug, thiserror::Error)]
#[error("cannot encode {api:?} v{version} response: {reason}")]
pub struct EncodeError {
    /// The API.
    pub api: ApiKey,
    /// The version.
    pub version: i16,
    /// The encoder's message.
    pub reason: String,
}

/// Encodes a response frame: size prefix, response header, body. `capacity` is a hint of the
/// body size (fetch responses carry their record bytes), so the buffer is allocated once.
pub fn encode_response(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
    capacity: usize,
) -> Result<Bytes, EncodeError> {
    encode_response_buf(api, version, correlation_id, body, capacity).map(BytesMut::freeze)
}

/// [`encode_response`] for a fetch response whose `records` fields hold `placeholders`: the
/// frame as chunks with the record sets spliced in (see [`super::splice`]).
pub fn encode_response_spliced(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
    capacity: usize,
    placeholders: Placeholders,
) -> Result<Vec<Bytes>, EncodeError> {
    let frame = encode_response_buf(api, version, correlation_id, body, capacity)?;
    let prefix = if version >= 12 {
        RecordsPrefix::Compact
    } else {
        RecordsPrefix::Int32
    };
    splice(frame, prefix, placeholders).map_err(|reason| EncodeError {
        api,
        version,
        reason,
    })
}

fn encode_response_buf(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &ResponseKind,
    capacity: usize,
) -> Result<BytesMut, EncodeError> {
    let mut buf = BytesMut::with_capacity(capacity + 64);
    buf.put_u32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, api.response_header_version(version))
        .map_err(|e| EncodeError {
            api,
            version,
            reason: e.to_string(),
        })?;
    body.encode(&mut buf, version).map_err(|e| EncodeError {
        api,
        version,
        reason: e.to_string(),
    })?;
    let size = u32::try_from(buf.len() - 4).map_err(|_| EncodeError {
        api,
        version,
        reason: "response larger than 4 GiB".into(),
    })?;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf)
}

/// The v0 ApiVersions response for a client that asked with an unsupported version.
pub fn api_versions_fallback(correlation_id: i32) -> Result<Bytes, EncodeError> {
    let body =
        versions::api_versions_response(Some(kafka_protocol::ResponseError::UnsupportedVersion));
    encode_response(
        ApiKey::ApiVersions,
        0,
        correlation_id,
        &ResponseKind::ApiVersions(body),
        512,
    )
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures::io::AsyncRead;

    use super::*;

    /// Hands out its bytes at most `step` at a time, as a socket does.
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.step).min(self.bytes.len() - self.at);
            buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
            self.at += n;
            Poll::Ready(Ok(n))
        }
    }

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut bytes = (body.len() as i32).to_be_bytes().to_vec();
        bytes.extend_from_slice(body);
        bytes
    }

    fn read(bytes: Vec<u8>, step: usize) -> Result<Option<Bytes>, ReadError> {
        let mut reader = Trickle { bytes, at: 0, step };
        sluice_engine::rt::block_on(read_frame(&mut reader, 8 * KAFKA_READ_CHUNK_BYTES))
    }

    // Goal: a frame arrives whole and exact whatever the read sizes, below the one-allocation
    // size, at it, and past it (where the buffer grows by doubling). Method: frames of a
    // counting pattern read 1, 4093 and 1 MiB bytes at a time, compared byte for byte, then
    // a clean close.
    #[test]
    fn frames_arrive_exact_in_any_pieces() {
        for size in [
            8,
            4096,
            KAFKA_READ_CHUNK_BYTES,
            3 * KAFKA_READ_CHUNK_BYTES + 17,
        ] {
            let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            for step in [1, 4093, 1 << 20] {
                if step == 1 && size > 4096 {
                    continue;
                }
                let frame = read(framed(&body), step)
                    .expect("frame")
                    .expect("not closed");
                assert_eq!(frame.len(), size, "size {size} step {step}");
                assert!(
                    frame[..] == body[..],
                    "size {size} step {step}: content differs"
                );
            }
        }
        assert!(read(Vec::new(), 7).expect("clean close").is_none());
    }

    // Goal: a frame cut short is an error naming how much arrived, and a declared size over
    // the limit is refused before its body is read.
    #[test]
    fn short_and_oversized_frames_fail() {
        let mut cut = framed(&vec![5u8; 2 * KAFKA_READ_CHUNK_BYTES]);
        cut.truncate(4 + KAFKA_READ_CHUNK_BYTES + 3);
        match read(cut, 4093) {
            Err(ReadError::Decode(DecodeError::Truncated { size, have })) => {
                assert_eq!(size, 2 * KAFKA_READ_CHUNK_BYTES);
                assert_eq!(have, KAFKA_READ_CHUNK_BYTES + 3);
            }
            other => panic!("expected a truncated frame, got {other:?}"),
        }
        let huge = (8 * KAFKA_READ_CHUNK_BYTES as i32 + 1)
            .to_be_bytes()
            .to_vec();
        assert!(matches!(
            read(huge, 4),
            Err(ReadError::Decode(DecodeError::FrameTooLarge { .. }))
        ));
        assert!(matches!(
            read(vec![0, 0], 4),
            Err(ReadError::Decode(DecodeError::Truncated {
                size: 4,
                have: 2
            }))
        ));
    }
}
