//! Consumer groups over the Kafka protocol: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups and
//! OffsetDelete.
//!
//! Each handler maps the Kafka message to the coordinator's protocol-neutral request
//! ([`sluice_cluster::group::types`]), sends it through [`Shard::group`] to the shard that
//! coordinates the group, and maps the answer back, setting only the fields the request's
//! version has. Error codes come from [`error_code`].
//!
//! [`Shard::group`]: sluice_cluster::shard::Shard::group

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_request::DeleteGroupsRequest;
use kafka_protocol::messages::delete_groups_response::{
    DeletableGroupResult, DeleteGroupsResponse,
};
use kafka_protocol::messages::describe_groups_request::DescribeGroupsRequest;
use kafka_protocol::messages::describe_groups_response::{
    DescribeGroupsResponse, DescribedGroup, DescribedGroupMember,
};
use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::find_coordinator_response::{Coordinator, FindCoordinatorResponse};
use kafka_protocol::messages::heartbeat_request::HeartbeatRequest;
use kafka_protocol::messages::heartbeat_response::HeartbeatResponse;
use kafka_protocol::messages::join_group_request::JoinGroupRequest;
use kafka_protocol::messages::join_group_response::{JoinGroupResponse, JoinGroupResponseMember};
use kafka_protocol::messages::leave_group_request::LeaveGroupRequest;
use kafka_protocol::messages::leave_group_response::{LeaveGroupResponse, MemberResponse};
use kafka_protocol::messages::list_groups_request::ListGroupsRequest;
use kafka_protocol::messages::list_groups_response::{ListGroupsResponse, ListedGroup};
use kafka_protocol::messages::offset_commit_request::OffsetCommitRequest;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponse, OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_request::OffsetDeleteRequest;
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponse, OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequest;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponse, OffsetFetchResponseGroup, OffsetFetchResponsePartition,
    OffsetFetchResponsePartitions, OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequest;
use kafka_protocol::messages::sync_group_response::SyncGroupResponse;
use kafka_protocol::messages::{BrokerId, GroupId};
use kafka_protocol::protocol::StrBytes;
use sluice_cluster::group::{
    CommitOffset, CommitRequest, CommittedOffset, FetchOffsetsRequest, GroupError, GroupRequest,
    GroupResponse, JoinRequest, LeaveRequest, LeavingMember, OFFSETS_TOPIC, SyncRequest,
};
use sluice_engine::{Offset, TopicPartition};

use super::error::error_code;
use super::handler::Context;
use super::metadata::topic_name;

/// FindCoordinator key type of consumer groups.
const KEY_TYPE_GROUP: i8 = 0;

/// DescribeGroups `authorized_operations` when the client did not ask for them.
const OPERATIONS_NOT_REQUESTED: i32 = i32::MIN;

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn code(error: Option<&GroupError>) -> i16 {
    error.map_or(0, |e| error_code(e).code())
}

fn optional(s: Option<&StrBytes>) -> Option<String> {
    s.map(|s| s.to_string())
}

/// Per-partition values of one topic.
type TopicValues<T> = (Arc<str>, Vec<(i32, T)>);

/// Splits per-partition results into Kafka's per-topic lists, in first-seen order.
fn by_topic<T>(results: Vec<(TopicPartition, T)>) -> Vec<TopicValues<T>> {
    let mut topics: Vec<TopicValues<T>> = Vec::new();
    for (tp, value) in results {
        match topics.iter_mut().find(|(name, _)| *name == tp.topic) {
            Some((_, partitions)) => partitions.push((tp.partition.0, value)),
            None => topics.push((Arc::clone(&tp.topic), vec![(tp.partition.0, value)])),
        }
    }
    topics
}

impl Context {
    fn coordinator_error(&self) -> Option<ResponseError> {
        self.shard
            .metadata()
            .topic(OFFSETS_TOPIC)
            .is_none()
            .then_some(ResponseError::CoordinatorNotAvailable)
    }

    /// The broker coordinating `group`: this one on a single broker; in a cluster the leader
    /// of the group's `__consumer_offsets` partition (none while it has no live leader).
    fn coordinator_of(&self, group: &str) -> Option<super::handler::BrokerAddress> {
        let snapshot = self.shard.metadata();
        let brokers = self.brokers(&snapshot);
        if snapshot.cluster.registrations.is_empty() {
            return brokers.into_iter().next();
        }
        let topic = snapshot.topic(OFFSETS_TOPIC)?;
        let count = i32::try_from(topic.partitions.len())
            .ok()
            .filter(|n| *n > 0)?;
        let leader =
            topic.partitions[sluice_cluster::group::partition_for(group, count) as usize].leader;
        brokers.into_iter().find(|b| b.id == leader.0)
    }

