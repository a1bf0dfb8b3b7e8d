//! Native protocol messages: the typed request and response headers carried in frames.
//!
//! A frame (see `frame.rs` and `net/PROTOCOL.md`) carries one header, serialised with rkyv and
//! validated on receipt, and an optional payload of record batch bytes that is never
//! re-encoded. Produce requests and fetch responses put their batches in the payload; every
//! other message has an empty payload.
//!
//! Compatibility rule: variants and fields are only ever appended; the protocol version in the
//! frame prefix is bumped whenever a header's layout changes, and a server that does not know a
//! client's version answers with `ErrorCode::UnsupportedVersion`, sent as a version-rejection
//! frame (`frame::encode_rejection`) because a header of another version cannot be read.
//!
//! Must not depend on: storage or Kafka types.

// rkyv's derive generates resolver types whose fields carry no docs; every type written here is
// documented by hand.
#![allow(missing_docs)]

use rkyv::{Archive, Deserialize, Serialize};

/// Stable error codes of the native protocol. A retired code is never reused.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// The topic or partition does not exist.
    UnknownTopicOrPartition = 1,
    /// A record batch failed validation (CRC, magic, length, record count).
    CorruptMessage = 2,
    /// A record batch exceeds the topic's `max.message.bytes`.
    MessageTooLarge = 3,
    /// The offset is outside the log.
    OffsetOutOfRange = 4,
    /// The storage layer failed (disk full, I/O error).
    StorageError = 5,
    /// The broker is overloaded; retry with backoff.
    Overloaded = 6,
    /// The broker is shutting down; retry elsewhere or later.
    ShuttingDown = 7,
    /// This shard does not own the partition; refresh metadata and reconnect.
    NotOwner = 8,
    /// A topic with that name exists.
    TopicExists = 9,
    /// The topic name is invalid.
    InvalidTopic = 10,
    /// A config key or value is invalid.
    InvalidConfig = 11,
    /// The partition count is invalid.
    InvalidPartitions = 12,
    /// The client's protocol version is not supported.
    UnsupportedVersion = 13,
    /// The request is malformed.
    InvalidRequest = 14,
    /// The replication factor is invalid.
    InvalidReplicationFactor = 15,
    /// An internal error; the message says more.
    Internal = 16,
    /// A sequenced produce request was not appended because an earlier request of its
    /// partition on the connection failed or did not arrive; resend them in order.
    OutOfOrderSequence = 17,
    /// The group has no member with that id (it left, its session expired, or the
    /// coordinator restarted without it): give up every partition without committing and
    /// rejoin with epoch 0.
    UnknownMemberId = 18,
    /// The member epoch is not the member's: give up every partition without committing and
    /// rejoin with epoch 0.
    FencedMemberEpoch = 19,
    /// A commit carries an older member epoch than the member's: retry with the epoch of the
    /// latest heartbeat answer.
    StaleMemberEpoch = 20,
    /// A member committed an offset for a partition it does not own.
    PartitionNotAssigned = 21,
    /// The group has active members (delete, or an admin commit such as a reset).
    GroupNotEmpty = 22,
    /// No such group.
    GroupNotFound = 23,
    /// The group is a Kafka (classic) group with members, or the request does not fit it.
    InconsistentGroupProtocol = 24,
    /// The session timeout is outside the broker's allowed range.
    InvalidSessionTimeout = 25,
    /// acks=all refused: the partition has fewer in-sync replicas than its
    /// `min.insync.replicas`; retry.
    NotEnoughReplicas = 26,
    /// acks=all appended, but the in-sync set was below `min.insync.replicas` when the
    /// replicas had it; the records may be visible. Retry.
    NotEnoughReplicasAfterAppend = 27,
    /// acks=all appended, but the in-sync replicas did not all have it in time; the records
    /// may still become visible. Retry.
    ReplicationTimeout = 28,
}

