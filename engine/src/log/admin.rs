//! Maintenance operations on a partition log: explicit sync, delete-records, retention,
//! truncation (for replication followers), forced roll, close and remove.
//!
//! Operations that change the segment table or the active segment's files run one at a time
//! (the admin lock), and those that touch the active segment first stop appends and wait for the
//! writer to go idle, so the writer remains the only code touching the active segment while
//! appends flow.
//!
//! Must not depend on: the read path's caches beyond the batch cache.

use std::rc::Rc;

use futures::channel::oneshot;

use crate::batch::BatchHeader;
use crate::io::{self as dio, SyncMode, align_down};
use crate::limits::{DIO_ALIGN_BYTES, OFFSET_INDEX_ENTRY_BYTES, SEGMENT_RECYCLE_BYTES_MIN};
use crate::log::checkpoint::{CLEAN_SHUTDOWN_FILE, CleanShutdown};
use crate::log::index::{IndexBuilder, IndexFile, entry_position, lookup_offset};
use crate::log::read::check_continues;
use crate::log::segment::{
    ActiveSegment, INDEX_EXTENSION, LOG_EXTENSION, ScanItem, Scanner, Segment, Spare,
    TIME_INDEX_EXTENSION, file_path, recycle_file_name,
};
use crate::log::writer::{self, cursor_of_active, write_checkpoint, write_checkpoint_edited};
use crate::log::{AdminError, AppendError, Inner, Mode, Op, RetentionReport, State, Waiter};
use crate::types::{FilePos, Offset, TimestampMs};

async fn admin_permit(inner: &Inner) -> Result<crate::rt::sync::Permit<'_>, AdminError> {
    inner
        .admin_lock
        .acquire_permit(1)
        .await
        .map_err(|_| AdminError::Closed)
}

fn check_open(state: &State) -> Result<(), AdminError> {
    match state.mode {
        Mode::Open | Mode::Truncating => Ok(()),
        Mode::Closed => Err(AdminError::Closed),
        Mode::Failed => Err(AdminError::Failed),
    }
}

/// fdatasyncs everything written so far, sharing the writer's group commit.
pub(crate) async fn sync(inner: &Rc<Inner>) -> Result<(), AdminError> {
    let receiver = {
        let mut state = inner.state.borrow_mut();
        check_open(&state)?;
        if state.synced >= state.written {
            return Ok(());
        }
        let (done, receiver) = oneshot::channel();
        let target = state.written;
        // Keep the synced waiters ordered by target: insert before any later target.
        let at = state
            .synced_waiters
            .partition_point(|waiter| waiter.target <= target);
        state.synced_waiters.insert(at, Waiter { target, done });
        receiver
    };
    writer::ensure_running(inner);
    match receiver.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(AppendError::Failed)) => Err(AdminError::Failed),
        Ok(Err(AppendError::Io(error) | AppendError::NoSpace(error))) => Err(AdminError::Io(error)),
        Ok(Err(_)) | Err(oneshot::Canceled) => Err(AdminError::Closed),
    }
}

