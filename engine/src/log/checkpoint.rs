//! The partition checkpoint (`partition.checkpoint`: log start offset, high watermark, recovery
//! point and the table of sealed segments) and the clean-shutdown marker (`clean_shutdown`:
//! the active segment's state at close, with the partial last blocks of its two indexes) and
//! the leader-epoch checkpoint (`leader-epoch.checkpoint`: the entries of the epoch cache). The
//! checkpoints are replaced atomically (a temporary file, made durable, renamed over the old
//! one); the marker is written in place. All carry a CRC-32C; byte layouts in
//! `engine/FORMAT.md`.
//!
//! Must not depend on: the write pipeline.

use crate::limits::DIO_ALIGN_BYTES;
use crate::log::epoch::{EpochCache, EpochEntry};
use crate::types::{LeaderEpoch, Offset, RelativeOffset, TimestampMs};

/// File name of the partition checkpoint.
pub(crate) const CHECKPOINT_FILE: &str = "partition.checkpoint";
/// File name of the clean-shutdown marker.
pub(crate) const CLEAN_SHUTDOWN_FILE: &str = "clean_shutdown";
/// File name of the leader-epoch checkpoint.
pub(crate) const EPOCH_FILE: &str = "leader-epoch.checkpoint";

const CHECKPOINT_MAGIC: [u8; 4] = *b"SLPC";
const CLEAN_MAGIC: [u8; 4] = *b"SLCS";
const EPOCH_MAGIC: [u8; 4] = *b"SLLE";
const EPOCH_ROW_BYTES: usize = 12;
/// The only format version this code writes and reads.
pub(crate) const FORMAT_VERSION: u16 = 1;
const HEADER_BYTES: usize = 12;
const CRC_BYTES: usize = 4;
const SEGMENT_ROW_BYTES: usize = 40;
const CHECKPOINT_FIXED_BYTES: usize = HEADER_BYTES + 28;
const CLEAN_BODY_BYTES: usize = 96;
/// Epoch entries a marker carries at most; a close with more in its active segment writes the
/// epoch file instead (a leader change per few batches: not a steady state).
pub(crate) const CLEAN_EPOCHS_MAX: usize = 64;
/// The largest marker: the fixed part, the epoch entries and two index tails of less than a
/// block each.
pub(crate) const CLEAN_BYTES_MAX: usize = HEADER_BYTES
    + CLEAN_BODY_BYTES
    + CLEAN_EPOCHS_MAX * EPOCH_ROW_BYTES
    + 2 * (DIO_ALIGN_BYTES - 1)
    + CRC_BYTES;

const _: () = assert!(CHECKPOINT_FIXED_BYTES == 40);
const _: () = assert!(CLEAN_BYTES_MAX <= 3 * DIO_ALIGN_BYTES);

/// One sealed segment as the checkpoint records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SealedRow {
    pub base: Offset,
    pub end: Offset,
    pub size: u64,
    pub max_timestamp: Option<TimestampMs>,
    pub index_bytes: u32,
    pub time_index_bytes: u32,
}

/// The partition checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub log_start: Offset,
    pub high_watermark: Offset,
    /// Base offset of the first segment not in `sealed`: everything below is sealed and synced.
    pub recovery_point: Offset,
    pub sealed: Vec<SealedRow>,
}

/// The active segment's state at a clean close: what a clean open needs beyond the checkpoint
/// and the epoch file, so that a close writes this one small file in place and nothing else
/// unless the checkpoint changed in more than its high watermark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CleanShutdown {
    pub active_base: Offset,
    pub log_end: Offset,
    pub active_size: u64,
    pub index_bytes: u32,
    pub time_index_bytes: u32,
    pub max: Option<(TimestampMs, Offset)>,
    pub first_max_timestamp: Option<TimestampMs>,
    pub last_indexed_position: u64,
    pub last_relative: Option<RelativeOffset>,
    pub last_time_entry: Option<TimestampMs>,
    /// The high watermark at close (the checkpoint's may be older).
    pub high_watermark: Offset,
    /// The epoch cache's entries that start in the active segment (at or after
    /// `active_base`); those below are in the epoch file. `None`: too many to carry, and the
    /// epoch file holds them all.
    pub epochs: Option<Vec<EpochEntry>>,
    /// The offset index's bytes past its last whole block (`index_bytes % block` of them):
    /// the index file holds only the whole blocks.
    pub index_tail: Vec<u8>,
    /// The same for the time index.
    pub time_index_tail: Vec<u8>,
}