impl ErrorCode {
    /// True when the client should retry (after refreshing metadata for `NotOwner`).
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::Overloaded
                | ErrorCode::ShuttingDown
                | ErrorCode::NotOwner
                | ErrorCode::OutOfOrderSequence
                | ErrorCode::NotEnoughReplicas
                | ErrorCode::NotEnoughReplicasAfterAppend
                | ErrorCode::ReplicationTimeout
        )
    }
}

/// Which offset a `ListOffset` request asks for.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetQuery {
    /// The log start offset.
    Earliest,
    /// The high watermark.
    Latest,
    /// The first offset with a timestamp at or after `ms`.
    Timestamp {
        /// Milliseconds since the Unix epoch.
        ms: i64,
    },
}

/// The place of a produce request among the requests for its partition on its connection
/// (net/PROTOCOL.md, "Produce ordering"): the server appends it only after the requests it
/// follows.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProduceSequence {
    /// 0 for the connection's first sequenced produce to the partition, then one more per
    /// request, in the order the requests were written.
    pub sequence: u64,
    /// The sequence of the oldest earlier request for the partition on the connection that
    /// had no answer when this one was written; `sequence` when there was none.
    pub unanswered_from: u64,
}

/// A request header.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Brokers, shard endpoints and partitions of the named topics (all when `None`).
    Metadata {
        /// Topic filter.
        topics: Option<Vec<String>>,
    },
    /// Append the payload's record batches. `acks`: 0, 1 or -1 (all).
    Produce {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Acknowledgement level.
        acks: i8,
        /// Ordering after the earlier requests of the partition on this connection; `None`
        /// for a request that need not follow any.
        sequence: Option<ProduceSequence>,
    },
    /// Read record batches.
    Fetch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// First offset wanted.
        offset: i64,
        /// Soft byte limit; at least one batch is returned.
        max_bytes: u32,
        /// How long to wait when no data is available.
        max_wait_ms: u32,
    },
    /// Look up an offset.
    ListOffset {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Which offset.
        query: OffsetQuery,
    },
    /// Create a topic.
    CreateTopic {
        /// Name.
        name: String,
        /// Partition count.
        partitions: i32,
        /// Replication factor.
        replication: i16,
        /// Config overrides.
        configs: Vec<(String, String)>,
    },
    /// Delete a topic and its data.
    DeleteTopic {
        /// Name.
        name: String,
    },
    /// Partitions, offsets, sizes and configs of a topic.
    DescribeTopic {
        /// Name.
        name: String,
    },
    /// Set (`Some`) or remove (`None`) config overrides.
    AlterConfig {
        /// Topic.
        name: String,
        /// Changes.
        changes: Vec<(String, Option<String>)>,
    },
    /// Grow a topic to `total` partitions.
    CreatePartitions {
        /// Topic.
        name: String,
        /// New total.
        total: i32,
    },
    /// Advance the log start offset (`-1`: to the high watermark).
    DeleteRecords {
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// New start offset.
        before: i64,
    },
    /// A consumer group member's heartbeat: join (`member_epoch` 0, `member_id` empty), stay
    /// (the epoch of the last answer, and the partitions it owns), or leave (`member_epoch`
    /// -1).
    GroupHeartbeat {
        /// Group id.
        group_id: String,
        /// Member id; empty when joining.
        member_id: String,
        /// 0 to join, -1 to leave, else the epoch of the last answer.
        member_epoch: i32,
        /// Client id, shown by describe.
        client_id: String,
        /// Without a heartbeat for this long the member is removed.
        session_timeout_ms: u32,
        /// Subscribed topics.
        topics: Vec<String>,
        /// Partitions the member owns now.
        owned: Vec<TopicPartitions>,
    },
    /// Commit offsets for a group. A member sends its id and epoch; an admin (offset resets)
    /// sends an empty id and epoch -1, accepted only while the group has no members.
    CommitOffsets {
        /// Group id.
        group_id: String,
        /// Member id, or empty.
        member_id: String,
        /// The member's epoch, or -1.
        member_epoch: i32,
        /// The offsets: the next offset to read per partition.
        offsets: Vec<OffsetCommit>,
    },
    /// A group's committed offsets (`None`: every partition it has one for).
    FetchOffsets {
        /// Group id.
        group_id: String,
        /// Partitions wanted.
        partitions: Option<Vec<TopicPartitions>>,
    },
    /// Every group of the broker, native and Kafka (classic).
    ListGroups,
    /// A group's state and members.
    DescribeGroup {
        /// Group id.
        group_id: String,
    },
    /// Delete a group without members and its committed offsets.
    DeleteGroup {
        /// Group id.
        group_id: String,
    },
}

