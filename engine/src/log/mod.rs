//! The durable partition log on direct IO: segments of Kafka v2 record batches with sparse
//! offset and time indexes, group-committed appends, a shard-wide cache of recent batches,
//! recovery, retention and truncation.
//!
//! # Main types
//!
//! - [`PartitionLog`]: one partition's log, owned by one shard (`!Send`). Its methods take
//!   `&self`, so many tasks of the shard can append and read concurrently; state sits in a
//!   `RefCell` that is never borrowed across an `.await`.
//! - [`LogConfig`]: Kafka's topic settings (`segment.bytes`, `retention.ms`, ...).
//! - [`BatchCache`]: the shard's cache of recent batches, shared by its logs through `Rc`.
//! - [`RecoveryReport`]: what opening the log found and repaired.
//! - [`EpochEntry`]: one entry of the leader-epoch cache (which epoch wrote which offsets);
//!   [`DamagedEpoch`]: a batch whose epoch field recovery found impossible.
//! - [`AppendWindow`]: appends kept in flight by a caller that stages them back to back.
//!
//! # Write path
//!
//! [`PartitionLog::append`] validates the record set (framing, magic, CRC, size), assigns
//! offsets and the leader epoch by rewriting the batch headers (records are never re-encoded),
//! inserts the batches into the cache and queues them — all synchronously, before returning, so
//! call order is log order. The returned [`PendingAppend`] knows its offsets at once and resolves
//! when the data is written ([`Durability::Written`]) or also fdatasync'ed
//! ([`Durability::Synced`]).
//!
//! One writer task per partition (spawned when work arrives, gone when idle) drains the queue:
//! it gathers queued appends into write rounds (up to `WRITE_ROUND_BYTES_MAX` each), copies the
//! in-memory partial tail block plus the new batches into one aligned buffer allocated for the
//! write, and writes it with O_DIRECT at the tail block's aligned position. Up to
//! `WRITE_ROUNDS_INFLIGHT_MAX` rounds are in flight at once; completions are applied in issue
//! order, so the written end only covers a contiguous prefix of the log. Rounds in flight
//! together never write the same block: while others are in flight (or more appends wait), a
//! round writes only whole blocks and carries the partial last block into the next round. As
//! soon as a `Synced` append is covered by written data, the writer issues one fdatasync that
//! covers every append written so far (group commit) and keeps writing while it runs.
//! `flush.messages` and `flush.ms` trigger the same fdatasync for logs without `Synced`
//! appends. The `writer` module has the details.
//!
//! # Leader epochs and replication
//!
//! [`PartitionLog::append`] stamps its leader epoch into each batch (bytes 12..16, outside the
//! CRC) and refuses an epoch below the log's latest ([`AppendError::StaleEpoch`]).
//! [`PartitionLog::append_replicated`] is the follower's append: batches keep the leader's
//! offsets and epochs, must continue the log exactly and are CRC-checked. Both keep the epoch
//! cache (module `epoch`, Kafka's `leader-epoch-checkpoint`): an entry per epoch rise, queried
//! with [`PartitionLog::end_offset_for_epoch`] (OffsetsForLeaderEpoch), cut back by
//! [`PartitionLog::truncate_to`] and failed appends, pruned as the log start advances, persisted
//! in `leader-epoch.checkpoint` before each checkpoint and rebuilt from batch headers at open
//! (`engine/FORMAT.md` §6, §7).
//!
//! A partition queues at most `QUEUED_BYTES_MAX` of appends for its writer; beyond that appends
//! fail with [`AppendError::Overloaded`] (backpressure) instead of growing memory.
//!
//! A failed write (full disk, IO error) fails the appends of that round and everything queued
//! behind it, rolls the assigned offsets back to the written end, and leaves the log readable
//! and appendable. So does a failed roll (the new segment's creation, the old one's index tails
//! or trim, the checkpoint): memory shows a roll only once its checkpoint is durable, so a
//! failed one is undone and the next append that needs it retries it. A failed fdatasync
//! makes the log refuse appends until reopened (the page-cache state after a failed sync is
//! unknown; reopening recovers from what is on the device).
//!
//! # Read path
//!
//! [`PartitionLog::read`] serves whole batches from the cache when it holds the requested
//! offset (tailing readers), and otherwise from disk: the segment is found in memory, the
//! position from a small memo of where recent reads stopped (sequential catch-up readers) or from
//! the offset index, and the batches are read with direct reads and CRC-checked before they are
//! served. A reader continuing where it stopped is served through a read-ahead stream that
//! keeps `READ_AHEAD_CHUNKS` reads in flight ahead of it (module `read_ahead`).
//!
//! # Memory budget
//!
//! Memory does not grow with retained data:
//!
//! - A partition at rest costs about 1 KiB of counters and state, 80 bytes per segment in its
//!   segment table, the active segment's partially filled tail block and the unflushed tails of
//!   its two index files (each under 4 KiB, the index tails usually a few hundred bytes), a read
//!   memo of `READ_MEMO_ENTRIES` positions, and one open file (the active segment's log; its
//!   index files are opened only to write a full block, to seal, and for a lookup)
//!   plus at most one cached handle of a sealed segment (after a read from one). Sealed
//!   segments' indexes stay on disk and are read on demand, one block per binary-search probe;
//!   sealed segment files are opened lazily. An idle partition has no task.
//! - Writing costs one aligned buffer per write round in flight, sized to the staged bytes (at
//!   most `WRITE_ROUND_BYTES_MAX`, or one larger append) and freed when the write completes:
//!   at most `WRITE_ROUNDS_INFLIGHT_MAX` of them per partition. Queued
//!   appends hold their record sets (the same `Bytes` the cache holds) until written, at most
//!   `QUEUED_BYTES_MAX` per partition.
//! - Reading from disk costs the requested bytes (bounded by `READ_BYTES_MAX`, or one larger
//!   batch) plus a scan chunk. A partition with a sequential catch-up reader also holds its
//!   read-ahead stream: at most `READ_AHEAD_CHUNKS + 1` chunks of `READ_AHEAD_CHUNK_BYTES`
//!   (plus the chunks one batch larger than a chunk spans), and the shard's streams together
//!   grow past `READ_AHEAD_CHUNKS_MIN` each only while they hold fewer than
//!   `READ_AHEAD_SHARD_CHUNKS_MAX` ([`read_ahead_held_bytes`]).
//! - The [`BatchCache`] is bounded by its byte budget, whatever the logs retain, and shared by
//!   every partition of the shard.
//!
//! Must not depend on: the cluster or network layers, or anything that knows about sockets.

