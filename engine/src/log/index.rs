//! The sparse offset index and the time index of a segment: entry encoding, the deterministic
//! rule that decides which batches get entries ([`IndexBuilder`]), full validation, and lookups
//! that read entries from disk on demand ([`IndexSource`]).
//!
//! Offset index entry (8 bytes, big-endian): relative offset `u32` of a batch's base offset,
//! file position `u32` of that batch. Time index entry (12 bytes): timestamp `i64`, relative
//! offset `u32`. See `engine/FORMAT.md` for the rules.
//!
//! Indexes are never held whole in memory: a lookup binary-searches the file in windows of one
//! block (one read per probe); only the active segment keeps its not-yet-flushed tail (less than
//! one block per index) in memory ([`IndexFile`]). No index file is held open: the writer opens
//! one to write a full block, to seal or to close, and a lookup opens it for its reads.
//!
//! Must not depend on: the write pipeline or the batch cache.

use std::io;
use std::path::PathBuf;

use crate::io::{self as dio, File};
use crate::limits::{DIO_ALIGN_BYTES, OFFSET_INDEX_ENTRY_BYTES, TIME_INDEX_ENTRY_BYTES};
use crate::types::{FilePos, Offset, RelativeOffset, TimestampMs};

/// One offset index entry: the batch starting at `base + relative` is at `position`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub relative: RelativeOffset,
    pub position: u32,
}

/// One time index entry: the running max timestamp of the segment's batches up to and including
/// the batch at `base + relative`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: TimestampMs,
    pub relative: RelativeOffset,
}

impl OffsetEntry {
    pub fn encode(self) -> [u8; OFFSET_INDEX_ENTRY_BYTES] {
        let mut out = [0; OFFSET_INDEX_ENTRY_BYTES];
        out[..4].copy_from_slice(&self.relative.0.to_be_bytes());
        out[4..].copy_from_slice(&self.position.to_be_bytes());
        out
    }
    pub fn decode(bytes: &[u8]) -> OffsetEntry {
        OffsetEntry {
            relative: RelativeOffset(u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"))),
            position: u32::from_be_bytes(bytes[4..8].try_into().expect("4 bytes")),
        }
    }
}

impl TimeEntry {
    pub fn encode(self) -> [u8; TIME_INDEX_ENTRY_BYTES] {
        let mut out = [0; TIME_INDEX_ENTRY_BYTES];
        out[..8].copy_from_slice(&self.timestamp.0.to_be_bytes());
        out[8..].copy_from_slice(&self.relative.0.to_be_bytes());
        out
    }
    pub fn decode(bytes: &[u8]) -> TimeEntry {
        TimeEntry {
            timestamp: TimestampMs(i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"))),
            relative: RelativeOffset(u32::from_be_bytes(
                bytes[8..12].try_into().expect("4 bytes"),
            )),
        }
    }
}

/// The relative offset of `offset` in the segment starting at `base`.
pub(crate) fn relative(base: Offset, offset: Offset) -> RelativeOffset {
    assert!(offset >= base, "offset {offset} below segment base {base}");
    let delta = offset.0 - base.0;
    RelativeOffset(u32::try_from(delta).expect("relative offset fits in u32 (roll guarantees it)"))
}

/// Decides which batches get index entries. A pure function of the segment's batch sequence and
/// the index interval, so recovery rebuilds exactly what the write path produced.
///
/// Rules (FORMAT.md §Indexes): a batch at position `p > 0` gets an offset entry when
/// `p - q >= index.interval.bytes`, where `q` is the position of the previous indexed batch
/// (0 at the segment start). When a batch gets an offset entry and the running max timestamp
/// (including that batch) exceeds the last time entry's timestamp, it also gets a time entry.
/// Sealing appends a final time entry for the segment's max timestamp if it is still larger.
#[derive(Clone, Debug)]
pub(crate) struct IndexBuilder {
    base: Offset,
    interval: u64,
    /// Invariant: the position of the last offset-indexed batch, 0 before the first entry.
    last_indexed_position: u64,
    /// Invariant: the relative offset of the last offset entry, if any; entries strictly grow.
    last_relative: Option<RelativeOffset>,
    /// Running max timestamp and the base offset of the batch that set it.
    max: Option<(TimestampMs, Offset)>,
    last_time_entry: Option<TimestampMs>,
    /// Max timestamp of the segment's first batch (rolling by `segment.ms`).
    first_max_timestamp: Option<TimestampMs>,
}

/// What [`IndexBuilder::on_batch`] decided for one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct NewEntries {
    pub offset: Option<OffsetEntry>,
    pub time: Option<TimeEntry>,
}

/// The state needed to continue building a segment's indexes after a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BuilderResume {
    pub last_indexed_position: u64,
    pub last_relative: Option<RelativeOffset>,
    pub max: Option<(TimestampMs, Offset)>,
    pub last_time_entry: Option<TimestampMs>,
    pub first_max_timestamp: Option<TimestampMs>,
}