/// Partitions of one topic.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TopicPartitions {
    /// Topic.
    pub topic: String,
    /// Partitions.
    pub partitions: Vec<i32>,
}

/// One offset to commit.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OffsetCommit {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset to read.
    pub offset: i64,
    /// Client metadata.
    pub metadata: String,
}

/// One partition's outcome in a `Committed` answer.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PartitionResult {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// `None` when committed.
    pub error: Option<ErrorCode>,
}

/// One committed offset.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffsetInfo {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The committed offset, -1 when none.
    pub offset: i64,
    /// Its metadata.
    pub metadata: String,
}

/// One group in a `Groups` answer.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GroupSummary {
    /// Group id.
    pub group_id: String,
    /// `consumer` (native) or `classic` (Kafka's protocol, or offsets only).
    pub group_type: String,
    /// Protocol type (`consumer` for consumers, empty for offsets only).
    pub protocol_type: String,
    /// State: Empty, Stable, Reconciling, PreparingRebalance, CompletingRebalance, Dead.
    pub state: String,
}

/// One member in a `Group` answer.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member id.
    pub member_id: String,
    /// Static membership id (classic groups).
    pub instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host (classic groups; empty for native members).
    pub client_host: String,
    /// Member epoch (native) or the group's generation (classic).
    pub member_epoch: i32,
    /// Subscribed topics, when known.
    pub topics: Vec<String>,
    /// The partitions the member owns.
    pub assignment: Vec<TopicPartitions>,
}

/// A group in a `Group` answer.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// Group id.
    pub group_id: String,
    /// `consumer` or `classic`.
    pub group_type: String,
    /// State.
    pub state: String,
    /// Protocol type.
    pub protocol_type: String,
    /// Assignor (native: the broker's; classic: the one the members chose).
    pub protocol: String,
    /// Group epoch (native) or generation (classic).
    pub epoch: i32,
    /// Members.
    pub members: Vec<MemberInfo>,
}

/// One broker as the metadata response describes it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BrokerEndpoint {
    /// Node id.
    pub id: i32,
    /// QUIC endpoint of each shard, `host:port`, indexed by shard id.
    pub shards: Vec<String>,
    /// Kafka listener, `host:port`.
    pub kafka: String,
}

/// One partition in a metadata or describe response.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    /// Partition number.
    pub partition: i32,
    /// Leader broker.
    pub leader: i32,
    /// Shard on the leader that owns the partition.
    pub shard: u16,
    /// Replicas.
    pub replicas: Vec<i32>,
    /// In-sync replicas.
    pub isr: Vec<i32>,
    /// Log start offset (describe only; 0 in metadata).
    pub log_start_offset: i64,
    /// Log end offset (describe only).
    pub log_end_offset: i64,
    /// High watermark (describe only).
    pub high_watermark: i64,
    /// Bytes on disk (describe only).
    pub size_bytes: u64,
}

/// A topic in a metadata or describe response.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    /// Name.
    pub name: String,
    /// Partitions in order.
    pub partitions: Vec<PartitionInfo>,
    /// Effective configs: (key, value, is_override); describe only.
    pub configs: Vec<(String, String, bool)>,
}

