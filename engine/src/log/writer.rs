//! The asynchronous half of appends: the per-partition writer task that turns queued appends
//! into O_DIRECT write rounds, group-commits fdatasyncs, rolls segments, flushes index blocks,
//! and fails or poisons the log when IO fails.
//!
//! The writer is spawned when work is queued and exits when the queue is drained, so an idle
//! partition has no task. It is the only code that changes the active segment while the log is
//! open (maintenance operations first wait for it to go idle). State is borrowed only in the
//! synchronous sections between awaits.
//!
//! Must not depend on: the read path.

use std::io;
use std::path::Path;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;

use crate::io::{self as dio, align_down};
use crate::limits::{
    DIO_ALIGN_BYTES, OFFSET_INDEX_ENTRY_BYTES, TIME_INDEX_ENTRY_BYTES, WRITE_ROUND_BYTES_MAX,
};
use crate::log::checkpoint::{CHECKPOINT_FILE, Checkpoint, SealedRow};
use crate::log::index::{IndexBuilder, IndexFile};
use crate::log::segment::{
    ActiveSegment, INDEX_EXTENSION, LOG_EXTENSION, Segment, TIME_INDEX_EXTENSION, file_path,
};
use crate::log::{AppendError, AssignCursor, Inner, Mode, Op, StagedBatch, State, Waiter};
use crate::types::Offset;

/// Starts the writer task unless it is running.
pub(crate) fn ensure_running(inner: &Rc<Inner>) {
    let mut state = inner.state.borrow_mut();
    if state.writer_running {
        return;
    }
    state.writer_running = true;
    drop(state);
    crate::rt::spawn(run(inner.clone())).detach();
}

enum Step {
    Write(Vec<StagedBatch>),
    Roll(Offset),
    Sync,
    Idle,
}

/// The writer loop: runs until the queue is drained and no sync is owed.
async fn run(inner: Rc<Inner>) {
    loop {
        match next_step(&inner) {
            Step::Idle => return,
            Step::Write(batches) => {
                if let Err(error) = write_round(&inner, batches).await {
                    fail_pending(&inner, AppendError::from_io(error));
                }
            }
            Step::Roll(base) => {
                if let Err(failure) = roll(&inner, base).await {
                    match failure {
                        RollFailure::Create(error) => {
                            fail_pending(&inner, AppendError::from_io(error))
                        }
                        RollFailure::Fatal(error) => poison(&inner, &error),
                    }
                }
            }
            Step::Sync => sync_step(&inner).await,
        }
    }
}

fn sync_owed(inner: &Inner, state: &State) -> bool {
    if state.synced >= state.written {
        return false;
    }
    let flush_messages = inner.config().flush_messages.unwrap_or(u64::MAX);
    state
        .synced_waiters
        .front()
        .is_some_and(|waiter| waiter.target <= state.written)
        || state.flush_due
        || state.unsynced_records >= flush_messages
}

fn next_step(inner: &Inner) -> Step {
    let mut state = inner.state.borrow_mut();
    if state.mode == Mode::Failed || inner.removed.get() {
        fail_all(&mut state, &AppendError::Failed);
        return go_idle(&mut state);
    }
    if sync_owed(inner, &state) {
        return Step::Sync;
    }
    match state.queue.pop_front() {
        None => go_idle(&mut state),
        Some(Op::Roll { base }) => Step::Roll(base),
        Some(Op::Write { batches, bytes }) => {
            let mut round = batches;
            let mut round_bytes = bytes;
            while let Some(Op::Write { bytes, .. }) = state.queue.front() {
                if round_bytes + bytes > WRITE_ROUND_BYTES_MAX {
                    break;
                }
                round_bytes += bytes;
                let Some(Op::Write { batches, .. }) = state.queue.pop_front() else {
                    unreachable!("front checked")
                };
                round.extend(batches);
            }
            assert!(
                state.queued_bytes >= round_bytes,
                "{}: queued bytes accounting",
                inner.tp
            );
            state.queued_bytes -= round_bytes;
            Step::Write(round)
        }
    }
}

fn go_idle(state: &mut State) -> Step {
    state.writer_running = false;
    for waiter in state.idle_waiters.drain(..) {
        let _ = waiter.send(());
    }
    Step::Idle
}