mod admin;
mod append;
mod cache;
mod checkpoint;
mod config;
mod epoch;
mod error;
mod index;
mod preallocate;
mod read;
mod read_ahead;
mod recovery;
mod segment;
mod window;
mod writer;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use futures::channel::oneshot;

pub use cache::{BatchCache, CacheStats};
pub use config::{ConfigError, LogConfig};
pub use epoch::{DamagedEpoch, EpochEntry};
pub use error::{AdminError, AppendError, OpenError, ReadError};
pub use index::IndexDamage;
pub use read_ahead::held_bytes as read_ahead_held_bytes;
pub use recovery::{
    CheckpointStatus, IndexKind, RebuiltIndex, RecoveryReport, Truncation, TruncationReason,
};
pub use window::AppendWindow;

use crate::io::File;
use crate::limits::READ_MEMO_ENTRIES;
use crate::rt::sync::Semaphore;
use crate::types::{FilePos, LeaderEpoch, Offset, TimestampMs, TopicPartition};
use cache::CacheKey;
use segment::{ActiveSegment, Segment};

/// How durable an append must be before its [`PendingAppend`] resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The O_DIRECT write completed: the device has the data, possibly only in its volatile
    /// cache. Survives a process crash, not necessarily a power loss.
    Written,
    /// Written and fdatasync'ed: survives a power loss (given the media assumptions in
    /// `engine/FORMAT.md`).
    Synced,
}

