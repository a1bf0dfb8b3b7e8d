//! The one mapping from Sluice's domain errors to Kafka error codes (STYLE §6).
//!
//! Handlers never pick a code for a domain error themselves: they call [`error_code`]. Codes
//! that describe the request rather than a domain failure (an invalid `acks`, an unknown topic
//! id, an unsupported resource type) are chosen where the request is read.
//!
//! Must not depend on: sockets or the connection loop.

use kafka_protocol::ResponseError;
use sluice_cluster::config::ConfigError;
use sluice_cluster::group::GroupError;
use sluice_cluster::metadata::MetadataError;
use sluice_cluster::shard::{FetchError, ProduceError};
use sluice_engine::batch::BatchError;

pub use crate::domain::DomainError;

/// The Kafka error code a client sees for `error`.
///
/// Retriable conditions (a full shard inbox, a broker shutting down) map to codes Kafka clients
/// retry; errors in what the client sent map to non-retriable codes where Kafka has one.
pub fn error_code<'a>(error: impl Into<DomainError<'a>>) -> ResponseError {
    match error.into() {
        DomainError::Produce(error) => match error {
            ProduceError::UnknownTopicOrPartition(_) => ResponseError::UnknownTopicOrPartition,
            ProduceError::Corrupt(batch) => batch_error_code(batch),
            ProduceError::MessageTooLarge { .. } => ResponseError::MessageTooLarge,
            ProduceError::Storage(_) => ResponseError::KafkaStorageError,
            // The owner's inbox is full: Kafka's retriable "did not complete in time".
            ProduceError::Overloaded => ResponseError::RequestTimedOut,
            // Clients refresh metadata and retry, as in Kafka's controlled shutdown.
            ProduceError::ShuttingDown => ResponseError::NotLeaderOrFollower,
            ProduceError::NotLeader(_) => ResponseError::NotLeaderOrFollower,
            ProduceError::NotEnoughReplicas { .. } => ResponseError::NotEnoughReplicas,
            ProduceError::NotEnoughReplicasAfterAppend(_) => {
                ResponseError::NotEnoughReplicasAfterAppend
            }
            ProduceError::Timeout(_) => ResponseError::RequestTimedOut,
            _ => ResponseError::UnknownServerError,
        },
        DomainError::Fetch(error) => match error {
            FetchError::UnknownTopicOrPartition(_) => ResponseError::UnknownTopicOrPartition,
            FetchError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
            FetchError::Storage(_) => ResponseError::KafkaStorageError,
            FetchError::Overloaded => ResponseError::RequestTimedOut,
            FetchError::NotLeader(_) => ResponseError::NotLeaderOrFollower,
            FetchError::InternalTopic(_) => ResponseError::InvalidTopicException,
            // Retriable; ListOffsets before v5 answers LEADER_NOT_AVAILABLE instead, as Kafka
            // does (`kafka/offsets.rs`).
            FetchError::OffsetNotAvailable(_) => ResponseError::OffsetNotAvailable,
            _ => ResponseError::UnknownServerError,
        },
        DomainError::Metadata(error) => match error {
            MetadataError::TopicExists(_) => ResponseError::TopicAlreadyExists,
            MetadataError::UnknownTopic(_) => ResponseError::UnknownTopicOrPartition,
            MetadataError::InvalidTopicName(_) => ResponseError::InvalidTopicException,
            MetadataError::InvalidPartitions(_) => ResponseError::InvalidPartitions,
            MetadataError::InvalidReplicationFactor { .. } => {
                ResponseError::InvalidReplicationFactor
            }
            MetadataError::Config(
                ConfigError::UnknownKey(_) | ConfigError::InvalidValue { .. },
            ) => ResponseError::InvalidConfig,
            MetadataError::Storage(_) => ResponseError::KafkaStorageError,
            MetadataError::NotController => ResponseError::NotController,
            MetadataError::StaleLeaderEpoch { .. } => ResponseError::FencedLeaderEpoch,
            MetadataError::InvalidReplicaAssignment(_) => ResponseError::InvalidReplicaAssignment,
            MetadataError::InternalTopic(_) => ResponseError::InvalidTopicException,
            // The controller could not finish it in time or raced another change: retriable.
            MetadataError::Refused(_) => ResponseError::RequestTimedOut,
            _ => ResponseError::UnknownServerError,
        },
        DomainError::Group(error) => match error {
            GroupError::UnknownMemberId => ResponseError::UnknownMemberId,
            GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
            GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
            GroupError::MemberIdRequired => ResponseError::MemberIdRequired,
            GroupError::FencedInstanceId => ResponseError::FencedInstanceId,
            GroupError::GroupIdNotFound => ResponseError::GroupIdNotFound,
            GroupError::NonEmptyGroup => ResponseError::NonEmptyGroup,
            GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
            GroupError::InvalidSessionTimeout { .. } => ResponseError::InvalidSessionTimeout,
            GroupError::InvalidGroupId => ResponseError::InvalidGroupId,
            // Kafka has no code for an over-long member id, instance id, protocol or client id
            // (it fails writing the record instead).
            GroupError::StringTooLong { .. } => ResponseError::InvalidRequest,
            GroupError::OffsetMetadataTooLarge(_) => ResponseError::OffsetMetadataTooLarge,
            GroupError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition,
            GroupError::GroupSubscribedToTopic => ResponseError::GroupSubscribedToTopic,
            GroupError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
            GroupError::CoordinatorLoadInProgress => ResponseError::CoordinatorLoadInProgress,
            GroupError::NotCoordinator => ResponseError::NotCoordinator,
            GroupError::FencedMemberEpoch => ResponseError::FencedMemberEpoch,
            GroupError::StaleMemberEpoch => ResponseError::StaleMemberEpoch,
            // Kafka has no code for it; the classic twin (a partition another member owns) is
            // ILLEGAL_GENERATION too.
            GroupError::PartitionNotAssigned => ResponseError::IllegalGeneration,
            // A failed append to the offsets partition, as Kafka maps it: the client finds
            // the coordinator again and retries.
            GroupError::Storage(_) => ResponseError::CoordinatorNotAvailable,
            // The coordinator shard's inbox is full: retriable, after finding it again.
            GroupError::Overloaded => ResponseError::CoordinatorNotAvailable,
            _ => ResponseError::UnknownServerError,
        },
    }
}