/// Why a checkpoint or marker could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Wrong magic, bad length or CRC: the file is damaged (or from a crash mid-write of a
    /// file that is not replaced atomically, which cannot happen to these).
    Damaged(&'static str),
    /// A format version this code does not know.
    Version(u16),
}

struct Writer(Vec<u8>);

impl Writer {
    fn new(magic: [u8; 4], flags: u16) -> Writer {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&magic);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        Writer(out)
    }
    fn i64(&mut self, value: i64) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }
    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }
    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }
    fn i32(&mut self, value: i32) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }
    fn finish(mut self) -> Vec<u8> {
        let length = u32::try_from(self.0.len() + CRC_BYTES).expect("checkpoint fits in u32");
        self.0[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&self.0);
        self.0.extend_from_slice(&crc.to_be_bytes());
        self.0
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn i64(&mut self) -> i64 {
        let value = i64::from_be_bytes(
            self.bytes[self.at..self.at + 8]
                .try_into()
                .expect("8 bytes"),
        );
        self.at += 8;
        value
    }
    fn u64(&mut self) -> u64 {
        let value = u64::from_be_bytes(
            self.bytes[self.at..self.at + 8]
                .try_into()
                .expect("8 bytes"),
        );
        self.at += 8;
        value
    }
    fn u32(&mut self) -> u32 {
        let value = u32::from_be_bytes(
            self.bytes[self.at..self.at + 4]
                .try_into()
                .expect("4 bytes"),
        );
        self.at += 4;
        value
    }
    fn i32(&mut self) -> i32 {
        i32::from_be_bytes(self.u32().to_be_bytes())
    }
}

/// Checks magic, version, length and CRC; returns the flags and a reader after the header.
fn open_record<'a>(
    bytes: &'a [u8],
    magic: [u8; 4],
    body_bytes_min: usize,
) -> Result<(u16, Reader<'a>), DecodeError> {
    if bytes.len() < HEADER_BYTES + CRC_BYTES || bytes[..4] != magic {
        return Err(DecodeError::Damaged("bad magic"));
    }
    let version = u16::from_be_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(DecodeError::Version(version));
    }
    let flags = u16::from_be_bytes([bytes[6], bytes[7]]);
    let length = u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
    if length > bytes.len() || length < HEADER_BYTES + body_bytes_min + CRC_BYTES {
        return Err(DecodeError::Damaged("bad length"));
    }
    let stored = u32::from_be_bytes(
        bytes[length - CRC_BYTES..length]
            .try_into()
            .expect("4 bytes"),
    );
    if crc32c::crc32c(&bytes[..length - CRC_BYTES]) != stored {
        return Err(DecodeError::Damaged("crc mismatch"));
    }
    Ok((
        flags,
        Reader {
            bytes: &bytes[..length - CRC_BYTES],
            at: HEADER_BYTES,
        },
    ))
}