/// Where an append landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    /// Offset of the first record.
    pub base_offset: Offset,
    /// Offset of the last record.
    pub last_offset: Offset,
    /// Number of batches.
    pub batch_count: u32,
    /// Number of records (by offsets: `last_offset - base_offset + 1`).
    pub record_count: u64,
    /// Largest batch max timestamp of the record set.
    pub max_timestamp: TimestampMs,
    /// Broker wall-clock time when the append was accepted (for `LogAppendTime` topics).
    pub append_time: TimestampMs,
    /// Bytes appended.
    pub bytes: u64,
}

/// Resolves when the writer has made an append as durable as asked.
type AppendDone = oneshot::Receiver<Result<(), AppendError>>;

/// An append, already validated and given its offsets (or rejected); await it for the
/// requested durability.
///
/// Dropping it does not cancel the append (the data is still written); it only stops waiting,
/// which is what an `acks=0` producer wants.
#[derive(Debug)]
#[must_use = "await the append to learn whether it became durable"]
pub struct PendingAppend {
    state: Result<(AppendInfo, AppendDone), Option<AppendError>>,
}

impl PendingAppend {
    fn rejected(error: AppendError) -> PendingAppend {
        PendingAppend {
            state: Err(Some(error)),
        }
    }

    /// The assigned offsets (known as soon as `append` returns), or why the append was
    /// rejected before anything was queued.
    pub fn info(&self) -> Result<AppendInfo, AppendError> {
        match &self.state {
            Ok((info, _)) => Ok(*info),
            Err(Some(error)) => Err(error.clone()),
            Err(None) => Err(AppendError::Closed),
        }
    }
}

impl std::future::Future for PendingAppend {
    type Output = Result<AppendInfo, AppendError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match &mut self.state {
            Err(error) => std::task::Poll::Ready(Err(error.take().unwrap_or(AppendError::Closed))),
            Ok((info, done)) => {
                let info = *info;
                std::pin::Pin::new(done)
                    .poll(cx)
                    .map(|result| match result {
                        Ok(Ok(())) => Ok(info),
                        Ok(Err(error)) => Err(error),
                        // The writer was dropped with the log before finishing.
                        Err(oneshot::Canceled) => Err(AppendError::Closed),
                    })
            }
        }
    }
}

/// Batches returned by [`PartitionLog::read`].
#[derive(Clone, Debug, Default)]
pub struct ReadSlice {
    /// Whole batches, one per element, byte-for-byte as stored, in offset order.
    pub batches: Vec<Bytes>,
    /// The offset to read from next (after the last batch returned, or the requested offset when
    /// nothing was returned).
    pub next_offset: Offset,
}

impl ReadSlice {
    /// Total bytes of the batches.
    pub fn bytes(&self) -> usize {
        self.batches.iter().map(Bytes::len).sum()
    }

    /// True when no batch was returned.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// The result of [`PartitionLog::offset_for_timestamp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimestampOffset {
    /// Base offset of the first batch whose max timestamp is at least the target (not below the
    /// log start offset).
    pub offset: Offset,
    /// That batch's max timestamp.
    pub timestamp: TimestampMs,
}

/// What [`PartitionLog::apply_retention`] and [`PartitionLog::delete_records`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Base offsets of the deleted segments.
    pub deleted_segments: Vec<Offset>,
    /// Bytes of the deleted segments.
    pub deleted_bytes: u64,
    /// The log start offset afterwards.
    pub log_start_offset: Offset,
}

/// A description of one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Offset of its first record.
    pub base_offset: Offset,
    /// Offset after its last record.
    pub end_offset: Offset,
    /// Bytes of batches.
    pub size_bytes: u64,
    /// Largest batch max timestamp, if it holds any batch.
    pub max_timestamp: Option<TimestampMs>,
    /// False for the active segment.
    pub sealed: bool,
}

/// Counters of one log, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Write rounds issued.
    pub writes: u64,
    /// fdatasyncs of the active segment issued by the writer.
    pub syncs: u64,
    /// Appends accepted.
    pub appends: u64,
    /// Segments rolled.
    pub rolls: u64,
    /// Reads served from disk.
    pub disk_reads: u64,
    /// Reads served from the batch cache.
    pub cache_reads: u64,
    /// Chunks read ahead of sequential readers.
    pub read_ahead_chunks: u64,
    /// Bytes copied out of read-ahead chunks for readers: the batches served, plus the header
    /// of a batch cut off at the end of what had arrived.
    pub read_ahead_copied_bytes: u64,
    /// Segments rolled into a retired segment file (written blocks) instead of a new file.
    pub recycled_segments: u64,
    /// Index lookups that found damaged entries and fell back to scanning.
    pub index_fallbacks: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Open,
    /// `truncate_to` is running: appends are refused with `Busy`.
    Truncating,
    /// `close`/`remove` started: everything is refused.
    Closed,
    /// An fdatasync failed: appends are refused until reopened.
    Failed,
}

