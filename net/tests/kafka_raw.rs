//! The Kafka listener driven over a raw TCP socket with messages encoded by the
//! `kafka-protocol` crate: every advertised API at every advertised version answers with a
//! response that decodes, and bad input (oversized or tiny declared lengths, unknown API keys,
//! unsupported versions, truncated or malformed bodies, array counts in the billions) closes
//! only the offending connection while the broker keeps serving a second client.

mod common;

use common::{Raw, assert_broker_serves};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::alter_configs_request::{
    AlterConfigsRequest, AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsRequest, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsRequest, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_topics_request::{DeleteTopicState, DeleteTopicsRequest};
use kafka_protocol::messages::describe_cluster_request::DescribeClusterRequest;
use kafka_protocol::messages::describe_configs_request::{
    DescribeConfigsRequest, DescribeConfigsResource,
};
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchRequest, FetchTopic};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource as IncrementalResource, AlterableConfig as IncrementalConfig,
    IncrementalAlterConfigsRequest,
};
use kafka_protocol::messages::join_group_request::{JoinGroupRequest, JoinGroupRequestProtocol};
use kafka_protocol::messages::leave_group_request::{LeaveGroupRequest, MemberIdentity};
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_offsets_request::{
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::OffsetDeleteRequest;
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequest, OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderEpochRequest, OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::produce_response::ProduceResponse;
use kafka_protocol::messages::sync_group_request::SyncGroupRequest;
use kafka_protocol::messages::{ApiKey, GroupId, ResponseHeader, ResponseKind, TopicName};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use sluice_engine::batch::{Compression, SimpleRecord, build_batch, decode_batch, iter_batches};
use sluice_net::kafka::SUPPORTED_APIS;

fn group(s: &str) -> GroupId {
    GroupId(StrBytes::from_string(s.to_owned()))
}

/// A commit outside group management (generation -1) of `offset` for partition 0.
fn simple_commit(group_id: &str, topic: &str, offset: i64) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(group(group_id))
        .with_generation_id_or_member_epoch(-1)
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(offset),
                ]),
        ])
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

fn create_topic(raw: &mut Raw, topic: &str, partitions: i32) {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(1),
        ]);
    let ResponseKind::CreateTopics(response) = raw.call(5, request) else {
        panic!("kind")
    };
    assert_eq!(
        response.topics[0].error_code, 0,
        "create {topic}: {:?}",
        response.topics[0]
    );
}

/// The topic id the broker reports (Metadata v12).
fn topic_id(raw: &mut Raw, topic: &str) -> uuid::Uuid {
    let request = MetadataRequest::default()
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name(topic))),
        ]))
        .with_allow_auto_topic_creation(false);
    let ResponseKind::Metadata(response) = raw.call(12, request) else {
        panic!("kind")
    };
    assert_eq!(response.topics[0].error_code, 0);
    response.topics[0].topic_id
}

fn produce_request(topic: &str, partition: i32, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(name(topic))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records)),
                ]),
        ])
}

/// A fetch of `partitions` of `topic` from offset 0, naming the topic by id from v13 on.
fn fetch_from_start(version: i16, topic: &str, id: uuid::Uuid, partitions: &[i32]) -> FetchRequest {
    let partitions = partitions
        .iter()
        .map(|&p| {
            FetchPartition::default()
                .with_partition(p)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)
        })
        .collect();
    let fetch_topic = FetchTopic::default().with_partitions(partitions);
    let fetch_topic = if version >= 13 {
        fetch_topic.with_topic_id(id)
    } else {
        fetch_topic.with_topic(name(topic))
    };
    FetchRequest::default()
        .with_max_wait_ms(100)
        .with_min_bytes(1)
        .with_max_bytes(8 << 20)
        .with_topics(vec![fetch_topic])
}

