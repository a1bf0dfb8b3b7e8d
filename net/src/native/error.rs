//! The one mapping from Sluice's domain errors to native protocol error codes (STYLE §6).
//!
//! The server never picks a code for a domain error itself: it calls [`error_code`]. Codes that
//! describe the request rather than a domain failure (an invalid `acks`, a partition owned by
//! another shard, a frame that does not decode) are chosen where the request is read.
//! `kafka::error_code` is the Kafka twin of this table, over the same [`DomainError`].
//!
//! Must not depend on: sockets, streams or the server loop.

use sluice_cluster::group::GroupError;
use sluice_cluster::metadata::MetadataError;
use sluice_cluster::shard::{FetchError, ProduceError};

use crate::domain::DomainError;
use crate::native::messages::ErrorCode;

/// The native error code a client sees for `error`.
///
/// Retriable conditions (a full shard inbox, a broker shutting down) map to retriable codes
/// ([`ErrorCode::is_retriable`]); errors in what the client sent map to non-retriable ones.
pub fn error_code<'a>(error: impl Into<DomainError<'a>>) -> ErrorCode {
    match error.into() {
        DomainError::Produce(error) => match error {
            ProduceError::UnknownTopicOrPartition(_) => ErrorCode::UnknownTopicOrPartition,
            // CRC, framing, magic, record count, compression codec: the batch is unusable.
            ProduceError::Corrupt(_) => ErrorCode::CorruptMessage,
            ProduceError::MessageTooLarge { .. } => ErrorCode::MessageTooLarge,
            ProduceError::Storage(_) => ErrorCode::StorageError,
            ProduceError::Overloaded => ErrorCode::Overloaded,
            ProduceError::ShuttingDown => ErrorCode::ShuttingDown,
            // Leadership moved: the client refreshes metadata and goes to the new leader.
            ProduceError::NotLeader(_) => ErrorCode::NotOwner,
            ProduceError::NotEnoughReplicas { .. } => ErrorCode::NotEnoughReplicas,
            ProduceError::NotEnoughReplicasAfterAppend(_) => {
                ErrorCode::NotEnoughReplicasAfterAppend
            }
            ProduceError::Timeout(_) => ErrorCode::ReplicationTimeout,
            _ => ErrorCode::Internal,
        },
        DomainError::Fetch(error) => match error {
            FetchError::UnknownTopicOrPartition(_) => ErrorCode::UnknownTopicOrPartition,
            FetchError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            FetchError::Storage(_) => ErrorCode::StorageError,
            FetchError::Overloaded => ErrorCode::Overloaded,
            FetchError::NotLeader(_) => ErrorCode::NotOwner,
            FetchError::InternalTopic(_) => ErrorCode::InvalidTopic,
            // A new leader's high watermark is catching up (KIP-207): retry shortly. No code of
            // its own: a new code needs a protocol version (codes 17 to 28 came with version
            // 2), since a version-3 client cannot read a code it does not know.
            FetchError::OffsetNotAvailable(_) => ErrorCode::Overloaded,
            _ => ErrorCode::Internal,
        },
        DomainError::Metadata(error) => match error {
            MetadataError::TopicExists(_) => ErrorCode::TopicExists,
            MetadataError::UnknownTopic(_) => ErrorCode::UnknownTopicOrPartition,
            MetadataError::InvalidTopicName(_) => ErrorCode::InvalidTopic,
            MetadataError::InvalidPartitions(_) => ErrorCode::InvalidPartitions,
            MetadataError::InvalidReplicationFactor { .. } => ErrorCode::InvalidReplicationFactor,
            MetadataError::Config(_) => ErrorCode::InvalidConfig,
            MetadataError::Storage(_) => ErrorCode::StorageError,
            // No active controller is known (an election is under way): retriable.
            MetadataError::NotController => ErrorCode::Overloaded,
            MetadataError::StaleLeaderEpoch { .. } => ErrorCode::InvalidRequest,
            MetadataError::InvalidReplicaAssignment(_) => ErrorCode::InvalidRequest,
            MetadataError::Refused(_) => ErrorCode::Overloaded,
            MetadataError::InternalTopic(_) => ErrorCode::InvalidTopic,
            _ => ErrorCode::Internal,
        },
        DomainError::Group(error) => match error {
            // The coordinator is loading, moved, or its inbox is full: retry.
            GroupError::Overloaded
            | GroupError::CoordinatorNotAvailable
            | GroupError::CoordinatorLoadInProgress => ErrorCode::Overloaded,
            GroupError::NotCoordinator => ErrorCode::NotOwner,
            GroupError::Storage(_) => ErrorCode::StorageError,
            GroupError::UnknownTopicOrPartition => ErrorCode::UnknownTopicOrPartition,
            GroupError::UnknownMemberId => ErrorCode::UnknownMemberId,
            // A classic generation that is not the group's fences the member like a wrong
            // member epoch.
            GroupError::FencedMemberEpoch | GroupError::IllegalGeneration => {
                ErrorCode::FencedMemberEpoch
            }
            GroupError::StaleMemberEpoch => ErrorCode::StaleMemberEpoch,
            GroupError::PartitionNotAssigned => ErrorCode::PartitionNotAssigned,
            GroupError::NonEmptyGroup => ErrorCode::GroupNotEmpty,
            GroupError::GroupIdNotFound => ErrorCode::GroupNotFound,
            GroupError::InconsistentGroupProtocol | GroupError::RebalanceInProgress => {
                ErrorCode::InconsistentGroupProtocol
            }
            GroupError::InvalidSessionTimeout { .. } => ErrorCode::InvalidSessionTimeout,
            GroupError::OffsetMetadataTooLarge(_) => ErrorCode::MessageTooLarge,
            GroupError::InvalidGroupId | GroupError::StringTooLong { .. } => {
                ErrorCode::InvalidRequest
            }
            _ => ErrorCode::InvalidRequest,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_cluster::config::ConfigError;
    use sluice_engine::Offset;
    use sluice_engine::batch::BatchError;

    // Goal: every domain error maps to the intended native code, and exactly the transient
    // conditions are retriable. Method: a table of (error, expected code, expected retriable),
    // reviewed with the error table in net/PROTOCOL.md.
    #[test]
    fn error_code_table() {
        let produce = |e: ProduceError| error_code(&e);
        let fetch = |e: FetchError| error_code(&e);
        let metadata = |e: MetadataError| error_code(&e);
        let group = |e: GroupError| error_code(&e);
        let table: Vec<(ErrorCode, ErrorCode, bool)> = vec![
            (
                produce(ProduceError::UnknownTopicOrPartition("t-0".into())),
                ErrorCode::UnknownTopicOrPartition,
                false,
            ),
            (
                produce(ProduceError::Corrupt(BatchError::CrcMismatch {
                    stored: 1,
                    computed: 2,
                })),
                ErrorCode::CorruptMessage,
                false,
            ),
            (
                produce(ProduceError::Corrupt(BatchError::UnsupportedMagic(1))),
                ErrorCode::CorruptMessage,
                false,
            ),
            (
                produce(ProduceError::Corrupt(BatchError::UnknownCompression(7))),
                ErrorCode::CorruptMessage,
                false,
            ),
            (
                produce(ProduceError::MessageTooLarge { size: 10, max: 5 }),
                ErrorCode::MessageTooLarge,
                false,
            ),
            (
                produce(ProduceError::NotEnoughReplicas {
                    tp: "t-0".into(),
                    isr: 1,
                    min: 2,
                }),
                ErrorCode::NotEnoughReplicas,
                true,
            ),
            (
                produce(ProduceError::NotEnoughReplicasAfterAppend("t-0".into())),
                ErrorCode::NotEnoughReplicasAfterAppend,
                true,
            ),
            (
                produce(ProduceError::Timeout("t-0".into())),
                ErrorCode::ReplicationTimeout,
                true,
            ),
            (
                produce(ProduceError::Storage("disk full".into())),
                ErrorCode::StorageError,
                false,
            ),
            (
                produce(ProduceError::Overloaded),
                ErrorCode::Overloaded,
                true,
            ),
            (
                produce(ProduceError::ShuttingDown),
                ErrorCode::ShuttingDown,
                true,
            ),
            (
                fetch(FetchError::UnknownTopicOrPartition("t-0".into())),
                ErrorCode::UnknownTopicOrPartition,
                false,
            ),
            (
                fetch(FetchError::OffsetOutOfRange {
                    requested: Offset(9),
                    log_start: Offset(0),
                    log_end: Offset(3),
                }),
                ErrorCode::OffsetOutOfRange,
                false,
            ),
            (
                fetch(FetchError::Storage("io".into())),
                ErrorCode::StorageError,
                false,
            ),
            (fetch(FetchError::Overloaded), ErrorCode::Overloaded, true),
            (
                metadata(MetadataError::TopicExists("t".into())),
                ErrorCode::TopicExists,
                false,
            ),
            (
                metadata(MetadataError::UnknownTopic("t".into())),
                ErrorCode::UnknownTopicOrPartition,
                false,
            ),
            (
                metadata(MetadataError::InvalidTopicName("a/b".into())),
                ErrorCode::InvalidTopic,
                false,
            ),
            (
                metadata(MetadataError::InvalidPartitions(0)),
                ErrorCode::InvalidPartitions,
                false,
            ),
            (
                metadata(MetadataError::InvalidReplicationFactor {
                    factor: 3,
                    brokers: 1,
                }),
                ErrorCode::InvalidReplicationFactor,
                false,
            ),
            (
                metadata(MetadataError::Config(ConfigError::UnknownKey("x".into()))),
                ErrorCode::InvalidConfig,
                false,
            ),
            (
                metadata(MetadataError::Config(ConfigError::InvalidValue {
                    key: "retention.ms".into(),
                    value: "soon".into(),
                    reason: "not a number",
                })),
                ErrorCode::InvalidConfig,
                false,
            ),
            (
                metadata(MetadataError::Storage("fsync".into())),
                ErrorCode::StorageError,
                false,
            ),
            (
                metadata(MetadataError::NotController),
                ErrorCode::Overloaded,
                true,
            ),
            (
                metadata(MetadataError::Refused("raced".into())),
                ErrorCode::Overloaded,
                true,
            ),
            (
                metadata(MetadataError::StaleLeaderEpoch {
                    topic: "t".into(),
                    partition: 0,
                    leader: 1,
                    epoch: 2,
                }),
                ErrorCode::InvalidRequest,
                false,
            ),
            (
                produce(ProduceError::NotLeader("t-0".into())),
                ErrorCode::NotOwner,
                true,
            ),
            (
                fetch(FetchError::NotLeader("t-0".into())),
                ErrorCode::NotOwner,
                true,
            ),
            (
                fetch(FetchError::InternalTopic("__consumer_offsets".into())),
                ErrorCode::InvalidTopic,
                false,
            ),
            (
                fetch(FetchError::OffsetNotAvailable("t-0".into())),
                ErrorCode::Overloaded,
                true,
            ),
            (group(GroupError::Overloaded), ErrorCode::Overloaded, true),
            (
                group(GroupError::CoordinatorLoadInProgress),
                ErrorCode::Overloaded,
                true,
            ),
            (group(GroupError::NotCoordinator), ErrorCode::NotOwner, true),
            (
                group(GroupError::UnknownMemberId),
                ErrorCode::UnknownMemberId,
                false,
            ),
            (
                group(GroupError::FencedMemberEpoch),
                ErrorCode::FencedMemberEpoch,
                false,
            ),
            (
                group(GroupError::StaleMemberEpoch),
                ErrorCode::StaleMemberEpoch,
                false,
            ),
            (
                group(GroupError::PartitionNotAssigned),
                ErrorCode::PartitionNotAssigned,
                false,
            ),
            (
                group(GroupError::NonEmptyGroup),
                ErrorCode::GroupNotEmpty,
                false,
            ),
            (
                group(GroupError::GroupIdNotFound),
                ErrorCode::GroupNotFound,
                false,
            ),
            (
                group(GroupError::InconsistentGroupProtocol),
                ErrorCode::InconsistentGroupProtocol,
                false,
            ),
            (
                group(GroupError::InvalidSessionTimeout {
                    min_ms: 1,
                    max_ms: 2,
                }),
                ErrorCode::InvalidSessionTimeout,
                false,
            ),
            (
                group(GroupError::InvalidGroupId),
                ErrorCode::InvalidRequest,
                false,
            ),
            (
                group(GroupError::StringTooLong {
                    field: "client id",
                    bytes: 40_000,
                    max: 32_767,
                }),
                ErrorCode::InvalidRequest,
                false,
            ),
        ];
        for (i, (code, expected, retriable)) in table.iter().enumerate() {
            assert_eq!(code, expected, "row {i}");
            assert_eq!(
                code.is_retriable(),
                *retriable,
                "row {i}: {code:?} retriable"
            );
        }
    }
}
