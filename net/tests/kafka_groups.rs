//! The group coordinator over the Kafka wire protocol, driven by hand-made requests so each
//! error code can be provoked on purpose: the join handshake (MEMBER_ID_REQUIRED), a
//! two-member rebalance, and the codes a misbehaving member gets (UNKNOWN_MEMBER_ID,
//! ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS, FENCED_INSTANCE_ID, NON_EMPTY_GROUP,
//! GROUP_ID_NOT_FOUND, GROUP_SUBSCRIBED_TO_TOPIC, INVALID_SESSION_TIMEOUT), plus the internal
//! offsets topic refusing client writes.

mod common;

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::{Raw, assert_broker_serves};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreateTopicsRequest};
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::join_group_request::{JoinGroupRequest, JoinGroupRequestProtocol};
use kafka_protocol::messages::join_group_response::JoinGroupResponse;
use kafka_protocol::messages::leave_group_request::{LeaveGroupRequest, MemberIdentity};
use kafka_protocol::messages::metadata_request::{MetadataRequest, MetadataRequestTopic};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequest, OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequest, OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::produce_request::{
    PartitionProduceData, ProduceRequest, TopicProduceData,
};
use kafka_protocol::messages::sync_group_request::{SyncGroupRequest, SyncGroupRequestAssignment};
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::messages::{GroupId, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use sluice_engine::batch::{Compression, SimpleRecord, build_batch};

const JOIN_V: i16 = 9;
const SYNC_V: i16 = 5;
const HEARTBEAT_V: i16 = 4;
const COMMIT_V: i16 = 9;

// Kafka error codes.
const NONE: i16 = 0;
const INVALID_TOPIC: i16 = 17;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_GROUP_ID: i16 = 24;
const INVALID_SESSION_TIMEOUT: i16 = 26;
const REBALANCE_IN_PROGRESS: i16 = 27;
const NON_EMPTY_GROUP: i16 = 68;
const GROUP_ID_NOT_FOUND: i16 = 69;
const INVALID_REQUEST: i16 = 42;
const MEMBER_ID_REQUIRED: i16 = 79;
const FENCED_INSTANCE_ID: i16 = 82;
const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_owned())
}

/// A consumer-protocol subscription (version 0) to `topics`.
fn subscription(topics: &[&str]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    buf.put_i32(topics.len() as i32);
    for topic in topics {
        buf.put_i16(topic.len() as i16);
        buf.put_slice(topic.as_bytes());
    }
    buf.put_i32(-1);
    buf.freeze()
}

/// A consumer-protocol assignment (version 0) of `partitions` of `topic`.
fn assignment(topic: &str, partitions: &[i32]) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    buf.put_i32(1);
    buf.put_i16(topic.len() as i16);
    buf.put_slice(topic.as_bytes());
    buf.put_i32(partitions.len() as i32);
    for p in partitions {
        buf.put_i32(*p);
    }
    buf.put_i32(-1);
    buf.freeze()
}

fn create_topic(raw: &mut Raw, topic: &str, partitions: i32) {
    let request = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(TopicName(s(topic)))
                .with_num_partitions(partitions)
                .with_replication_factor(1),
        ]);
    let ResponseKind::CreateTopics(r) = raw.call(7, request) else {
        panic!("kind")
    };
    assert_eq!(r.topics[0].error_code, 0, "create {topic}");
}

fn join_request(
    group: &str,
    member: &str,
    instance: Option<&str>,
    topic: &str,
) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_member_id(s(member))
        .with_group_instance_id(instance.map(s))
        .with_session_timeout_ms(10_000)
        .with_rebalance_timeout_ms(10_000)
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![
            JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(subscription(&[topic])),
        ])
}

fn join(raw: &mut Raw, request: JoinGroupRequest) -> JoinGroupResponse {
    let ResponseKind::JoinGroup(r) = raw.call(JOIN_V, request) else {
        panic!("kind")
    };
    r
}

/// A new dynamic member: MEMBER_ID_REQUIRED first, then the real join (which waits for the
/// rebalance to complete).
fn join_new(raw: &mut Raw, group: &str, topic: &str) -> JoinGroupResponse {
    let first = join(raw, join_request(group, "", None, topic));
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    assert!(
        !first.member_id.is_empty(),
        "the coordinator names the member"
    );
    join(raw, join_request(group, &first.member_id, None, topic))
}