/// Waits until the writer has nothing left to do.
pub(crate) async fn wait_idle(inner: &Inner) {
    let receiver = {
        let mut state = inner.state.borrow_mut();
        if !state.writer_running && state.queue.is_empty() {
            return;
        }
        let (sender, receiver) = oneshot::channel();
        state.idle_waiters.push(sender);
        receiver
    };
    let _ = receiver.await;
}

/// Rounds `value` up to a multiple of `step`.
fn round_up(value: u64, step: u64) -> u64 {
    value.div_ceil(step) * step
}

/// Writes one round: the tail block plus the staged batches, in one aligned buffer.
async fn write_round(inner: &Rc<Inner>, batches: Vec<StagedBatch>) -> Result<(), Arc<io::Error>> {
    let staged_bytes: u64 = batches.iter().map(|batch| batch.bytes.len() as u64).sum();
    let (file, buffer, position, size, new_tail, allocate_to) = {
        let state = inner.state.borrow();
        let segment = state.segments.back().expect("log has an active segment");
        let active = &state.active;
        assert_eq!(
            active.base, segment.base,
            "{}: active segment mismatch",
            inner.tp
        );
        assert_eq!(
            batches[0].base, segment.end,
            "{}: round does not continue the log",
            inner.tp
        );
        let size = segment.size;
        let position = align_down(size);
        assert_eq!(
            active.tail.len() as u64,
            size - position,
            "{}: tail block length",
            inner.tp
        );
        let mut parts: Vec<&[u8]> = Vec::with_capacity(batches.len() + 1);
        parts.push(&active.tail);
        parts.extend(batches.iter().map(|batch| &batch.bytes[..]));
        let buffer = dio::aligned_buffer(&active.log, &parts);
        let new_size = size + staged_bytes;
        let tail_from = usize::try_from(align_down(new_size) - position).expect("in buffer");
        let tail_to = usize::try_from(new_size - position).expect("in buffer");
        let new_tail = buffer.as_bytes()[tail_from..tail_to].to_vec();
        let write_end = position + buffer.len() as u64;
        let step = inner.config().preallocate_bytes;
        let allocate_to =
            (step > 0 && write_end > active.allocated).then(|| round_up(write_end, step));
        (
            active.log.clone(),
            buffer,
            position,
            size,
            new_tail,
            allocate_to,
        )
    };
    if let Some(allocate_to) = allocate_to {
        dio::allocate(&file, allocate_to).await.map_err(Arc::new)?;
        let mut state = inner.state.borrow_mut();
        state.active.allocated = state.active.allocated.max(allocate_to);
    }
    dio::write_at(&file, buffer, position)
        .await
        .map_err(Arc::new)?;
    {
        let mut state = inner.state.borrow_mut();
        let state = &mut *state;
        let segment = state
            .segments
            .back_mut()
            .expect("log has an active segment");
        assert_eq!(
            segment.size, size,
            "{}: active segment changed during a write",
            inner.tp
        );
        assert_eq!(
            segment.base, state.active.base,
            "{}: segment rolled during a write",
            inner.tp
        );
        let mut at = size;
        let mut records = 0;
        for batch in &batches {
            assert_eq!(
                batch.base, segment.end,
                "{}: offsets not contiguous at {}",
                inner.tp, batch.base
            );
            let entries = state
                .active
                .builder
                .on_batch(batch.base, at, batch.max_timestamp);
            if let Some(entry) = entries.offset {
                state.active.index.push(&entry.encode());
            }
            if let Some(entry) = entries.time {
                state.active.time_index.push(&entry.encode());
            }
            segment.end = batch.next;
            segment.max_timestamp = segment.max_timestamp.max(Some(batch.max_timestamp));
            records += u64::try_from(batch.next.0 - batch.base.0).expect("positive");
            at += batch.bytes.len() as u64;
        }
        assert_eq!(at, size + staged_bytes);
        segment.size = at;
        let end = segment.end;
        state.active.tail = new_tail;
        assert!(end > state.written, "{}: written end must grow", inner.tp);
        state.written = end;
        state.unsynced_records += records;
        state.stats.writes += 1;
        wake(&mut state.written_waiters, end, &inner.tp);
    }
    arm_flush_timer(inner);
    flush_index_blocks(inner).await.map_err(Arc::new)
}