// Goal: every advertised API answers at every advertised version with a response that decodes
// (so no version-bounded field is set where the version lacks it) and, where the outcome is
// deterministic, with the expected result. Method: one raw connection walks SUPPORTED_APIS.
#[test]
fn every_api_at_every_version() {
    let mut raw = Raw::connect();
    let topic = "raw-every-version";
    create_topic(&mut raw, topic, 2);
    let id = topic_id(&mut raw, topic);
    let batch = build_batch(&[SimpleRecord::value("hello")], Compression::None).expect("batch");

    for api in SUPPORTED_APIS {
        for v in api.min..=api.max {
            match api.key {
                ApiKey::ApiVersions => {
                    let request = ApiVersionsRequest::default()
                        .with_client_software_name(StrBytes::from_static_str("raw"))
                        .with_client_software_version(StrBytes::from_static_str("1"));
                    let ResponseKind::ApiVersions(r) = raw.call(v, request) else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 0);
                    assert_eq!(r.api_keys.len(), SUPPORTED_APIS.len());
                }
                ApiKey::Metadata => {
                    let wanted = MetadataRequestTopic::default().with_name(Some(name(topic)));
                    let request = MetadataRequest::default().with_topics(Some(vec![wanted]));
                    let ResponseKind::Metadata(r) = raw.call(v, request) else {
                        panic!()
                    };
                    assert_eq!(r.brokers.len(), 1, "v{v}");
                    assert_eq!(r.brokers[0].port, i32::from(common::broker().addr.port()));
                    assert_eq!(r.topics[0].error_code, 0, "v{v}");
                    assert_eq!(r.topics[0].partitions.len(), 2, "v{v}");
                }
                ApiKey::Produce => {
                    let request = produce_request(topic, 0, batch.clone());
                    let ResponseKind::Produce(r) = raw.call(v, request) else {
                        panic!()
                    };
                    let p = &r.responses[0].partition_responses[0];
                    assert_eq!(p.error_code, 0, "produce v{v}: {p:?}");
                    assert!(p.base_offset >= 0);
                }
                ApiKey::Fetch => {
                    let request = fetch_from_start(v, topic, id, &[0]);
                    let ResponseKind::Fetch(r) = raw.call(v, request) else {
                        panic!()
                    };
                    let p = &r.responses[0].partitions[0];
                    assert_eq!(p.error_code, 0, "fetch v{v}");
                    let records = p.records.clone().expect("records");
                    let first = decode_batch(&records, 1 << 20)
                        .expect("stored batch decodes")
                        .next()
                        .expect("one record")
                        .expect("record decodes");
                    assert_eq!(first.value.as_deref(), Some(&b"hello"[..]), "fetch v{v}");
                }
                ApiKey::ListOffsets => {
                    let request = ListOffsetsRequest::default()
                        .with_replica_id((-1).into())
                        .with_topics(vec![
                            ListOffsetsTopic::default()
                                .with_name(name(topic))
                                .with_partitions(vec![
                                    ListOffsetsPartition::default()
                                        .with_partition_index(0)
                                        .with_timestamp(-1),
                                ]),
                        ]);
                    let ResponseKind::ListOffsets(r) = raw.call(v, request) else {
                        panic!()
                    };
                    let p = &r.topics[0].partitions[0];
                    assert_eq!(p.error_code, 0, "list offsets v{v}");
                    assert!(p.offset >= 1, "latest after produce, v{v}");
                }
                ApiKey::CreateTopics => {
                    let created = format!("raw-create-v{v}");
                    let request = CreateTopicsRequest::default()
                        .with_timeout_ms(5000)
                        .with_topics(vec![
                            CreatableTopic::default()
                                .with_name(name(&created))
                                .with_num_partitions(-1)
                                .with_replication_factor(-1),
                        ]);
                    let ResponseKind::CreateTopics(r) = raw.call(v, request) else {
                        panic!()
                    };
                    assert_eq!(r.topics[0].error_code, 0, "create v{v}: {:?}", r.topics[0]);
                }
                ApiKey::DeleteTopics => {
                    let deleted = format!("raw-delete-v{v}");
                    create_topic(&mut raw, &deleted, 1);
                    let request = if v >= 6 {
                        DeleteTopicsRequest::default().with_topics(vec![
                            DeleteTopicState::default().with_name(Some(name(&deleted))),
                        ])
                    } else {
                        DeleteTopicsRequest::default().with_topic_names(vec![name(&deleted)])
                    };
                    let ResponseKind::DeleteTopics(r) = raw.call(v, request.with_timeout_ms(5000))
                    else {
                        panic!()
                    };
                    assert_eq!(r.responses[0].error_code, 0, "delete v{v}");
                }
                ApiKey::CreatePartitions => {
                    let grown = format!("raw-grow-v{v}");
                    create_topic(&mut raw, &grown, 1);
                    let request = CreatePartitionsRequest::default()
                        .with_timeout_ms(5000)
                        .with_topics(vec![
                            CreatePartitionsTopic::default()
                                .with_name(name(&grown))
                                .with_count(3),
                        ]);
                    let ResponseKind::CreatePartitions(r) = raw.call(v, request) else {
                        panic!()
                    };
                    assert_eq!(r.results[0].error_code, 0, "create partitions v{v}");
                }
                ApiKey::DescribeConfigs => {
                    let request = DescribeConfigsRequest::default().with_resources(vec![
                        DescribeConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from_static_str("raw-every-version"))
                            .with_configuration_keys(None),
                    ]);
                    let ResponseKind::DescribeConfigs(r) = raw.call(v, request) else {
                        panic!()
                    };
                    assert_eq!(r.results[0].error_code, 0);
                    assert!(
                        r.results[0]
                            .configs
                            .iter()
                            .any(|c| &*c.name == "retention.ms")
                    );
                }
                ApiKey::AlterConfigs => {
                    let request = AlterConfigsRequest::default().with_resources(vec![
                        AlterConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from_static_str("raw-every-version"))
                            .with_configs(vec![
                                AlterableConfig::default()
                                    .with_name(StrBytes::from_static_str("retention.ms"))
                                    .with_value(Some(StrBytes::from_static_str("3600000"))),
                            ]),
                    ]);
                    let ResponseKind::AlterConfigs(r) = raw.call(v, request) else {
                        panic!()
                    };
                    assert_eq!(r.responses[0].error_code, 0, "alter configs v{v}");
                }
                ApiKey::IncrementalAlterConfigs => {
                    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
                        IncrementalResource::default()
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from_static_str("raw-every-version"))
                            .with_configs(vec![
                                IncrementalConfig::default()
                                    .with_name(StrBytes::from_static_str("cleanup.policy"))
                                    .with_config_operation(2)
                                    .with_value(Some(StrBytes::from_static_str("compact"))),
                            ]),
                    ]);
                    let ResponseKind::IncrementalAlterConfigs(r) = raw.call(v, request) else {
                        panic!()
                    };
                    assert_eq!(r.responses[0].error_code, 0, "incremental alter v{v}");
                }
                ApiKey::DeleteRecords => {
                    let request = DeleteRecordsRequest::default()
                        .with_timeout_ms(5000)
                        .with_topics(vec![
                            DeleteRecordsTopic::default()
                                .with_name(name(topic))
                                .with_partitions(vec![
                                    DeleteRecordsPartition::default()
                                        .with_partition_index(1)
                                        .with_offset(0),
                                ]),
                        ]);
                    let ResponseKind::DeleteRecords(r) = raw.call(v, request) else {
                        panic!()
                    };
                    assert_eq!(
                        r.topics[0].partitions[0].error_code, 0,
                        "delete records v{v}"
                    );
                }
                ApiKey::OffsetForLeaderEpoch => {
                    let request = OffsetForLeaderEpochRequest::default().with_topics(vec![
                        OffsetForLeaderTopic::default()
                            .with_topic(name(topic))
                            .with_partitions(vec![
                                OffsetForLeaderPartition::default()
                                    .with_partition(0)
                                    .with_current_leader_epoch(-1)
                                    .with_leader_epoch(0),
                            ]),
                    ]);
                    let ResponseKind::OffsetForLeaderEpoch(r) = raw.call(v, request) else {
                        panic!()
                    };
                    let p = &r.topics[0].partitions[0];
                    assert_eq!(p.error_code, 0);
                    assert_eq!(p.leader_epoch, 0);
                    assert!(p.end_offset >= 1);
                }
                ApiKey::DescribeCluster => {
                    let ResponseKind::DescribeCluster(r) =
                        raw.call(v, DescribeClusterRequest::default())
                    else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 0);
                    assert_eq!(r.brokers.len(), 1);
                }
                ApiKey::FindCoordinator => {
                    let request = if v >= 4 {
                        FindCoordinatorRequest::default()
                            .with_coordinator_keys(vec![StrBytes::from_static_str("group")])
                    } else {
                        FindCoordinatorRequest::default()
                            .with_key(StrBytes::from_static_str("group"))
                    };
                    let ResponseKind::FindCoordinator(r) = raw.call(v, request) else {
                        panic!()
                    };
                    let code = if v >= 4 {
                        r.coordinators[0].error_code
                    } else {
                        r.error_code
                    };
                    assert_eq!(code, 0, "v{v}");
                    let port = if v >= 4 {
                        r.coordinators[0].port
                    } else {
                        r.port
                    };
                    assert_eq!(port, i32::from(common::broker().addr.port()), "v{v}");
                }
                ApiKey::JoinGroup => {
                    let request = JoinGroupRequest::default()
                        .with_group_id(group("raw-unknown"))
                        .with_member_id(StrBytes::from_static_str("nobody"))
                        .with_session_timeout_ms(10_000)
                        .with_rebalance_timeout_ms(10_000)
                        .with_protocol_type(StrBytes::from_static_str("consumer"))
                        .with_protocols(vec![
                            JoinGroupRequestProtocol::default()
                                .with_name(StrBytes::from_static_str("range")),
                        ]);
                    let ResponseKind::JoinGroup(r) = raw.call(v, request) else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 25, "UNKNOWN_MEMBER_ID at v{v}");
                }
                ApiKey::SyncGroup => {
                    let request = SyncGroupRequest::default()
                        .with_group_id(group("raw-unknown"))
                        .with_member_id(StrBytes::from_static_str("nobody"));
                    let ResponseKind::SyncGroup(r) = raw.call(v, request) else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 25, "UNKNOWN_MEMBER_ID at v{v}");
                }
                ApiKey::Heartbeat => {
                    let request = HeartbeatRequest::default()
                        .with_group_id(group("raw-unknown"))
                        .with_member_id(StrBytes::from_static_str("nobody"));
                    let ResponseKind::Heartbeat(r) = raw.call(v, request) else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 25, "UNKNOWN_MEMBER_ID at v{v}");
                }
                ApiKey::LeaveGroup => {
                    let nobody = StrBytes::from_static_str("nobody");
                    let request = LeaveGroupRequest::default().with_group_id(group("raw-unknown"));
                    let request = if v >= 3 {
                        request.with_members(vec![MemberIdentity::default().with_member_id(nobody)])
                    } else {
                        request.with_member_id(nobody)
                    };
                    let ResponseKind::LeaveGroup(r) = raw.call(v, request) else {
                        panic!()
                    };
                    let code = if v >= 3 {
                        assert_eq!(r.error_code, 0, "v{v}");
                        r.members[0].error_code
                    } else {
                        r.error_code
                    };
                    assert_eq!(code, 25, "UNKNOWN_MEMBER_ID at v{v}");
                }
                ApiKey::OffsetCommit => {
                    let ResponseKind::OffsetCommit(r) =
                        raw.call(v, simple_commit("raw-offsets", topic, 7))
                    else {
                        panic!()
                    };
                    assert_eq!(r.topics[0].partitions[0].error_code, 0, "v{v}");
                }
                ApiKey::OffsetFetch => {
                    let request = if v >= 8 {
                        OffsetFetchRequest::default().with_groups(vec![
                            OffsetFetchRequestGroup::default()
                                .with_group_id(group("raw-offsets"))
                                .with_topics(Some(vec![
                                    OffsetFetchRequestTopics::default()
                                        .with_name(name(topic))
                                        .with_partition_indexes(vec![0, 1]),
                                ])),
                        ])
                    } else {
                        OffsetFetchRequest::default()
                            .with_group_id(group("raw-offsets"))
                            .with_topics(Some(vec![
                                OffsetFetchRequestTopic::default()
                                    .with_name(name(topic))
                                    .with_partition_indexes(vec![0, 1]),
                            ]))
                    };
                    let ResponseKind::OffsetFetch(r) = raw.call(v, request) else {
                        panic!()
                    };
                    let offsets: Vec<i64> = if v >= 8 {
                        assert_eq!(r.groups[0].error_code, 0);
                        let partitions = &r.groups[0].topics[0].partitions;
                        partitions.iter().map(|p| p.committed_offset).collect()
                    } else {
                        let partitions = &r.topics[0].partitions;
                        partitions.iter().map(|p| p.committed_offset).collect()
                    };
                    assert_eq!(offsets, vec![7, -1], "committed, then none, at v{v}");
                }
                ApiKey::ListGroups => {
                    let ResponseKind::ListGroups(r) = raw.call(v, ListGroupsRequest::default())
                    else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 0);
                    let listed = r
                        .groups
                        .iter()
                        .find(|g| &*g.group_id.0 == "raw-offsets")
                        .unwrap_or_else(|| panic!("raw-offsets listed at v{v}"));
                    if v >= 4 {
                        assert_eq!(&*listed.group_state, "Empty");
                    }
                }
                ApiKey::DescribeGroups => {
                    let request = DescribeGroupsRequest::default()
                        .with_groups(vec![group("raw-offsets"), group("raw-unknown")]);
                    let ResponseKind::DescribeGroups(r) = raw.call(v, request) else {
                        panic!()
                    };
                    assert_eq!(r.groups[0].error_code, 0);
                    assert_eq!(&*r.groups[0].group_state, "Empty");
                    let unknown = if v >= 6 { 69 } else { 0 };
                    assert_eq!(r.groups[1].error_code, unknown, "v{v}");
                    assert_eq!(&*r.groups[1].group_state, "Dead");
                }
                ApiKey::DeleteGroups => {
                    let request = DeleteGroupsRequest::default()
                        .with_groups_names(vec![group("raw-unknown")]);
                    let ResponseKind::DeleteGroups(r) = raw.call(v, request) else {
                        panic!()
                    };
                    assert_eq!(r.results[0].error_code, 69, "GROUP_ID_NOT_FOUND at v{v}");
                }
                ApiKey::OffsetDelete => {
                    let request =
                        OffsetDeleteRequest::default().with_group_id(group("raw-unknown"));
                    let ResponseKind::OffsetDelete(r) = raw.call(v, request) else {
                        panic!()
                    };
                    assert_eq!(r.error_code, 69, "GROUP_ID_NOT_FOUND at v{v}");
                }
                other => panic!("advertised {other:?} has no test here"),
            }
        }
    }
}