    /// Answers FindCoordinator: the broker leading the group's offsets partition; transactional
    /// keys have no coordinator until transactions exist.
    pub fn find_coordinator(
        &self,
        version: i16,
        request: FindCoordinatorRequest,
    ) -> FindCoordinatorResponse {
        let answer =
            |key_type: i8,
             key: &str|
             -> Result<super::handler::BrokerAddress, (ResponseError, &'static str)> {
                if key_type != KEY_TYPE_GROUP {
                    return Err((
                        ResponseError::CoordinatorNotAvailable,
                        "transactions are not supported by this broker yet",
                    ));
                }
                if let Some(error) = self.coordinator_error() {
                    return Err((error, "the offsets topic is not available"));
                }
                self.coordinator_of(key).ok_or((
                    ResponseError::CoordinatorNotAvailable,
                    "the group's offsets partition has no leader",
                ))
            };
        if version >= 4 {
            let coordinators = request
                .coordinator_keys
                .into_iter()
                .map(|key| {
                    let found = answer(request.key_type, &key);
                    let coordinator = Coordinator::default().with_key(key);
                    match found {
                        Ok(own) => coordinator
                            .with_node_id(BrokerId(own.id))
                            .with_host(own.host.clone())
                            .with_port(own.port),
                        Err((error, message)) => coordinator
                            .with_node_id(BrokerId(-1))
                            .with_port(-1)
                            .with_error_code(error.code())
                            .with_error_message(Some(StrBytes::from_static_str(message))),
                    }
                })
                .collect();
            return FindCoordinatorResponse::default().with_coordinators(coordinators);
        }
        match answer(request.key_type, &request.key) {
            Ok(own) => FindCoordinatorResponse::default()
                .with_node_id(BrokerId(own.id))
                .with_host(own.host)
                .with_port(own.port),
            Err((error, message)) => {
                let response = FindCoordinatorResponse::default()
                    .with_error_code(error.code())
                    .with_node_id(BrokerId(-1))
                    .with_port(-1);
                if version >= 1 {
                    response.with_error_message(Some(StrBytes::from_static_str(message)))
                } else {
                    response
                }
            }
        }
    }

    /// Answers JoinGroup (waits for the rebalance to complete).
    pub async fn join_group(
        &self,
        version: i16,
        request: JoinGroupRequest,
        client_id: &str,
        client_host: &str,
    ) -> JoinGroupResponse {
        let session = Duration::from_millis(u64::try_from(request.session_timeout_ms).unwrap_or(0));
        let rebalance = if version >= 1 {
            Duration::from_millis(u64::try_from(request.rebalance_timeout_ms).unwrap_or(0))
        } else {
            session
        };
        let join = JoinRequest {
            group_id: request.group_id.0.to_string(),
            member_id: request.member_id.to_string(),
            group_instance_id: optional(request.group_instance_id.as_ref()),
            client_id: client_id.to_owned(),
            client_host: client_host.to_owned(),
            session_timeout: session,
            rebalance_timeout: rebalance,
            protocol_type: request.protocol_type.to_string(),
            protocols: request
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
            require_known_member_id: version >= 4,
        };
        let GroupResponse::Join(joined) = self.shard.group(GroupRequest::Join(join)).await else {
            unreachable!("a join is answered with a join response")
        };
        let members = joined
            .members
            .into_iter()
            .map(|m| {
                let member = JoinGroupResponseMember::default()
                    .with_member_id(text(m.member_id))
                    .with_metadata(m.metadata);
                if version >= 5 {
                    member.with_group_instance_id(m.group_instance_id.map(text))
                } else {
                    member
                }
            })
            .collect();
        let response = JoinGroupResponse::default()
            .with_error_code(code(joined.error.as_ref()))
            .with_generation_id(joined.generation)
            .with_leader(text(joined.leader))
            .with_member_id(text(joined.member_id))
            .with_members(members);
        if version >= 7 {
            response
                .with_protocol_type(joined.protocol_type.map(text))
                .with_protocol_name(joined.protocol_name.map(text))
        } else {
            response.with_protocol_name(Some(text(joined.protocol_name.unwrap_or_default())))
        }
    }