fn sync(
    raw: &mut Raw,
    group: &str,
    member: &str,
    generation: i32,
    assignments: Vec<(String, Bytes)>,
) -> SyncGroupResponse {
    let request = SyncGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id(generation)
        .with_member_id(s(member))
        .with_protocol_type(Some(s("consumer")))
        .with_protocol_name(Some(s("range")))
        .with_assignments(
            assignments
                .into_iter()
                .map(|(m, a)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(s(&m))
                        .with_assignment(a)
                })
                .collect(),
        );
    let ResponseKind::SyncGroup(r) = raw.call(SYNC_V, request) else {
        panic!("kind")
    };
    r
}

fn heartbeat(raw: &mut Raw, group: &str, member: &str, generation: i32) -> i16 {
    let request = HeartbeatRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id(generation)
        .with_member_id(s(member));
    let ResponseKind::Heartbeat(r) = raw.call(HEARTBEAT_V, request) else {
        panic!("kind")
    };
    r.error_code
}

fn commit(
    raw: &mut Raw,
    group: &str,
    member: &str,
    generation: i32,
    topic: &str,
    partition: i32,
) -> i16 {
    let request = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(partition)
                        .with_committed_offset(1),
                ]),
        ]);
    let ResponseKind::OffsetCommit(r) = raw.call(COMMIT_V, request) else {
        panic!("kind")
    };
    r.topics[0].partitions[0].error_code
}

/// Two members of `group` in a stable generation, leader first, each with its connection:
/// (connection, member id) of the leader and the follower, and the generation. The leader
/// owns partition 0 and the follower partition 1.
fn stable_pair(group: &str, topic: &str) -> ((Raw, String), (Raw, String), i32) {
    let group_a = group.to_owned();
    let topic_a = topic.to_owned();
    // Both joins wait for each other, so they run on two threads.
    let a = std::thread::spawn(move || {
        let mut raw = Raw::connect();
        let joined = join_new(&mut raw, &group_a, &topic_a);
        (raw, joined)
    });
    let mut raw_b = Raw::connect();
    let joined_b = join_new(&mut raw_b, group, topic);
    let (raw_a, joined_a) = a.join().expect("member a joins");
    assert_eq!(joined_a.error_code, NONE);
    assert_eq!(joined_b.error_code, NONE);
    assert_eq!(joined_a.generation_id, joined_b.generation_id);
    let generation = joined_a.generation_id;
    let ((mut leader, leader_join), (mut follower, follower_join)) =
        if joined_a.leader == joined_a.member_id {
            ((raw_a, joined_a), (raw_b, joined_b))
        } else {
            ((raw_b, joined_b), (raw_a, joined_a))
        };
    assert_eq!(leader_join.members.len(), 2, "the leader sees both members");
    assert!(follower_join.members.is_empty());
    let leader_id = leader_join.member_id.to_string();
    let follower_id = follower_join.member_id.to_string();
    // The follower's sync waits for the leader's, so it runs on a thread.
    let (group_f, id_f) = (group.to_owned(), follower_id.clone());
    let waiting = std::thread::spawn(move || {
        let r = sync(&mut follower, &group_f, &id_f, generation, Vec::new());
        (follower, r)
    });
    let plan = vec![
        (leader_id.clone(), assignment(topic, &[0])),
        (follower_id.clone(), assignment(topic, &[1])),
    ];
    let synced = sync(&mut leader, group, &leader_id, generation, plan);
    assert_eq!(synced.error_code, NONE);
    assert_eq!(synced.assignment, assignment(topic, &[0]));
    let (follower, synced) = waiting.join().expect("follower syncs");
    assert_eq!(synced.error_code, NONE);
    assert_eq!(synced.assignment, assignment(topic, &[1]));
    ((leader, leader_id), (follower, follower_id), generation)
}