fn frame(api: i16, version: i16, correlation_id: i32, body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    let size = (8 + 2 + body.len()) as u32;
    buf.extend_from_slice(&size.to_be_bytes());
    buf.extend_from_slice(&api.to_be_bytes());
    buf.extend_from_slice(&version.to_be_bytes());
    buf.extend_from_slice(&correlation_id.to_be_bytes());
    buf.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
    buf.extend_from_slice(body);
    buf
}

// Goal: each kind of bad input closes that connection without an answer (as Kafka does) and
// the broker keeps serving another client. Method: one connection per bad frame, each
// followed by a good client's round trip.
#[test]
fn bad_input_closes_only_that_connection() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("declared 2 GiB", 0x7fff_ffffu32.to_be_bytes().to_vec()),
        ("negative size", (-5i32).to_be_bytes().to_vec()),
        ("size below a header", [0, 0, 0, 3, 0, 0, 0].to_vec()),
        ("unknown api key", frame(999, 0, 1, &[])),
        ("unsupported produce version", frame(0, 2, 1, &[0; 16])),
        ("unsupported metadata version", frame(3, 99, 1, &[])),
        ("truncated metadata body", frame(3, 1, 1, &[0, 0, 0, 1])),
        (
            "metadata with 2^31-1 topics",
            frame(3, 1, 1, &0x7fff_ffffi32.to_be_bytes()),
        ),
        (
            "flexible metadata with 2^32 topics",
            frame(3, 12, 1, &[0x00, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        ),
        (
            "produce with 2^31-1 partitions",
            frame(
                0,
                3,
                1,
                &[
                    0xff, 0xff, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, b't', 0x7f, 0xff, 0xff, 0xff,
                ],
            ),
        ),
        (
            "garbage header",
            vec![0, 0, 0, 12, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8],
        ),
    ];
    for (what, bytes) in cases {
        let mut raw = Raw::connect();
        raw.send_frame(&bytes);
        assert!(
            raw.closed_without_answer(),
            "{what}: connection should close"
        );
        assert_broker_serves();
    }
}

