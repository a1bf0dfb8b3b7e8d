//! A lean Kafka client for the harness: just what a benchmark needs, written against the
//! `kafka-protocol` crate's codecs so it works with any Kafka-protocol broker (Apache Kafka,
//! Redpanda, Sluice's Kafka listener).
//!
//! - [`conn`]: one TCP connection with pipelined requests and version negotiation.
//! - This module: bootstrap, topic creation, leaders from Metadata, end offsets from
//!   ListOffsets.
//! - [`producer`]: per-partition batches built with `sluice_engine::batch::BatchBuilder`,
//!   one Produce request per broker carrying a batch of each ready partition, pipelined.
//! - [`consumer`]: Fetch loops per broker, records decoded and counted.
//!
//! Not a general client: no retries, no rebalancing, no idempotence. A failed request fails
//! the run (or, for a partition error in a produce answer, is counted as an error).

pub mod conn;
pub mod consumer;
pub mod producer;

use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_engine::rt::{self, clock};

use self::conn::Connection;

/// Requests a connection may have outstanding for admin work.
const ADMIN_IN_FLIGHT: usize = 1;

/// How long topic creation may take to show leaders for every partition.
const TOPIC_READY_WAIT: Duration = Duration::from_secs(30);

/// A topic name for the protocol.
pub fn topic_name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_owned()))
}

/// Resolves `host:port`.
pub fn resolve(address: &str) -> anyhow::Result<SocketAddr> {
    address
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {address}"))?
        .next()
        .with_context(|| format!("{address} resolves to no address"))
}

/// Where a topic's partitions live.
#[derive(Clone, Debug)]
pub struct TopicLayout {
    /// Broker id → address, as the broker advertises it.
    pub brokers: HashMap<i32, SocketAddr>,
    /// Leader broker id of each partition, by partition index.
    pub leaders: Vec<i32>,
}

impl TopicLayout {
    /// The distinct leader brokers, sorted.
    pub fn leader_brokers(&self) -> Vec<i32> {
        let mut ids: Vec<i32> = self.leaders.clone();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// The address of broker `id`.
    pub fn address(&self, id: i32) -> anyhow::Result<SocketAddr> {
        self.brokers
            .get(&id)
            .copied()
            .with_context(|| format!("metadata names no address for broker {id}"))
    }
}

/// Connects to the first bootstrap address that answers.
pub async fn bootstrap(brokers: &[String]) -> anyhow::Result<Connection> {
    let mut last = None;
    for address in brokers {
        match resolve(address) {
            Ok(addr) => match Connection::connect(addr, ADMIN_IN_FLIGHT).await {
                Ok(connection) => return Ok(connection),
                Err(error) => last = Some(error),
            },
            Err(error) => last = Some(error),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no broker address given")))
}

/// Reads the layout of `topic`; `None` when the broker does not know the topic.
pub async fn topic_layout(conn: &Connection, topic: &str) -> anyhow::Result<Option<TopicLayout>> {
    let version = conn.versions().pick(ApiKey::Metadata, 1, 12)?;
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name(topic))),
        ]))
        .with_allow_auto_topic_creation(false);
    let ResponseKind::Metadata(answer) = conn.call(ApiKey::Metadata, version, &request).await?
    else {
        bail!("Metadata answered with something else");
    };
    let brokers = answer
        .brokers
        .iter()
        .map(|b| {
            let address = format!("{}:{}", b.host.as_str(), b.port);
            resolve(&address).map(|addr| (b.node_id.0, addr))
        })
        .collect::<anyhow::Result<HashMap<i32, SocketAddr>>>()?;
    let Some(found) = answer
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
    else {
        return Ok(None);
    };
    if found.error_code == ResponseError::UnknownTopicOrPartition.code() {
        return Ok(None);
    }
    if found.error_code != 0 {
        bail!("metadata of {topic}: error {}", describe(found.error_code));
    }
    let mut leaders = vec![-1; found.partitions.len()];
    for partition in &found.partitions {
        let index = usize::try_from(partition.partition_index)
            .ok()
            .filter(|&i| i < leaders.len())
            .with_context(|| format!("{topic}: odd partition {}", partition.partition_index))?;
        leaders[index] = if partition.error_code == 0 {
            partition.leader_id.0
        } else {
            -1
        };
    }
    Ok(Some(TopicLayout { brokers, leaders }))
}

