//! [`Consumer`]: reads assigned partitions from positions it is told, prefetching in the
//! background.
//!
//! Each assigned partition has a fetcher task that long-polls the shard owning the partition
//! (`fetch_wait_max` on the broker), decodes the batches it gets (skipping the records below
//! the position, since a fetch returns whole batches), and buffers the records; fetchers of
//! different partitions run in parallel. [`Consumer::poll`] hands out buffered records,
//! taking partitions in turn. A fetcher sends its next fetch as soon as an answer's batch
//! headers say where it ends, and checks and decodes that answer while the broker serves the
//! next one. Prefetching stops while the buffered records exceed `buffer_bytes` (so at most two
//! more fetches per partition land above the bound: the one being decoded and the one sent
//! ahead).
//!
//! A seek discards what was buffered for the partition and what its fetcher has in flight
//! (each seek starts a new epoch; answers of an older epoch are dropped).
//!
//! Errors: the client has already retried retriable failures; a fetch that still fails is
//! reported by the next `poll`. The fetcher then pauses: after `retry_backoff_max` for a
//! retriable failure, until the next seek otherwise (an offset out of range, say, unless
//! `reset_on_out_of_range` picks a new position).
//!
//! Shard-local (`!Send`). Must not depend on storage internals: batches are decoded with
//! `sluice_engine::batch`, the shared format.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{join, select};
use sluice_engine::TimestampMs;
use sluice_engine::batch::{
    BatchError, BatchHeader, HEADER_BYTES, Header, decode_batch, next_offset_after_whole_batches,
};
use sluice_engine::limits::BATCH_BYTES_MAX;
use sluice_engine::rt::{self, clock};
use sluice_engine::util::Notify;

use super::error::{ClientError, ConsumerError};
use super::handle::{Client, Fetched};
use crate::limits::{
    CONSUMER_BUFFER_BYTES_DEFAULT, CONSUMER_FETCH_BYTES_DEFAULT, CONSUMER_FETCH_WAIT_MS_DEFAULT,
    CONSUMER_POLL_RECORDS_DEFAULT,
};
use crate::native::messages::{ErrorCode, OffsetQuery};

/// Bytes a buffered record is charged beyond its key, value and headers (its struct and
/// bookkeeping), so that empty records still count against the buffer.
const RECORD_OVERHEAD_BYTES: usize = 64;

/// Where to read a partition from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seek {
    /// The log start offset.
    Beginning,
    /// The high watermark: only records produced from now on.
    End,
    /// This offset.
    Offset(i64),
    /// The first record whose timestamp is at or after this time (the end if none is).
    Timestamp(TimestampMs),
}

/// Consumer settings.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// How long the broker holds a fetch that finds no new record.
    pub fetch_wait_max: Duration,
    /// Soft byte limit of one fetch (the broker returns at least one whole batch).
    pub fetch_bytes_max: u32,
    /// Record bytes buffered before prefetching pauses.
    pub buffer_bytes: usize,
    /// Records one `poll` returns at most.
    pub poll_records_max: usize,
    /// Where newly assigned partitions start.
    pub start: Seek,
    /// Where to continue when the position is outside the log (records deleted by
    /// retention, say); `None` reports the error and pauses the partition until a seek.
    pub reset_on_out_of_range: Option<Seek>,
    /// Pause of a fetcher after a fetch failed for a retriable reason.
    pub retry_backoff_max: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> ConsumerConfig {
        ConsumerConfig {
            fetch_wait_max: Duration::from_millis(u64::from(CONSUMER_FETCH_WAIT_MS_DEFAULT)),
            fetch_bytes_max: CONSUMER_FETCH_BYTES_DEFAULT,
            buffer_bytes: CONSUMER_BUFFER_BYTES_DEFAULT,
            poll_records_max: CONSUMER_POLL_RECORDS_DEFAULT,
            start: Seek::Beginning,
            reset_on_out_of_range: None,
            retry_backoff_max: Duration::from_secs(1),
        }
    }
}

