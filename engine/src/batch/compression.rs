//! Compression codecs of RecordBatch v2 records: gzip, snappy, lz4 and zstd.
//!
//! The compressed region of a batch is everything after the 61-byte header: the records, as one
//! stream. The formats are the ones Kafka clients write and read:
//!
//! - gzip: RFC 1952 members (several concatenated members are accepted on read).
//! - snappy: the xerial framing the Java client writes: magic `\x82SNAPPY\0`, version and
//!   compatible-version i32s, then blocks each prefixed by its compressed length (i32). On read
//!   a raw snappy block (as librdkafka writes) is accepted too.
//! - lz4: the standard LZ4 frame format with the settings Kafka uses (independent 64 KiB
//!   blocks, no content size, no checksums besides the header checksum).
//! - zstd: standard zstd frames (concatenated frames accepted on read).
//!
//! Decompression is bounded: it stops with [`CompressionError::TooLarge`] once the output
//! passes the caller's limit (normally [`RECORDS_DECOMPRESSED_BYTES_MAX`]), and its buffer
//! never grows past that limit plus one byte, so a small "zip bomb" cannot exhaust memory.
//! The decoders' own buffers are bounded by their formats, not by the input: lz4 reserves at
//! most two maximum-size blocks (2 x 4 MiB), snappy blocks are checked against the limit
//! before allocating, and zstd's window is capped at 128 MiB of address space of which only
//! what the output touches becomes resident.
//!
//! Main items: [`compress`], [`decompress`], [`CompressionError`].
//!
//! Must not depend on: anything network or protocol specific.

use std::io::{self, Read, Write};

use super::Compression;
#[cfg(doc)]
use crate::limits::RECORDS_DECOMPRESSED_BYTES_MAX;

/// The xerial snappy stream magic, as the Java client writes it.
pub const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\0";
/// Bytes of the xerial header: magic, version (i32), compatible version (i32).
const XERIAL_HEADER_BYTES: usize = XERIAL_MAGIC.len() + 4 + 4;
/// Version and compatible version the Java client (snappy-java) writes.
const XERIAL_VERSION: i32 = 1;
/// Uncompressed bytes per xerial block; snappy-java's default block size.
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;
/// gzip level: the Java client's default (`Deflater.DEFAULT_COMPRESSION` is 6).
const GZIP_LEVEL: u32 = 6;
/// zstd level: the Java client's and librdkafka's default.
const ZSTD_LEVEL: i32 = 3;
/// zstd's own default window limit (128 MiB), kept so that frames from every client (even
/// level 22 without a content size) decode. The window is allocated lazily by the OS; the
/// bytes actually written to it are bounded by the output limit.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// Smallest read step of the bounded decompression loop.
const DECOMPRESS_CHUNK_BYTES_MIN: usize = 8 * 1024;

/// Why records could not be compressed or decompressed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompressionError {
    /// The compressed bytes are not valid for the codec.
    #[error("corrupt {codec:?} data: {reason}")]
    Corrupt {
        /// The codec the batch header names.
        codec: Compression,
        /// What the decoder reported.
        reason: String,
    },
    /// The decompressed records would exceed the limit.
    #[error("{codec:?} data decompresses to more than {limit_bytes} bytes")]
    TooLarge {
        /// The codec the batch header names.
        codec: Compression,
        /// The decompression limit in bytes.
        limit_bytes: usize,
    },
    /// The encoder failed (in memory this means a library error, not bad input).
    #[error("{codec:?} compression failed: {reason}")]
    Compress {
        /// The codec asked for.
        codec: Compression,
        /// What the encoder reported.
        reason: String,
    },
}

