//! Group requests and responses as the coordinator sees them: protocol-neutral, so the Kafka
//! listener and the native protocol share one coordinator. Every type is `Send` (they cross
//! shards in `ShardMsg::Group`).

use std::time::Duration;

use bytes::Bytes;
use sluice_engine::{Offset, TopicPartition};

use super::GroupError;

/// A member joining (or rejoining) a group: Kafka's JoinGroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    /// Group id.
    pub group_id: String,
    /// Member id; empty for a new member.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// Client id of the connection.
    pub client_id: String,
    /// Client host of the connection.
    pub client_host: String,
    /// Without heartbeats for this long the member is removed.
    pub session_timeout: Duration,
    /// How long a rebalance waits for this member to rejoin.
    pub rebalance_timeout: Duration,
    /// Protocol type (`consumer`).
    pub protocol_type: String,
    /// Supported protocols (assignors) in preference order, with the member's metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// A new dynamic member first gets MEMBER_ID_REQUIRED and its id (KIP-394, JoinGroup v4+).
    pub require_known_member_id: bool,
}

/// One member as the leader sees it in a join response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedMember {
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// Metadata for the selected protocol.
    pub metadata: Bytes,
}

/// The answer to a join.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct JoinResponse {
    /// The error, if any (MEMBER_ID_REQUIRED still carries `member_id`).
    pub error: Option<GroupError>,
    /// Generation joined.
    pub generation: i32,
    /// Protocol type.
    pub protocol_type: Option<String>,
    /// Selected protocol.
    pub protocol_name: Option<String>,
    /// Leader's member id.
    pub leader: String,
    /// This member's id.
    pub member_id: String,
    /// All members with their metadata, for the leader only.
    pub members: Vec<JoinedMember>,
}

impl JoinResponse {
    /// An error answer keeping `member_id`.
    pub fn error(error: GroupError, member_id: &str) -> JoinResponse {
        JoinResponse {
            error: Some(error),
            generation: -1,
            member_id: member_id.to_owned(),
            ..JoinResponse::default()
        }
    }
}

/// A member asking for its assignment; the leader brings everyone's: Kafka's SyncGroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRequest {
    /// Group id.
    pub group_id: String,
    /// Generation the member joined.
    pub generation: i32,
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// Protocol type the member expects (checked when given).
    pub protocol_type: Option<String>,
    /// Protocol the member expects (checked when given).
    pub protocol_name: Option<String>,
    /// The leader's assignment for each member.
    pub assignments: Vec<(String, Bytes)>,
}

/// The answer to a sync.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SyncResponse {
    /// The error, if any.
    pub error: Option<GroupError>,
    /// Protocol type.
    pub protocol_type: Option<String>,
    /// Selected protocol.
    pub protocol_name: Option<String>,
    /// This member's assignment.
    pub assignment: Bytes,
}

/// A member's liveness signal: Kafka's Heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatRequest {
    /// Group id.
    pub group_id: String,
    /// Generation.
    pub generation: i32,
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
}

/// One member leaving.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeavingMember {
    /// Member id (may be empty when `group_instance_id` is given).
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
}

/// Members leaving a group: Kafka's LeaveGroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaveRequest {
    /// Group id.
    pub group_id: String,
    /// The members.
    pub members: Vec<LeavingMember>,
}

/// The answer to a leave: per member.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LeaveResponse {
    /// A group-level error.
    pub error: Option<GroupError>,
    /// Each member with its error.
    pub members: Vec<(LeavingMember, Option<GroupError>)>,
}

/// One offset to commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitOffset {
    /// Partition.
    pub tp: TopicPartition,
    /// Next offset to read.
    pub offset: Offset,
    /// Leader epoch of the last consumed record (`-1`: unknown).
    pub leader_epoch: i32,
    /// Client metadata.
    pub metadata: String,
}

/// Committing offsets: Kafka's OffsetCommit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRequest {
    /// Group id.
    pub group_id: String,
    /// Generation (`-1` with an empty member id: a commit outside group management).
    pub generation: i32,
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// The offsets.
    pub offsets: Vec<CommitOffset>,
}

/// The answer to a commit: per partition.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CommitResponse {
    /// Each partition with its error.
    pub partitions: Vec<(TopicPartition, Option<GroupError>)>,
}

/// Reading committed offsets: Kafka's OffsetFetch for one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchOffsetsRequest {
    /// Group id.
    pub group_id: String,
    /// The partitions wanted; `None` for every partition with a committed offset.
    pub partitions: Option<Vec<TopicPartition>>,
}