/// Writes the whole blocks the active indexes hold in memory.
async fn flush_index_blocks(inner: &Inner) -> io::Result<()> {
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
        dio::write_at(&job.file, job.buffer, job.position).await?;
        let mut state = inner.state.borrow_mut();
        let index = if time {
            &mut state.active.time_index
        } else {
            &mut state.active.index
        };
        index.complete_flush(job.position, job.bytes);
    }
    Ok(())
}

fn wake(
    waiters: &mut std::collections::VecDeque<Waiter>,
    upto: Offset,
    tp: &crate::types::TopicPartition,
) {
    let mut last = Offset(i64::MIN);
    while waiters.front().is_some_and(|waiter| waiter.target <= upto) {
        let waiter = waiters.pop_front().expect("front checked");
        assert!(
            waiter.target >= last,
            "{tp}: waiters out of order at {}",
            waiter.target
        );
        last = waiter.target;
        let _ = waiter.done.send(Ok(()));
    }
}

/// Arms the `flush.ms` timer when unsynced data exists and no timer is armed.
fn arm_flush_timer(inner: &Rc<Inner>) {
    let Some(flush_ms) = inner.config().flush_ms else {
        return;
    };
    let mut state = inner.state.borrow_mut();
    if state.flush_timer_armed || state.synced >= state.written {
        return;
    }
    state.flush_timer_armed = true;
    drop(state);
    let weak: Weak<Inner> = Rc::downgrade(inner);
    let delay = Duration::from_millis(u64::try_from(flush_ms).expect("validated non-negative"));
    crate::rt::spawn(async move {
        crate::rt::sleep(delay).await;
        let Some(inner) = weak.upgrade() else { return };
        {
            let mut state = inner.state.borrow_mut();
            state.flush_timer_armed = false;
            if state.mode != Mode::Open {
                return;
            }
            state.flush_due = true;
        }
        ensure_running(&inner);
    })
    .detach();
}

/// One group commit: fdatasync everything written so far.
async fn sync_step(inner: &Rc<Inner>) {
    let (file, target, records) = {
        let state = inner.state.borrow();
        (
            state.active.log.clone(),
            state.written,
            state.unsynced_records,
        )
    };
    if let Err(error) = dio::sync(&file).await {
        poison(inner, &Arc::new(error));
        return;
    }
    let mut state = inner.state.borrow_mut();
    let state = &mut *state;
    assert!(
        target >= state.synced,
        "{}: synced end must not go back",
        inner.tp
    );
    state.synced = target;
    state.unsynced_records -= records;
    state.flush_due = false;
    state.stats.syncs += 1;
    wake(&mut state.synced_waiters, target, &inner.tp);
}

/// The assignment cursor matching the active segment as written.
pub(crate) fn cursor_of_active(state: &State) -> AssignCursor {
    let segment = state.segments.back().expect("log has an active segment");
    AssignCursor {
        segment_base: segment.base,
        bytes: segment.size,
        first_max_timestamp: state.active.builder.first_max_timestamp(),
    }
}

/// A write failed: fail every append not yet written, and roll assignment back to the written
/// end so the next append continues from there.
pub(crate) fn fail_pending(inner: &Inner, error: AppendError) {
    let mut state = inner.state.borrow_mut();
    let state = &mut *state;
    tracing::warn!(tp = %inner.tp, %error, written = %state.written, "append failed");
    state.queue.clear();
    state.queued_bytes = 0;
    state.next_offset = state.written;
    state.assign = cursor_of_active(state);
    inner.cache.truncate_from(inner.cache_key, state.written);
    let written = state.written;
    for waiter in state.written_waiters.drain(..) {
        assert!(
            waiter.target > written,
            "{}: written waiter left behind",
            inner.tp
        );
        let _ = waiter.done.send(Err(error.clone()));
    }
    let keep: std::collections::VecDeque<Waiter> = state
        .synced_waiters
        .drain(..)
        .filter_map(|waiter| {
            if waiter.target <= written {
                Some(waiter)
            } else {
                let _ = waiter.done.send(Err(error.clone()));
                None
            }
        })
        .collect();
    state.synced_waiters = keep;
}