// Goal: a frame cut short (the client sends part of a request, then closes) leaves the broker
// serving; and a client that declares a large frame but sends little costs the broker memory
// in proportion to what was sent, not to the declared size. Method: 24 connections each
// declare 100 MiB and send 1 KiB; the process's resident memory must grow by far less than
// the 2.4 GiB declared.
#[test]
fn declared_length_does_not_allocate() {
    let resident = || -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .expect("rss")
            .parse()
            .expect("pages");
        pages * 4096
    };
    assert_broker_serves();
    let before = resident();
    let mut held = Vec::new();
    for _ in 0..24 {
        let mut raw = Raw::connect();
        let mut partial = ((100 << 20) as u32).to_be_bytes().to_vec();
        partial.extend(frame(3, 1, 1, &[0; 1024]).into_iter().skip(4));
        raw.send_frame(&partial);
        held.push(raw);
    }
    // Every connection's bytes have been read once the broker answers a later client.
    assert_broker_serves();
    let grown = resident().saturating_sub(before);
    assert!(grown < 256 << 20, "resident memory grew by {grown} bytes");
    drop(held);
    // A truncated frame followed by a close.
    let mut raw = Raw::connect();
    raw.send_frame(&frame(3, 1, 1, &[0; 64])[..20]);
    drop(raw);
    assert_broker_serves();
}

