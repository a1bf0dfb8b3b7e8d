//! Segments: file naming, the in-memory description of each segment ([`Segment`]), the writer's
//! state of the active segment ([`ActiveSegment`]), and the sequential [`Scanner`] that recovery,
//! index rebuilds, truncation and timestamp searches use to walk a segment's batches.
//!
//! Must not depend on: the batch cache or the write queue.

use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::batch::{self, BatchError, BatchHeader, HEADER_BYTES};
use crate::io::File;
use crate::limits::{BATCH_BYTES_MAX, SCAN_CHUNK_BYTES, SEGMENTS_MAX};
use crate::log::index::{IndexBuilder, IndexFile};
use crate::types::{Offset, TimestampMs};

/// Extension of segment data files.
pub(crate) const LOG_EXTENSION: &str = "log";
/// Extension of offset index files.
pub(crate) const INDEX_EXTENSION: &str = "index";
/// Extension of time index files.
pub(crate) const TIME_INDEX_EXTENSION: &str = "timeindex";

#[cfg(test)]
thread_local! {
    /// A lower segment cap for this thread's unit tests, so they reach it cheaply.
    pub(crate) static SEGMENTS_MAX_FOR_TEST: std::cell::Cell<Option<usize>> =
        const { std::cell::Cell::new(None) };
}

/// The most segments a partition may hold: [`SEGMENTS_MAX`], which a roll enforces and open
/// checks (unit tests may lower it for their thread).
pub(crate) fn segments_max() -> usize {
    #[cfg(test)]
    if let Some(max) = SEGMENTS_MAX_FOR_TEST.with(std::cell::Cell::get) {
        return max;
    }
    SEGMENTS_MAX
}

/// `00000000000000000042.log` for base offset 42 and extension `log`.
pub(crate) fn file_name(base: Offset, extension: &str) -> String {
    assert!(base.0 >= 0, "negative segment base {base}");
    format!("{:020}.{extension}", base.0)
}

pub(crate) fn file_path(dir: &Path, base: Offset, extension: &str) -> PathBuf {
    dir.join(file_name(base, extension))
}

/// Prefix of the one retired segment file a partition keeps for its next roll to write over:
/// `recycle-00000000000000000042.log` was a segment whose batches all lie below offset 42.
const RECYCLE_PREFIX: &str = "recycle-";

/// The name of a retired segment file whose batches all lie below `end`.
pub(crate) fn recycle_file_name(end: Offset) -> String {
    assert!(end.0 >= 0, "negative recycled segment end {end}");
    format!("{RECYCLE_PREFIX}{:020}.{LOG_EXTENSION}", end.0)
}

/// Parses a retired segment file name into the offset all its batches lie below.
pub(crate) fn parse_recycle_file_name(name: &str) -> Option<Offset> {
    let stem = name
        .strip_prefix(RECYCLE_PREFIX)?
        .strip_suffix(LOG_EXTENSION)?
        .strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some(Offset(stem.parse().ok()?))
}

/// A retired segment file kept for reuse: its blocks were written, so the next active segment
/// written over them costs the file system no extent conversions. Its old batches all lie below
/// `end`, which is never above the base of a segment it becomes, so recovery can never take
/// them for batches of that segment (they break the offset chain at its first stale header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spare {
    /// Every batch in the file lies below this offset.
    pub end: Offset,
    /// The file's size.
    pub bytes: u64,
}

impl Spare {
    /// Whether the file can become the log file of a segment starting at `base`: every batch in
    /// it lies below `base`, so none can be taken for one of that segment's.
    pub fn fits(&self, base: Offset) -> bool {
        self.end <= base
    }
}

/// Parses a segment file name into its base offset and extension.
pub(crate) fn parse_file_name(name: &str) -> Option<(Offset, &str)> {
    let (stem, extension) = name.split_once('.')?;
    if stem.len() != 20 || !stem.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    if ![LOG_EXTENSION, INDEX_EXTENSION, TIME_INDEX_EXTENSION].contains(&extension) {
        return None;
    }
    Some((Offset(stem.parse().ok()?), extension))
}

