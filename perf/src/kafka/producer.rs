//! The harness's Kafka producer: records go straight into per-partition
//! [`BatchBuilder`]s; batches go out in Produce requests, one per broker connection at a
//! time up to the connection's window, each carrying at most one batch per partition.
//!
//! Batching follows Kafka's producer: a batch closes when it reaches `batch_bytes` or when it
//! has waited `linger`; with `linger` zero a batch is sent as soon as the connection's window
//! has room, so batches grow only while requests are outstanding. `buffer_bytes` bounds the
//! record bytes held (open, closed and in-flight batches): `send` waits for room.
//!
//! Each record's intended send time is kept beside its batch, and the whole batch is
//! recorded against the instant its acknowledgement arrived.
//!
//! Shard-local (`!Send`).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::{ApiKey, ResponseKind, TopicName};
use sluice_engine::TimestampMs;
use sluice_engine::batch::{BatchBuilder, BuildError, Compression};
use sluice_engine::rt::sync::Semaphore;
use sluice_engine::rt::{self, Task, clock};

use sluice_net::kafka::splice::{Placeholders, RecordsPrefix};

use super::conn::{Connection, Records};
use super::{TopicLayout, describe, topic_name};
use crate::stats::{Counters, Probe};

/// Bytes a request carries at most, unless one batch is larger.
const REQUEST_BYTES_MAX: usize = 1 << 20;

/// Room a batch keeps beyond its records for the header and record framing.
const BATCH_OVERHEAD_BYTES: usize = 128;

/// Producer settings (the harness flags of the same names).
#[derive(Clone, Debug)]
pub struct Settings {
    /// 0, 1 or -1 (all).
    pub acks: i16,
    /// Codec of every batch.
    pub compression: Compression,
    /// A batch closes at this many bytes.
    pub batch_bytes: usize,
    /// How long a batch waits for more records.
    pub linger: Duration,
    /// Requests outstanding per connection.
    pub in_flight_max: usize,
    /// Record bytes held before `send` waits.
    pub buffer_bytes: usize,
}

/// A batch being filled.
struct Open {
    builder: BatchBuilder,
    intended: Vec<Instant>,
    bytes: u64,
    opened: Instant,
}

/// A batch ready to go (built when it is sent, so compression runs off the enqueue path).
struct Closed {
    /// Taken by the request that sends it.
    builder: Option<BatchBuilder>,
    intended: Vec<Instant>,
    bytes: u64,
}

struct State {
    /// By partition.
    open: Vec<Option<Open>>,
    /// By partition, oldest first.
    closed: Vec<VecDeque<Closed>>,
    /// By connection: partitions with unsent records, oldest first.
    /// Invariant: a partition is listed at most once, exactly when `listed[p]` is set.
    pending: Vec<VecDeque<usize>>,
    listed: Vec<bool>,
    /// By connection: requests outstanding.
    in_flight: Vec<usize>,
    /// Set by `flush`: send lingering batches now.
    force: bool,
}

struct Inner {
    topic: TopicName,
    settings: Settings,
    /// By connection slot.
    connections: Vec<Rc<Connection>>,
    versions: Vec<i16>,
    /// Partition → connection slot.
    slot_of: Vec<usize>,
    state: RefCell<State>,
    buffer: Semaphore,
    probe: Probe,
    failure: RefCell<Option<String>>,
}

/// A producer for one topic; see the [module docs](self).
pub struct KafkaProducer {
    inner: Rc<Inner>,
    _ticker: Option<Task<()>>,
}

impl KafkaProducer {
    /// Connects to every leader of `layout` and starts the linger timer.
    pub async fn connect(
        topic: &str,
        layout: &TopicLayout,
        settings: Settings,
        probe: Probe,
    ) -> anyhow::Result<KafkaProducer> {
        assert!(
            settings.in_flight_max >= 1,
            "a window of at least one request"
        );
        let mut slots: HashMap<i32, usize> = HashMap::new();
        let mut connections = Vec::new();
        let mut versions = Vec::new();
        for broker in layout.leader_brokers() {
            let connection =
                Connection::connect(layout.address(broker)?, settings.in_flight_max).await?;
            versions.push(connection.versions().pick(ApiKey::Produce, 3, 9)?);
            slots.insert(broker, connections.len());
            connections.push(Rc::new(connection));
        }
        let slot_of = layout
            .leaders
            .iter()
            .map(|leader| slots[leader])
            .collect::<Vec<usize>>();
        let partitions = slot_of.len();
        let state = State {
            open: (0..partitions).map(|_| None).collect(),
            closed: (0..partitions).map(|_| VecDeque::new()).collect(),
            pending: connections.iter().map(|_| VecDeque::new()).collect(),
            listed: vec![false; partitions],
            in_flight: vec![0; connections.len()],
            force: false,
        };
        let inner = Rc::new(Inner {
            topic: topic_name(topic),
            buffer: Semaphore::new(settings.buffer_bytes as u64),
            settings,
            connections,
            versions,
            slot_of,
            state: RefCell::new(state),
            probe,
            failure: RefCell::new(None),
        });
        let ticker = (!inner.settings.linger.is_zero())
            .then(|| rt::spawn(linger_ticker(Rc::downgrade(&inner))));
        Ok(KafkaProducer {
            inner,
            _ticker: ticker,
        })
    }