/// One record read from a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// Create time, or the broker's append time for topics that stamp it.
    pub timestamp: TimestampMs,
    /// The key (`None`: null).
    pub key: Option<Bytes>,
    /// The value (`None`: null).
    pub value: Option<Bytes>,
    /// Headers in order.
    pub headers: Vec<Header>,
}

impl ConsumerRecord {
    /// Bytes charged against the consumer's buffer.
    fn charged_bytes(&self) -> usize {
        let field = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
        let headers: usize = self
            .headers
            .iter()
            .map(|h| h.key.len() + field(&h.value))
            .sum();
        RECORD_OVERHEAD_BYTES + field(&self.key) + field(&self.value) + headers
    }
}

type PartitionKey = (Arc<str>, i32);

struct PartitionState {
    /// Bumped by every seek; fetch answers of an older epoch are dropped.
    epoch: u64,
    /// A seek not yet turned into an offset.
    seek: Option<Seek>,
    /// Next offset `poll` returns. Invariant: at most `fetch_offset`.
    position: i64,
    /// Next offset to fetch.
    fetch_offset: i64,
    /// Invariant: offsets in `[position, fetch_offset)`, increasing.
    records: VecDeque<ConsumerRecord>,
    /// Invariant: the sum of `records`' charged bytes.
    bytes: usize,
    /// A failure for the next `poll` to report.
    error: Option<ConsumerError>,
    /// The fetcher waits for a seek (after a failure retrying cannot fix).
    stopped: bool,
    /// The high watermark from the last fetch, -1 before the first.
    high_watermark: i64,
}

impl PartitionState {
    /// Moves the partition to `to` in a new epoch: the records buffered are dropped (they may
    /// lie on either side of the new position), a failure is forgotten, and answers of the old
    /// epoch will be dropped. Returns the bytes dropped, for the consumer's total.
    fn move_to(&mut self, to: Seek) -> usize {
        let dropped = std::mem::take(&mut self.bytes);
        self.records.clear();
        self.epoch += 1;
        self.error = None;
        self.stopped = false;
        match to {
            Seek::Offset(offset) => {
                self.seek = None;
                self.position = offset;
                self.fetch_offset = offset;
            }
            other => self.seek = Some(other),
        }
        dropped
    }
}

struct State {
    partitions: HashMap<PartitionKey, PartitionState>,
    /// Assignment order; `poll` starts at a rotating index into it.
    order: Vec<PartitionKey>,
    next_index: usize,
    /// Invariant: the sum of every partition's `bytes`.
    buffered_bytes: usize,
}

struct Shared {
    client: Client,
    config: ConsumerConfig,
    state: RefCell<State>,
    /// Bumped when records arrive, are taken, or a seek happens.
    changed: Notify,
}

