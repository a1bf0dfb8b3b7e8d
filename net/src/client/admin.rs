//! Admin operations on [`Client`]: topics, their configs and partitions, offsets, and
//! consumer groups (native and Kafka's: list, describe, delete, committed offsets).
//!
//! Topic-level requests go to a broker's shard 0 (any broker; the cluster forwards them to
//! its metadata writer), and so do group requests (the broker forwards them to the group's
//! coordinator); partition-level requests (`list_offset`, `delete_records`) go to
//! the shard that owns the partition. All are retried like every client request.
//!
//! Main items: [`NewTopic`], [`ListedOffset`], and the `impl Client` block below.
//!
//! Must not depend on: storage internals.

use bytes::Bytes;

use super::error::ClientError;
use super::handle::{Client, unexpected};
use crate::native::messages::{
    CommittedOffsetInfo, GroupInfo, GroupSummary, OffsetCommit, OffsetQuery, Request, Response,
    TopicInfo, TopicPartitions,
};

/// A topic to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTopic {
    /// Its name.
    pub name: String,
    /// Partition count, at least 1.
    pub partitions: i32,
    /// Replication factor, at least 1.
    pub replication: i16,
    /// Topic config overrides (`retention.ms`, `max.message.bytes`, ...).
    pub configs: Vec<(String, String)>,
}

impl NewTopic {
    /// A topic with `partitions` partitions, replication 1 and no config override.
    pub fn new(name: impl Into<String>, partitions: i32) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions,
            replication: 1,
            configs: Vec::new(),
        }
    }

    /// Adds a config override.
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> NewTopic {
        self.configs.push((key.into(), value.into()));
        self
    }
}

/// An offset found by [`Client::list_offset`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListedOffset {
    /// The offset; -1 when looking up a timestamp later than every record.
    pub offset: i64,
    /// The timestamp of the record at `offset` when looked up by time, else -1.
    pub timestamp: i64,
}

impl Client {
    /// Creates a topic.
    pub async fn create_topic(&self, topic: NewTopic) -> Result<(), ClientError> {
        let name = topic.name.clone();
        let request = Request::CreateTopic {
            name: topic.name,
            partitions: topic.partitions,
            replication: topic.replication,
            configs: topic.configs,
        };
        self.admin_done("create topic", &request).await?;
        self.forget_topic(&name);
        Ok(())
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        let request = Request::DeleteTopic {
            name: name.to_owned(),
        };
        self.admin_done("delete topic", &request).await?;
        self.forget_topic(name);
        Ok(())
    }

    /// Names of every topic, sorted.
    pub async fn list_topics(&self) -> Result<Vec<String>, ClientError> {
        let metadata = self.refresh_metadata().await?;
        Ok(metadata.topics.keys().cloned().collect())
    }

