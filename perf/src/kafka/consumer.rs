//! The harness's Kafka consumer: one Fetch loop per leader broker for the partitions it is
//! given, one request outstanding per connection (as Kafka's consumer does), every batch
//! checked (CRC) and its records decoded, counted and, for end-to-end runs, their send
//! stamps read. The next fetch is sent as soon as an answer's batch headers say where it
//! starts, before the answer is checked and decoded.
//!
//! Shard-local (`!Send`).

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, ResponseKind};
use sluice_engine::batch::{self, BatchHeader, decode_batch};
use sluice_engine::limits::BATCH_BYTES_MAX;
use sluice_engine::rt::clock;

use super::conn::Connection;
use super::{TopicLayout, describe, topic_name};
use crate::stamp::read_stamp;
use crate::stats::{Counters, Probe};

/// Consumer settings (the harness flags of the same names).
#[derive(Clone, Debug)]
pub struct Settings {
    /// How long the broker may hold a fetch that finds nothing new.
    pub fetch_wait: Duration,
    /// Bytes per partition per fetch.
    pub partition_bytes: i32,
    /// Bytes per fetch response.
    pub response_bytes: i32,
    /// Read each record's send stamp and record end-to-end latency.
    pub e2e: bool,
}

/// One partition being read.
#[derive(Clone, Copy, Debug)]
pub struct Position {
    /// The partition.
    pub partition: i32,
    /// Next offset to read.
    pub offset: i64,
    /// Stop once `offset` reaches this (catch-up); `None` reads until told to stop.
    pub end: Option<i64>,
}

impl Position {
    fn done(&self) -> bool {
        self.end.is_some_and(|end| self.offset >= end)
    }
}