// Goal: a member with a bad member id or generation, or committing a partition the current
// generation gives to another member, gets Kafka's error codes, and a well-behaved member's
// commits succeed. Method: two raw members in one group, then wrong requests on purpose.
#[test]
fn misbehaving_member_error_codes() {
    let topic = "groups-raw-codes";
    let group = "groups-raw-codes-g";
    create_topic(&mut Raw::connect(), topic, 2);
    let ((mut leader, leader_id), (mut follower, follower_id), generation) =
        stable_pair(group, topic);
    assert_eq!(heartbeat(&mut leader, group, &leader_id, generation), NONE);
    assert_eq!(
        heartbeat(&mut leader, group, &leader_id, generation + 1),
        ILLEGAL_GENERATION
    );
    assert_eq!(
        heartbeat(&mut leader, group, "not-a-member", generation),
        UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        commit(&mut leader, group, &leader_id, generation - 1, topic, 0),
        ILLEGAL_GENERATION
    );
    assert_eq!(
        commit(&mut leader, group, "not-a-member", generation, topic, 0),
        UNKNOWN_MEMBER_ID
    );
    // Partition 1 belongs to the follower in this generation.
    assert_eq!(
        commit(&mut leader, group, &leader_id, generation, topic, 1),
        ILLEGAL_GENERATION
    );
    assert_eq!(
        commit(&mut leader, group, &leader_id, generation, topic, 0),
        NONE
    );
    assert_eq!(
        commit(&mut follower, group, &follower_id, generation, topic, 1),
        NONE
    );
    // A sync with a stale generation.
    let stale = sync(
        &mut follower,
        group,
        &follower_id,
        generation - 1,
        Vec::new(),
    );
    assert_eq!(stale.error_code, ILLEGAL_GENERATION);
    // The group has members: it cannot be deleted, nor can offsets of a topic it consumes.
    let ResponseKind::DeleteGroups(r) = leader.call(
        2,
        DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s(group))]),
    ) else {
        panic!("kind")
    };
    assert_eq!(r.results[0].error_code, NON_EMPTY_GROUP);
    let request = OffsetDeleteRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_topics(vec![
            OffsetDeleteRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(vec![OffsetDeleteRequestPartition::default()]),
        ]);
    let ResponseKind::OffsetDelete(r) = leader.call(0, request) else {
        panic!("kind")
    };
    assert_eq!(r.error_code, NONE);
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        GROUP_SUBSCRIBED_TO_TOPIC
    );

    // The follower leaves: the leader learns of the rebalance by heartbeat, and a commit of
    // its old generation is now refused until it rejoins.
    let request = LeaveGroupRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_members(vec![
            MemberIdentity::default().with_member_id(s(&follower_id)),
        ]);
    let ResponseKind::LeaveGroup(r) = follower.call(5, request) else {
        panic!("kind")
    };
    assert_eq!(r.members[0].error_code, NONE);
    assert_eq!(
        heartbeat(&mut leader, group, &leader_id, generation),
        REBALANCE_IN_PROGRESS
    );
    assert_eq!(
        heartbeat(&mut follower, group, &follower_id, generation),
        UNKNOWN_MEMBER_ID
    );
    let rejoined = join(&mut leader, join_request(group, &leader_id, None, topic));
    assert_eq!(rejoined.error_code, NONE);
    assert_eq!(rejoined.generation_id, generation + 1);
    assert_eq!(
        commit(&mut leader, group, &leader_id, generation, topic, 0),
        ILLEGAL_GENERATION
    );
    assert_eq!(
        commit(&mut leader, group, &leader_id, generation + 1, topic, 0),
        REBALANCE_IN_PROGRESS,
        "joined but not yet synced"
    );
    let plan = vec![(leader_id.clone(), assignment(topic, &[0, 1]))];
    let synced = sync(&mut leader, group, &leader_id, generation + 1, plan);
    assert_eq!(synced.error_code, NONE);
    assert_eq!(
        commit(&mut leader, group, &leader_id, generation + 1, topic, 1),
        NONE
    );
}

// Goal: static membership: a member restarting with its group.instance.id takes over its
// place; the member id it replaces is fenced. Method: raw joins with an instance id.
#[test]
fn static_member_fencing() {
    let topic = "groups-raw-static";
    let group = "groups-raw-static-g";
    create_topic(&mut Raw::connect(), topic, 1);
    let mut raw = Raw::connect();
    let first = join(&mut raw, join_request(group, "", Some("instance-1"), topic));
    assert_eq!(
        first.error_code, NONE,
        "static members skip MEMBER_ID_REQUIRED"
    );
    let old_id = first.member_id.to_string();
    let plan = vec![(old_id.clone(), assignment(topic, &[0]))];
    let synced = sync(&mut raw, group, &old_id, first.generation_id, plan);
    assert_eq!(synced.error_code, NONE);
    // The "restarted" client rejoins without its member id.
    let mut restarted = Raw::connect();
    let second = join(
        &mut restarted,
        join_request(group, "", Some("instance-1"), topic),
    );
    assert_eq!(second.error_code, NONE);
    assert_ne!(second.member_id, first.member_id);
    let request = HeartbeatRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id(first.generation_id)
        .with_member_id(s(&old_id))
        .with_group_instance_id(Some(s("instance-1")));
    let ResponseKind::Heartbeat(r) = raw.call(HEARTBEAT_V, request) else {
        panic!("kind")
    };
    assert_eq!(r.error_code, FENCED_INSTANCE_ID);
}

