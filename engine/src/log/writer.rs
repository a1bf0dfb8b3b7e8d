//! The asynchronous half of appends: the per-partition writer task that turns queued appends
//! into O_DIRECT write rounds, keeps several rounds in flight, group-commits fdatasyncs while
//! writes continue, rolls segments, flushes index blocks, and fails or poisons the log when IO
//! fails.
//!
//! The writer is spawned when work is queued and exits when the queue is drained and nothing is
//! in flight, so an idle partition has no task. It is the only code that changes the active
//! segment while the log is open (maintenance operations first wait for it to go idle). State is
//! borrowed only in the synchronous sections between awaits.
//!
//! # Pipelining
//!
//! Up to `WRITE_ROUNDS_INFLIGHT_MAX` rounds are in flight at once. Rounds complete in any order;
//! their completions are applied in issue order, so the written end (and every acknowledgement)
//! only ever covers a contiguous prefix of the log. Two rounds in flight never write the same
//! block: a round issued while others are in flight, or while more appends are queued, writes
//! only whole blocks and keeps the partially filled last block in memory for the next round
//! (its batches are acknowledged by that round). A partial block is zero-padded and written
//! only when nothing else is in flight; a later round that must rewrite that block waits for it.
//! fdatasync (group commit) and index block writes run beside the data writes: a sync covers
//! the written end at the moment it is issued.
//!
//! Must not depend on: the read path.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use futures::channel::oneshot;
use futures::stream::FuturesOrdered;

use crate::io::{self as dio, File, SyncMode, align_down, align_up};
use crate::limits::{
    DIO_ALIGN_BYTES, OFFSET_INDEX_ENTRY_BYTES, TIME_INDEX_ENTRY_BYTES, WRITE_ROUND_BYTES_MAX,
    WRITE_ROUNDS_INFLIGHT_MAX,
};
use crate::log::checkpoint::{
    CHECKPOINT_FILE, CLEAN_EPOCHS_MAX, Checkpoint, EPOCH_FILE, SealedRow, encode_epochs,
};
use crate::log::epoch::EpochEntry;
use crate::log::index::{IndexBuilder, IndexFile, IndexFlush};
use crate::log::segment::{
    ActiveSegment, INDEX_EXTENSION, LOG_EXTENSION, Segment, Spare, TIME_INDEX_EXTENSION, file_path,
    recycle_file_name,
};
use crate::log::{AppendError, AssignCursor, Inner, Mode, Op, StagedBatch, State, Waiter};
use crate::types::Offset;

/// Starts the writer task unless it is running; wakes it if it is waiting for its IO.
pub(crate) fn ensure_running(inner: &Rc<Inner>) {
    let mut state = inner.state.borrow_mut();
    if state.writer_running {
        state.writer_kicked = true;
        if let Some(waker) = state.writer_waker.take() {
            waker.wake();
        }
        return;
    }
    state.writer_running = true;
    drop(state);
    crate::rt::spawn(run(inner.clone())).detach();
}

type IoFuture = Pin<Box<dyn Future<Output = io::Result<()>>>>;
/// A preallocation: resolves to the file size it reached.
type AllocationFuture = Pin<Box<dyn Future<Output = io::Result<u64>>>>;
type RoundFuture = Pin<Box<dyn Future<Output = (Round, io::Result<()>)>>>;

/// What a write round in flight will have written when it completes.
struct Round {
    /// The pipeline generation it was issued in; completions of abandoned generations are
    /// ignored.
    generation: u64,
    /// End of the write (aligned).
    write_end: u64,
    /// Batches whose last byte this round writes, in log order: written when it completes.
    covered: Vec<StagedBatch>,
    /// Segment size once the covered batches are written, with the bytes of its partially
    /// filled last block; `None` when the round completes no batch.
    covered_end: Option<(u64, Vec<u8>)>,
    /// The partially filled block this round pads with zeros, if any.
    padded_block: Option<u64>,
    /// The round failed but one of its two writes landed: its bytes up to `write_end` may
    /// hold batches that are never acknowledged, so they are scrubbed before the segment is
    /// written again.
    landed_on_failure: bool,
}

/// An fdatasync in flight.
struct SyncInFlight {
    /// The written end when it was issued: what it makes durable.
    target: Offset,
    records: u64,
    future: IoFuture,
}

/// Index block writes in flight: `(time index?, position, bytes)` of each job.
struct IndexFlushInFlight {
    jobs: Vec<(bool, u64, usize)>,
    future: IoFuture,
}

/// The writer's view of the active segment beyond what is written: batches taken from the
/// queue, and writes, syncs and index flushes in flight. Lives in the writer task only.
struct Pipeline {
    generation: u64,
    rounds: FuturesOrdered<RoundFuture>,
    /// Segment size once every batch taken from the queue is written.
    /// Invariant: `placed >= covered_end >= segment.size`.
    placed: u64,
    /// Bytes `[align_down(placed), placed)`: the partially filled last block.
    tail: Vec<u8>,
    /// Batches taken from the queue that no issued round completes yet, in log order.
    uncovered: VecDeque<StagedBatch>,
    /// Segment size after the last batch an issued round completes.
    covered_end: u64,
    /// Offset after the last batch taken from the queue.
    next: Offset,
    /// The partially filled block a padded round in flight is writing: no other round may
    /// write it until that one completes.
    padded_block: Option<u64>,
    sync: Option<SyncInFlight>,
    index_flush: Option<IndexFlushInFlight>,
    /// A preallocation in flight.
    allocation: Option<AllocationFuture>,
    /// A write failed or the log failed: no round is issued until the abandoned ones drained.
    draining: bool,
    /// Largest end of a write of an abandoned generation that succeeded: stale batches that
    /// must be scrubbed before the segment is written again.
    stale_end: u64,
}

