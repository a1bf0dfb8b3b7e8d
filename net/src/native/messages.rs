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
        ];
        for request in requests {
            let bytes = encode(&request);
            assert_eq!(decode_request(&bytes).expect("valid"), request);
        }
        let response = Response::Error {
            code: ErrorCode::NotOwner,
            message: "moved".into(),
        };
        assert_eq!(
            decode_response(&encode(&response)).expect("valid"),
            response
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