/// A batch staged for writing, its header already rewritten.
#[derive(Clone, Debug)]
struct StagedBatch {
    base: Offset,
    next: Offset,
    max_timestamp: TimestampMs,
    bytes: Bytes,
}

#[derive(Debug)]
enum Op {
    /// One append call's batches.
    Write {
        batches: Vec<StagedBatch>,
        bytes: usize,
    },
    /// Seal the active segment and start a new one at this base offset.
    Roll { base: Offset },
}

/// Where the next assigned batch goes: the segment the queue will be writing into by then.
#[derive(Clone, Copy, Debug)]
struct AssignCursor {
    segment_base: Offset,
    /// Bytes assigned to that segment so far (written and queued).
    bytes: u64,
    first_max_timestamp: Option<TimestampMs>,
}

#[derive(Debug)]
struct Waiter {
    /// The append is done when the written (or synced) end reaches this offset.
    target: Offset,
    done: oneshot::Sender<Result<(), AppendError>>,
}

#[derive(Clone, Copy, Debug)]
struct MemoEntry {
    offset: Offset,
    segment: Offset,
    position: u64,
}

struct State {
    /// Invariant: ordered by base, contiguous (`segments[i].end == segments[i + 1].base`), never
    /// empty; the last one is the active segment, all others are sealed.
    segments: VecDeque<Segment>,
    active: ActiveSegment,
    /// Invariant: `segments[0].base <= log_start <= written`.
    log_start: Offset,
    /// Invariant: `log_start <= high_watermark <= written` (except briefly before the cluster
    /// layer sets it after open).
    high_watermark: Offset,
    /// The next offset to assign. Invariant: `next_offset >= written`.
    next_offset: Offset,
    assign: AssignCursor,
    /// The log end offset: everything below is written to the device and readable.
    /// Invariant: equals `segments.back().end`.
    written: Offset,
    /// Everything below is fdatasync'ed. Invariant: `synced <= written`.
    synced: Offset,
    /// Which leader epoch wrote which offsets, for everything assigned (written and queued).
    /// Invariant: every entry starts below `next_offset`; entries wholly below `log_start` may
    /// linger until the next checkpoint write prunes them.
    epochs: epoch::EpochCache,
    /// What the epoch file on disk holds (as written or read at open).
    epochs_persisted: epoch::EpochCache,
    /// What the checkpoint file on disk holds (as written at open or since), so a close with
    /// nothing new skips rewriting it.
    checkpoint_persisted: checkpoint::Checkpoint,
    unsynced_records: u64,
    queue: VecDeque<Op>,
    /// Invariant: the bytes of the `Op::Write`s in `queue`; at most `QUEUED_BYTES_MAX` plus one
    /// append.
    queued_bytes: usize,
    writer_running: bool,
    /// Set when work arrives for a running writer; the writer clears it when it looks for work.
    writer_kicked: bool,
    /// Wakes the running writer while it waits for its IO to complete.
    writer_waker: Option<std::task::Waker>,
    flush_due: bool,
    flush_timer_armed: bool,
    written_waiters: VecDeque<Waiter>,
    synced_waiters: VecDeque<Waiter>,
    idle_waiters: Vec<oneshot::Sender<()>>,
    mode: Mode,
    read_memo: [Option<MemoEntry>; READ_MEMO_ENTRIES],
    read_memo_next: usize,
    sealed_file: Option<(Offset, File)>,
    /// The sequential reader's read-ahead stream. Invariant: holds only bytes below the
    /// written size of its segment as they are now (a truncation discards it).
    read_ahead: Option<read_ahead::ReadAhead>,
    read_ahead_next_id: u64,
    /// The active segment's preallocation step, carried across rolls.
    preallocation: preallocate::Preallocation,
    /// The retired segment file the next roll writes over, if retention kept one.
    spare: Option<segment::Spare>,
    /// The base of the last roll that failed and was undone, and why: what a forced roll
    /// waiting for that roll answers.
    roll_failure: Option<(Offset, std::sync::Arc<std::io::Error>)>,
    stats: LogStats,
}