// Goal: ApiVersions at a version the broker does not speak gets the KIP-511 fallback: a v0
// response with UNSUPPORTED_VERSION and the supported list, on a connection that stays open.
#[test]
fn api_versions_fallback_for_unknown_version() {
    let mut raw = Raw::connect();
    let mut body = BytesMut::new();
    // v4 is flexible: header v2 (client id, empty tagged fields), body with two compact
    // strings and tagged fields.
    body.put_i16(18);
    body.put_i16(4);
    body.put_i32(77);
    body.put_i16(-1);
    body.put_u8(0);
    body.put_slice(&[1, 1, 0]);
    let mut framed = (body.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&body);
    raw.send_frame(&framed);
    let mut frame = raw.read_frame().expect("fallback answer");
    assert_eq!(frame.get_i32(), 77, "correlation id");
    let response =
        kafka_protocol::messages::ApiVersionsResponse::decode(&mut frame, 0).expect("v0 body");
    assert_eq!(response.error_code, 35, "UNSUPPORTED_VERSION");
    let listed = response
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::ApiVersions as i16);
    assert_eq!(listed.map(|k| k.max_version), Some(3));
    // The connection stays usable.
    let ResponseKind::ApiVersions(r) = raw.call(3, ApiVersionsRequest::default()) else {
        panic!("kind")
    };
    assert_eq!(r.error_code, 0);
}