/// A response header.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The request failed.
    Error {
        /// Stable code.
        code: ErrorCode,
        /// One human-readable line.
        message: String,
    },
    /// Answer to `Metadata`.
    Metadata {
        /// Cluster id.
        cluster_id: String,
        /// Brokers and their shard endpoints.
        brokers: Vec<BrokerEndpoint>,
        /// Topics.
        topics: Vec<TopicInfo>,
    },
    /// Answer to `Produce`.
    Produced {
        /// Offset of the first record.
        base_offset: i64,
        /// Offset of the last record.
        last_offset: i64,
        /// Log-append time if the topic uses it, else -1.
        log_append_time: i64,
    },
    /// Answer to `Fetch`; the payload holds the batches.
    Fetched {
        /// High watermark.
        high_watermark: i64,
        /// Log start offset.
        log_start_offset: i64,
    },
    /// Answer to `ListOffset`; `offset` is -1 when no record matches the timestamp.
    Offset {
        /// The offset.
        offset: i64,
        /// Its timestamp when looked up by time, else -1.
        timestamp: i64,
    },
    /// Answer to `DescribeTopic`.
    Topic {
        /// The topic.
        topic: TopicInfo,
    },
    /// Answer to admin requests without data, and to `DeleteRecords` (new start offset).
    Done {
        /// New log start offset for `DeleteRecords`, else 0.
        value: i64,
    },
    /// Answer to `GroupHeartbeat`.
    GroupHeartbeat {
        /// The member's id (new when it joined).
        member_id: String,
        /// The member's epoch (-1 after leaving); commits carry it.
        member_epoch: i32,
        /// Heartbeat again within this long (shorter while partitions move).
        heartbeat_interval_ms: u32,
        /// Every partition the member may own. Owned partitions missing here must be revoked:
        /// commit what was processed, stop fetching, and leave them out of the next heartbeat.
        assignment: Vec<TopicPartitions>,
    },
    /// Answer to `CommitOffsets`: one result per partition.
    Committed {
        /// Results.
        partitions: Vec<PartitionResult>,
    },
    /// Answer to `FetchOffsets`.
    Offsets {
        /// The committed offsets.
        offsets: Vec<CommittedOffsetInfo>,
    },
    /// Answer to `ListGroups`.
    Groups {
        /// Groups sorted by id.
        groups: Vec<GroupSummary>,
    },
    /// Answer to `DescribeGroup`.
    Group {
        /// The group (boxed: it is by far the largest answer header).
        group: Box<GroupInfo>,
    },
}

impl TopicPartitions {
    /// Groups `(topic, partition)` pairs by topic, keeping first-seen topic order.
    pub fn group<'a>(pairs: impl IntoIterator<Item = (&'a str, i32)>) -> Vec<TopicPartitions> {
        let mut out: Vec<TopicPartitions> = Vec::new();
        for (topic, partition) in pairs {
            match out.iter_mut().find(|t| t.topic == topic) {
                Some(t) => t.partitions.push(partition),
                None => out.push(TopicPartitions {
                    topic: topic.to_owned(),
                    partitions: vec![partition],
                }),
            }
        }
        out
    }

    /// The `(topic, partition)` pairs, in order.
    pub fn pairs(list: &[TopicPartitions]) -> impl Iterator<Item = (&str, i32)> {
        list.iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t.topic.as_str(), *p)))
    }
}

/// Serialises a header with rkyv.
pub fn encode<T>(value: &T) -> rkyv::util::AlignedVec
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    rkyv::to_bytes::<rkyv::rancor::Error>(value).expect("serialising into memory cannot fail")
}

/// Validates and deserialises a request header. `bytes` must be 16-byte aligned.
pub fn decode_request(bytes: &[u8]) -> Result<Request, rkyv::rancor::Error> {
    rkyv::from_bytes::<Request, rkyv::rancor::Error>(bytes)
}