/// Appends `input` compressed with `codec` to `out`. `Compression::None` copies it.
pub fn compress(
    codec: Compression,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CompressionError> {
    let failed = |error: &dyn std::fmt::Display| CompressionError::Compress {
        codec,
        reason: error.to_string(),
    };
    let start = out.len();
    match codec {
        Compression::None => out.extend_from_slice(input),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(&mut *out, flate2::Compression::new(GZIP_LEVEL));
            encoder.write_all(input).map_err(|e| failed(&e))?;
            encoder.finish().map_err(|e| failed(&e))?;
        }
        Compression::Snappy => compress_snappy_xerial(input, out).map_err(|e| failed(&e))?,
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut encoder = lz4_flex::frame::FrameEncoder::with_frame_info(info, &mut *out);
            encoder.write_all(input).map_err(|e| failed(&e))?;
            encoder.finish().map_err(|e| failed(&e))?;
        }
        Compression::Zstd => {
            zstd::stream::copy_encode(input, &mut *out, ZSTD_LEVEL).map_err(|e| failed(&e))?;
        }
    }
    assert!(out.len() >= start, "compress shrank its output buffer");
    Ok(())
}

/// Writes the xerial framing: header, then one length-prefixed raw snappy block per 32 KiB.
fn compress_snappy_xerial(input: &[u8], out: &mut Vec<u8>) -> Result<(), snap::Error> {
    out.extend_from_slice(XERIAL_MAGIC);
    out.extend_from_slice(&XERIAL_VERSION.to_be_bytes());
    out.extend_from_slice(&XERIAL_VERSION.to_be_bytes());
    let mut encoder = snap::raw::Encoder::new();
    for block in input.chunks(XERIAL_BLOCK_BYTES) {
        let length_at = out.len();
        out.extend_from_slice(&[0; 4]);
        let block_at = out.len();
        out.resize(block_at + snap::raw::max_compress_len(block.len()), 0);
        let written = encoder.compress(block, &mut out[block_at..])?;
        out.truncate(block_at + written);
        let length = i32::try_from(written).expect("a 32 KiB block compresses below 2 GiB");
        out[length_at..block_at].copy_from_slice(&length.to_be_bytes());
    }
    Ok(())
}

/// Appends `input` decompressed with `codec` to `out`, failing once more than `limit_bytes`
/// would be appended. `out` never grows by more than `limit_bytes + 1` bytes.
pub fn decompress(
    codec: Compression,
    input: &[u8],
    limit_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), CompressionError> {
    let start = out.len();
    let corrupt = |error: &dyn std::fmt::Display| CompressionError::Corrupt {
        codec,
        reason: error.to_string(),
    };
    match codec {
        Compression::None => {
            if input.len() > limit_bytes {
                return Err(CompressionError::TooLarge { codec, limit_bytes });
            }
            out.extend_from_slice(input);
        }
        Compression::Gzip => {
            read_bounded(
                codec,
                flate2::read::MultiGzDecoder::new(input),
                limit_bytes,
                out,
            )?;
        }
        Compression::Snappy => decompress_snappy(input, limit_bytes, out)?,
        Compression::Lz4 => {
            read_bounded(
                codec,
                lz4_flex::frame::FrameDecoder::new(input),
                limit_bytes,
                out,
            )?;
        }
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::new(input).map_err(|e| corrupt(&e))?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| corrupt(&e))?;
            read_bounded(codec, decoder, limit_bytes, out)?;
        }
    }
    assert!(
        out.len() - start <= limit_bytes,
        "decompressed past the limit"
    );
    Ok(())
}

/// Reads `reader` to its end into `out`, growing `out` by doubling but never past
/// `limit_bytes + 1` new bytes: reading one byte past the limit proves the output too large.
/// Each new byte of `out` is zero-filled once, however short the reader's reads are.
fn read_bounded(
    codec: Compression,
    mut reader: impl Read,
    limit_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), CompressionError> {
    let start = out.len();
    let mut filled = start;
    // Bounded: every iteration ends, or appends at least one byte, or grows the buffer, and
    // the output is capped at limit_bytes + 1 bytes.
    loop {
        assert!(filled <= out.len(), "filled past the buffer");
        if filled == out.len() {
            let produced = filled - start;
            if produced > limit_bytes {
                out.truncate(start);
                return Err(CompressionError::TooLarge { codec, limit_bytes });
            }
            let room = limit_bytes + 1 - produced;
            let step = produced.max(DECOMPRESS_CHUNK_BYTES_MIN).min(room);
            out.reserve_exact(step);
            out.resize(filled + step, 0);
        }
        match reader.read(&mut out[filled..]) {
            Ok(0) => {
                out.truncate(filled);
                return Ok(());
            }
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                out.truncate(start);
                return Err(CompressionError::Corrupt {
                    codec,
                    reason: error.to_string(),
                });
            }
        }
    }
}