impl IndexBuilder {
    pub fn new(base: Offset, interval: u64) -> IndexBuilder {
        IndexBuilder {
            base,
            interval,
            last_indexed_position: 0,
            last_relative: None,
            max: None,
            last_time_entry: None,
            first_max_timestamp: None,
        }
    }

    pub fn resume(base: Offset, interval: u64, state: BuilderResume) -> IndexBuilder {
        IndexBuilder {
            base,
            interval,
            last_indexed_position: state.last_indexed_position,
            last_relative: state.last_relative,
            max: state.max,
            last_time_entry: state.last_time_entry,
            first_max_timestamp: state.first_max_timestamp,
        }
    }

    pub fn state(&self) -> BuilderResume {
        BuilderResume {
            last_indexed_position: self.last_indexed_position,
            last_relative: self.last_relative,
            max: self.max,
            last_time_entry: self.last_time_entry,
            first_max_timestamp: self.first_max_timestamp,
        }
    }

    pub fn max_timestamp(&self) -> Option<TimestampMs> {
        self.max.map(|(timestamp, _)| timestamp)
    }

    pub fn first_max_timestamp(&self) -> Option<TimestampMs> {
        self.first_max_timestamp
    }

    /// Feeds the next batch of the segment: its base offset, position and max timestamp.
    pub fn on_batch(
        &mut self,
        base_offset: Offset,
        position: u64,
        max_ts: TimestampMs,
    ) -> NewEntries {
        assert!(
            position >= self.last_indexed_position,
            "batch at {position} before last indexed position {} (segment {})",
            self.last_indexed_position,
            self.base
        );
        let relative = relative(self.base, base_offset);
        if self.first_max_timestamp.is_none() {
            self.first_max_timestamp = Some(max_ts);
        }
        match self.max {
            Some((max, _)) if max >= max_ts => {}
            _ => self.max = Some((max_ts, base_offset)),
        }
        let mut entries = NewEntries::default();
        if position > 0 && position - self.last_indexed_position >= self.interval {
            if let Some(last) = self.last_relative {
                assert!(
                    relative > last,
                    "index entry {relative:?} after {last:?} (segment {})",
                    self.base
                );
            }
            let position32 = u32::try_from(position).expect("segment position fits in u32");
            entries.offset = Some(OffsetEntry {
                relative,
                position: position32,
            });
            self.last_indexed_position = position;
            self.last_relative = Some(relative);
            let (max, _) = self.max.expect("set above");
            if self.last_time_entry.is_none_or(|last| max > last) {
                entries.time = Some(TimeEntry {
                    timestamp: max,
                    relative,
                });
                self.last_time_entry = Some(max);
            }
        }
        entries
    }

    /// The final time entry a sealed segment ends with, if its max timestamp is not yet the
    /// last time entry.
    pub fn on_seal(&mut self) -> Option<TimeEntry> {
        let (max, at) = self.max?;
        if self.last_time_entry.is_some_and(|last| last >= max) {
            return None;
        }
        self.last_time_entry = Some(max);
        Some(TimeEntry {
            timestamp: max,
            relative: relative(self.base, at),
        })
    }
}

/// What is wrong with an index file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IndexDamage {
    /// The file does not exist.
    Missing,
    /// The size is not a whole number of entries or disagrees with the checkpoint.
    WrongSize,
    /// Entries do not strictly increase.
    NonMonotonic,
    /// An entry points past the end of the segment.
    PastEnd,
    /// The file is a valid prefix but lacks entries for data that is in the segment (a crash
    /// between the log write and the index write).
    Incomplete,
    /// The file holds entries that differ from what the segment's batches give.
    Mismatch,
}

/// The bounds a segment's index entries must stay within.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryBounds {
    /// Relative offsets must be below this (the segment's end offset minus its base).
    pub relative_end: u64,
    /// Positions must be below this (the segment's data size).
    pub size: u64,
}

