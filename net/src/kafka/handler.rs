//! Dispatch: one decoded request in, one response (or none, or "close") out.
//!
//! [`Context`] is what every handler needs: the shard, the listener config, and helpers to
//! describe this broker. It lives on one shard (`!Send`, shared by `Rc` among that shard's
//! connections).

use std::rc::Rc;

use kafka_protocol::messages::{RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;
use sluice_cluster::metadata::MetadataSnapshot;
use sluice_cluster::shard::Shard;

use super::KafkaConfig;
use super::codec::Request;
use super::splice::Placeholders;
use super::versions::api_versions_response;

/// What to send back for one request.
// Moved once per request; boxing the large variant would add an allocation per request.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// Encode and send this response; `capacity` hints its encoded size.
    Respond {
        /// The body.
        body: ResponseKind,
        /// Encoded size hint in bytes.
        capacity: usize,
    },
    /// Encode and send this response with the record sets of `records` spliced in for their
    /// placeholders (a fetch; see [`super::splice`]).
    RespondSpliced {
        /// The body, its `records` fields holding placeholders.
        body: ResponseKind,
        /// Encoded size hint in bytes, record sets excluded.
        capacity: usize,
        /// The record sets.
        records: Placeholders,
    },
    /// Send nothing (produce with acks=0).
    Silent,
    /// Close the connection (produce with acks=0 that failed: the client learns by the close,
    /// as with Kafka).
    Close(String),
}

impl Outcome {
    fn small(body: ResponseKind) -> Outcome {
        Outcome::Respond {
            body,
            capacity: 256,
        }
    }
}

/// A broker as clients should reach it.
pub struct BrokerAddress {
    /// Node id.
    pub id: i32,
    /// Host to connect to.
    pub host: StrBytes,
    /// Port.
    pub port: i32,
}

/// Per-shard state shared by the Kafka connections of that shard.
pub struct Context {
    /// The shard this listener runs on.
    pub shard: Rc<Shard>,
    /// Listener configuration.
    pub config: KafkaConfig,
}

impl Context {
    /// Builds the context for one shard.
    pub fn new(shard: Rc<Shard>, config: KafkaConfig) -> Context {
        Context { shard, config }
    }

    /// Every broker clients may connect to: this one at its advertised address first, then
    /// the others the metadata knows.
    pub fn brokers(&self, snapshot: &MetadataSnapshot) -> Vec<BrokerAddress> {
        let node = self.shard.node();
        let own = BrokerAddress {
            id: node.0,
            host: StrBytes::from_string(self.config.advertise.ip().to_string()),
            port: i32::from(self.config.advertise.port()),
        };
        let others = snapshot
            .brokers
            .iter()
            .filter(|b| b.id != node)
            .map(|b| BrokerAddress {
                id: b.id.0,
                host: StrBytes::from_string(b.kafka.ip().to_string()),
                port: i32::from(b.kafka.port()),
            });
        std::iter::once(own).chain(others).collect()
    }

    /// The controller clients should be told about (this broker when alone).
    pub fn controller(&self, snapshot: &MetadataSnapshot) -> i32 {
        if snapshot.brokers.is_empty() {
            self.shard.node().0
        } else {
            snapshot.controller.0
        }
    }

    /// Handles one request.
    pub async fn handle(&self, request: Request) -> Outcome {
        let version = request.header.request_api_version;
        match request.body {
            RequestKind::ApiVersions(_) => {
                Outcome::small(ResponseKind::ApiVersions(api_versions_response(None)))
            }
            RequestKind::Metadata(body) => {
                Outcome::small(ResponseKind::Metadata(self.metadata(version, body).await))
            }
            RequestKind::Produce(body) => self.produce_start(version, body).await,
            RequestKind::Fetch(body) => {
                let (response, capacity, records) = self.fetch(version, body).await;
                Outcome::RespondSpliced {
                    body: ResponseKind::Fetch(response),
                    capacity,
                    records,
                }
            }
            RequestKind::ListOffsets(body) => Outcome::small(ResponseKind::ListOffsets(
                self.list_offsets(version, body).await,
            )),
            RequestKind::DeleteRecords(body) => {
                Outcome::small(ResponseKind::DeleteRecords(self.delete_records(body).await))
            }
            RequestKind::OffsetForLeaderEpoch(body) => Outcome::small(
                ResponseKind::OffsetForLeaderEpoch(self.offset_for_leader_epoch(body).await),
            ),
            RequestKind::CreateTopics(body) => Outcome::small(ResponseKind::CreateTopics(
                self.create_topics(version, body).await,
            )),
            RequestKind::DeleteTopics(body) => Outcome::small(ResponseKind::DeleteTopics(
                self.delete_topics(version, body).await,
            )),
            RequestKind::CreatePartitions(body) => Outcome::small(ResponseKind::CreatePartitions(
                self.create_partitions(body).await,
            )),
            RequestKind::DescribeConfigs(body) => Outcome::small(ResponseKind::DescribeConfigs(
                self.describe_configs(version, body),
            )),
            RequestKind::AlterConfigs(body) => {
                Outcome::small(ResponseKind::AlterConfigs(self.alter_configs(body).await))
            }
            RequestKind::IncrementalAlterConfigs(body) => Outcome::small(
                ResponseKind::IncrementalAlterConfigs(self.incremental_alter_configs(body).await),
            ),
            RequestKind::DescribeCluster(body) => Outcome::small(ResponseKind::DescribeCluster(
                self.describe_cluster(version, body),
            )),
            RequestKind::FindCoordinator(body) => Outcome::small(ResponseKind::FindCoordinator(
                self.find_coordinator(version, body),
            )),
            RequestKind::JoinGroup(body) => {
                let client_id = request.header.client_id.as_deref().unwrap_or("");
                // Kafka reports a member's host as "/" followed by its IP address.
                let host = request
                    .peer
                    .map_or_else(String::new, |peer| format!("/{}", peer.ip()));
                Outcome::small(ResponseKind::JoinGroup(
                    self.join_group(version, body, client_id, &host).await,
                ))
            }
            RequestKind::SyncGroup(body) => Outcome::small(ResponseKind::SyncGroup(
                self.sync_group(version, body).await,
            )),
            RequestKind::Heartbeat(body) => {
                Outcome::small(ResponseKind::Heartbeat(self.heartbeat(body).await))
            }
            RequestKind::LeaveGroup(body) => Outcome::small(ResponseKind::LeaveGroup(
                self.leave_group(version, body).await,
            )),
            RequestKind::OffsetCommit(body) => {
                Outcome::small(ResponseKind::OffsetCommit(self.offset_commit(body).await))
            }
            RequestKind::OffsetFetch(body) => Outcome::small(ResponseKind::OffsetFetch(
                self.offset_fetch(version, body).await,
            )),
            RequestKind::ListGroups(body) => Outcome::small(ResponseKind::ListGroups(
                self.list_groups(version, body).await,
            )),
            RequestKind::DescribeGroups(body) => Outcome::small(ResponseKind::DescribeGroups(
                self.describe_groups(version, body).await,
            )),
            RequestKind::DeleteGroups(body) => {
                Outcome::small(ResponseKind::DeleteGroups(self.delete_groups(body).await))
            }
            RequestKind::OffsetDelete(body) => {
                Outcome::small(ResponseKind::OffsetDelete(self.offset_delete(body).await))
            }
            _ => {
                // decode_request lets only supported APIs through; reaching here is a gap in
                // the supported-API table, answered by closing this connection only.
                Outcome::Close(format!("no handler for {:?}", request.api))
            }
        }
    }
}