    /// Answers SyncGroup (a follower waits for the leader's assignment).
    pub async fn sync_group(&self, version: i16, request: SyncGroupRequest) -> SyncGroupResponse {
        let sync = SyncRequest {
            group_id: request.group_id.0.to_string(),
            generation: request.generation_id,
            member_id: request.member_id.to_string(),
            group_instance_id: optional(request.group_instance_id.as_ref()),
            protocol_type: optional(request.protocol_type.as_ref()),
            protocol_name: optional(request.protocol_name.as_ref()),
            assignments: request
                .assignments
                .into_iter()
                .map(|a| (a.member_id.to_string(), a.assignment))
                .collect(),
        };
        let GroupResponse::Sync(synced) = self.shard.group(GroupRequest::Sync(sync)).await else {
            unreachable!("a sync is answered with a sync response")
        };
        let response = SyncGroupResponse::default()
            .with_error_code(code(synced.error.as_ref()))
            .with_assignment(synced.assignment);
        if version >= 5 {
            response
                .with_protocol_type(synced.protocol_type.map(text))
                .with_protocol_name(synced.protocol_name.map(text))
        } else {
            response
        }
    }

    /// Answers Heartbeat.
    pub async fn heartbeat(&self, request: HeartbeatRequest) -> HeartbeatResponse {
        let heartbeat = sluice_cluster::group::HeartbeatRequest {
            group_id: request.group_id.0.to_string(),
            generation: request.generation_id,
            member_id: request.member_id.to_string(),
            group_instance_id: optional(request.group_instance_id.as_ref()),
        };
        let answer = self.shard.group(GroupRequest::Heartbeat(heartbeat)).await;
        let GroupResponse::Heartbeat(result) = answer else {
            unreachable!("a heartbeat is answered with a heartbeat response")
        };
        HeartbeatResponse::default().with_error_code(code(result.err().as_ref()))
    }

    /// Answers LeaveGroup: one member (v0-2) or a batch (v3+).
    pub async fn leave_group(
        &self,
        version: i16,
        request: LeaveGroupRequest,
    ) -> LeaveGroupResponse {
        let members = if version <= 2 {
            vec![LeavingMember {
                member_id: request.member_id.to_string(),
                group_instance_id: None,
            }]
        } else {
            request
                .members
                .iter()
                .map(|m| LeavingMember {
                    member_id: m.member_id.to_string(),
                    group_instance_id: optional(m.group_instance_id.as_ref()),
                })
                .collect()
        };
        let leave = LeaveRequest {
            group_id: request.group_id.0.to_string(),
            members,
        };
        let GroupResponse::Leave(left) = self.shard.group(GroupRequest::Leave(leave)).await else {
            unreachable!("a leave is answered with a leave response")
        };
        if version <= 2 {
            let error = left
                .error
                .or_else(|| left.members.into_iter().next().and_then(|(_, e)| e));
            return LeaveGroupResponse::default().with_error_code(code(error.as_ref()));
        }
        let members = left
            .members
            .into_iter()
            .map(|(m, error)| {
                MemberResponse::default()
                    .with_member_id(text(m.member_id))
                    .with_group_instance_id(m.group_instance_id.map(text))
                    .with_error_code(code(error.as_ref()))
            })
            .collect();
        LeaveGroupResponse::default()
            .with_error_code(code(left.error.as_ref()))
            .with_members(members)
    }

