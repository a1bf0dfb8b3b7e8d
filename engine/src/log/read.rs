//! The read path: whole batches from the batch cache (tailing readers) or from disk with
//! aligned direct reads and a CRC check on every batch read from disk; and the search for the
//! first batch at or after a timestamp.
//!
//! Must not depend on: the write queue (reads see only written data, below the log end).

use std::io;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{self, BatchError, BatchHeader, HEADER_BYTES};
use crate::io::{self as dio, File};
use crate::limits::{
    BATCH_BYTES_MAX, OFFSET_INDEX_ENTRY_BYTES, READ_BYTES_MAX, READ_CHUNK_BYTES_MIN,
    READ_MEMO_ENTRIES, TIME_INDEX_ENTRY_BYTES,
};
use crate::log::index::{
    self, EntryBounds, IndexSource, LookupError, entry_position, lookup_offset, lookup_time,
};
use crate::log::segment::{
    INDEX_EXTENSION, LOG_EXTENSION, ScanItem, Scanner, Segment, TIME_INDEX_EXTENSION, file_path,
};
use crate::log::{
    Inner, MemoEntry, Mode, ReadError, ReadSlice, State, TimestampOffset, read_ahead,
};
use crate::types::{FilePos, Offset, TimestampMs};

fn out_of_range(state: &State, requested: Offset) -> ReadError {
    ReadError::OffsetOutOfRange {
        requested,
        log_start: state.log_start,
        log_end: state.written,
    }
}

/// Index of the segment holding `offset`, if any holds it (`base <= offset < end`).
fn segment_index(state: &State, offset: Offset) -> Option<usize> {
    let after = state
        .segments
        .partition_point(|segment| segment.base <= offset);
    let index = after.checked_sub(1)?;
    (offset < state.segments[index].end).then_some(index)
}

/// What a disk read of one segment needs, copied out of the state.
struct SegmentView {
    segment: Segment,
    file: Option<File>,
    memo_position: Option<u64>,
    index: IndexSource,
}

fn view(inner: &Inner, state: &State, index: usize, offset: Offset) -> SegmentView {
    let segment = state.segments[index].clone();
    let file = if segment.sealed {
        state
            .sealed_file
            .as_ref()
            .filter(|(base, _)| *base == segment.base)
            .map(|(_, file)| file.clone())
    } else {
        Some(state.active.log.clone())
    };
    let memo_position = state
        .read_memo
        .iter()
        .flatten()
        .find(|memo| memo.offset == offset && memo.segment == segment.base)
        .map(|memo| memo.position);
    let index = index_source(inner, state, &segment, false);
    SegmentView {
        segment,
        file,
        memo_position,
        index,
    }
}

fn index_source(inner: &Inner, state: &State, segment: &Segment, time: bool) -> IndexSource {
    let (extension, entry_bytes, sealed_len) = if time {
        (
            TIME_INDEX_EXTENSION,
            TIME_INDEX_ENTRY_BYTES,
            segment.time_index_bytes,
        )
    } else {
        (
            INDEX_EXTENSION,
            OFFSET_INDEX_ENTRY_BYTES,
            segment.index_bytes,
        )
    };
    if segment.sealed {
        IndexSource::sealed(
            file_path(&inner.dir, segment.base, extension),
            sealed_len,
            entry_bytes,
        )
    } else if time {
        state.active.time_index.source(entry_bytes)
    } else {
        state.active.index.source(entry_bytes)
    }
}

fn bounds(segment: &Segment) -> EntryBounds {
    EntryBounds {
        relative_end: u64::try_from(segment.end.0 - segment.base.0).expect("end >= base"),
        size: segment.size,
    }
}

/// Opens a sealed segment's file, caching the handle (one per partition).
async fn sealed_file(inner: &Inner, base: Offset) -> io::Result<File> {
    let file = dio::open_read(&file_path(&inner.dir, base, LOG_EXTENSION)).await?;
    inner.state.borrow_mut().sealed_file = Some((base, file.clone()));
    Ok(file)
}

/// The position to start reading `offset` from in a segment: from the memo, else from the
/// offset index (falling back to the segment start if the index is damaged).
async fn start_position(
    inner: &Inner,
    view: &mut SegmentView,
    offset: Offset,
) -> Result<u64, ReadError> {
    if let Some(position) = view.memo_position {
        return Ok(position);
    }
    let target = index::relative(view.segment.base, offset);
    match lookup_offset(&mut view.index, target, bounds(&view.segment)).await {
        Ok(entry) => Ok(entry_position(entry).0),
        Err(LookupError::Io(error)) => Err(ReadError::Io(Arc::new(error))),
        Err(LookupError::Damaged(damage)) => {
            let segment = view.segment.base;
            tracing::warn!(tp = %inner.tp, %segment, ?damage, "index damaged; scanning");
            inner.state.borrow_mut().stats.index_fallbacks += 1;
            Ok(0)
        }
    }
}

