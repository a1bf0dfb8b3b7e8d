//! Metadata, DescribeCluster and FindCoordinator: describing the cluster to clients.
//!
//! Metadata advertises this broker at the configured address with the shard's node id, and
//! auto-creates requested topics when `auto_create_topics` is on (the create completes before
//! the answer, so the client sees the new topic's partitions at once). FindCoordinator answers
//! COORDINATOR_NOT_AVAILABLE with a message until consumer groups exist.

use std::sync::Arc;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_cluster_response::{
    DescribeClusterBroker, DescribeClusterResponse,
};
use kafka_protocol::messages::metadata_request::MetadataRequest;
use kafka_protocol::messages::metadata_response::{
    MetadataResponse, MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_cluster::group::is_internal_topic;
use sluice_cluster::metadata::{MetadataSnapshot, TopicMeta, validate_topic_name};

use super::handler::Context;

/// Looks up a topic by its id (a linear scan: requests by id name few topics).
pub fn topic_by_id(snapshot: &MetadataSnapshot, id: uuid::Uuid) -> Option<&TopicMeta> {
    snapshot.topics.values().find(|topic| topic.id.0 == id)
}

/// A topic name as the protocol carries it.
pub fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

/// Broker ids as the protocol carries them.
fn broker_ids(ids: &[sluice_engine::BrokerId]) -> Vec<BrokerId> {
    ids.iter().map(|id| BrokerId(id.0)).collect()
}

impl Context {
    /// Answers Metadata, creating missing topics first when allowed.
    pub async fn metadata(&self, version: i16, request: MetadataRequest) -> MetadataResponse {
        let mut snapshot = self.shard.metadata();
        // v0: an empty list means all topics; v1+: null means all, empty means none.
        let wanted = match request.topics {
            Some(topics) if version == 0 && topics.is_empty() => None,
            other => other,
        };
        if let Some(topics) = &wanted
            && self.config.auto_create_topics
            && request.allow_auto_topic_creation
        {
            for topic in topics {
                let Some(name) = &topic.name else { continue };
                if snapshot.topic(name).is_none() && validate_topic_name(name).is_ok() {
                    snapshot = self.auto_create(name).await.unwrap_or(snapshot);
                }
            }
        }
        let topics = match &wanted {
            None => snapshot
                .topics
                .values()
                .map(|topic| self.topic_metadata(version, topic))
                .collect(),
            Some(topics) => topics
                .iter()
                .map(|wanted| match &wanted.name {
                    Some(name) => match snapshot.topic(name) {
                        Some(topic) => self.topic_metadata(version, topic),
                        None => {
                            let error = match validate_topic_name(name) {
                                Ok(()) => ResponseError::UnknownTopicOrPartition,
                                Err(_) => ResponseError::InvalidTopicException,
                            };
                            MetadataResponseTopic::default()
                                .with_error_code(error.code())
                                .with_name(Some(name.clone()))
                        }
                    },
                    None => match topic_by_id(&snapshot, wanted.topic_id) {
                        Some(topic) => self.topic_metadata(version, topic),
                        None => MetadataResponseTopic::default()
                            .with_error_code(ResponseError::UnknownTopicId.code())
                            .with_name(None)
                            .with_topic_id(wanted.topic_id),
                    },
                })
                .collect(),
        };
        let brokers = self
            .brokers(&snapshot)
            .into_iter()
            .map(|b| {
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.id))
                    .with_host(b.host)
                    .with_port(b.port)
            })
            .collect();
        let mut response = MetadataResponse::default()
            .with_brokers(brokers)
            .with_topics(topics);
        if version >= 1 {
            response = response.with_controller_id(BrokerId(self.controller(&snapshot)));
        }
        if version >= 2 {
            response =
                response.with_cluster_id(Some(StrBytes::from_string(snapshot.cluster_id.clone())));
        }
        response
    }

    async fn auto_create(&self, name: &str) -> Option<Arc<MetadataSnapshot>> {
        crate::domain::auto_create_topic(&self.shard, name, self.config.default_partitions)
            .await
            .ok()
    }

    fn topic_metadata(&self, version: i16, topic: &TopicMeta) -> MetadataResponseTopic {
        let partitions = topic
            .partitions
            .iter()
            .map(|p| {
                // Cut off from the controller, this broker's view is stale: no leader is
                // named, so clients look again (at another broker).
                let isolated = self.shard.isolated();
                let leader = if isolated { -1 } else { p.leader.0 };
                let partition = MetadataResponsePartition::default()
                    .with_partition_index(p.id.0)
                    .with_error_code(if isolated {
                        ResponseError::LeaderNotAvailable.code()
                    } else {
                        0
                    })
                    .with_leader_id(BrokerId(leader))
                    .with_replica_nodes(broker_ids(&p.replicas))
                    .with_isr_nodes(broker_ids(&p.isr));
                if version >= 7 {
                    partition.with_leader_epoch(p.leader_epoch.0)
                } else {
                    partition
                }
            })
            .collect();
        let response = MetadataResponseTopic::default()
            .with_name(Some(topic_name(&topic.name)))
            .with_is_internal(is_internal_topic(&topic.name))
            .with_partitions(partitions);
        if version >= 10 {
            response.with_topic_id(topic.id.0)
        } else {
            response
        }
    }

    /// Answers DescribeCluster with the brokers Metadata would list.
    pub fn describe_cluster(
        &self,
        version: i16,
        request: DescribeClusterRequest,
    ) -> DescribeClusterResponse {
        let snapshot = self.shard.metadata();
        let response = DescribeClusterResponse::default()
            .with_cluster_id(StrBytes::from_string(snapshot.cluster_id.clone()))
            .with_controller_id(BrokerId(self.controller(&snapshot)));
        // Endpoint type 1 is brokers; 2 (controllers) has no separate endpoint here.
        if version >= 1 && request.endpoint_type != 1 {
            return response
                .with_endpoint_type(request.endpoint_type)
                .with_error_code(ResponseError::UnsupportedEndpointType.code())
                .with_error_message(Some(StrBytes::from_static_str(
                    "only the broker endpoint type is served",
                )));
        }
        let brokers = self
            .brokers(&snapshot)
            .into_iter()
            .map(|b| {
                DescribeClusterBroker::default()
                    .with_broker_id(BrokerId(b.id))
                    .with_host(b.host)
                    .with_port(b.port)
            })
            .collect();
        response.with_brokers(brokers)
    }
}