/// Kafka answers a batch that fails its CRC or framing with CORRUPT_MESSAGE, an old magic with
/// UNSUPPORTED_FOR_MESSAGE_FORMAT, and records that fail validation with INVALID_RECORD.
fn batch_error_code(error: &BatchError) -> ResponseError {
    match error {
        BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
        BatchError::InvalidRecordCount { .. }
        | BatchError::UnknownCompression(_)
        | BatchError::CorruptRecords(_) => ResponseError::InvalidRecord,
        _ => ResponseError::CorruptMessage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::Offset;

    // Goal: every domain error maps to the Kafka code clients expect, and retriable conditions
    // map to retriable codes. Method: a table of (error, expected code, expected retriable).
    #[test]
    fn error_code_table() {
        let produce = |e: ProduceError| error_code(&e);
        let fetch = |e: FetchError| error_code(&e);
        let metadata = |e: MetadataError| error_code(&e);
        let group = |e: GroupError| error_code(&e);
        let table: Vec<(ResponseError, i16, bool)> = vec![
            (
                produce(ProduceError::UnknownTopicOrPartition("t-0".into())),
                3,
                true,
            ),
            (
                produce(ProduceError::Corrupt(BatchError::CrcMismatch {
                    stored: 1,
                    computed: 2,
                })),
                2,
                true,
            ),
            (
                produce(ProduceError::Corrupt(BatchError::Truncated {
                    needed: 61,
                    have: 0,
                })),
                2,
                true,
            ),
            (
                produce(ProduceError::Corrupt(BatchError::UnsupportedMagic(1))),
                43,
                false,
            ),
            (
                produce(ProduceError::Corrupt(BatchError::UnknownCompression(7))),
                87,
                false,
            ),
            (
                produce(ProduceError::Corrupt(BatchError::InvalidRecordCount {
                    record_count: -1,
                    last_offset_delta: 0,
                })),
                87,
                false,
            ),
            (
                produce(ProduceError::MessageTooLarge { size: 10, max: 5 }),
                10,
                false,
            ),
            (produce(ProduceError::Storage("disk full".into())), 56, true),
            (produce(ProduceError::Overloaded), 7, true),
            (produce(ProduceError::ShuttingDown), 6, true),
            (produce(ProduceError::NotLeader("t-0".into())), 6, true),
            (
                produce(ProduceError::NotEnoughReplicas {
                    tp: "t-0".into(),
                    isr: 1,
                    min: 2,
                }),
                19,
                true,
            ),
            (
                produce(ProduceError::NotEnoughReplicasAfterAppend("t-0".into())),
                20,
                true,
            ),
            (produce(ProduceError::Timeout("t-0".into())), 7, true),
            (fetch(FetchError::NotLeader("t-0".into())), 6, true),
            (
                fetch(FetchError::UnknownTopicOrPartition("t-0".into())),
                3,
                true,
            ),
            (
                fetch(FetchError::OffsetOutOfRange {
                    requested: Offset(9),
                    log_start: Offset(0),
                    log_end: Offset(3),
                }),
                1,
                false,
            ),
            (fetch(FetchError::Storage("io".into())), 56, true),
            (fetch(FetchError::Overloaded), 7, true),
            (
                fetch(FetchError::InternalTopic("__consumer_offsets".into())),
                17,
                false,
            ),
            (
                fetch(FetchError::OffsetNotAvailable("t-0".into())),
                78,
                true,
            ),
            (
                metadata(MetadataError::InternalTopic("__consumer_offsets".into())),
                17,
                false,
            ),
            (metadata(MetadataError::TopicExists("t".into())), 36, false),
            (metadata(MetadataError::UnknownTopic("t".into())), 3, true),
            (
                metadata(MetadataError::InvalidTopicName("a/b".into())),
                17,
                false,
            ),
            (metadata(MetadataError::InvalidPartitions(0)), 37, false),
            (
                metadata(MetadataError::InvalidReplicationFactor {
                    factor: 3,
                    brokers: 1,
                }),
                38,
                false,
            ),
            (
                metadata(MetadataError::Config(ConfigError::UnknownKey("x".into()))),
                40,
                false,
            ),
            (metadata(MetadataError::Storage("fsync".into())), 56, true),
            (metadata(MetadataError::NotController), 41, true),
            (metadata(MetadataError::Refused("raced".into())), 7, true),
            (
                metadata(MetadataError::StaleLeaderEpoch {
                    topic: "t".into(),
                    partition: 0,
                    leader: 1,
                    epoch: 2,
                }),
                74,
                true,
            ),
            (
                metadata(MetadataError::InvalidReplicaAssignment("x".into())),
                39,
                false,
            ),
            (group(GroupError::UnknownMemberId), 25, false),
            (group(GroupError::IllegalGeneration), 22, false),
            (group(GroupError::RebalanceInProgress), 27, false),
            (group(GroupError::MemberIdRequired), 79, false),
            (group(GroupError::FencedInstanceId), 82, false),
            (group(GroupError::GroupIdNotFound), 69, false),
            (group(GroupError::NonEmptyGroup), 68, false),
            (group(GroupError::InconsistentGroupProtocol), 23, false),
            (
                group(GroupError::InvalidSessionTimeout {
                    min_ms: 1,
                    max_ms: 2,
                }),
                26,
                false,
            ),
            (group(GroupError::InvalidGroupId), 24, false),
            (
                group(GroupError::StringTooLong {
                    field: "member id",
                    bytes: 40_000,
                    max: 32_767,
                }),
                42,
                false,
            ),
            (group(GroupError::OffsetMetadataTooLarge(4096)), 12, false),
            (group(GroupError::UnknownTopicOrPartition), 3, true),
            (group(GroupError::FencedMemberEpoch), 110, false),
            (group(GroupError::StaleMemberEpoch), 113, false),
            (group(GroupError::PartitionNotAssigned), 22, false),
            (group(GroupError::GroupSubscribedToTopic), 86, false),
            (group(GroupError::CoordinatorNotAvailable), 15, true),
            (group(GroupError::CoordinatorLoadInProgress), 14, true),
            (group(GroupError::NotCoordinator), 16, true),
            (group(GroupError::Storage("fsync".into())), 15, true),
            (group(GroupError::Overloaded), 15, true),
        ];
        for (i, (code, expected, retriable)) in table.iter().enumerate() {
            assert_eq!(code.code(), *expected, "row {i}: {code:?}");
            assert_eq!(
                code.is_retriable(),
                *retriable,
                "row {i}: {code:?} retriable"
            );
        }
    }
}