/// Reads `positions` until each reaches its end, or `stop` says so.
pub async fn consume(
    topic: &str,
    layout: &TopicLayout,
    positions: Vec<Position>,
    settings: &Settings,
    probe: &Probe,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<()> {
    let mut loops = Vec::new();
    for broker in layout.leader_brokers() {
        let mine: Vec<Position> = positions
            .iter()
            .copied()
            .filter(|p| layout.leaders[p.partition as usize] == broker)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let connection = Connection::connect(layout.address(broker)?, 1).await?;
        loops.push(fetch_loop(topic, connection, mine, settings, probe, stop));
    }
    for result in futures::future::join_all(loops).await {
        result?;
    }
    Ok(())
}

async fn fetch_loop(
    topic: &str,
    connection: Connection,
    mut positions: Vec<Position>,
    settings: &Settings,
    probe: &Probe,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<()> {
    let version = connection.versions().pick(ApiKey::Fetch, 4, 12)?;
    let name = topic_name(topic);
    let wait_ms = i32::try_from(settings.fetch_wait.as_millis()).unwrap_or(i32::MAX);
    // A fetch for the positions not done yet, if any.
    let request = |positions: &[Position]| {
        let partitions: Vec<FetchPartition> = positions
            .iter()
            .filter(|p| !p.done())
            .map(|p| {
                FetchPartition::default()
                    .with_partition(p.partition)
                    .with_current_leader_epoch(-1)
                    .with_fetch_offset(p.offset)
                    .with_log_start_offset(-1)
                    .with_partition_max_bytes(settings.partition_bytes)
            })
            .collect();
        (!partitions.is_empty()).then(|| {
            FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(wait_ms)
                .with_min_bytes(1)
                .with_max_bytes(settings.response_bytes)
                .with_isolation_level(0)
                .with_session_id(0)
                .with_session_epoch(-1)
                .with_topics(vec![
                    FetchTopic::default()
                        .with_topic(name.clone())
                        .with_partitions(partitions),
                ])
        })
    };
    let mut pending = match request(&positions) {
        Some(fetch) if !stop() => Some(
            connection
                .start(ApiKey::Fetch, version, &fetch, None)
                .await?,
        ),
        _ => None,
    };
    // Each pass takes one answer; runs until every position is done or the run stops.
    while let Some(fetch) = pending.take() {
        let ResponseKind::Fetch(answer) = fetch.answer().await? else {
            bail!("Fetch answered with something else");
        };
        if answer.error_code != 0 {
            bail!("fetch from {topic}: {}", describe(answer.error_code));
        }
        let now_stamp = probe.recorder.borrow().run.stamp_of(clock::now());
        let mut taken = Vec::new();
        for topic_answer in &answer.responses {
            for data in &topic_answer.partitions {
                if data.error_code != 0 {
                    bail!(
                        "fetch from {topic}-{}: {}",
                        data.partition_index,
                        describe(data.error_code)
                    );
                }
                let Some(position) = positions
                    .iter_mut()
                    .find(|p| p.partition == data.partition_index)
                else {
                    bail!(
                        "fetch answered for partition {} not asked",
                        data.partition_index
                    );
                };
                let records = data.records.clone().unwrap_or_default();
                let from = position.offset;
                position.offset = next_offset(&records, from);
                taken.push((position.partition, records, from, position.offset));
            }
        }
        // The next fetch goes out before this answer's batches are checked and decoded, so
        // the broker serves it meanwhile (as a Kafka client's fetcher runs ahead of the
        // application).
        if !stop()
            && let Some(fetch) = request(&positions)
        {
            pending = Some(
                connection
                    .start(ApiKey::Fetch, version, &fetch, None)
                    .await?,
            );
        }
        for (partition, records, from, next) in taken {
            let decoded = take_records(records, from, settings.e2e, now_stamp, probe)
                .with_context(|| format!("{topic}-{partition}"))?;
            assert_eq!(
                decoded, next,
                "{topic}-{partition}: the decoded batches end where their headers said"
            );
        }
    }
    Ok(())
}

/// The offset after the whole batches of a fetch answer from `offset`, by their headers alone:
/// where the next fetch starts. A partial batch at the end is left for that fetch.
pub fn next_offset(records: &[u8], offset: i64) -> i64 {
    batch::next_offset_after_whole_batches(records, BATCH_BYTES_MAX)
        .map_or(offset, |next| next.0.max(offset))
}

/// Decodes the whole batches of a fetch answer from `offset`, counts their records (those
/// at or after `offset`) and returns the next offset to read. A partial batch at the end
/// (a broker cuts answers at the byte limit) is left for the next fetch.
pub fn take_records(
    mut records: Bytes,
    mut offset: i64,
    e2e: bool,
    now_stamp: u64,
    probe: &Probe,
) -> anyhow::Result<i64> {
    let mut count = 0u64;
    let mut bytes = 0u64;
    let mut stamps = Vec::new();
    // Bounded by the answer's bytes: each pass consumes one whole batch.
    while !records.is_empty() {
        let Ok(header) = BatchHeader::parse(&records, BATCH_BYTES_MAX) else {
            break;
        };
        let total = header.total_bytes();
        if records.len() < total {
            break;
        }
        let batch = records.split_to(total);
        let next = header.next_offset().0;
        if next <= offset {
            continue;
        }
        let decoder = decode_batch(&batch, BATCH_BYTES_MAX).context("bad batch")?;
        for record in decoder {
            let record = record.context("bad record")?;
            if record.offset.0 < offset {
                continue;
            }
            count += 1;
            let value = record.value.as_deref().unwrap_or_default();
            bytes += (value.len() + record.key.as_ref().map_or(0, Bytes::len)) as u64;
            if e2e && let Some(stamp) = read_stamp(value) {
                stamps.push(stamp);
            }
        }
        offset = next;
    }
    Counters::add(&probe.counters.consumed_records, count);
    Counters::add(&probe.counters.consumed_bytes, bytes);
    if !stamps.is_empty() {
        let mut recorder = probe.recorder.borrow_mut();
        for stamp in stamps {
            recorder.record_e2e(stamp, now_stamp);
        }
    }
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::BytesMut;
    use sluice_engine::batch::{BatchBuilder, Compression};
    use sluice_engine::{Offset, TimestampMs};

    use super::*;
    use crate::stamp::{RunClock, put_stamp};
    use crate::stats::Recorder;

    fn batch(base: i64, stamps: &[u64]) -> Bytes {
        let mut builder = BatchBuilder::new(1 << 20);
        builder.set_base_offset(Offset(base));
        for &stamp in stamps {
            let mut value = vec![7u8; 32];
            put_stamp(&mut value, stamp);
            builder
                .push(Some(b"k"), Some(&value), &[], TimestampMs(1))
                .expect("fits");
        }
        builder.build(Compression::Lz4).expect("builds")
    }

    // Goal: a fetch answer's records are counted from the position on (a batch may start
    // before it), stamps give end-to-end latencies, and a partial batch at the end is left
    // for the next fetch. Method: two whole batches and a cut third, read from offset 1.
    #[test]
    fn take_records_counts_from_position_and_stops_at_partial_batch() {
        let run = RunClock::new(Duration::ZERO);
        let probe = Probe {
            recorder: Rc::new(RefCell::new(Recorder::new(run, Duration::from_secs(1)))),
            counters: Arc::new(Counters::default()),
        };
        let sent = run.start_realtime_ns + 1_000;
        let mut answer = BytesMut::new();
        answer.extend_from_slice(&batch(0, &[sent, sent]));
        answer.extend_from_slice(&batch(2, &[sent]));
        let third = batch(3, &[sent]);
        answer.extend_from_slice(&third[..third.len() - 5]);
        let now = sent + 250_000;
        let answer = answer.freeze();
        assert_eq!(
            next_offset(&answer, 1),
            3,
            "the headers alone put the next fetch at the cut batch"
        );
        assert_eq!(
            next_offset(&answer, 10),
            10,
            "batches before the position do not move it back"
        );
        let next = take_records(answer, 1, true, now, &probe).expect("valid batches");
        assert_eq!(next, 3, "the cut batch is read again");
        let totals = probe.counters.snapshot();
        assert_eq!(totals.consumed_records, 2, "offset 0 is below the position");
        assert_eq!(totals.consumed_bytes, 2 * 33);
        let recorder = probe.recorder.borrow();
        assert_eq!(recorder.e2e.total.len(), 2);
        let p50 = recorder.e2e.total.value_at_quantile(0.5);
        assert!((249_000..=251_000).contains(&p50), "{p50}");
        let mut corrupt = BytesMut::from(&batch(0, &[sent])[..]);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0xff;
        assert!(take_records(corrupt.freeze(), 0, false, now, &probe).is_err());
    }
}
