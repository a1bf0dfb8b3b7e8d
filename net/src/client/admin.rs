//! Admin operations on [`Client`]: topics, their configs and partitions, and offsets.
//!
//! Topic-level requests go to a broker's shard 0 (any broker; the cluster forwards them to
//! its metadata writer); partition-level requests (`list_offset`, `delete_records`) go to
//! the shard that owns the partition. All are retried like every client request.
//!
//! Main items: [`NewTopic`], [`ListedOffset`], and the `impl Client` block below.
//!
//! Must not depend on: storage internals.

use bytes::Bytes;

use super::error::ClientError;
use super::handle::{Client, unexpected};
use crate::native::messages::{OffsetQuery, Request, Response, TopicInfo};

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

    async fn admin_done(&self, what: &'static str, request: &Request) -> Result<i64, ClientError> {
        let frame = self.control_request(request).await?;
        match frame.header {
            Response::Done { value } => Ok(value),
            other => Err(unexpected(what, &other)),
        }
    }
}