/// Reads assigned partitions; see the [module docs](self).
///
/// Shard-local (`!Send`); dropping it stops its fetchers.
pub struct Consumer {
    shared: Rc<Shared>,
    fetchers: RefCell<HashMap<PartitionKey, rt::Task<()>>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.shared.config)
            .field("assignment", &self.assignment())
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer with no partition assigned. Must be called on the client's executor.
    pub fn new(client: &Client, config: ConsumerConfig) -> Consumer {
        Consumer {
            shared: Rc::new(Shared {
                client: client.clone(),
                config,
                state: RefCell::new(State {
                    partitions: HashMap::new(),
                    order: Vec::new(),
                    next_index: 0,
                    buffered_bytes: 0,
                }),
                changed: Notify::new(),
            }),
            fetchers: RefCell::new(HashMap::new()),
        }
    }

    /// Makes `partitions` the assignment: partitions no longer listed are dropped with their
    /// buffered records, new ones start at `ConsumerConfig::start`, others keep their
    /// position. Unknown topics or partitions are reported by `poll`.
    pub fn assign(&self, partitions: &[(&str, i32)]) {
        let start = self.shared.config.start;
        let partitions: Vec<(&str, i32, Seek)> =
            partitions.iter().map(|(t, p)| (*t, *p, start)).collect();
        self.assign_from(&partitions);
    }

    /// [`Consumer::assign`] with a start position per partition: partitions not assigned
    /// before start there; the others keep their position.
    pub fn assign_from(&self, partitions: &[(&str, i32, Seek)]) {
        let wanted: Vec<(PartitionKey, Seek)> = partitions
            .iter()
            .map(|(topic, partition, seek)| ((Arc::<str>::from(*topic), *partition), *seek))
            .collect();
        let mut state = self.shared.state.borrow_mut();
        let mut fetchers = self.fetchers.borrow_mut();
        let removed: Vec<PartitionKey> = state
            .order
            .iter()
            .filter(|key| !wanted.iter().any(|(k, _)| k == *key))
            .cloned()
            .collect();
        for key in removed {
            if let Some(partition) = state.partitions.remove(&key) {
                state.buffered_bytes -= partition.bytes;
            }
            // Dropping the task cancels the fetcher.
            fetchers.remove(&key);
        }
        state.order.clear();
        let mut started = Vec::new();
        for (key, start) in wanted {
            if state.order.contains(&key) {
                continue;
            }
            state.order.push(key.clone());
            if state.partitions.contains_key(&key) {
                continue;
            }
            state.partitions.insert(
                key.clone(),
                PartitionState {
                    epoch: 0,
                    seek: match start {
                        Seek::Offset(_) => None,
                        other => Some(other),
                    },
                    position: match start {
                        Seek::Offset(offset) => offset,
                        _ => -1,
                    },
                    fetch_offset: match start {
                        Seek::Offset(offset) => offset,
                        _ => -1,
                    },
                    records: VecDeque::new(),
                    bytes: 0,
                    error: None,
                    stopped: false,
                    high_watermark: -1,
                },
            );
            started.push(key);
        }
        drop(state);
        // Spawned only now: the runtime may start running a task as it is spawned, and it
        // must find the state free.
        for key in started {
            let task = rt::spawn(fetch_loop(Rc::clone(&self.shared), key.clone()));
            fetchers.insert(key, task);
        }
        self.shared.changed.notify();
    }

    /// The assigned partitions, in assignment order.
    pub fn assignment(&self) -> Vec<(Arc<str>, i32)> {
        self.shared.state.borrow().order.clone()
    }

    /// Moves a partition's position; buffered and in-flight records are discarded.
    pub fn seek(&self, topic: &str, partition: i32, to: Seek) -> Result<(), ConsumerError> {
        let mut state = self.shared.state.borrow_mut();
        let state = &mut *state;
        let key = (Arc::<str>::from(topic), partition);
        let Some(entry) = state.partitions.get_mut(&key) else {
            return Err(ConsumerError::NotAssigned {
                topic: key.0,
                partition,
            });
        };
        state.buffered_bytes -= entry.move_to(to);
        self.shared.changed.notify();
        Ok(())
    }

    /// The offset of the next record `poll` returns for the partition (resolving a pending
    /// seek with a request to the broker).
    pub async fn position(&self, topic: &str, partition: i32) -> Result<i64, ConsumerError> {
        let key = (Arc::<str>::from(topic), partition);
        loop {
            let (seek, epoch) = {
                let state = self.shared.state.borrow();
                let Some(entry) = state.partitions.get(&key) else {
                    return Err(ConsumerError::NotAssigned {
                        topic: key.0,
                        partition,
                    });
                };
                match entry.seek {
                    None => return Ok(entry.position),
                    Some(seek) => (seek, entry.epoch),
                }
            };
            let offset = resolve_seek(&self.shared.client, &key, seek).await?;
            settle_seek(&self.shared, &key, epoch, offset);
        }
    }

    /// The partition's high watermark as of its last fetch (-1 before the first answer).
    pub fn high_watermark(&self, topic: &str, partition: i32) -> Option<i64> {
        let key = (Arc::<str>::from(topic), partition);
        self.shared
            .state
            .borrow()
            .partitions
            .get(&key)
            .map(|p| p.high_watermark)
    }

    /// Returns buffered records (at most `poll_records_max`), waiting up to `timeout` for
    /// some to arrive. An empty result means none came in time. A failed fetch is reported
    /// once, by a poll that has no record to return.
    pub async fn poll(&self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ConsumerError> {
        let deadline = clock::now() + timeout;
        loop {
            let seen = self.shared.changed.version();
            let records = self.take_records();
            if !records.is_empty() {
                // Room in the buffer: paused fetchers may continue.
                self.shared.changed.notify();
                return Ok(records);
            }
            if let Some(error) = self.take_error() {
                return Err(error);
            }
            let now = clock::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let changed = self.shared.changed.changed(seen);
            let timer = rt::sleep(deadline - now);
            futures::pin_mut!(changed, timer);
            let _ = select(changed, timer).await;
        }
    }

    fn take_records(&self) -> Vec<ConsumerRecord> {
        let mut state = self.shared.state.borrow_mut();
        let state = &mut *state;
        let count = state.order.len();
        let mut out = Vec::new();
        let max = self.shared.config.poll_records_max.max(1);
        for turn in 0..count {
            let key = &state.order[(state.next_index + turn) % count];
            let Some(entry) = state.partitions.get_mut(key) else {
                continue;
            };
            while out.len() < max {
                let Some(record) = entry.records.pop_front() else {
                    break;
                };
                let charged = record.charged_bytes();
                entry.bytes -= charged;
                state.buffered_bytes -= charged;
                assert!(
                    record.offset >= entry.position,
                    "{}-{}: record {} below position {}",
                    key.0,
                    key.1,
                    record.offset,
                    entry.position
                );
                entry.position = record.offset + 1;
                out.push(record);
            }
            if entry.records.is_empty() && entry.seek.is_none() {
                // Skipped offsets (control batches, compacted gaps) count as consumed.
                entry.position = entry.position.max(entry.fetch_offset);
            }
            if out.len() >= max {
                break;
            }
        }
        if count > 0 {
            state.next_index = (state.next_index + 1) % count;
        }
        out
    }

    fn take_error(&self) -> Option<ConsumerError> {
        let mut state = self.shared.state.borrow_mut();
        let state = &mut *state;
        state
            .order
            .iter()
            .find_map(|key| state.partitions.get_mut(key).and_then(|p| p.error.take()))
    }
}