/// One committed offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    /// Partition.
    pub tp: TopicPartition,
    /// The committed offset, `-1` when none.
    pub offset: Offset,
    /// Its leader epoch (`-1`: unknown).
    pub leader_epoch: i32,
    /// Its metadata.
    pub metadata: String,
    /// A per-partition error.
    pub error: Option<GroupError>,
}

/// The answer to an offset fetch.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FetchOffsetsResponse {
    /// A group-level error.
    pub error: Option<GroupError>,
    /// The offsets.
    pub partitions: Vec<CommittedOffset>,
}

/// A native group member's heartbeat (Kafka's ConsumerGroupHeartbeat, KIP-848): it joins
/// (`member_epoch` 0), stays and reports what it owns, or leaves (`member_epoch` -1). The
/// coordinator answers with the member's epoch and the partitions it may own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerHeartbeat {
    /// Group id.
    pub group_id: String,
    /// Member id; empty when joining (the coordinator picks one).
    pub member_id: String,
    /// [`MEMBER_EPOCH_JOIN`], [`MEMBER_EPOCH_LEAVE`], or the epoch the member last got.
    pub member_epoch: i32,
    /// Client id of the connection.
    pub client_id: String,
    /// Client host of the connection.
    pub client_host: String,
    /// Without a heartbeat for this long the member is removed.
    pub session_timeout: Duration,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// The partitions the member owns now (consumes, or has not finished revoking).
    pub owned: Vec<TopicPartition>,
    /// The partition count of each subscribed topic (0: no such topic). Filled in by the shard
    /// that routes the request, from its metadata: the coordinator core reads no metadata.
    pub partition_counts: Vec<(String, i32)>,
}

/// The member epoch of a heartbeat that joins a native group.
pub const MEMBER_EPOCH_JOIN: i32 = 0;
/// The member epoch of a heartbeat that leaves a native group.
pub const MEMBER_EPOCH_LEAVE: i32 = -1;

/// The answer to a [`ConsumerHeartbeat`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerAssignment {
    /// The member's id (new when it joined).
    pub member_id: String,
    /// The member's epoch; commits carry it.
    pub member_epoch: i32,
    /// When to heartbeat next at the latest (sooner while partitions move).
    pub heartbeat_interval: Duration,
    /// The partitions the member may own, sorted. Owned partitions missing here must be
    /// revoked (commit, stop fetching, report them gone in the next heartbeat); new ones may be
    /// consumed at once.
    pub assignment: Vec<TopicPartition>,
}

/// Which protocol a group's members speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupType {
    /// Kafka's classic protocol (JoinGroup/SyncGroup, client-side assignment), or a group
    /// that only stores offsets.
    Classic,
    /// The native protocol's consumer groups (server-side assignment, KIP-848-like).
    Consumer,
}

impl GroupType {
    /// Kafka's name for the type (ListGroups v5).
    pub fn name(self) -> &'static str {
        match self {
            GroupType::Classic => "classic",
            GroupType::Consumer => "consumer",
        }
    }
}

/// The state of a group, named as Kafka names it in ListGroups and DescribeGroups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupState {
    /// No members (offsets may remain).
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Joined; waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
    /// A native group whose members are moving partitions towards a new target assignment.
    Reconciling,
    /// Being deleted.
    Dead,
}

impl GroupState {
    /// Kafka's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Reconciling => "Reconciling",
            GroupState::Dead => "Dead",
        }
    }
}

/// One group in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    /// Group id.
    pub group_id: String,
    /// Protocol type (empty for groups that only store offsets).
    pub protocol_type: String,
    /// Classic or native consumer group.
    pub group_type: GroupType,
    /// State.
    pub state: GroupState,
}

/// One member in a description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// Static membership id.
    pub group_instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Metadata for the selected protocol.
    pub metadata: Bytes,
    /// Current assignment.
    pub assignment: Bytes,
    /// Member epoch (native groups) or the group's generation (classic).
    pub member_epoch: i32,
    /// The partitions the member owns, decoded (classic: from `assignment` when it is a
    /// consumer assignment).
    pub partitions: Vec<TopicPartition>,
}

/// One group described.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group id.
    pub group_id: String,
    /// `Some(GroupIdNotFound)` for an unknown group.
    pub error: Option<GroupError>,
    /// State.
    pub state: GroupState,
    /// Protocol type.
    pub protocol_type: String,
    /// Classic or native consumer group.
    pub group_type: GroupType,
    /// Generation (classic) or group epoch (native).
    pub epoch: i32,
    /// Selected protocol.
    pub protocol: String,
    /// Members.
    pub members: Vec<MemberDescription>,
}