/// Checks a whole offset index (or a window of one): whole entries, strictly increasing, within
/// the segment.
pub(crate) fn check_offset_entries(
    bytes: &[u8],
    bounds: EntryBounds,
    previous: Option<OffsetEntry>,
) -> Result<(), IndexDamage> {
    if !bytes.len().is_multiple_of(OFFSET_INDEX_ENTRY_BYTES) {
        return Err(IndexDamage::WrongSize);
    }
    let mut last = previous;
    for raw in bytes.chunks_exact(OFFSET_INDEX_ENTRY_BYTES) {
        let entry = OffsetEntry::decode(raw);
        if u64::from(entry.relative.0) >= bounds.relative_end
            || u64::from(entry.position) >= bounds.size
        {
            return Err(IndexDamage::PastEnd);
        }
        if entry.position == 0 {
            return Err(IndexDamage::NonMonotonic);
        }
        if let Some(last) = last
            && (entry.relative <= last.relative || entry.position <= last.position)
        {
            return Err(IndexDamage::NonMonotonic);
        }
        last = Some(entry);
    }
    Ok(())
}

/// Checks a whole time index (or a window of one): whole entries, timestamps strictly
/// increasing, offsets non-decreasing and within the segment.
pub(crate) fn check_time_entries(
    bytes: &[u8],
    bounds: EntryBounds,
    previous: Option<TimeEntry>,
) -> Result<(), IndexDamage> {
    if !bytes.len().is_multiple_of(TIME_INDEX_ENTRY_BYTES) {
        return Err(IndexDamage::WrongSize);
    }
    let mut last = previous;
    for raw in bytes.chunks_exact(TIME_INDEX_ENTRY_BYTES) {
        let entry = TimeEntry::decode(raw);
        if u64::from(entry.relative.0) >= bounds.relative_end {
            return Err(IndexDamage::PastEnd);
        }
        if let Some(last) = last
            && (entry.timestamp <= last.timestamp || entry.relative < last.relative)
        {
            return Err(IndexDamage::NonMonotonic);
        }
        last = Some(entry);
    }
    Ok(())
}

/// An index file being appended to (the active segment's): whole blocks on disk, the partial
/// last block in memory until it fills or the segment is sealed or closed.
///
/// The file is not held open: a partition at rest keeps one descriptor (its active segment's
/// log), so a shard can hold tens of thousands of partitions within the open-files limit.
/// Nor is it created with its segment: it appears with its first whole block or when the
/// segment is sealed (a clean close records the partial last block in the clean-shutdown
/// marker instead), so while its entries fit in a block an active index has no file, and open
/// reads a missing active index as an empty one.
/// The writer opens the file only to write a full block ([`IndexFlush::write`], about once
/// per 2 MiB of log at the default 4 KiB interval: 512 offset entries or 341 time entries fill a
/// block) and when the segment is sealed; lookups open it on demand ([`IndexSource`]). A block
/// is written as soon as it is full, exactly as when the file was held open, so the on-disk
/// state after a crash is the same (recovery rebuilds the tail).
#[derive(Clone, Debug)]
pub(crate) struct IndexFile {
    pub path: PathBuf,
    /// Invariant: bytes `[0, disk_bytes)` are on disk (not necessarily synced); a multiple of
    /// the block size while the file is active.
    disk_bytes: u64,
    /// Invariant: bytes `[disk_bytes, disk_bytes + mem.len())` of the index, not yet written.
    /// Bounded: whole blocks are written as soon as the writer sees them (one flush at a time),
    /// so this holds less than a block plus the entries of the rounds completed during a flush.
    mem: Vec<u8>,
}

impl IndexFile {
    /// An index whose first `disk_bytes` (whole blocks) are in the file and whose following
    /// bytes are `mem`.
    pub fn new(path: PathBuf, disk_bytes: u64, mem: Vec<u8>) -> IndexFile {
        assert!(
            disk_bytes.is_multiple_of(DIO_ALIGN_BYTES as u64),
            "index {}: unaligned disk bytes {disk_bytes}",
            path.display()
        );
        assert!(
            mem.len() < DIO_ALIGN_BYTES,
            "index {}: a whole block left in memory",
            path.display()
        );
        IndexFile {
            path,
            disk_bytes,
            mem,
        }
    }

