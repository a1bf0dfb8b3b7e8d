//! [`Producer`]: batches records per partition and sends the batches to the shards that own
//! the partitions, keeping each partition's records in the order they were sent.
//!
//! # How it works
//!
//! - **Enqueue** (synchronous, in `send`/`send_and_forget`): the record's partition is chosen
//!   (explicit, else the partitioner over the topic's partition count) and the record is
//!   encoded straight into that partition's open [`BatchBuilder`]. A batch closes when the
//!   next record would take it past `batch_size`, when it reaches `batch_size`, when it is
//!   `linger` old, or on `flush`. Records of topics whose partition count is not known yet,
//!   and records that find the buffer full, wait in one FIFO queue that the driver drains in
//!   call order, so a later record never overtakes an earlier one of its partition.
//! - **Driver** (one task per producer): drains the queue as memory frees up, closes
//!   lingering batches, and starts a request per partition while the partition has fewer
//!   than `in_flight_max` requests outstanding. A request carries every batch ready for the
//!   partition, oldest first, up to `request_bytes_max`, so the next request grows while the
//!   current ones are out: throughput follows the broker's latency instead of being capped
//!   by it.
//! - **Send tasks** build the batches (compressing them: the heavy CPU part, done off the
//!   enqueue path with a yield first) and send them on the client's connection to the owning
//!   shard. A partition's requests are written in order (`WriteOrder`), and the connection
//!   numbers them, so the broker appends them in that order however many are in flight
//!   (net/PROTOCOL.md, "Produce ordering").
//! - **Retries**: a request that fails retriably pauses its partition; once the partition's
//!   other requests have finished, the failed batches are resent, one request at a time,
//!   oldest first, before any later batch, after a backoff. The broker fails the requests in
//!   flight behind a failed one (`OutOfOrderSequence`, retriable) instead of appending them,
//!   so they are resent after it and order holds. A request of several batches that fails
//!   for good is split and each batch resent alone, so only the batch at fault fails. Only a
//!   request whose outcome is unknown (a timeout, a lost connection) may have been appended
//!   after all, so its resend may duplicate it and land after later ones, as in Kafka
//!   without idempotence.
//!
//! # Memory
//!
//! `buffer_bytes` bounds the encoded records the producer holds (open, closed and in-flight
//! batches plus the queue), exceeded by at most one record: `send_and_forget` refuses with
//! [`ProduceError::BufferFull`] and [`Producer::ready`] waits when the bound is reached.
//! `send` always accepts (its future waits); records sent without awaiting are held beyond
//! the bound.
//!
//! Cost per record: one size computation and one encode into the batch buffer; per batch: one
//! CRC pass, optional compression, one request. The driver's pass is linear in the partitions
//! the producer has written to, once per event (batch closed, acknowledged, timer).
//!
//! Shard-local (`!Send`); must not depend on storage internals.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{LocalBoxFuture, select};
use sluice_engine::TimestampMs;
use sluice_engine::batch::records::RecordParts;
use sluice_engine::batch::{BatchBuilder, Compression, HEADER_BYTES};
use sluice_engine::limits::BATCH_BYTES_MAX;
use sluice_engine::rt::{self, clock};
use sluice_engine::util::Notify;

use super::error::{ClientError, ProduceError};
use super::handle::{Acks, Client, Produced};
use super::partitioner::{DefaultPartitioner, Partitioner};
use super::pool::WriteOrder;
use crate::limits::{
    CLIENT_RETRIES_DEFAULT, CLIENT_RETRY_BACKOFF_MS_DEFAULT, CLIENT_RETRY_BACKOFF_MS_MAX_DEFAULT,
    PRODUCER_BATCH_BYTES_DEFAULT, PRODUCER_BUFFER_BYTES_DEFAULT,
    PRODUCER_IN_FLIGHT_PER_PARTITION_DEFAULT, PRODUCER_LINGER_MS_DEFAULT,
    PRODUCER_REQUEST_BYTES_DEFAULT,
};

/// How long a topic's partition count is trusted before it is looked up again (in the
/// background; records keep flowing with the old count meanwhile). Kafka's
/// `metadata.max.age.ms`.
const TOPIC_ROUTE_AGE_MAX: Duration = Duration::from_secs(300);

/// Producer settings.
#[derive(Clone)]
pub struct ProducerConfig {
    /// A batch closes once its records reach this many bytes (uncompressed).
    pub batch_size: usize,
    /// How long a batch waits for more records before it is sent.
    pub linger: Duration,
    /// Codec for every batch.
    pub compression: Compression,
    /// Acknowledgement level.
    pub acks: Acks,
    /// Chooses partitions for records without an explicit one.
    pub partitioner: Rc<dyn Partitioner>,
    /// Bytes of records the producer holds before it pushes back.
    pub buffer_bytes: usize,
    /// Produce requests outstanding per partition.
    pub in_flight_max: usize,
    /// Largest batch built; larger records fail at `send`. At most the engine's batch limit.
    pub request_bytes_max: usize,
    /// Resends of a batch that failed retriably.
    pub retries: u32,
    /// Wait before the first resend; doubles per resend up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    /// Longest wait before a resend.
    pub retry_backoff_max: Duration,
}

impl Default for ProducerConfig {
    fn default() -> ProducerConfig {
        ProducerConfig {
            batch_size: PRODUCER_BATCH_BYTES_DEFAULT,
            linger: Duration::from_millis(PRODUCER_LINGER_MS_DEFAULT),
            compression: Compression::None,
            acks: Acks::All,
            partitioner: Rc::new(DefaultPartitioner::new()),
            buffer_bytes: PRODUCER_BUFFER_BYTES_DEFAULT,
            in_flight_max: PRODUCER_IN_FLIGHT_PER_PARTITION_DEFAULT,
            request_bytes_max: PRODUCER_REQUEST_BYTES_DEFAULT,
            retries: CLIENT_RETRIES_DEFAULT,
            retry_backoff: Duration::from_millis(CLIENT_RETRY_BACKOFF_MS_DEFAULT),
            retry_backoff_max: Duration::from_millis(CLIENT_RETRY_BACKOFF_MS_MAX_DEFAULT),
        }
    }
}

impl std::fmt::Debug for ProducerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerConfig")
            .field("batch_size", &self.batch_size)
            .field("linger", &self.linger)
            .field("compression", &self.compression)
            .field("acks", &self.acks)
            .field("buffer_bytes", &self.buffer_bytes)
            .field("in_flight_max", &self.in_flight_max)
            .field("request_bytes_max", &self.request_bytes_max)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

impl ProducerConfig {
    fn validate(&self) -> Result<(), ClientError> {
        let invalid = |reason: String| Err(ClientError::InvalidConfig { reason });
        if self.request_bytes_max <= HEADER_BYTES || self.request_bytes_max > BATCH_BYTES_MAX {
            return invalid(format!(
                "request_bytes_max {} must be above {HEADER_BYTES} and at most {BATCH_BYTES_MAX}",
                self.request_bytes_max
            ));
        }
        if self.batch_size == 0 || self.batch_size > self.request_bytes_max {
            return invalid(format!(
                "batch_size {} must be positive and at most request_bytes_max {}",
                self.batch_size, self.request_bytes_max
            ));
        }
        if self.in_flight_max == 0 {
            return invalid("in_flight_max must be at least 1".to_owned());
        }
        if self.buffer_bytes == 0 {
            return invalid("buffer_bytes must be positive".to_owned());
        }
        if self.retry_backoff > self.retry_backoff_max {
            return invalid("retry_backoff exceeds retry_backoff_max".to_owned());
        }
        Ok(())
    }

    fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX);
        self.retry_backoff
            .saturating_mul(factor)
            .min(self.retry_backoff_max)
    }
}