/// Deletes the first `count` segments (all sealed) and raises the log start to at least
/// `log_start` (and the first kept segment's base). The checkpoint is made durable first, and
/// memory changes only once it is, so a failure (a full disk) leaves the log as it was, for a
/// later pass to retry; then the files are removed, so a crash in between leaves files the next
/// open deletes. The largest deleted log file (of at least `SEGMENT_RECYCLE_BYTES_MIN`) is kept
/// as the partition's spare instead, replacing any earlier one, for the next roll to write over.
async fn delete_prefix(
    inner: &Inner,
    count: usize,
    log_start: Offset,
) -> Result<RetentionReport, AdminError> {
    let (first, new_start) = {
        let state = inner.state.borrow();
        assert!(
            count < state.segments.len(),
            "{}: retention must keep the active segment",
            inner.tp
        );
        let first = state.segments[count].base;
        (first, state.log_start.max(first).max(log_start))
    };
    if count == 0 && new_start == inner.state.borrow().log_start {
        return Ok(RetentionReport {
            log_start_offset: new_start,
            ..RetentionReport::default()
        });
    }
    write_checkpoint_edited(inner, SyncMode::Now, |checkpoint| {
        checkpoint.sealed.retain(|row| row.base >= first);
        checkpoint.log_start = checkpoint.log_start.max(new_start);
        checkpoint.high_watermark = checkpoint.high_watermark.max(new_start);
    })
    .await?;
    // No `.await` from the checkpoint to here: memory follows what is now durable.
    let mut report = RetentionReport::default();
    let mut retired = Vec::with_capacity(count);
    {
        let mut state = inner.state.borrow_mut();
        let state = &mut *state;
        for _ in 0..count {
            let segment = state.segments.pop_front().expect("counted");
            assert!(
                segment.sealed,
                "{}: deleting unsealed segment {}",
                inner.tp, segment.base
            );
            report.deleted_segments.push(segment.base);
            report.deleted_bytes += segment.size;
            retired.push(segment);
        }
        assert_eq!(
            state.segments.front().expect("active segment stays").base,
            first,
            "{}: segments below the first kept one are the ones retired",
            inner.tp
        );
        state.log_start = state.log_start.max(new_start);
        state.high_watermark = state.high_watermark.max(state.log_start);
        if state
            .sealed_file
            .as_ref()
            .is_some_and(|(base, _)| *base < first)
        {
            state.sealed_file = None;
        }
        if state
            .read_ahead
            .as_ref()
            .is_some_and(|stream| stream.segment() < first)
        {
            state.read_ahead = None;
        }
        inner.cache.remove_before(inner.cache_key, state.log_start);
        report.log_start_offset = state.log_start;
    }
    let keep = retired
        .iter()
        .filter(|segment| segment.size >= SEGMENT_RECYCLE_BYTES_MIN)
        .max_by_key(|segment| (segment.size, segment.base))
        .map(|segment| segment.base);
    for segment in &retired {
        let log = file_path(&inner.dir, segment.base, LOG_EXTENSION);
        if keep == Some(segment.base) {
            // The spare is taken out of the state before its file is touched, so a roll running
            // meanwhile either has it already (and renamed it) or never sees it.
            let old = inner.state.borrow_mut().spare.take();
            if let Some(old) = old {
                dio::remove(&inner.dir.join(recycle_file_name(old.end))).await?;
            }
            assert!(
                segment.end <= inner.state.borrow().log_start,
                "{}: recycling segment {} that is not wholly below the log start",
                inner.tp,
                segment.base
            );
            dio::rename(&log, &inner.dir.join(recycle_file_name(segment.end))).await?;
            inner.state.borrow_mut().spare = Some(Spare {
                end: segment.end,
                bytes: segment.size,
            });
        } else {
            dio::remove(&log).await?;
        }
        for extension in [INDEX_EXTENSION, TIME_INDEX_EXTENSION] {
            dio::remove(&file_path(&inner.dir, segment.base, extension)).await?;
        }
    }
    if count > 0 {
        dio::sync_dir(&inner.dir).await?;
    }
    Ok(report)
}

/// See [`crate::log::PartitionLog::delete_records`].
pub(crate) async fn delete_records(
    inner: &Rc<Inner>,
    before: Offset,
) -> Result<RetentionReport, AdminError> {
    let _permit = admin_permit(inner).await?;
    let count = {
        let state = inner.state.borrow();
        check_open(&state)?;
        if before > state.written || before.0 < 0 {
            return Err(AdminError::OffsetOutOfRange {
                requested: before,
                log_start: state.log_start,
                log_end: state.written,
            });
        }
        let log_start = state.log_start.max(before);
        let sealed = state.segments.len() - 1;
        state
            .segments
            .iter()
            .take(sealed)
            .take_while(|segment| segment.end <= log_start)
            .count()
    };
    delete_prefix(inner, count, before).await
}

/// See [`crate::log::PartitionLog::apply_retention`].
pub(crate) async fn apply_retention(
    inner: &Rc<Inner>,
    now: TimestampMs,
) -> Result<RetentionReport, AdminError> {
    let _permit = admin_permit(inner).await?;
    let count = {
        let state = inner.state.borrow();
        check_open(&state)?;
        let segments = &state.segments;
        let sealed = segments.len() - 1;
        let mut count = 0;
        while count < sealed && segments[count].end <= state.log_start {
            count += 1;
        }
        // Retention deletes only segments wholly below the high watermark (Kafka's rule): data a
        // replica may still need, or consumers cannot see yet, is never expired.
        let deletable = segments
            .iter()
            .take(sealed)
            .take_while(|segment| segment.end <= state.high_watermark)
            .count()
            .max(count);
        if let Some(retention_ms) = inner.config().retention_ms {
            let horizon = now.0.saturating_sub(retention_ms);
            while count < deletable
                && segments[count]
                    .max_timestamp
                    .is_some_and(|max| max.0 < horizon)
            {
                count += 1;
            }
        }
        if let Some(retention_bytes) = inner.config().retention_bytes {
            let total: u64 = segments
                .iter()
                .skip(count)
                .map(|segment| segment.size)
                .sum();
            let mut excess = i128::from(total) - i128::from(retention_bytes);
            while count < deletable && excess - i128::from(segments[count].size) >= 0 {
                excess -= i128::from(segments[count].size);
                count += 1;
            }
        }
        assert!(
            count <= deletable && deletable <= sealed,
            "{}: retention past the high watermark or into the active segment",
            inner.tp
        );
        count
    };
    let log_start = inner.state.borrow().log_start;
    delete_prefix(inner, count, log_start).await
}