/// Turns a seek into an offset with a request to the partition's shard.
async fn resolve_seek(
    client: &Client,
    key: &PartitionKey,
    seek: Seek,
) -> Result<i64, ConsumerError> {
    let (topic, partition) = (&key.0, key.1);
    let query = match seek {
        Seek::Offset(offset) => return Ok(offset),
        Seek::Beginning => OffsetQuery::Earliest,
        Seek::End => OffsetQuery::Latest,
        Seek::Timestamp(ms) => OffsetQuery::Timestamp { ms: ms.0 },
    };
    let fetch_error = |source| ConsumerError::Fetch {
        topic: Arc::clone(topic),
        partition,
        source,
    };
    let listed = client
        .list_offset(topic, partition, query)
        .await
        .map_err(fetch_error)?;
    if listed.offset >= 0 {
        return Ok(listed.offset);
    }
    // No record at or after that time: start at the end.
    let end = client
        .list_offset(topic, partition, OffsetQuery::Latest)
        .await
        .map_err(fetch_error)?;
    Ok(end.offset)
}

/// Applies a resolved seek if no newer seek happened meanwhile.
fn settle_seek(shared: &Shared, key: &PartitionKey, epoch: u64, offset: i64) {
    let mut state = shared.state.borrow_mut();
    if let Some(entry) = state.partitions.get_mut(key)
        && entry.epoch == epoch
        && entry.seek.is_some()
    {
        entry.seek = None;
        entry.position = offset;
        entry.fetch_offset = offset;
    }
    drop(state);
    shared.changed.notify();
}