/// A record to produce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerRecord {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition; `None` lets the partitioner choose.
    pub partition: Option<i32>,
    /// The key (`None`: null).
    pub key: Option<Bytes>,
    /// The value (`None`: null, a tombstone).
    pub value: Option<Bytes>,
    /// Headers: UTF-8 key, optional value.
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Create time; `None` stamps the time of `send`.
    pub timestamp: Option<TimestampMs>,
}

impl ProducerRecord {
    /// A record with a value and nothing else.
    pub fn new(topic: impl Into<Arc<str>>, value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            value: Some(value.into()),
            ..ProducerRecord::default()
        }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> ProducerRecord {
        self.key = Some(key.into());
        self
    }

    /// Sets the partition, overriding the partitioner.
    pub fn with_partition(mut self, partition: i32) -> ProducerRecord {
        self.partition = Some(partition);
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, key: impl Into<String>, value: Option<Bytes>) -> ProducerRecord {
        self.headers.push((key.into(), value));
        self
    }

    /// Sets the create time.
    pub fn with_timestamp(mut self, timestamp: TimestampMs) -> ProducerRecord {
        self.timestamp = Some(timestamp);
        self
    }
}

/// Where an acknowledged record landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The record's offset (-1 with acks=0).
    pub offset: i64,
    /// The record's timestamp: its create time, or the broker's append time when the topic
    /// stamps log-append time.
    pub timestamp: TimestampMs,
}

/// The producer's view of the cluster: a seam so the accumulator can be tested without a
/// broker. Implemented by [`Client`].
pub(crate) trait ProduceTransport {
    /// The partition count of `topic`.
    fn partition_count(&self, topic: Arc<str>)
    -> LocalBoxFuture<'static, Result<i32, ClientError>>;

    /// One produce attempt, written after the previous link of `order`.
    fn produce(
        &self,
        topic: Arc<str>,
        partition: i32,
        acks: Acks,
        batch: Bytes,
        order: WriteOrder,
    ) -> LocalBoxFuture<'static, Result<Produced, ClientError>>;

    /// Whether a failed attempt is worth resending (after refreshing what needs refreshing).
    fn worth_retrying(
        &self,
        topic: Arc<str>,
        partition: i32,
        error: Arc<ClientError>,
    ) -> LocalBoxFuture<'static, bool>;
}

impl ProduceTransport for Client {
    fn partition_count(
        &self,
        topic: Arc<str>,
    ) -> LocalBoxFuture<'static, Result<i32, ClientError>> {
        let client = self.clone();
        Box::pin(async move { client.partition_count(&topic).await })
    }

    fn produce(
        &self,
        topic: Arc<str>,
        partition: i32,
        acks: Acks,
        batch: Bytes,
        order: WriteOrder,
    ) -> LocalBoxFuture<'static, Result<Produced, ClientError>> {
        let client = self.clone();
        Box::pin(async move {
            client
                .produce_ordered(&topic, partition, acks, batch, order)
                .await
        })
    }

    fn worth_retrying(
        &self,
        topic: Arc<str>,
        partition: i32,
        error: Arc<ClientError>,
    ) -> LocalBoxFuture<'static, bool> {
        let client = self.clone();
        Box::pin(async move { client.worth_retrying(&topic, partition, &error).await })
    }
}

type Reply = oneshot::Sender<Result<RecordMetadata, ProduceError>>;

/// Who learns a record's fate.
enum Completion {
    /// `send`: the caller's future.
    Reply(Reply),
    /// `send_and_forget`: failures are counted and reported by `flush`.
    Forget,
}

/// A record not yet in a batch.
struct Queued {
    record: ProducerRecord,
    timestamp: TimestampMs,
    bytes: usize,
    completion: Completion,
    epoch: u64,
}

/// A record inside a batch: what is needed to answer for it.
struct Member {
    completion: Completion,
    timestamp: TimestampMs,
    epoch: u64,
}

struct OpenBatch {
    builder: BatchBuilder,
    members: Vec<Member>,
    /// Invariant: the sum of the members' accounted bytes.
    bytes: usize,
    opened: Instant,
    /// Flush epoch of the first member (the smallest: epochs only grow).
    first_epoch: u64,
}

enum Payload {
    Unbuilt(BatchBuilder),
    Built(Bytes),
    /// Taken by the send task that is building it.
    Taken,
}

struct ClosedBatch {
    /// Invariant: strictly increasing per partition in closing order.
    seq: u64,
    payload: Payload,
    members: Vec<Member>,
    bytes: usize,
    /// Attempts made so far.
    attempts: u32,
    /// Sent in a request of its own: set after a request of several batches failed for a
    /// reason retrying cannot fix, to find which batch it was.
    solo: bool,
}

#[derive(Default)]
struct PartitionQueue {
    open: Option<OpenBatch>,
    /// Invariant: sorted by `seq`.
    ready: VecDeque<ClosedBatch>,
    /// Requests outstanding (each carries one or more batches).
    in_flight: usize,
    /// Failed requests whose resend decision is pending; nothing is sent meanwhile.
    deciding: usize,
    next_seq: u64,
    /// While set, batches up to this seq are being resent one at a time.
    retry_through: Option<u64>,
    /// No send before this instant (retry backoff).
    retry_after: Option<Instant>,
    /// Write-order chain of this partition's requests.
    last_write: Option<oneshot::Receiver<()>>,
}

enum TopicRoute {
    LookingUp,
    Known {
        partitions: i32,
        looked_up: Instant,
        refreshing: bool,
    },
}

type PartitionKey = (Arc<str>, i32);

struct State {
    partitions: HashMap<PartitionKey, PartitionQueue>,
    topics: HashMap<Arc<str>, TopicRoute>,
    queue: VecDeque<Queued>,
    /// Invariant: the sum of `queue`'s bytes.
    queue_bytes: usize,
    /// Bytes of records in open, closed and in-flight batches.
    held_bytes: usize,
    /// The current flush epoch: records sent now belong to it.
    epoch: u64,
    /// Records not yet completed, by flush epoch.
    outstanding: BTreeMap<u64, u64>,
    /// Batches whose first record's epoch is at most this close at once.
    flush_through: Option<u64>,
    forgotten_failures: u64,
    first_forgotten_failure: Option<ProduceError>,
}

struct Shared {
    config: ProducerConfig,
    transport: Rc<dyn ProduceTransport>,
    state: RefCell<State>,
    /// Wakes the driver: work to do.
    work: Notify,
    /// Wakes `ready` and `flush` waiters: memory freed or records completed.
    progress: Notify,
}

/// Batches records and sends them to the owning shards; see the [module docs](self).
///
/// Shard-local (`!Send`). Dropping it fails the records it has not sent yet with
/// [`ProduceError::Closed`]; batches already in flight finish. Call [`flush`](Self::flush)
/// first to deliver everything.
pub struct Producer {
    shared: Rc<Shared>,
    _driver: rt::Task<()>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// A producer sending through `client`. Must be called on the client's executor.
    pub fn new(client: &Client, config: ProducerConfig) -> Result<Producer, ClientError> {
        Producer::with_transport(Rc::new(client.clone()), config)
    }

    pub(crate) fn with_transport(
        transport: Rc<dyn ProduceTransport>,
        config: ProducerConfig,
    ) -> Result<Producer, ClientError> {
        config.validate()?;
        let shared = Rc::new(Shared {
            config,
            transport,
            state: RefCell::new(State {
                partitions: HashMap::new(),
                topics: HashMap::new(),
                queue: VecDeque::new(),
                queue_bytes: 0,
                held_bytes: 0,
                epoch: 0,
                outstanding: BTreeMap::new(),
                flush_through: None,
                forgotten_failures: 0,
                first_forgotten_failure: None,
            }),
            work: Notify::new(),
            progress: Notify::new(),
        });
        let driver = rt::spawn(drive(Rc::clone(&shared)));
        Ok(Producer {
            shared,
            _driver: driver,
        })
    }

