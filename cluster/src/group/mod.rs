//! Consumer groups: the group coordinator (Kafka's classic protocol, and native groups with
//! server-side assignment) and committed offsets.
//!
//! A group lives on the shard that owns partition `partition_for(group id)` of the internal
//! topic [`OFFSETS_TOPIC`]; every group request is forwarded there (`ShardMsg::Group`). On that
//! shard a [`GroupBackend`] per offsets partition drives a [`GroupCoordinator`], the sans-IO
//! state machine: requests and timer ticks go in with the time, replies and records to append
//! come out. Records (committed offsets and group metadata, [`record`]) are appended to the
//! offsets partition with acks=all before the request they answer is acknowledged, and the
//! partition is replayed into a fresh coordinator when the shard opens it (start-up, or the
//! partition moving here).
//!
//! A group is either classic (Kafka's JoinGroup/SyncGroup, the members assign partitions) or
//! native (`consumer_group.rs`: the native protocol's heartbeats, the coordinator assigns
//! partitions and hands them over incrementally), as Kafka has classic and consumer groups;
//! both share committed offsets and the offsets partition.
//!
//! Main types: [`GroupCoordinator`] (the core), [`GroupBackend`] (its driver on the owning
//! shard), [`GroupConfig`], [`GroupError`], the request and response types in [`types`].
//!
//! Must not depend on: sockets or protocol crates (the Kafka listener maps its messages to
//! [`types`]).

mod backend;
mod consumer_group;
pub mod consumer_protocol;
mod coordinator;
mod owners;
pub mod record;
pub mod types;

use std::collections::BTreeMap;
use std::time::Duration;

pub use backend::{GroupBackend, GroupShard};
pub use consumer_group::NATIVE_ASSIGNOR;
pub use coordinator::{Action, AppendId, GroupCoordinator};
pub use types::*;

use crate::metadata::{
    FileMetadataStore, MetadataCommand, MetadataError, MetadataSnapshot, PlacementContext, apply,
};

/// The internal topic holding committed offsets and group metadata, as in Kafka.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// True for topics clients may not produce to or delete.
pub fn is_internal_topic(name: &str) -> bool {
    name == OFFSETS_TOPIC
}

/// Why a group request failed. Each maps to one Kafka error code in `net`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The member id is not (or no longer) in the group.
    #[error("unknown member id")]
    UnknownMemberId,
    /// The request's generation is not the group's.
    #[error("illegal generation")]
    IllegalGeneration,
    /// The group is rebalancing; rejoin.
    #[error("rebalance in progress")]
    RebalanceInProgress,
    /// A new member must rejoin with the member id given in the response.
    #[error("member id required")]
    MemberIdRequired,
    /// Another member with the same `group.instance.id` replaced this one.
    #[error("fenced instance id")]
    FencedInstanceId,
    /// No such group.
    #[error("group id not found")]
    GroupIdNotFound,
    /// The group still has members.
    #[error("group is not empty")]
    NonEmptyGroup,
    /// The group's protocol type or protocols do not match the member's.
    #[error("inconsistent group protocol")]
    InconsistentGroupProtocol,
    /// The session timeout is outside the broker's allowed range.
    #[error("session timeout outside [{min_ms}, {max_ms}] ms")]
    InvalidSessionTimeout {
        /// Smallest allowed.
        min_ms: u64,
        /// Largest allowed.
        max_ms: u64,
    },
    /// The group id is empty, or longer than [`crate::limits::GROUP_STRING_BYTES_MAX`].
    #[error("invalid group id")]
    InvalidGroupId,
    /// A string of the request (member id, group instance id, protocol type or name, client
    /// id, subscribed topic) is longer than the coordinator stores.
    #[error("{field} is {bytes} bytes, longer than the {max} allowed")]
    StringTooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        bytes: usize,
        /// The most allowed.
        max: usize,
    },
    /// The offset metadata string is too long.
    #[error("offset metadata longer than {0} bytes")]
    OffsetMetadataTooLarge(usize),
    /// No such topic or partition.
    #[error("unknown topic or partition")]
    UnknownTopicOrPartition,
    /// OffsetDelete for a topic the group still consumes.
    #[error("group is subscribed to the topic")]
    GroupSubscribedToTopic,
    /// The coordinator is not ready (offsets partition not open here, or groups not started).
    #[error("coordinator not available")]
    CoordinatorNotAvailable,
    /// The coordinator is replaying its offsets partition.
    #[error("coordinator load in progress")]
    CoordinatorLoadInProgress,
    /// This shard is not (or no longer) the group's coordinator.
    #[error("not coordinator")]
    NotCoordinator,
    /// Appending to the offsets partition failed.
    #[error("offsets storage error: {0}")]
    Storage(String),
    /// The coordinator shard's inbox is full; retry.
    #[error("coordinator overloaded, retry")]
    Overloaded,
    /// A native member's epoch is newer than the coordinator's or too old to accept: the
    /// member must give up its partitions and rejoin.
    #[error("member epoch is fenced; rejoin")]
    FencedMemberEpoch,
    /// A commit carries an older member epoch than the member's: retry after the next
    /// heartbeat.
    #[error("stale member epoch")]
    StaleMemberEpoch,
    /// A native member committed an offset for a partition it does not own.
    #[error("partition is not assigned to this member")]
    PartitionNotAssigned,
}