enum Next {
    Wait,
    Resolve(Seek, u64),
    Fetch(i64, u64),
}

/// A fetch sent before the answer to the previous one was decoded, with its answer.
struct Ahead {
    offset: i64,
    epoch: u64,
    answer: Result<Fetched, ClientError>,
}

/// One partition's fetcher: runs until the partition is unassigned (its task is dropped then)
/// or the consumer is dropped.
async fn fetch_loop(shared: Rc<Shared>, key: PartitionKey) {
    let config = &shared.config;
    let mut ahead: Option<Ahead> = None;
    loop {
        let seen = shared.changed.version();
        let next = {
            let state = shared.state.borrow();
            let Some(entry) = state.partitions.get(&key) else {
                return;
            };
            if entry.stopped || entry.error.is_some() {
                Next::Wait
            } else if let Some(seek) = entry.seek {
                Next::Resolve(seek, entry.epoch)
            } else if state.buffered_bytes >= config.buffer_bytes {
                Next::Wait
            } else {
                Next::Fetch(entry.fetch_offset, entry.epoch)
            }
        };
        match next {
            Next::Wait => shared.changed.changed(seen).await,
            Next::Resolve(seek, epoch) => match resolve_seek(&shared.client, &key, seek).await {
                Ok(offset) => settle_seek(&shared, &key, epoch, offset),
                Err(error) => fail(&shared, &key, epoch, error).await,
            },
            Next::Fetch(offset, epoch) => {
                // An answer fetched ahead serves only the position and epoch it was sent for;
                // after a seek it is dropped unread.
                let answer = match ahead.take() {
                    Some(sent) if sent.offset == offset && sent.epoch == epoch => sent.answer,
                    _ => fetch(&shared, &key, offset).await,
                };
                // From headers not checked yet; an answer that does not move forward (which
                // decoding then refuses) sends nothing ahead.
                let fetch_ahead = match &answer {
                    Ok(fetched) if may_fetch_ahead(&shared, &key, epoch) => {
                        next_offset_after_whole_batches(&fetched.batches, BATCH_BYTES_MAX)
                            .filter(|next| next.0 > offset)
                    }
                    _ => None,
                };
                let assigned = match fetch_ahead {
                    // The next fetch goes out first and the broker serves it while this answer
                    // is checked and decoded, as a Kafka client's fetcher runs ahead of its
                    // application. `join` polls the fetch first, so its request is queued on
                    // the connection before the yield lets the connection's driver send it.
                    Some(next) => {
                        let take = async {
                            rt::yield_now().await;
                            take_answer(&shared, &key, offset, epoch, answer).await
                        };
                        let (answer, assigned) = join(fetch(&shared, &key, next.0), take).await;
                        ahead = Some(Ahead {
                            offset: next.0,
                            epoch,
                            answer,
                        });
                        assigned
                    }
                    None => take_answer(&shared, &key, offset, epoch, answer).await,
                };
                if !assigned {
                    return;
                }
            }
        }
    }
}

/// Whether a fetch may go out before the answer of the epoch-`epoch` fetch in hand is buffered:
/// the partition is still assigned, not stopped, not being moved by a newer seek, and the
/// buffer below its bound.
fn may_fetch_ahead(shared: &Shared, key: &PartitionKey, epoch: u64) -> bool {
    let state = shared.state.borrow();
    state.buffered_bytes < shared.config.buffer_bytes
        && state.partitions.get(key).is_some_and(|entry| {
            entry.epoch == epoch && entry.seek.is_none() && !entry.stopped && entry.error.is_none()
        })
}