    /// Sends a record; the future resolves once the batch holding it is acknowledged (or
    /// failed for good).
    ///
    /// The record is taken now, in call order, whether or not the future is polled; dropping
    /// the future does not withdraw it. When the buffer is full the record waits in the
    /// producer's queue, beyond `buffer_bytes`.
    pub fn send(
        &self,
        record: ProducerRecord,
    ) -> impl Future<Output = Result<RecordMetadata, ProduceError>> + 'static {
        let (reply, answer) = oneshot::channel();
        let enqueued = self.enqueue(record, Completion::Reply(reply), Admission::Always);
        async move {
            enqueued?;
            answer.await.unwrap_or(Err(ProduceError::Closed))
        }
    }

    /// Enqueues a record without waiting for anything. Fails at once with
    /// [`ProduceError::BufferFull`] when the buffer is full (await [`ready`](Self::ready)
    /// first), or when the record cannot be produced at all; later failures are counted and
    /// reported by [`flush`](Self::flush).
    pub fn send_and_forget(&self, record: ProducerRecord) -> Result<(), ProduceError> {
        self.enqueue(record, Completion::Forget, Admission::IfRoom)
    }

    /// Waits until the buffer has room, so that the next `send_and_forget` is accepted.
    pub async fn ready(&self) {
        loop {
            let seen = self.shared.progress.version();
            {
                let state = self.shared.state.borrow();
                if state.held_bytes + state.queue_bytes < self.shared.config.buffer_bytes {
                    return;
                }
            }
            self.shared.progress.changed(seen).await;
        }
    }

    /// Sends every batch now, without lingering, and waits until every record sent before
    /// this call is acknowledged or failed. Returns the failures of `send_and_forget` records
    /// since the previous flush as [`ProduceError::Undelivered`].
    pub async fn flush(&self) -> Result<(), ProduceError> {
        let epoch = {
            let mut state = self.shared.state.borrow_mut();
            let epoch = state.epoch;
            state.epoch += 1;
            state.flush_through = Some(epoch);
            epoch
        };
        self.shared.work.notify();
        loop {
            let seen = self.shared.progress.version();
            if self
                .shared
                .state
                .borrow()
                .outstanding
                .range(..=epoch)
                .next()
                .is_none()
            {
                break;
            }
            self.shared.progress.changed(seen).await;
        }
        let mut state = self.shared.state.borrow_mut();
        let count = std::mem::take(&mut state.forgotten_failures);
        match state.first_forgotten_failure.take() {
            Some(first) => Err(ProduceError::Undelivered {
                count,
                first: Box::new(first),
            }),
            None => Ok(()),
        }
    }

    /// Bytes of records the producer holds now (queued, batched or in flight).
    pub fn buffered_bytes(&self) -> usize {
        let state = self.shared.state.borrow();
        state.held_bytes + state.queue_bytes
    }

    fn enqueue(
        &self,
        record: ProducerRecord,
        completion: Completion,
        admission: Admission,
    ) -> Result<(), ProduceError> {
        let shared = &self.shared;
        let config = &shared.config;
        let bytes = record_bytes(&record).ok_or(ProduceError::RecordTooLarge {
            bytes: usize::MAX,
            limit: config.request_bytes_max,
        })?;
        if bytes + HEADER_BYTES > config.request_bytes_max {
            return Err(ProduceError::RecordTooLarge {
                bytes,
                limit: config.request_bytes_max,
            });
        }
        let mut state = shared.state.borrow_mut();
        let total = state.held_bytes + state.queue_bytes;
        if admission == Admission::IfRoom && total >= config.buffer_bytes {
            return Err(ProduceError::BufferFull {
                limit: config.buffer_bytes,
            });
        }
        let timestamp = record.timestamp.unwrap_or_else(clock::unix_now_ms);
        let epoch = state.epoch;
        let queued = Queued {
            record,
            timestamp,
            bytes,
            completion,
            epoch,
        };
        let fast = state.queue.is_empty() && state.held_bytes < config.buffer_bytes;
        let mut refresh = false;
        let partitions = match state.topics.get_mut(&queued.record.topic) {
            Some(TopicRoute::Known {
                partitions,
                looked_up,
                refreshing,
            }) if fast => {
                if !*refreshing && clock::now().duration_since(*looked_up) > TOPIC_ROUTE_AGE_MAX {
                    *refreshing = true;
                    refresh = true;
                }
                Some(*partitions)
            }
            _ => None,
        };
        match partitions {
            Some(partitions) => {
                // Synchronous failures (a bad explicit partition) go back to the caller.
                let partition = choose_partition(config, &queued.record, partitions)
                    .map_err(|error| route_error(&queued.record.topic, error))?;
                *state.outstanding.entry(epoch).or_default() += 1;
                let topic = Arc::clone(&queued.record.topic);
                let woke = append(shared, &mut state, queued, partition);
                drop(state);
                if refresh {
                    // In the background: records keep using the count known so far.
                    rt::spawn(look_up(Rc::clone(shared), topic)).detach();
                }
                if woke {
                    shared.work.notify();
                }
            }
            None => {
                *state.outstanding.entry(epoch).or_default() += 1;
                state.queue_bytes += queued.bytes;
                state.queue.push_back(queued);
                drop(state);
                shared.work.notify();
            }
        }
        Ok(())
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        // Fail what was never sent; the completions' futures resolve with `Closed`.
        let mut state = self.shared.state.borrow_mut();
        state.queue.clear();
        state.queue_bytes = 0;
        for queue in state.partitions.values_mut() {
            queue.open = None;
            queue.ready.clear();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Admission {
    Always,
    IfRoom,
}

/// Bytes a record takes in a batch (with zero deltas; within a few bytes of the truth), or
/// `None` when a field is too long for a record.
fn record_bytes(record: &ProducerRecord) -> Option<usize> {
    let headers: Vec<(&str, Option<&[u8]>)> = record
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref()))
        .collect();
    RecordParts {
        offset_delta: 0,
        timestamp_delta: 0,
        key: record.key.as_deref(),
        value: record.value.as_deref(),
        headers: &headers,
    }
    .encoded_bytes()
}

fn choose_partition(
    config: &ProducerConfig,
    record: &ProducerRecord,
    partitions: i32,
) -> Result<i32, ClientError> {
    match record.partition {
        Some(partition) if (0..partitions).contains(&partition) => Ok(partition),
        Some(partition) => Err(ClientError::UnknownPartition {
            topic: record.topic.to_string(),
            partition,
            partitions,
        }),
        None => Ok(config
            .partitioner
            .partition(record.key.as_deref(), partitions)),
    }
}

fn route_error(topic: &Arc<str>, error: ClientError) -> ProduceError {
    ProduceError::Route {
        topic: Arc::clone(topic),
        source: Arc::new(error),
    }
}