/// Batches read from one segment.
struct SegmentRead {
    batches: Vec<Bytes>,
    bytes: usize,
    next: Offset,
    position: u64,
    /// True when the segment's end was reached with room left.
    exhausted: bool,
}

fn corrupt(segment: &Segment, position: u64, error: BatchError) -> ReadError {
    ReadError::Corrupt {
        segment: segment.base,
        position: FilePos(position),
        error,
    }
}

/// Checks that a batch a scan of `segment` found continues the log: its base offset is
/// `expected` (where the previous batch ended; the first: where the index entry the scan
/// started from, or the segment, begins) and it ends within the segment. Base offsets are
/// outside the batch CRC, and code downstream asserts that offsets ascend, so a base offset
/// changed on disk must be refused here as corrupt.
pub(crate) fn check_continues(
    segment: &Segment,
    header: &BatchHeader,
    expected: Offset,
) -> Result<(), BatchError> {
    if header.base_offset != expected {
        return Err(BatchError::UnexpectedBaseOffset {
            base_offset: header.base_offset.0,
            expected: expected.0,
        });
    }
    if header.next_offset() > segment.end {
        return Err(BatchError::CorruptRecords(format!(
            "batch offsets [{}, {}) outside segment [{}, {})",
            header.base_offset,
            header.next_offset(),
            segment.base,
            segment.end
        )));
    }
    Ok(())
}

/// What the bytes at a position of a segment hold.
enum Next {
    /// A batch that passed its checks, and its length.
    Batch(BatchHeader, usize),
    /// At least this many bytes are needed to decide.
    Need(usize),
    /// Not a valid batch of this segment.
    Bad(BatchError),
}

/// Checks the batch at the start of `rest` (which lies at `position` of `segment`): framing,
/// CRC, and offsets within the segment.
fn next_batch(rest: &[u8], segment: &Segment, position: u64) -> Next {
    let in_segment = segment.size - position;
    if rest.len() < HEADER_BYTES {
        if rest.len() as u64 == in_segment {
            let have = rest.len();
            return Next::Bad(BatchError::Truncated {
                needed: HEADER_BYTES,
                have,
            });
        }
        return Next::Need(HEADER_BYTES);
    }
    let header = match BatchHeader::parse(rest, BATCH_BYTES_MAX) {
        Ok(header) => header,
        Err(error) => return Next::Bad(error),
    };
    let total = header.total_bytes();
    if total > rest.len() {
        if total as u64 > in_segment {
            let have = usize::try_from(in_segment).expect("below a batch size");
            return Next::Bad(BatchError::Truncated {
                needed: total,
                have,
            });
        }
        return Next::Need(total);
    }
    if let Err(error) = batch::validate(&rest[..total], BATCH_BYTES_MAX) {
        return Next::Bad(error);
    }
    if header.base_offset < segment.base || header.next_offset() > segment.end {
        return Next::Bad(BatchError::CorruptRecords(format!(
            "batch offsets [{}, {}) outside segment [{}, {})",
            header.base_offset,
            header.next_offset(),
            segment.base,
            segment.end
        )));
    }
    Next::Batch(header, total)
}

/// How a segment read gets its bytes.
enum Fetch<'a> {
    /// One direct read per request (random access: the position came from the index).
    Direct,
    /// Through the partition's read-ahead stream (a reader continuing where it stopped).
    Ahead(&'a Inner),
}

impl Fetch<'_> {
    /// Bytes of `file` from `position`: at least `min_len` and at most `max_len` (fewer only at
    /// the end of the file).
    async fn bytes(
        &self,
        file: &File,
        segment: &Segment,
        position: u64,
        min_len: usize,
        max_len: usize,
    ) -> io::Result<Bytes> {
        match self {
            Fetch::Direct => dio::read_at(file, position, max_len).await,
            Fetch::Ahead(inner) => {
                read_ahead::read(
                    inner,
                    segment.base,
                    file,
                    position,
                    min_len,
                    max_len,
                    segment.size,
                )
                .await
            }
        }
    }
}