/// Group coordinator settings (Kafka's broker configs of the same meaning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// Partitions of `__consumer_offsets` when it is created (`offsets.topic.num.partitions`).
    /// An existing topic keeps its count: changing it would move groups.
    pub offsets_topic_partitions: i32,
    /// Smallest session timeout a member may ask for (`group.min.session.timeout.ms`).
    pub session_timeout_min: Duration,
    /// Largest session timeout a member may ask for (`group.max.session.timeout.ms`).
    pub session_timeout_max: Duration,
    /// How long a new group waits for more members before its first rebalance completes
    /// (`group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay: Duration,
    /// How long the offsets of an empty group are kept (`offsets.retention.minutes`).
    pub offsets_retention: Duration,
    /// How often expired offsets are looked for (`offsets.retention.check.interval.ms`).
    pub offsets_retention_check_interval: Duration,
    /// Longest offset metadata string (`offset.metadata.max.bytes`).
    pub offset_metadata_bytes_max: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            offsets_topic_partitions: crate::limits::OFFSETS_TOPIC_PARTITIONS_DEFAULT,
            session_timeout_min: Duration::from_millis(6_000),
            session_timeout_max: Duration::from_millis(1_800_000),
            initial_rebalance_delay: Duration::from_millis(3_000),
            offsets_retention: Duration::from_secs(7 * 24 * 3600),
            offsets_retention_check_interval: Duration::from_secs(600),
            offset_metadata_bytes_max: 4096,
        }
    }
}

impl GroupConfig {
    /// Checks the values against the limits; call at startup.
    pub fn validate(&self) -> Result<(), String> {
        let max = crate::limits::OFFSETS_TOPIC_PARTITIONS_MAX;
        if !(1..=max).contains(&self.offsets_topic_partitions) {
            return Err(format!(
                "offsets topic partitions {} outside 1..={max}",
                self.offsets_topic_partitions
            ));
        }
        if self.session_timeout_min > self.session_timeout_max {
            return Err("group min session timeout exceeds the max".into());
        }
        let metadata_max = crate::limits::GROUP_STRING_BYTES_MAX;
        if self.offset_metadata_bytes_max > metadata_max {
            return Err(format!(
                "offset metadata max bytes {} above {metadata_max} (an offsets record string)",
                self.offset_metadata_bytes_max
            ));
        }
        if self.offsets_retention_check_interval.is_zero() {
            return Err("offsets retention check interval must be positive".into());
        }
        Ok(())
    }
}

/// The partition of the offsets topic that holds `group` among `partitions`: Kafka's
/// `abs(groupId.hashCode) % partitions`, with Java's `String.hashCode` over UTF-16 units, so a
/// group lands on the same partition number as in Kafka.
pub fn partition_for(group: &str, partitions: i32) -> i32 {
    assert!(partitions >= 1, "offsets topic has no partitions");
    let mut hash: i32 = 0;
    for unit in group.encode_utf16() {
        hash = hash.wrapping_mul(31).wrapping_add(i32::from(unit));
    }
    let partition = (hash & 0x7fff_ffff) % partitions;
    assert!((0..partitions).contains(&partition));
    partition
}

/// Kafka's settings for the offsets topic: compacted, 100 MiB segments. The engine does not
/// compact yet, so until it does the topic grows until deleted records are rolled away by
/// nothing: see ARCHITECTURE.md (consumer groups).
pub fn offsets_topic_overrides() -> BTreeMap<String, String> {
    [
        ("cleanup.policy", "compact"),
        ("segment.bytes", "104857600"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// Creates the offsets topic in `snapshot` (and persists it) if it does not exist. Runs before
/// the shards start, so the blocking write is fine. Returns true if the topic was created.
pub fn ensure_offsets_topic(
    store: &FileMetadataStore,
    snapshot: &mut MetadataSnapshot,
    context: PlacementContext,
    config: &GroupConfig,
) -> Result<bool, MetadataError> {
    if snapshot.topic(OFFSETS_TOPIC).is_some() {
        return Ok(false);
    }
    let command = MetadataCommand::CreateTopic {
        name: OFFSETS_TOPIC.to_owned(),
        partitions: config.offsets_topic_partitions,
        replication: 1,
        overrides: offsets_topic_overrides(),
    };
    let next = apply(snapshot, &command, context)?;
    store.persist_blocking(&next)?;
    let brokers = std::mem::take(&mut snapshot.brokers);
    *snapshot = next;
    snapshot.brokers = brokers;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: group placement is Kafka's (Java String.hashCode, masked, modulo) and pinned.
    // Method: values computed by hand from Java's hashCode definition.
    #[test]
    fn partition_for_is_kafkas() {
        // "a".hashCode() == 97.
        assert_eq!(partition_for("a", 50), 97 % 50);
        // "group".hashCode() == 98629247.
        assert_eq!(partition_for("group", 50), 98_629_247 % 50);
        // A negative hashCode is masked, not negated: "polygenelubricants" hashes to i32::MIN.
        assert_eq!(partition_for("polygenelubricants", 7), 0);
        for p in 1..20 {
            assert!((0..p).contains(&partition_for("any group", p)));
        }
    }

    // Goal: an offset metadata limit past what a record string holds is refused at startup,
    // so a commit's metadata always encodes.
    #[test]
    fn config_refuses_metadata_past_a_record_string() {
        let fits = GroupConfig {
            offset_metadata_bytes_max: crate::limits::GROUP_STRING_BYTES_MAX,
            ..GroupConfig::default()
        };
        assert_eq!(fits.validate(), Ok(()));
        let too_long = GroupConfig {
            offset_metadata_bytes_max: crate::limits::GROUP_STRING_BYTES_MAX + 1,
            ..GroupConfig::default()
        };
        assert!(too_long.validate().is_err());
    }
}
