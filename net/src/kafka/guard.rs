//! A structural pre-check of request bodies that bounds what decoding will allocate.
//!
//! The `kafka-protocol` 0.18 decoders size each array with `Vec::with_capacity(count)` straight
//! from the wire, before reading an element. A 16-byte Metadata request declaring two billion
//! topics asks for hundreds of gigabytes, and a failed allocation aborts the process instead of
//! returning an error. Until the crate bounds this itself, every request body is walked here
//! first: the walk knows where each array count sits (from Kafka's message schemas, for the
//! versions in [`super::versions::SUPPORTED_APIS`]) and rejects a count larger than the bytes
//! left (every element takes at least one byte) or a request with more elements in all than
//! [`KAFKA_REQUEST_ARRAY_ELEMENTS_MAX`]. It does not decode values; the crate does that next.
//!
//! The shapes below are checked against the crate's encoders by a test that encodes populated
//! requests at every supported version and requires the walk to consume exactly every byte.
//!
//! Must not depend on: the shard API or sockets.

use kafka_protocol::messages::ApiKey;

use crate::limits::KAFKA_REQUEST_ARRAY_ELEMENTS_MAX;

/// Why a request body failed the pre-check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// The body ends inside a field.
    #[error("request body truncated at byte {at}")]
    Truncated {
        /// Where the missing field starts.
        at: usize,
    },
    /// An array declares more elements than bytes remain.
    #[error("array of {count} elements with {remaining} bytes left")]
    ArrayTooLong {
        /// Declared count.
        count: u64,
        /// Bytes left in the body.
        remaining: usize,
    },
    /// A length prefix is negative (other than -1 for null) or does not fit.
    #[error("invalid length {0}")]
    InvalidLength(i64),
    /// All arrays together hold more elements than the limit.
    #[error("more than {max} array elements in one request")]
    TooManyElements {
        /// The limit.
        max: usize,
    },
    /// No shape is known for this API and version; it must not be decoded.
    #[error("no request shape for api {api:?} v{version}")]
    UnknownShape {
        /// The API.
        api: ApiKey,
        /// The version.
        version: i16,
    },
}

