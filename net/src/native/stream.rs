//! Frames on quinn streams: each request and its answer travel on one bidirectional stream,
//! one frame each way, and each side finishes its half after its frame.
//!
//! Main items: [`read_frame`] (or [`read_prefix`] then [`read_frame_body`], for a reader that
//! budgets memory by the declared lengths), [`write_frame`] / [`write_frame_chunks`],
//! [`answer_frame_error`] (the answer a server sends to a request that failed to decode: an
//! error header, or a version rejection).
//!
//! Must not depend on: the shard runtime by name (quinn's futures run on whatever runtime the
//! endpoint was built with), storage.

use bytes::{Bytes, BytesMut};
use rkyv::util::AlignedVec;

use crate::native::frame::{
    self, EncodeError, Frame, FrameError, FrameHeader, PREFIX_BYTES, Prefix,
};
use crate::native::messages::Response;

/// Application error code with which a server stops reading a request it has rejected
/// (QUIC `STOP_SENDING`), so the client stops sending the rest of it.
pub const STOP_REJECTED: u32 = 1;

/// Why a frame could not be read from a stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadFrameError {
    /// The stream ended before a whole frame arrived.
    #[error("stream ended after {bytes} bytes, before a whole frame")]
    Truncated {
        /// Bytes of the frame received.
        bytes: usize,
    },
    /// The stream failed (connection lost, reset by the peer).
    #[error("cannot read frame: {0}")]
    Stream(#[from] quinn::ReadError),
    /// The bytes are not a valid frame, or the peer rejected our version.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Why a frame could not be written to a stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteFrameError {
    /// The frame exceeds the limits.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The stream failed (connection lost, stopped by the peer).
    #[error("cannot write frame: {0}")]
    Stream(#[from] quinn::WriteError),
    /// The stream was already finished or reset.
    #[error("cannot finish the stream: {0}")]
    Closed(#[from] quinn::ClosedStream),
}

/// Reads one frame from `recv`.
///
/// The prefix is read and checked first, so lengths over the limits are refused before any
/// buffer is sized from them. The header is read straight into an aligned buffer (no copy
/// for rkyv) and the payload into one buffer of the declared size.
///
/// Memory: up to one header and one payload at their limits per call; callers that read many
/// streams at once must bound their sum (a per-connection byte budget), for which they read
/// the prefix ([`read_prefix`]) and the rest ([`read_frame_body`]) separately.
pub async fn read_frame<H: FrameHeader>(
    recv: &mut quinn::RecvStream,
) -> Result<Frame<H>, ReadFrameError> {
    let prefix = read_prefix(recv).await?;
    read_frame_body(recv, &prefix).await
}

/// Reads and checks the fixed prefix of a frame (magic, version, reserved bits, lengths
/// within the limits). Nothing is allocated from the declared lengths.
pub async fn read_prefix(recv: &mut quinn::RecvStream) -> Result<Prefix, ReadFrameError> {
    let mut prefix_bytes = [0u8; PREFIX_BYTES];
    read_exact(recv, &mut prefix_bytes, 0).await?;
    Ok(Prefix::parse(&prefix_bytes)?)
}

/// Reads the header and payload that follow `prefix` (as returned by [`read_prefix`] on the
/// same stream), then checks the CRC and validates the header.
///
/// Allocates exactly the declared lengths, which [`Prefix::parse`] bounded by the limits.
pub async fn read_frame_body<H: FrameHeader>(
    recv: &mut quinn::RecvStream,
    prefix: &Prefix,
) -> Result<Frame<H>, ReadFrameError> {
    let mut header = AlignedVec::<16>::with_capacity(prefix.header_bytes as usize);
    read_into(recv, prefix.header_bytes as usize, PREFIX_BYTES, |chunk| {
        header.extend_from_slice(chunk)
    })
    .await?;
    // Allocating by the declared length is bounded by the limits Prefix::parse checked.
    let mut payload = BytesMut::with_capacity(prefix.payload_bytes as usize);
    let read = PREFIX_BYTES + header.len();
    read_into(recv, prefix.payload_bytes as usize, read, |chunk| {
        payload.extend_from_slice(chunk)
    })
    .await?;
    Ok(Frame::from_parts(prefix, &header, payload.freeze())?)
}

async fn read_exact(
    recv: &mut quinn::RecvStream,
    buffer: &mut [u8],
    read_before: usize,
) -> Result<(), ReadFrameError> {
    let mut filled = 0;
    while filled < buffer.len() {
        match recv.read(&mut buffer[filled..]).await? {
            Some(count) => filled += count,
            None => {
                return Err(ReadFrameError::Truncated {
                    bytes: read_before + filled,
                });
            }
        }
    }
    Ok(())
}

/// Reads exactly `len` bytes from `recv` in quinn's own chunks, handing each to `sink`.
async fn read_into(
    recv: &mut quinn::RecvStream,
    len: usize,
    read_before: usize,
    mut sink: impl FnMut(&[u8]),
) -> Result<(), ReadFrameError> {
    let mut remaining = len;
    while remaining > 0 {
        match recv.read_chunk(remaining, true).await? {
            Some(chunk) => {
                assert!(
                    chunk.bytes.len() <= remaining,
                    "quinn honours the chunk bound"
                );
                remaining -= chunk.bytes.len();
                sink(&chunk.bytes);
            }
            None => {
                return Err(ReadFrameError::Truncated {
                    bytes: read_before + len - remaining,
                });
            }
        }
    }
    Ok(())
}

/// Writes one frame to `send` and finishes the stream. The payload is handed to quinn
/// without a copy.
pub async fn write_frame<H: FrameHeader>(
    send: &mut quinn::SendStream,
    header: &H,
    payload: Bytes,
) -> Result<(), WriteFrameError> {
    write_frame_chunks(send, header, vec![payload]).await
}

/// Writes one frame whose payload is `chunks` concatenated (stored record batches, for
/// example) and finishes the stream. The chunks are handed to quinn as they are: no copy.
pub async fn write_frame_chunks<H: FrameHeader>(
    send: &mut quinn::SendStream,
    header: &H,
    mut chunks: Vec<Bytes>,
) -> Result<(), WriteFrameError> {
    let head = frame::encode_head_chunks(header, &chunks)?.freeze();
    chunks.insert(0, head);
    send.write_all_chunks(&mut chunks).await?;
    send.finish()?;
    Ok(())
}

/// Answers a request that failed to decode with `error`, on the request's own stream: a
/// version-rejection frame for an unsupported version, a `Response::Error` otherwise. Stops
/// the receiving half, so the client does not keep sending the rest of a rejected request.
///
/// Only the request fails: the connection and its other streams carry on.
pub async fn answer_frame_error(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    error: &FrameError,
) -> Result<(), WriteFrameError> {
    // Stopping an already finished stream is not an error worth reporting.
    let _ = recv.stop(quinn::VarInt::from_u32(STOP_REJECTED));
    if let FrameError::UnsupportedVersion { version } = error {
        send.write_all(&frame::encode_rejection(*version)).await?;
        send.finish()?;
        return Ok(());
    }
    let header = Response::Error {
        code: error.error_code(),
        message: error.to_string(),
    };
    write_frame(send, &header, Bytes::new()).await
}