/// Forces a roll (if the active segment has data) and waits for it.
pub(crate) async fn roll_now(inner: &Rc<Inner>) -> Result<(), AdminError> {
    let base = {
        let mut state = inner.state.borrow_mut();
        check_open(&state)?;
        if state.mode == Mode::Truncating {
            return Err(AdminError::Closed);
        }
        if state.assign.bytes == 0 {
            return Ok(());
        }
        if let Err(AppendError::SegmentLimit { segments, limit }) =
            crate::log::append::check_segment_count(&state)
        {
            return Err(AdminError::SegmentLimit { segments, limit });
        }
        let base = state.next_offset;
        state.queue.push_back(Op::Roll { base });
        state.assign = crate::log::AssignCursor {
            segment_base: base,
            bytes: 0,
            first_max_timestamp: None,
        };
        // Only this roll's failure answers it.
        state.roll_failure = None;
        base
    };
    writer::ensure_running(inner);
    writer::wait_idle(inner).await;
    let mut state = inner.state.borrow_mut();
    check_open(&state)?;
    match state.roll_failure.take() {
        // The roll was undone (a full disk): the log is as it was, and says why.
        Some((failed, error)) if failed == base => Err(AdminError::Io(error)),
        _ => Ok(()),
    }
}

/// See [`crate::log::PartitionLog::truncate_to`].
pub(crate) async fn truncate_to(inner: &Rc<Inner>, offset: Offset) -> Result<Offset, AdminError> {
    let _permit = admin_permit(inner).await?;
    {
        let mut state = inner.state.borrow_mut();
        check_open(&state)?;
        state.mode = Mode::Truncating;
    }
    writer::wait_idle(inner).await;
    let result = truncate_idle(inner, offset).await;
    let mut state = inner.state.borrow_mut();
    if state.mode == Mode::Truncating {
        state.mode = Mode::Open;
    }
    if result.is_err() && state.mode == Mode::Open {
        // The files may no longer match memory: refuse appends until reopened.
        state.mode = Mode::Failed;
    }
    result
}

/// The batch containing `offset` in segment `index`: its position and base offset.
async fn find_batch(
    inner: &Inner,
    index: usize,
    offset: Offset,
) -> Result<(u64, Offset), AdminError> {
    let (segment, mut source, file) = {
        let state = inner.state.borrow();
        let segment = state.segments[index].clone();
        let source = if segment.sealed {
            crate::log::index::IndexSource::sealed(
                file_path(&inner.dir, segment.base, INDEX_EXTENSION),
                segment.index_bytes,
                OFFSET_INDEX_ENTRY_BYTES,
            )
        } else {
            state.active.index.source(OFFSET_INDEX_ENTRY_BYTES)
        };
        let file = (!segment.sealed).then(|| state.active.log.clone());
        (segment, source, file)
    };
    let file = match file {
        Some(file) => file,
        None => dio::open_read(&file_path(&inner.dir, segment.base, LOG_EXTENSION)).await?,
    };
    let bounds = crate::log::index::EntryBounds {
        relative_end: u64::try_from(segment.end.0 - segment.base.0).expect("end >= base"),
        size: segment.size,
    };
    let target = crate::log::index::relative(segment.base, offset);
    let (start, mut expected) = match lookup_offset(&mut source, target, bounds).await {
        Ok(Some(entry)) => (
            entry_position(Some(entry)).0,
            segment.base.plus(i64::from(entry.relative.0)),
        ),
        Ok(None) | Err(_) => (0, segment.base),
    };
    let mut scanner = Scanner::new(file, start, segment.size, false);
    loop {
        assert!(expected <= offset, "{}: scan passed {offset}", inner.tp);
        match scanner.next().await? {
            ScanItem::Batch { header, position } => {
                // Base offsets are outside the batch CRC: one changed on disk must not pass.
                check_batch(&segment, position, &header, expected)?;
                if header.next_offset() > offset {
                    return Ok((position, header.base_offset));
                }
                expected = header.next_offset();
            }
            ScanItem::End { position } | ScanItem::Invalid { position, .. } => {
                return Err(AdminError::Corrupt {
                    segment: segment.base,
                    position: FilePos(position),
                    error: crate::batch::BatchError::Truncated { needed: 0, have: 0 },
                });
            }
        }
    }
}