fn fail_all(state: &mut State, error: &AppendError) {
    state.queue.clear();
    state.queued_bytes = 0;
    for waiter in state
        .written_waiters
        .drain(..)
        .chain(state.synced_waiters.drain(..))
    {
        let _ = waiter.done.send(Err(error.clone()));
    }
}

/// An fdatasync (or a seal) failed: the state of unsynced data is unknown, so the log refuses
/// appends until reopened.
pub(crate) fn poison(inner: &Inner, error: &Arc<io::Error>) {
    tracing::error!(tp = %inner.tp, %error, "log failed; appends refused until reopened");
    fail_pending(inner, AppendError::Failed);
    let mut state = inner.state.borrow_mut();
    state.mode = Mode::Failed;
    fail_all(&mut state, &AppendError::Failed);
}

enum RollFailure {
    /// Creating the new segment failed; nothing changed.
    Create(Arc<io::Error>),
    /// Sealing or checkpointing failed after the new segment existed.
    Fatal(Arc<io::Error>),
}

/// Creates a new, empty segment's files (preallocating the log file) and returns its writer
/// state. Removes what it created on failure.
pub(crate) async fn create_segment(
    dir: &Path,
    base: Offset,
    interval: u64,
    preallocate: u64,
) -> io::Result<ActiveSegment> {
    let paths = [
        file_path(dir, base, LOG_EXTENSION),
        file_path(dir, base, INDEX_EXTENSION),
        file_path(dir, base, TIME_INDEX_EXTENSION),
    ];
    let result = async {
        let log = dio::create(&paths[0]).await?;
        if preallocate > 0 {
            dio::allocate(&log, preallocate).await?;
        }
        let index = dio::create(&paths[1]).await?;
        let time_index = dio::create(&paths[2]).await?;
        Ok(ActiveSegment {
            base,
            log,
            tail: Vec::new(),
            allocated: preallocate,
            index: IndexFile {
                file: index,
                path: paths[1].clone(),
                disk_bytes: 0,
                mem: Vec::new(),
            },
            time_index: IndexFile {
                file: time_index,
                path: paths[2].clone(),
                disk_bytes: 0,
                mem: Vec::new(),
            },
            builder: IndexBuilder::new(base, interval),
        })
    }
    .await;
    if result.is_err() {
        for path in &paths {
            let _ = dio::remove(path).await;
        }
    }
    result
}

/// How [`finish_active`] leaves the segment.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// Sealing at a roll: append the final time entry.
    Seal,
    /// Closing: the segment stays active after reopening; no final entry.
    Close,
}

/// Writes the active segment's index tails, trims every file to its exact size (dropping the
/// preallocation) and fdatasyncs all three. Returns the index sizes.
pub(crate) async fn finish_active(inner: &Inner, finish: Finish) -> io::Result<(u64, u64)> {
    let (log, size, jobs) = {
        let mut state = inner.state.borrow_mut();
        let state = &mut *state;
        if finish == Finish::Seal
            && let Some(entry) = state.active.builder.on_seal()
        {
            state.active.time_index.push(&entry.encode());
        }
        let size = state.segments.back().expect("active segment").size;
        let mut jobs = Vec::with_capacity(2);
        for index in [&state.active.index, &state.active.time_index] {
            assert_eq!(
                index.disk_bytes % DIO_ALIGN_BYTES as u64,
                0,
                "{}: index disk bytes",
                inner.tp
            );
            let buffer =
                (!index.mem.is_empty()).then(|| dio::aligned_buffer(&index.file, &[&index.mem]));
            jobs.push((index.file.clone(), buffer, index.disk_bytes, index.len()));
        }
        (state.active.log.clone(), size, jobs)
    };
    let mut lengths = [0u64; 2];
    for (slot, (file, buffer, position, len)) in jobs.into_iter().enumerate() {
        if let Some(buffer) = buffer {
            dio::write_at(&file, buffer, position).await?;
        }
        dio::truncate(&file, len).await?;
        dio::sync(&file).await?;
        lengths[slot] = len;
    }
    assert_eq!(
        lengths[0] % OFFSET_INDEX_ENTRY_BYTES as u64,
        0,
        "{}: offset index size",
        inner.tp
    );
    assert_eq!(
        lengths[1] % TIME_INDEX_ENTRY_BYTES as u64,
        0,
        "{}: time index size",
        inner.tp
    );
    dio::truncate(&log, size).await?;
    dio::sync(&log).await?;
    let mut state = inner.state.borrow_mut();
    state.active.allocated = size;
    Ok((lengths[0], lengths[1]))
}