/// Fetches the partition from `offset` with the consumer's limits.
async fn fetch(shared: &Shared, key: &PartitionKey, offset: i64) -> Result<Fetched, ClientError> {
    let config = &shared.config;
    shared
        .client
        .fetch(
            &key.0,
            key.1,
            offset,
            config.fetch_bytes_max,
            config.fetch_wait_max,
        )
        .await
}

/// Buffers what the fetch from `offset` returned, or records its failure. False when the
/// partition is no longer assigned.
async fn take_answer(
    shared: &Shared,
    key: &PartitionKey,
    offset: i64,
    epoch: u64,
    answer: Result<Fetched, ClientError>,
) -> bool {
    let config = &shared.config;
    let (topic, partition) = (&key.0, key.1);
    let fetched = match answer {
        Ok(fetched) => fetched,
        Err(source) => {
            let out_of_range = source.code() == Some(ErrorCode::OffsetOutOfRange);
            match config.reset_on_out_of_range {
                Some(reset) if out_of_range => {
                    tracing::info!(%topic, partition, offset, ?reset, "offset out of range");
                    reset_to(shared, key, epoch, reset);
                }
                _ => {
                    let error = ConsumerError::Fetch {
                        topic: Arc::clone(topic),
                        partition,
                        source,
                    };
                    fail(shared, key, epoch, error).await;
                }
            }
            return true;
        }
    };
    let decoded = decode_fetched(topic, partition, &fetched.batches, offset);
    let mut guard = shared.state.borrow_mut();
    let state = &mut *guard;
    let Some(entry) = state.partitions.get_mut(key) else {
        return false;
    };
    if entry.epoch != epoch {
        return true;
    }
    entry.high_watermark = fetched.high_watermark;
    match decoded {
        Ok(decoded) => {
            assert_eq!(
                decoded.next_offset,
                next_offset_after_whole_batches(&fetched.batches, BATCH_BYTES_MAX).map(|o| o.0),
                "{topic}-{partition}: the decoded batches end where their headers said"
            );
            for record in decoded.records {
                let charged = record.charged_bytes();
                entry.bytes += charged;
                state.buffered_bytes += charged;
                entry.records.push_back(record);
            }
            if let Some(next) = decoded.next_offset {
                entry.fetch_offset = entry.fetch_offset.max(next);
            }
            if entry.records.is_empty() {
                entry.position = entry.position.max(entry.fetch_offset);
            }
        }
        Err(source) => {
            entry.error = Some(ConsumerError::Corrupt {
                topic: Arc::clone(topic),
                partition,
                offset,
                source,
            });
            entry.stopped = true;
        }
    }
    drop(guard);
    shared.changed.notify();
    true
}

/// Records a failure for `poll`; pauses the fetcher for a while if retrying may help, or
/// until the next seek otherwise.
async fn fail(shared: &Shared, key: &PartitionKey, epoch: u64, error: ConsumerError) {
    let retriable = error.client_error().is_some_and(ClientError::is_retriable);
    tracing::debug!(topic = %key.0, partition = key.1, %error, retriable, "fetch failed");
    {
        let mut state = shared.state.borrow_mut();
        let Some(entry) = state.partitions.get_mut(key) else {
            return;
        };
        if entry.epoch != epoch {
            return;
        }
        entry.error = Some(error);
        entry.stopped = !retriable;
    }
    shared.changed.notify();
    if retriable {
        rt::sleep(shared.config.retry_backoff_max).await;
    }
}

/// Moves the partition as a seek does after its fetch offset fell out of the log (records
/// deleted below it, or a log cut back above it): records buffered from before were fetched
/// ahead of `poll` and are dropped with the rest.
fn reset_to(shared: &Shared, key: &PartitionKey, epoch: u64, to: Seek) {
    let mut guard = shared.state.borrow_mut();
    let state = &mut *guard;
    if let Some(entry) = state.partitions.get_mut(key)
        && entry.epoch == epoch
    {
        state.buffered_bytes -= entry.move_to(to);
    }
    drop(guard);
    shared.changed.notify();
}