/// Validates and deserialises a response header. `bytes` must be 16-byte aligned.
pub fn decode_response(bytes: &[u8]) -> Result<Response, rkyv::rancor::Error> {
    rkyv::from_bytes::<Response, rkyv::rancor::Error>(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: every request and response kind survives encode → validate → decode unchanged.
    #[test]
    fn headers_round_trip() {
        let requests = vec![
            Request::Metadata {
                topics: Some(vec!["a".into()]),
            },
            Request::Produce {
                topic: "t".into(),
                partition: 3,
                acks: -1,
                sequence: Some(ProduceSequence {
                    sequence: 9,
                    unanswered_from: 7,
                }),
            },
            Request::Fetch {
                topic: "t".into(),
                partition: 0,
                offset: 42,
                max_bytes: 1 << 20,
                max_wait_ms: 500,
            },
            Request::ListOffset {
                topic: "t".into(),
                partition: 0,
                query: OffsetQuery::Timestamp { ms: 7 },
            },
            Request::CreateTopic {
                name: "n".into(),
                partitions: 4,
                replication: 1,
                configs: vec![("retention.ms".into(), "1".into())],
            },
            Request::AlterConfig {
                name: "n".into(),
                changes: vec![("a".into(), None)],
            },
            Request::DeleteRecords {
                topic: "t".into(),
                partition: 1,
                before: -1,
            },
            Request::GroupHeartbeat {
                group_id: "g".into(),
                member_id: "m".into(),
                member_epoch: 3,
                client_id: "c".into(),
                session_timeout_ms: 10_000,
                topics: vec!["t".into()],
                owned: TopicPartitions::group([("t", 0), ("t", 2)]),
            },
            Request::CommitOffsets {
                group_id: "g".into(),
                member_id: String::new(),
                member_epoch: -1,
                offsets: vec![OffsetCommit {
                    topic: "t".into(),
                    partition: 0,
                    offset: 7,
                    metadata: String::new(),
                }],
            },
            Request::FetchOffsets {
                group_id: "g".into(),
                partitions: None,
            },
            Request::ListGroups,
            Request::DescribeGroup {
                group_id: "g".into(),
            },
            Request::DeleteGroup {
                group_id: "g".into(),
            },
        ];
        for request in requests {
            let bytes = encode(&request);
            assert_eq!(decode_request(&bytes).expect("valid"), request);
        }
        let responses = vec![
            Response::Error {
                code: ErrorCode::NotOwner,
                message: "moved".into(),
            },
            Response::GroupHeartbeat {
                member_id: "m".into(),
                member_epoch: 4,
                heartbeat_interval_ms: 200,
                assignment: TopicPartitions::group([("a", 1), ("b", 0), ("a", 3)]),
            },
            Response::Committed {
                partitions: vec![PartitionResult {
                    topic: "t".into(),
                    partition: 1,
                    error: Some(ErrorCode::PartitionNotAssigned),
                }],
            },
        ];
        for response in responses {
            assert_eq!(
                decode_response(&encode(&response)).expect("valid"),
                response
            );
        }
        assert_eq!(
            TopicPartitions::group([("a", 1), ("b", 0), ("a", 3)]),
            vec![
                TopicPartitions {
                    topic: "a".into(),
                    partitions: vec![1, 3]
                },
                TopicPartitions {
                    topic: "b".into(),
                    partitions: vec![0]
                },
            ]
        );
    }

    // Goal: garbage and truncated headers are rejected by validation, never trusted.
    #[test]
    fn garbage_rejected() {
        let bytes = encode(&Request::Produce {
            topic: "topic".into(),
            partition: 1,
            acks: 1,
            sequence: None,
        });
        for cut in 0..bytes.len() {
            let mut aligned = rkyv::util::AlignedVec::<16>::new();
            aligned.extend_from_slice(&bytes[..cut]);
            assert!(decode_request(&aligned).is_err() || cut == bytes.len());
        }
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&[0xff; 64]);
        assert!(decode_request(&aligned).is_err());
    }
}
