//! The client's view of the cluster: brokers with their per-shard QUIC endpoints, and topics
//! with each partition's leader and owning shard.
//!
//! Main type: [`ClusterMetadata`], an immutable snapshot the client replaces as a whole on
//! every refresh (held in an `Rc`, so readers keep a consistent view across `.await`s).
//!
//! Must not depend on: the runtime or the transport.

use std::collections::BTreeMap;

use super::error::ClientError;
use crate::native::messages::{BrokerEndpoint, PartitionInfo, TopicInfo};

/// A snapshot of cluster metadata as the brokers last described it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    /// The cluster id.
    pub cluster_id: String,
    /// Brokers and their shard endpoints.
    pub brokers: Vec<BrokerEndpoint>,
    /// Topics by name. A refresh for some topics only updates those.
    pub topics: BTreeMap<String, TopicInfo>,
}

impl ClusterMetadata {
    /// Builds a snapshot from a metadata answer covering every topic.
    pub fn from_answer(
        cluster_id: String,
        brokers: Vec<BrokerEndpoint>,
        topics: Vec<TopicInfo>,
    ) -> ClusterMetadata {
        ClusterMetadata {
            cluster_id,
            brokers,
            topics: topics.into_iter().map(|t| (t.name.clone(), t)).collect(),
        }
    }

    /// A new snapshot: this one with the brokers replaced and the `asked` topics replaced by
    /// what the answer says (a topic asked for but absent from the answer is removed).
    pub fn merged(
        &self,
        cluster_id: String,
        brokers: Vec<BrokerEndpoint>,
        asked: &[String],
        topics: Vec<TopicInfo>,
    ) -> ClusterMetadata {
        let mut merged = ClusterMetadata {
            cluster_id,
            brokers,
            topics: self.topics.clone(),
        };
        for name in asked {
            merged.topics.remove(name);
        }
        for topic in topics {
            merged.topics.insert(topic.name.clone(), topic);
        }
        merged
    }

    /// The topic, if known.
    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.get(name)
    }

    /// Partition count of a known topic.
    pub fn partition_count(&self, topic: &str) -> Option<i32> {
        self.topic(topic)
            .map(|t| i32::try_from(t.partitions.len()).expect("partition count fits in i32"))
    }

    /// The partition, or why it cannot be found.
    pub fn partition(&self, topic: &str, partition: i32) -> Result<&PartitionInfo, ClientError> {
        let info = self.topic(topic).ok_or_else(|| ClientError::UnknownTopic {
            topic: topic.to_owned(),
        })?;
        // Partitions are listed in order, so the index is the number; search if a broker
        // ever lists them otherwise.
        let by_index = usize::try_from(partition)
            .ok()
            .and_then(|i| info.partitions.get(i))
            .filter(|p| p.partition == partition);
        by_index
            .or_else(|| info.partitions.iter().find(|p| p.partition == partition))
            .ok_or_else(|| ClientError::UnknownPartition {
                topic: topic.to_owned(),
                partition,
                partitions: i32::try_from(info.partitions.len())
                    .expect("partition count fits in i32"),
            })
    }

    /// The `host:port` of a broker's shard endpoint.
    pub fn shard_endpoint(&self, broker: i32, shard: u16) -> Result<&str, ClientError> {
        self.brokers
            .iter()
            .find(|b| b.id == broker)
            .and_then(|b| b.shards.get(usize::from(shard)))
            .map(String::as_str)
            .ok_or(ClientError::NoEndpoint { broker, shard })
    }

    /// The `host:port` of the shard endpoint that owns the partition on its leader.
    pub fn leader_endpoint(&self, topic: &str, partition: i32) -> Result<&str, ClientError> {
        let info = self.partition(topic, partition)?;
        self.shard_endpoint(info.leader, info.shard)
    }

    /// Shard 0 endpoints of every broker (where metadata and admin requests go).
    pub fn control_endpoints(&self) -> impl Iterator<Item = &str> {
        self.brokers
            .iter()
            .filter_map(|b| b.shards.first().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(partition: i32, shard: u16) -> PartitionInfo {
        PartitionInfo {
            partition,
            leader: 1,
            shard,
            replicas: vec![1],
            isr: vec![1],
            log_start_offset: 0,
            log_end_offset: 0,
            high_watermark: 0,
            size_bytes: 0,
        }
    }

    fn topic(name: &str, partitions: i32) -> TopicInfo {
        TopicInfo {
            name: name.into(),
            partitions: (0..partitions)
                .map(|p| partition(p, (p % 2) as u16))
                .collect(),
            configs: vec![],
        }
    }

    // Goal: lookups route a partition to its leader's shard endpoint, unknown names give the
    // matching error, and a partial refresh replaces exactly the topics it asked for.
    #[test]
    fn lookups_and_merge() {
        let brokers = vec![BrokerEndpoint {
            id: 1,
            shards: vec!["127.0.0.1:9192".into(), "127.0.0.1:9193".into()],
            kafka: "127.0.0.1:9092".into(),
        }];
        let metadata = ClusterMetadata::from_answer(
            "c".into(),
            brokers.clone(),
            vec![topic("a", 3), topic("b", 1)],
        );
        assert_eq!(
            metadata.leader_endpoint("a", 1).expect("known"),
            "127.0.0.1:9193"
        );
        assert_eq!(metadata.partition_count("a"), Some(3));
        assert!(matches!(
            metadata.partition("a", 3),
            Err(ClientError::UnknownPartition { partitions: 3, .. })
        ));
        assert!(matches!(
            metadata.partition("zz", 0),
            Err(ClientError::UnknownTopic { .. })
        ));
        assert_eq!(
            metadata.control_endpoints().collect::<Vec<_>>(),
            vec!["127.0.0.1:9192"]
        );
        let merged = metadata.merged(
            "c".into(),
            brokers,
            &["a".into(), "gone".into()],
            vec![topic("a", 5)],
        );
        assert_eq!(merged.partition_count("a"), Some(5));
        assert_eq!(merged.partition_count("b"), Some(1));
        let merged = merged.merged("c".into(), vec![], &["b".into()], vec![]);
        assert_eq!(merged.partition_count("b"), None);
        assert!(matches!(
            merged.leader_endpoint("a", 0),
            Err(ClientError::NoEndpoint {
                broker: 1,
                shard: 0
            })
        ));
    }
}