/// Seals the active segment and starts a new one at `base`, then persists the checkpoint.
async fn roll(inner: &Rc<Inner>, base: Offset) -> Result<(), RollFailure> {
    {
        let state = inner.state.borrow();
        assert_eq!(
            state.written, base,
            "{}: roll to {base} before the log reached it",
            inner.tp
        );
        assert!(
            base > state.active.base,
            "{}: roll must move forward",
            inner.tp
        );
    }
    let config = inner.config();
    let interval = u64::from(config.index_interval_bytes);
    let new = create_segment(&inner.dir, base, interval, config.preallocate_bytes)
        .await
        .map_err(|error| RollFailure::Create(Arc::new(error)))?;
    let fatal = |error: io::Error| RollFailure::Fatal(Arc::new(error));
    dio::sync_dir(&inner.dir).await.map_err(fatal)?;
    let (index_bytes, time_index_bytes) =
        finish_active(inner, Finish::Seal).await.map_err(fatal)?;
    {
        let mut state = inner.state.borrow_mut();
        let state = &mut *state;
        let sealed = state.segments.back_mut().expect("active segment");
        assert_eq!(
            sealed.end, base,
            "{}: sealed segment must end at the new base",
            inner.tp
        );
        sealed.sealed = true;
        sealed.index_bytes = index_bytes;
        sealed.time_index_bytes = time_index_bytes;
        state.segments.push_back(Segment {
            base,
            end: base,
            size: 0,
            max_timestamp: None,
            index_bytes: 0,
            time_index_bytes: 0,
            sealed: false,
        });
        state.active = new;
        state.synced = state.written;
        state.unsynced_records = 0;
        state.stats.rolls += 1;
        wake(&mut state.synced_waiters, state.synced, &inner.tp);
    }
    write_checkpoint(inner).await.map_err(fatal)
}

/// The checkpoint describing the current state.
pub(crate) fn checkpoint_of(state: &State) -> Checkpoint {
    let sealed: Vec<SealedRow> = state
        .segments
        .iter()
        .filter(|segment| segment.sealed)
        .map(|segment| SealedRow {
            base: segment.base,
            end: segment.end,
            size: segment.size,
            max_timestamp: segment.max_timestamp,
            index_bytes: u32::try_from(segment.index_bytes).expect("index size fits in u32"),
            time_index_bytes: u32::try_from(segment.time_index_bytes)
                .expect("index size fits in u32"),
        })
        .collect();
    assert_eq!(
        sealed.len() + 1,
        state.segments.len(),
        "only the last segment is active"
    );
    Checkpoint {
        log_start: state.log_start,
        high_watermark: state.high_watermark,
        recovery_point: state.active.base,
        sealed,
    }
}

/// Persists the checkpoint atomically. Concurrent callers are serialised and each writes the
/// state current when its turn comes.
pub(crate) async fn write_checkpoint(inner: &Inner) -> io::Result<()> {
    let _permit = inner
        .checkpoint_lock
        .acquire_permit(1)
        .await
        .map_err(|_| io::Error::other("checkpoint lock closed"))?;
    let bytes = checkpoint_of(&inner.state.borrow()).encode();
    dio::write_file_atomic(&inner.dir, CHECKPOINT_FILE, &bytes).await
}

/// Rounds used in tests of the round-up helper.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::align_up;

    // Goal: preallocation targets are whole steps past the write end.
    #[test]
    fn round_up_to_steps() {
        assert_eq!(round_up(1, 4096), 4096);
        assert_eq!(round_up(4096, 4096), 4096);
        assert_eq!(round_up(4097, 1 << 20), 1 << 20);
        assert_eq!(align_up(1), 4096);
    }
}