// Goal: produce errors map to Kafka codes per partition: a corrupt batch (bad CRC), an
// unknown topic, and an invalid acks value. Method: raw produce requests.
#[test]
fn produce_errors_per_partition() {
    let mut raw = Raw::connect();
    create_topic(&mut raw, "raw-errors", 1);
    let good = build_batch(&[SimpleRecord::value("v")], Compression::None).expect("batch");
    let mut corrupt = BytesMut::from(&good[..]);
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let ResponseKind::Produce(r) = raw.call(9, produce_request("raw-errors", 0, corrupt.freeze()))
    else {
        panic!("kind")
    };
    assert_eq!(
        r.responses[0].partition_responses[0].error_code, 2,
        "CORRUPT_MESSAGE"
    );
    let ResponseKind::Produce(r) = raw.call(9, produce_request("raw-missing", 0, good.clone()))
    else {
        panic!("kind")
    };
    assert_eq!(
        r.responses[0].partition_responses[0].error_code, 3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    let ResponseKind::Produce(r) = raw.call(9, produce_request("raw-errors", 0, good).with_acks(2))
    else {
        panic!("kind")
    };
    assert_eq!(
        r.responses[0].partition_responses[0].error_code, 21,
        "INVALID_REQUIRED_ACKS"
    );
}

// Goal: an invalid config value is refused with INVALID_CONFIG and a message naming the key,
// at every AlterConfigs version, and leaves the topic unchanged.
#[test]
fn alter_configs_refuses_invalid_value() {
    let mut raw = Raw::connect();
    create_topic(&mut raw, "raw-alter-bad", 1);
    for v in 0..=2 {
        let request = AlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("raw-alter-bad"))
                .with_configs(vec![
                    AlterableConfig::default()
                        .with_name(StrBytes::from_static_str("retention.ms"))
                        .with_value(Some(StrBytes::from_static_str("soon"))),
                ]),
        ]);
        let ResponseKind::AlterConfigs(r) = raw.call(v, request) else {
            panic!("kind")
        };
        assert_eq!(r.responses[0].error_code, 40, "INVALID_CONFIG at v{v}");
        let message = r.responses[0].error_message.as_deref().unwrap_or_default();
        assert!(message.contains("retention.ms"), "{message}");
    }
}

// Goal: a fetch long-polling several partitions answers as soon as any of them receives data
// (here from another connection while it waits) rather than at its max wait, and carries that
// data. Method: the fetch asks for 30 s on two empty partitions from one thread; a produce to
// partition 1 follows on another connection. Had the wait not been woken, the answer would
// come after 30 s with no records, and the assertion on the records would fail.
#[test]
fn fetch_long_poll_wakes_on_produce() {
    let mut raw = Raw::connect();
    create_topic(&mut raw, "raw-poll", 2);
    let waiter = std::thread::spawn(|| {
        let mut raw = Raw::connect();
        let partitions = (0..2)
            .map(|p| {
                FetchPartition::default()
                    .with_partition(p)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)
            })
            .collect();
        let request = FetchRequest::default()
            .with_max_wait_ms(30_000)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(name("raw-poll"))
                    .with_partitions(partitions),
            ]);
        raw.call(11, request)
    });
    let batch = build_batch(&[SimpleRecord::value("wake")], Compression::None).expect("batch");
    let ResponseKind::Produce(r) = raw.call(9, produce_request("raw-poll", 1, batch)) else {
        panic!("kind")
    };
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    let ResponseKind::Fetch(response) = waiter.join().expect("fetch thread") else {
        panic!("kind")
    };
    let partitions = &response.responses[0].partitions;
    assert_eq!(partitions.len(), 2);
    let records = partitions[1].records.clone().expect("records");
    let first = decode_batch(&records, 1 << 20)
        .expect("batch")
        .next()
        .expect("one record")
        .expect("decodes");
    assert_eq!(first.value.as_deref(), Some(&b"wake"[..]));
    assert_eq!(partitions[1].high_watermark, 1);
}