    /// Adds a record to its partition's batch, waiting while the buffer is full.
    pub async fn send(
        &self,
        partition: i32,
        key: Option<&[u8]>,
        value: &[u8],
        intended: Instant,
        timestamp: TimestampMs,
    ) -> anyhow::Result<()> {
        let inner = &self.inner;
        let bytes = (value.len() + key.map_or(0, <[u8]>::len)) as u64;
        let units = bytes.min(inner.settings.buffer_bytes as u64);
        if inner.buffer.acquire(units).await.is_err() {
            bail!("producer closed");
        }
        if let Some(failure) = inner.failure.borrow().clone() {
            bail!("{failure}");
        }
        let p = usize::try_from(partition)
            .ok()
            .filter(|&p| p < inner.slot_of.len())
            .with_context(|| format!("no partition {partition}"))?;
        let slot = inner.slot_of[p];
        let closed_one = {
            let mut state = inner.state.borrow_mut();
            let state = &mut *state;
            let batch_bytes = inner.settings.batch_bytes;
            let limit = batch_bytes.max(bytes as usize + BATCH_OVERHEAD_BYTES);
            let mut closed_one = false;
            let open = state.open[p].get_or_insert_with(|| Open::new(limit, batch_bytes));
            match open.builder.push(key, Some(value), &[], timestamp) {
                Ok(()) => {}
                Err(BuildError::BatchFull { .. }) => {
                    let full = std::mem::replace(open, Open::new(limit, batch_bytes));
                    state.closed[p].push_back(full.close());
                    closed_one = true;
                    open.builder
                        .push(key, Some(value), &[], timestamp)
                        .context("a record does not fit an empty batch")?;
                }
                Err(error) => return Err(error).context("cannot add a record to a batch"),
            }
            open.intended.push(intended);
            open.bytes += units;
            if open.builder.uncompressed_bytes() >= batch_bytes {
                let full = state.open[p].take().expect("just filled");
                state.closed[p].push_back(full.close());
                closed_one = true;
            }
            if !state.listed[p] {
                state.listed[p] = true;
                state.pending[slot].push_back(p);
            }
            closed_one
        };
        if closed_one || inner.settings.linger.is_zero() {
            dispatch(inner, slot);
        }
        Ok(())
    }

    /// Sends everything now and waits until every batch is answered; returns the first
    /// failure of the run, if any.
    pub async fn flush(&self) -> anyhow::Result<()> {
        let inner = &self.inner;
        inner.state.borrow_mut().force = true;
        // Bounded by the batches held: each pass sends what the windows allow.
        loop {
            for slot in 0..inner.connections.len() {
                dispatch(inner, slot);
            }
            let idle = {
                let state = inner.state.borrow();
                state.pending.iter().all(VecDeque::is_empty)
                    && state.in_flight.iter().all(|&n| n == 0)
            };
            if idle || inner.failure.borrow().is_some() {
                break;
            }
            rt::sleep(Duration::from_millis(1)).await;
        }
        inner.state.borrow_mut().force = false;
        match inner.failure.borrow().clone() {
            Some(failure) => bail!("{failure}"),
            None => Ok(()),
        }
    }
}

impl Open {
    fn new(limit: usize, batch_bytes: usize) -> Open {
        Open {
            builder: BatchBuilder::with_capacity(limit, batch_bytes.min(limit)),
            intended: Vec::new(),
            bytes: 0,
            opened: clock::now(),
        }
    }

    fn close(self) -> Closed {
        Closed {
            builder: Some(self.builder),
            intended: self.intended,
            bytes: self.bytes,
        }
    }
}

async fn linger_ticker(inner: Weak<Inner>) {
    // Runs until the producer is dropped.
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let period = (strong.settings.linger / 2).max(Duration::from_micros(500));
        for slot in 0..strong.connections.len() {
            dispatch(&strong, slot);
        }
        drop(strong);
        rt::sleep(period).await;
    }
}