/// Reads whole batches of `segment` from `position`, skipping those that end at or before
/// `from`, until `upper`, the byte budget, or the segment end.
#[allow(clippy::too_many_arguments)]
async fn read_segment(
    fetch: Fetch<'_>,
    file: &File,
    segment: &Segment,
    mut position: u64,
    from: Offset,
    upper: Offset,
    budget: usize,
    mut collected: usize,
) -> Result<SegmentRead, ReadError> {
    assert!(
        position <= segment.size,
        "read position {position} past segment {} size",
        segment.base
    );
    let mut out = SegmentRead {
        batches: Vec::new(),
        bytes: 0,
        next: from,
        position,
        exhausted: false,
    };
    let mut need = 0usize;
    loop {
        if position >= segment.size {
            out.exhausted = true;
            return Ok(out);
        }
        let remaining = segment.size - position;
        let want = budget
            .saturating_sub(collected)
            .max(need)
            .max(READ_CHUNK_BYTES_MIN);
        let len = usize::try_from(remaining.min(want as u64)).expect("bounded by budget");
        // At least the batch (or header) the previous pass found incomplete.
        let min_len = need.clamp(1, len);
        let buffer = fetch
            .bytes(file, segment, position, min_len, len)
            .await
            .map_err(|error| ReadError::Io(Arc::new(error)))?;
        if buffer.len() < min_len {
            // The file is shorter than the segment's recorded size.
            let error = BatchError::Truncated {
                needed: min_len,
                have: buffer.len(),
            };
            if collected > 0 {
                return Ok(out);
            }
            return Err(corrupt(segment, position, error));
        }
        let mut at = 0usize;
        let mut stop = false;
        need = 0;
        while at < buffer.len() {
            let batch_position = position + at as u64;
            let (header, total) = match next_batch(&buffer[at..], segment, batch_position) {
                Next::Batch(header, total) => (header, total),
                // A batch that would not fit the budget anyway is not fetched whole.
                Next::Need(bytes) if collected > 0 && collected + bytes > budget => {
                    stop = true;
                    break;
                }
                Next::Need(bytes) => {
                    need = bytes;
                    break;
                }
                // Serve what precedes a corrupt batch; the next read reports it.
                Next::Bad(_) if collected > 0 => {
                    stop = true;
                    break;
                }
                Next::Bad(error) => return Err(corrupt(segment, batch_position, error)),
            };
            if header.next_offset() <= out.next {
                at += total;
                continue;
            }
            if header.next_offset() > upper || (collected > 0 && collected + total > budget) {
                stop = true;
                break;
            }
            // A log's offsets are contiguous: the first batch served holds `out.next`, each
            // later one (in this segment or the next) starts there. A base offset changed on
            // disk (outside the batch CRC) breaks that: serve what precedes it; the next read
            // reports it.
            let contiguous = if collected == 0 {
                header.base_offset <= out.next
            } else {
                header.base_offset == out.next
            };
            if !contiguous {
                if collected > 0 {
                    stop = true;
                    break;
                }
                let error = BatchError::UnexpectedBaseOffset {
                    base_offset: header.base_offset.0,
                    expected: out.next.0,
                };
                return Err(corrupt(segment, batch_position, error));
            }
            out.batches.push(buffer.slice(at..at + total));
            collected += total;
            out.bytes += total;
            out.next = header.next_offset();
            at += total;
        }
        position += at as u64;
        out.position = position;
        if stop {
            return Ok(out);
        }
    }
}

/// See [`crate::log::PartitionLog::read`].
pub(crate) async fn read(
    inner: &Rc<Inner>,
    from: Offset,
    max_bytes: usize,
    upper: Offset,
) -> Result<ReadSlice, ReadError> {
    let upper = {
        let state = inner.state.borrow();
        if state.mode == Mode::Closed {
            return Err(ReadError::Closed);
        }
        if from < state.log_start || from > state.written {
            return Err(out_of_range(&state, from));
        }
        upper.min(state.written)
    };
    if from >= upper {
        return Ok(ReadSlice {
            batches: Vec::new(),
            next_offset: from,
        });
    }
    if let Some((batches, next_offset)) = inner.cache.read(inner.cache_key, from, upper, max_bytes)
    {
        inner.state.borrow_mut().stats.cache_reads += 1;
        return Ok(ReadSlice {
            batches,
            next_offset,
        });
    }
    let budget = max_bytes.min(READ_BYTES_MAX);
    let mut slice = ReadSlice {
        batches: Vec::new(),
        next_offset: from,
    };
    let mut collected = 0usize;
    let mut memo = None;
    loop {
        let found = {
            let state = inner.state.borrow();
            segment_index(&state, slice.next_offset)
                .map(|index| view(inner, &state, index, slice.next_offset))
        };
        let Some(mut view) = found else { break };
        // A reader continuing where a previous read stopped is read ahead of.
        let sequential = view.memo_position.is_some();
        let position = start_position(inner, &mut view, slice.next_offset).await?;
        let file = match view.file.take() {
            Some(file) => file,
            None => match sealed_file(inner, view.segment.base).await {
                Ok(file) => file,
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    // Retention deleted the segment while we looked it up.
                    return Err(out_of_range(&inner.state.borrow(), slice.next_offset));
                }
                Err(error) => return Err(ReadError::Io(Arc::new(error))),
            },
        };
        let fetch = if sequential {
            Fetch::Ahead(inner)
        } else {
            Fetch::Direct
        };
        let part = read_segment(
            fetch,
            &file,
            &view.segment,
            position,
            slice.next_offset,
            upper,
            budget,
            collected,
        )
        .await?;
        collected += part.bytes;
        slice.batches.extend(part.batches);
        slice.next_offset = part.next;
        memo = Some(MemoEntry {
            offset: part.next,
            segment: view.segment.base,
            position: part.position,
        });
        if !part.exhausted || slice.next_offset >= upper || collected >= budget {
            break;
        }
    }
    let mut state = inner.state.borrow_mut();
    state.stats.disk_reads += 1;
    if let Some(memo) = memo {
        let slot = state.read_memo_next;
        state.read_memo[slot] = Some(memo);
        state.read_memo_next = (slot + 1) % READ_MEMO_ENTRIES;
    }
    // A truncation may have run while we read: never serve what is no longer in the log.
    if slice.next_offset > state.written {
        return Err(out_of_range(&state, from));
    }
    Ok(slice)
}

