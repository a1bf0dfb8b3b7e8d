//! Fetch: long poll across partitions with `max_wait_ms` / `min_bytes`, per-partition and
//! per-response byte limits. Sessionless: the session id is always 0, so clients send full
//! fetch requests.
//!
//! Method: read every partition without waiting, in request order and in waves of concurrent
//! reads planned against the response's byte budget (the client's `max_bytes`, at most
//! [`KAFKA_FETCH_RESPONSE_BYTES_MAX`]; partitions past the budget get their offsets and no
//! records, as in Kafka); if that is less than `min_bytes` and time
//! remains, wait until any one partition has more data (each wait is a fetch with the
//! remaining time on the owning shard), then read all again. Records are the stored batch
//! bytes, unchanged and not copied: each partition's batches stand in the response as a
//! placeholder that the connection replaces with them when it writes (`super::splice`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_request::FetchRequest as KafkaFetch;
use kafka_protocol::messages::fetch_response::{
    FetchResponse, FetchableTopicResponse, PartitionData,
};
use sluice_cluster::shard::{FetchData, FetchRequest};
use sluice_engine::batch::BatchHeader;
use sluice_engine::rt::clock;
use sluice_engine::{Offset, TopicPartition};

use super::error::error_code;
use super::handler::Context;
use super::metadata::topic_by_id;
use super::splice::Placeholders;
use crate::limits::{
    KAFKA_FETCH_READS_IN_FLIGHT_MAX, KAFKA_FETCH_RESPONSE_BYTES_MAX, KAFKA_FETCH_ROUNDS_MAX,
    KAFKA_FETCH_WAIT_MS_MAX,
};

/// One partition of a fetch request.
struct Item {
    /// Index of its topic in the response.
    topic: usize,
    partition: i32,
    /// `Err`: answered with this error without reading (unknown topic id, fenced epoch).
    tp: Result<TopicPartition, ResponseError>,
    from: Offset,
    max_bytes: usize,
}

type PartitionResult = Result<FetchData, ResponseError>;

impl Context {
    /// Handles Fetch; returns the response (its `records` fields holding placeholders), its
    /// approximate encoded size without the record sets, and the record sets.
    pub async fn fetch(
        &self,
        version: i16,
        request: KafkaFetch,
    ) -> (FetchResponse, usize, Placeholders) {
        let snapshot = self.shard.metadata();
        let wait_ms = u64::try_from(request.max_wait_ms)
            .unwrap_or(0)
            .min(KAFKA_FETCH_WAIT_MS_MAX);
        let deadline = clock::now() + Duration::from_millis(wait_ms);
        let min_bytes = usize::try_from(request.min_bytes).unwrap_or(0);
        let response_max = usize::try_from(request.max_bytes)
            .unwrap_or(0)
            .min(KAFKA_FETCH_RESPONSE_BYTES_MAX);
        let read_committed = request.isolation_level == 1;

        let mut topics = Vec::with_capacity(request.topics.len());
        let mut items = Vec::new();
        for (index, topic) in request.topics.into_iter().enumerate() {
            let resolved: Result<Arc<str>, ResponseError> = if version >= 13 {
                topic_by_id(&snapshot, topic.topic_id)
                    .map(|t| Arc::clone(&t.name))
                    .ok_or(ResponseError::UnknownTopicId)
            } else {
                Ok(Arc::from(&*topic.topic.0))
            };
            for partition in &topic.partitions {
                let tp = resolved.clone().and_then(|name| {
                    let tp = TopicPartition::new(name, partition.partition);
                    let epoch = snapshot.partition(&tp).map(|p| p.leader_epoch.0);
                    match (version >= 9, partition.current_leader_epoch, epoch) {
                        (true, asked, Some(ours)) if asked >= 0 && asked > ours => {
                            Err(ResponseError::UnknownLeaderEpoch)
                        }
                        (true, asked, Some(ours)) if asked >= 0 && asked < ours => {
                            Err(ResponseError::FencedLeaderEpoch)
                        }
                        _ => Ok(tp),
                    }
                });
                items.push(Item {
                    topic: index,
                    partition: partition.partition,
                    tp,
                    from: Offset(partition.fetch_offset),
                    // At least 1: a partition within the response's budget gets at least
                    // one batch, as before Kafka's KIP-74 limits.
                    max_bytes: usize::try_from(partition.partition_max_bytes)
                        .unwrap_or(0)
                        .clamp(1, response_max.max(1)),
                });
            }
            topics.push(topic);
        }

        let results = self
            .fetch_rounds(&items, min_bytes, response_max, deadline)
            .await;

        // Assemble in request order, stopping at the response byte limit (but always
        // returning at least one batch, so a batch larger than the limit still makes progress).
        let mut total = 0usize;
        let mut full = false;
        let mut partitions: Vec<Vec<PartitionData>> = topics.iter().map(|_| Vec::new()).collect();
        // Items are in request order, which is the order the response encodes them in, so the
        // placeholders are added in encoding order too.
        let mut records = Placeholders::new();
        for (item, result) in items.iter().zip(results) {
            let data = PartitionData::default().with_partition_index(item.partition);
            let data = match result {
                Ok(fetched) => {
                    let mut taken = Vec::new();
                    for batch in fetched.batches {
                        if full || (total > 0 && total + batch.len() > response_max) {
                            full = true;
                            break;
                        }
                        total += batch.len();
                        taken.push(batch);
                    }
                    let data = data
                        .with_high_watermark(fetched.high_watermark.0)
                        .with_last_stable_offset(fetched.high_watermark.0)
                        .with_records(Some(if taken.is_empty() {
                            Bytes::new()
                        } else {
                            records.add(taken)
                        }));
                    if version >= 5 {
                        data.with_log_start_offset(fetched.log_start_offset.0)
                    } else {
                        data
                    }
                }
                Err(error) => data
                    .with_error_code(error.code())
                    .with_high_watermark(-1)
                    .with_last_stable_offset(-1)
                    .with_records(Some(Bytes::new())),
            };
            // Kafka sends no aborted-transaction list to read-uncommitted consumers.
            let data = if read_committed {
                data.with_aborted_transactions(Some(Vec::new()))
            } else {
                data.with_aborted_transactions(None)
            };
            partitions[item.topic].push(data);
        }
        let responses = topics
            .into_iter()
            .zip(partitions)
            .map(|(topic, partitions)| {
                let response = FetchableTopicResponse::default().with_partitions(partitions);
                if version >= 13 {
                    response.with_topic_id(topic.topic_id)
                } else {
                    response.with_topic(topic.topic)
                }
            })
            .collect();
        let capacity = 64 * (items.len() + 1);
        (
            FetchResponse::default().with_responses(responses),
            capacity,
            records,
        )
    }