    /// Answers OffsetCommit once the offsets are durable.
    pub async fn offset_commit(&self, request: OffsetCommitRequest) -> OffsetCommitResponse {
        let mut offsets = Vec::new();
        for topic in &request.topics {
            let name: Arc<str> = Arc::from(&*topic.name.0);
            for p in &topic.partitions {
                offsets.push(CommitOffset {
                    tp: TopicPartition::new(Arc::clone(&name), p.partition_index),
                    offset: Offset(p.committed_offset),
                    leader_epoch: p.committed_leader_epoch,
                    metadata: optional(p.committed_metadata.as_ref()).unwrap_or_default(),
                });
            }
        }
        let commit = CommitRequest {
            group_id: request.group_id.0.to_string(),
            generation: request.generation_id_or_member_epoch,
            member_id: request.member_id.to_string(),
            group_instance_id: optional(request.group_instance_id.as_ref()),
            offsets,
        };
        let GroupResponse::Commit(committed) = self.shard.group(GroupRequest::Commit(commit)).await
        else {
            unreachable!("a commit is answered with a commit response")
        };
        let topics = by_topic(committed.partitions)
            .into_iter()
            .map(|(name, partitions)| {
                OffsetCommitResponseTopic::default()
                    .with_name(topic_name(&name))
                    .with_partitions(
                        partitions
                            .into_iter()
                            .map(|(index, error)| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(index)
                                    .with_error_code(code(error.as_ref()))
                            })
                            .collect(),
                    )
            })
            .collect();
        OffsetCommitResponse::default().with_topics(topics)
    }

    /// Fetches one group's committed offsets (`partitions: None` for all of them).
    async fn fetch_group_offsets(
        &self,
        group_id: &str,
        partitions: Option<Vec<TopicPartition>>,
    ) -> (Option<GroupError>, Vec<CommittedOffset>) {
        let request = GroupRequest::FetchOffsets(FetchOffsetsRequest {
            group_id: group_id.to_owned(),
            partitions,
        });
        match self.shard.group(request).await {
            GroupResponse::FetchOffsets(r) => (r.error, r.partitions),
            _ => unreachable!("an offset fetch is answered with an offset fetch response"),
        }
    }

    /// Answers OffsetFetch: one group (v1-7) or several (v8+).
    pub async fn offset_fetch(
        &self,
        version: i16,
        request: OffsetFetchRequest,
    ) -> OffsetFetchResponse {
        let wanted = |topics: Option<Vec<(StrBytes, Vec<i32>)>>| {
            topics.map(|topics| {
                topics
                    .into_iter()
                    .flat_map(|(name, partitions)| {
                        let name: Arc<str> = Arc::from(&*name);
                        partitions
                            .into_iter()
                            .map(move |p| TopicPartition::new(Arc::clone(&name), p))
                    })
                    .collect::<Vec<_>>()
            })
        };
        if version >= 8 {
            let mut groups = Vec::with_capacity(request.groups.len());
            for group in request.groups {
                let topics = group.topics.map(|topics| {
                    topics
                        .into_iter()
                        .map(|t| (t.name.0, t.partition_indexes))
                        .collect()
                });
                let (error, offsets) = self
                    .fetch_group_offsets(&group.group_id.0, wanted(topics))
                    .await;
                let topics = by_topic(offsets.into_iter().map(|o| (o.tp.clone(), o)).collect())
                    .into_iter()
                    .map(|(name, partitions)| {
                        OffsetFetchResponseTopics::default()
                            .with_name(topic_name(&name))
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|(index, o)| {
                                        OffsetFetchResponsePartitions::default()
                                            .with_partition_index(index)
                                            .with_committed_offset(o.offset.0)
                                            .with_committed_leader_epoch(o.leader_epoch)
                                            .with_metadata(Some(text(o.metadata)))
                                            .with_error_code(code(o.error.as_ref()))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                groups.push(
                    OffsetFetchResponseGroup::default()
                        .with_group_id(group.group_id)
                        .with_topics(topics)
                        .with_error_code(code(error.as_ref())),
                );
            }
            return OffsetFetchResponse::default().with_groups(groups);
        }
        let topics = request.topics.map(|topics| {
            topics
                .into_iter()
                .map(|t| (t.name.0, t.partition_indexes))
                .collect()
        });
        let requested = wanted(topics);
        let (error, offsets) = self
            .fetch_group_offsets(&request.group_id.0, requested.clone())
            .await;
        // Before v2 a group-level error travels in every partition.
        let offsets = match (&error, requested) {
            (Some(e), Some(requested)) if version < 2 => requested
                .into_iter()
                .map(|tp| CommittedOffset {
                    tp,
                    offset: Offset(-1),
                    leader_epoch: -1,
                    metadata: String::new(),
                    error: Some(e.clone()),
                })
                .collect(),
            _ => offsets,
        };
        let topics = by_topic(offsets.into_iter().map(|o| (o.tp.clone(), o)).collect())
            .into_iter()
            .map(|(name, partitions)| {
                OffsetFetchResponseTopic::default()
                    .with_name(topic_name(&name))
                    .with_partitions(
                        partitions
                            .into_iter()
                            .map(|(index, o)| {
                                let partition = OffsetFetchResponsePartition::default()
                                    .with_partition_index(index)
                                    .with_committed_offset(o.offset.0)
                                    .with_metadata(Some(text(o.metadata)))
                                    .with_error_code(code(o.error.as_ref()));
                                if version >= 5 {
                                    partition.with_committed_leader_epoch(o.leader_epoch)
                                } else {
                                    partition
                                }
                            })
                            .collect(),
                    )
            })
            .collect();
        let response = OffsetFetchResponse::default().with_topics(topics);
        if version >= 2 {
            response.with_error_code(code(error.as_ref()))
        } else {
            response
        }
    }

    /// Answers ListGroups, filtered by state (v4+) and type (v5+).
    pub async fn list_groups(
        &self,
        version: i16,
        request: ListGroupsRequest,
    ) -> ListGroupsResponse {
        let states: Vec<String> = request
            .states_filter
            .iter()
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let types: Vec<String> = request
            .types_filter
            .iter()
            .map(|t| t.to_ascii_lowercase())
            .collect();
        let groups = self.shard.list_groups().await;
        let groups = groups
            .into_iter()
            .filter(|g| types.is_empty() || types.iter().any(|t| t == g.group_type.name()))
            .filter(|g| states.is_empty() || states.contains(&g.state.name().to_ascii_lowercase()))
            .map(|g| {
                let listed = ListedGroup::default()
                    .with_group_id(GroupId(text(g.group_id)))
                    .with_protocol_type(text(g.protocol_type));
                let listed = if version >= 4 {
                    listed.with_group_state(StrBytes::from_static_str(g.state.name()))
                } else {
                    listed
                };
                if version >= 5 {
                    listed.with_group_type(StrBytes::from_static_str(g.group_type.name()))
                } else {
                    listed
                }
            })
            .collect();
        ListGroupsResponse::default().with_groups(groups)
    }

    /// Answers DescribeGroups.
    pub async fn describe_groups(
        &self,
        version: i16,
        request: DescribeGroupsRequest,
    ) -> DescribeGroupsResponse {
        let mut groups = Vec::with_capacity(request.groups.len());
        for group_id in request.groups {
            let answer = self
                .shard
                .group(GroupRequest::Describe {
                    group_id: group_id.0.to_string(),
                })
                .await;
            let GroupResponse::Describe(described) = answer else {
                unreachable!("a describe is answered with a describe response")
            };
            // Before v6 an unknown group is described as Dead without an error.
            let error = match described.error {
                Some(GroupError::GroupIdNotFound) if version < 6 => None,
                other => other,
            };
            let members = described
                .members
                .into_iter()
                .map(|m| {
                    let member = DescribedGroupMember::default()
                        .with_member_id(text(m.member_id))
                        .with_client_id(text(m.client_id))
                        .with_client_host(text(m.client_host))
                        .with_member_metadata(m.metadata)
                        .with_member_assignment(m.assignment);
                    if version >= 4 {
                        member.with_group_instance_id(m.group_instance_id.map(text))
                    } else {
                        member
                    }
                })
                .collect();
            let mut group = DescribedGroup::default()
                .with_error_code(code(error.as_ref()))
                .with_group_id(group_id)
                .with_group_state(StrBytes::from_static_str(described.state.name()))
                .with_protocol_type(text(described.protocol_type))
                .with_protocol_data(text(described.protocol))
                .with_members(members);
            if version >= 3 {
                group = group.with_authorized_operations(OPERATIONS_NOT_REQUESTED);
            }
            if version >= 6 {
                group = group.with_error_message(error.map(|e| text(e.to_string())));
            }
            groups.push(group);
        }
        DescribeGroupsResponse::default().with_groups(groups)
    }

    /// Answers DeleteGroups: each group must be empty.
    pub async fn delete_groups(&self, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
        let mut results = Vec::with_capacity(request.groups_names.len());
        for group_id in request.groups_names {
            let answer = self
                .shard
                .group(GroupRequest::Delete {
                    group_id: group_id.0.to_string(),
                })
                .await;
            let GroupResponse::Delete(result) = answer else {
                unreachable!("a delete is answered with a delete response")
            };
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(group_id)
                    .with_error_code(code(result.err().as_ref())),
            );
        }
        DeleteGroupsResponse::default().with_results(results)
    }

    /// Answers OffsetDelete.
    pub async fn offset_delete(&self, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
        let mut partitions = Vec::new();
        for topic in &request.topics {
            let name: Arc<str> = Arc::from(&*topic.name.0);
            for p in &topic.partitions {
                partitions.push(TopicPartition::new(Arc::clone(&name), p.partition_index));
            }
        }
        let delete = GroupRequest::DeleteOffsets {
            group_id: request.group_id.0.to_string(),
            partitions,
        };
        let GroupResponse::DeleteOffsets(result) = self.shard.group(delete).await else {
            unreachable!("an offset delete is answered with an offset delete response")
        };
        match result {
            Err(error) => OffsetDeleteResponse::default().with_error_code(code(Some(&error))),
            Ok(results) => {
                let topics = by_topic(results)
                    .into_iter()
                    .map(|(name, partitions)| {
                        OffsetDeleteResponseTopic::default()
                            .with_name(topic_name(&name))
                            .with_partitions(
                                partitions
                                    .into_iter()
                                    .map(|(index, error)| {
                                        OffsetDeleteResponsePartition::default()
                                            .with_partition_index(index)
                                            .with_error_code(code(error.as_ref()))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                OffsetDeleteResponse::default().with_topics(topics)
            }
        }
    }
}