impl Inner {
    fn config(&self) -> LogConfig {
        self.config.get()
    }
}

struct Inner {
    tp: TopicPartition,
    dir: PathBuf,
    /// The settings in force; replaced whole by [`PartitionLog::update_config`].
    config: Cell<LogConfig>,
    cache: Rc<BatchCache>,
    cache_key: CacheKey,
    state: RefCell<State>,
    /// Serialises checkpoint writes (roll, retention, delete-records, truncation, close).
    checkpoint_lock: Semaphore,
    /// Serialises maintenance operations (retention, delete-records, truncation, close).
    admin_lock: Semaphore,
    /// Set when the writer task must stop touching files (the log was removed).
    removed: Cell<bool>,
}

/// One partition's durable log. Owned by one shard; `!Send`. See the module docs.
pub struct PartitionLog {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for PartitionLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionLog")
            .field("tp", &self.inner.tp)
            .field("dir", &self.inner.dir)
            .finish()
    }
}

impl PartitionLog {
    /// Opens (or creates) the log of `tp` in the partition directory `dir` (conventionally
    /// [`partition_dir`]`(data_dir, &tp)`), recovering its tail (see [`RecoveryReport`]).
    /// A new log is durable (its directory and empty segment file) when this returns; its
    /// syncs are shared with the other logs of the shard opening at the same time.
    pub async fn open(
        dir: impl AsRef<Path>,
        tp: TopicPartition,
        config: LogConfig,
        cache: Rc<BatchCache>,
    ) -> Result<(PartitionLog, RecoveryReport), OpenError> {
        let (inner, report) = recovery::open(dir.as_ref(), tp, config, cache).await?;
        let log = PartitionLog {
            inner: Rc::new(inner),
        };
        Ok((log, report))
    }

    /// Appends validated v2 batches as the leader. Validation and offset assignment (and the
    /// stamping of `leader_epoch` into every batch's partition-leader-epoch field) happen in this
    /// call, before the caller's first `.await`, so call order is log order; the returned
    /// [`PendingAppend`] knows its offsets at once and resolves at `durability`. A rejected
    /// append resolves at once with its error; an epoch below the log's latest is
    /// [`AppendError::StaleEpoch`]. The first append of a new epoch adds an epoch cache entry.
    /// The writes it starts reach the disk once the shard's tasks wait; a caller that appends
    /// in a loop without waiting keeps its appends in an [`AppendWindow`], which yields to the
    /// IO poll every write round's worth.
    pub fn append(
        &self,
        batches: Bytes,
        leader_epoch: LeaderEpoch,
        durability: Durability,
    ) -> PendingAppend {
        let assign = append::Assign::Leader(leader_epoch);
        append::stage(&self.inner, batches, assign, durability)
            .unwrap_or_else(PendingAppend::rejected)
    }

    /// Appends batches copied from the leader's log (a replication follower), keeping their
    /// offsets and leader epochs. They must continue the log exactly: the first base offset
    /// equals [`Self::next_offset`] (the log end offset plus appends still queued, so a
    /// follower may pipeline), and each batch starts where the previous ends
    /// ([`AppendError::OffsetMismatch`]). Every batch's CRC and framing is checked
    /// ([`AppendError::InvalidBatch`]); epochs must not go backwards
    /// ([`AppendError::EpochRegression`]). A batch carrying a new epoch adds an entry to the
    /// epoch cache. Nothing is stored on error; the returned append resolves at `durability`.
    pub fn append_replicated(&self, batches: Bytes, durability: Durability) -> PendingAppend {
        append::stage(&self.inner, batches, append::Assign::Follower, durability)
            .unwrap_or_else(PendingAppend::rejected)
    }