    pub fn len(&self) -> u64 {
        self.disk_bytes + self.mem.len() as u64
    }

    /// Bytes in the file (whole blocks).
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    pub fn push(&mut self, entry: &[u8]) {
        assert!(
            entry.len() == OFFSET_INDEX_ENTRY_BYTES || entry.len() == TIME_INDEX_ENTRY_BYTES,
            "index {}: entry of {} bytes",
            self.path.display(),
            entry.len()
        );
        self.mem.extend_from_slice(entry);
    }

    /// Bytes of whole blocks waiting in memory.
    pub fn full_block_bytes(&self) -> usize {
        self.mem.len() - self.mem.len() % DIO_ALIGN_BYTES
    }

    /// Prepares writing the whole blocks held in memory; `None` when there are none. Only the
    /// writer flushes, one flush at a time, so the file cannot change until
    /// [`IndexFile::complete_flush`].
    pub fn prepare_flush(&self) -> Option<IndexFlush> {
        let full = self.full_block_bytes();
        if full == 0 {
            return None;
        }
        Some(IndexFlush {
            path: self.path.clone(),
            bytes: self.mem[..full].to_vec(),
            position: self.disk_bytes,
        })
    }

    /// Drops the flushed blocks from memory once their write completed.
    pub fn complete_flush(&mut self, position: u64, bytes: usize) {
        assert_eq!(
            self.disk_bytes,
            position,
            "index {} changed during its flush",
            self.path.display()
        );
        assert!(
            bytes <= self.mem.len(),
            "index {} flushed more than it held",
            self.path.display()
        );
        assert!(
            bytes.is_multiple_of(DIO_ALIGN_BYTES),
            "index {} flushed a partial block",
            self.path.display()
        );
        self.mem.drain(..bytes);
        self.disk_bytes += bytes as u64;
    }

    /// The bytes held in memory, past the whole blocks on disk: what a clean close records in
    /// the clean-shutdown marker instead of writing them to the file.
    pub fn unflushed(&self) -> &[u8] {
        assert!(
            self.mem.len() < DIO_ALIGN_BYTES,
            "index {}: a whole block still in memory",
            self.path.display()
        );
        &self.mem
    }

    /// Writes the partial block held in memory and trims the file to [`IndexFile::len`]
    /// (sealing the segment), and returns the file still open for the caller to fdatasync and
    /// close: a failure here leaves an index the writer can go on with (it rewrites the partial
    /// block and ignores bytes past its whole blocks), a failed sync does not. Opens the file;
    /// creates it when missing (the first time, or after recovery found it lost). Memory is
    /// unchanged.
    pub async fn write_exact(&self) -> io::Result<File> {
        let file = dio::open_or_create(&self.path).await?;
        let result = async {
            if !self.mem.is_empty() {
                let buffer = dio::aligned_buffer(&file, &[&self.mem]);
                dio::write_at(&file, buffer, self.disk_bytes).await?;
            }
            dio::truncate(&file, self.len()).await
        }
        .await;
        if let Err(error) = result {
            let _ = dio::close(file).await;
            return Err(error);
        }
        Ok(file)
    }

    /// A read view for lookups, independent of later changes. It opens the file on demand
    /// (only when a lookup reaches the flushed blocks) and closes it when dropped.
    pub fn source(&self, entry_bytes: usize) -> IndexSource {
        IndexSource {
            file: None,
            path: self.path.clone(),
            disk_bytes: self.disk_bytes,
            mem: self.mem.clone(),
            entry_bytes,
        }
    }
}

/// A prepared write of an index's whole blocks.
pub(crate) struct IndexFlush {
    pub path: PathBuf,
    /// Whole blocks of entries.
    pub bytes: Vec<u8>,
    pub position: u64,
}

impl IndexFlush {
    /// Opens the index file, writes the blocks at their position and closes it again.
    pub async fn write(self) -> io::Result<()> {
        assert!(
            !self.bytes.is_empty() && self.bytes.len().is_multiple_of(DIO_ALIGN_BYTES),
            "index {}: flush of {} bytes",
            self.path.display(),
            self.bytes.len()
        );
        let file = dio::open_or_create(&self.path).await?;
        let buffer = dio::aligned_buffer(&file, &[&self.bytes]);
        let result = dio::write_at(&file, buffer, self.position).await;
        dio::close(file).await?;
        result
    }
}