// Goal: a fetch answer carries every partition's batches intact when the record sets are
// spliced into the response from the log's buffers: several partitions, many small batches
// (copied together) and batches larger than the splice copy limit (passed through), at a
// version with INT32 record lengths (v4), the first with compact lengths (v12), and the newest.
// Method: produce five small batches and one 40 KiB batch to each of three partitions, fetch
// all three in one request, and decode every batch of every partition in order.
#[test]
fn fetch_answers_many_batches_of_many_partitions() {
    let mut raw = Raw::connect();
    let topic = "raw-splice";
    create_topic(&mut raw, topic, 3);
    let big = "x".repeat(40 << 10);
    let mut expected: Vec<Vec<String>> = vec![Vec::new(); 3];
    for partition in 0..3 {
        for j in 0..6 {
            let value = if j == 3 {
                format!("{partition}-{j}-{big}")
            } else {
                format!("{partition}-{j}")
            };
            let batch = build_batch(&[SimpleRecord::value(value.clone())], Compression::None)
                .expect("batch");
            let ResponseKind::Produce(r) = raw.call(9, produce_request(topic, partition, batch))
            else {
                panic!("kind")
            };
            assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
            expected[partition as usize].push(value);
        }
    }
    let id = topic_id(&mut raw, topic);
    for version in [4, 12, 16] {
        let request = fetch_from_start(version, topic, id, &[0, 1, 2]);
        let ResponseKind::Fetch(response) = raw.call(version, request) else {
            panic!("kind")
        };
        let partitions = &response.responses[0].partitions;
        assert_eq!(partitions.len(), 3, "v{version}");
        for data in partitions {
            assert_eq!(data.error_code, 0, "v{version}");
            let values = record_values(&data.records.clone().expect("records"));
            assert_eq!(
                values, expected[data.partition_index as usize],
                "v{version} partition {}",
                data.partition_index
            );
        }
    }
}

// Goal: produce requests pipelined on one connection (written before any answer is read) are
// answered in order and appended in the order they were sent. Method: twenty single-record
// produces (v8) on one raw connection, then the twenty answers read back: each carries its
// correlation id in turn and the next offset, and a fetch returns the values in send order.
#[test]
fn pipelined_produces_append_in_send_order() {
    let mut raw = Raw::connect();
    let topic = "raw-pipelined";
    create_topic(&mut raw, topic, 1);
    let count = 20;
    for i in 0..count {
        let batch =
            build_batch(&[SimpleRecord::value(format!("v{i}"))], Compression::None).expect("batch");
        let mut body = BytesMut::new();
        produce_request(topic, 0, batch)
            .encode(&mut body, 8)
            .expect("encode produce");
        raw.send_frame(&frame(0, 8, 1_000 + i, &body));
    }
    for i in 0..count {
        let mut answer = raw.read_frame().expect("produce answer");
        let header = ResponseHeader::decode(&mut answer, 0).expect("response header");
        assert_eq!(header.correlation_id, 1_000 + i, "answers in request order");
        let response = ProduceResponse::decode(&mut answer, 8).expect("produce response");
        let partition = &response.responses[0].partition_responses[0];
        assert_eq!(partition.error_code, 0, "produce {i}");
        assert_eq!(
            partition.base_offset,
            i64::from(i),
            "produce {i} appended in send order"
        );
    }
    let id = topic_id(&mut raw, topic);
    let ResponseKind::Fetch(response) = raw.call(12, fetch_from_start(12, topic, id, &[0])) else {
        panic!("kind")
    };
    let records = response.responses[0].partitions[0]
        .records
        .clone()
        .expect("records");
    let expected: Vec<String> = (0..count).map(|i| format!("v{i}")).collect();
    assert_eq!(record_values(&records), expected);
}

/// The values of every record of every batch of a fetched record set, in order.
fn record_values(records: &Bytes) -> Vec<String> {
    let mut values = Vec::new();
    for batch in iter_batches(records, 1 << 20) {
        let (_, bytes) = batch.expect("whole, valid batch");
        let bytes = records.slice_ref(bytes);
        for record in decode_batch(&bytes, 1 << 20).expect("batch decodes") {
            let value = record.expect("record decodes").value.expect("value");
            values.push(String::from_utf8(value.to_vec()).expect("utf-8"));
        }
    }
    values
}

/// A fetch of `topic`-0 by name, at `offset`, listed `repeats` times in one request.
fn fetch_one(topic: &str, offset: i64, repeats: usize, partition_max: i32) -> FetchRequest {
    let partitions = (0..repeats)
        .map(|_| {
            FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(partition_max)
        })
        .collect();
    FetchRequest::default()
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(i32::MAX)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(partitions),
        ])
}

// Goal: a fetch past the log end is answered OFFSET_OUT_OF_RANGE at once, as Kafka does, so the
// consumer's reset policy runs; at the log end itself the fetch waits and answers empty.
// Method: one record in a new topic; fetch at offset 1000 (max wait 500 ms), then at 1.
#[test]
fn fetch_past_the_log_end_is_out_of_range() {
    let mut raw = Raw::connect();
    let topic = "raw-past-end";
    create_topic(&mut raw, topic, 1);
    let batch = build_batch(&[SimpleRecord::value("only")], Compression::None).expect("batch");
    let ResponseKind::Produce(r) = raw.call(9, produce_request(topic, 0, batch)) else {
        panic!("kind")
    };
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    let ResponseKind::Fetch(past) = raw.call(12, fetch_one(topic, 1000, 1, 1 << 20)) else {
        panic!("kind")
    };
    assert_eq!(
        past.responses[0].partitions[0].error_code, 1,
        "OFFSET_OUT_OF_RANGE"
    );
    let ResponseKind::Fetch(at_end) = raw.call(12, fetch_one(topic, 1, 1, 1 << 20)) else {
        panic!("kind")
    };
    let data = &at_end.responses[0].partitions[0];
    assert_eq!(data.error_code, 0);
    assert_eq!(data.high_watermark, 1);
    assert!(data.records.as_ref().is_none_or(Bytes::is_empty));
}