    /// A topic's partitions (owning shard, leader, replicas, ISR, start and end offsets, size
    /// on disk) and its effective configs.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo, ClientError> {
        let request = Request::DescribeTopic {
            name: name.to_owned(),
        };
        let frame = self.control_request(&request).await?;
        match frame.header {
            Response::Topic { topic } => Ok(topic),
            other => Err(unexpected("describe topic", &other)),
        }
    }

    /// Sets (`Some`) or removes (`None`) topic config overrides.
    pub async fn alter_config(
        &self,
        name: &str,
        changes: Vec<(String, Option<String>)>,
    ) -> Result<(), ClientError> {
        let request = Request::AlterConfig {
            name: name.to_owned(),
            changes,
        };
        self.admin_done("alter config", &request).await.map(|_| ())
    }

    /// Grows a topic to `total` partitions.
    pub async fn create_partitions(&self, name: &str, total: i32) -> Result<(), ClientError> {
        let request = Request::CreatePartitions {
            name: name.to_owned(),
            total,
        };
        self.admin_done("create partitions", &request).await?;
        self.forget_topic(name);
        Ok(())
    }

    /// Deletes the records of a partition below `before` (-1: below the high watermark);
    /// returns the new log start offset.
    pub async fn delete_records(
        &self,
        topic: &str,
        partition: i32,
        before: i64,
    ) -> Result<i64, ClientError> {
        let request = Request::DeleteRecords {
            topic: topic.to_owned(),
            partition,
            before,
        };
        let timeout = self.config().request_timeout;
        let frame = self
            .partition_request(topic, partition, &request, Bytes::new(), timeout)
            .await?;
        match frame.header {
            Response::Done { value } => Ok(value),
            other => Err(unexpected("delete records", &other)),
        }
    }

    /// The earliest offset, the latest (the high watermark), or the first offset whose
    /// record has a timestamp at or after a given time.
    pub async fn list_offset(
        &self,
        topic: &str,
        partition: i32,
        query: OffsetQuery,
    ) -> Result<ListedOffset, ClientError> {
        let request = Request::ListOffset {
            topic: topic.to_owned(),
            partition,
            query,
        };
        let timeout = self.config().request_timeout;
        let frame = self
            .partition_request(topic, partition, &request, Bytes::new(), timeout)
            .await?;
        match frame.header {
            Response::Offset { offset, timestamp } => Ok(ListedOffset { offset, timestamp }),
            other => Err(unexpected("list offset", &other)),
        }
    }

    /// Every group of the cluster, native and Kafka (classic), sorted by id.
    pub async fn list_groups(&self) -> Result<Vec<GroupSummary>, ClientError> {
        let frame = self.control_request(&Request::ListGroups).await?;
        match frame.header {
            Response::Groups { groups } => Ok(groups),
            other => Err(unexpected("list groups", &other)),
        }
    }

    /// A group's state, members and their partitions (`GroupNotFound` when it does not exist).
    pub async fn describe_group(&self, group_id: &str) -> Result<GroupInfo, ClientError> {
        let request = Request::DescribeGroup {
            group_id: group_id.to_owned(),
        };
        let frame = self.control_request(&request).await?;
        match frame.header {
            Response::Group { group } => Ok(*group),
            other => Err(unexpected("describe group", &other)),
        }
    }

    /// Deletes a group that has no members, with its committed offsets.
    pub async fn delete_group(&self, group_id: &str) -> Result<(), ClientError> {
        let request = Request::DeleteGroup {
            group_id: group_id.to_owned(),
        };
        self.admin_done("delete group", &request).await.map(|_| ())
    }

    /// A group's committed offsets: of `partitions`, or of every partition it has one for
    /// (`None`). A partition without one has offset -1.
    pub async fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: Option<&[(&str, i32)]>,
    ) -> Result<Vec<CommittedOffsetInfo>, ClientError> {
        let request = Request::FetchOffsets {
            group_id: group_id.to_owned(),
            partitions: partitions.map(|p| TopicPartitions::group(p.iter().copied())),
        };
        let frame = self.control_request(&request).await?;
        match frame.header {
            Response::Offsets { offsets } => Ok(offsets),
            other => Err(unexpected("fetch offsets", &other)),
        }
    }

    /// Commits `(topic, partition, next offset)` for a group outside group membership (an
    /// offset reset): the broker accepts it only while the group has no members. Fails with
    /// the first partition's error.
    pub async fn commit_offsets(
        &self,
        group_id: &str,
        offsets: &[(&str, i32, i64)],
    ) -> Result<(), ClientError> {
        let request = Request::CommitOffsets {
            group_id: group_id.to_owned(),
            member_id: String::new(),
            member_epoch: -1,
            offsets: offsets
                .iter()
                .map(|(topic, partition, offset)| OffsetCommit {
                    topic: (*topic).to_owned(),
                    partition: *partition,
                    offset: *offset,
                    metadata: String::new(),
                })
                .collect(),
        };
        let frame = self.control_request(&request).await?;
        let Response::Committed { partitions } = frame.header else {
            return Err(unexpected("commit offsets", &frame.header));
        };
        match partitions.into_iter().find(|p| p.error.is_some()) {
            Some(failed) => Err(ClientError::Server {
                code: failed.error.expect("found by its error"),
                message: format!(
                    "cannot commit {}-{} for group {group_id}",
                    failed.topic, failed.partition
                ),
            }),
            None => Ok(()),
        }
    }

    /// Sends any request without a payload to a broker's control endpoint (shard 0, which
    /// forwards what it does not answer itself) and returns the answer header, an error
    /// answer included. Low level: for tools and tests that need the protocol's exact
    /// answers; retriable failures are retried like every control request.
    pub async fn control(&self, request: &Request) -> Result<Response, ClientError> {
        match self.control_request(request).await {
            Ok(frame) => Ok(frame.header),
            Err(ClientError::Server { code, message }) => Ok(Response::Error { code, message }),
            Err(error) => Err(error),
        }
    }

    async fn admin_done(&self, what: &'static str, request: &Request) -> Result<i64, ClientError> {
        let frame = self.control_request(request).await?;
        match frame.header {
            Response::Done { value } => Ok(value),
            other => Err(unexpected(what, &other)),
        }
    }
}