fn optional_timestamp(flags: u16, bit: u16, value: i64) -> Option<TimestampMs> {
    (flags & bit != 0).then_some(TimestampMs(value))
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Writer::new(CHECKPOINT_MAGIC, 0);
        out.i64(self.log_start.0);
        out.i64(self.high_watermark.0);
        out.i64(self.recovery_point.0);
        out.u32(u32::try_from(self.sealed.len()).expect("segment count fits in u32"));
        for row in &self.sealed {
            out.i64(row.base.0);
            out.i64(row.end.0);
            out.u64(row.size);
            out.i64(row.max_timestamp.map_or(i64::MIN, |ts| ts.0));
            out.u32(row.index_bytes);
            out.u32(row.time_index_bytes);
        }
        out.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, DecodeError> {
        let (_flags, mut reader) = open_record(bytes, CHECKPOINT_MAGIC, 28)?;
        let log_start = Offset(reader.i64());
        let high_watermark = Offset(reader.i64());
        let recovery_point = Offset(reader.i64());
        let count = reader.u32() as usize;
        if reader.bytes.len() != CHECKPOINT_FIXED_BYTES + count * SEGMENT_ROW_BYTES {
            return Err(DecodeError::Damaged("segment table length"));
        }
        let mut sealed = Vec::with_capacity(count);
        for _ in 0..count {
            let base = Offset(reader.i64());
            let end = Offset(reader.i64());
            let size = reader.u64();
            let max = reader.i64();
            sealed.push(SealedRow {
                base,
                end,
                size,
                // i64::MIN marks a segment without batches' timestamps (never written by a
                // sealed segment with batches, whose max timestamp is a batch field).
                max_timestamp: (max != i64::MIN).then_some(TimestampMs(max)),
                index_bytes: reader.u32(),
                time_index_bytes: reader.u32(),
            });
        }
        Ok(Checkpoint {
            log_start,
            high_watermark,
            recovery_point,
            sealed,
        })
    }
}

/// Encodes the leader-epoch checkpoint.
pub(crate) fn encode_epochs(entries: &[EpochEntry]) -> Vec<u8> {
    let mut out = Writer::new(EPOCH_MAGIC, 0);
    out.u32(u32::try_from(entries.len()).expect("epoch count fits in u32"));
    for entry in entries {
        out.i32(entry.epoch.0);
        out.i64(entry.start_offset.0);
    }
    out.finish()
}

/// Decodes the leader-epoch checkpoint; entries that break the cache's invariant (epochs and
/// starts strictly increasing, none negative) make it damaged.
pub(crate) fn decode_epochs(bytes: &[u8]) -> Result<EpochCache, DecodeError> {
    let (_flags, mut reader) = open_record(bytes, EPOCH_MAGIC, 4)?;
    let count = reader.u32() as usize;
    if reader.bytes.len() != HEADER_BYTES + 4 + count * EPOCH_ROW_BYTES {
        return Err(DecodeError::Damaged("epoch table length"));
    }
    let entries = (0..count)
        .map(|_| EpochEntry {
            epoch: LeaderEpoch(reader.i32()),
            start_offset: Offset(reader.i64()),
        })
        .collect();
    EpochCache::from_entries(entries).ok_or(DecodeError::Damaged("epochs out of order"))
}

const HAS_MAX: u16 = 1;
const HAS_FIRST_MAX: u16 = 2;
const HAS_LAST_RELATIVE: u16 = 4;
const HAS_LAST_TIME_ENTRY: u16 = 8;
/// The marker has this layout: high watermark, epoch entries and the indexes' partial last
/// blocks (always set by this version; a marker without it, from before, is treated as absent).
const HAS_CLOSE_STATE: u16 = 16;
/// The epoch file holds every epoch entry; the marker carries none.
const EPOCHS_IN_FILE: u16 = 32;

/// The length of an index's partial last block when the index is `bytes` long.
pub(crate) fn tail_len(bytes: u32) -> usize {
    bytes as usize % DIO_ALIGN_BYTES
}