impl Pipeline {
    fn new(state: &State) -> Pipeline {
        let mut pipeline = Pipeline {
            generation: 0,
            rounds: FuturesOrdered::new(),
            placed: 0,
            tail: Vec::new(),
            uncovered: VecDeque::new(),
            covered_end: 0,
            next: Offset(0),
            padded_block: None,
            sync: None,
            index_flush: None,
            allocation: None,
            draining: false,
            stale_end: 0,
        };
        pipeline.reset(state);
        pipeline
    }

    /// Restarts from what is written. Nothing may be in flight.
    fn reset(&mut self, state: &State) {
        assert!(
            self.rounds.is_empty(),
            "pipeline reset with rounds in flight"
        );
        let size = state
            .segments
            .back()
            .expect("log has an active segment")
            .size;
        self.placed = size;
        self.covered_end = size;
        self.tail = state.active.tail.clone();
        self.uncovered.clear();
        self.next = state.written;
        self.padded_block = None;
        self.draining = false;
        self.stale_end = 0;
    }

    /// Forgets everything not yet written: completions of rounds in flight are ignored, and no
    /// round is issued until they drained.
    fn abandon(&mut self) {
        self.generation += 1;
        self.uncovered.clear();
        self.draining = true;
    }

    fn io_in_flight(&self) -> bool {
        !self.rounds.is_empty()
            || self.sync.is_some()
            || self.index_flush.is_some()
            || self.allocation.is_some()
    }
}

/// What the writer loop does next.
enum Plan {
    /// Wait for IO in flight (or new work).
    Wait,
    /// Nothing to do; the writer has gone idle.
    Idle,
    /// Seal the active segment and start a new one at this base. Nothing is in flight.
    Roll(Offset),
    /// Overwrite stale data of abandoned rounds, then restart the pipeline. Nothing is in
    /// flight.
    Scrub(File, u64, crate::rt::fs::DmaBuffer),
}

/// Something that happened while the writer waited.
enum Event {
    Round(Round, io::Result<()>),
    Synced(io::Result<()>),
    IndexFlushed(io::Result<()>),
    Allocated(io::Result<u64>),
    Kicked,
}

/// The writer loop: runs until the queue is drained and nothing is in flight.
async fn run(inner: Rc<Inner>) {
    let mut pipeline = Pipeline::new(&inner.state.borrow());
    loop {
        match plan(&inner, &mut pipeline) {
            Plan::Idle => {
                assert!(
                    !pipeline.io_in_flight(),
                    "{}: idle with IO in flight",
                    inner.tp
                );
                return;
            }
            Plan::Wait => {}
            Plan::Roll(base) => {
                if let Err(failure) = roll(&inner, base).await {
                    match failure {
                        RollFailure::Undone(error) => {
                            inner.state.borrow_mut().roll_failure = Some((base, error.clone()));
                            fail_pending(&inner, AppendError::from_io(error))
                        }
                        RollFailure::Fatal(error) => poison(&inner, &error),
                    }
                }
                pipeline.reset(&inner.state.borrow());
                continue;
            }
            Plan::Scrub(file, position, buffer) => {
                if let Err(error) = dio::write_at(&file, buffer, position).await {
                    // The file may hold batches that were never acknowledged: stop appending.
                    poison(&inner, &Arc::new(error));
                }
                pipeline.reset(&inner.state.borrow());
                continue;
            }
        }
        let event = std::future::poll_fn(|cx| poll_event(&inner, &mut pipeline, cx)).await;
        match event {
            Event::Kicked => {}
            Event::Round(round, result) => complete_round(&inner, &mut pipeline, round, result),
            Event::Synced(result) => complete_sync(&inner, &mut pipeline, result),
            Event::IndexFlushed(result) => complete_index_flush(&inner, &mut pipeline, result),
            Event::Allocated(result) => complete_allocation(&inner, &mut pipeline, result),
        }
    }
}