/// Where a lookup reads index entries from: a file prefix plus an in-memory tail.
#[derive(Clone, Debug)]
pub(crate) struct IndexSource {
    /// The open file, or `None` to open `path` on demand.
    pub file: Option<File>,
    pub path: PathBuf,
    pub disk_bytes: u64,
    pub mem: Vec<u8>,
    pub entry_bytes: usize,
}

impl IndexSource {
    /// A sealed segment's index of `len` bytes, opened on demand.
    pub fn sealed(path: PathBuf, len: u64, entry_bytes: usize) -> IndexSource {
        IndexSource {
            file: None,
            path,
            disk_bytes: len,
            mem: Vec::new(),
            entry_bytes,
        }
    }

    pub fn entry_count(&self) -> u64 {
        (self.disk_bytes + self.mem.len() as u64) / self.entry_bytes as u64
    }

    async fn file(&mut self) -> io::Result<File> {
        if let Some(file) = &self.file {
            return Ok(file.clone());
        }
        let file = dio::open_read(&self.path).await?;
        self.file = Some(file.clone());
        Ok(file)
    }

    /// Bytes `[from, to)` of the index.
    pub async fn read_range(&mut self, from: u64, to: u64) -> io::Result<Vec<u8>> {
        assert!(
            from <= to,
            "index range {from}..{to} of {}",
            self.path.display()
        );
        let mut out = Vec::with_capacity(usize::try_from(to - from).expect("small range"));
        if from < self.disk_bytes {
            let disk_to = to.min(self.disk_bytes);
            let file = self.file().await?;
            let len = usize::try_from(disk_to - from).expect("small range");
            let bytes = dio::read_at(&file, from, len).await?;
            if bytes.len() != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("index {} shorter than {}", self.path.display(), disk_to),
                ));
            }
            out.extend_from_slice(&bytes);
        }
        if to > self.disk_bytes {
            let mem_from =
                usize::try_from(from.max(self.disk_bytes) - self.disk_bytes).expect("in memory");
            let mem_to = usize::try_from(to - self.disk_bytes).expect("in memory");
            out.extend_from_slice(&self.mem[mem_from..mem_to]);
        }
        Ok(out)
    }
}

/// Why an index lookup gave no answer.
#[derive(Debug)]
pub(crate) enum LookupError {
    Io(io::Error),
    /// The entries read break the index invariants; the caller falls back to a scan.
    Damaged(IndexDamage),
}

impl From<io::Error> for LookupError {
    fn from(error: io::Error) -> LookupError {
        LookupError::Io(error)
    }
}

/// Finds the last entry for which `is_before` holds, where `is_before` is true for a prefix of
/// the entries. Reads one window of up to one block of entries per probe, and checks each
/// window it reads (pair assertion with the checks at append time).
async fn last_before<E: Copy>(
    source: &mut IndexSource,
    decode: fn(&[u8]) -> E,
    check: &dyn Fn(&[u8]) -> Result<(), IndexDamage>,
    is_before: &dyn Fn(E) -> bool,
) -> Result<Option<E>, LookupError> {
    let entry_bytes = source.entry_bytes as u64;
    let per_window = (DIO_ALIGN_BYTES as u64 / entry_bytes).max(1);
    let (mut low, mut high) = (0u64, source.entry_count());
    let mut best = None;
    while low < high {
        let middle = low + (high - low) / 2;
        let window_start = (middle - middle % per_window).max(low);
        let window_end = (middle - middle % per_window + per_window).min(high);
        assert!(
            window_start <= middle && middle < window_end,
            "probe outside its window"
        );
        let bytes = source
            .read_range(window_start * entry_bytes, window_end * entry_bytes)
            .await?;
        check(&bytes).map_err(LookupError::Damaged)?;
        let entries: Vec<E> = bytes.chunks_exact(source.entry_bytes).map(decode).collect();
        let before = entries.partition_point(|entry| is_before(*entry));
        if before == 0 {
            high = window_start;
        } else if before == entries.len() {
            best = Some(entries[before - 1]);
            low = window_end;
        } else {
            best = Some(entries[before - 1]);
            break;
        }
    }
    Ok(best)
}