    /// The epoch cache: which leader epoch wrote which offsets, oldest first (see
    /// [`EpochEntry`]). Covers queued appends too; the first entry may start below the log
    /// start.
    pub fn leader_epochs(&self) -> Vec<EpochEntry> {
        self.inner.state.borrow().epochs.entries().to_vec()
    }

    /// The epoch of the last readable batch (below the log end, at or above the log start)
    /// that carries one: what a follower sends as its last fetched epoch.
    pub fn latest_epoch(&self) -> Option<LeaderEpoch> {
        let state = self.inner.state.borrow();
        state.epochs.latest_live(state.log_start, state.written)
    }

    /// The newest epoch in the epoch cache, queued appends and records below the log start
    /// included: [`PartitionLog::append`] refuses an epoch below it
    /// ([`AppendError::StaleEpoch`]).
    pub fn append_epoch_floor(&self) -> Option<LeaderEpoch> {
        self.inner.state.borrow().epochs.latest()
    }

    /// OffsetsForLeaderEpoch: the largest epoch in the log that is `<= epoch`, and the offset
    /// where it ends, which is the start of the next epoch in the log or the log end offset.
    /// When `epoch` is below every epoch in the log (or the log has none), the answer is `epoch`
    /// itself, ending where the first epoch starts (or at the log end), as in Kafka. The end
    /// offset is within `[log start, log end]`.
    pub fn end_offset_for_epoch(&self, epoch: LeaderEpoch) -> (LeaderEpoch, Offset) {
        let state = self.inner.state.borrow();
        state
            .epochs
            .end_offset_for(epoch, state.log_start, state.written)
    }

    /// Replaces the settings. Size, time, flush and retention settings apply from the next
    /// append or retention pass; the index interval applies from the next segment.
    pub fn update_config(&self, config: LogConfig) -> Result<(), ConfigError> {
        config.validate()?;
        self.inner.config.set(config);
        Ok(())
    }

    /// The settings in force.
    pub fn config(&self) -> LogConfig {
        self.inner.config()
    }

    /// Reads whole batches starting with the one containing `from`, up to `max_bytes` (at least
    /// one batch) and only batches that end at or before `upper` (exclusive bound, such as the
    /// high watermark; clamped to the log end).
    pub async fn read(
        &self,
        from: Offset,
        max_bytes: usize,
        upper: Offset,
    ) -> Result<ReadSlice, ReadError> {
        read::read(&self.inner, from, max_bytes, upper).await
    }

    /// Where a disk read of `offset` starts without the sequential-reader memo: the base offset
    /// of the segment holding it and the file position of the index entry at or before it
    /// (the segment start if the index is damaged). Reads index blocks from disk for sealed
    /// segments; for diagnostics and the `offset_index_lookup` benchmark.
    pub async fn index_position(&self, offset: Offset) -> Result<(Offset, FilePos), ReadError> {
        read::index_position(&self.inner, offset).await
    }

    /// The first batch whose max timestamp is at least `timestamp`, or `None` if there is none.
    pub async fn offset_for_timestamp(
        &self,
        timestamp: TimestampMs,
    ) -> Result<Option<TimestampOffset>, ReadError> {
        read::offset_for_timestamp(&self.inner, timestamp).await
    }

    /// The log start offset: the first offset that can be read.
    pub fn log_start_offset(&self) -> Offset {
        self.inner.state.borrow().log_start
    }

    /// The log end offset: the offset after the last written batch.
    pub fn log_end_offset(&self) -> Offset {
        self.inner.state.borrow().written
    }

    /// The next offset an append will be assigned (log end plus queued appends).
    pub fn next_offset(&self) -> Offset {
        self.inner.state.borrow().next_offset
    }

    /// The high watermark as last set (after open: the checkpointed value, at most the log end).
    pub fn high_watermark(&self) -> Offset {
        self.inner.state.borrow().high_watermark
    }

    /// Sets the high watermark.
    ///
    /// # Panics
    /// If it would move backwards or past the log end (a replication bug).
    pub fn set_high_watermark(&self, offset: Offset) {
        let mut state = self.inner.state.borrow_mut();
        assert!(
            offset <= state.written,
            "{}: high watermark {offset} past log end {}",
            self.inner.tp,
            state.written
        );
        assert!(
            offset >= state.high_watermark,
            "{}: high watermark {offset} below {}",
            self.inner.tp,
            state.high_watermark
        );
        state.high_watermark = offset;
    }