fn poll_event(inner: &Inner, pipeline: &mut Pipeline, cx: &mut Context<'_>) -> Poll<Event> {
    if let Some(sync) = pipeline.sync.as_mut()
        && let Poll::Ready(result) = sync.future.as_mut().poll(cx)
    {
        return Poll::Ready(Event::Synced(result));
    }
    if let Some(flush) = pipeline.index_flush.as_mut()
        && let Poll::Ready(result) = flush.future.as_mut().poll(cx)
    {
        return Poll::Ready(Event::IndexFlushed(result));
    }
    if let Some(future) = pipeline.allocation.as_mut()
        && let Poll::Ready(result) = future.as_mut().poll(cx)
    {
        return Poll::Ready(Event::Allocated(result));
    }
    if !pipeline.rounds.is_empty()
        && let Poll::Ready(Some((round, result))) = pipeline.rounds.poll_next_unpin(cx)
    {
        return Poll::Ready(Event::Round(round, result));
    }
    let mut state = inner.state.borrow_mut();
    if state.writer_kicked {
        state.writer_kicked = false;
        return Poll::Ready(Event::Kicked);
    }
    state.writer_waker = Some(cx.waker().clone());
    Poll::Pending
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

/// Starts whatever can start now and says what the loop does next.
fn plan(inner: &Inner, pipeline: &mut Pipeline) -> Plan {
    let mut state = inner.state.borrow_mut();
    state.writer_kicked = false;
    if state.mode == Mode::Failed || inner.removed.get() {
        fail_all(&mut state, &AppendError::Failed);
        if !pipeline.draining || !pipeline.uncovered.is_empty() {
            pipeline.abandon();
        }
        if pipeline.io_in_flight() {
            return Plan::Wait;
        }
        return go_idle(&mut state);
    }
    if pipeline.draining {
        if !pipeline.rounds.is_empty() {
            return Plan::Wait;
        }
        let size = state.segments.back().expect("active segment").size;
        let from = align_down(size);
        if pipeline.stale_end > from {
            let len = usize::try_from(align_up(pipeline.stale_end) - from).expect("fits");
            let buffer =
                dio::aligned_buffer_of_range(&state.active.log, &[&state.active.tail], 0, len);
            pipeline.stale_end = 0;
            state.active.files_exact = false;
            return Plan::Scrub(state.active.log.clone(), from, buffer);
        }
        pipeline.reset(&state);
    }
    if pipeline.sync.is_none() && sync_owed(inner, &state) {
        start_sync(&mut state, pipeline);
    }
    while pipeline.rounds.len() < WRITE_ROUNDS_INFLIGHT_MAX {
        let position = align_down(pipeline.placed);
        if pipeline.padded_block == Some(position) {
            break;
        }
        let (ops, new_bytes) = round_extent(&state);
        let more_follows = matches!(state.queue.get(ops), Some(Op::Write { .. }));
        if ops == 0 && pipeline.uncovered.is_empty() {
            break;
        }
        // Pad the partial block only when no other round can be in flight beside this one.
        let pad = !more_follows && pipeline.rounds.is_empty();
        if ops == 0 && !pad {
            break;
        }
        let total = pipeline.tail.len() as u64 + new_bytes;
        let write_len = if pad {
            align_up(total)
        } else {
            align_down(total)
        };
        let write_end = position + write_len;
        let config = inner.config();
        let step = config.preallocate_bytes;
        if step > 0 && write_end > state.active.allocated {
            // Writes past the preallocated size would extend the file, which the file system
            // serialises: grow the preallocation first.
            if pipeline.allocation.is_none() {
                let limit = align_up(config.segment_bytes);
                let allocated = state.active.allocated;
                let (size, least) = state.preallocation.target(
                    crate::rt::clock::now(),
                    step,
                    allocated,
                    write_end,
                    limit,
                );
                state.active.files_exact = false;
                let file = state.active.log.clone();
                pipeline.allocation = Some(Box::pin(allocate(file, allocated, size, least)));
            }
            break;
        }
        issue_round(inner, &mut state, pipeline, ops, pad);
    }
    if pipeline.index_flush.is_none() {
        start_index_flush(&mut state, pipeline);
    }
    if let Some(Op::Roll { base }) = state.queue.front() {
        let base = *base;
        if !pipeline.io_in_flight() && pipeline.uncovered.is_empty() {
            state.queue.pop_front();
            return Plan::Roll(base);
        }
    }
    if pipeline.io_in_flight() {
        return Plan::Wait;
    }
    assert!(
        pipeline.uncovered.is_empty(),
        "{}: unwritten batches with nothing in flight",
        inner.tp
    );
    assert!(
        state.queue.is_empty(),
        "{}: queued work with nothing in flight",
        inner.tp
    );
    go_idle(&mut state)
}

/// How many queued writes the next round takes and their bytes: the first one whatever its
/// size, then more while the round stays within `WRITE_ROUND_BYTES_MAX`.
fn round_extent(state: &State) -> (usize, u64) {
    let mut ops = 0;
    let mut round_bytes = 0usize;
    for op in &state.queue {
        let Op::Write { bytes, .. } = op else { break };
        if ops > 0 && round_bytes + bytes > WRITE_ROUND_BYTES_MAX {
            break;
        }
        round_bytes += bytes;
        ops += 1;
    }
    (ops, round_bytes as u64)
}

/// Copies bytes `[from, to)` of the concatenation of `parts`.
fn copy_range(parts: &[&[u8]], from: usize, to: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(to - from);
    let mut at = 0;
    for part in parts {
        let (start, end) = (at, at + part.len());
        at = end;
        if end <= from || start >= to {
            continue;
        }
        out.extend_from_slice(&part[from.max(start) - start..to.min(end) - start]);
    }
    assert_eq!(out.len(), to - from, "copy range past the parts");
    out
}

/// Takes `ops` queued writes and issues one round: the partial block in memory plus the new
/// batches, padded to a whole block when `pad`, else cut at the last whole block.
fn issue_round(inner: &Inner, state: &mut State, pipeline: &mut Pipeline, ops: usize, pad: bool) {
    let position = align_down(pipeline.placed);
    assert_eq!(
        pipeline.tail.len() as u64,
        pipeline.placed - position,
        "{}: tail block length",
        inner.tp
    );
    let mut batches = Vec::new();
    let mut new_bytes = 0usize;
    for _ in 0..ops {
        let Some(Op::Write {
            batches: taken,
            bytes,
        }) = state.queue.pop_front()
        else {
            unreachable!("round_extent counted writes")
        };
        assert!(
            state.queued_bytes >= bytes,
            "{}: queued bytes accounting",
            inner.tp
        );
        state.queued_bytes -= bytes;
        new_bytes += bytes;
        batches.extend(taken);
    }
    for batch in &batches {
        assert_eq!(
            batch.base, pipeline.next,
            "{}: round does not continue the log at {}",
            inner.tp, batch.base
        );
        pipeline.next = batch.next;
    }
    let mut parts: Vec<&[u8]> = Vec::with_capacity(batches.len() + 1);
    parts.push(&pipeline.tail);
    parts.extend(batches.iter().map(|batch| &batch.bytes[..]));
    let total = pipeline.tail.len() + new_bytes;
    let write_len = if pad {
        usize::try_from(align_up(total as u64)).expect("fits")
    } else {
        usize::try_from(align_down(total as u64)).expect("fits")
    };
    // A round that rewrites a partially filled block and goes on past it is issued as two
    // writes split at that block's end. ext4 serves a direct write without blocking only when
    // the range is one kind of extent; a range from written blocks into preallocated
    // (unwritten) ones makes io_uring hand the write to a kernel worker thread, which costs
    // a thread wake-up and a context switch per round (most rounds at moderate rates).
    let split = !pipeline.tail.is_empty() && write_len > DIO_ALIGN_BYTES;
    let first_len = if split { DIO_ALIGN_BYTES } else { write_len };
    let file = &state.active.log;
    let buffer = (write_len > 0).then(|| dio::aligned_buffer_of_range(file, &parts, 0, first_len));
    let rest =
        split.then(|| dio::aligned_buffer_of_range(file, &parts, first_len, write_len - first_len));
    let placed = pipeline.placed + new_bytes as u64;
    let new_tail = copy_range(
        &parts,
        usize::try_from(align_down(placed) - position).expect("fits"),
        total,
    );
    // The segment bytes on disk once this round completes.
    let data_end = if pad {
        placed
    } else {
        position + write_len as u64
    };
    let mut covered = Vec::new();
    let mut covered_end = pipeline.covered_end;
    pipeline.uncovered.extend(batches.iter().cloned());
    while let Some(batch) = pipeline.uncovered.front() {
        let end = covered_end + batch.bytes.len() as u64;
        if end > data_end {
            break;
        }
        covered_end = end;
        covered.push(pipeline.uncovered.pop_front().expect("front checked"));
    }
    let covered_end = (!covered.is_empty()).then(|| {
        let block = align_down(covered_end);
        assert!(
            block >= position,
            "{}: completed batch ends before the round",
            inner.tp
        );
        let tail = copy_range(
            &parts,
            usize::try_from(block - position).expect("fits"),
            usize::try_from(covered_end - position).expect("fits"),
        );
        (covered_end, tail)
    });
    drop(parts);
    if pad {
        assert!(
            pipeline.uncovered.is_empty(),
            "{}: padded round left batches unwritten",
            inner.tp
        );
    }
    if let Some((end, _)) = &covered_end {
        pipeline.covered_end = *end;
    }
    pipeline.placed = placed;
    pipeline.tail = new_tail;
    let Some(buffer) = buffer else {
        // Less than a block and more follows: it stays in memory for the next round.
        assert!(covered_end.is_none(), "{}: nothing written", inner.tp);
        return;
    };
    let padded_block =
        (pad && !placed.is_multiple_of(DIO_ALIGN_BYTES as u64)).then(|| align_down(placed));
    pipeline.padded_block = padded_block;
    state.stats.writes += 1;
    state.active.files_exact = false;
    let round = Round {
        generation: pipeline.generation,
        write_end: position + write_len as u64,
        covered,
        covered_end,
        padded_block,
        landed_on_failure: false,
    };
    let file = state.active.log.clone();
    pipeline.rounds.push_back(Box::pin(async move {
        let mut round = round;
        let result = match rest {
            None => dio::write_at(&file, buffer, position).await,
            Some(rest) => {
                let rest_at = position + DIO_ALIGN_BYTES as u64;
                // Both run to completion: a failed half must not leave the other in flight.
                match futures::future::join(
                    dio::write_at(&file, buffer, position),
                    dio::write_at(&file, rest, rest_at),
                )
                .await
                {
                    (Ok(()), Ok(())) => Ok(()),
                    (Err(error), Ok(())) | (Ok(()), Err(error)) => {
                        round.landed_on_failure = true;
                        Err(error)
                    }
                    (Err(error), Err(_)) => Err(error),
                }
            }
        };
        (round, result)
    }));
}

/// Applies a completed round, in issue order: its batches become written and readable.
fn complete_round(
    inner: &Rc<Inner>,
    pipeline: &mut Pipeline,
    round: Round,
    result: io::Result<()>,
) {
    if round.generation != pipeline.generation {
        // A round of an abandoned generation acknowledges nothing, but whatever of it reached
        // the segment is past the written end and must be scrubbed.
        if result.is_ok() || round.landed_on_failure {
            pipeline.stale_end = pipeline.stale_end.max(round.write_end);
        }
        return;
    }
    if pipeline.padded_block.is_some() && pipeline.padded_block == round.padded_block {
        pipeline.padded_block = None;
    }
    if let Err(error) = result {
        if round.landed_on_failure {
            pipeline.stale_end = pipeline.stale_end.max(round.write_end);
        }
        pipeline.abandon();
        fail_pending(inner, AppendError::from_io(Arc::new(error)));
        return;
    }
    let Some((covered_end, covered_tail)) = round.covered_end else {
        return;
    };
    {
        let mut state = inner.state.borrow_mut();
        let state = &mut *state;
        let segment = state
            .segments
            .back_mut()
            .expect("log has an active segment");
        assert_eq!(
            segment.base, state.active.base,
            "{}: segment rolled during a write",
            inner.tp
        );
        let mut at = segment.size;
        let mut records = 0;
        for batch in &round.covered {
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
        assert_eq!(at, covered_end, "{}: round bytes accounting", inner.tp);
        assert!(
            at <= round.write_end.max(covered_end),
            "{}: completed past the write",
            inner.tp
        );
        segment.size = at;
        let end = segment.end;
        state.active.tail = covered_tail;
        assert!(end > state.written, "{}: written end must grow", inner.tp);
        state.written = end;
        state.unsynced_records += records;
        wake(&mut state.written_waiters, end, &inner.tp);
    }
    arm_flush_timer(inner);
}

/// Preallocates the active segment's file (now `allocated` bytes long) to `size`, or, when the
/// disk has no room for that, to the `least` that holds the pending write. Resolves to the
/// size reached.
async fn allocate(file: File, allocated: u64, size: u64, least: u64) -> io::Result<u64> {
    assert!(least <= size, "fallback preallocation {least} above {size}");
    let mut size = size;
    loop {
        match dio::allocate(&file, size).await {
            Ok(()) => return Ok(size),
            Err(error) if dio::is_no_space(&error) => {
                // A failed fallocate keeps the blocks it got past the end of the file; a
                // truncation to the current size gives them back (ext4 trims blocks past
                // EOF even when the size does not change).
                dio::truncate(&file, allocated).await?;
                if size == least {
                    return Err(error);
                }
                size = least;
            }
            Err(error) => return Err(error),
        }
    }
}

fn complete_allocation(inner: &Rc<Inner>, pipeline: &mut Pipeline, result: io::Result<u64>) {
    assert!(
        pipeline.allocation.take().is_some(),
        "an allocation was in flight"
    );
    match result {
        Ok(size) => {
            let mut state = inner.state.borrow_mut();
            state.active.allocated = state.active.allocated.max(size);
        }
        Err(error) => {
            pipeline.abandon();
            fail_pending(inner, AppendError::from_io(Arc::new(error)));
        }
    }
}

/// Issues one group commit: an fdatasync covering everything written so far.
fn start_sync(state: &mut State, pipeline: &mut Pipeline) {
    assert!(pipeline.sync.is_none(), "one fdatasync at a time");
    let file = state.active.log.clone();
    state.stats.syncs += 1;
    pipeline.sync = Some(SyncInFlight {
        target: state.written,
        records: state.unsynced_records,
        future: Box::pin(async move { dio::sync(&file).await }),
    });
}

fn complete_sync(inner: &Rc<Inner>, pipeline: &mut Pipeline, result: io::Result<()>) {
    let sync = pipeline.sync.take().expect("a sync was in flight");
    if let Err(error) = result {
        pipeline.abandon();
        poison(inner, &Arc::new(error));
        return;
    }
    let mut state = inner.state.borrow_mut();
    let state = &mut *state;
    assert!(
        sync.target >= state.synced,
        "{}: synced end must not go back",
        inner.tp
    );
    assert!(
        sync.target <= state.written,
        "{}: synced past the written end",
        inner.tp
    );
    state.synced = sync.target;
    state.unsynced_records -= sync.records;
    if state.synced >= state.written {
        state.flush_due = false;
    }
    wake(&mut state.synced_waiters, sync.target, &inner.tp);
}

/// Starts writing the whole blocks the active indexes hold in memory, if any. Each write
/// opens its index file and closes it again (the files are not held open), so a full block
/// costs an open and a close besides its write: about once per 2 MiB of log at the default
/// interval.
fn start_index_flush(state: &mut State, pipeline: &mut Pipeline) {
    let mut jobs = Vec::new();
    let mut writes = Vec::new();
    for (time, index) in [
        (false, &state.active.index),
        (true, &state.active.time_index),
    ] {
        if let Some(job) = index.prepare_flush() {
            jobs.push((time, job.position, job.bytes.len()));
            writes.push(job);
        }
    }
    if jobs.is_empty() {
        return;
    }
    state.active.files_exact = false;
    pipeline.index_flush = Some(IndexFlushInFlight {
        jobs,
        future: Box::pin(async move {
            futures::future::try_join_all(writes.into_iter().map(IndexFlush::write)).await?;
            Ok(())
        }),
    });
}

fn complete_index_flush(inner: &Rc<Inner>, pipeline: &mut Pipeline, result: io::Result<()>) {
    let flush = pipeline
        .index_flush
        .take()
        .expect("an index flush was in flight");
    if let Err(error) = result {
        // The index blocks stay in memory and are written again later; the appends queued
        // now fail so the producer learns the device is failing.
        pipeline.abandon();
        fail_pending(inner, AppendError::from_io(Arc::new(error)));
        return;
    }
    let mut state = inner.state.borrow_mut();
    for (time, position, bytes) in flush.jobs {
        let index = if time {
            &mut state.active.time_index
        } else {
            &mut state.active.index
        };
        index.complete_flush(position, bytes);
    }
}

fn go_idle(state: &mut State) -> Plan {
    state.writer_running = false;
    state.writer_kicked = false;
    state.writer_waker = None;
    for waiter in state.idle_waiters.drain(..) {
        let _ = waiter.send(());
    }
    Plan::Idle
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

fn wake(waiters: &mut VecDeque<Waiter>, upto: Offset, tp: &crate::types::TopicPartition) {
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
    state.epochs.truncate_from_end(state.written);
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

/// How a roll failed, which decides what the log does next.
enum RollFailure {
    /// Creating the new segment, writing the old one's index tails, trimming it, or writing
    /// the checkpoint failed (a full disk): the roll is undone, the log is as it was before it
    /// (the active segment stays active), and the next append that needs a roll retries it.
    Undone(Arc<io::Error>),
    /// An fdatasync failed (of the directory or of the sealed files): the state of what it
    /// covered is unknown, so the log refuses appends until reopened.
    Fatal(Arc<io::Error>),
}

/// How sealing the active segment failed.
pub(crate) enum SealFailure {
    /// Writing an index tail or trimming a file failed; nothing was synced, and the segment
    /// can stay active: its files hold everything memory says, and past that only bytes the
    /// writer rewrites or ignores.
    Write(io::Error),
    /// An fdatasync (or the close after it) failed.
    Sync(io::Error),
}

/// Creates a new, empty segment's log file (preallocating it) and returns its writer state.
/// With a `spare` whose batches all lie below `base`, its file becomes the segment's log file as
/// it is: the segment is written over blocks written before (its stale bytes past the segment's
/// size are never read, and recovery stops at them). The index files are not created: each
/// appears when its first block is written or the segment is sealed or closed, and open treats a
/// missing active index as an empty one (`engine/FORMAT.md` §5). Removes the log file, the spare
/// included, on failure. Nothing is synced.
pub(crate) async fn create_segment(
    dir: &Path,
    base: Offset,
    interval: u64,
    preallocate: u64,
    spare: Option<Spare>,
) -> io::Result<ActiveSegment> {
    let log_path = file_path(dir, base, LOG_EXTENSION);
    let result = async {
        let (log, mut allocated) = match spare {
            Some(spare) if spare.fits(base) => {
                dio::rename(&dir.join(recycle_file_name(spare.end)), &log_path).await?;
                (
                    dio::open_read_write(&log_path).await?,
                    align_down(spare.bytes),
                )
            }
            stale => {
                if let Some(stale) = stale {
                    // Its batches reach past this segment's base (the log was truncated
                    // below it): never written over, or recovery could take them for ours.
                    dio::remove(&dir.join(recycle_file_name(stale.end))).await?;
                }
                (dio::create(&log_path).await?, 0)
            }
        };
        if preallocate > allocated {
            dio::allocate(&log, preallocate).await?;
            allocated = preallocate;
        }
        Ok(ActiveSegment {
            base,
            log,
            files_exact: false,
            tail: Vec::new(),
            allocated,
            index: IndexFile::new(file_path(dir, base, INDEX_EXTENSION), 0, Vec::new()),
            time_index: IndexFile::new(file_path(dir, base, TIME_INDEX_EXTENSION), 0, Vec::new()),
            builder: IndexBuilder::new(base, interval),
        })
    }
    .await;
    if result.is_err() {
        let _ = dio::remove(&log_path).await;
    }
    result
}

/// Seals the active segment's files: writes the final time entry and the index tails, trims
/// all three files to their exact sizes (dropping the preallocation), then fdatasyncs them,
/// the three files concurrently in each step. Returns the index sizes. The writes and trims
/// all come before the first sync, so a full disk fails sealing with nothing synced
/// ([`SealFailure::Write`]), and the segment can stay active.
pub(crate) async fn seal_active(inner: &Inner) -> Result<(u64, u64), SealFailure> {
    let (log, size, index, time_index) = {
        let mut state = inner.state.borrow_mut();
        let state = &mut *state;
        // The final time entry stays should sealing fail: it is a true entry (the segment's
        // max timestamp), later batches' entries follow it, and the file gets it too.
        if let Some(entry) = state.active.builder.on_seal() {
            state.active.time_index.push(&entry.encode());
        }
        state.active.files_exact = false;
        let size = state.segments.back().expect("active segment").size;
        for index in [&state.active.index, &state.active.time_index] {
            assert_eq!(
                index.disk_bytes() % DIO_ALIGN_BYTES as u64,
                0,
                "{}: index disk bytes",
                inner.tp
            );
        }
        // Copies of the index state (about a block each) so no borrow is held across the IO;
        // nothing else changes the active segment meanwhile (the writer is idle or this is it).
        (
            state.active.log.clone(),
            size,
            state.active.index.clone(),
            state.active.time_index.clone(),
        )
    };
    let (index_file, time_index_file, trimmed) = futures::future::join3(
        index.write_exact(),
        time_index.write_exact(),
        dio::truncate(&log, size),
    )
    .await;
    if trimmed.is_ok() {
        inner.state.borrow_mut().active.allocated = size;
    }
    let mut failure = trimmed.err();
    let mut files = Vec::with_capacity(2);
    for file in [index_file, time_index_file] {
        match file {
            Ok(file) => files.push(file),
            Err(error) => failure = failure.or(Some(error)),
        }
    }
    if let Some(error) = failure {
        for file in files {
            let _ = dio::close(file).await;
        }
        return Err(SealFailure::Write(error));
    }
    assert_eq!(files.len(), 2, "{}: both index files written", inner.tp);
    let synced =
        futures::future::try_join3(dio::sync(&files[0]), dio::sync(&files[1]), dio::sync(&log))
            .await;
    let mut closed = Ok(());
    for file in files {
        closed = closed.and(dio::close(file).await);
    }
    synced.and(closed.map(drop)).map_err(SealFailure::Sync)?;
    let (index_bytes, time_index_bytes) = (index.len(), time_index.len());
    assert_eq!(
        index_bytes % OFFSET_INDEX_ENTRY_BYTES as u64,
        0,
        "{}: offset index size",
        inner.tp
    );
    assert_eq!(
        time_index_bytes % TIME_INDEX_ENTRY_BYTES as u64,
        0,
        "{}: time index size",
        inner.tp
    );
    let state = inner.state.borrow();
    assert_eq!(state.active.allocated, size, "{}: trimmed", inner.tp);
    assert_eq!(
        state.active.index.len(),
        index_bytes,
        "{}: offset index changed while it was sealed",
        inner.tp
    );
    Ok((index_bytes, time_index_bytes))
}

/// Seals the active segment and starts a new one at `base`, persisting the checkpoint before
/// memory shows the roll. A failure before the roll is durable undoes it
/// ([`RollFailure::Undone`]): the active segment stays active and the new file goes again, so
/// a full disk leaves the log as it was, and the next append that needs a roll retries it.
/// Only a failed fdatasync is [`RollFailure::Fatal`].
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
    let spare = inner.state.borrow_mut().spare.take();
    let recycled = spare.is_some_and(|spare| spare.fits(base));
    let new = create_segment(&inner.dir, base, interval, config.preallocate_bytes, spare)
        .await
        .map_err(|error| RollFailure::Undone(Arc::new(error)))?;
    let fatal = |error: io::Error| RollFailure::Fatal(Arc::new(error));
    dio::sync_dir(&inner.dir).await.map_err(fatal)?;
    let (index_bytes, time_index_bytes) = match seal_active(inner).await {
        Ok(sizes) => sizes,
        Err(SealFailure::Sync(error)) => return Err(fatal(error)),
        Err(SealFailure::Write(error)) => return Err(roll_undo(inner, new, error).await),
    };
    let row = {
        let mut state = inner.state.borrow_mut();
        let state = &mut *state;
        // The sealed segment is synced, and with it everything written.
        state.synced = state.written;
        state.unsynced_records = 0;
        wake(&mut state.synced_waiters, state.synced, &inner.tp);
        let sealed = state.segments.back().expect("active segment");
        assert_eq!(
            sealed.end, base,
            "{}: sealed segment must end at the new base",
            inner.tp
        );
        SealedRow {
            base: sealed.base,
            end: sealed.end,
            size: sealed.size,
            max_timestamp: sealed.max_timestamp,
            index_bytes: u32::try_from(index_bytes).expect("index size fits in u32"),
            time_index_bytes: u32::try_from(time_index_bytes).expect("index size fits in u32"),
        }
    };
    if let Err(error) = write_checkpoint_rolled(inner, row).await {
        return Err(roll_undo(inner, new, error).await);
    }
    // No `.await` from the checkpoint to here: memory follows what is now durable, so no other
    // task (a retention pass) ever sees a roll that is then undone.
    let mut state = inner.state.borrow_mut();
    let state = &mut *state;
    let sealed = state.segments.back_mut().expect("active segment");
    assert_eq!(sealed.end, base, "{}: the sealed segment grew", inner.tp);
    sealed.sealed = true;
    sealed.index_bytes = index_bytes;
    sealed.time_index_bytes = time_index_bytes;
    state.segments.push_back(Segment::empty(base));
    state.active = new;
    state.stats.rolls += 1;
    if recycled {
        state.stats.recycled_segments += 1;
    }
    Ok(())
}

/// Undoes a roll that failed before it was durable: memory never showed it, the old segment
/// stays active (sealing may have trimmed its preallocation and written its index tails, which
/// the writer goes on from), and the new segment's file is removed again. The removal is best
/// effort: a file left behind is empty or a retired segment's, whose batches all lie below the
/// new base, so neither the retried roll (which overwrites it) nor recovery (which finds no
/// batch of the log in it) takes anything from it.
async fn roll_undo(inner: &Inner, new: ActiveSegment, error: io::Error) -> RollFailure {
    tracing::warn!(tp = %inner.tp, %error, base = %new.base, "roll failed; undone");
    {
        let state = inner.state.borrow();
        assert!(
            state.active.base < new.base,
            "{}: undone roll to {} had become active",
            inner.tp,
            new.base
        );
        assert_eq!(
            state.segments.back().expect("active segment").base,
            state.active.base,
            "{}: undone roll left a segment behind",
            inner.tp
        );
    }
    let path = file_path(&inner.dir, new.base, LOG_EXTENSION);
    let _ = dio::close(new.log).await;
    let _ = dio::remove(&path).await;
    RollFailure::Undone(Arc::new(error))
}

/// The checkpoint row of a sealed segment.
pub(crate) fn sealed_row(segment: &Segment) -> SealedRow {
    assert!(segment.sealed, "segment {} is not sealed", segment.base);
    SealedRow {
        base: segment.base,
        end: segment.end,
        size: segment.size,
        max_timestamp: segment.max_timestamp,
        index_bytes: u32::try_from(segment.index_bytes).expect("index size fits in u32"),
        time_index_bytes: u32::try_from(segment.time_index_bytes).expect("index size fits in u32"),
    }
}

/// The checkpoint describing the current state.
pub(crate) fn checkpoint_of(state: &State) -> Checkpoint {
    let sealed: Vec<SealedRow> = state
        .segments
        .iter()
        .filter(|segment| segment.sealed)
        .map(sealed_row)
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

/// Checkpoint writers run one at a time.
async fn checkpoint_permit(inner: &Inner) -> io::Result<crate::rt::sync::Permit<'_>> {
    inner
        .checkpoint_lock
        .acquire_permit(1)
        .await
        .map_err(|_| io::Error::other("checkpoint lock closed"))
}

/// Persists the checkpoint atomically, and before it the leader-epoch checkpoint when the
/// epoch cache changed. Concurrent callers are serialised and each writes the state current
/// when its turn comes.
///
/// With [`SyncMode::Now`] each file is replaced with its own syncs (temporary file fdatasync,
/// rename, directory fsync), the epoch file first. With [`SyncMode::Shared`] (a close) both
/// temporaries are written, one shared [`dio::sync_file_system`] makes them durable (and
/// everything the caller wrote before), both are renamed, and a second shared sync makes the
/// renames durable before this returns. The two renames need no sync between them because a
/// shared write never moves the recovery point: entries below it are already in the epoch
/// file on disk, so either file may land first.
pub(crate) async fn write_checkpoint(inner: &Inner, mode: SyncMode) -> io::Result<()> {
    write_checkpoint_edited(inner, mode, |_| {}).await
}

/// [`write_checkpoint`] of the current state changed by `edit`: for a change that must be
/// durable before memory shows it (retention, delete-records), which the caller then makes in
/// memory without an `.await` in between, so no other checkpoint writer sees the state between.
/// `edit` may drop leading rows and raise the log start, nothing else.
pub(crate) async fn write_checkpoint_edited(
    inner: &Inner,
    mode: SyncMode,
    edit: impl FnOnce(&mut Checkpoint),
) -> io::Result<()> {
    write_checkpoint_with(inner, mode, None, edit).await
}

/// [`write_checkpoint`] of the current state after a roll that sealed the active segment as
/// `row` (its end is the new active segment's base): for a roll, which changes memory only
/// once this is durable, so that a failure leaves the log as it was.
async fn write_checkpoint_rolled(inner: &Inner, row: SealedRow) -> io::Result<()> {
    write_checkpoint_with(inner, SyncMode::Now, Some(row), |_| {}).await
}

/// [`write_checkpoint_edited`], with the active segment first sealed as `rolled` if given.
async fn write_checkpoint_with(
    inner: &Inner,
    mode: SyncMode,
    rolled: Option<SealedRow>,
    edit: impl FnOnce(&mut Checkpoint),
) -> io::Result<()> {
    let _permit = checkpoint_permit(inner).await?;
    // The epoch file first: the checkpoint moves the recovery point, and recovery takes the
    // entries below it from the epoch file (it rebuilds those above from the scanned batches).
    let (checkpoint, epochs, log) = {
        let state = inner.state.borrow();
        let changed = state.epochs != state.epochs_persisted;
        let mut checkpoint = checkpoint_of(&state);
        if let Some(row) = rolled {
            assert_eq!(
                row.base, checkpoint.recovery_point,
                "{}: the rolled segment is the active one",
                inner.tp
            );
            assert!(row.end > row.base, "{}: roll of an empty segment", inner.tp);
            assert_eq!(
                mode,
                SyncMode::Now,
                "{}: a roll syncs its checkpoint",
                inner.tp
            );
            checkpoint.recovery_point = row.end;
            checkpoint.sealed.push(row);
        }
        let recovery_point = checkpoint.recovery_point;
        edit(&mut checkpoint);
        assert_eq!(
            checkpoint.recovery_point, recovery_point,
            "{}: an edited checkpoint keeps the recovery point",
            inner.tp
        );
        if mode == SyncMode::Shared {
            assert_eq!(
                checkpoint.recovery_point, state.checkpoint_persisted.recovery_point,
                "{}: a shared checkpoint write must not move the recovery point",
                inner.tp
            );
        }
        (
            checkpoint,
            changed.then(|| state.epochs.clone()),
            state.active.log.clone(),
        )
    };
    let epoch_bytes = epochs
        .as_ref()
        .map(|epochs| encode_epochs(epochs.entries()));
    match mode {
        SyncMode::Deferred => unreachable!("{}: a checkpoint is durable when written", inner.tp),
        SyncMode::Now => {
            if let Some(bytes) = &epoch_bytes {
                dio::write_file_atomic(&inner.dir, EPOCH_FILE, bytes).await?;
            }
            dio::write_file_atomic(&inner.dir, CHECKPOINT_FILE, &checkpoint.encode()).await?;
        }
        SyncMode::Shared => {
            if let Some(bytes) = &epoch_bytes {
                dio::stage_file(&inner.dir, EPOCH_FILE, bytes).await?;
            }
            dio::stage_file(&inner.dir, CHECKPOINT_FILE, &checkpoint.encode()).await?;
            dio::sync_file_system(&log).await?;
            if epoch_bytes.is_some() {
                dio::replace_with_staged(&inner.dir, EPOCH_FILE).await?;
            }
            dio::replace_with_staged(&inner.dir, CHECKPOINT_FILE).await?;
            dio::sync_file_system(&log).await?;
        }
    }
    // Prune only below a log start that is now durable, so the epoch file always describes
    // everything a crash could bring back (see `EpochCache::prune_before`).
    let mut state = inner.state.borrow_mut();
    if let Some(epochs) = epochs {
        state.epochs_persisted = epochs;
    }
    state.epochs.prune_before(checkpoint.log_start);
    state.checkpoint_persisted = checkpoint;
    Ok(())
}

/// Persists `checkpoint` (not the state's) atomically with its own syncs, leaving the epoch
/// file as it is: for a truncation, whose checkpoint moves the recovery point down, so the
/// epoch file on disk already holds every entry below it.
pub(crate) async fn write_checkpoint_as(inner: &Inner, checkpoint: Checkpoint) -> io::Result<()> {
    let _permit = checkpoint_permit(inner).await?;
    assert!(
        checkpoint.recovery_point <= inner.state.borrow().checkpoint_persisted.recovery_point,
        "{}: a checkpoint that keeps the epoch file must not raise the recovery point",
        inner.tp
    );
    dio::write_file_atomic(&inner.dir, CHECKPOINT_FILE, &checkpoint.encode()).await?;
    inner.state.borrow_mut().checkpoint_persisted = checkpoint;
    Ok(())
}

/// Whether a close must rewrite the checkpoint (and the epoch file) rather than leave the
/// change to the clean-shutdown marker. The marker carries the high watermark and the epoch
/// entries of the active segment, so a close writes the files only when something else changed
/// (which a roll, retention, delete-records or truncation would have written already), or when
/// the active segment holds more epoch entries than a marker carries.
pub(crate) fn close_needs_checkpoint(inner: &Inner) -> bool {
    let state = inner.state.borrow();
    let current = Checkpoint {
        high_watermark: state.checkpoint_persisted.high_watermark,
        ..checkpoint_of(&state)
    };
    if current != state.checkpoint_persisted {
        return true;
    }
    let (recovery_point, log_start) = (state.active.base, state.log_start);
    if state.epochs.below(recovery_point, log_start)
        != state.epochs_persisted.below(recovery_point, log_start)
    {
        return true;
    }
    marker_epochs(&state).is_none() && state.epochs != state.epochs_persisted
}

/// The epoch entries a clean-shutdown marker carries: those starting in the active segment, or
/// `None` when there are more than it holds (the epoch file must then hold them).
pub(crate) fn marker_epochs(state: &State) -> Option<Vec<EpochEntry>> {
    let entries: Vec<EpochEntry> = state
        .epochs
        .entries()
        .iter()
        .filter(|entry| entry.start_offset >= state.active.base)
        .copied()
        .collect();
    (entries.len() <= CLEAN_EPOCHS_MAX).then_some(entries)
}
