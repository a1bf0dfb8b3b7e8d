//! The synchronous half of an append: validate the record set, assign offsets, decide rolls,
//! queue the batches for the writer and insert them into the cache — all before the caller's
//! first `.await`, so call order is log order.
//!
//! Must not depend on: file IO (the writer does that).

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;

use crate::batch::{self, HEADER_BYTES, LOG_OVERHEAD_BYTES};
use crate::limits::{APPEND_BYTES_MAX, QUEUED_BYTES_MAX};
use crate::log::segment::segments_max;
use crate::log::{
    AppendError, AppendInfo, AssignCursor, Durability, Inner, Mode, Op, PendingAppend, StagedBatch,
    State, Waiter, writer,
};
use crate::types::{LeaderEpoch, Offset, TimestampMs};

/// Who assigns the offsets.
pub(crate) enum Assign {
    /// The log assigns offsets and stamps this leader epoch.
    Leader(LeaderEpoch),
    /// The batches carry offsets that must continue the log exactly.
    Follower,
}

/// One batch of the record set, as parsed before anything is changed.
struct Parsed {
    start: usize,
    len: usize,
    base: Offset,
    records: i64,
    max_timestamp: TimestampMs,
    epoch: LeaderEpoch,
}

/// Parses and checks every batch of the record set. Nothing is changed on error.
fn parse_record_set(
    bytes: &[u8],
    max_batch_bytes: usize,
    assign: &Assign,
) -> Result<Vec<Parsed>, AppendError> {
    if bytes.is_empty() {
        return Err(AppendError::Empty);
    }
    if bytes.len() > APPEND_BYTES_MAX {
        return Err(AppendError::RecordSetTooLarge {
            bytes: bytes.len(),
            limit: APPEND_BYTES_MAX,
        });
    }
    let mut parsed = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let index = parsed.len();
        let rest = &bytes[at..];
        // Oversized batches get their own error before the general framing checks.
        if rest.len() >= LOG_OVERHEAD_BYTES {
            let length = i32::from_be_bytes(rest[8..12].try_into().expect("4 bytes"));
            if let Ok(length) = usize::try_from(length)
                && LOG_OVERHEAD_BYTES + length > max_batch_bytes
                && length >= HEADER_BYTES - LOG_OVERHEAD_BYTES
            {
                return Err(AppendError::BatchTooLarge {
                    index,
                    bytes: LOG_OVERHEAD_BYTES + length,
                    limit: max_batch_bytes,
                });
            }
        }
        let header = match assign {
            Assign::Leader(_) => batch::validate_produced(rest, max_batch_bytes),
            Assign::Follower => batch::validate(rest, max_batch_bytes),
        }
        .map_err(|error| AppendError::InvalidBatch { index, error })?;
        let len = header.total_bytes();
        parsed.push(Parsed {
            start: at,
            len,
            base: header.base_offset,
            records: i64::from(header.last_offset_delta) + 1,
            max_timestamp: header.max_timestamp,
            epoch: header.leader_epoch,
        });
        at += len;
    }
    assert_eq!(at, bytes.len(), "record set parse overran");
    Ok(parsed)
}