/// Decodes xerial-framed snappy, or a single raw snappy block when the magic is absent.
fn decompress_snappy(
    input: &[u8],
    limit_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), CompressionError> {
    let start = out.len();
    let result = if input.starts_with(XERIAL_MAGIC) {
        decompress_snappy_xerial(input, limit_bytes, out)
    } else {
        decompress_snappy_block(input, limit_bytes, out)
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn decompress_snappy_xerial(
    input: &[u8],
    limit_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), CompressionError> {
    let corrupt = |reason: &str| CompressionError::Corrupt {
        codec: Compression::Snappy,
        reason: reason.to_owned(),
    };
    if input.len() < XERIAL_HEADER_BYTES {
        return Err(corrupt("truncated xerial header"));
    }
    // Version fields are not checked: snappy-java ignores them too.
    let mut rest = &input[XERIAL_HEADER_BYTES..];
    let start = out.len();
    // Bounded by the input: every iteration consumes at least the 4-byte length prefix.
    while !rest.is_empty() {
        let Some((length_bytes, after)) = rest.split_first_chunk::<4>() else {
            return Err(corrupt("truncated xerial block length"));
        };
        let length = i32::from_be_bytes(*length_bytes);
        let length = usize::try_from(length).map_err(|_| corrupt("negative xerial block"))?;
        if length > after.len() {
            return Err(corrupt("xerial block longer than the remaining input"));
        }
        let (block, after) = after.split_at(length);
        let budget = limit_bytes - (out.len() - start);
        decompress_snappy_block(block, budget, out).map_err(|error| match error {
            CompressionError::TooLarge { codec, .. } => {
                CompressionError::TooLarge { codec, limit_bytes }
            }
            other => other,
        })?;
        rest = after;
    }
    Ok(())
}

/// Decodes one raw snappy block, checking its declared length against `limit_bytes` before
/// allocating.
fn decompress_snappy_block(
    block: &[u8],
    limit_bytes: usize,
    out: &mut Vec<u8>,
) -> Result<(), CompressionError> {
    let codec = Compression::Snappy;
    let corrupt = |error: snap::Error| CompressionError::Corrupt {
        codec,
        reason: error.to_string(),
    };
    let length = snap::raw::decompress_len(block).map_err(corrupt)?;
    if length > limit_bytes {
        return Err(CompressionError::TooLarge { codec, limit_bytes });
    }
    let at = out.len();
    out.resize(at + length, 0);
    let written = snap::raw::Decoder::new()
        .decompress(block, &mut out[at..])
        .map_err(corrupt)?;
    if written != length {
        return Err(CompressionError::Corrupt {
            codec,
            reason: format!("snappy block declared {length} bytes, decoded {written}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn sample(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / 1000) as u8)
            .collect()
    }

    // Goal: every codec round-trips, including empty input and inputs spanning several blocks.
    // Method: compress then decompress with a generous limit, appending after existing bytes.
    #[test]
    fn round_trip_every_codec() {
        for codec in CODECS {
            for len in [
                0,
                1,
                100,
                XERIAL_BLOCK_BYTES,
                3 * XERIAL_BLOCK_BYTES + 17,
                300_000,
            ] {
                let input = sample(len);
                let mut compressed = vec![0xee];
                compress(codec, &input, &mut compressed).expect("compress");
                assert_eq!(compressed[0], 0xee, "{codec:?}: compress kept the prefix");
                let mut out = vec![0xdd];
                decompress(codec, &compressed[1..], len, &mut out).expect("decompress");
                assert_eq!(out[0], 0xdd, "{codec:?}: decompress kept the prefix");
                assert!(out[1..] == input[..], "{codec:?} len {len} round trip");
            }
        }
    }

    // Goal: a zip bomb stops at the limit with a typed error and bounded memory.
    // Method: compress 4 MiB of zeros, decompress with a 64 KiB limit, check the error, that
    // `out` is left as it was and that its capacity never exceeded limit + 1 by much.
    #[test]
    fn decompression_stops_at_the_limit() {
        let zeros = vec![0_u8; 4 << 20];
        let limit = 64 * 1024;
        for codec in CODECS {
            let mut compressed = Vec::new();
            compress(codec, &zeros, &mut compressed).expect("compress");
            let mut out = Vec::new();
            let error = decompress(codec, &compressed, limit, &mut out).expect_err("too large");
            assert_eq!(
                error,
                CompressionError::TooLarge {
                    codec,
                    limit_bytes: limit
                }
            );
            assert!(
                out.is_empty(),
                "{codec:?}: output truncated back after an error"
            );
            assert!(
                out.capacity() <= 2 * (limit + 1),
                "{codec:?}: capacity {}",
                out.capacity()
            );
            // Exactly at the limit is fine.
            let mut out = Vec::new();
            decompress(codec, &compressed, zeros.len(), &mut out).expect("at the limit");
            assert_eq!(out.len(), zeros.len());
        }
    }

    // Goal: the xerial framing is byte-exact with what snappy-java writes, and raw snappy (as
    // librdkafka writes) is accepted too.
    // Method: check the header bytes and the first block length; decode a raw block.
    #[test]
    fn snappy_xerial_framing_and_raw_blocks() {
        let input = sample(40_000);
        let mut framed = Vec::new();
        compress(Compression::Snappy, &input, &mut framed).expect("compress");
        assert_eq!(&framed[..16], b"\x82SNAPPY\0\0\0\0\x01\0\0\0\x01");
        let first = i32::from_be_bytes(framed[16..20].try_into().expect("4 bytes"));
        let first_block = &framed[20..20 + first as usize];
        let decoded = snap::raw::Decoder::new()
            .decompress_vec(first_block)
            .expect("raw block");
        assert_eq!(decoded, input[..XERIAL_BLOCK_BYTES]);

        let raw = snap::raw::Encoder::new()
            .compress_vec(&input)
            .expect("raw compress");
        let mut out = Vec::new();
        decompress(Compression::Snappy, &raw, input.len(), &mut out).expect("raw decode");
        assert_eq!(out, input);
    }

    // Goal: corrupt input is a typed error for every codec, never a panic.
    // Method: truncate and garble valid compressed data.
    #[test]
    fn corrupt_input_is_an_error() {
        let input = sample(10_000);
        for codec in CODECS.into_iter().skip(1) {
            let mut compressed = Vec::new();
            compress(codec, &input, &mut compressed).expect("compress");
            let truncated = &compressed[..compressed.len() / 2];
            let mut out = Vec::new();
            let error = decompress(codec, truncated, 1 << 20, &mut out);
            assert!(
                matches!(error, Err(CompressionError::Corrupt { .. })),
                "{codec:?} {error:?}"
            );
            assert!(out.is_empty());
            let garbage = vec![0x5a_u8; 64];
            let error = decompress(codec, &garbage, 1 << 20, &mut out);
            assert!(
                matches!(error, Err(CompressionError::Corrupt { .. })),
                "{codec:?} {error:?}"
            );
        }
        // A xerial block whose length points past the input.
        let mut framed = b"\x82SNAPPY\0\0\0\0\x01\0\0\0\x01".to_vec();
        framed.extend_from_slice(&1000_i32.to_be_bytes());
        framed.extend_from_slice(&[0; 10]);
        let error = decompress(Compression::Snappy, &framed, 1 << 20, &mut Vec::new());
        assert!(
            matches!(error, Err(CompressionError::Corrupt { .. })),
            "{error:?}"
        );
    }
}