/// A group request routed to the group's coordinator shard.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupRequest {
    /// JoinGroup.
    Join(JoinRequest),
    /// SyncGroup.
    Sync(SyncRequest),
    /// Heartbeat.
    Heartbeat(HeartbeatRequest),
    /// LeaveGroup.
    Leave(LeaveRequest),
    /// OffsetCommit.
    Commit(CommitRequest),
    /// OffsetFetch.
    FetchOffsets(FetchOffsetsRequest),
    /// DescribeGroups for one group.
    Describe {
        /// Group id.
        group_id: String,
    },
    /// DeleteGroups for one group.
    Delete {
        /// Group id.
        group_id: String,
    },
    /// OffsetDelete.
    DeleteOffsets {
        /// Group id.
        group_id: String,
        /// Partitions whose offsets to delete.
        partitions: Vec<TopicPartition>,
    },
    /// A native group member's heartbeat.
    ConsumerHeartbeat(ConsumerHeartbeat),
}

impl GroupRequest {
    /// The group this request is about.
    pub fn group_id(&self) -> &str {
        match self {
            GroupRequest::Join(r) => &r.group_id,
            GroupRequest::Sync(r) => &r.group_id,
            GroupRequest::Heartbeat(r) => &r.group_id,
            GroupRequest::Leave(r) => &r.group_id,
            GroupRequest::Commit(r) => &r.group_id,
            GroupRequest::FetchOffsets(r) => &r.group_id,
            GroupRequest::ConsumerHeartbeat(r) => &r.group_id,
            GroupRequest::Describe { group_id }
            | GroupRequest::Delete { group_id }
            | GroupRequest::DeleteOffsets { group_id, .. } => group_id,
        }
    }

    /// The answer this request gets when it fails as a whole with `error`.
    pub fn failed(&self, error: GroupError) -> GroupResponse {
        match self {
            GroupRequest::Join(r) => GroupResponse::Join(JoinResponse::error(error, &r.member_id)),
            GroupRequest::Sync(_) => GroupResponse::Sync(SyncResponse {
                error: Some(error),
                ..SyncResponse::default()
            }),
            GroupRequest::Heartbeat(_) => GroupResponse::Heartbeat(Err(error)),
            GroupRequest::Leave(_) => GroupResponse::Leave(LeaveResponse {
                error: Some(error),
                members: Vec::new(),
            }),
            GroupRequest::Commit(r) => GroupResponse::Commit(CommitResponse {
                partitions: r
                    .offsets
                    .iter()
                    .map(|o| (o.tp.clone(), Some(error.clone())))
                    .collect(),
            }),
            GroupRequest::FetchOffsets(_) => GroupResponse::FetchOffsets(FetchOffsetsResponse {
                error: Some(error),
                partitions: Vec::new(),
            }),
            GroupRequest::Describe { group_id } => GroupResponse::Describe(GroupDescription {
                group_id: group_id.clone(),
                error: Some(error),
                state: GroupState::Dead,
                protocol_type: String::new(),
                group_type: GroupType::Classic,
                epoch: -1,
                protocol: String::new(),
                members: Vec::new(),
            }),
            GroupRequest::Delete { .. } => GroupResponse::Delete(Err(error)),
            GroupRequest::DeleteOffsets { .. } => GroupResponse::DeleteOffsets(Err(error)),
            GroupRequest::ConsumerHeartbeat(_) => GroupResponse::ConsumerHeartbeat(Err(error)),
        }
    }
}

/// The answer to a [`GroupRequest`], variant for variant.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupResponse {
    /// JoinGroup.
    Join(JoinResponse),
    /// SyncGroup.
    Sync(SyncResponse),
    /// Heartbeat.
    Heartbeat(Result<(), GroupError>),
    /// LeaveGroup.
    Leave(LeaveResponse),
    /// OffsetCommit.
    Commit(CommitResponse),
    /// OffsetFetch.
    FetchOffsets(FetchOffsetsResponse),
    /// DescribeGroups.
    Describe(GroupDescription),
    /// DeleteGroups.
    Delete(Result<(), GroupError>),
    /// OffsetDelete: per partition, or a group-level error.
    DeleteOffsets(Result<Vec<(TopicPartition, Option<GroupError>)>, GroupError>),
    /// A native member's heartbeat.
    ConsumerHeartbeat(Result<ConsumerAssignment, GroupError>),
}