/// Starts requests on connection `slot` while its window has room and batches are due.
fn dispatch(inner: &Rc<Inner>, slot: usize) {
    // Bounded: each pass takes at least one batch, or stops.
    loop {
        let parts = {
            let mut state = inner.state.borrow_mut();
            let state = &mut *state;
            if state.in_flight[slot] >= inner.settings.in_flight_max {
                return;
            }
            let now = clock::now();
            let linger = inner.settings.linger;
            let mut parts: Vec<(usize, Closed)> = Vec::new();
            let mut size = 0usize;
            let listed = state.pending[slot].len();
            for _ in 0..listed {
                let p = state.pending[slot]
                    .pop_front()
                    .expect("counted entries are there");
                let due = state.open[p]
                    .as_ref()
                    .is_some_and(|o| state.force || linger.is_zero() || now - o.opened >= linger);
                let taken = match state.closed[p].pop_front() {
                    Some(batch) => Some(batch),
                    None if due => state.open[p].take().map(Open::close),
                    None => None,
                };
                if let Some(batch) = taken {
                    size += batch
                        .builder
                        .as_ref()
                        .map_or(0, BatchBuilder::uncompressed_bytes);
                    parts.push((p, batch));
                }
                if state.closed[p].is_empty() && state.open[p].is_none() {
                    state.listed[p] = false;
                } else {
                    state.pending[slot].push_back(p);
                }
                if size >= REQUEST_BYTES_MAX {
                    break;
                }
            }
            if parts.is_empty() {
                return;
            }
            state.in_flight[slot] += 1;
            parts
        };
        rt::spawn(send_request(Rc::clone(inner), slot, parts)).detach();
    }
}

/// Sends one Produce request and accounts for its answer.
async fn send_request(inner: Rc<Inner>, slot: usize, mut parts: Vec<(usize, Closed)>) {
    let result = send_request_inner(&inner, slot, &mut parts).await;
    let done = clock::now();
    let counters = &inner.probe.counters;
    let mut released = 0u64;
    match result {
        Ok(errors) => {
            let mut recorder = inner.probe.recorder.borrow_mut();
            for ((_, batch), error) in parts.iter().zip(&errors) {
                let records = batch.intended.len() as u64;
                released += batch.bytes;
                if let Some(error) = error {
                    Counters::add(&counters.errors, records);
                    inner
                        .failure
                        .borrow_mut()
                        .get_or_insert_with(|| error.clone());
                    continue;
                }
                for &intended in &batch.intended {
                    recorder.record_ack(intended, done);
                }
                Counters::add(&counters.acked_records, records);
                Counters::add(&counters.acked_bytes, batch.bytes);
            }
        }
        Err(error) => {
            for (_, batch) in &parts {
                released += batch.bytes;
                Counters::add(&counters.errors, batch.intended.len() as u64);
            }
            inner
                .failure
                .borrow_mut()
                .get_or_insert_with(|| format!("{error:#}"));
            inner.buffer.close();
        }
    }
    inner.buffer.signal(released);
    inner.state.borrow_mut().in_flight[slot] -= 1;
    dispatch(&inner, slot);
}

/// Builds and sends the request; returns each part's error, if any.
async fn send_request_inner(
    inner: &Inner,
    slot: usize,
    parts: &mut [(usize, Closed)],
) -> anyhow::Result<Vec<Option<String>>> {
    // The batches go to the socket from their own buffers: the request carries placeholders.
    let mut placeholders = Placeholders::new();
    let mut partition_data = Vec::with_capacity(parts.len());
    for (p, batch) in parts.iter_mut() {
        let records: Bytes = batch
            .builder
            .take()
            .expect("a batch is sent once")
            .build(inner.settings.compression)
            .context("cannot build a batch")?;
        partition_data.push(
            PartitionProduceData::default()
                .with_index(*p as i32)
                .with_records(Some(placeholders.add(vec![records]))),
        );
    }
    let request = ProduceRequest::default()
        .with_acks(inner.settings.acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(inner.topic.clone())
                .with_partition_data(partition_data),
        ]);
    let connection = &inner.connections[slot];
    let version = inner.versions[slot];
    let records = Some(Records {
        placeholders,
        // Produce v9 is the first flexible version: COMPACT_RECORDS.
        prefix: if version >= 9 {
            RecordsPrefix::Compact
        } else {
            RecordsPrefix::Int32
        },
    });
    if inner.settings.acks == 0 {
        connection
            .send_only(ApiKey::Produce, version, &request, records)
            .await?;
        return Ok(vec![None; parts.len()]);
    }
    let answer = connection
        .call_spliced(ApiKey::Produce, version, &request, records)
        .await?;
    let ResponseKind::Produce(answer) = answer else {
        bail!("Produce answered with something else");
    };
    let mut codes: HashMap<i32, (i16, Option<String>)> = HashMap::new();
    for topic in &answer.responses {
        for partition in &topic.partition_responses {
            let message = partition
                .error_message
                .as_ref()
                .map(|m| m.as_str().to_owned());
            codes.insert(partition.index, (partition.error_code, message));
        }
    }
    Ok(parts
        .iter()
        .map(|(p, _)| match codes.get(&(*p as i32)) {
            None => Some(format!("partition {p} missing from the produce answer")),
            Some((0, _)) => None,
            Some((code, message)) => Some(format!(
                "produce to partition {p}: {}{}",
                describe(*code),
                message.as_ref().map_or(String::new(), |m| format!(": {m}"))
            )),
        })
        .collect())
}