/// [`check_continues`] as an admin error.
fn check_batch(
    segment: &Segment,
    position: u64,
    header: &BatchHeader,
    expected: Offset,
) -> Result<(), AdminError> {
    check_continues(segment, header, expected).map_err(|error| AdminError::Corrupt {
        segment: segment.base,
        position: FilePos(position),
        error,
    })
}

/// Rebuilds the index bytes of `segment` cut at `limit`, from its batches in `[0, limit)`
/// (framing and [`check_continues`]; the batches must end exactly at `limit` and `end`).
async fn rebuild_index_bytes(
    file: crate::io::File,
    segment: &Segment,
    limit: u64,
    end: Offset,
    interval: u64,
) -> Result<(Vec<u8>, Vec<u8>, IndexBuilder), AdminError> {
    let base = segment.base;
    let mut builder = IndexBuilder::new(base, interval);
    let (mut offsets, mut times) = (Vec::new(), Vec::new());
    let mut scanner = Scanner::new(file, 0, limit, false);
    let mut expected = base;
    loop {
        match scanner.next().await? {
            ScanItem::Batch { header, position } => {
                check_batch(segment, position, &header, expected)?;
                expected = header.next_offset();
                let entries = builder.on_batch(header.base_offset, position, header.max_timestamp);
                if let Some(entry) = entries.offset {
                    offsets.extend_from_slice(&entry.encode());
                }
                if let Some(entry) = entries.time {
                    times.extend_from_slice(&entry.encode());
                }
            }
            ScanItem::End { position } if position == limit => break,
            // Zeros before the cut: the batches do not reach it.
            ScanItem::End { position } => {
                return Err(AdminError::Corrupt {
                    segment: base,
                    position: FilePos(position),
                    error: crate::batch::BatchError::Truncated { needed: 0, have: 0 },
                });
            }
            ScanItem::Invalid { position, error } => {
                return Err(AdminError::Corrupt {
                    segment: base,
                    position: FilePos(position),
                    error,
                });
            }
        }
    }
    if expected != end {
        return Err(AdminError::Corrupt {
            segment: base,
            position: FilePos(limit),
            error: crate::batch::BatchError::UnexpectedBaseOffset {
                base_offset: end.0,
                expected: expected.0,
            },
        });
    }
    Ok((offsets, times, builder))
}

/// Writes `bytes` as an active index file: whole blocks on disk, the rest returned for memory.
/// Opens (or creates) the file and closes it again: active indexes are not held open.
pub(crate) async fn write_active_index(
    path: std::path::PathBuf,
    bytes: &[u8],
) -> std::io::Result<IndexFile> {
    let full = usize::try_from(align_down(bytes.len() as u64)).expect("fits");
    let file = dio::open_or_create(&path).await?;
    let result = async {
        dio::truncate(&file, 0).await?;
        if full > 0 {
            let buffer = dio::aligned_buffer(&file, &[&bytes[..full]]);
            dio::write_at(&file, buffer, 0).await?;
        }
        Ok(())
    }
    .await;
    dio::close(file).await?;
    result.map(|()| IndexFile::new(path, full as u64, bytes[full..].to_vec()))
}

