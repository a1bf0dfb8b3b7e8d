//! The native target: Sluice over QUIC through the client library (`sluice_net::client`),
//! used as an application would use it: one [`Client`] per producer or consumer, records
//! sent with [`Producer::send`] / [`Producer::send_and_forget`] and read with
//! [`Consumer::poll`].
//!
//! Every `probe_every`-th record is sent with `send`, whose future resolves when its batch is
//! acknowledged; a task records its latency and counts as acknowledged every record sent up
//! to it (exact for one partition, where acknowledgements come in order; within
//! `probe_every` records per partition otherwise, and exact again after `flush`). The other
//! records go with `send_and_forget`, so the harness does not spend a task per record. With
//! `--rate` every record is a probe.
//!
//! Values are cut from a shared arena (one allocation per 1 MiB of values, not per record):
//! the client copies a record into its batch when it is sent, so the arena is freed soon.
//!
//! Shard-local (`!Send`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use sluice_engine::TimestampMs;
use sluice_engine::batch::Compression;
use sluice_engine::rt::{self, clock};
use sluice_net::client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig,
    ProducerRecord, Seek,
};
use sluice_net::native::messages::{ErrorCode, OffsetQuery};

use crate::load::Value;
use crate::stamp::read_stamp;
use crate::stats::{Counters, Probe};

/// How long a new topic may take to show in the metadata.
const TOPIC_READY_WAIT: Duration = Duration::from_secs(30);

/// Connects a client to the bootstrap brokers.
pub async fn connect(brokers: &[String]) -> anyhow::Result<Client> {
    Client::connect(ClientConfig::new(brokers.iter().cloned()))
        .await
        .with_context(|| format!("cannot connect to {}", brokers.join(",")))
}

/// Creates `topic` with `partitions` partitions unless it exists with that many.
pub async fn ensure_topic(client: &Client, topic: &str, partitions: i32) -> anyhow::Result<()> {
    match client.create_topic(NewTopic::new(topic, partitions)).await {
        Ok(()) => {}
        Err(error) if error.code() == Some(ErrorCode::TopicExists) => {}
        Err(error) => return Err(error).with_context(|| format!("cannot create {topic}")),
    }
    let deadline = clock::now() + TOPIC_READY_WAIT;
    loop {
        let metadata = client.refresh_topics(&[topic.to_owned()]).await;
        if let Ok(metadata) = metadata
            && let Some(count) = metadata.partition_count(topic)
        {
            if count != partitions {
                bail!("topic {topic} exists with {count} partitions, not {partitions}");
            }
            return Ok(());
        }
        if clock::now() >= deadline {
            bail!("topic {topic} does not show in the metadata after {TOPIC_READY_WAIT:?}");
        }
        rt::sleep(Duration::from_millis(50)).await;
    }
}

/// The offset of every partition for `query`.
pub async fn offsets_at(
    client: &Client,
    topic: &str,
    partitions: i32,
    query: OffsetQuery,
) -> anyhow::Result<Vec<i64>> {
    let mut offsets = Vec::with_capacity(partitions as usize);
    for partition in 0..partitions {
        let listed = client
            .list_offset(topic, partition, query)
            .await
            .with_context(|| format!("offset of {topic}-{partition}"))?;
        offsets.push(listed.offset);
    }
    Ok(offsets)
}

/// Producer settings shared with the Kafka target.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Acknowledgement level.
    pub acks: Acks,
    /// Codec of every batch.
    pub compression: Compression,
    /// A batch closes at this many bytes.
    pub batch_bytes: usize,
    /// How long a batch waits for more records.
    pub linger: Duration,
    /// Requests outstanding per partition.
    pub in_flight_max: usize,
    /// Record bytes held before `send` waits.
    pub buffer_bytes: usize,
}

/// Bytes of each value arena.
const ARENA_BYTES: usize = 1 << 20;