// Goal: one fetch carries at most 55 MiB of records (Kafka's `fetch.max.bytes` default), and the
// broker plans its reads against that budget, whatever `max_bytes` the client asks for and
// however often the request lists a partition. Method: ten 900 KiB batches in one partition,
// fetched with that partition listed twelve times, `max_bytes` i32::MAX: without the budget the
// answer would hold all 9 MiB twelve times over. Each listing is answered (offsets and error 0),
// and the batches that came are whole and in order.
#[test]
fn fetch_response_bytes_are_capped() {
    const CAP: usize = 55 << 20;
    let mut raw = Raw::connect();
    let topic = "raw-fetch-cap";
    create_topic(&mut raw, topic, 1);
    let value = "v".repeat(900 << 10);
    for _ in 0..10 {
        let batch =
            build_batch(&[SimpleRecord::value(value.clone())], Compression::None).expect("batch");
        let ResponseKind::Produce(r) = raw.call(9, produce_request(topic, 0, batch)) else {
            panic!("kind")
        };
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    }
    let ResponseKind::Fetch(response) = raw.call(12, fetch_one(topic, 0, 12, 64 << 20)) else {
        panic!("kind")
    };
    let partitions = &response.responses[0].partitions;
    assert_eq!(partitions.len(), 12);
    let mut total = 0;
    for data in partitions {
        assert_eq!(data.error_code, 0);
        assert_eq!(data.high_watermark, 10);
        let records = data.records.clone().unwrap_or_default();
        let values = record_values(&records);
        assert!(values.iter().all(|v| *v == value), "whole batches");
        total += records.len();
    }
    assert!(total <= CAP, "{total} bytes of records in one answer");
    assert!(total > CAP - (10 << 20), "the budget is used: {total}");
}

// Goal: the internal offsets topic can be neither trimmed nor repartitioned: DeleteRecords
// would lose every committed offset of its groups, CreatePartitions would move the groups to
// other partitions. Both answer INVALID_TOPIC_EXCEPTION, as Kafka does, and the committed offset
// stays readable. Method: commit an offset (which creates `__consumer_offsets`), then both
// requests, then fetch the offset back.
#[test]
fn internal_topic_is_neither_trimmed_nor_repartitioned() {
    let mut raw = Raw::connect();
    let topic = "raw-internal";
    create_topic(&mut raw, topic, 1);
    let ResponseKind::OffsetCommit(commit) =
        raw.call(8, simple_commit("raw-internal-group", topic, 7))
    else {
        panic!("kind")
    };
    assert_eq!(commit.topics[0].partitions[0].error_code, 0);

    let internal = "__consumer_offsets";
    let trim = DeleteRecordsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            DeleteRecordsTopic::default()
                .with_name(name(internal))
                .with_partitions(
                    (0..4)
                        .map(|p| {
                            DeleteRecordsPartition::default()
                                .with_partition_index(p)
                                .with_offset(-1)
                        })
                        .collect(),
                ),
        ]);
    let ResponseKind::DeleteRecords(trimmed) = raw.call(2, trim) else {
        panic!("kind")
    };
    for partition in &trimmed.topics[0].partitions {
        assert_eq!(
            partition.error_code, 17,
            "INVALID_TOPIC_EXCEPTION: {trimmed:?}"
        );
    }
    let grow = CreatePartitionsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            CreatePartitionsTopic::default()
                .with_name(name(internal))
                .with_count(1000),
        ]);
    let ResponseKind::CreatePartitions(grown) = raw.call(3, grow) else {
        panic!("kind")
    };
    assert_eq!(grown.results[0].error_code, 17, "INVALID_TOPIC_EXCEPTION");

    let fetch = OffsetFetchRequest::default()
        .with_group_id(group("raw-internal-group"))
        .with_topics(Some(vec![
            OffsetFetchRequestTopic::default()
                .with_name(name(topic))
                .with_partition_indexes(vec![0]),
        ]));
    let ResponseKind::OffsetFetch(fetched) = raw.call(7, fetch) else {
        panic!("kind")
    };
    assert_eq!(fetched.topics[0].partitions[0].committed_offset, 7);
}
