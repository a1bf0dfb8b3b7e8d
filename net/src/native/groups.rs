//! The native protocol's group requests: member heartbeats, offset commits and fetches, and
//! the group admin requests (list, describe, delete), mapped to `cluster::group` requests.
//!
//! Any shard answers them: [`Shard::group`] forwards each to the shard coordinating the group
//! (`ShardMsg::Group`), and `Shard::list_groups` asks every shard. Errors map to native codes
//! through the one table (`native::error::error_code`).
//!
//! Main item: [`handle`]. Must not depend on: the server loop or streams (it takes a decoded
//! request and returns an answer header), nor on the Kafka listener.

use std::time::Duration;

use sluice_cluster::group::consumer_protocol::{CONSUMER_PROTOCOL_TYPE, subscription_topics};
use sluice_cluster::group::{
    CommitOffset, CommitRequest, ConsumerHeartbeat, FetchOffsetsRequest, GroupError, GroupRequest,
    GroupResponse, GroupType,
};
use sluice_cluster::shard::Shard;
use sluice_engine::{Offset, TopicPartition};

use crate::native::error::error_code;
use crate::native::messages::{
    CommittedOffsetInfo, GroupInfo, GroupSummary, MemberInfo, PartitionResult, Request, Response,
    TopicPartitions,
};

fn failure(error: &GroupError) -> Response {
    Response::Error {
        code: error_code(error),
        message: error.to_string(),
    }
}

fn unexpected(what: &str) -> Response {
    failure(&GroupError::Storage(format!(
        "the coordinator answered a {what} with another kind of answer"
    )))
}

fn partitions(list: &[TopicPartitions]) -> Vec<TopicPartition> {
    TopicPartitions::pairs(list)
        .map(|(topic, partition)| TopicPartition::new(topic, partition))
        .collect()
}

fn grouped(list: &[TopicPartition]) -> Vec<TopicPartitions> {
    TopicPartitions::group(list.iter().map(|tp| (&*tp.topic, tp.partition.0)))
}

fn type_name(group_type: GroupType) -> String {
    group_type.name().to_owned()
}

/// Answers one group request. `request` must be one of the group variants.
pub async fn handle(shard: &Shard, request: Request) -> Response {
    match request {
        Request::GroupHeartbeat {
            group_id,
            member_id,
            member_epoch,
            client_id,
            session_timeout_ms,
            topics,
            owned,
        } => {
            let heartbeat = ConsumerHeartbeat {
                group_id,
                member_id,
                member_epoch,
                client_id,
                client_host: String::new(),
                session_timeout: Duration::from_millis(u64::from(session_timeout_ms)),
                topics,
                owned: partitions(&owned),
                partition_counts: Vec::new(),
            };
            match shard
                .group(GroupRequest::ConsumerHeartbeat(heartbeat))
                .await
            {
                GroupResponse::ConsumerHeartbeat(Ok(answer)) => Response::GroupHeartbeat {
                    member_id: answer.member_id,
                    member_epoch: answer.member_epoch,
                    heartbeat_interval_ms: u32::try_from(answer.heartbeat_interval.as_millis())
                        .unwrap_or(u32::MAX),
                    assignment: grouped(&answer.assignment),
                },
                GroupResponse::ConsumerHeartbeat(Err(error)) => failure(&error),
                _ => unexpected("heartbeat"),
            }
        }
        Request::CommitOffsets {
            group_id,
            member_id,
            member_epoch,
            offsets,
        } => {
            let commit = CommitRequest {
                group_id,
                generation: member_epoch,
                member_id,
                group_instance_id: None,
                offsets: offsets
                    .into_iter()
                    .map(|o| CommitOffset {
                        tp: TopicPartition::new(o.topic, o.partition),
                        offset: Offset(o.offset),
                        leader_epoch: -1,
                        metadata: o.metadata,
                    })
                    .collect(),
            };
            match shard.group(GroupRequest::Commit(commit)).await {
                GroupResponse::Commit(answer) => Response::Committed {
                    partitions: answer
                        .partitions
                        .into_iter()
                        .map(|(tp, error)| PartitionResult {
                            topic: tp.topic.to_string(),
                            partition: tp.partition.0,
                            error: error.as_ref().map(error_code),
                        })
                        .collect(),
                },
                _ => unexpected("commit"),
            }
        }
        Request::FetchOffsets {
            group_id,
            partitions: wanted,
        } => {
            let fetch = FetchOffsetsRequest {
                group_id,
                partitions: wanted.as_deref().map(partitions),
            };
            match shard.group(GroupRequest::FetchOffsets(fetch)).await {
                GroupResponse::FetchOffsets(answer) => match answer.error {
                    Some(error) => failure(&error),
                    None => Response::Offsets {
                        offsets: answer
                            .partitions
                            .into_iter()
                            .map(|o| CommittedOffsetInfo {
                                topic: o.tp.topic.to_string(),
                                partition: o.tp.partition.0,
                                offset: o.offset.0,
                                metadata: o.metadata,
                            })
                            .collect(),
                    },
                },
                _ => unexpected("fetch offsets"),
            }
        }
        Request::ListGroups => Response::Groups {
            groups: shard
                .list_groups()
                .await
                .into_iter()
                .map(|g| GroupSummary {
                    group_id: g.group_id,
                    group_type: type_name(g.group_type),
                    protocol_type: g.protocol_type,
                    state: g.state.name().to_owned(),
                })
                .collect(),
        },
        Request::DescribeGroup { group_id } => {
            match shard.group(GroupRequest::Describe { group_id }).await {
                GroupResponse::Describe(described) => match described.error {
                    Some(error) => failure(&error),
                    None => {
                        let consumers = described.protocol_type == CONSUMER_PROTOCOL_TYPE;
                        Response::Group {
                            group: Box::new(GroupInfo {
                                group_id: described.group_id,
                                group_type: type_name(described.group_type),
                                state: described.state.name().to_owned(),
                                protocol_type: described.protocol_type,
                                protocol: described.protocol,
                                epoch: described.epoch,
                                members: described
                                    .members
                                    .into_iter()
                                    .map(|m| MemberInfo {
                                        topics: if consumers {
                                            subscription_topics(&m.metadata).unwrap_or_default()
                                        } else {
                                            Vec::new()
                                        },
                                        member_id: m.member_id,
                                        instance_id: m.group_instance_id,
                                        client_id: m.client_id,
                                        client_host: m.client_host,
                                        member_epoch: m.member_epoch,
                                        assignment: grouped(&m.partitions),
                                    })
                                    .collect(),
                            }),
                        }
                    }
                },
                _ => unexpected("describe"),
            }
        }
        Request::DeleteGroup { group_id } => {
            match shard.group(GroupRequest::Delete { group_id }).await {
                GroupResponse::Delete(Ok(())) => Response::Done { value: 0 },
                GroupResponse::Delete(Err(error)) => failure(&error),
                _ => unexpected("delete"),
            }
        }
        other => Response::Error {
            code: crate::native::messages::ErrorCode::Internal,
            message: format!("not a group request: {other:?}"),
        },
    }
}