impl CleanShutdown {
    pub fn encode(&self) -> Vec<u8> {
        assert_eq!(
            self.index_tail.len(),
            tail_len(self.index_bytes),
            "offset index tail"
        );
        assert_eq!(
            self.time_index_tail.len(),
            tail_len(self.time_index_bytes),
            "time index tail"
        );
        let mut flags = HAS_CLOSE_STATE;
        for (present, bit) in [
            (self.epochs.is_none(), EPOCHS_IN_FILE),
            (self.max.is_some(), HAS_MAX),
            (self.first_max_timestamp.is_some(), HAS_FIRST_MAX),
            (self.last_relative.is_some(), HAS_LAST_RELATIVE),
            (self.last_time_entry.is_some(), HAS_LAST_TIME_ENTRY),
        ] {
            if present {
                flags |= bit;
            }
        }
        let mut out = Writer::new(CLEAN_MAGIC, flags);
        out.i64(self.active_base.0);
        out.i64(self.log_end.0);
        out.u64(self.active_size);
        out.u32(self.index_bytes);
        out.u32(self.time_index_bytes);
        let (max, max_offset) = self.max.map_or((0, 0), |(ts, offset)| (ts.0, offset.0));
        out.i64(max);
        out.i64(max_offset);
        out.i64(self.first_max_timestamp.map_or(0, |ts| ts.0));
        out.u64(self.last_indexed_position);
        out.u32(self.last_relative.map_or(0, |relative| relative.0));
        out.u32(0);
        out.i64(self.last_time_entry.map_or(0, |ts| ts.0));
        out.i64(self.high_watermark.0);
        let epochs = self.epochs.as_deref().unwrap_or_default();
        assert!(epochs.len() <= CLEAN_EPOCHS_MAX, "marker epochs bounded");
        out.u32(u32::try_from(epochs.len()).expect("bounded"));
        out.u32(0);
        for entry in epochs {
            out.i32(entry.epoch.0);
            out.i64(entry.start_offset.0);
        }
        out.0.extend_from_slice(&self.index_tail);
        out.0.extend_from_slice(&self.time_index_tail);
        let encoded = out.finish();
        assert_eq!(
            encoded.len(),
            HEADER_BYTES
                + CLEAN_BODY_BYTES
                + epochs.len() * EPOCH_ROW_BYTES
                + self.index_tail.len()
                + self.time_index_tail.len()
                + CRC_BYTES
        );
        assert!(encoded.len() <= CLEAN_BYTES_MAX, "marker fits its bound");
        encoded
    }