async fn truncate_idle(inner: &Rc<Inner>, offset: Offset) -> Result<Offset, AdminError> {
    let index = {
        let state = inner.state.borrow();
        assert!(
            state.queue.is_empty(),
            "{}: truncating with queued appends",
            inner.tp
        );
        if offset >= state.written {
            return Ok(state.written);
        }
        if offset < state.log_start {
            return Err(AdminError::OffsetOutOfRange {
                requested: offset,
                log_start: state.log_start,
                log_end: state.written,
            });
        }
        let after = state
            .segments
            .partition_point(|segment| segment.base <= offset);
        after
            .checked_sub(1)
            .expect("offset >= log start >= first base")
    };
    let (cut, new_end) = find_batch(inner, index, offset).await?;
    let segment = inner.state.borrow().segments[index].clone();
    let base = segment.base;
    let paths = [
        file_path(&inner.dir, base, LOG_EXTENSION),
        file_path(&inner.dir, base, INDEX_EXTENSION),
        file_path(&inner.dir, base, TIME_INDEX_EXTENSION),
    ];
    // Everything that reads the kept part comes before anything changes on disk, so a corrupt
    // batch there fails the truncation with nothing removed.
    let log = dio::open_read_write(&paths[0]).await?;
    let interval = u64::from(inner.config().index_interval_bytes);
    let (offsets, times, builder) =
        rebuild_index_bytes(log.clone(), &segment, cut, new_end, interval).await?;
    // Delete later segments newest first, so a crash leaves a contiguous prefix.
    let later: Vec<Offset> = {
        let state = inner.state.borrow();
        state
            .segments
            .iter()
            .skip(index + 1)
            .map(|segment| segment.base)
            .rev()
            .collect()
    };
    if !later.is_empty() {
        // Open refuses a log whose checkpoint lists a missing segment, so no listed segment
        // is unlinked before a checkpoint that lists none from the cut segment on is durable.
        // From then until the final checkpoint, a crash or failure leaves the cut segment and
        // whatever is left after it as unlisted tail segments, which open scans: the log comes
        // back at the old end, at the cut, or in between, never unopenable.
        let shorter = {
            let state = inner.state.borrow();
            let mut shorter = writer::checkpoint_of(&state);
            shorter.sealed.truncate(index);
            shorter.recovery_point = state.segments[index].base;
            shorter.log_start = state.log_start.min(new_end);
            shorter.high_watermark = state.high_watermark.min(new_end);
            shorter
        };
        writer::write_checkpoint_as(inner, shorter).await?;
    }
    for base in &later {
        for extension in [LOG_EXTENSION, INDEX_EXTENSION, TIME_INDEX_EXTENSION] {
            dio::remove(&file_path(&inner.dir, *base, extension)).await?;
        }
    }
    dio::truncate(&log, cut).await?;
    dio::sync(&log).await?;
    let index_state = write_active_index(paths[1].clone(), &offsets).await?;
    let time_state = write_active_index(paths[2].clone(), &times).await?;
    let tail_from = align_down(cut);
    let tail_len = usize::try_from(cut - tail_from).expect("below a block");
    let tail = dio::read_at(&log, tail_from, tail_len).await?.to_vec();
    dio::sync_dir(&inner.dir).await?;
    {
        let mut state = inner.state.borrow_mut();
        let state = &mut *state;
        state.segments.truncate(index + 1);
        let segment = state.segments.back_mut().expect("kept");
        segment.end = new_end;
        segment.size = cut;
        segment.max_timestamp = builder.max_timestamp();
        segment.sealed = false;
        segment.index_bytes = 0;
        segment.time_index_bytes = 0;
        state.active = ActiveSegment {
            base,
            log,
            files_exact: false,
            tail,
            allocated: cut,
            index: index_state,
            time_index: time_state,
            builder,
        };
        state.written = new_end;
        state.synced = new_end;
        state.next_offset = new_end;
        state.unsynced_records = 0;
        state.assign = cursor_of_active(state);
        state.log_start = state.log_start.min(new_end);
        state.high_watermark = state.high_watermark.min(new_end);
        state.epochs.truncate_from_end(new_end);
        state.read_memo = Default::default();
        state.sealed_file = None;
        // Read-ahead may hold bytes the truncation removed (and appends will overwrite).
        state.read_ahead = None;
        inner.cache.truncate_from(inner.cache_key, new_end);
    }
    write_checkpoint(inner, SyncMode::Now).await?;
    Ok(new_end)
}