/// A producer over the client library.
pub struct NativeProducer {
    producer: Rc<Producer>,
    topic: Arc<str>,
    probe: Probe,
    probe_every: u64,
    /// Records and value bytes handed to the producer.
    sent: Cell<(u64, u64)>,
    /// Records and bytes known acknowledged (through the probes); shared with the tasks.
    acked: Rc<Cell<(u64, u64)>>,
    /// Probes whose completion task has not run yet.
    outstanding: Rc<Cell<u64>>,
    failure: Rc<RefCell<Option<String>>>,
    arena: RefCell<BytesMut>,
}

impl NativeProducer {
    /// A producer for `topic` with its own client.
    pub async fn connect(
        brokers: &[String],
        topic: &str,
        settings: &Settings,
        probe: Probe,
        probe_every: u64,
    ) -> anyhow::Result<NativeProducer> {
        assert!(probe_every >= 1, "a probe at least every record");
        let client = connect(brokers).await?;
        let config = ProducerConfig {
            batch_size: settings.batch_bytes,
            linger: settings.linger,
            compression: settings.compression,
            acks: settings.acks,
            buffer_bytes: settings.buffer_bytes,
            in_flight_max: settings.in_flight_max,
            request_bytes_max: settings
                .batch_bytes
                .max(ProducerConfig::default().request_bytes_max),
            ..ProducerConfig::default()
        };
        let producer = Producer::new(&client, config).context("cannot start the producer")?;
        Ok(NativeProducer {
            producer: Rc::new(producer),
            topic: Arc::from(topic),
            probe,
            probe_every,
            sent: Cell::new((0, 0)),
            acked: Rc::new(Cell::new((0, 0))),
            outstanding: Rc::new(Cell::new(0)),
            failure: Rc::new(RefCell::new(None)),
            arena: RefCell::new(BytesMut::new()),
        })
    }

    /// Copies `value` into the arena.
    fn value(&self, value: &[u8]) -> Bytes {
        let mut arena = self.arena.borrow_mut();
        if arena.capacity() < value.len() {
            *arena = BytesMut::with_capacity(ARENA_BYTES.max(value.len()));
        }
        arena.extend_from_slice(value);
        arena.split().freeze()
    }

    /// Counts records up to a probe as acknowledged (never backwards).
    fn count_acked(acked: &Cell<(u64, u64)>, counters: &Counters, upto: (u64, u64)) {
        let (records, bytes) = acked.get();
        if upto.0 > records {
            Counters::add(&counters.acked_records, upto.0 - records);
            Counters::add(&counters.acked_bytes, upto.1 - bytes);
            acked.set(upto);
        }
    }

    /// Sends one record, waiting while the producer's buffer is full. Its acknowledgement is
    /// recorded by a task of its own when it comes.
    pub async fn send(
        &self,
        partition: i32,
        key: Option<&[u8]>,
        value: Value<'_>,
        intended: Instant,
        timestamp: TimestampMs,
    ) -> anyhow::Result<()> {
        if let Some(failure) = self.failure.borrow().clone() {
            bail!("{failure}");
        }
        self.producer.ready().await;
        let bytes = (value.as_slice().len() + key.map_or(0, <[u8]>::len)) as u64;
        let value = match value {
            Value::Pool(value) => value,
            Value::Stamped(value) => self.value(value),
        };
        let record = ProducerRecord {
            topic: Arc::clone(&self.topic),
            partition: Some(partition),
            key: key.map(Bytes::copy_from_slice),
            value: Some(value),
            headers: Vec::new(),
            timestamp: Some(timestamp),
        };
        let (records, sent_bytes) = self.sent.get();
        let upto = (records + 1, sent_bytes + bytes);
        self.sent.set(upto);
        if records % self.probe_every != 0 {
            self.producer
                .send_and_forget(record)
                .context("send_and_forget after ready")?;
            return Ok(());
        }
        let acked = self.producer.send(record);
        let probe = self.probe.clone();
        let acked_so_far = Rc::clone(&self.acked);
        let outstanding = Rc::clone(&self.outstanding);
        let failure = Rc::clone(&self.failure);
        outstanding.set(outstanding.get() + 1);
        rt::spawn(async move {
            let result = acked.await;
            let done = clock::now();
            match result {
                Ok(_) => {
                    probe.recorder.borrow_mut().record_ack(intended, done);
                    NativeProducer::count_acked(&acked_so_far, &probe.counters, upto);
                }
                Err(error) => {
                    Counters::add(&probe.counters.errors, 1);
                    failure
                        .borrow_mut()
                        .get_or_insert_with(|| format!("produce failed: {error}"));
                }
            }
            outstanding.set(outstanding.get() - 1);
        })
        .detach();
        Ok(())
    }