/// One segment as the log sees it: offsets, size, and what lookups need. About 80 bytes; the
/// only per-segment memory a partition holds (sealed segments' indexes stay on disk).
#[derive(Clone, Debug)]
pub(crate) struct Segment {
    pub base: Offset,
    /// Invariant: the offset after the segment's last written batch; `end >= base`.
    pub end: Offset,
    /// Invariant: bytes of whole batches written; the file holds no batch of this segment past
    /// it (a recycled file may hold older batches, all below `base`).
    pub size: u64,
    pub max_timestamp: Option<TimestampMs>,
    /// Sealed segments: exact index file sizes. Unused while active.
    pub index_bytes: u64,
    pub time_index_bytes: u64,
    pub sealed: bool,
}

impl Segment {
    /// A new active segment starting at `base`, nothing written yet.
    pub fn empty(base: Offset) -> Segment {
        Segment {
            base,
            end: base,
            size: 0,
            max_timestamp: None,
            index_bytes: 0,
            time_index_bytes: 0,
            sealed: false,
        }
    }
}

/// The writer's state of the active (last) segment. Held by the log while open.
///
/// Only the log file is held open (the partition's one descriptor at rest); the index files are
/// opened when a block must be written (see [`IndexFile`]).
#[derive(Debug)]
pub(crate) struct ActiveSegment {
    pub base: Offset,
    pub log: File,
    /// Invariant: when true, the log file is exactly the segment's size and each index file
    /// holds exactly its whole blocks (its partial last block is in memory), all durable since
    /// their last change, so closing has nothing to write or sync but the marker. Set by a
    /// clean open and by closing; cleared before anything writes, preallocates or trims one of
    /// the three files.
    pub files_exact: bool,
    /// Invariant: the bytes `[align_down(size), size)` of the segment: the partially filled last
    /// block, rewritten with every write until it is full.
    pub tail: Vec<u8>,
    /// Invariant: the file size including preallocated space; `>= size`.
    pub allocated: u64,
    pub index: IndexFile,
    pub time_index: IndexFile,
    pub builder: IndexBuilder,
}

/// What the scanner found next.
#[derive(Debug)]
pub(crate) enum ScanItem {
    /// A batch that passed the checks, at `position`.
    Batch { header: BatchHeader, position: u64 },
    /// A clean end: the end of the range, or zeros where the next header would be (preallocated
    /// space that was never written).
    End { position: u64 },
    /// Bytes at `position` that are not a valid batch.
    Invalid { position: u64, error: BatchError },
}

/// Walks the batches of a segment file front to back in aligned chunks.
pub(crate) struct Scanner {
    file: File,
    /// Invariant: the scanner never reads past `limit`.
    limit: u64,
    position: u64,
    chunk: Bytes,
    chunk_start: u64,
    verify_crc: bool,
}

impl Scanner {
    /// Scans `[position, limit)` of `file`; `verify_crc` checks each batch's CRC too (recovery),
    /// otherwise only the framing (index rebuilds, timestamp searches).
    pub fn new(file: File, position: u64, limit: u64, verify_crc: bool) -> Scanner {
        assert!(
            position <= limit,
            "scan start {position} past limit {limit}"
        );
        Scanner {
            file,
            limit,
            position,
            chunk: Bytes::new(),
            chunk_start: 0,
            verify_crc,
        }
    }

    /// Makes `[at, at + len)` available in the chunk, reading at least a scan chunk. Returns
    /// fewer bytes only at the end of the file.
    async fn bytes(&mut self, at: u64, len: usize) -> io::Result<Bytes> {
        let chunk_end = self.chunk_start + self.chunk.len() as u64;
        if at < self.chunk_start || at + len as u64 > chunk_end {
            let want = len.max(SCAN_CHUNK_BYTES) as u64;
            let read = want.min(self.limit - at);
            let read = usize::try_from(read).expect("scan read fits in usize");
            self.chunk = crate::io::read_at(&self.file, at, read).await?;
            self.chunk_start = at;
        }
        let from = usize::try_from(at - self.chunk_start).expect("in chunk");
        let to = (from + len).min(self.chunk.len());
        Ok(self.chunk.slice(from..to))
    }