/// See [`crate::log::PartitionLog::close`].
pub(crate) async fn close(inner: &Rc<Inner>) -> Result<(), AdminError> {
    let _permit = admin_permit(inner).await?;
    let failed = {
        let mut state = inner.state.borrow_mut();
        if state.mode == Mode::Closed {
            return Err(AdminError::Closed);
        }
        let failed = state.mode == Mode::Failed;
        state.mode = Mode::Closed;
        state.read_ahead = None;
        failed
    };
    writer::wait_idle(inner).await;
    inner.cache.forget(inner.cache_key);
    if failed || inner.state.borrow().mode == Mode::Failed {
        return Err(AdminError::Failed);
    }
    // Shutdown closes thousands of partitions at once, so nothing here syncs a file of its own:
    // each step that needs the earlier ones durable waits for a shared sync of the file system,
    // which serves every partition of the shard waiting at that moment (group commit).
    // 1. Trim the log's preallocation (and write any whole index block still in memory). The
    //    indexes' partial last blocks go into the marker, not their files, so the index files
    //    stay as the writer keeps them while open; so do the high watermark and the epoch
    //    entries of the active segment, so the checkpoint files are rewritten only when
    //    something else changed (normally never: rolls and retention write them).
    // 2. If they must be rewritten: stage them, shared sync, rename them into place, shared
    //    sync (`write_checkpoint`); otherwise one shared sync.
    // 3. Write the marker in place; shared sync.
    // So the marker is written only once everything it vouches for is durable, and a failure
    // anywhere returns before it: no marker claims a clean state that is not on disk.
    let (log, size, exact) = {
        let state = inner.state.borrow();
        let size = state.segments.back().expect("active segment").size;
        (state.active.log.clone(), size, state.active.files_exact)
    };
    let flushed = flush_index_blocks(inner).await?;
    if !exact {
        dio::truncate(&log, size).await?;
        inner.state.borrow_mut().active.allocated = size;
    }
    if writer::close_needs_checkpoint(inner) {
        writer::write_checkpoint(inner, SyncMode::Shared).await?;
    } else if !exact || flushed {
        dio::sync_file_system(&log).await?;
    }
    let marker = {
        let mut state = inner.state.borrow_mut();
        state.active.files_exact = true;
        let segment = state.segments.back().expect("active segment");
        assert_eq!(
            state.active.allocated, segment.size,
            "{}: trimmed",
            inner.tp
        );
        let builder = state.active.builder.state();
        let (index, time_index) = (&state.active.index, &state.active.time_index);
        CleanShutdown {
            active_base: segment.base,
            log_end: state.written,
            active_size: segment.size,
            index_bytes: u32::try_from(index.len()).expect("index size fits in u32"),
            time_index_bytes: u32::try_from(time_index.len()).expect("index size fits in u32"),
            max: builder.max,
            first_max_timestamp: builder.first_max_timestamp,
            last_indexed_position: builder.last_indexed_position,
            last_relative: builder.last_relative,
            last_time_entry: builder.last_time_entry,
            high_watermark: state.high_watermark,
            epochs: writer::marker_epochs(&state),
            index_tail: index.unflushed().to_vec(),
            time_index_tail: time_index.unflushed().to_vec(),
        }
    };
    // In place (open left the file invalidated, not removed), or a new file the first time:
    // either way no rename. A crash mid-write leaves a marker that fails its magic or CRC, and
    // the next open recovers by scanning, so the marker need not be replaced atomically.
    let path = inner.dir.join(CLEAN_SHUTDOWN_FILE);
    let written = dio::write_small_file_in_place(&path, &marker.encode(), SyncMode::Shared).await;
    if let Err(error) = written {
        // What the marker vouches for is durable, but the marker's own write or sync failed:
        // take it back (best effort, unsynced), so that `close` leaves a valid marker only when
        // it succeeded. A marker that survives anyway still tells the truth.
        let _ = dio::write_small_file_in_place(&path, &[0u8; DIO_ALIGN_BYTES], SyncMode::Deferred)
            .await;
        return Err(error.into());
    }
    Ok(())
}

/// Writes the whole blocks the active indexes still hold in memory (normally none: the writer
/// writes each block as it fills, but keeps it after a failed write), so what is left in memory
/// is less than a block each. Returns whether it wrote anything.
async fn flush_index_blocks(inner: &Inner) -> Result<bool, AdminError> {
    let mut flushed = false;
    for time in [false, true] {
        let job = {
            let state = inner.state.borrow();
            let index = if time {
                &state.active.time_index
            } else {
                &state.active.index
            };
            index.prepare_flush()
        };
        let Some(job) = job else { continue };
        let (position, bytes) = (job.position, job.bytes.len());
        job.write().await?;
        let mut state = inner.state.borrow_mut();
        state.active.files_exact = false;
        let index = if time {
            &mut state.active.time_index
        } else {
            &mut state.active.index
        };
        index.complete_flush(position, bytes);
        flushed = true;
    }
    Ok(flushed)
}

/// See [`crate::log::PartitionLog::remove`].
pub(crate) async fn remove(inner: &Rc<Inner>) -> Result<(), AdminError> {
    let _permit = admin_permit(inner).await?;
    inner.state.borrow_mut().mode = Mode::Closed;
    writer::wait_idle(inner).await;
    inner.removed.set(true);
    inner.cache.forget(inner.cache_key);
    dio::remove_dir_all(&inner.dir).await?;
    Ok(())
}