/// Stages an append; see [`crate::log::PartitionLog::append`].
pub(crate) fn stage(
    inner: &std::rc::Rc<Inner>,
    batches: Bytes,
    assign: Assign,
    durability: Durability,
) -> Result<PendingAppend, AppendError> {
    {
        let state = inner.state.borrow();
        check_mode(&state)?;
        // Backpressure: at least one append is always accepted, so any size can get through.
        if state.queued_bytes > 0 && state.queued_bytes + batches.len() > QUEUED_BYTES_MAX {
            return Err(AppendError::Overloaded {
                queued_bytes: state.queued_bytes,
                limit: QUEUED_BYTES_MAX,
            });
        }
    }
    let parsed = parse_record_set(&batches, inner.config().max_batch_bytes, &assign)?;
    check_epochs_and_offsets(inner, &parsed, &assign)?;
    // One copy of the record set when the caller still shares its buffer: the headers are
    // rewritten in place and the result is what the writer writes and the cache holds.
    let mut owned = match batches.try_into_mut() {
        Ok(owned) => owned,
        Err(shared) => BytesMut::from(&shared[..]),
    };

    let total_bytes = owned.len();
    let max_timestamp = parsed
        .iter()
        .map(|batch| batch.max_timestamp)
        .max()
        .expect("not empty");
    let first_max_timestamp = parsed[0].max_timestamp;
    let records: i64 = parsed.iter().map(|batch| batch.records).sum();
    let append_time = crate::rt::clock::unix_now_ms();
    let mut state = inner.state.borrow_mut();
    let end = state.next_offset.plus(records);
    let roll = roll_wanted(inner, &state, end, total_bytes as u64, max_timestamp);
    if roll {
        check_segment_count(&state)?;
    }
    let mut next = state.next_offset;
    for batch in &parsed {
        let bytes = &mut owned[batch.start..batch.start + batch.len];
        let epoch = match assign {
            Assign::Leader(epoch) => {
                batch::set_base_offset(bytes, next);
                batch::set_leader_epoch(bytes, epoch);
                epoch
            }
            Assign::Follower => {
                assert_eq!(
                    batch.base, next,
                    "{}: follower offsets checked above",
                    inner.tp
                );
                batch.epoch
            }
        };
        // A new epoch starts here; stale epochs were refused above, so this only ignores the
        // repeats of the latest epoch (and unstamped batches).
        state.epochs.assign(epoch, next);
        next = next.plus(batch.records);
    }
    let base_offset = state.next_offset;
    assert!(
        next > base_offset,
        "{}: append of no offsets at {base_offset}",
        inner.tp
    );
    assert_eq!(next, end, "{}: offsets assigned", inner.tp);
    if roll {
        queue_roll(inner, &mut state);
    }

    let frozen = owned.freeze();
    let mut staged = Vec::with_capacity(parsed.len());
    let mut offset = base_offset;
    for batch in &parsed {
        let batch_next = offset.plus(batch.records);
        let bytes = frozen.slice(batch.start..batch.start + batch.len);
        inner
            .cache
            .insert(inner.cache_key, offset, batch_next, bytes.clone());
        staged.push(StagedBatch {
            base: offset,
            next: batch_next,
            max_timestamp: batch.max_timestamp,
            bytes,
        });
        offset = batch_next;
    }
    assert_eq!(offset, next);
    state.queued_bytes += total_bytes;
    state.queue.push_back(Op::Write {
        batches: staged,
        bytes: total_bytes,
    });
    state.next_offset = next;
    let cursor = &mut state.assign;
    cursor.bytes += total_bytes as u64;
    cursor
        .first_max_timestamp
        .get_or_insert(first_max_timestamp);
    state.stats.appends += 1;

    // One small allocation per append (the completion channel); the record set itself was
    // copied at most once above.
    let (done, receiver) = oneshot::channel();
    let waiter = Waiter { target: next, done };
    match durability {
        Durability::Written => state.written_waiters.push_back(waiter),
        Durability::Synced => state.synced_waiters.push_back(waiter),
    }
    drop(state);
    writer::ensure_running(inner);

    let record_count = u64::try_from(next.0 - base_offset.0).expect("positive");
    Ok(PendingAppend {
        state: Ok((
            AppendInfo {
                base_offset,
                last_offset: Offset(next.0 - 1),
                batch_count: u32::try_from(parsed.len()).expect("batch count fits in u32"),
                record_count,
                max_timestamp,
                append_time,
                bytes: total_bytes as u64,
            },
            receiver,
        )),
    })
}

/// Refuses a leader epoch below the log's latest, follower batches whose epochs go backwards
/// (within the record set or below the log's latest), and follower batches that do not continue
/// the log exactly. Nothing is changed on error.
fn check_epochs_and_offsets(
    inner: &Inner,
    parsed: &[Parsed],
    assign: &Assign,
) -> Result<(), AppendError> {
    let state = inner.state.borrow();
    let latest = state.epochs.latest();
    match assign {
        Assign::Leader(epoch) => {
            if let Some(latest) = latest.filter(|latest| epoch < latest) {
                return Err(AppendError::StaleEpoch {
                    epoch: *epoch,
                    latest,
                });
            }
        }
        Assign::Follower => {
            let mut next = state.next_offset;
            let mut floor = latest;
            for (index, batch) in parsed.iter().enumerate() {
                if batch.base != next {
                    return Err(AppendError::OffsetMismatch {
                        index,
                        expected: next,
                        found: batch.base,
                    });
                }
                if let Some(latest) = floor.filter(|latest| batch.epoch < *latest) {
                    return Err(AppendError::EpochRegression {
                        index,
                        epoch: batch.epoch,
                        latest,
                    });
                }
                floor = floor.max(Some(batch.epoch));
                next = batch.base.plus(batch.records);
            }
        }
    }
    Ok(())
}

fn check_mode(state: &State) -> Result<(), AppendError> {
    match state.mode {
        Mode::Open => Ok(()),
        Mode::Truncating => Err(AppendError::Busy),
        Mode::Closed => Err(AppendError::Closed),
        Mode::Failed => Err(AppendError::Failed),
    }
}