    /// Reads every item within `budget` bytes, waiting (at most until `deadline`, in a bounded
    /// number of rounds) until they hold `min_bytes` together or one of them fails.
    async fn fetch_rounds(
        &self,
        items: &[Item],
        min_bytes: usize,
        budget: usize,
        deadline: std::time::Instant,
    ) -> Vec<PartitionResult> {
        let mut round = 0;
        loop {
            let results = self.read_items(items, budget).await;
            let bytes: usize = results
                .iter()
                .map(|r| r.as_ref().map_or(0, FetchData::bytes))
                .sum();
            let failed = results.iter().any(Result::is_err);
            let remaining = deadline.saturating_duration_since(clock::now());
            if bytes >= min_bytes
                || failed
                || remaining.is_zero()
                || round == KAFKA_FETCH_ROUNDS_MAX
            {
                return results;
            }
            round += 1;
            if items.is_empty() {
                sluice_engine::rt::sleep(remaining).await;
                continue;
            }
            // Wait for data past what each partition already has.
            let waits = items.iter().zip(&results).map(|(item, result)| {
                let from = result
                    .as_ref()
                    .map_or(item.from, |data| next_offset(item.from, data));
                Box::pin(self.fetch_wait(item, from, remaining))
            });
            futures::future::select_all(waits).await;
        }
    }

    /// Reads the items in request order, in waves of at most [`KAFKA_FETCH_READS_IN_FLIGHT_MAX`]
    /// concurrent reads whose byte limits together fit what is left of `budget`; once the
    /// budget is spent, the remaining items get their offsets and no batches. A read returns at
    /// least one batch, so the batches held at once stay within `budget` plus one batch per
    /// read in flight, however many partitions (or repeats of one) the request lists.
    async fn read_items(&self, items: &[Item], budget: usize) -> Vec<PartitionResult> {
        let mut results = Vec::with_capacity(items.len());
        let mut left = budget;
        while results.len() < items.len() {
            let mut planned = 0usize;
            let wave: Vec<(&Item, usize)> = items[results.len()..]
                .iter()
                .take(KAFKA_FETCH_READS_IN_FLIGHT_MAX)
                .map_while(|item| {
                    let limit = item.max_bytes.min(left - planned);
                    // The first item of a wave always goes (with 0 bytes if none are left).
                    (limit > 0 || planned == 0).then(|| {
                        planned += limit;
                        (item, limit)
                    })
                })
                .collect();
            assert!(!wave.is_empty(), "every wave reads at least one item");
            let reads = wave
                .iter()
                .map(|&(item, limit)| self.fetch_item(item, item.from, limit));
            let read = futures::future::join_all(reads).await;
            let bytes: usize = read
                .iter()
                .map(|r| r.as_ref().map_or(0, FetchData::bytes))
                .sum();
            left = left.saturating_sub(bytes);
            results.extend(read);
        }
        results
    }

    /// Reads one item from `from`; `max_bytes` 0 reads only its offsets.
    async fn fetch_item(&self, item: &Item, from: Offset, max_bytes: usize) -> PartitionResult {
        let tp = item.tp.clone()?;
        let request = FetchRequest {
            from,
            max_bytes,
            max_wait: Duration::ZERO,
        };
        self.shard
            .fetch(tp, request)
            .await
            .map_err(|e| error_code(&e))
    }

    async fn fetch_wait(&self, item: &Item, from: Offset, wait: Duration) {
        let Ok(tp) = item.tp.clone() else { return };
        // One batch is enough to learn that data arrived; the next round reads it properly.
        let request = FetchRequest {
            from,
            max_bytes: 1,
            max_wait: wait,
        };
        let _ = self.shard.fetch(tp, request).await;
    }
}

/// The offset after the last batch of `data`, or `from` if it holds none.
fn next_offset(from: Offset, data: &FetchData) -> Offset {
    data.batches
        .last()
        .and_then(|batch| BatchHeader::parse(batch, usize::MAX).ok())
        .map_or(from, |header| header.next_offset().max(from))
}