/// The last offset index entry whose relative offset is at most `target`.
pub(crate) async fn lookup_offset(
    source: &mut IndexSource,
    target: RelativeOffset,
    bounds: EntryBounds,
) -> Result<Option<OffsetEntry>, LookupError> {
    assert_eq!(source.entry_bytes, OFFSET_INDEX_ENTRY_BYTES);
    let found = last_before(
        source,
        OffsetEntry::decode,
        &|bytes| check_offset_entries(bytes, bounds, None),
        &|entry: OffsetEntry| entry.relative <= target,
    )
    .await?;
    if let Some(entry) = found {
        // Pair assertion with the append-time checks: the answer is within the segment.
        if entry.relative > target || u64::from(entry.position) >= bounds.size {
            return Err(LookupError::Damaged(IndexDamage::PastEnd));
        }
    }
    Ok(found)
}

/// The last time index entry whose timestamp is below `target`.
pub(crate) async fn lookup_time(
    source: &mut IndexSource,
    target: TimestampMs,
    bounds: EntryBounds,
) -> Result<Option<TimeEntry>, LookupError> {
    assert_eq!(source.entry_bytes, TIME_INDEX_ENTRY_BYTES);
    last_before(
        source,
        TimeEntry::decode,
        &|bytes| check_time_entries(bytes, bounds, None),
        &|entry: TimeEntry| entry.timestamp < target,
    )
    .await
}