/// Creates `topic` with `partitions` partitions unless it exists with that many, and waits
/// until every partition has a leader. A topic that exists with another count is an error.
pub async fn ensure_topic(
    conn: &Connection,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<TopicLayout> {
    if topic_layout(conn, topic).await?.is_none() {
        let version = conn.versions().pick(ApiKey::CreateTopics, 2, 7)?;
        let request = CreateTopicsRequest::default()
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(topic_name(topic))
                    .with_num_partitions(partitions)
                    .with_replication_factor(1),
            ])
            .with_timeout_ms(30_000);
        let ResponseKind::CreateTopics(answer) =
            conn.call(ApiKey::CreateTopics, version, &request).await?
        else {
            bail!("CreateTopics answered with something else");
        };
        for result in &answer.topics {
            let exists = result.error_code == ResponseError::TopicAlreadyExists.code();
            if result.error_code != 0 && !exists {
                let message = result
                    .error_message
                    .as_ref()
                    .map_or(String::new(), |m| format!(": {}", m.as_str()));
                bail!(
                    "cannot create {topic}: {}{message}",
                    describe(result.error_code)
                );
            }
        }
    }
    let deadline = clock::now() + TOPIC_READY_WAIT;
    loop {
        if let Some(layout) = topic_layout(conn, topic).await? {
            let count = i32::try_from(layout.leaders.len()).unwrap_or(i32::MAX);
            if count != partitions {
                bail!("topic {topic} exists with {count} partitions, not {partitions}");
            }
            if layout.leaders.iter().all(|&leader| leader >= 0) {
                return Ok(layout);
            }
        }
        if clock::now() >= deadline {
            bail!("topic {topic} has no leader for every partition after {TOPIC_READY_WAIT:?}");
        }
        rt::sleep(Duration::from_millis(50)).await;
    }
}

/// ListOffsets' query for the log start offset.
pub const EARLIEST: i64 = -2;
/// ListOffsets' query for the log end offset.
pub const LATEST: i64 = -1;

/// The offset of every partition at `at` ([`EARLIEST`], [`LATEST`] or a timestamp), asking
/// each leader.
pub async fn offsets_at(topic: &str, layout: &TopicLayout, at: i64) -> anyhow::Result<Vec<i64>> {
    let mut offsets = vec![-1i64; layout.leaders.len()];
    for broker in layout.leader_brokers() {
        let conn = Connection::connect(layout.address(broker)?, ADMIN_IN_FLIGHT).await?;
        let version = conn.versions().pick(ApiKey::ListOffsets, 1, 6)?;
        let partitions = layout
            .leaders
            .iter()
            .enumerate()
            .filter(|&(_, &leader)| leader == broker)
            .map(|(index, _)| {
                ListOffsetsPartition::default()
                    .with_partition_index(index as i32)
                    .with_current_leader_epoch(-1)
                    .with_timestamp(at)
            })
            .collect();
        let request = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(topic_name(topic))
                    .with_partitions(partitions),
            ]);
        let ResponseKind::ListOffsets(answer) =
            conn.call(ApiKey::ListOffsets, version, &request).await?
        else {
            bail!("ListOffsets answered with something else");
        };
        for topic_answer in &answer.topics {
            for partition in &topic_answer.partitions {
                if partition.error_code != 0 {
                    bail!(
                        "end offset of {topic}-{}: {}",
                        partition.partition_index,
                        describe(partition.error_code)
                    );
                }
                if let Some(slot) = usize::try_from(partition.partition_index)
                    .ok()
                    .and_then(|i| offsets.get_mut(i))
                {
                    *slot = partition.offset;
                }
            }
        }
    }
    if let Some(missing) = offsets.iter().position(|&o| o < 0) {
        bail!("no end offset for {topic}-{missing}");
    }
    Ok(offsets)
}

/// A Kafka error code with its name.
pub fn describe(code: i16) -> String {
    match ResponseError::try_from_code(code) {
        Some(error) => format!("{error:?} ({code})"),
        None => format!("error code {code}"),
    }
}