/// Appends a routed record to its partition's open batch, closing batches as they fill.
/// Returns true when the driver has new work (a batch closed or a new batch to time).
fn append(shared: &Shared, state: &mut State, queued: Queued, partition: i32) -> bool {
    let config = &shared.config;
    let Queued {
        record,
        timestamp,
        bytes,
        completion,
        epoch,
    } = queued;
    let headers: Vec<(&str, Option<&[u8]>)> = record
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref()))
        .collect();
    let mut work = false;
    // One lookup per record: the queue and the topic routes are separate fields of `state`.
    let queue = state
        .partitions
        .entry((Arc::clone(&record.topic), partition))
        .or_default();
    if let Some(open) = &queue.open
        && open.builder.uncompressed_bytes() + bytes > config.batch_size
    {
        close_open(queue);
        note_batch_closed(shared, &state.topics, &record.topic, partition);
        work = true;
    }
    let open = queue.open.get_or_insert_with(|| {
        work = true;
        OpenBatch {
            builder: BatchBuilder::with_capacity(BATCH_BYTES_MAX, config.batch_size),
            members: Vec::new(),
            bytes: 0,
            opened: clock::now(),
            first_epoch: epoch,
        }
    });
    let pushed = open.builder.push(
        record.key.as_deref(),
        record.value.as_deref(),
        &headers,
        timestamp,
    );
    if let Err(error) = pushed {
        // Cannot happen for a record that passed the size check; answer for it all the same.
        if queue.open.as_ref().is_some_and(|o| o.members.is_empty()) {
            queue.open = None;
        }
        let failure = ProduceError::Build {
            topic: Arc::clone(&record.topic),
            partition,
            source: error,
        };
        complete(state, completion, epoch, Err(failure));
        return work;
    }
    open.members.push(Member {
        completion,
        timestamp,
        epoch,
    });
    open.bytes += bytes;
    if open.builder.uncompressed_bytes() >= config.batch_size {
        close_open(queue);
        note_batch_closed(shared, &state.topics, &record.topic, partition);
        work = true;
    }
    state.held_bytes += bytes;
    work
}

/// Moves the open batch, if any, to the ready queue.
fn close_open(queue: &mut PartitionQueue) {
    let Some(open) = queue.open.take() else {
        return;
    };
    assert!(!open.members.is_empty(), "an open batch has a record");
    let seq = queue.next_seq;
    queue.next_seq += 1;
    assert!(
        queue.ready.back().is_none_or(|last| last.seq < seq),
        "batch sequence numbers increase"
    );
    queue.ready.push_back(ClosedBatch {
        seq,
        payload: Payload::Unbuilt(open.builder),
        members: open.members,
        bytes: open.bytes,
        attempts: 0,
        solo: false,
    });
}

fn note_batch_closed(
    shared: &Shared,
    topics: &HashMap<Arc<str>, TopicRoute>,
    topic: &Arc<str>,
    partition: i32,
) {
    if let Some(TopicRoute::Known { partitions, .. }) = topics.get(topic) {
        shared
            .config
            .partitioner
            .on_batch_sent(partition, *partitions);
    }
}

/// Answers for one record and counts it done.
fn complete(
    state: &mut State,
    completion: Completion,
    epoch: u64,
    result: Result<RecordMetadata, ProduceError>,
) {
    match completion {
        Completion::Reply(reply) => {
            // The caller may have dropped its future; the record was handled all the same.
            let _ = reply.send(result);
        }
        Completion::Forget => {
            if let Err(error) = result {
                state.forgotten_failures += 1;
                state.first_forgotten_failure.get_or_insert(error);
            }
        }
    }
    let remaining = state
        .outstanding
        .get_mut(&epoch)
        .expect("every record is counted in its epoch");
    assert!(
        *remaining > 0,
        "epoch {epoch} completed more records than sent"
    );
    *remaining -= 1;
    if *remaining == 0 {
        state.outstanding.remove(&epoch);
    }
}

/// The driver: runs for the life of the producer (cancelled when it is dropped).
async fn drive(shared: Rc<Shared>) {
    loop {
        let seen = shared.work.version();
        let deadline = step(&shared);
        match deadline {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(clock::now());
                let changed = shared.work.changed(seen);
                let timer = rt::sleep(wait);
                futures::pin_mut!(changed, timer);
                let _ = select(changed, timer).await;
            }
            None => shared.work.changed(seen).await,
        }
    }
}

/// One pass of the driver: drain the queue, close lingering batches, start sends. Returns
/// the next instant a timer must wake it (a linger or a backoff ending).
fn step(shared: &Rc<Shared>) -> Option<Instant> {
    let config = &shared.config;
    let now = clock::now();
    let mut state = shared.state.borrow_mut();
    let lookups = drain_queue(shared, &mut state, now);
    let flush_through = state.flush_through;
    let mut deadline: Option<Instant> = None;
    let mut earliest = |at: Instant| {
        deadline = Some(deadline.map_or(at, |d| d.min(at)));
    };
    let mut closed = Vec::new();
    let mut sends = Vec::new();
    for (key, queue) in state.partitions.iter_mut() {
        if let Some(open) = &queue.open {
            let flushing = flush_through.is_some_and(|through| open.first_epoch <= through);
            let linger_end = open.opened + config.linger;
            if flushing || linger_end <= now {
                close_open(queue);
                closed.push(key.clone());
            } else {
                earliest(linger_end);
            }
        }
        if let Some(after) = queue.retry_after {
            if after > now {
                earliest(after);
                continue;
            }
            queue.retry_after = None;
        }
        while let Some(batches) = next_to_send(config, queue) {
            let order = WriteOrder::chain(&mut queue.last_write);
            queue.in_flight += 1;
            sends.push((key.clone(), batches, order));
        }
    }
    for (topic, partition) in &closed {
        note_batch_closed(shared, &state.topics, topic, *partition);
    }
    drop(state);
    // Spawned only now: the runtime may start running a task as it is spawned, and it must
    // find the state free.
    for topic in lookups {
        rt::spawn(look_up(Rc::clone(shared), topic)).detach();
    }
    for ((topic, partition), batches, order) in sends {
        rt::spawn(send_request(
            Rc::clone(shared),
            topic,
            partition,
            batches,
            order,
        ))
        .detach();
    }
    deadline
}

/// The next request a partition may send now: its oldest ready batch and, unless a batch
/// must go alone, the ready batches behind it up to `request_bytes_max`, taken off the ready
/// queue in order.
fn next_to_send(config: &ProducerConfig, queue: &mut PartitionQueue) -> Option<Vec<ClosedBatch>> {
    let front = queue.ready.front()?;
    if queue.deciding > 0 {
        return None;
    }
    let limit = match queue.retry_through {
        // Resending: one request at a time, once everything sent before has finished. The
        // mode ends when the last failed batch is done (`end_retry_mode`).
        Some(through) => {
            assert!(
                front.seq <= through || queue.in_flight > 0,
                "retry mode outlived its last failed batch"
            );
            1
        }
        None => config.in_flight_max,
    };
    if queue.in_flight >= limit {
        return None;
    }
    // Sizes before compression, headers included: an upper bound on what is sent.
    let cost = |batch: &ClosedBatch| HEADER_BYTES + batch.bytes;
    let first = queue.ready.pop_front().expect("front exists");
    let mut bytes = cost(&first);
    let solo = first.solo;
    let mut request = vec![first];
    while let Some(next) = queue.ready.front() {
        if solo || next.solo || bytes + cost(next) > config.request_bytes_max {
            break;
        }
        bytes += cost(next);
        request.push(queue.ready.pop_front().expect("front exists"));
    }
    Some(request)
}

/// Moves queued records into batches, in order, while memory allows and their topics'
/// partition counts are known; returns the topics to look up.
fn drain_queue(shared: &Rc<Shared>, state: &mut State, now: Instant) -> Vec<Arc<str>> {
    let config = &shared.config;
    let mut lookups = Vec::new();
    while let Some(front) = state.queue.front() {
        if state.held_bytes >= config.buffer_bytes {
            break;
        }
        let topic = Arc::clone(&front.record.topic);
        let partitions = match state.topics.get_mut(&topic) {
            Some(TopicRoute::Known {
                partitions,
                looked_up,
                refreshing,
            }) => {
                if !*refreshing && now.duration_since(*looked_up) > TOPIC_ROUTE_AGE_MAX {
                    *refreshing = true;
                    lookups.push(Arc::clone(&topic));
                }
                *partitions
            }
            Some(TopicRoute::LookingUp) => break,
            None => {
                state
                    .topics
                    .insert(Arc::clone(&topic), TopicRoute::LookingUp);
                lookups.push(topic);
                break;
            }
        };
        let queued = state.queue.pop_front().expect("front exists");
        state.queue_bytes -= queued.bytes;
        match choose_partition(config, &queued.record, partitions) {
            Ok(partition) => {
                append(shared, state, queued, partition);
            }
            Err(error) => {
                let failure = route_error(&queued.record.topic, error);
                complete(state, queued.completion, queued.epoch, Err(failure));
            }
        }
    }
    if state.queue.is_empty() || state.held_bytes < config.buffer_bytes {
        shared.progress.notify();
    }
    lookups
}