    /// Waits until every record sent is acknowledged and recorded.
    pub async fn flush(&self) -> anyhow::Result<()> {
        let flushed = self.producer.flush().await;
        // The completion tasks run right after the acknowledgements; bounded by them.
        while self.outstanding.get() > 0 {
            rt::sleep(Duration::from_micros(200)).await;
        }
        if let Err(error) = flushed {
            let failed = match &error {
                sluice_net::client::ProduceError::Undelivered { count, .. } => *count,
                _ => 0,
            };
            Counters::add(&self.probe.counters.errors, failed);
            return Err(error).context("flush");
        }
        // Everything sent is acknowledged now.
        NativeProducer::count_acked(&self.acked, &self.probe.counters, self.sent.get());
        match self.failure.borrow().clone() {
            Some(failure) => bail!("{failure}"),
            None => Ok(()),
        }
    }
}

/// Consumer settings shared with the Kafka target.
#[derive(Clone, Debug)]
pub struct ConsumeSettings {
    /// How long the broker may hold a fetch that finds nothing new.
    pub fetch_wait: Duration,
    /// Bytes per fetch.
    pub fetch_bytes: u32,
    /// Read each record's send stamp and record end-to-end latency.
    pub e2e: bool,
}

/// Reads `partitions` of `topic` from `starts` until each reaches its end (if given), or
/// `stop` says so.
pub async fn consume(
    brokers: &[String],
    topic: &str,
    partitions: &[(i32, i64, Option<i64>)],
    settings: &ConsumeSettings,
    probe: &Probe,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<()> {
    let client = connect(brokers).await?;
    let config = ConsumerConfig {
        fetch_wait_max: settings.fetch_wait,
        fetch_bytes_max: settings.fetch_bytes,
        ..ConsumerConfig::default()
    };
    let consumer = Consumer::new(&client, config);
    let assigned: Vec<(&str, i32)> = partitions.iter().map(|&(p, _, _)| (topic, p)).collect();
    consumer.assign(&assigned);
    let mut next: Vec<(i32, i64, Option<i64>)> = partitions.to_vec();
    for &(partition, start, _) in partitions {
        consumer
            .seek(topic, partition, Seek::Offset(start))
            .with_context(|| format!("seek {topic}-{partition}"))?;
    }
    let done = |next: &[(i32, i64, Option<i64>)]| {
        next.iter()
            .all(|&(_, offset, end)| end.is_some_and(|end| offset >= end))
    };
    // Runs until every partition reaches its end or the run stops.
    while !stop() && !done(&next) {
        let records = consumer
            .poll(Duration::from_millis(100))
            .await
            .context("poll")?;
        if records.is_empty() {
            continue;
        }
        let now_stamp = probe.recorder.borrow().run.stamp_of(clock::now());
        let mut bytes = 0u64;
        let mut stamps = Vec::new();
        for record in &records {
            let value = record.value.as_deref().unwrap_or_default();
            bytes += (value.len() + record.key.as_ref().map_or(0, Bytes::len)) as u64;
            if settings.e2e
                && let Some(stamp) = read_stamp(value)
            {
                stamps.push(stamp);
            }
            if let Some(entry) = next.iter_mut().find(|e| e.0 == record.partition) {
                entry.1 = entry.1.max(record.offset + 1);
            }
        }
        Counters::add(&probe.counters.consumed_records, records.len() as u64);
        Counters::add(&probe.counters.consumed_bytes, bytes);
        if !stamps.is_empty() {
            let mut recorder = probe.recorder.borrow_mut();
            for stamp in stamps {
                recorder.record_e2e(stamp, now_stamp);
            }
        }
    }
    Ok(())
}