    /// Bytes of all segments (written data).
    pub fn size_bytes(&self) -> u64 {
        self.inner
            .state
            .borrow()
            .segments
            .iter()
            .map(|segment| segment.size)
            .sum()
    }

    /// Number of segments, the active one included.
    pub fn segment_count(&self) -> usize {
        self.inner.state.borrow().segments.len()
    }

    /// The segments, oldest first, the active one last.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let state = self.inner.state.borrow();
        state
            .segments
            .iter()
            .map(|segment| SegmentInfo {
                base_offset: segment.base,
                end_offset: segment.end,
                size_bytes: segment.size,
                max_timestamp: segment.max_timestamp,
                sealed: segment.sealed,
            })
            .collect()
    }

    /// Base offsets of the segments, oldest first.
    pub fn segment_bases(&self) -> Vec<Offset> {
        self.inner
            .state
            .borrow()
            .segments
            .iter()
            .map(|segment| segment.base)
            .collect()
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The topic-partition.
    pub fn topic_partition(&self) -> &TopicPartition {
        &self.inner.tp
    }

    /// Counters.
    pub fn stats(&self) -> LogStats {
        self.inner.state.borrow().stats
    }

    /// Waits until every queued append is written (and any requested fdatasync done).
    pub async fn flush(&self) {
        writer::wait_idle(&self.inner).await;
    }

    /// fdatasyncs everything written so far.
    pub async fn sync(&self) -> Result<(), AdminError> {
        admin::sync(&self.inner).await
    }

    /// Advances the log start offset to `before` (Kafka DeleteRecords), persists it, and deletes
    /// the sealed segments entirely below it. `before` must not pass the log end.
    pub async fn delete_records(&self, before: Offset) -> Result<RetentionReport, AdminError> {
        admin::delete_records(&self.inner, before).await
    }

    /// Deletes whole sealed segments by `retention.ms` (their max timestamp is older than
    /// `now - retention.ms`) and by `retention.bytes`, when they end at or below the high
    /// watermark, and those below the log start offset. Never the active segment.
    pub async fn apply_retention(&self, now: TimestampMs) -> Result<RetentionReport, AdminError> {
        admin::apply_retention(&self.inner, now).await
    }

    /// Removes every batch from the one containing `offset` on (follower truncation); returns
    /// the new log end offset. Appends are refused with [`AppendError::Busy`] meanwhile.
    pub async fn truncate_to(&self, offset: Offset) -> Result<Offset, AdminError> {
        admin::truncate_to(&self.inner, offset).await
    }

    /// Rolls to a new segment now (if the active one holds data). A roll that fails before it
    /// is durable (a full disk) is undone, leaving the log as it was, and its error returned.
    pub async fn roll(&self) -> Result<(), AdminError> {
        admin::roll_now(&self.inner).await
    }

    /// Waits for the writer, trims the active segment's preallocation, and writes the
    /// clean-shutdown marker (the active segment's state, index tails, high watermark and
    /// epochs, so the next open scans nothing) once all of that is durable; rewrites the
    /// checkpoint files first only if they changed in more than what the marker carries. Every
    /// sync is a shared one (`io::sync_file_system`), so many partitions closing at once share
    /// them. On error no valid marker is left. Releases the log's cache entries; afterwards
    /// every operation fails with `Closed`, and the files are released when the log is dropped.
    pub async fn close(&self) -> Result<(), AdminError> {
        admin::close(&self.inner).await
    }

    /// Deletes the partition's directory and everything in it; the log is closed afterwards.
    pub async fn remove(&self) -> Result<(), AdminError> {
        admin::remove(&self.inner).await
    }
}

/// The conventional partition directory of `tp` under a data directory: `DATA/TOPIC-PARTITION`.
pub fn partition_dir(data_dir: &Path, tp: &TopicPartition) -> PathBuf {
    data_dir.join(tp.to_string())
}