/// Learns a topic's partition count; on failure fails the queued records of that topic.
async fn look_up(shared: Rc<Shared>, topic: Arc<str>) {
    let result = shared.transport.partition_count(Arc::clone(&topic)).await;
    {
        let mut state = shared.state.borrow_mut();
        let state = &mut *state;
        match result {
            Ok(partitions) => {
                state.topics.insert(
                    Arc::clone(&topic),
                    TopicRoute::Known {
                        partitions,
                        looked_up: clock::now(),
                        refreshing: false,
                    },
                );
            }
            Err(error) => match state.topics.get_mut(&topic) {
                // A background refresh failed: keep using what is known.
                Some(TopicRoute::Known { refreshing, .. }) => {
                    *refreshing = false;
                    tracing::debug!(%topic, %error, "topic metadata refresh failed");
                }
                _ => {
                    state.topics.remove(&topic);
                    let failure = route_error(&topic, error);
                    let queue = std::mem::take(&mut state.queue);
                    for queued in queue {
                        if queued.record.topic == topic {
                            state.queue_bytes -= queued.bytes;
                            complete(state, queued.completion, queued.epoch, Err(failure.clone()));
                        } else {
                            state.queue.push_back(queued);
                        }
                    }
                }
            },
        }
    }
    shared.work.notify();
    shared.progress.notify();
}

/// Builds the batches not built yet, sends them as one request, then answers for their
/// records or requeues them.
async fn send_request(
    shared: Rc<Shared>,
    topic: Arc<str>,
    partition: i32,
    batches: Vec<ClosedBatch>,
    order: WriteOrder,
) {
    let config = &shared.config;
    assert!(
        !batches.is_empty(),
        "{topic}-{partition}: a request without batches"
    );
    let requested_through = batches.last().expect("not empty").seq;
    let mut built = Vec::with_capacity(batches.len());
    for mut batch in batches {
        match build_payload(config, &mut batch).await {
            Ok(()) => built.push(batch),
            Err(source) => {
                let failure = ProduceError::Build {
                    topic: Arc::clone(&topic),
                    partition,
                    source,
                };
                answer_batches(&shared, &topic, partition, vec![batch], &Err(failure));
            }
        }
    }
    let Some(last_seq) = built.last().map(|b| b.seq) else {
        with_queue(&shared, &topic, partition, |queue| {
            queue.in_flight -= 1;
            end_retry_mode(queue, requested_through);
        });
        shared.work.notify();
        return;
    };
    let payload = request_payload(&built);
    for batch in &mut built {
        batch.attempts += 1;
    }
    let result = shared
        .transport
        .produce(Arc::clone(&topic), partition, config.acks, payload, order)
        .await;
    let error = match result {
        Ok(produced) => {
            with_queue(&shared, &topic, partition, |queue| {
                queue.in_flight -= 1;
                end_retry_mode(queue, last_seq);
            });
            answer_batches(&shared, &topic, partition, built, &Ok(produced));
            return;
        }
        Err(error) => Arc::new(error),
    };
    // Pause the partition while deciding, so no later batch is sent ahead of these.
    with_queue(&shared, &topic, partition, |queue| {
        queue.in_flight -= 1;
        queue.deciding += 1;
    });
    let attempts = built.iter().map(|b| b.attempts).max().expect("not empty");
    let retry = attempts <= config.retries
        && shared
            .transport
            .worth_retrying(Arc::clone(&topic), partition, Arc::clone(&error))
            .await;
    with_queue(&shared, &topic, partition, |queue| queue.deciding -= 1);
    if retry || built.len() > 1 {
        // A request of several batches that cannot succeed as a whole is split: each batch
        // is resent alone, so only the batch at fault fails.
        let split = !retry;
        tracing::debug!(%topic, partition, %error, attempts, split, "resending");
        let backoff_until = clock::now() + config.backoff(attempts - 1);
        with_queue(&shared, &topic, partition, |queue| {
            queue.retry_through = Some(queue.retry_through.map_or(last_seq, |s| s.max(last_seq)));
            if retry {
                let after = queue
                    .retry_after
                    .map_or(backoff_until, |t| t.max(backoff_until));
                queue.retry_after = Some(after);
            }
            for mut batch in built.into_iter().rev() {
                batch.solo |= split;
                let at = queue.ready.partition_point(|b| b.seq < batch.seq);
                queue.ready.insert(at, batch);
            }
        });
        shared.work.notify();
        shared.progress.notify();
        return;
    }
    with_queue(&shared, &topic, partition, |queue| {
        end_retry_mode(queue, last_seq)
    });
    let failure = ProduceError::Send {
        topic: Arc::clone(&topic),
        partition,
        source: error,
    };
    answer_batches(&shared, &topic, partition, built, &Err(failure));
}

/// Builds a batch's payload if it is not built yet (compressing it: the heavy part, so the
/// shard's other work runs first).
async fn build_payload(
    config: &ProducerConfig,
    batch: &mut ClosedBatch,
) -> Result<(), sluice_engine::batch::BuildError> {
    match std::mem::replace(&mut batch.payload, Payload::Taken) {
        Payload::Unbuilt(builder) => {
            rt::yield_if_needed().await;
            batch.payload = Payload::Built(builder.build(config.compression)?);
        }
        built => batch.payload = built,
    }
    Ok(())
}

/// The request payload: the built batches back to back (one copy when there are several).
fn request_payload(batches: &[ClosedBatch]) -> Bytes {
    let built = |batch: &ClosedBatch| match &batch.payload {
        Payload::Built(bytes) => bytes.clone(),
        _ => panic!("batch {} sent before it was built", batch.seq),
    };
    if let [only] = batches {
        return built(only);
    }
    let total = batches.iter().map(|b| built(b).len()).sum();
    let mut payload = bytes::BytesMut::with_capacity(total);
    for batch in batches {
        payload.extend_from_slice(&built(batch));
    }
    payload.freeze()
}

/// Ends retry mode once the batch with seq `done` finished and no batch it covers waits.
fn end_retry_mode(queue: &mut PartitionQueue, done: u64) {
    if let Some(through) = queue.retry_through
        && done >= through
        && queue.ready.front().is_none_or(|next| next.seq > through)
    {
        queue.retry_through = None;
    }
}

fn with_queue<T>(
    shared: &Shared,
    topic: &Arc<str>,
    partition: i32,
    f: impl FnOnce(&mut PartitionQueue) -> T,
) -> T {
    let mut state = shared.state.borrow_mut();
    let queue = state
        .partitions
        .get_mut(&(Arc::clone(topic), partition))
        .expect("a partition with a batch in flight has a queue");
    f(queue)
}