// Goal: a static follower whose process restarts (it rejoins with its instance id and no
// member id) is answered at once with the current generation and gets its assignment back,
// while the leader is not disturbed. Method: a dynamic leader and a static follower over raw
// connections; the follower "restarts" on a fresh connection.
#[test]
fn static_follower_restart_keeps_generation() {
    let topic = "groups-raw-static-follower";
    let group = "groups-raw-static-follower-g";
    create_topic(&mut Raw::connect(), topic, 2);
    let mut leader = Raw::connect();
    let first = join_new(&mut leader, group, topic);
    let leader_id = first.member_id.to_string();
    let plan = vec![(leader_id.clone(), assignment(topic, &[0, 1]))];
    let synced = sync(&mut leader, group, &leader_id, first.generation_id, plan);
    assert_eq!(synced.error_code, NONE);
    // The static member joins: the leader must rejoin for the rebalance to complete.
    let (group_s, topic_s) = (group.to_owned(), topic.to_owned());
    let follower = std::thread::spawn(move || {
        let mut raw = Raw::connect();
        let joined = join(
            &mut raw,
            join_request(&group_s, "", Some("follower-1"), &topic_s),
        );
        (raw, joined)
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while heartbeat(&mut leader, group, &leader_id, first.generation_id) != REBALANCE_IN_PROGRESS {
        assert!(
            std::time::Instant::now() < deadline,
            "no rebalance for the static member"
        );
    }
    let rejoined = join(&mut leader, join_request(group, &leader_id, None, topic));
    let (mut follower, joined) = follower.join().expect("follower joins");
    assert_eq!(joined.error_code, NONE);
    let generation = rejoined.generation_id;
    let follower_id = joined.member_id.to_string();
    let (group_f, id_f) = (group.to_owned(), follower_id.clone());
    let waiting = std::thread::spawn(move || {
        let r = sync(&mut follower, &group_f, &id_f, generation, Vec::new());
        (follower, r)
    });
    let plan = vec![
        (leader_id.clone(), assignment(topic, &[0])),
        (follower_id.clone(), assignment(topic, &[1])),
    ];
    assert_eq!(
        sync(&mut leader, group, &leader_id, generation, plan).error_code,
        NONE
    );
    let (_old_connection, synced) = waiting.join().expect("follower syncs");
    assert_eq!(synced.assignment, assignment(topic, &[1]));
    // The follower's process restarts.
    let mut restarted = Raw::connect();
    let again = join(
        &mut restarted,
        join_request(group, "", Some("follower-1"), topic),
    );
    assert_eq!(again.error_code, NONE);
    assert_eq!(again.generation_id, generation, "no rebalance");
    assert_ne!(again.member_id.to_string(), follower_id);
    let synced = sync(
        &mut restarted,
        group,
        &again.member_id,
        generation,
        Vec::new(),
    );
    assert_eq!(synced.error_code, NONE);
    assert_eq!(synced.assignment, assignment(topic, &[1]));
    assert_eq!(heartbeat(&mut leader, group, &leader_id, generation), NONE);
}

// Goal: session timeouts outside the broker's range, and unknown groups, get their codes.
#[test]
fn join_validation_and_unknown_groups() {
    let mut raw = Raw::connect();
    let request = join_request("groups-raw-bad-session", "", None, "t").with_session_timeout_ms(1);
    assert_eq!(join(&mut raw, request).error_code, INVALID_SESSION_TIMEOUT);
    let request = DeleteGroupsRequest::default()
        .with_groups_names(vec![GroupId(s("groups-raw-never-existed"))]);
    let ResponseKind::DeleteGroups(r) = raw.call(2, request) else {
        panic!("kind")
    };
    assert_eq!(r.results[0].error_code, GROUP_ID_NOT_FOUND);
}

// Goal: strings longer than an offsets record holds (32,767 bytes), which flexible request
// versions carry as compact strings, are refused with a clear code (INVALID_GROUP_ID for a
// group id, INVALID_REQUEST for the rest) instead of stopping the broker, and a client id of
// the longest a request header holds still joins and syncs (the member id built from it is
// cut to fit). Method: raw flexible-version requests, each followed by another client's round
// trip.
#[test]
fn over_long_strings_are_refused_and_the_broker_serves() {
    let mut raw = Raw::connect();
    let topic = "groups-raw-long-strings";
    create_topic(&mut raw, topic, 1);
    let long = "g".repeat(40_000);
    // A simple commit creates its group and stores an offset record keyed by the group id.
    assert_eq!(commit(&mut raw, &long, "", -1, topic, 0), INVALID_GROUP_ID);
    assert_broker_serves();
    let request = join_request(&long, "", None, topic);
    assert_eq!(join(&mut raw, request).error_code, INVALID_GROUP_ID);
    let request = join_request("groups-raw-long", "", Some(&long), topic);
    assert_eq!(join(&mut raw, request).error_code, INVALID_REQUEST);
    let request = join_request("groups-raw-long", "", None, topic).with_protocol_type(s(&long));
    assert_eq!(join(&mut raw, request).error_code, INVALID_REQUEST);
    let request = join_request("groups-raw-long", "", None, topic).with_protocols(vec![
        JoinGroupRequestProtocol::default()
            .with_name(s(&long))
            .with_metadata(subscription(&[topic])),
    ]);
    assert_eq!(join(&mut raw, request).error_code, INVALID_REQUEST);
    let request = join_request("groups-raw-long", &long, None, topic);
    assert_eq!(join(&mut raw, request).error_code, INVALID_REQUEST);
    assert_eq!(
        sync(&mut raw, &long, "m", 1, Vec::new()).error_code,
        INVALID_GROUP_ID
    );
    assert_broker_serves();
    // The longest client id a header holds (an i16 length): Kafka's member id is the client id,
    // '-' and a UUID, 37 bytes too long for a record, so the coordinator cuts the prefix.
    let client_id = "c".repeat(i16::MAX as usize);
    let group = "groups-raw-long-client";
    let call = |raw: &mut Raw, request: JoinGroupRequest| {
        let ResponseKind::JoinGroup(r) = raw.call_as(&client_id, JOIN_V, request) else {
            panic!("kind")
        };
        r
    };
    let first = call(&mut raw, join_request(group, "", None, topic));
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    let member = first.member_id.to_string();
    assert!(member.len() <= i16::MAX as usize, "{} bytes", member.len());
    let joined = call(&mut raw, join_request(group, &member, None, topic));
    assert_eq!(joined.error_code, NONE);
    let plan = vec![(member.clone(), assignment(topic, &[0]))];
    let synced = sync(&mut raw, group, &member, joined.generation_id, plan);
    assert_eq!(synced.error_code, NONE, "the group metadata was stored");
    assert_eq!(
        heartbeat(&mut raw, group, &member, joined.generation_id),
        NONE
    );
    assert_broker_serves();
}

// Goal: clients cannot write or delete the internal offsets topic, and Metadata marks it
// internal. Method: a produce and a metadata request for __consumer_offsets.
#[test]
fn offsets_topic_is_internal() {
    let mut raw = Raw::connect();
    let batch = build_batch(&[SimpleRecord::value("x")], Compression::None).expect("batch");
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(TopicName(s("__consumer_offsets")))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch)),
                ]),
        ]);
    let ResponseKind::Produce(r) = raw.call(9, request) else {
        panic!("kind")
    };
    assert_eq!(
        r.responses[0].partition_responses[0].error_code,
        INVALID_TOPIC
    );
    let request = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(TopicName(s("__consumer_offsets")))),
    ]));
    let ResponseKind::Metadata(r) = raw.call(12, request) else {
        panic!("kind")
    };
    assert_eq!(r.topics[0].error_code, NONE);
    assert!(r.topics[0].is_internal);
    assert_eq!(
        r.topics[0].partitions.len(),
        4,
        "test brokers use 4 offsets partitions"
    );
    let _ = Duration::ZERO;
}
