//! Protocol-neutral helpers over the shard API, shared by the Kafka listener and the native
//! server so both protocols behave alike.
//!
//! Main items: [`DomainError`] (a borrowed domain error, the input of each protocol's one
//! error-code mapping: `kafka::error_code` and `native::error::error_code`) and
//! [`auto_create_topic`] (the `auto_create_topics` rule both listeners apply to metadata
//! requests).
//!
//! Must not depend on: any wire format or socket.

use std::collections::BTreeMap;
use std::sync::Arc;

use sluice_cluster::group::GroupError;
use sluice_cluster::metadata::{MetadataCommand, MetadataError, MetadataSnapshot};
use sluice_cluster::shard::{FetchError, ProduceError, Shard};

/// A domain error from the shard API, borrowed for mapping to a protocol's error code.
#[derive(Clone, Copy, Debug)]
pub enum DomainError<'a> {
    /// A produce to one partition failed.
    Produce(&'a ProduceError),
    /// A fetch, offset lookup or record deletion on one partition failed.
    Fetch(&'a FetchError),
    /// A metadata change (topics, partitions, configs) was refused.
    Metadata(&'a MetadataError),
    /// A consumer group request failed.
    Group(&'a GroupError),
}

impl<'a> From<&'a GroupError> for DomainError<'a> {
    fn from(error: &'a GroupError) -> Self {
        DomainError::Group(error)
    }
}

impl<'a> From<&'a ProduceError> for DomainError<'a> {
    fn from(error: &'a ProduceError) -> Self {
        DomainError::Produce(error)
    }
}

impl<'a> From<&'a FetchError> for DomainError<'a> {
    fn from(error: &'a FetchError) -> Self {
        DomainError::Fetch(error)
    }
}

impl<'a> From<&'a MetadataError> for DomainError<'a> {
    fn from(error: &'a MetadataError) -> Self {
        DomainError::Metadata(error)
    }
}

/// Creates topic `name` with `partitions` partitions and replication 1, as a metadata request
/// for a missing topic does when `auto_create_topics` is on (Kafka's
/// `auto.create.topics.enable`).
///
/// Returns once every shard has opened the new partitions. A topic that another request
/// created meanwhile is not an error: the current snapshot is returned.
pub async fn auto_create_topic(
    shard: &Shard,
    name: &str,
    partitions: i32,
) -> Result<Arc<MetadataSnapshot>, MetadataError> {
    let command = MetadataCommand::CreateTopic {
        name: name.to_owned(),
        partitions,
        replication: 1,
        overrides: BTreeMap::new(),
    };
    match shard.command(command).await {
        Ok(snapshot) => {
            tracing::info!(topic = name, "auto-created topic");
            Ok(snapshot)
        }
        Err(MetadataError::TopicExists(_)) => Ok(shard.metadata()),
        Err(error) => {
            tracing::warn!(topic = name, %error, "auto-creating topic failed");
            Err(error)
        }
    }
}