    pub async fn next(&mut self) -> io::Result<ScanItem> {
        let position = self.position;
        let available = self.limit - position;
        if available == 0 {
            return Ok(ScanItem::End { position });
        }
        let head_len = usize::try_from(available.min(HEADER_BYTES as u64)).expect("small");
        let head = self.bytes(position, head_len).await?;
        let all_zero = head.iter().all(|byte| *byte == 0);
        if head.len() < HEADER_BYTES {
            if all_zero {
                return Ok(ScanItem::End { position });
            }
            let error = BatchError::Truncated {
                needed: HEADER_BYTES,
                have: head.len(),
            };
            return Ok(ScanItem::Invalid { position, error });
        }
        let header = match BatchHeader::parse(&head, BATCH_BYTES_MAX) {
            Ok(header) => header,
            Err(_) if all_zero => return Ok(ScanItem::End { position }),
            Err(error) => return Ok(ScanItem::Invalid { position, error }),
        };
        let total = header.total_bytes();
        if total as u64 > available {
            let have = usize::try_from(available).expect("below a batch size");
            let error = BatchError::Truncated {
                needed: total,
                have,
            };
            return Ok(ScanItem::Invalid { position, error });
        }
        let bytes = self.bytes(position, total).await?;
        if bytes.len() < total {
            let error = BatchError::Truncated {
                needed: total,
                have: bytes.len(),
            };
            return Ok(ScanItem::Invalid { position, error });
        }
        if self.verify_crc
            && let Err(error) = batch::validate(&bytes, BATCH_BYTES_MAX)
        {
            return Ok(ScanItem::Invalid { position, error });
        }
        self.position = position + total as u64;
        assert!(self.position <= self.limit, "scan past limit at {position}");
        Ok(ScanItem::Batch { header, position })
    }

    /// After an invalid batch at `position`: how many bytes from there up to the first whole
    /// block of zeros (bounded by [`crate::limits::RECOVERY_GARBAGE_PROBE_BYTES_MAX`]), to report
    /// how much garbage a truncation discards.
    pub async fn garbage_bytes(&mut self, position: u64) -> io::Result<u64> {
        let block = crate::limits::DIO_ALIGN_BYTES as u64;
        let probe_end = self
            .limit
            .min(position + crate::limits::RECOVERY_GARBAGE_PROBE_BYTES_MAX);
        let mut last_nonzero_end = position;
        let mut at = position;
        while at < probe_end {
            let block_end = (crate::io::align_down(at) + block).min(probe_end);
            let len = usize::try_from(block_end - at).expect("within a block");
            let bytes = self.bytes(at, len).await?;
            match bytes.iter().rposition(|byte| *byte != 0) {
                Some(last) => last_nonzero_end = at + last as u64 + 1,
                None if at > position => break,
                None => {}
            }
            if bytes.len() < len {
                break;
            }
            at = block_end;
        }
        Ok(last_nonzero_end - position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: names are 20-digit zero-padded base offsets and parse back; strangers are rejected.
    #[test]
    fn names_round_trip() {
        assert_eq!(
            file_name(Offset(42), LOG_EXTENSION),
            "00000000000000000042.log"
        );
        assert_eq!(
            parse_file_name("00000000000000000042.timeindex"),
            Some((Offset(42), "timeindex"))
        );
        assert_eq!(parse_file_name("0000000000000000042.log"), None);
        assert_eq!(parse_file_name("00000000000000000042.log.tmp"), None);
        assert_eq!(parse_file_name("partition.checkpoint"), None);
        assert_eq!(
            recycle_file_name(Offset(42)),
            "recycle-00000000000000000042.log"
        );
        assert_eq!(
            parse_recycle_file_name("recycle-00000000000000000042.log"),
            Some(Offset(42))
        );
        assert_eq!(parse_file_name("recycle-00000000000000000042.log"), None);
        assert_eq!(
            parse_recycle_file_name("recycle-0000000000000000042.log"),
            None
        );
        assert_eq!(
            parse_recycle_file_name("recycle-00000000000000000042.index"),
            None
        );
        assert_eq!(parse_recycle_file_name("00000000000000000042.log"), None);
    }
}