/// A field's wire type. Strings, bytes and arrays change encoding in flexible versions.
#[derive(Clone, Copy)]
enum Ty {
    Int8,
    Int16,
    Int32,
    Int64,
    Uuid,
    /// A string, nullable or not (the walk accepts null for both; the decoder is stricter).
    Str,
    /// Bytes or records, nullable or not.
    Bytes,
    /// An array of structs; each element ends with tagged fields in flexible versions.
    Structs(&'static [Field]),
    /// An array of a primitive type.
    Prims(&'static Ty),
}

/// A field present in versions `min..=max`.
#[derive(Clone, Copy)]
struct Field {
    ty: Ty,
    min: i16,
    max: i16,
}

const ALL: i16 = i16::MAX;

const fn f(ty: Ty, min: i16, max: i16) -> Field {
    Field { ty, min, max }
}

/// A top-level request shape: its fields, and the first flexible version.
struct Shape {
    fields: &'static [Field],
    flexible_from: i16,
}

const I32S: Ty = Ty::Int32;
const STRS: Ty = Ty::Str;

const METADATA_TOPIC: &[Field] = &[f(Ty::Uuid, 10, ALL), f(Ty::Str, 0, ALL)];
const METADATA: &[Field] = &[
    f(Ty::Structs(METADATA_TOPIC), 0, ALL),
    f(Ty::Int8, 4, ALL),
    f(Ty::Int8, 8, 10),
    f(Ty::Int8, 8, ALL),
];

const PRODUCE_PARTITION: &[Field] = &[f(Ty::Int32, 0, ALL), f(Ty::Bytes, 0, ALL)];
const PRODUCE_TOPIC: &[Field] = &[
    f(Ty::Str, 0, 12),
    f(Ty::Uuid, 13, ALL),
    f(Ty::Structs(PRODUCE_PARTITION), 0, ALL),
];
const PRODUCE: &[Field] = &[
    f(Ty::Str, 0, ALL),
    f(Ty::Int16, 0, ALL),
    f(Ty::Int32, 0, ALL),
    f(Ty::Structs(PRODUCE_TOPIC), 0, ALL),
];

const FETCH_PARTITION: &[Field] = &[
    f(Ty::Int32, 0, ALL),
    f(Ty::Int32, 9, ALL),
    f(Ty::Int64, 0, ALL),
    f(Ty::Int32, 12, ALL),
    f(Ty::Int64, 5, ALL),
    f(Ty::Int32, 0, ALL),
];
const FETCH_TOPIC: &[Field] = &[
    f(Ty::Str, 0, 12),
    f(Ty::Uuid, 13, ALL),
    f(Ty::Structs(FETCH_PARTITION), 0, ALL),
];
const FETCH_FORGOTTEN: &[Field] = &[
    f(Ty::Str, 7, 12),
    f(Ty::Uuid, 13, ALL),
    f(Ty::Prims(&I32S), 7, ALL),
];
const FETCH: &[Field] = &[
    f(Ty::Int32, 0, 14),
    f(Ty::Int32, 0, ALL),
    f(Ty::Int32, 0, ALL),
    f(Ty::Int32, 0, ALL),
    f(Ty::Int8, 0, ALL),
    f(Ty::Int32, 7, ALL),
    f(Ty::Int32, 7, ALL),
    f(Ty::Structs(FETCH_TOPIC), 0, ALL),
    f(Ty::Structs(FETCH_FORGOTTEN), 7, ALL),
    f(Ty::Str, 11, ALL),
];

const LIST_OFFSETS_PARTITION: &[Field] = &[
    f(Ty::Int32, 0, ALL),
    f(Ty::Int32, 4, ALL),
    f(Ty::Int64, 0, ALL),
];
const LIST_OFFSETS_TOPIC: &[Field] = &[
    f(Ty::Str, 0, ALL),
    f(Ty::Structs(LIST_OFFSETS_PARTITION), 0, ALL),
];
const LIST_OFFSETS: &[Field] = &[
    f(Ty::Int32, 0, ALL),
    f(Ty::Int8, 2, ALL),
    f(Ty::Structs(LIST_OFFSETS_TOPIC), 0, ALL),
    f(Ty::Int32, 9, ALL),
];

const CREATE_TOPICS_ASSIGNMENT: &[Field] = &[f(Ty::Int32, 0, ALL), f(Ty::Prims(&I32S), 0, ALL)];
const CREATE_TOPICS_CONFIG: &[Field] = &[f(Ty::Str, 0, ALL), f(Ty::Str, 0, ALL)];
const CREATE_TOPICS_TOPIC: &[Field] = &[
    f(Ty::Str, 0, ALL),
    f(Ty::Int32, 0, ALL),
    f(Ty::Int16, 0, ALL),
    f(Ty::Structs(CREATE_TOPICS_ASSIGNMENT), 0, ALL),
    f(Ty::Structs(CREATE_TOPICS_CONFIG), 0, ALL),
];
const CREATE_TOPICS: &[Field] = &[
    f(Ty::Structs(CREATE_TOPICS_TOPIC), 0, ALL),
    f(Ty::Int32, 0, ALL),
    f(Ty::Int8, 0, ALL),
];

const DELETE_TOPICS_STATE: &[Field] = &[f(Ty::Str, 6, ALL), f(Ty::Uuid, 6, ALL)];
const DELETE_TOPICS: &[Field] = &[
    f(Ty::Structs(DELETE_TOPICS_STATE), 6, ALL),
    f(Ty::Prims(&STRS), 0, 5),
    f(Ty::Int32, 0, ALL),
];

const CREATE_PARTITIONS_ASSIGNMENT: &[Field] = &[f(Ty::Prims(&I32S), 0, ALL)];
const CREATE_PARTITIONS_TOPIC: &[Field] = &[
    f(Ty::Str, 0, ALL),
    f(Ty::Int32, 0, ALL),
    f(Ty::Structs(CREATE_PARTITIONS_ASSIGNMENT), 0, ALL),
];
const CREATE_PARTITIONS: &[Field] = &[
    f(Ty::Structs(CREATE_PARTITIONS_TOPIC), 0, ALL),
    f(Ty::Int32, 0, ALL),
    f(Ty::Int8, 0, ALL),
];

const DESCRIBE_CONFIGS_RESOURCE: &[Field] = &[
    f(Ty::Int8, 0, ALL),
    f(Ty::Str, 0, ALL),
    f(Ty::Prims(&STRS), 0, ALL),
];
const DESCRIBE_CONFIGS: &[Field] = &[
    f(Ty::Structs(DESCRIBE_CONFIGS_RESOURCE), 0, ALL),
    f(Ty::Int8, 0, ALL),
    f(Ty::Int8, 3, ALL),
];

const ALTER_CONFIGS_ENTRY: &[Field] = &[f(Ty::Str, 0, ALL), f(Ty::Str, 0, ALL)];
const ALTER_CONFIGS_RESOURCE: &[Field] = &[
    f(Ty::Int8, 0, ALL),
    f(Ty::Str, 0, ALL),
    f(Ty::Structs(ALTER_CONFIGS_ENTRY), 0, ALL),
];
const ALTER_CONFIGS: &[Field] = &[
    f(Ty::Structs(ALTER_CONFIGS_RESOURCE), 0, ALL),
    f(Ty::Int8, 0, ALL),
];

const INCREMENTAL_ENTRY: &[Field] = &[f(Ty::Str, 0, ALL), f(Ty::Int8, 0, ALL), f(Ty::Str, 0, ALL)];
const INCREMENTAL_RESOURCE: &[Field] = &[
    f(Ty::Int8, 0, ALL),
    f(Ty::Str, 0, ALL),
    f(Ty::Structs(INCREMENTAL_ENTRY), 0, ALL),
];
const INCREMENTAL_ALTER_CONFIGS: &[Field] = &[
    f(Ty::Structs(INCREMENTAL_RESOURCE), 0, ALL),
    f(Ty::Int8, 0, ALL),
];

const DELETE_RECORDS_PARTITION: &[Field] = &[f(Ty::Int32, 0, ALL), f(Ty::Int64, 0, ALL)];
const DELETE_RECORDS_TOPIC: &[Field] = &[
    f(Ty::Str, 0, ALL),
    f(Ty::Structs(DELETE_RECORDS_PARTITION), 0, ALL),
];
const DELETE_RECORDS: &[Field] = &[
    f(Ty::Structs(DELETE_RECORDS_TOPIC), 0, ALL),
    f(Ty::Int32, 0, ALL),
];

const EPOCH_PARTITION: &[Field] = &[
    f(Ty::Int32, 0, ALL),
    f(Ty::Int32, 0, ALL),
    f(Ty::Int32, 0, ALL),
];
const EPOCH_TOPIC: &[Field] = &[f(Ty::Str, 0, ALL), f(Ty::Structs(EPOCH_PARTITION), 0, ALL)];
const OFFSET_FOR_LEADER_EPOCH: &[Field] =
    &[f(Ty::Int32, 3, ALL), f(Ty::Structs(EPOCH_TOPIC), 0, ALL)];

const DESCRIBE_CLUSTER: &[Field] = &[
    f(Ty::Int8, 0, ALL),
    f(Ty::Int8, 1, ALL),
    f(Ty::Int8, 2, ALL),
];

const FIND_COORDINATOR: &[Field] = &[
    f(Ty::Str, 0, 3),
    f(Ty::Int8, 1, ALL),
    f(Ty::Prims(&STRS), 4, ALL),
];

const API_VERSIONS: &[Field] = &[f(Ty::Str, 3, ALL), f(Ty::Str, 3, ALL)];

fn shape(api: ApiKey) -> Option<Shape> {
    let (fields, flexible_from) = match api {
        ApiKey::Metadata => (METADATA, 9),
        ApiKey::Produce => (PRODUCE, 9),
        ApiKey::Fetch => (FETCH, 12),
        ApiKey::ListOffsets => (LIST_OFFSETS, 6),
        ApiKey::CreateTopics => (CREATE_TOPICS, 5),
        ApiKey::DeleteTopics => (DELETE_TOPICS, 4),
        ApiKey::CreatePartitions => (CREATE_PARTITIONS, 2),
        ApiKey::DescribeConfigs => (DESCRIBE_CONFIGS, 4),
        ApiKey::AlterConfigs => (ALTER_CONFIGS, 2),
        ApiKey::IncrementalAlterConfigs => (INCREMENTAL_ALTER_CONFIGS, 1),
        ApiKey::DeleteRecords => (DELETE_RECORDS, 2),
        ApiKey::OffsetForLeaderEpoch => (OFFSET_FOR_LEADER_EPOCH, 4),
        ApiKey::DescribeCluster => (DESCRIBE_CLUSTER, 0),
        ApiKey::FindCoordinator => (FIND_COORDINATOR, 3),
        ApiKey::ApiVersions => (API_VERSIONS, 3),
        _ => return None,
    };
    Some(Shape {
        fields,
        flexible_from,
    })
}

/// Walks `body` (the bytes after the request header) of `api` at `version`. Returns the bytes
/// consumed; trailing bytes are left for the decoder to judge.
pub fn check(api: ApiKey, version: i16, body: &[u8]) -> Result<usize, GuardError> {
    let shape = shape(api).ok_or(GuardError::UnknownShape { api, version })?;
    let mut walk = Walk {
        buf: body,
        pos: 0,
        version,
        flexible: version >= shape.flexible_from,
        elements: 0,
    };
    walk.fields(shape.fields)?;
    Ok(walk.pos)
}

struct Walk<'a> {
    buf: &'a [u8],
    pos: usize,
    version: i16,
    flexible: bool,
    /// Array elements seen so far. Invariant: at most `KAFKA_REQUEST_ARRAY_ELEMENTS_MAX`.
    elements: usize,
}

impl Walk<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8], GuardError> {
        if n > self.remaining() {
            return Err(GuardError::Truncated { at: self.pos });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn int(&mut self, n: usize) -> Result<i64, GuardError> {
        let bytes = self.take(n)?;
        Ok(bytes.iter().fold(0i64, |acc, b| (acc << 8) | i64::from(*b)))
    }

    fn uvarint(&mut self) -> Result<u64, GuardError> {
        let mut value = 0u64;
        // A u32 varint has at most five bytes.
        for shift in (0..35).step_by(7) {
            let byte = self.take(1)?[0];
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(GuardError::InvalidLength(-1))
    }

    /// A length prefix: `None` for null, else the length.
    fn length(&mut self, non_flexible_bytes: usize) -> Result<Option<usize>, GuardError> {
        let length = if self.flexible {
            match self.uvarint()? {
                0 => return Ok(None),
                n => n - 1,
            }
        } else {
            let n = self.int(non_flexible_bytes)?;
            let n = if non_flexible_bytes == 2 {
                i64::from(n as u16 as i16)
            } else {
                n as i32 as i64
            };
            match n {
                -1 => return Ok(None),
                n if n < 0 => return Err(GuardError::InvalidLength(n)),
                n => n as u64,
            }
        };
        usize::try_from(length)
            .map(Some)
            .map_err(|_| GuardError::InvalidLength(-1))
    }

    fn fields(&mut self, fields: &[Field]) -> Result<(), GuardError> {
        for field in fields {
            if (field.min..=field.max).contains(&self.version) {
                self.value(field.ty)?;
            }
        }
        if self.flexible {
            self.tagged_fields()?;
        }
        Ok(())
    }

    fn tagged_fields(&mut self) -> Result<(), GuardError> {
        let count = self.uvarint()?;
        // Each tagged field takes at least two bytes (tag and size).
        if count > self.remaining() as u64 {
            return Err(GuardError::ArrayTooLong {
                count,
                remaining: self.remaining(),
            });
        }
        for _ in 0..count {
            let _tag = self.uvarint()?;
            let size = self.uvarint()?;
            let size = usize::try_from(size).map_err(|_| GuardError::InvalidLength(-1))?;
            self.take(size)?;
        }
        Ok(())
    }

    fn value(&mut self, ty: Ty) -> Result<(), GuardError> {
        match ty {
            Ty::Int8 => self.take(1).map(drop),
            Ty::Int16 => self.take(2).map(drop),
            Ty::Int32 => self.take(4).map(drop),
            Ty::Int64 => self.take(8).map(drop),
            Ty::Uuid => self.take(16).map(drop),
            Ty::Str => match self.length(2)? {
                Some(n) => self.take(n).map(drop),
                None => Ok(()),
            },
            Ty::Bytes => match self.length(4)? {
                Some(n) => self.take(n).map(drop),
                None => Ok(()),
            },
            Ty::Structs(fields) => {
                let count = self.array_count()?;
                for _ in 0..count {
                    self.fields(fields)?;
                }
                Ok(())
            }
            Ty::Prims(element) => {
                let count = self.array_count()?;
                for _ in 0..count {
                    self.value(*element)?;
                }
                Ok(())
            }
        }
    }

    fn array_count(&mut self) -> Result<usize, GuardError> {
        let Some(count) = self.length(4)? else {
            return Ok(0);
        };
        if count > self.remaining() {
            return Err(GuardError::ArrayTooLong {
                count: count as u64,
                remaining: self.remaining(),
            });
        }
        self.elements += count;
        if self.elements > KAFKA_REQUEST_ARRAY_ELEMENTS_MAX {
            return Err(GuardError::TooManyElements {
                max: KAFKA_REQUEST_ARRAY_ELEMENTS_MAX,
            });
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use kafka_protocol::messages::alter_configs_request::{
        AlterConfigsRequest, AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
    use kafka_protocol::messages::create_partitions_request::{
        CreatePartitionsAssignment, CreatePartitionsRequest, CreatePartitionsTopic,
    };
    use kafka_protocol::messages::create_topics_request::{
        CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig, CreateTopicsRequest,
    };
    use kafka_protocol::messages::delete_records_request::{
        DeleteRecordsPartition, DeleteRecordsRequest, DeleteRecordsTopic,
    };
    use kafka_protocol::messages::delete_topics_request::{DeleteTopicState, DeleteTopicsRequest};
    use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
    use kafka_protocol::messages::describe_configs_request::{
        DescribeConfigsRequest, DescribeConfigsResource,
    };
    use kafka_protocol::messages::fetch_request::{
        FetchPartition, FetchRequest, FetchTopic, ForgottenTopic,
    };
    use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
    use kafka_protocol::messages::incremental_alter_configs_request as incremental;
    use kafka_protocol::messages::list_offsets_request::{
        ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
    };
    use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderEpochRequest, OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    use kafka_protocol::messages::produce_request::{
        PartitionProduceData, ProduceRequest, TopicProduceData,
    };
    use kafka_protocol::messages::{BrokerId, RequestKind, TopicName};
    use kafka_protocol::protocol::StrBytes;

    use super::*;
    use crate::kafka::versions::SUPPORTED_APIS;

    fn s(text: &'static str) -> StrBytes {
        StrBytes::from_static_str(text)
    }

    fn two<T: Clone>(x: T) -> Vec<T> {
        vec![x.clone(), x]
    }

    fn topic(text: &'static str) -> TopicName {
        TopicName(s(text))
    }

    /// A request of `api` with two-element arrays at every level and non-empty strings, so
    /// every length prefix and nested element is on the wire.
    fn populated(api: ApiKey) -> RequestKind {
        match api {
            ApiKey::ApiVersions => ApiVersionsRequest::default()
                .with_client_software_name(s("walk"))
                .with_client_software_version(s("1.0"))
                .into(),
            ApiKey::Metadata => MetadataRequest::default()
                .with_topics(Some(two(
                    MetadataRequestTopic::default().with_name(Some(topic("t")))
                )))
                .into(),
            ApiKey::Produce => ProduceRequest::default()
                .with_transactional_id(None)
                .with_topic_data(two(TopicProduceData::default()
                    .with_name(topic("t"))
                    .with_partition_data(two(PartitionProduceData::default()
                        .with_records(Some(bytes::Bytes::from_static(b"abc")))))))
                .into(),
            ApiKey::Fetch => FetchRequest::default()
                .with_topics(two(FetchTopic::default()
                    .with_topic(topic("t"))
                    .with_partitions(two(FetchPartition::default()
                        .with_partition(1)
                        .with_fetch_offset(2)))))
                .with_forgotten_topics_data(two(ForgottenTopic::default()
                    .with_topic(topic("f"))
                    .with_partitions(vec![1, 2])))
                .with_rack_id(s("rack"))
                .into(),
            ApiKey::ListOffsets => ListOffsetsRequest::default()
                .with_topics(two(ListOffsetsTopic::default()
                    .with_name(topic("t"))
                    .with_partitions(two(
                        ListOffsetsPartition::default().with_timestamp(-1)
                    ))))
                .into(),
            ApiKey::CreateTopics => CreateTopicsRequest::default()
                .with_topics(two(CreatableTopic::default()
                    .with_name(topic("t"))
                    .with_assignments(two(CreatableReplicaAssignment::default()
                        .with_broker_ids(vec![BrokerId(1), BrokerId(2)])))
                    .with_configs(vec![
                        CreatableTopicConfig::default()
                            .with_name(s("k"))
                            .with_value(Some(s("v"))),
                        CreatableTopicConfig::default()
                            .with_name(s("k2"))
                            .with_value(None),
                    ])))
                .into(),
            ApiKey::DeleteTopics => DeleteTopicsRequest::default()
                .with_topic_names(two(topic("t")))
                .with_topics(two(DeleteTopicState::default().with_name(Some(topic("t")))))
                .into(),
            ApiKey::CreatePartitions => CreatePartitionsRequest::default()
                .with_topics(two(CreatePartitionsTopic::default()
                    .with_name(topic("t"))
                    .with_count(3)
                    .with_assignments(Some(two(CreatePartitionsAssignment::default()
                        .with_broker_ids(vec![BrokerId(1), BrokerId(2)]))))))
                .into(),
            ApiKey::DescribeConfigs => DescribeConfigsRequest::default()
                .with_resources(two(DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("t"))
                    .with_configuration_keys(Some(vec![s("a"), s("bb")]))))
                .into(),
            ApiKey::AlterConfigs => AlterConfigsRequest::default()
                .with_resources(two(AlterConfigsResource::default()
                    .with_resource_name(s("t"))
                    .with_configs(two(AlterableConfig::default()
                        .with_name(s("k"))
                        .with_value(Some(s("v")))))))
                .into(),
            ApiKey::IncrementalAlterConfigs => {
                incremental::IncrementalAlterConfigsRequest::default()
                    .with_resources(two(incremental::AlterConfigsResource::default()
                        .with_resource_name(s("t"))
                        .with_configs(two(incremental::AlterableConfig::default()
                            .with_name(s("k"))
                            .with_value(Some(s("v")))))))
                    .into()
            }
            ApiKey::DeleteRecords => DeleteRecordsRequest::default()
                .with_topics(two(DeleteRecordsTopic::default()
                    .with_name(topic("t"))
                    .with_partitions(two(
                        DeleteRecordsPartition::default().with_offset(5)
                    ))))
                .into(),
            ApiKey::OffsetForLeaderEpoch => OffsetForLeaderEpochRequest::default()
                .with_topics(two(OffsetForLeaderTopic::default()
                    .with_topic(topic("t"))
                    .with_partitions(two(OffsetForLeaderPartition::default()))))
                .into(),
            ApiKey::DescribeCluster => DescribeClusterRequest::default().into(),
            ApiKey::FindCoordinator => FindCoordinatorRequest::default()
                .with_key(s("group"))
                .with_coordinator_keys(vec![s("a"), s("bb")])
                .into(),
            other => panic!("no populated request for {other:?}"),
        }
    }

    /// Clears the fields a version lacks (the encoder refuses non-default values there).
    fn for_version(request: RequestKind, version: i16) -> RequestKind {
        match request {
            RequestKind::Fetch(r) if version >= 13 => {
                let topics = r
                    .topics
                    .iter()
                    .cloned()
                    .map(|t| t.with_topic(TopicName::default()))
                    .collect();
                let forgotten = r
                    .forgotten_topics_data
                    .iter()
                    .cloned()
                    .map(|t| t.with_topic(TopicName::default()))
                    .collect();
                RequestKind::Fetch(r.with_topics(topics).with_forgotten_topics_data(forgotten))
            }
            RequestKind::Fetch(r) if version < 7 => {
                RequestKind::Fetch(r.with_forgotten_topics_data(Vec::new()).with_rack_id(s("")))
            }
            RequestKind::Fetch(r) if version < 11 => RequestKind::Fetch(r.with_rack_id(s(""))),
            RequestKind::DeleteTopics(r) if version >= 6 => {
                RequestKind::DeleteTopics(r.with_topic_names(Vec::new()))
            }
            RequestKind::DeleteTopics(r) => RequestKind::DeleteTopics(r.with_topics(Vec::new())),
            RequestKind::FindCoordinator(r) if version >= 4 => {
                RequestKind::FindCoordinator(r.with_key(s("")))
            }
            RequestKind::FindCoordinator(r) => {
                RequestKind::FindCoordinator(r.with_coordinator_keys(Vec::new()))
            }
            RequestKind::ApiVersions(r) if version < 3 => RequestKind::ApiVersions(
                r.with_client_software_name(s(""))
                    .with_client_software_version(s("")),
            ),
            other => other,
        }
    }

    // Goal: the request shapes match kafka-protocol's encoders at every advertised version.
    // Method: encode a request with two-element arrays at every level and require the walk to
    // consume exactly every byte (a missing or extra field shifts everything after it).
    #[test]
    fn shapes_match_the_codec_at_every_version() {
        for api in SUPPORTED_APIS {
            for version in api.min..=api.max {
                let request = for_version(populated(api.key), version);
                let mut body = BytesMut::new();
                request
                    .encode(&mut body, version)
                    .unwrap_or_else(|e| panic!("{:?} v{version} encodes: {e}", api.key));
                let consumed = check(api.key, version, &body)
                    .unwrap_or_else(|e| panic!("{:?} v{version}: {e}", api.key));
                assert_eq!(consumed, body.len(), "{:?} v{version} walk length", api.key);
            }
        }
    }

    // Goal: impossible counts are refused before anything is allocated, and every array
    // element counts against the total. Method: hand-made bodies.
    #[test]
    fn refuses_impossible_counts() {
        // Metadata v1: a topic array of i32::MAX elements in four bytes.
        let body = i32::MAX.to_be_bytes();
        assert_eq!(
            check(ApiKey::Metadata, 1, &body),
            Err(GuardError::ArrayTooLong {
                count: i32::MAX as u64,
                remaining: 0
            })
        );
        // Metadata v12 (flexible): a compact array of u32::MAX - 1 elements.
        let body = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(matches!(
            check(ApiKey::Metadata, 12, &body),
            Err(GuardError::ArrayTooLong { .. })
        ));
        // A negative length other than null.
        let body = (-2i32).to_be_bytes();
        assert_eq!(
            check(ApiKey::Metadata, 1, &body),
            Err(GuardError::InvalidLength(-2))
        );
        // Truncated inside a field.
        assert_eq!(
            check(ApiKey::Metadata, 1, &[0, 0]),
            Err(GuardError::Truncated { at: 0 })
        );
        // More elements in total than the limit: nested arrays each within the bytes left.
        let partitions = 1_000usize;
        let topics = KAFKA_REQUEST_ARRAY_ELEMENTS_MAX / partitions + 1;
        let mut body = Vec::new();
        body.extend_from_slice(&(-1i16).to_be_bytes()); // transactional id
        body.extend_from_slice(&1i16.to_be_bytes()); // acks
        body.extend_from_slice(&0i32.to_be_bytes()); // timeout
        body.extend_from_slice(&(topics as i32).to_be_bytes());
        for _ in 0..topics {
            body.extend_from_slice(&0i16.to_be_bytes()); // empty name
            body.extend_from_slice(&(partitions as i32).to_be_bytes());
            for _ in 0..partitions {
                body.extend_from_slice(&0i32.to_be_bytes());
                body.extend_from_slice(&(-1i32).to_be_bytes());
            }
        }
        assert_eq!(
            check(ApiKey::Produce, 3, &body),
            Err(GuardError::TooManyElements {
                max: KAFKA_REQUEST_ARRAY_ELEMENTS_MAX
            })
        );
    }
}