/// Whether a roll must come before this append: the active segment (as the queue will have
/// it) is non-empty and the append would pass `segment.bytes`, `segment.ms` (by record
/// timestamps, as Kafka), or the relative-offset range of the index.
fn roll_wanted(
    inner: &Inner,
    state: &State,
    next: Offset,
    bytes: u64,
    max_timestamp: TimestampMs,
) -> bool {
    let cursor = state.assign;
    if cursor.bytes == 0 {
        return false;
    }
    let by_size = cursor.bytes + bytes > inner.config().segment_bytes;
    let by_time = cursor
        .first_max_timestamp
        .is_some_and(|first| max_timestamp.0.saturating_sub(first.0) > inner.config().segment_ms);
    let by_offsets = next.0 - 1 - cursor.segment_base.0 > i64::from(u32::MAX);
    by_size || by_time || by_offsets
}

/// Refuses an append that needs a roll when the log already holds (or has queued) the most
/// segments a partition may: open refuses more (the checkpoint's size is bounded by them), so
/// rolling past it would make a log this process cannot reopen. Counts the queued rolls, so it
/// costs a pass over the queue, only when a roll is due.
pub(crate) fn check_segment_count(state: &State) -> Result<(), AppendError> {
    let queued = state
        .queue
        .iter()
        .filter(|op| matches!(op, Op::Roll { .. }))
        .count();
    let segments = state.segments.len() + queued;
    let limit = segments_max();
    if segments >= limit {
        return Err(AppendError::SegmentLimit { segments, limit });
    }
    Ok(())
}

/// Queues a roll at the next offset (see [`roll_wanted`]).
fn queue_roll(inner: &Inner, state: &mut State) {
    let cursor = state.assign;
    let base = state.next_offset;
    assert!(
        base > cursor.segment_base,
        "{}: roll to {base} without data",
        inner.tp
    );
    state.queue.push_back(Op::Roll { base });
    state.assign = AssignCursor {
        segment_base: base,
        bytes: 0,
        first_max_timestamp: None,
    };
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use crate::batch::Compression;
    use crate::batch::builder::{SimpleRecord, build_batch};
    use crate::log::segment::SEGMENTS_MAX_FOR_TEST;
    use crate::log::{
        AdminError, AppendError, BatchCache, Durability, LogConfig, OpenError, PartitionLog,
        RecoveryReport,
    };
    use crate::types::{LeaderEpoch, Offset, TimestampMs, TopicPartition};

    fn batch() -> bytes::Bytes {
        let record = SimpleRecord {
            key: None,
            value: Some(vec![7u8; 3_000]),
            headers: Vec::new(),
            timestamp: TimestampMs(0),
        };
        build_batch(&[record], Compression::None).expect("test batch builds")
    }

    async fn open(dir: &std::path::Path) -> Result<(PartitionLog, RecoveryReport), OpenError> {
        let config = LogConfig {
            segment_bytes: 8 << 10,
            preallocate_bytes: 64 << 10,
            ..LogConfig::default()
        };
        let tp = TopicPartition::new("segment-cap", 0);
        let cache = Rc::new(BatchCache::new(1 << 20));
        PartitionLog::open(dir, tp, config, cache).await
    }

    // Goal: a roll never makes more segments than open accepts: at the cap, an append that
    // needs a new segment (and a forced roll) is refused with a typed error and the log still
    // reopens; once delete-records removes a segment, appends roll again.
    // Method: the cap lowered to 3 for this thread; 3 KiB batches in 8 KiB segments (two each).
    #[test]
    fn roll_refuses_past_the_segment_cap_and_the_log_reopens() {
        SEGMENTS_MAX_FOR_TEST.with(|max| max.set(Some(3)));
        let dir = tempfile::tempdir().expect("temp dir");
        crate::rt::block_on(async {
            let (log, _) = open(dir.path()).await.expect("log opens");
            let mut appended = 0;
            let refused = loop {
                let result = log
                    .append(batch(), LeaderEpoch(1), Durability::Written)
                    .await;
                match result {
                    Ok(_) => appended += 1,
                    Err(error) => break error,
                }
                assert!(appended < 100, "the cap never refused a roll");
            };
            assert!(
                matches!(
                    refused,
                    AppendError::SegmentLimit {
                        segments: 3,
                        limit: 3
                    }
                ),
                "{refused:?}"
            );
            assert_eq!(appended, 6, "two batches in each of three segments");
            assert_eq!(log.segment_count(), 3);
            let forced = log.roll().await;
            assert!(
                matches!(forced, Err(AdminError::SegmentLimit { .. })),
                "{forced:?}"
            );
            log.close().await.expect("close");
            let (log, _) = open(dir.path()).await.expect("a log at the cap reopens");
            log.set_high_watermark(log.log_end_offset());
            log.delete_records(Offset(2)).await.expect("delete records");
            assert_eq!(log.segment_count(), 2);
            log.append(batch(), LeaderEpoch(1), Durability::Written)
                .await
                .expect("appends roll again");
            assert_eq!(log.segment_count(), 3);
            log.close().await.expect("close");
        });
        SEGMENTS_MAX_FOR_TEST.with(|max| max.set(None));
    }
}
