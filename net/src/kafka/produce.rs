//! Produce: split a request per partition, append through the shard API (which forwards to
//! the owning shard), join the answers.
//!
//! The appends are issued when the request is read and acknowledged in a task, so a
//! connection may have several produces in flight (up to `KAFKA_INFLIGHT_REQUESTS_MAX`) while
//! they still append in the order the client sent them.
//!
//! The `records` bytes of each partition are a slice of the request frame and go to
//! [`Shard::produce_start`](sluice_cluster::shard::Shard::produce_start) unchanged: the broker
//! validates (CRC, framing, size) but never decompresses or re-encodes; producer id, epoch and
//! sequence are stored as sent.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::{Either, join_all, ready};

use kafka_protocol::ResponseError;
use kafka_protocol::messages::produce_request::ProduceRequest;
use kafka_protocol::messages::produce_response::{
    PartitionProduceResponse, ProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_cluster::shard::{Acks, ProduceError, ProduceOk};
use sluice_engine::TopicPartition;

use sluice_cluster::group::is_internal_topic;

use super::error::error_code;
use super::handler::{Context, Outcome};

impl Context {
    /// Handles Produce in two steps: every partition's append is issued before this returns
    /// (so a connection's produces append in the order they arrived, while several of them are
    /// in flight), and the returned future waits for the acknowledgements and builds the
    /// response. With acks=0 nothing is answered, and a failure closes the connection.
    pub fn produce_start(
        &self,
        version: i16,
        request: ProduceRequest,
    ) -> impl Future<Output = Outcome> + use<> {
        // Only the record sets may keep the request frame alive past this point: a record set
        // that is the frame's last reference is appended without a copy (the log rewrites its
        // header in place).
        let ProduceRequest {
            acks,
            topic_data,
            transactional_id,
            ..
        } = request;
        drop(transactional_id);
        // The log takes a record set without a copy only when it is the frame's last reference;
        // with several partitions that would be the last one issued, which would then hold the
        // whole frame in the batch cache. So a request of several partitions keeps the frame
        // referenced until all are issued, and every record set is copied (into exactly its
        // own size).
        let partition_count: usize = topic_data.iter().map(|t| t.partition_data.len()).sum();
        let keep_shared = (partition_count > 1)
            .then(|| {
                topic_data
                    .iter()
                    .flat_map(|t| &t.partition_data)
                    .find_map(|p| p.records.clone())
            })
            .flatten();
        let acks = match acks {
            0 => Some(Acks::None),
            1 => Some(Acks::Leader),
            -1 => Some(Acks::All),
            _ => None,
        };
        let mut appends = Vec::new();
        let mut shape = Vec::with_capacity(topic_data.len());
        for topic in topic_data {
            let name: Arc<str> = Arc::from(&*topic.name.0);
            drop(topic.name);
            // Clients may not write the internal topics (Kafka answers the same).
            let internal = is_internal_topic(&name);
            let mut partitions = Vec::with_capacity(topic.partition_data.len());
            for partition in topic.partition_data {
                partitions.push(partition.index);
                let tp = TopicPartition::new(Arc::clone(&name), partition.index);
                let records = partition.records.unwrap_or_default();
                appends.push(match acks {
                    _ if internal => Either::Left(ready(Err(ResponseError::InvalidTopicException))),
                    Some(acks) => {
                        Either::Right(self.shard.produce_start(tp, records, acks).map(Ok))
                    }
                    None => Either::Left(ready(Err(ResponseError::InvalidRequiredAcks))),
                });
            }
            shape.push((name, partitions));
        }
        drop(keep_shared);
        async move {
            let mut results = join_all(appends).await.into_iter();
            if acks == Some(Acks::None) {
                let failed = results.by_ref().find_map(|r| match r {
                    Ok(Err(error)) => Some(error),
                    _ => None,
                });
                return match failed {
                    Some(error) => Outcome::Close(format!("acks=0 produce failed: {error}")),
                    None => Outcome::Silent,
                };
            }
            let responses = shape
                .into_iter()
                .map(|(name, partitions)| {
                    let partition_responses = partitions
                        .into_iter()
                        .map(|index| {
                            let result = results.next().expect("one result per partition");
                            partition_response(version, index, result)
                        })
                        .collect();
                    TopicProduceResponse::default()
                        .with_name(TopicName(StrBytes::from_string(name.to_string())))
                        .with_partition_responses(partition_responses)
                })
                .collect();
            Outcome::Respond {
                body: ResponseKind::Produce(ProduceResponse::default().with_responses(responses)),
                capacity: 256,
            }
        }
    }
}

fn partition_response(
    version: i16,
    index: i32,
    result: Result<Result<ProduceOk, ProduceError>, ResponseError>,
) -> PartitionProduceResponse {
    let response = PartitionProduceResponse::default().with_index(index);
    let (error, text) = match result {
        Ok(Ok(ok)) => {
            let response = response
                .with_base_offset(ok.base_offset.0)
                .with_log_append_time_ms(ok.log_append_time.map_or(-1, |t| t.0));
            return if version >= 5 {
                response.with_log_start_offset(ok.log_start_offset.0)
            } else {
                response
            };
        }
        Ok(Err(error)) => (error_code(&error), error.to_string()),
        Err(error) => (error, error.to_string()),
    };
    let response = response.with_error_code(error.code()).with_base_offset(-1);
    if version >= 8 {
        response.with_error_message(Some(StrBytes::from_string(text)))
    } else {
        response
    }
}