/// Answers for every record of batches that are done (acknowledged together, or failed for
/// good) and releases their memory. Acknowledged batches were appended back to back, so
/// their records hold consecutive offsets from `base_offset`.
fn answer_batches(
    shared: &Shared,
    topic: &Arc<str>,
    partition: i32,
    batches: Vec<ClosedBatch>,
    result: &Result<Produced, ProduceError>,
) {
    {
        let mut state = shared.state.borrow_mut();
        let state = &mut *state;
        let mut index: i64 = 0;
        for batch in batches {
            assert!(
                state.held_bytes >= batch.bytes,
                "{topic}-{partition}: released more bytes than held"
            );
            state.held_bytes -= batch.bytes;
            for member in batch.members {
                let answer = match result {
                    Ok(produced) => {
                        let offset = if produced.base_offset >= 0 {
                            produced.base_offset + index
                        } else {
                            -1
                        };
                        let timestamp = if produced.log_append_time >= 0 {
                            TimestampMs(produced.log_append_time)
                        } else {
                            member.timestamp
                        };
                        Ok(RecordMetadata {
                            topic: Arc::clone(topic),
                            partition,
                            offset,
                            timestamp,
                        })
                    }
                    Err(error) => Err(error.clone()),
                };
                index += 1;
                complete(state, member.completion, member.epoch, answer);
            }
        }
        if let Ok(produced) = result
            && produced.base_offset >= 0
            && produced.last_offset != produced.base_offset + index - 1
        {
            tracing::warn!(
                %topic,
                partition,
                sent = index,
                base_offset = produced.base_offset,
                last_offset = produced.last_offset,
                "the broker acknowledged another record count; reported offsets may be wrong"
            );
        }
    }
    shared.work.notify();
    shared.progress.notify();
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use futures::future::{Either, join_all};
    use sluice_engine::batch::decode_batch;

    use super::*;
    use crate::native::messages::ErrorCode;

    /// Far beyond what any test here needs; only a hang reaches it.
    const TEST_DEADLINE: Duration = Duration::from_secs(60);

    fn run<T>(future: impl Future<Output = T>) -> T {
        rt::block_on(async move {
            let deadline = rt::sleep(TEST_DEADLINE);
            futures::pin_mut!(future, deadline);
            match select(future, deadline).await {
                Either::Left((output, _)) => output,
                Either::Right(_) => panic!("test did not finish within {TEST_DEADLINE:?}"),
            }
        })
    }

    /// A produce request the fake holds until the test answers it.
    struct Held {
        partition: i32,
        values: Vec<String>,
        answer: oneshot::Sender<Result<(), ClientError>>,
    }

    /// An in-memory broker for one topic `t`: appends each batch's values to the partition's
    /// log and answers with offsets. Gated, it holds each request until the test answers.
    struct Fake {
        partitions: i32,
        gated: bool,
        /// Values per partition in append order.
        log: RefCell<HashMap<i32, Vec<String>>>,
        /// Requests in the order they were written (after their write-order turn): the
        /// partition and the values of each batch.
        written: RefCell<Vec<(i32, Vec<Vec<String>>)>>,
        held: RefCell<VecDeque<Held>>,
        /// Errors for the next requests, in order, before any is appended.
        script: RefCell<VecDeque<ClientError>>,
        lookups: Cell<u32>,
        changed: Notify,
    }

    #[derive(Clone)]
    struct FakeTransport(Rc<Fake>);

    fn fake(partitions: i32, gated: bool) -> FakeTransport {
        FakeTransport(Rc::new(Fake {
            partitions,
            gated,
            log: RefCell::new(HashMap::new()),
            written: RefCell::new(Vec::new()),
            held: RefCell::new(VecDeque::new()),
            script: RefCell::new(VecDeque::new()),
            lookups: Cell::new(0),
            changed: Notify::new(),
        }))
    }

    /// The values of each batch in a request payload.
    fn batch_values(payload: &Bytes) -> Vec<Vec<String>> {
        let mut batches = Vec::new();
        let mut at = 0;
        while at < payload.len() {
            let rest = payload.slice(at..);
            let decoder =
                decode_batch(&rest, BATCH_BYTES_MAX).expect("the producer builds valid batches");
            at += decoder.header().total_bytes();
            let values = decoder
                .map(|r| {
                    let value = r.expect("record decodes").value.expect("value");
                    String::from_utf8(value.to_vec()).expect("utf8")
                })
                .collect();
            batches.push(values);
        }
        batches
    }

    impl ProduceTransport for FakeTransport {
        fn partition_count(
            &self,
            topic: Arc<str>,
        ) -> LocalBoxFuture<'static, Result<i32, ClientError>> {
            let fake = Rc::clone(&self.0);
            Box::pin(async move {
                fake.lookups.set(fake.lookups.get() + 1);
                if &*topic == "t" {
                    Ok(fake.partitions)
                } else {
                    Err(ClientError::UnknownTopic {
                        topic: topic.to_string(),
                    })
                }
            })
        }

        fn produce(
            &self,
            _topic: Arc<str>,
            partition: i32,
            _acks: Acks,
            batch: Bytes,
            mut order: WriteOrder,
        ) -> LocalBoxFuture<'static, Result<Produced, ClientError>> {
            let fake = Rc::clone(&self.0);
            Box::pin(async move {
                order.wait_turn().await;
                let batches = batch_values(&batch);
                let values: Vec<String> = batches.iter().flatten().cloned().collect();
                fake.written.borrow_mut().push((partition, batches));
                order.written();
                fake.changed.notify();
                // Interleave with other tasks, as a network would.
                rt::yield_if_needed().await;
                let scripted = fake.script.borrow_mut().pop_front();
                if let Some(error) = scripted {
                    return Err(error);
                }
                if fake.gated {
                    let (answer, answered) = oneshot::channel();
                    fake.held.borrow_mut().push_back(Held {
                        partition,
                        values: values.clone(),
                        answer,
                    });
                    fake.changed.notify();
                    answered.await.expect("the test answers every request")?;
                }
                let mut log = fake.log.borrow_mut();
                let entries = log.entry(partition).or_default();
                let base_offset = entries.len() as i64;
                entries.extend(values.iter().cloned());
                drop(log);
                fake.changed.notify();
                Ok(Produced {
                    base_offset,
                    last_offset: base_offset + values.len() as i64 - 1,
                    log_append_time: -1,
                })
            })
        }

        fn worth_retrying(
            &self,
            _topic: Arc<str>,
            _partition: i32,
            error: Arc<ClientError>,
        ) -> LocalBoxFuture<'static, bool> {
            Box::pin(async move { error.is_retriable() })
        }
    }

    impl FakeTransport {
        /// Waits until `condition` holds on the fake.
        async fn until(&self, what: &str, condition: impl Fn(&Fake) -> bool) {
            loop {
                let seen = self.0.changed.version();
                if condition(&self.0) {
                    return;
                }
                let changed = self.0.changed.changed(seen);
                let timer = rt::sleep(TEST_DEADLINE / 2);
                futures::pin_mut!(changed, timer);
                if let Either::Right(_) = select(changed, timer).await {
                    panic!("waited too long for {what}");
                }
            }
        }

        fn log(&self, partition: i32) -> Vec<String> {
            self.0
                .log
                .borrow()
                .get(&partition)
                .cloned()
                .unwrap_or_default()
        }

        /// Each written request's batches (the values of each).
        fn written(&self) -> Vec<Vec<Vec<String>>> {
            self.0
                .written
                .borrow()
                .iter()
                .map(|(_, batches)| batches.clone())
                .collect()
        }

        /// Every written value, in write order.
        fn written_values(&self) -> Vec<String> {
            self.written().into_iter().flatten().flatten().collect()
        }

        /// Record counts of every written batch, in write order.
        fn batch_sizes(&self) -> Vec<usize> {
            self.written()
                .into_iter()
                .flatten()
                .map(|b| b.len())
                .collect()
        }

        fn answer_next(&self, result: Result<(), ClientError>) -> Held {
            let held = self
                .0
                .held
                .borrow_mut()
                .pop_front()
                .expect("a held request");
            let values = held.values.clone();
            let partition = held.partition;
            let _ = held.answer.send(result);
            let (answer, _) = oneshot::channel();
            Held {
                partition,
                values,
                answer,
            }
        }
    }

    fn producer(transport: &FakeTransport, config: ProducerConfig) -> Producer {
        Producer::with_transport(Rc::new(transport.clone()), config).expect("valid config")
    }

    fn record(partition: i32, value: impl Into<String>) -> ProducerRecord {
        ProducerRecord::new("t", value.into())
            .with_partition(partition)
            .with_timestamp(TimestampMs(1_000))
    }

    /// Encoded size of `record(0, value)`: every test value has the same length.
    fn size_of(value: &str) -> usize {
        record_bytes(&record(0, value)).expect("small record")
    }

    fn not_retriable() -> ClientError {
        ClientError::Server {
            code: ErrorCode::MessageTooLarge,
            message: "batch too large for the topic".into(),
        }
    }

    fn retriable() -> ClientError {
        ClientError::Server {
            code: ErrorCode::NotOwner,
            message: "partition moved".into(),
        }
    }

    // Goal: batches close by size and are sent at once, a partial batch waits for linger or
    // flush, and every record gets its own offset in send order.
    // Method: linger of an hour and a batch size of exactly ten records; send 25 records to
    // one partition; two batches of ten must arrive without any flush, the last five only
    // when flushed.
    #[test]
    fn batches_close_by_size_and_flush() {
        run(async {
            let transport = fake(1, false);
            let config = ProducerConfig {
                batch_size: HEADER_BYTES + 10 * size_of("v00"),
                linger: Duration::from_secs(3600),
                ..ProducerConfig::default()
            };
            let producer = producer(&transport, config);
            let acks: Vec<_> = (0..25)
                .map(|i| producer.send(record(0, format!("v{i:02}"))))
                .collect();
            transport
                .until("two appended batches", |f| {
                    f.log.borrow().get(&0).is_some_and(|l| l.len() == 20)
                })
                .await;
            assert_eq!(
                transport.batch_sizes(),
                vec![10, 10],
                "the partial batch lingers"
            );
            producer.flush().await.expect("flushed");
            assert_eq!(transport.batch_sizes(), vec![10, 10, 5]);
            let offsets: Vec<i64> = join_all(acks)
                .await
                .into_iter()
                .map(|ack| ack.expect("acknowledged").offset)
                .collect();
            assert_eq!(offsets, (0..25).collect::<Vec<i64>>());
            let expected: Vec<String> = (0..25).map(|i| format!("v{i:02}")).collect();
            assert_eq!(transport.log(0), expected);
        });
    }

    // Goal: a partial batch is sent once it has lingered, without flush.
    // Method: one record with a 1 ms linger; its future must resolve on its own.
    #[test]
    fn linger_sends_partial_batches() {
        run(async {
            let transport = fake(1, false);
            let config = ProducerConfig {
                linger: Duration::from_millis(1),
                ..ProducerConfig::default()
            };
            let producer = producer(&transport, config);
            let metadata = producer.send(record(0, "alone")).await.expect("acked");
            assert_eq!(metadata.offset, 0);
            assert_eq!(metadata.timestamp, TimestampMs(1_000));
            assert_eq!(&*metadata.topic, "t");
            assert_eq!(transport.log(0), vec!["alone".to_owned()]);
        });
    }

    // Goal: records keep their call order per partition across many partitions, batches and
    // concurrent requests, with keyed records routed by the partitioner, and records sent
    // before the topic's metadata is known wait without being reordered.
    // Method: 2000 keyed records over 4 partitions with tiny batches and 5 requests in flight
    // per partition; compare each partition's log with the sends routed to it.
    #[test]
    fn per_partition_order_with_pipelining() {
        run(async {
            let transport = fake(4, false);
            let config = ProducerConfig {
                batch_size: HEADER_BYTES + 3 * size_of("k0000"),
                linger: Duration::from_millis(1),
                in_flight_max: 5,
                ..ProducerConfig::default()
            };
            let producer = producer(&transport, config);
            let mut expected: HashMap<i32, Vec<String>> = HashMap::new();
            let mut acks = Vec::new();
            for i in 0..2000 {
                let key = format!("k{:04}", i % 37);
                let partition = DefaultPartitioner::new().partition(Some(key.as_bytes()), 4);
                let value = format!("{i:05}");
                expected.entry(partition).or_default().push(value.clone());
                let record = ProducerRecord::new("t", value).with_key(key);
                acks.push((partition, producer.send(record)));
            }
            producer.flush().await.expect("flushed");
            for (partition, ack) in acks {
                let metadata = ack.await.expect("acknowledged");
                assert_eq!(metadata.partition, partition);
                let log = transport.log(partition);
                let value = &log[usize::try_from(metadata.offset).expect("offset")];
                assert!(value.len() == 5, "{value}");
            }
            for (partition, values) in expected {
                assert_eq!(transport.log(partition), values, "partition {partition}");
            }
            assert_eq!(transport.0.lookups.get(), 1, "one metadata lookup");
        });
    }

    // Goal: a batch that fails retriably is resent before any batch behind it that was not
    // yet sent, and the records behind it keep their order.
    // Method: a gated fake holds requests; with two in flight, fail the first retriably;
    // records sent meanwhile must not be written before the resent batch is acknowledged.
    #[test]
    fn retry_keeps_later_batches_behind() {
        run(async {
            let transport = fake(1, true);
            let config = ProducerConfig {
                batch_size: HEADER_BYTES + size_of("a"),
                // One batch per request, to see each batch's fate.
                request_bytes_max: HEADER_BYTES + size_of("a"),
                linger: Duration::from_secs(3600),
                in_flight_max: 2,
                retry_backoff: Duration::from_millis(1),
                retry_backoff_max: Duration::from_millis(1),
                ..ProducerConfig::default()
            };
            let producer = producer(&transport, config);
            let a = producer.send(record(0, "a"));
            let b = producer.send(record(0, "b"));
            transport
                .until("a and b held", |f| f.held.borrow().len() == 2)
                .await;
            let c = producer.send(record(0, "c"));
            transport.answer_next(Err(retriable()));
            transport.answer_next(Ok(()));
            // a is resent alone: c waits behind it although a slot is free.
            transport
                .until("a resent", |f| f.held.borrow().len() == 1)
                .await;
            assert_eq!(transport.written_values(), vec!["a", "b", "a"]);
            transport.answer_next(Ok(()));
            transport
                .until("c held", |f| f.held.borrow().len() == 1)
                .await;
            transport.answer_next(Ok(()));
            assert_eq!(b.await.expect("b").offset, 0);
            assert_eq!(a.await.expect("a").offset, 1);
            assert_eq!(c.await.expect("c").offset, 2);
            assert_eq!(transport.log(0), vec!["b", "a", "c"]);
        });
    }

    // Goal: the buffer bound holds: send_and_forget refuses when full, ready waits until
    // memory is freed, and send still accepts (queued in order behind the buffer).
    // Method: a gated fake and a buffer of three records; fill it, check the refusal, queue
    // one more with send, then answer requests one by one.
    #[test]
    fn backpressure_bounds_memory() {
        run(async {
            let transport = fake(1, true);
            let one = size_of("r0");
            let config = ProducerConfig {
                batch_size: HEADER_BYTES + one,
                request_bytes_max: HEADER_BYTES + one,
                linger: Duration::from_secs(3600),
                in_flight_max: 5,
                buffer_bytes: 3 * one,
                ..ProducerConfig::default()
            };
            let producer = producer(&transport, config);
            for i in 0..3 {
                producer.ready().await;
                producer
                    .send_and_forget(record(0, format!("r{i}")))
                    .expect("room");
            }
            assert!(matches!(
                producer.send_and_forget(record(0, "r9")),
                Err(ProduceError::BufferFull { .. })
            ));
            assert_eq!(producer.buffered_bytes(), 3 * one);
            let queued = producer.send(record(0, "r3"));
            assert_eq!(producer.buffered_bytes(), 4 * one);
            transport
                .until("three held", |f| f.held.borrow().len() == 3)
                .await;
            {
                let ready = producer.ready();
                futures::pin_mut!(ready);
                assert!(
                    futures::poll!(ready.as_mut()).is_pending(),
                    "no room while four records are held"
                );
                transport.answer_next(Ok(()));
                transport.answer_next(Ok(()));
                ready.await;
            }
            transport
                .until("r3 held", |f| f.held.borrow().len() == 2)
                .await;
            transport.answer_next(Ok(()));
            transport.answer_next(Ok(()));
            assert_eq!(queued.await.expect("r3").offset, 3);
            producer.flush().await.expect("nothing failed");
            assert_eq!(transport.log(0), vec!["r0", "r1", "r2", "r3"]);
            assert_eq!(producer.buffered_bytes(), 0);
        });
    }

    // Goal: failures reach the right caller: oversized records and bad partitions at send,
    // unknown topics and refused batches through the future, forgotten records through
    // flush, and a retriable failure that persists after the retries.
    // Method: provoke each against the fake and check the error kind and code.
    #[test]
    fn failures_are_reported() {
        run(async {
            let transport = fake(2, false);
            let config = ProducerConfig {
                request_bytes_max: 1024,
                batch_size: 512,
                linger: Duration::from_millis(1),
                retries: 2,
                retry_backoff: Duration::from_millis(1),
                retry_backoff_max: Duration::from_millis(2),
                ..ProducerConfig::default()
            };
            let producer = producer(&transport, config);
            let big = ProducerRecord::new("t", vec![0u8; 2048]);
            assert!(matches!(
                producer.send(big.clone()).await,
                Err(ProduceError::RecordTooLarge { limit: 1024, .. })
            ));
            assert!(matches!(
                producer.send_and_forget(big),
                Err(ProduceError::RecordTooLarge { .. })
            ));
            let unknown = producer.send(ProducerRecord::new("missing", "x")).await;
            let Err(ProduceError::Route { source, .. }) = unknown else {
                panic!("unknown topic: {unknown:?}");
            };
            assert!(matches!(*source, ClientError::UnknownTopic { .. }));
            // The topic is known now, so a bad partition fails at once.
            producer.send(record(0, "warm")).await.expect("acked");
            let bad = producer.send(record(7, "x")).await;
            assert!(
                matches!(&bad, Err(ProduceError::Route { source, .. })
                    if matches!(**source, ClientError::UnknownPartition { partitions: 2, .. })),
                "{bad:?}"
            );
            transport.0.script.borrow_mut().push_back(not_retriable());
            let refused = producer.send(record(1, "refused")).await;
            assert_eq!(
                refused.as_ref().err().and_then(ProduceError::code),
                Some(ErrorCode::MessageTooLarge),
                "{refused:?}"
            );
            for _ in 0..3 {
                transport.0.script.borrow_mut().push_back(retriable());
            }
            let gave_up = producer.send(record(1, "moved")).await;
            assert_eq!(
                gave_up.as_ref().err().and_then(ProduceError::code),
                Some(ErrorCode::NotOwner),
                "{gave_up:?}"
            );
            transport.0.script.borrow_mut().push_back(not_retriable());
            producer
                .send_and_forget(record(0, "forgotten"))
                .expect("accepted");
            producer
                .send_and_forget(record(0, "in the same batch"))
                .expect("accepted");
            let flushed = producer.flush().await;
            let Err(ProduceError::Undelivered { count: 2, first }) = flushed else {
                panic!("flush: {flushed:?}");
            };
            assert_eq!(first.code(), Some(ErrorCode::MessageTooLarge));
            producer
                .send_and_forget(record(0, "delivered"))
                .expect("accepted");
            producer.flush().await.expect("failures are reported once");
            assert_eq!(transport.log(1), Vec::<String>::new());
            assert_eq!(transport.log(0), vec!["warm", "delivered"]);
        });
    }

    // Goal: with one request in flight, the batches that become ready meanwhile travel
    // together in the next request, in order, and get consecutive offsets.
    // Method: a gated fake holds the first request while three more batches fill.
    #[test]
    fn ready_batches_share_a_request() {
        run(async {
            let transport = fake(1, true);
            let config = ProducerConfig {
                batch_size: HEADER_BYTES + size_of("a"),
                linger: Duration::from_secs(3600),
                in_flight_max: 1,
                ..ProducerConfig::default()
            };
            let producer = producer(&transport, config);
            let a = producer.send(record(0, "a"));
            transport
                .until("a held", |f| f.held.borrow().len() == 1)
                .await;
            let later: Vec<_> = ["b", "c", "d"]
                .into_iter()
                .map(|v| producer.send(record(0, v)))
                .collect();
            transport.answer_next(Ok(()));
            transport
                .until("b, c and d held", |f| f.held.borrow().len() == 1)
                .await;
            transport.answer_next(Ok(()));
            let offsets: Vec<i64> = join_all(later)
                .await
                .into_iter()
                .map(|ack| ack.expect("acknowledged").offset)
                .collect();
            assert_eq!(a.await.expect("a").offset, 0);
            assert_eq!(offsets, vec![1, 2, 3]);
            let shape: Vec<Vec<usize>> = transport
                .written()
                .iter()
                .map(|request| request.iter().map(Vec::len).collect())
                .collect();
            assert_eq!(shape, vec![vec![1], vec![1, 1, 1]]);
        });
    }

    // Goal: a request of several batches that fails for a reason retrying cannot fix is
    // split, so only the batch at fault fails and the others land, in order.
    // Method: the fake refuses the combined request and then the first batch resent alone.
    #[test]
    fn failed_combined_request_is_split() {
        run(async {
            let transport = fake(1, false);
            let config = ProducerConfig {
                batch_size: HEADER_BYTES + size_of("a"),
                linger: Duration::from_secs(3600),
                ..ProducerConfig::default()
            };
            let producer = producer(&transport, config);
            // Learn the topic first, so the next three batches are ready at once.
            producer.send(record(0, "w")).await.expect("warm up");
            for _ in 0..2 {
                transport.0.script.borrow_mut().push_back(not_retriable());
            }
            let sent: Vec<_> = ["x", "y", "z"]
                .into_iter()
                .map(|v| producer.send(record(0, v)))
                .collect();
            let results = join_all(sent).await;
            assert_eq!(
                results[0].as_ref().err().and_then(ProduceError::code),
                Some(ErrorCode::MessageTooLarge)
            );
            assert_eq!(results[1].as_ref().expect("y lands").offset, 1);
            assert_eq!(results[2].as_ref().expect("z lands").offset, 2);
            assert_eq!(transport.log(0), vec!["w", "y", "z"]);
            let shape: Vec<Vec<usize>> = transport
                .written()
                .iter()
                .map(|request| request.iter().map(Vec::len).collect())
                .collect();
            assert_eq!(
                shape,
                vec![vec![1], vec![1, 1, 1], vec![1], vec![1], vec![1]]
            );
        });
    }

    // Goal: invalid configurations are refused before anything runs.
    #[test]
    fn invalid_configs() {
        run(async {
            let transport = fake(1, false);
            for config in [
                ProducerConfig {
                    batch_size: 0,
                    ..ProducerConfig::default()
                },
                ProducerConfig {
                    in_flight_max: 0,
                    ..ProducerConfig::default()
                },
                ProducerConfig {
                    request_bytes_max: BATCH_BYTES_MAX + 1,
                    ..ProducerConfig::default()
                },
            ] {
                assert!(Producer::with_transport(Rc::new(transport.clone()), config).is_err());
            }
        });
    }
}