/// See [`crate::log::PartitionLog::index_position`].
pub(crate) async fn index_position(
    inner: &Rc<Inner>,
    offset: Offset,
) -> Result<(Offset, FilePos), ReadError> {
    let found = {
        let state = inner.state.borrow();
        if state.mode == Mode::Closed {
            return Err(ReadError::Closed);
        }
        if offset < state.log_start || offset >= state.written {
            return Err(out_of_range(&state, offset));
        }
        segment_index(&state, offset).map(|index| view(inner, &state, index, offset))
    };
    let Some(mut view) = found else {
        return Err(out_of_range(&inner.state.borrow(), offset));
    };
    // The index, not the memo of sequential readers.
    view.memo_position = None;
    let position = start_position(inner, &mut view, offset).await?;
    assert!(
        position <= view.segment.size,
        "{}: index position {position} past segment {} size",
        inner.tp,
        view.segment.base
    );
    Ok((view.segment.base, FilePos(position)))
}

/// See [`crate::log::PartitionLog::offset_for_timestamp`].
pub(crate) async fn offset_for_timestamp(
    inner: &Rc<Inner>,
    target: TimestampMs,
) -> Result<Option<TimestampOffset>, ReadError> {
    let io_error = |error: io::Error| ReadError::Io(Arc::new(error));
    // Segments are found by base offset on every step: retention may delete some meanwhile.
    let mut after = Offset(i64::MIN);
    loop {
        let (segment, mut time_source, mut offset_source, file, log_start) = {
            let state = inner.state.borrow();
            if state.mode == Mode::Closed {
                return Err(ReadError::Closed);
            }
            let found = state.segments.iter().find(|segment| {
                segment.base >= after && segment.max_timestamp.is_some_and(|max| max >= target)
            });
            let Some(segment) = found.cloned() else {
                return Ok(None);
            };
            let file = (!segment.sealed).then(|| state.active.log.clone());
            (
                segment.clone(),
                index_source(inner, &state, &segment, true),
                index_source(inner, &state, &segment, false),
                file,
                state.log_start,
            )
        };
        let file = match file {
            Some(file) => file,
            None => sealed_file(inner, segment.base).await.map_err(io_error)?,
        };
        // The last time entry below the target: the answer is after that batch.
        let found = match lookup_time(&mut time_source, target, bounds(&segment)).await {
            Ok(None) => None,
            Ok(Some(entry)) => {
                match lookup_offset(&mut offset_source, entry.relative, bounds(&segment)).await {
                    Ok(found) => found,
                    Err(LookupError::Io(error)) => return Err(io_error(error)),
                    Err(LookupError::Damaged(_)) => None,
                }
            }
            Err(LookupError::Io(error)) => return Err(io_error(error)),
            Err(LookupError::Damaged(_)) => None,
        };
        let position = entry_position(found).0;
        let mut expected = segment
            .base
            .plus(found.map_or(0, |entry| i64::from(entry.relative.0)));
        // The answer is a batch's base offset, so the scan checks what the read path does:
        // the CRC, and that each batch continues the offsets.
        let mut scanner = Scanner::new(file, position, segment.size, true);
        loop {
            match scanner.next().await.map_err(io_error)? {
                ScanItem::Batch { header, position } => {
                    check_continues(&segment, &header, expected)
                        .map_err(|error| corrupt(&segment, position, error))?;
                    expected = header.next_offset();
                    if header.next_offset() <= log_start || header.max_timestamp < target {
                        continue;
                    }
                    return Ok(Some(TimestampOffset {
                        offset: header.base_offset.max(log_start),
                        timestamp: header.max_timestamp,
                    }));
                }
                ScanItem::End { .. } => break,
                ScanItem::Invalid { position, error } => {
                    return Err(corrupt(&segment, position, error));
                }
            }
        }
        after = segment.end.max(segment.base.plus(1));
    }
}