/// The position of an offset index entry, as a file position.
pub(crate) fn entry_position(entry: Option<OffsetEntry>) -> FilePos {
    FilePos(entry.map_or(0, |entry| u64::from(entry.position)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the builder's decisions follow the documented rule on a hand-checked sequence.
    // Method: feed batches of known sizes and timestamps, compare the entries produced.
    #[test]
    fn builder_follows_interval_and_running_max() {
        let mut builder = IndexBuilder::new(Offset(100), 100);
        let mut out = Vec::new();
        // (base, position, max timestamp)
        let batches = [
            (100, 0, 5),
            (102, 60, 3),
            (105, 120, 9),
            (106, 150, 7),
            (110, 230, 8),
            (111, 400, 20),
        ];
        for (base, position, ts) in batches {
            out.push(builder.on_batch(Offset(base), position, TimestampMs(ts)));
        }
        let offsets: Vec<_> = out
            .iter()
            .filter_map(|e| e.offset)
            .map(|e| (e.relative.0, e.position))
            .collect();
        assert_eq!(offsets, vec![(5, 120), (10, 230), (11, 400)]);
        let times: Vec<_> = out
            .iter()
            .filter_map(|e| e.time)
            .map(|e| (e.timestamp.0, e.relative.0))
            .collect();
        assert_eq!(times, vec![(9, 5), (20, 11)]);
        assert_eq!(builder.on_seal(), None);
        assert_eq!(builder.first_max_timestamp(), Some(TimestampMs(5)));
    }

    // Goal: sealing adds the segment max when the last entry lags it.
    #[test]
    fn seal_appends_final_max() {
        let mut builder = IndexBuilder::new(Offset(0), 4096);
        builder.on_batch(Offset(0), 0, TimestampMs(10));
        builder.on_batch(Offset(1), 100, TimestampMs(30));
        builder.on_batch(Offset(2), 200, TimestampMs(20));
        assert_eq!(
            builder.on_seal(),
            Some(TimeEntry {
                timestamp: TimestampMs(30),
                relative: RelativeOffset(1)
            })
        );
        assert_eq!(builder.on_seal(), None);
    }

    // Goal: full validation names the damage.
    #[test]
    fn check_entries_detects_damage() {
        let bounds = EntryBounds {
            relative_end: 100,
            size: 10_000,
        };
        let entry = |r, p| {
            OffsetEntry {
                relative: RelativeOffset(r),
                position: p,
            }
            .encode()
        };
        let good: Vec<u8> = [entry(1, 10), entry(5, 90)].concat();
        assert_eq!(check_offset_entries(&good, bounds, None), Ok(()));
        assert_eq!(
            check_offset_entries(&good[..7], bounds, None),
            Err(IndexDamage::WrongSize)
        );
        let backwards: Vec<u8> = [entry(5, 90), entry(1, 10)].concat();
        assert_eq!(
            check_offset_entries(&backwards, bounds, None),
            Err(IndexDamage::NonMonotonic)
        );
        let past: Vec<u8> = [entry(1, 10), entry(100, 20)].concat();
        assert_eq!(
            check_offset_entries(&past, bounds, None),
            Err(IndexDamage::PastEnd)
        );
    }

    /// Entries split between a real file (whole blocks) and memory, as an active index is.
    /// Files belong to the executor that opened them: call from the test's `block_on`.
    async fn source_over(
        bytes: &[u8],
        entry_bytes: usize,
        disk_blocks_fraction: f64,
    ) -> IndexSource {
        let disk_bytes = crate::io::align_down((bytes.len() as f64 * disk_blocks_fraction) as u64);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("index");
        let file = crate::io::create(&path).await.expect("create");
        if disk_bytes > 0 {
            let buffer = crate::io::aligned_buffer(&file, &[&bytes[..disk_bytes as usize]]);
            crate::io::write_at(&file, buffer, 0).await.expect("write");
        }
        // The file stays open; the directory may go (Linux keeps the inode).
        drop(dir);
        IndexSource {
            file: Some(file),
            path,
            disk_bytes,
            mem: bytes[disk_bytes as usize..].to_vec(),
            entry_bytes,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        // Goal: offset lookups agree with a reference model (the last entry at or below the
        // target) whatever the split between disk and memory.
        // Method: random strictly increasing entries, random split, random targets.
        #[test]
        fn offset_lookup_matches_reference(
            steps in proptest::collection::vec((1u32..50, 1u32..9_000), 0..1_500),
            fraction in 0.0..1.0f64,
            targets in proptest::collection::vec(0u32..80_000, 1..40),
        ) {
            let mut entries = Vec::new();
            let (mut relative, mut position) = (0u32, 0u32);
            for (dr, dp) in steps {
                relative += dr;
                position += dp;
                entries.push(OffsetEntry { relative: RelativeOffset(relative), position });
            }
            let bytes: Vec<u8> = entries.iter().flat_map(|e| e.encode()).collect();
            let bounds = EntryBounds {
                relative_end: u64::from(relative) + 1,
                size: u64::from(position) + 1,
            };
            crate::rt::block_on(async {
                let mut source = source_over(&bytes, OFFSET_INDEX_ENTRY_BYTES, fraction).await;
                for target in targets {
                    let expected = entries.iter().rev().find(|e| e.relative.0 <= target).copied();
                    let found = lookup_offset(&mut source, RelativeOffset(target), bounds).await;
                    assert_eq!(found.expect("valid index"), expected, "target {target}");
                }
            });
        }

        // Goal: time lookups agree with a reference model (the last entry below the target).
        #[test]
        fn time_lookup_matches_reference(
            steps in proptest::collection::vec((1i64..100, 0u32..30), 0..1_000),
            fraction in 0.0..1.0f64,
            targets in proptest::collection::vec(-10i64..60_000, 1..40),
        ) {
            let mut entries = Vec::new();
            let (mut timestamp, mut relative) = (0i64, 0u32);
            for (dt, dr) in steps {
                timestamp += dt;
                relative += dr;
                entries.push(TimeEntry {
                    timestamp: TimestampMs(timestamp),
                    relative: RelativeOffset(relative),
                });
            }
            let bytes: Vec<u8> = entries.iter().flat_map(|e| e.encode()).collect();
            let bounds = EntryBounds { relative_end: u64::from(relative) + 1, size: u64::MAX };
            crate::rt::block_on(async {
                let mut source = source_over(&bytes, TIME_INDEX_ENTRY_BYTES, fraction).await;
                for target in targets {
                    let expected = entries.iter().rev().find(|e| e.timestamp.0 < target).copied();
                    let found = lookup_time(&mut source, TimestampMs(target), bounds).await;
                    assert_eq!(found.expect("valid index"), expected, "target {target}");
                }
            });
        }
    }

    // Goal: a lookup that meets entries breaking the invariants reports damage instead of
    // answering (pair assertion with the append-time checks).
    #[test]
    fn lookup_reports_damaged_entries() {
        let entry = |r, p| {
            OffsetEntry {
                relative: RelativeOffset(r),
                position: p,
            }
            .encode()
        };
        let bytes: Vec<u8> = [entry(5, 100), entry(3, 200), entry(9, 300)].concat();
        let bounds = EntryBounds {
            relative_end: 100,
            size: 1_000,
        };
        let found = crate::rt::block_on(async {
            let mut source = source_over(&bytes, OFFSET_INDEX_ENTRY_BYTES, 0.0).await;
            lookup_offset(&mut source, RelativeOffset(4), bounds).await
        });
        assert!(matches!(
            found,
            Err(LookupError::Damaged(IndexDamage::NonMonotonic))
        ));
    }
}