/// Records decoded from one fetch answer.
#[derive(Debug, Default)]
struct Decoded {
    /// Records at or after the fetch offset, in offset order.
    records: Vec<ConsumerRecord>,
    /// Offset after the last whole batch, if there was one.
    next_offset: Option<i64>,
}

/// Decodes the whole batches in `batches` (a trailing partial batch is ignored), keeping the
/// records at or after `from`. Control batches (transaction markers) yield no record.
///
/// Each batch's CRC covers its records but not its base offset, which nothing else checks end
/// to end (the native frame's CRC covers only its prefix and header): so the offsets must
/// ascend from batch to batch, and the first batch must reach `from`, or the answer is
/// refused. Records therefore come out in strictly ascending offsets at or after `from`.
fn decode_fetched(
    topic: &Arc<str>,
    partition: i32,
    batches: &Bytes,
    from: i64,
) -> Result<Decoded, BatchError> {
    let mut decoded = Decoded::default();
    // The lowest offset the next batch may start at.
    let mut floor = 0;
    let mut at = 0;
    // Bounded by the payload: every pass consumes one whole batch of at least a header.
    while at < batches.len() {
        let rest = batches.slice(at..);
        let total = if rest.len() < HEADER_BYTES {
            HEADER_BYTES
        } else {
            BatchHeader::parse(&rest, BATCH_BYTES_MAX)?.total_bytes()
        };
        if rest.len() < total {
            if decoded.next_offset.is_none() {
                return Err(BatchError::Truncated {
                    needed: total,
                    have: rest.len(),
                });
            }
            break;
        }
        let batch = rest.slice(..total);
        let decoder = decode_batch(&batch, BATCH_BYTES_MAX)?;
        let header = *decoder.header();
        if header.base_offset.0 < floor {
            return Err(BatchError::OffsetsGoBack {
                base_offset: header.base_offset.0,
                floor,
            });
        }
        if decoded.next_offset.is_none() && header.last_offset().0 < from {
            // The broker answers from the batch holding `from`; one wholly below it would
            // leave the fetch where it was.
            return Err(BatchError::EndsBelow {
                last_offset: header.last_offset().0,
                floor: from,
            });
        }
        floor = header.next_offset().0;
        if !header.attributes.is_control() {
            for record in decoder {
                let record = record?;
                if record.offset.0 < from {
                    continue;
                }
                decoded.records.push(ConsumerRecord {
                    topic: Arc::clone(topic),
                    partition,
                    offset: record.offset.0,
                    timestamp: record.timestamp,
                    key: record.key,
                    value: record.value,
                    headers: record.headers,
                });
            }
        }
        decoded.next_offset = Some(header.next_offset().0);
        at += total;
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::batch::{Compression, SimpleRecord, build_batch, set_base_offset};

    fn batch(base: i64, values: &[&str], compression: Compression) -> Vec<u8> {
        let records: Vec<SimpleRecord> = values
            .iter()
            .enumerate()
            .map(|(i, v)| SimpleRecord {
                key: Some(format!("k{i}").into_bytes()),
                value: Some(v.as_bytes().to_vec()),
                headers: vec![("h".into(), Some(b"x".to_vec()))],
                timestamp: TimestampMs(1000 + i as i64),
            })
            .collect();
        let mut bytes = build_batch(&records, compression)
            .expect("batch builds")
            .to_vec();
        set_base_offset(&mut bytes, sluice_engine::Offset(base));
        bytes
    }

    // Goal: a fetch answer decodes into the records at or after the position, in order, with
    // their fields; the next fetch offset follows the last whole batch; a trailing partial
    // batch is left for the next fetch, a lone partial batch is an error.
    // Method: concatenate batches (two codecs) starting before the position and decode.
    #[test]
    fn decode_skips_below_position() {
        let topic: Arc<str> = "t".into();
        let mut payload = batch(10, &["a", "b", "c"], Compression::None);
        payload.extend(batch(13, &["d", "e"], Compression::Zstd));
        let whole = payload.len();
        payload.extend(&batch(15, &["f"], Compression::None)[..30]);
        let short_tail = Bytes::from(payload.clone());
        let decoded = decode_fetched(&topic, 2, &short_tail, 11).expect("tail under a header");
        assert_eq!(decoded.next_offset, Some(15));
        payload.truncate(whole);
        payload.extend(&batch(15, &["f"], Compression::None)[..70]);
        let payload = Bytes::from(payload);
        let decoded = decode_fetched(&topic, 2, &payload, 11).expect("decodes");
        let offsets: Vec<i64> = decoded.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![11, 12, 13, 14]);
        assert_eq!(decoded.next_offset, Some(15));
        let first = &decoded.records[0];
        assert_eq!(first.value.as_deref(), Some(&b"b"[..]));
        assert_eq!(first.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(first.timestamp, TimestampMs(1001));
        assert_eq!(first.headers[0].key_str(), Some("h"));
        assert_eq!(first.partition, 2);
        let partial = payload.slice(whole..);
        assert!(matches!(
            decode_fetched(&topic, 2, &partial, 15),
            Err(BatchError::Truncated { .. })
        ));
        let empty = decode_fetched(&topic, 2, &Bytes::new(), 0).expect("empty");
        assert!(empty.records.is_empty());
        assert_eq!(empty.next_offset, None);
        let mut corrupt = batch(0, &["x"], Compression::None);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert!(decode_fetched(&topic, 0, &Bytes::from(corrupt), 0).is_err());
    }

    // Goal: the offset checks refuse only answers no log could give: gaps between batches (as
    // compaction leaves them) and a control batch pass; a batch starting inside the one before,
    // a negative base offset, and a first batch wholly below the fetch offset are refused.
    // Method: decode hand-made answers.
    #[test]
    fn fetched_offsets_must_ascend() {
        let topic: Arc<str> = "t".into();
        let decode = |parts: &[Vec<u8>], from: i64| {
            decode_fetched(&topic, 0, &Bytes::from(parts.concat()), from)
        };
        let mut control = sluice_engine::batch::BatchBuilder::new(BATCH_BYTES_MAX);
        control
            .mark_control()
            .set_base_offset(sluice_engine::Offset(12));
        control
            .push(None, Some(b"marker"), &[], TimestampMs(0))
            .expect("room");
        let control = control.build(Compression::None).expect("builds").to_vec();
        let gaps = [
            batch(10, &["a", "b"], Compression::None),
            control,
            batch(20, &["c"], Compression::Lz4),
        ];
        let decoded = decode(&gaps, 11).expect("gaps and a control batch pass");
        let offsets: Vec<i64> = decoded.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![11, 20]);
        assert_eq!(decoded.next_offset, Some(21));

        let overlap = [
            batch(10, &["a", "b"], Compression::None),
            batch(11, &["c"], Compression::None),
        ];
        assert_eq!(
            decode(&overlap, 10).map(|d| d.records.len()),
            Err(BatchError::OffsetsGoBack {
                base_offset: 11,
                floor: 12
            })
        );
        // `set_base_offset` refuses a negative offset; a peer's bytes may hold one.
        let mut negative = batch(0, &["a"], Compression::None);
        negative[..8].copy_from_slice(&(-5i64).to_be_bytes());
        assert_eq!(
            decode(&[negative], 0).map(|d| d.records.len()),
            Err(BatchError::OffsetsGoBack {
                base_offset: -5,
                floor: 0
            })
        );
        assert_eq!(
            decode(&[batch(3, &["a", "b"], Compression::None)], 5).map(|d| d.records.len()),
            Err(BatchError::EndsBelow {
                last_offset: 4,
                floor: 5
            })
        );
    }
}