    pub fn decode(bytes: &[u8]) -> Result<CleanShutdown, DecodeError> {
        let (flags, mut reader) = open_record(bytes, CLEAN_MAGIC, CLEAN_BODY_BYTES)?;
        let active_base = Offset(reader.i64());
        let log_end = Offset(reader.i64());
        let active_size = reader.u64();
        let index_bytes = reader.u32();
        let time_index_bytes = reader.u32();
        let max = reader.i64();
        let max_offset = reader.i64();
        let first_max = reader.i64();
        let last_indexed_position = reader.u64();
        let last_relative = reader.u32();
        let _reserved = reader.u32();
        let last_time_entry = reader.i64();
        if flags & HAS_CLOSE_STATE == 0 {
            return Err(DecodeError::Damaged("marker of an older layout"));
        }
        let high_watermark = Offset(reader.i64());
        let epoch_count = reader.u32() as usize;
        let _reserved = reader.u32();
        let (index_tail_len, time_tail_len) = (tail_len(index_bytes), tail_len(time_index_bytes));
        if epoch_count > CLEAN_EPOCHS_MAX
            || (flags & EPOCHS_IN_FILE != 0 && epoch_count > 0)
            || reader.bytes.len()
                != reader.at + epoch_count * EPOCH_ROW_BYTES + index_tail_len + time_tail_len
        {
            return Err(DecodeError::Damaged("marker length"));
        }
        let entries: Vec<EpochEntry> = (0..epoch_count)
            .map(|_| EpochEntry {
                epoch: LeaderEpoch(reader.i32()),
                start_offset: Offset(reader.i64()),
            })
            .collect();
        if EpochCache::from_entries(entries.clone()).is_none()
            || entries.iter().any(|entry| entry.start_offset < active_base)
        {
            return Err(DecodeError::Damaged("marker epochs out of order"));
        }
        let epochs = (flags & EPOCHS_IN_FILE == 0).then_some(entries);
        let index_tail = reader.bytes[reader.at..reader.at + index_tail_len].to_vec();
        let time_index_tail = reader.bytes[reader.at + index_tail_len..].to_vec();
        Ok(CleanShutdown {
            active_base,
            log_end,
            active_size,
            index_bytes,
            time_index_bytes,
            max: (flags & HAS_MAX != 0).then_some((TimestampMs(max), Offset(max_offset))),
            first_max_timestamp: optional_timestamp(flags, HAS_FIRST_MAX, first_max),
            last_indexed_position,
            last_relative: (flags & HAS_LAST_RELATIVE != 0)
                .then_some(RelativeOffset(last_relative)),
            last_time_entry: optional_timestamp(flags, HAS_LAST_TIME_ENTRY, last_time_entry),
            high_watermark,
            epochs,
            index_tail,
            time_index_tail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: both records round-trip, and any flipped byte or wrong version is rejected.
    #[test]
    fn round_trip_and_damage() {
        let checkpoint = Checkpoint {
            log_start: Offset(5),
            high_watermark: Offset(90),
            recovery_point: Offset(80),
            sealed: vec![SealedRow {
                base: Offset(0),
                end: Offset(80),
                size: 12_345,
                max_timestamp: Some(TimestampMs(-1)),
                index_bytes: 16,
                time_index_bytes: 24,
            }],
        };
        let bytes = checkpoint.encode();
        assert_eq!(Checkpoint::decode(&bytes), Ok(checkpoint.clone()));
        let mut padded = bytes.clone();
        padded.resize(4096, 0);
        assert_eq!(Checkpoint::decode(&padded), Ok(checkpoint));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(
                Checkpoint::decode(&damaged).is_err(),
                "flip at {at} accepted"
            );
        }
        let clean = CleanShutdown {
            active_base: Offset(80),
            log_end: Offset(95),
            active_size: 999,
            index_bytes: 8,
            time_index_bytes: 0,
            max: Some((TimestampMs(7), Offset(90))),
            first_max_timestamp: None,
            last_indexed_position: 500,
            last_relative: Some(RelativeOffset(3)),
            last_time_entry: None,
            high_watermark: Offset(93),
            epochs: Some(vec![EpochEntry {
                epoch: LeaderEpoch(2),
                start_offset: Offset(81),
            }]),
            index_tail: vec![7; 8],
            time_index_tail: Vec::new(),
        };
        let bytes = clean.encode();
        assert_eq!(CleanShutdown::decode(&bytes), Ok(clean.clone()));
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x10;
            assert!(
                CleanShutdown::decode(&damaged).is_err(),
                "marker flip at {at} accepted"
            );
        }
        let in_file = CleanShutdown {
            epochs: None,
            ..clean.clone()
        };
        assert_eq!(CleanShutdown::decode(&in_file.encode()), Ok(in_file));
        let full = CleanShutdown {
            index_bytes: 4096 + 4088,
            time_index_bytes: 4095,
            epochs: Some(
                (0..CLEAN_EPOCHS_MAX)
                    .map(|i| EpochEntry {
                        epoch: LeaderEpoch(i as i32),
                        start_offset: Offset(80 + i as i64),
                    })
                    .collect(),
            ),
            index_tail: vec![1; 4088],
            time_index_tail: vec![2; 4095],
            ..clean
        };
        let bytes = full.encode();
        assert_eq!(bytes.len(), CLEAN_BYTES_MAX - 7);
        assert_eq!(CleanShutdown::decode(&bytes), Ok(full));
        let epochs = [
            EpochEntry {
                epoch: LeaderEpoch(0),
                start_offset: Offset(0),
            },
            EpochEntry {
                epoch: LeaderEpoch(4),
                start_offset: Offset(77),
            },
        ];
        let encoded = encode_epochs(&epochs);
        assert_eq!(
            decode_epochs(&encoded).map(|c| c.entries().to_vec()),
            Ok(epochs.to_vec())
        );
        for at in 0..encoded.len() {
            let mut damaged = encoded.clone();
            damaged[at] ^= 0x10;
            assert!(
                decode_epochs(&damaged).is_err(),
                "epoch flip at {at} accepted"
            );
        }
        let out_of_order = encode_epochs(&[epochs[1], epochs[0]]);
        assert!(decode_epochs(&out_of_order).is_err());
        let mut other_version = bytes.clone();
        other_version[5] = 9;
        assert_eq!(
            CleanShutdown::decode(&other_version),
            Err(DecodeError::Version(9))
        );
    }
}
