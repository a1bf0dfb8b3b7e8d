//! The group coordinator core: Kafka's classic group protocol as a sans-IO state machine.
//!
//! [`GroupCoordinator`] holds the groups of one `__consumer_offsets` partition. Every input is a
//! method taking the time (`now`, wall-clock ms, the same clock Kafka's coordinator uses) and,
//! for requests whose answer may wait (a join waits for the other members, a sync for the
//! leader, a commit for its record to be durable), an opaque reply handle `R`. Every method
//! returns [`Action`]s for the driver to carry out: send a reply, or append records to the
//! offsets partition with acks=all and report the outcome back with
//! [`GroupCoordinator::append_done`]. The driver must issue appends in [`AppendId`] order and
//! report them in that order (log order), so applying an append's effects at `append_done`
//! gives the same state as replaying the log.
//!
//! State per group follows Kafka: `Empty → PreparingRebalance → CompletingRebalance → Stable`,
//! with members removed on leave, on session expiry, and when they miss a rebalance; static
//! members (`group.instance.id`) keep their place across restarts of the client and fence the
//! member id they replace.
//!
//! Must not depend on: the clock, the runtime, the log, or any protocol crate. `!Send` is not
//! required: the core is plain data.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use sluice_engine::{Offset, TimestampMs, TopicPartition};

use super::consumer_group::{NATIVE_ASSIGNOR, NativeGroup};
use super::consumer_protocol::{
    CONSUMER_PROTOCOL_TYPE, assigned_partitions, encode_assignment, encode_subscription,
    subscription_topics,
};
use super::owners::Owners;
use super::record::{GroupValue, MemberValue, OffsetValue, OffsetsRecord};
use super::types::{
    CommitRequest, CommitResponse, CommittedOffset, ConsumerAssignment, ConsumerHeartbeat,
    FetchOffsetsRequest, FetchOffsetsResponse, GroupDescription, GroupListing, GroupResponse,
    GroupState, GroupType, HeartbeatRequest, JoinRequest, JoinResponse, JoinedMember, LeaveRequest,
    LeaveResponse, MEMBER_EPOCH_JOIN, MemberDescription, SyncRequest, SyncResponse,
};
use super::{GroupConfig, GroupError};
use crate::limits::{GROUP_OWNED_PARTITIONS_MAX, GROUP_STRING_BYTES_MAX, TOPIC_NAME_BYTES_MAX};

/// Identifies one append the core asked for. Increases by one per append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppendId(pub u64);

/// What the driver must do.
#[derive(Debug)]
pub enum Action<R> {
    /// Send this answer on this reply handle.
    Reply(R, GroupResponse),
    /// Append these records (one batch, acks=all), then call `append_done(id, ..)`.
    Append {
        /// The append's id.
        id: AppendId,
        /// The records, in order.
        records: Vec<OffsetsRecord>,
    },
}

/// What to do when an append completes.
enum Pending<R> {
    Commit {
        reply: R,
        group: String,
        accepted: Vec<(TopicPartition, OffsetValue)>,
        results: Vec<(TopicPartition, Option<GroupError>)>,
    },
    Sync {
        group: String,
        generation: i32,
        assignments: BTreeMap<String, Bytes>,
    },
    /// Group metadata of an emptied group; nothing waits on it.
    Stored,
    DeleteGroup {
        reply: R,
        group: String,
    },
    DeleteOffsets {
        reply: R,
        group: String,
        removed: Vec<TopicPartition>,
        results: Vec<(TopicPartition, Option<GroupError>)>,
    },
    Expire {
        group: String,
        removed: Vec<TopicPartition>,
        delete_group: bool,
    },
    /// A native group's snapshot; the heartbeat answer waits for it.
    Heartbeat {
        reply: R,
        group: String,
        /// The group's `changes` the snapshot holds.
        version: u64,
        answer: ConsumerAssignment,
    },
}

struct Member<R> {
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    /// Protocols in preference order with this member's metadata for each.
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    awaiting_join: Option<R>,
    awaiting_sync: Option<R>,
    /// Removed when this passes, unless awaiting a join or sync answer.
    heartbeat_deadline: TimestampMs,
    /// Order of joining: the leader is the earliest member still present.
    join_order: u64,
}

impl<R> Member<R> {
    fn metadata(&self, protocol: Option<&str>) -> Bytes {
        protocol
            .and_then(|p| self.protocols.iter().find(|(name, _)| name == p))
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn same_protocols(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }
}

/// The initial rebalance delay of a new group (Kafka's `InitialDelayedJoin`).
struct InitialDelay {
    until: TimestampMs,
    limit: TimestampMs,
    joined_during: bool,
}

struct Group<R> {
    id: String,
    state: GroupState,
    /// Invariant: never decreases.
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    /// Invariant: `Some` and a key of `members` whenever `members` is not empty.
    leader: Option<String>,
    /// Invariant: empty when `state` is `Empty` or `Dead`.
    members: BTreeMap<String, Member<R>>,
    /// Static members: instance id → member id. Invariant: every value is in `members`.
    instances: BTreeMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, with the time they expire.
    pending_members: BTreeMap<String, TimestampMs>,
    join_deadline: TimestampMs,
    initial_delay: Option<InitialDelay>,
    sync_deadline: TimestampMs,
    state_since: TimestampMs,
    offsets: BTreeMap<TopicPartition, OffsetValue>,
    /// For consumer groups in `Stable`: which member the generation assigns each partition.
    owners: Owners,
    /// True once a group metadata record for it is in the log (so removal needs a tombstone).
    stored: bool,
    /// `Some` for a native consumer group (then `members` is empty and the classic fields are
    /// unused); `None` for a classic group.
    native: Option<NativeGroup>,
}

impl<R> Group<R> {
    fn new(id: &str, now: TimestampMs) -> Group<R> {
        Group {
            id: id.to_owned(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            instances: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            join_deadline: now,
            initial_delay: None,
            sync_deadline: now,
            state_since: now,
            offsets: BTreeMap::new(),
            owners: Owners::default(),
            stored: false,
            native: None,
        }
    }

    fn group_type(&self) -> GroupType {
        match self.native {
            Some(_) => GroupType::Consumer,
            None => GroupType::Classic,
        }
    }

    /// Sets a native group's `state` from its members: Empty, Stable, or Reconciling.
    fn update_native_state(&mut self, now: TimestampMs) {
        let Some(native) = &self.native else {
            return;
        };
        if self.state == GroupState::Dead {
            return;
        }
        let state = if native.members.is_empty() {
            GroupState::Empty
        } else if native.stable() {
            GroupState::Stable
        } else {
            GroupState::Reconciling
        };
        if state != self.state {
            self.state = state;
            self.state_since = now;
        }
    }

    /// Protocols every member supports.
    fn candidates(&self) -> Vec<&str> {
        let Some(first) = self.members.values().next() else {
            return Vec::new();
        };
        first
            .protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
            .collect()
    }

    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return true;
        }
        let candidates = self.candidates();
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols
                .iter()
                .any(|(name, _)| candidates.contains(&name.as_str()))
    }

    /// The protocol most members prefer among those all support; ties go to the leader's
    /// earlier preference.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidates();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for member in self.members.values() {
            if let Some((name, _)) = member
                .protocols
                .iter()
                .find(|(n, _)| candidates.contains(&n.as_str()))
            {
                *votes.entry(name.as_str()).or_default() += 1;
            }
        }
        let best = votes.values().copied().max()?;
        candidates
            .into_iter()
            .find(|c| votes.get(c) == Some(&best))
            .map(str::to_owned)
    }

    fn first_member(&self) -> Option<String> {
        self.members
            .iter()
            .min_by_key(|(_, m)| m.join_order)
            .map(|(id, _)| id.clone())
    }

    fn rebalance_timeout(&self) -> Duration {
        self.members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    fn all_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some())
    }

    /// Checks that `member_id` (and `instance`, if given) is a current member.
    fn validate_member(&self, member_id: &str, instance: Option<&str>) -> Result<(), GroupError> {
        if let Some(instance) = instance {
            match self.instances.get(instance) {
                Some(current) if current != member_id => return Err(GroupError::FencedInstanceId),
                None => return Err(GroupError::UnknownMemberId),
                Some(_) => {}
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(GroupError::UnknownMemberId);
        }
        Ok(())
    }

    fn join_response(&self, member_id: &str) -> JoinResponse {
        let leader = self.leader.clone().unwrap_or_default();
        let members = if leader == member_id {
            let mut members: Vec<(&String, &Member<R>)> = self.members.iter().collect();
            members.sort_by_key(|(_, m)| m.join_order);
            members
                .into_iter()
                .map(|(id, m)| JoinedMember {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    metadata: m.metadata(self.protocol.as_deref()),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResponse {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol.clone(),
            leader,
            member_id: member_id.to_owned(),
            members,
        }
    }

    fn value(&self, now: TimestampMs, assignments: Option<&BTreeMap<String, Bytes>>) -> GroupValue {
        let mut members: Vec<(&String, &Member<R>)> = self.members.iter().collect();
        members.sort_by_key(|(_, m)| m.join_order);
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            state_timestamp_ms: now.0,
            members: members
                .into_iter()
                .map(|(id, m)| MemberValue {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: duration_ms_i32(m.rebalance_timeout),
                    session_timeout_ms: duration_ms_i32(m.session_timeout),
                    subscription: m.metadata(self.protocol.as_deref()),
                    assignment: match assignments {
                        Some(a) => a.get(id).cloned().unwrap_or_default(),
                        None => m.assignment.clone(),
                    },
                })
                .collect(),
        }
    }

    fn compute_owners(&mut self) {
        self.owners = Owners::default();
        if self.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE) {
            return;
        }
        let members = self
            .members
            .iter()
            .map(|(id, m)| (id.as_str(), &m.assignment[..]));
        self.owners = Owners::build(members);
        if self.owners.untracked() > 0 {
            tracing::info!(
                group = %self.id,
                members = self.owners.untracked(),
                "assignments not tracked for commit checks (undecodable or too large)"
            );
        }
    }

    fn subscribed(&self) -> Vec<String> {
        if let Some(native) = &self.native {
            return native.subscribed().into_iter().collect();
        }
        if self.protocol_type.as_deref() != Some(CONSUMER_PROTOCOL_TYPE) {
            return Vec::new();
        }
        let mut topics = Vec::new();
        for member in self.members.values() {
            let metadata = member.metadata(self.protocol.as_deref());
            topics.extend(subscription_topics(&metadata).unwrap_or_default());
        }
        topics
    }

    /// Nothing worth keeping: no members, offsets or history in the log.
    fn unused(&self) -> bool {
        self.state == GroupState::Empty
            && self.members.is_empty()
            && self.native.as_ref().is_none_or(|n| n.members.is_empty())
            && self.pending_members.is_empty()
            && self.offsets.is_empty()
            && !self.stored
    }

    fn check_invariants(&self, group: &str) {
        if matches!(self.state, GroupState::Empty | GroupState::Dead) {
            assert!(
                self.members.is_empty(),
                "group {group}: {:?} with members",
                self.state
            );
        }
        if !self.members.is_empty() {
            let leader = self.leader.as_deref().unwrap_or("");
            assert!(
                self.members.contains_key(leader),
                "group {group}: leader {leader} is not a member"
            );
        }
        for member_id in self.instances.values() {
            assert!(
                self.members.contains_key(member_id),
                "group {group}: static member {member_id} missing"
            );
        }
        if let Some(native) = &self.native {
            assert!(
                self.members.is_empty(),
                "group {group}: native group with classic members"
            );
            native.check_invariants(group);
        }
    }
}

/// Bytes a generated member id adds to its prefix: `-` and a hyphenated UUID.
const MEMBER_ID_SUFFIX_BYTES: usize = 1 + uuid::fmt::Hyphenated::LENGTH;

/// Longest prefix of a generated member id, so the id fits a record.
const MEMBER_ID_PREFIX_BYTES_MAX: usize = GROUP_STRING_BYTES_MAX - MEMBER_ID_SUFFIX_BYTES;

/// The longest start of `s` of at most `bytes_max` bytes that ends on a character boundary.
fn truncate_str(s: &str, bytes_max: usize) -> &str {
    if s.len() <= bytes_max {
        return s;
    }
    let end = (0..=bytes_max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .expect("offset 0 is a character boundary");
    assert!(end <= bytes_max);
    &s[..end]
}

/// Refuses a string longer than `max` bytes. Flexible Kafka request versions (compact strings)
/// and the native protocol bound strings only by the frame size, and the coordinator stores
/// these in records whose strings carry an `i16` length.
fn check_length(field: &'static str, value: &str, max: usize) -> Result<(), GroupError> {
    if value.len() > max {
        return Err(GroupError::StringTooLong {
            field,
            bytes: value.len(),
            max,
        });
    }
    Ok(())
}

/// A group id must be non-empty and fit a record (Kafka answers INVALID_GROUP_ID).
fn check_group_id(group_id: &str) -> Result<(), GroupError> {
    if group_id.is_empty() || group_id.len() > GROUP_STRING_BYTES_MAX {
        return Err(GroupError::InvalidGroupId);
    }
    Ok(())
}

/// The member id and group instance id a request names.
fn check_member(member_id: &str, instance: Option<&str>) -> Result<(), GroupError> {
    check_length("member id", member_id, GROUP_STRING_BYTES_MAX)?;
    if let Some(instance) = instance {
        check_length("group instance id", instance, GROUP_STRING_BYTES_MAX)?;
    }
    Ok(())
}

/// Every string of a join the group may store.
fn check_join_strings(req: &JoinRequest) -> Result<(), GroupError> {
    check_group_id(&req.group_id)?;
    check_member(&req.member_id, req.group_instance_id.as_deref())?;
    check_length("client id", &req.client_id, GROUP_STRING_BYTES_MAX)?;
    check_length("client host", &req.client_host, GROUP_STRING_BYTES_MAX)?;
    check_length("protocol type", &req.protocol_type, GROUP_STRING_BYTES_MAX)?;
    for (name, _) in &req.protocols {
        check_length("protocol name", name, GROUP_STRING_BYTES_MAX)?;
    }
    Ok(())
}

/// Every string of a native heartbeat the group may store. Subscribed topics are stored in
/// the member's subscription; a name longer than a topic name can be names no topic.
fn check_heartbeat_strings(req: &ConsumerHeartbeat) -> Result<(), GroupError> {
    check_group_id(&req.group_id)?;
    check_member(&req.member_id, None)?;
    check_length("client id", &req.client_id, GROUP_STRING_BYTES_MAX)?;
    check_length("client host", &req.client_host, GROUP_STRING_BYTES_MAX)?;
    for topic in &req.topics {
        check_length("subscribed topic", topic, TOPIC_NAME_BYTES_MAX)?;
    }
    Ok(())
}

fn duration_ms_i32(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

fn after(now: TimestampMs, d: Duration) -> TimestampMs {
    TimestampMs(
        now.0
            .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    )
}

/// Outputs collected while handling one input; kept apart from the groups so both can be
/// borrowed at once.
struct Effects<R> {
    actions: Vec<Action<R>>,
    pending: BTreeMap<AppendId, Pending<R>>,
    next_append: u64,
    next_join_order: u64,
    /// splitmix64 state for member ids.
    rng: u64,
}

impl<R> Effects<R> {
    fn reply(&mut self, reply: R, response: GroupResponse) {
        self.actions.push(Action::Reply(reply, response));
    }

    fn append(&mut self, records: Vec<OffsetsRecord>, pending: Pending<R>) -> AppendId {
        assert!(!records.is_empty(), "empty append");
        let id = AppendId(self.next_append);
        self.next_append += 1;
        self.actions.push(Action::Append { id, records });
        self.pending.insert(id, pending);
        id
    }

    /// A fresh member id: `prefix-` and a random UUID-shaped suffix, as Kafka's. The prefix
    /// (a client id or an instance id) is cut to [`MEMBER_ID_PREFIX_BYTES_MAX`] so the id fits
    /// a record; Kafka uses the whole client id and fails to store a longer one.
    fn member_id(&mut self, prefix: &str) -> String {
        let prefix = truncate_str(prefix, MEMBER_ID_PREFIX_BYTES_MAX);
        let mut next = || {
            self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let bits = (u128::from(next()) << 64) | u128::from(next());
        let uuid = uuid::Uuid::from_u128(bits);
        let id = format!("{prefix}-{uuid}");
        assert!(
            id.len() <= GROUP_STRING_BYTES_MAX,
            "member id of {} bytes from a {}-byte prefix",
            id.len(),
            prefix.len()
        );
        id
    }
}

/// The groups of one offsets partition and everything waiting on them.
pub struct GroupCoordinator<R> {
    config: GroupConfig,
    groups: BTreeMap<String, Group<R>>,
    fx: Effects<R>,
    next_retention_check: TimestampMs,
}

impl<R> GroupCoordinator<R> {
    /// An empty coordinator. `seed` feeds the member-id generator (take it from a real random
    /// source in production, a constant in tests).
    pub fn new(config: GroupConfig, seed: u64, now: TimestampMs) -> GroupCoordinator<R> {
        let next_retention_check = after(now, config.offsets_retention_check_interval);
        GroupCoordinator {
            config,
            groups: BTreeMap::new(),
            fx: Effects {
                actions: Vec::new(),
                pending: BTreeMap::new(),
                next_append: 0,
                next_join_order: 0,
                rng: seed,
            },
            next_retention_check,
        }
    }

    fn take(&mut self) -> Vec<Action<R>> {
        std::mem::take(&mut self.fx.actions)
    }

    /// Ends an input that may have created or changed `group_id`: drops the group if the
    /// input left it unused, checks its invariants, and hands out the actions.
    fn finish(&mut self, group_id: &str) -> Vec<Action<R>> {
        if self.groups.get(group_id).is_some_and(Group::unused) {
            self.groups.remove(group_id);
        }
        self.check(group_id);
        self.take()
    }

    fn check(&self, group: &str) {
        if let Some(g) = self.groups.get(group) {
            g.check_invariants(group);
        }
    }

    /// JoinGroup.
    pub fn join(&mut self, now: TimestampMs, reply: R, request: JoinRequest) -> Vec<Action<R>> {
        let group_id = request.group_id.clone();
        if let Err(error) = self.join_inner(now, reply, request) {
            self.fx.actions.push(*error);
        }
        self.finish(&group_id)
    }

    fn join_inner(
        &mut self,
        now: TimestampMs,
        reply: R,
        req: JoinRequest,
    ) -> Result<(), Box<Action<R>>> {
        let fail = |reply: R, error: GroupError, member: &str| {
            Box::new(Action::Reply(
                reply,
                GroupResponse::Join(JoinResponse::error(error, member)),
            ))
        };
        if let Err(error) = check_join_strings(&req) {
            return Err(fail(reply, error, &req.member_id));
        }
        if let Err(error) = check_session_timeout(&self.config, req.session_timeout) {
            return Err(fail(reply, error, &req.member_id));
        }
        if req.protocol_type.is_empty() || req.protocols.is_empty() {
            return Err(fail(
                reply,
                GroupError::InconsistentGroupProtocol,
                &req.member_id,
            ));
        }
        if !req.member_id.is_empty() && !self.groups.contains_key(&req.group_id) {
            return Err(fail(reply, GroupError::UnknownMemberId, &req.member_id));
        }
        let fx = &mut self.fx;
        let config = &self.config;
        let group = self
            .groups
            .entry(req.group_id.clone())
            .or_insert_with_key(|id| Group::new(id, now));
        if group.state == GroupState::Dead {
            return Err(fail(
                reply,
                GroupError::CoordinatorNotAvailable,
                &req.member_id,
            ));
        }
        if let Some(native) = &group.native {
            if !native.members.is_empty() {
                // Kafka refuses classic members in a consumer group that has members, too.
                return Err(fail(
                    reply,
                    GroupError::InconsistentGroupProtocol,
                    &req.member_id,
                ));
            }
            // An empty native group becomes a classic group (Kafka converts empty groups).
            group.native = None;
            group.protocol = None;
            group.state = GroupState::Empty;
        }
        if !group.supports(&req.protocol_type, &req.protocols) {
            return Err(fail(
                reply,
                GroupError::InconsistentGroupProtocol,
                &req.member_id,
            ));
        }
        if req.member_id.is_empty() {
            if let Some(instance) = req.group_instance_id.clone() {
                if let Some(old) = group.instances.get(&instance).cloned() {
                    replace_static_member(group, fx, config, now, &old, reply, req);
                } else {
                    let id = fx.member_id(&instance);
                    add_member(group, fx, config, now, id, reply, req);
                }
            } else {
                let prefix = if req.client_id.is_empty() {
                    "member"
                } else {
                    &req.client_id
                };
                let id = fx.member_id(prefix);
                if req.require_known_member_id {
                    group
                        .pending_members
                        .insert(id.clone(), after(now, req.session_timeout));
                    return Err(fail(reply, GroupError::MemberIdRequired, &id));
                }
                add_member(group, fx, config, now, id, reply, req);
            }
            return Ok(());
        }
        if let Some(instance) = &req.group_instance_id {
            match group.instances.get(instance) {
                Some(current) if *current != req.member_id => {
                    return Err(fail(reply, GroupError::FencedInstanceId, &req.member_id));
                }
                None => return Err(fail(reply, GroupError::UnknownMemberId, &req.member_id)),
                Some(_) => {}
            }
        }
        if group.pending_members.remove(&req.member_id).is_some() {
            let id = req.member_id.clone();
            add_member(group, fx, config, now, id, reply, req);
            return Ok(());
        }
        let Some(member) = group.members.get_mut(&req.member_id) else {
            return Err(fail(reply, GroupError::UnknownMemberId, &req.member_id));
        };
        let unchanged = member.same_protocols(&req.protocols);
        let is_leader = group.leader.as_deref() == Some(req.member_id.as_str());
        match group.state {
            GroupState::CompletingRebalance if unchanged => {
                let response = group.join_response(&req.member_id);
                fx.reply(reply, GroupResponse::Join(response));
            }
            GroupState::Stable if unchanged && !is_leader => {
                let response = group.join_response(&req.member_id);
                fx.reply(reply, GroupResponse::Join(response));
            }
            GroupState::PreparingRebalance
            | GroupState::CompletingRebalance
            | GroupState::Stable => {
                update_member(member, fx, now, reply, req);
                if group.state == GroupState::PreparingRebalance {
                    maybe_complete_join(group, fx, now);
                } else {
                    prepare_rebalance(group, fx, config, now);
                    maybe_complete_join(group, fx, now);
                }
            }
            // Reconciling is a native group's state; classic members are never in one.
            GroupState::Empty | GroupState::Dead | GroupState::Reconciling => {
                return Err(fail(reply, GroupError::UnknownMemberId, &req.member_id));
            }
        }
        Ok(())
    }

    /// SyncGroup.
    pub fn sync(&mut self, now: TimestampMs, reply: R, req: SyncRequest) -> Vec<Action<R>> {
        let fail = |error| {
            GroupResponse::Sync(SyncResponse {
                error: Some(error),
                ..SyncResponse::default()
            })
        };
        let strings = check_group_id(&req.group_id)
            .and_then(|()| check_member(&req.member_id, req.group_instance_id.as_deref()))
            .and_then(|()| {
                let protocol_type = req.protocol_type.as_deref().unwrap_or_default();
                check_length("protocol type", protocol_type, GROUP_STRING_BYTES_MAX)
            })
            .and_then(|()| {
                let protocol_name = req.protocol_name.as_deref().unwrap_or_default();
                check_length("protocol name", protocol_name, GROUP_STRING_BYTES_MAX)
            });
        if let Err(error) = strings {
            self.fx.reply(reply, fail(error));
            return self.take();
        }
        let Some(group) = self.groups.get_mut(&req.group_id) else {
            self.fx.reply(reply, fail(GroupError::UnknownMemberId));
            return self.take();
        };
        let check = || -> Result<(), GroupError> {
            if group.state == GroupState::Dead {
                return Err(GroupError::CoordinatorNotAvailable);
            }
            group.validate_member(&req.member_id, req.group_instance_id.as_deref())?;
            if req.generation != group.generation {
                return Err(GroupError::IllegalGeneration);
            }
            let type_differs = req
                .protocol_type
                .as_ref()
                .is_some_and(|t| group.protocol_type.as_ref() != Some(t));
            let name_differs = req
                .protocol_name
                .as_ref()
                .is_some_and(|n| group.protocol.as_ref() != Some(n));
            if type_differs || name_differs {
                return Err(GroupError::InconsistentGroupProtocol);
            }
            match group.state {
                GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
                GroupState::Empty | GroupState::Dead | GroupState::Reconciling => {
                    Err(GroupError::UnknownMemberId)
                }
                GroupState::CompletingRebalance | GroupState::Stable => Ok(()),
            }
        };
        if let Err(error) = check() {
            self.fx.reply(reply, fail(error));
            return self.take();
        }
        let member = group
            .members
            .get_mut(&req.member_id)
            .expect("validated member");
        member.heartbeat_deadline = after(now, member.session_timeout);
        if group.state == GroupState::Stable {
            let response = SyncResponse {
                error: None,
                protocol_type: group.protocol_type.clone(),
                protocol_name: group.protocol.clone(),
                assignment: member.assignment.clone(),
            };
            self.fx.reply(reply, GroupResponse::Sync(response));
            return self.take();
        }
        if let Some(old) = member.awaiting_sync.replace(reply) {
            self.fx.reply(old, fail(GroupError::RebalanceInProgress));
        }
        if group.leader.as_deref() == Some(req.member_id.as_str()) {
            let assignments: BTreeMap<String, Bytes> = req.assignments.into_iter().collect();
            let value = group.value(now, Some(&assignments));
            let record = OffsetsRecord::Group {
                group: req.group_id.clone(),
                value: Some(value),
            };
            group.stored = true;
            self.fx.append(
                vec![record],
                Pending::Sync {
                    group: req.group_id.clone(),
                    generation: group.generation,
                    assignments,
                },
            );
        }
        self.check(&req.group_id);
        self.take()
    }

    /// Heartbeat. Answers at once.
    pub fn heartbeat(
        &mut self,
        now: TimestampMs,
        req: &HeartbeatRequest,
    ) -> Result<(), GroupError> {
        let group = self
            .groups
            .get_mut(&req.group_id)
            .ok_or(GroupError::UnknownMemberId)?;
        if group.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        group.validate_member(&req.member_id, req.group_instance_id.as_deref())?;
        if req.generation != group.generation {
            return Err(GroupError::IllegalGeneration);
        }
        let member = group
            .members
            .get_mut(&req.member_id)
            .expect("validated member");
        member.heartbeat_deadline = after(now, member.session_timeout);
        match group.state {
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// A native group member's heartbeat: join, stay (report owned partitions, learn the
    /// assignment), or leave. The answer is sent once the group's state it reflects is
    /// durable: a snapshot is appended first whenever the state changed since the last durable
    /// one, so after a crash no member owns a partition the log gives to another.
    pub fn consumer_heartbeat(
        &mut self,
        now: TimestampMs,
        reply: R,
        req: ConsumerHeartbeat,
    ) -> Vec<Action<R>> {
        let group_id = req.group_id.clone();
        match self.consumer_heartbeat_inner(now, req) {
            Err(error) => self
                .fx
                .reply(reply, GroupResponse::ConsumerHeartbeat(Err(error))),
            Ok(answer) => {
                let group = self
                    .groups
                    .get_mut(&group_id)
                    .expect("heartbeat kept the group");
                let native = group
                    .native
                    .as_ref()
                    .expect("heartbeat made a native group");
                if native.dirty() {
                    let version = native.changes;
                    let record = OffsetsRecord::Group {
                        group: group_id.clone(),
                        value: Some(native.value(now)),
                    };
                    group.stored = true;
                    self.fx.append(
                        vec![record],
                        Pending::Heartbeat {
                            reply,
                            group: group_id.clone(),
                            version,
                            answer,
                        },
                    );
                } else {
                    self.fx
                        .reply(reply, GroupResponse::ConsumerHeartbeat(Ok(answer)));
                }
            }
        }
        self.finish(&group_id)
    }

    fn consumer_heartbeat_inner(
        &mut self,
        now: TimestampMs,
        req: ConsumerHeartbeat,
    ) -> Result<ConsumerAssignment, GroupError> {
        check_heartbeat_strings(&req)?;
        check_session_timeout(&self.config, req.session_timeout)?;
        if !self.groups.contains_key(&req.group_id) {
            if req.member_epoch != MEMBER_EPOCH_JOIN {
                return Err(GroupError::UnknownMemberId);
            }
            self.groups
                .insert(req.group_id.clone(), Group::new(&req.group_id, now));
        }
        let fx = &mut self.fx;
        let group = self.groups.get_mut(&req.group_id).expect("inserted above");
        if group.state == GroupState::Dead {
            return Err(GroupError::CoordinatorNotAvailable);
        }
        if group.native.is_none() {
            if !group.members.is_empty() || !group.pending_members.is_empty() {
                // A classic group with members: its members assign partitions themselves.
                return Err(GroupError::InconsistentGroupProtocol);
            }
            if req.member_epoch != MEMBER_EPOCH_JOIN {
                return Err(GroupError::UnknownMemberId);
            }
            // An empty classic group (or one holding only offsets) becomes a native group.
            group.native = Some(NativeGroup::default());
            group.protocol_type = Some(CONSUMER_PROTOCOL_TYPE.to_owned());
            group.protocol = Some(NATIVE_ASSIGNOR.to_owned());
            group.leader = None;
            group.owners = Owners::default();
        }
        let native = group.native.as_mut().expect("made native above");
        let prefix = if req.client_id.is_empty() {
            "member"
        } else {
            req.client_id.as_str()
        };
        let result = native.heartbeat(now, &req, &mut || fx.member_id(prefix));
        group.update_native_state(now);
        result
    }

    /// LeaveGroup. Answers at once; replies to the leavers' pending joins and syncs come out as
    /// actions.
    pub fn leave(
        &mut self,
        now: TimestampMs,
        req: LeaveRequest,
    ) -> (LeaveResponse, Vec<Action<R>>) {
        let mut response = LeaveResponse::default();
        let Some(group) = self.groups.get_mut(&req.group_id) else {
            response.members = req
                .members
                .into_iter()
                .map(|m| (m, Some(GroupError::UnknownMemberId)))
                .collect();
            return (response, self.take());
        };
        if group.state == GroupState::Dead {
            response.error = Some(GroupError::CoordinatorNotAvailable);
            return (response, self.take());
        }
        for leaving in req.members {
            let result = if let Some(instance) = &leaving.group_instance_id {
                match group.instances.get(instance).cloned() {
                    None => Err(GroupError::UnknownMemberId),
                    Some(current)
                        if !leaving.member_id.is_empty() && current != leaving.member_id =>
                    {
                        Err(GroupError::FencedInstanceId)
                    }
                    Some(current) => {
                        remove_member(group, &mut self.fx, &self.config, now, &current);
                        Ok(())
                    }
                }
            } else if group.pending_members.remove(&leaving.member_id).is_some() {
                maybe_complete_join(group, &mut self.fx, now);
                Ok(())
            } else if group.members.contains_key(&leaving.member_id) {
                let id = leaving.member_id.clone();
                remove_member(group, &mut self.fx, &self.config, now, &id);
                Ok(())
            } else {
                Err(GroupError::UnknownMemberId)
            };
            response.members.push((leaving, result.err()));
        }
        self.check(&req.group_id);
        (response, self.take())
    }

    /// OffsetCommit. The answer comes once the offsets are durable.
    pub fn commit(&mut self, now: TimestampMs, reply: R, req: CommitRequest) -> Vec<Action<R>> {
        let all = |error: GroupError| {
            GroupResponse::Commit(CommitResponse {
                partitions: req
                    .offsets
                    .iter()
                    .map(|o| (o.tp.clone(), Some(error.clone())))
                    .collect(),
            })
        };
        let strings = check_group_id(&req.group_id)
            .and_then(|()| check_member(&req.member_id, req.group_instance_id.as_deref()));
        if let Err(error) = strings {
            self.fx.reply(reply, all(error));
            return self.take();
        }
        let simple =
            req.generation < 0 && req.member_id.is_empty() && req.group_instance_id.is_none();
        if !self.groups.contains_key(&req.group_id) {
            if req.generation >= 0 {
                self.fx.reply(reply, all(GroupError::IllegalGeneration));
                return self.take();
            }
            self.groups
                .insert(req.group_id.clone(), Group::new(&req.group_id, now));
        }
        let group = self.groups.get_mut(&req.group_id).expect("inserted above");
        let check = || -> Result<(), GroupError> {
            if group.state == GroupState::Dead {
                return Err(GroupError::CoordinatorNotAvailable);
            }
            if simple && group.state == GroupState::Empty {
                return Ok(());
            }
            if let Some(native) = &group.native {
                let member = native
                    .members
                    .get(&req.member_id)
                    .ok_or(GroupError::UnknownMemberId)?;
                if req.generation > member.epoch {
                    return Err(GroupError::FencedMemberEpoch);
                }
                if req.generation < member.epoch {
                    return Err(GroupError::StaleMemberEpoch);
                }
                return Ok(());
            }
            group.validate_member(&req.member_id, req.group_instance_id.as_deref())?;
            if req.generation != group.generation {
                return Err(GroupError::IllegalGeneration);
            }
            if group.state == GroupState::CompletingRebalance {
                return Err(GroupError::RebalanceInProgress);
            }
            Ok(())
        };
        if let Err(error) = check() {
            self.fx.reply(reply, all(error));
            return self.take();
        }
        let mut accepted = Vec::new();
        let mut records = Vec::new();
        let mut results = Vec::with_capacity(req.offsets.len());
        for offset in req.offsets {
            let error = if offset.metadata.len() > self.config.offset_metadata_bytes_max {
                Some(GroupError::OffsetMetadataTooLarge(
                    self.config.offset_metadata_bytes_max,
                ))
            } else if group
                .owners
                .owner(&offset.tp)
                .is_some_and(|owner| !simple && owner != req.member_id)
            {
                // The current generation gives this partition to another member: the
                // committer's view of the assignment is stale (or it is misbehaving).
                Some(GroupError::IllegalGeneration)
            } else if !simple
                && group
                    .native
                    .as_ref()
                    .and_then(|n| n.members.get(&req.member_id))
                    .is_some_and(|m| !m.owns(&offset.tp))
            {
                // A native member commits only what it owns (assigned or being revoked).
                Some(GroupError::PartitionNotAssigned)
            } else {
                None
            };
            if error.is_none() {
                let value = OffsetValue {
                    offset: offset.offset.0,
                    leader_epoch: offset.leader_epoch,
                    metadata: offset.metadata,
                    commit_timestamp_ms: now.0,
                };
                records.push(OffsetsRecord::Offset {
                    group: req.group_id.clone(),
                    topic: offset.tp.topic.to_string(),
                    partition: offset.tp.partition.0,
                    value: Some(value.clone()),
                });
                accepted.push((offset.tp.clone(), value));
            }
            results.push((offset.tp, error));
        }
        if records.is_empty() {
            self.fx.reply(
                reply,
                GroupResponse::Commit(CommitResponse {
                    partitions: results,
                }),
            );
        } else {
            self.fx.append(
                records,
                Pending::Commit {
                    reply,
                    group: req.group_id.clone(),
                    accepted,
                    results,
                },
            );
        }
        if self.groups.get(&req.group_id).is_some_and(Group::unused) {
            self.groups.remove(&req.group_id);
        }
        self.take()
    }

    /// OffsetFetch. Answers at once with what is durable.
    pub fn fetch_offsets(&self, req: &FetchOffsetsRequest) -> FetchOffsetsResponse {
        let group = self.groups.get(&req.group_id);
        let committed = |tp: &TopicPartition| -> CommittedOffset {
            let value = group.and_then(|g| g.offsets.get(tp));
            CommittedOffset {
                tp: tp.clone(),
                offset: Offset(value.map_or(-1, |v| v.offset)),
                leader_epoch: value.map_or(-1, |v| v.leader_epoch),
                metadata: value.map(|v| v.metadata.clone()).unwrap_or_default(),
                error: None,
            }
        };
        let partitions = match &req.partitions {
            Some(partitions) => partitions.iter().map(committed).collect(),
            None => group
                .map(|g| g.offsets.keys().map(committed).collect())
                .unwrap_or_default(),
        };
        FetchOffsetsResponse {
            error: None,
            partitions,
        }
    }

    /// Every group with its state (ListGroups).
    pub fn list(&self) -> Vec<GroupListing> {
        self.groups
            .iter()
            .map(|(id, g)| GroupListing {
                group_id: id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                group_type: g.group_type(),
                state: g.state,
            })
            .collect()
    }

    /// DescribeGroups for one group.
    pub fn describe(&self, group_id: &str) -> GroupDescription {
        let Some(group) = self.groups.get(group_id) else {
            return GroupDescription {
                group_id: group_id.to_owned(),
                error: Some(GroupError::GroupIdNotFound),
                state: GroupState::Dead,
                protocol_type: String::new(),
                group_type: GroupType::Classic,
                epoch: -1,
                protocol: String::new(),
                members: Vec::new(),
            };
        };
        if let Some(native) = &group.native {
            return GroupDescription {
                group_id: group_id.to_owned(),
                error: None,
                state: group.state,
                protocol_type: CONSUMER_PROTOCOL_TYPE.to_owned(),
                group_type: GroupType::Consumer,
                epoch: native.epoch,
                protocol: NATIVE_ASSIGNOR.to_owned(),
                members: native
                    .members
                    .iter()
                    .map(|(id, m)| {
                        let topics: Vec<String> = m.topics.iter().cloned().collect();
                        let owned = m.owned();
                        MemberDescription {
                            member_id: id.clone(),
                            group_instance_id: None,
                            client_id: m.client_id.clone(),
                            client_host: m.client_host.clone(),
                            metadata: encode_subscription(&topics),
                            assignment: encode_assignment(&owned, None),
                            member_epoch: m.epoch,
                            partitions: owned,
                        }
                    })
                    .collect(),
            };
        }
        let mut members: Vec<(&String, &Member<R>)> = group.members.iter().collect();
        members.sort_by_key(|(_, m)| m.join_order);
        // The members' partitions, as the ownership table reads them: topic names shared, at
        // most GROUP_OWNED_PARTITIONS_MAX over the group (a member past it shows none).
        let consumer = group.protocol_type.as_deref() == Some(CONSUMER_PROTOCOL_TYPE);
        let mut entries_left = GROUP_OWNED_PARTITIONS_MAX;
        let mut partitions = |assignment: &[u8]| -> Vec<TopicPartition> {
            if !consumer {
                return Vec::new();
            }
            let partitions = assigned_partitions(assignment, entries_left).unwrap_or_default();
            entries_left -= partitions.len();
            partitions
        };
        GroupDescription {
            group_id: group_id.to_owned(),
            error: None,
            state: group.state,
            protocol_type: group.protocol_type.clone().unwrap_or_default(),
            group_type: GroupType::Classic,
            epoch: group.generation,
            protocol: if group.state == GroupState::Stable {
                group.protocol.clone().unwrap_or_default()
            } else {
                String::new()
            },
            members: members
                .into_iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m.metadata(group.protocol.as_deref()),
                    assignment: m.assignment.clone(),
                    member_epoch: group.generation,
                    partitions: partitions(&m.assignment),
                })
                .collect(),
        }
    }

    /// DeleteGroups for one group: only an empty group can be deleted.
    pub fn delete(&mut self, reply: R, group_id: &str) -> Vec<Action<R>> {
        let Some(group) = self.groups.get_mut(group_id) else {
            self.fx.reply(
                reply,
                GroupResponse::Delete(Err(GroupError::GroupIdNotFound)),
            );
            return self.take();
        };
        match group.state {
            GroupState::Dead => {
                self.fx.reply(
                    reply,
                    GroupResponse::Delete(Err(GroupError::GroupIdNotFound)),
                );
                return self.take();
            }
            GroupState::Empty if group.pending_members.is_empty() => {}
            _ => {
                self.fx
                    .reply(reply, GroupResponse::Delete(Err(GroupError::NonEmptyGroup)));
                return self.take();
            }
        }
        let mut records: Vec<OffsetsRecord> = group
            .offsets
            .keys()
            .map(|tp| OffsetsRecord::Offset {
                group: group_id.to_owned(),
                topic: tp.topic.to_string(),
                partition: tp.partition.0,
                value: None,
            })
            .collect();
        records.push(OffsetsRecord::Group {
            group: group_id.to_owned(),
            value: None,
        });
        group.state = GroupState::Dead;
        self.fx.append(
            records,
            Pending::DeleteGroup {
                reply,
                group: group_id.to_owned(),
            },
        );
        self.take()
    }

    /// OffsetDelete: removes committed offsets of partitions the group does not consume.
    pub fn delete_offsets(
        &mut self,
        reply: R,
        group_id: &str,
        partitions: Vec<TopicPartition>,
    ) -> Vec<Action<R>> {
        let group = match self.groups.get(group_id) {
            Some(g) if g.state != GroupState::Dead => g,
            _ => {
                self.fx.reply(
                    reply,
                    GroupResponse::DeleteOffsets(Err(GroupError::GroupIdNotFound)),
                );
                return self.take();
            }
        };
        let subscribed = group.subscribed();
        let mut removed = Vec::new();
        let mut results = Vec::with_capacity(partitions.len());
        for tp in partitions {
            if subscribed.iter().any(|t| **t == *tp.topic) {
                results.push((tp, Some(GroupError::GroupSubscribedToTopic)));
                continue;
            }
            if group.offsets.contains_key(&tp) && !removed.contains(&tp) {
                removed.push(tp.clone());
            }
            results.push((tp, None));
        }
        if removed.is_empty() {
            self.fx
                .reply(reply, GroupResponse::DeleteOffsets(Ok(results)));
            return self.take();
        }
        let records = removed
            .iter()
            .map(|tp| OffsetsRecord::Offset {
                group: group_id.to_owned(),
                topic: tp.topic.to_string(),
                partition: tp.partition.0,
                value: None,
            })
            .collect();
        self.fx.append(
            records,
            Pending::DeleteOffsets {
                reply,
                group: group_id.to_owned(),
                removed,
                results,
            },
        );
        self.take()
    }

    /// Reports the outcome of the append `id`. Appends must be reported in id order.
    pub fn append_done(
        &mut self,
        now: TimestampMs,
        id: AppendId,
        result: Result<(), GroupError>,
    ) -> Vec<Action<R>> {
        let first = self.fx.pending.keys().next().copied();
        assert_eq!(
            first,
            Some(id),
            "append {id:?} reported out of order (oldest pending {first:?})"
        );
        let pending = self.fx.pending.remove(&id).expect("checked above");
        match pending {
            Pending::Commit {
                reply,
                group,
                accepted,
                mut results,
            } => {
                match &result {
                    Ok(()) => {
                        let g = self
                            .groups
                            .entry(group)
                            .or_insert_with_key(|id| Group::new(id, now));
                        g.offsets.extend(accepted);
                    }
                    Err(error) => {
                        for (tp, slot) in &mut results {
                            if slot.is_none() && accepted.iter().any(|(a, _)| a == tp) {
                                *slot = Some(error.clone());
                            }
                        }
                    }
                }
                self.fx.reply(
                    reply,
                    GroupResponse::Commit(CommitResponse {
                        partitions: results,
                    }),
                );
            }
            Pending::Sync {
                group: group_id,
                generation,
                assignments,
            } => {
                if let Some(group) = self.groups.get_mut(&group_id)
                    && group.state == GroupState::CompletingRebalance
                    && group.generation == generation
                {
                    complete_sync(group, &mut self.fx, &self.config, now, assignments, result);
                    self.check(&group_id);
                }
            }
            Pending::Stored => {
                if let Err(error) = result {
                    tracing::warn!(%error, "storing empty group metadata failed");
                }
            }
            Pending::DeleteGroup { reply, group } => {
                let answer = match result {
                    Ok(()) => {
                        if self
                            .groups
                            .get(&group)
                            .is_some_and(|g| g.state == GroupState::Dead)
                        {
                            self.groups.remove(&group);
                        }
                        Ok(())
                    }
                    Err(error) => {
                        if let Some(g) = self.groups.get_mut(&group) {
                            g.state = GroupState::Empty;
                        }
                        Err(error)
                    }
                };
                self.fx.reply(reply, GroupResponse::Delete(answer));
            }
            Pending::DeleteOffsets {
                reply,
                group,
                removed,
                mut results,
            } => {
                match &result {
                    Ok(()) => {
                        if let Some(g) = self.groups.get_mut(&group) {
                            for tp in &removed {
                                g.offsets.remove(tp);
                            }
                        }
                    }
                    Err(error) => {
                        for (tp, slot) in &mut results {
                            if slot.is_none() && removed.contains(tp) {
                                *slot = Some(error.clone());
                            }
                        }
                    }
                }
                self.fx
                    .reply(reply, GroupResponse::DeleteOffsets(Ok(results)));
            }
            Pending::Heartbeat {
                reply,
                group,
                version,
                answer,
            } => {
                let answer = match result {
                    Ok(()) => {
                        if let Some(native) =
                            self.groups.get_mut(&group).and_then(|g| g.native.as_mut())
                        {
                            native.durable = native.durable.max(version.min(native.changes));
                        }
                        Ok(answer)
                    }
                    Err(error) => Err(error),
                };
                self.fx
                    .reply(reply, GroupResponse::ConsumerHeartbeat(answer));
            }
            Pending::Expire {
                group,
                removed,
                delete_group,
            } => {
                if result.is_ok()
                    && let Some(g) = self.groups.get_mut(&group)
                {
                    for tp in &removed {
                        g.offsets.remove(tp);
                    }
                    if delete_group {
                        g.stored = false;
                    }
                    if g.unused() {
                        self.groups.remove(&group);
                    }
                }
            }
        }
        self.take()
    }

    /// Timers: session expiry, rebalance and sync deadlines, the initial rebalance delay, and
    /// (every check interval) offsets retention.
    pub fn tick(&mut self, now: TimestampMs) -> Vec<Action<R>> {
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for id in &ids {
            let Some(group) = self.groups.get_mut(id) else {
                continue;
            };
            if group.state == GroupState::Dead {
                continue;
            }
            if let Some(native) = &mut group.native {
                for member in native.expire(now) {
                    tracing::info!(group = %id, %member, "native member session expired");
                }
                group.update_native_state(now);
            }
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    m.awaiting_join.is_none()
                        && m.awaiting_sync.is_none()
                        && m.heartbeat_deadline <= now
                })
                .map(|(id, _)| id.clone())
                .collect();
            for member in expired {
                tracing::info!(group = %id, %member, "member session expired");
                remove_member(group, &mut self.fx, &self.config, now, &member);
            }
            let before = group.pending_members.len();
            group.pending_members.retain(|_, deadline| *deadline > now);
            if group.pending_members.len() != before {
                maybe_complete_join(group, &mut self.fx, now);
            }
            if group.state == GroupState::PreparingRebalance {
                if let Some(delay) = &mut group.initial_delay
                    && now >= delay.until
                {
                    if delay.joined_during && delay.until < delay.limit {
                        delay.until =
                            after(now, self.config.initial_rebalance_delay).min(delay.limit);
                        delay.joined_during = false;
                    } else {
                        group.initial_delay = None;
                        maybe_complete_join(group, &mut self.fx, now);
                    }
                }
                if group.state == GroupState::PreparingRebalance && now >= group.join_deadline {
                    complete_join(group, &mut self.fx, now);
                }
            }
            if group.state == GroupState::CompletingRebalance && now >= group.sync_deadline {
                let missing: Vec<String> = group
                    .members
                    .iter()
                    .filter(|(_, m)| m.awaiting_sync.is_none())
                    .map(|(id, _)| id.clone())
                    .collect();
                for member in missing {
                    tracing::info!(group = %id, %member, "member did not sync in time");
                    remove_member(group, &mut self.fx, &self.config, now, &member);
                }
            }
            if group.unused() {
                self.groups.remove(id);
            } else {
                self.check(id);
            }
        }
        if now >= self.next_retention_check {
            self.next_retention_check = after(now, self.config.offsets_retention_check_interval);
            self.expire_offsets(now);
        }
        self.take()
    }

    /// Removes the offsets of empty groups that have been kept for the retention period
    /// (counted from the later of the commit and the group becoming empty), with tombstones.
    fn expire_offsets(&mut self, now: TimestampMs) {
        let retention = self.config.offsets_retention;
        // A group with an append of its offsets in flight waits for the next tick: a commit
        // acknowledged after this expiry was computed would otherwise be tombstoned (or its
        // group deleted) by the expiry completing after it, as Kafka skips pending commits.
        let waiting: Vec<&str> = self
            .fx
            .pending
            .values()
            .filter_map(|p| match p {
                Pending::Expire { group, .. }
                | Pending::Commit { group, .. }
                | Pending::DeleteOffsets { group, .. }
                | Pending::DeleteGroup { group, .. } => Some(group.as_str()),
                _ => None,
            })
            .collect();
        let mut appends = Vec::new();
        for (id, group) in &self.groups {
            if group.state != GroupState::Empty
                || !group.pending_members.is_empty()
                || waiting.contains(&id.as_str())
            {
                continue;
            }
            let removed: Vec<TopicPartition> = group
                .offsets
                .iter()
                .filter(|(_, v)| {
                    let since = TimestampMs(v.commit_timestamp_ms.max(group.state_since.0));
                    now >= after(since, retention)
                })
                .map(|(tp, _)| tp.clone())
                .collect();
            let all_gone = removed.len() == group.offsets.len();
            let delete_group = all_gone && group.stored;
            if removed.is_empty() && !delete_group {
                continue;
            }
            let mut records: Vec<OffsetsRecord> = removed
                .iter()
                .map(|tp| OffsetsRecord::Offset {
                    group: id.clone(),
                    topic: tp.topic.to_string(),
                    partition: tp.partition.0,
                    value: None,
                })
                .collect();
            if delete_group {
                records.push(OffsetsRecord::Group {
                    group: id.clone(),
                    value: None,
                });
            }
            tracing::info!(group = %id, offsets = removed.len(), "offsets expired");
            appends.push((
                records,
                Pending::Expire {
                    group: id.clone(),
                    removed,
                    delete_group,
                },
            ));
        }
        for (records, pending) in appends {
            self.fx.append(records, pending);
        }
    }

    /// Applies one record read back from the offsets partition (in log order).
    pub fn replay(&mut self, now: TimestampMs, record: OffsetsRecord) {
        match record {
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                value,
            } => {
                let tp = TopicPartition::new(topic, partition);
                match value {
                    Some(value) => {
                        self.groups
                            .entry(group)
                            .or_insert_with_key(|id| Group::new(id, now))
                            .offsets
                            .insert(tp, value);
                    }
                    None => {
                        if let Some(g) = self.groups.get_mut(&group) {
                            g.offsets.remove(&tp);
                            if g.unused() {
                                self.groups.remove(&group);
                            }
                        }
                    }
                }
            }
            OffsetsRecord::Group { group, value: None } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    let offsets = std::mem::take(&mut g.offsets);
                    *g = Group::new(&group, now);
                    g.offsets = offsets;
                    if g.unused() {
                        self.groups.remove(&group);
                    }
                }
            }
            OffsetsRecord::Group {
                group,
                value: Some(value),
            } if value.protocol.as_deref() == Some(NATIVE_ASSIGNOR) => {
                let g = self
                    .groups
                    .entry(group.clone())
                    .or_insert_with_key(|id| Group::new(id, now));
                let offsets = std::mem::take(&mut g.offsets);
                *g = Group::new(&group, TimestampMs(value.state_timestamp_ms));
                g.offsets = offsets;
                g.stored = true;
                g.protocol_type = Some(CONSUMER_PROTOCOL_TYPE.to_owned());
                g.protocol = Some(NATIVE_ASSIGNOR.to_owned());
                g.native = Some(NativeGroup::from_value(&value, now));
                g.update_native_state(now);
                g.check_invariants(&group);
            }
            OffsetsRecord::Group {
                group,
                value: Some(value),
            } => {
                let fx = &mut self.fx;
                let g = self
                    .groups
                    .entry(group.clone())
                    .or_insert_with_key(|id| Group::new(id, now));
                let offsets = std::mem::take(&mut g.offsets);
                *g = Group::new(&group, TimestampMs(value.state_timestamp_ms));
                g.offsets = offsets;
                g.stored = true;
                g.generation = value.generation;
                g.protocol_type = Some(value.protocol_type).filter(|t| !t.is_empty());
                g.protocol = value.protocol;
                for m in value.members {
                    if let Some(instance) = &m.group_instance_id {
                        g.instances.insert(instance.clone(), m.member_id.clone());
                    }
                    let protocol = g.protocol.clone().unwrap_or_default();
                    let member = Member {
                        group_instance_id: m.group_instance_id,
                        client_id: m.client_id,
                        client_host: m.client_host,
                        session_timeout: ms(m.session_timeout_ms),
                        rebalance_timeout: ms(m.rebalance_timeout_ms),
                        protocols: vec![(protocol, m.subscription)],
                        assignment: m.assignment,
                        awaiting_join: None,
                        awaiting_sync: None,
                        heartbeat_deadline: now,
                        join_order: fx.next_join_order,
                    };
                    fx.next_join_order += 1;
                    g.members.insert(m.member_id, member);
                }
                if g.members.is_empty() {
                    g.leader = None;
                    g.protocol = None;
                } else {
                    g.state = GroupState::Stable;
                    g.leader = value
                        .leader
                        .filter(|l| g.members.contains_key(l))
                        .or_else(|| g.first_member());
                    g.compute_owners();
                }
                g.check_invariants(&group);
            }
        }
    }

    /// Ends a replay: restored members get one session timeout from `now` to heartbeat.
    pub fn finish_load(&mut self, now: TimestampMs) {
        for group in self.groups.values_mut() {
            if let Some(native) = &mut group.native {
                native.restart_sessions(now);
            }
            for member in group.members.values_mut() {
                member.heartbeat_deadline = after(now, member.session_timeout);
            }
        }
    }

    /// Every committed offset: (group, partition, offset), for the lag metric.
    pub fn committed(&self) -> Vec<(String, TopicPartition, Offset)> {
        let mut out = Vec::new();
        for (id, group) in &self.groups {
            for (tp, value) in &group.offsets {
                out.push((id.clone(), tp.clone(), Offset(value.offset)));
            }
        }
        out
    }

    /// Drops every pending reply (the partition is closing); returns how many were waiting.
    pub fn abandon(&mut self) -> usize {
        let mut dropped = self.fx.pending.len();
        self.fx.pending.clear();
        for group in self.groups.values_mut() {
            for member in group.members.values_mut() {
                dropped += usize::from(member.awaiting_join.take().is_some());
                dropped += usize::from(member.awaiting_sync.take().is_some());
            }
        }
        dropped
    }
}

/// A member's session timeout must lie within the broker's range.
fn check_session_timeout(config: &GroupConfig, timeout: Duration) -> Result<(), GroupError> {
    let (min, max) = (config.session_timeout_min, config.session_timeout_max);
    if timeout < min || timeout > max {
        return Err(GroupError::InvalidSessionTimeout {
            min_ms: u64::try_from(min.as_millis()).unwrap_or(u64::MAX),
            max_ms: u64::try_from(max.as_millis()).unwrap_or(u64::MAX),
        });
    }
    Ok(())
}

fn ms(value: i32) -> Duration {
    Duration::from_millis(u64::try_from(value).unwrap_or(0))
}

fn add_member<R>(
    group: &mut Group<R>,
    fx: &mut Effects<R>,
    config: &GroupConfig,
    now: TimestampMs,
    id: String,
    reply: R,
    req: JoinRequest,
) {
    assert!(
        !group.members.contains_key(&id),
        "member {id} added twice to group {}",
        req.group_id
    );
    if group.members.is_empty() {
        group.protocol_type = Some(req.protocol_type.clone());
    }
    if let Some(instance) = &req.group_instance_id {
        group.instances.insert(instance.clone(), id.clone());
    }
    if group.leader.is_none() {
        group.leader = Some(id.clone());
    }
    if let Some(delay) = &mut group.initial_delay {
        delay.joined_during = true;
    }
    let member = Member {
        group_instance_id: req.group_instance_id,
        client_id: req.client_id,
        client_host: req.client_host,
        session_timeout: req.session_timeout,
        rebalance_timeout: req.rebalance_timeout,
        protocols: req.protocols,
        assignment: Bytes::new(),
        awaiting_join: Some(reply),
        awaiting_sync: None,
        heartbeat_deadline: after(now, req.session_timeout),
        join_order: fx.next_join_order,
    };
    fx.next_join_order += 1;
    group.members.insert(id, member);
    if group.state != GroupState::PreparingRebalance {
        prepare_rebalance(group, fx, config, now);
    }
    maybe_complete_join(group, fx, now);
}

fn update_member<R>(
    member: &mut Member<R>,
    fx: &mut Effects<R>,
    now: TimestampMs,
    reply: R,
    req: JoinRequest,
) {
    member.protocols = req.protocols;
    member.session_timeout = req.session_timeout;
    member.rebalance_timeout = req.rebalance_timeout;
    member.client_id = req.client_id;
    member.client_host = req.client_host;
    member.heartbeat_deadline = after(now, req.session_timeout);
    if let Some(old) = member.awaiting_join.replace(reply) {
        fx.reply(
            old,
            GroupResponse::Join(JoinResponse::error(
                GroupError::RebalanceInProgress,
                &req.member_id,
            )),
        );
    }
}

/// A static member rejoined without its member id (the client restarted): it takes a new
/// member id and the old one is fenced. A follower whose protocols are unchanged keeps its
/// assignment without a rebalance (the point of static membership).
fn replace_static_member<R>(
    group: &mut Group<R>,
    fx: &mut Effects<R>,
    config: &GroupConfig,
    now: TimestampMs,
    old_id: &str,
    reply: R,
    req: JoinRequest,
) {
    let instance = req
        .group_instance_id
        .clone()
        .expect("static members have an instance id");
    let new_id = fx.member_id(&instance);
    let mut member = group
        .members
        .remove(old_id)
        .expect("instances point at members");
    if let Some(old) = member.awaiting_join.take() {
        fx.reply(
            old,
            GroupResponse::Join(JoinResponse::error(GroupError::FencedInstanceId, old_id)),
        );
    }
    if let Some(old) = member.awaiting_sync.take() {
        fx.reply(
            old,
            GroupResponse::Sync(SyncResponse {
                error: Some(GroupError::FencedInstanceId),
                ..SyncResponse::default()
            }),
        );
    }
    let unchanged = member.same_protocols(&req.protocols);
    member.protocols = req.protocols;
    member.client_id = req.client_id;
    member.client_host = req.client_host;
    member.session_timeout = req.session_timeout;
    member.rebalance_timeout = req.rebalance_timeout;
    member.heartbeat_deadline = after(now, req.session_timeout);
    let was_leader = group.leader.as_deref() == Some(old_id);
    if was_leader {
        group.leader = Some(new_id.clone());
    }
    group.owners.rename(old_id, &new_id);
    group.instances.insert(instance, new_id.clone());
    group.members.insert(new_id.clone(), member);
    match group.state {
        GroupState::Stable if unchanged && !was_leader => {
            let response = group.join_response(&new_id);
            fx.reply(reply, GroupResponse::Join(response));
        }
        GroupState::PreparingRebalance => {
            let member = group.members.get_mut(&new_id).expect("inserted above");
            member.awaiting_join = Some(reply);
            maybe_complete_join(group, fx, now);
        }
        _ => {
            let member = group.members.get_mut(&new_id).expect("inserted above");
            member.awaiting_join = Some(reply);
            prepare_rebalance(group, fx, config, now);
            maybe_complete_join(group, fx, now);
        }
    }
}

fn prepare_rebalance<R>(
    group: &mut Group<R>,
    fx: &mut Effects<R>,
    config: &GroupConfig,
    now: TimestampMs,
) {
    assert_ne!(group.state, GroupState::Dead, "rebalancing a dead group");
    if group.state == GroupState::CompletingRebalance {
        for member in group.members.values_mut() {
            if let Some(reply) = member.awaiting_sync.take() {
                fx.reply(
                    reply,
                    GroupResponse::Sync(SyncResponse {
                        error: Some(GroupError::RebalanceInProgress),
                        ..SyncResponse::default()
                    }),
                );
            }
        }
    }
    let timeout = group.rebalance_timeout();
    group.initial_delay = None;
    if group.state == GroupState::Empty && !config.initial_rebalance_delay.is_zero() {
        group.initial_delay = Some(InitialDelay {
            until: after(now, config.initial_rebalance_delay.min(timeout)),
            limit: after(now, timeout),
            joined_during: false,
        });
    }
    group.join_deadline = after(now, timeout);
    group.state = GroupState::PreparingRebalance;
    group.state_since = now;
}

fn maybe_complete_join<R>(group: &mut Group<R>, fx: &mut Effects<R>, now: TimestampMs) {
    if group.state == GroupState::PreparingRebalance
        && group.initial_delay.is_none()
        && group.all_joined()
    {
        complete_join(group, fx, now);
    }
}

/// Ends the join phase: members that did not rejoin (dynamic ones) are dropped, the
/// generation advances, and every waiting member gets its join answer.
fn complete_join<R>(group: &mut Group<R>, fx: &mut Effects<R>, now: TimestampMs) {
    assert_eq!(group.state, GroupState::PreparingRebalance);
    let id = group.id.clone();
    let id = id.as_str();
    let gone: Vec<String> = group
        .members
        .iter()
        .filter(|(_, m)| m.awaiting_join.is_none() && m.group_instance_id.is_none())
        .map(|(id, _)| id.clone())
        .collect();
    for member in &gone {
        tracing::info!(group = id, %member, "member did not rejoin in time");
        group.members.remove(member);
    }
    if group
        .leader
        .as_ref()
        .is_none_or(|l| !group.members.contains_key(l))
    {
        group.leader = group.first_member();
    }
    let previous = group.generation;
    group.generation = group.generation.wrapping_add(1).max(1);
    assert!(
        group.generation > previous,
        "generation of group {id} must grow"
    );
    group.initial_delay = None;
    group.owners = Owners::default();
    group.state_since = now;
    if group.members.is_empty() {
        group.state = GroupState::Empty;
        group.protocol = None;
        group.leader = None;
        if group.stored {
            let record = OffsetsRecord::Group {
                group: id.to_owned(),
                value: Some(group.value(now, None)),
            };
            fx.append(vec![record], Pending::Stored);
        }
        return;
    }
    group.protocol = group.select_protocol();
    group.state = GroupState::CompletingRebalance;
    group.sync_deadline = after(now, group.rebalance_timeout());
    let ids: Vec<String> = group.members.keys().cloned().collect();
    for member_id in ids {
        let response = group.join_response(&member_id);
        let member = group.members.get_mut(&member_id).expect("listed above");
        member.heartbeat_deadline = after(now, member.session_timeout);
        if let Some(reply) = member.awaiting_join.take() {
            fx.reply(reply, GroupResponse::Join(response));
        }
    }
}

fn complete_sync<R>(
    group: &mut Group<R>,
    fx: &mut Effects<R>,
    config: &GroupConfig,
    now: TimestampMs,
    assignments: BTreeMap<String, Bytes>,
    result: Result<(), GroupError>,
) {
    if let Err(error) = result {
        for member in group.members.values_mut() {
            if let Some(reply) = member.awaiting_sync.take() {
                fx.reply(
                    reply,
                    GroupResponse::Sync(SyncResponse {
                        error: Some(error.clone()),
                        ..SyncResponse::default()
                    }),
                );
            }
        }
        prepare_rebalance(group, fx, config, now);
        return;
    }
    for (id, member) in &mut group.members {
        member.assignment = assignments.get(id).cloned().unwrap_or_default();
        if let Some(reply) = member.awaiting_sync.take() {
            fx.reply(
                reply,
                GroupResponse::Sync(SyncResponse {
                    error: None,
                    protocol_type: group.protocol_type.clone(),
                    protocol_name: group.protocol.clone(),
                    assignment: member.assignment.clone(),
                }),
            );
        }
    }
    group.state = GroupState::Stable;
    group.state_since = now;
    group.compute_owners();
}

/// Removes a member (left, expired, or missed a rebalance) and rebalances the rest.
fn remove_member<R>(
    group: &mut Group<R>,
    fx: &mut Effects<R>,
    config: &GroupConfig,
    now: TimestampMs,
    id: &str,
) {
    let Some(member) = group.members.remove(id) else {
        return;
    };
    if let Some(instance) = &member.group_instance_id {
        group.instances.remove(instance);
    }
    if let Some(reply) = member.awaiting_join {
        fx.reply(
            reply,
            GroupResponse::Join(JoinResponse::error(GroupError::UnknownMemberId, id)),
        );
    }
    if let Some(reply) = member.awaiting_sync {
        fx.reply(
            reply,
            GroupResponse::Sync(SyncResponse {
                error: Some(GroupError::UnknownMemberId),
                ..SyncResponse::default()
            }),
        );
    }
    if group.leader.as_deref() == Some(id) {
        group.leader = group.first_member();
    }
    match group.state {
        GroupState::Stable | GroupState::CompletingRebalance => {
            prepare_rebalance(group, fx, config, now);
            maybe_complete_join(group, fx, now);
        }
        GroupState::PreparingRebalance => maybe_complete_join(group, fx, now),
        GroupState::Empty | GroupState::Dead | GroupState::Reconciling => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use super::super::consumer_protocol::tests::{assignment, subscription};
    use super::super::types::{CommitOffset, LeavingMember};
    use super::*;

    const SESSION: Duration = Duration::from_secs(10);

    /// Drives a core like the backend does, with a log kept in memory.
    struct Harness {
        core: GroupCoordinator<u32>,
        now: TimestampMs,
        next_reply: u32,
        replies: BTreeMap<u32, GroupResponse>,
        /// Appends not yet reported done.
        queued: VecDeque<(AppendId, Vec<OffsetsRecord>)>,
        /// Every record appended and reported durable, in log order.
        log: Vec<OffsetsRecord>,
    }

    fn config() -> GroupConfig {
        GroupConfig {
            initial_rebalance_delay: Duration::ZERO,
            session_timeout_min: Duration::from_secs(1),
            ..GroupConfig::default()
        }
    }

    impl Harness {
        fn new() -> Harness {
            Harness::with(config())
        }

        fn with(config: GroupConfig) -> Harness {
            Harness {
                core: GroupCoordinator::new(config, 7, TimestampMs(1_000_000)),
                now: TimestampMs(1_000_000),
                next_reply: 0,
                replies: BTreeMap::new(),
                queued: VecDeque::new(),
                log: Vec::new(),
            }
        }

        fn token(&mut self) -> u32 {
            self.next_reply += 1;
            self.next_reply
        }

        fn apply(&mut self, actions: Vec<Action<u32>>) {
            for action in actions {
                match action {
                    Action::Reply(token, response) => {
                        assert!(
                            self.replies.insert(token, response).is_none(),
                            "two replies"
                        );
                    }
                    Action::Append { id, records } => self.queued.push_back((id, records)),
                }
            }
        }

        /// Completes every queued append in order: the records go through their byte encoding
        /// and back, as through the log, and an append whose records do not encode fails as
        /// the backend fails it.
        fn flush(&mut self) {
            while let Some((id, records)) = self.queued.pop_front() {
                let mut stored = Vec::with_capacity(records.len());
                let mut result = Ok(());
                for record in &records {
                    match (record.encode_key(), record.encode_value()) {
                        (Ok(key), Ok(value)) => stored.push(
                            OffsetsRecord::decode(Some(&key), value.as_deref())
                                .expect("an encoded record decodes"),
                        ),
                        (Err(error), _) | (_, Err(error)) => {
                            result = Err(GroupError::Storage(error.to_string()));
                        }
                    }
                }
                if result.is_ok() {
                    assert_eq!(stored, records, "records survive their encoding");
                    self.log.extend(stored);
                }
                let actions = self.core.append_done(self.now, id, result);
                self.apply(actions);
            }
        }

        fn advance(&mut self, by: Duration) {
            self.now = after(self.now, by);
            let actions = self.core.tick(self.now);
            self.apply(actions);
            self.flush();
        }

        fn take(&mut self, token: u32) -> Option<GroupResponse> {
            self.replies.remove(&token)
        }

        fn join(
            &mut self,
            group: &str,
            member: &str,
            instance: Option<&str>,
            topics: &[&str],
        ) -> u32 {
            let token = self.token();
            let request = JoinRequest {
                group_id: group.into(),
                member_id: member.into(),
                group_instance_id: instance.map(Into::into),
                client_id: "client".into(),
                client_host: "/127.0.0.1".into(),
                session_timeout: SESSION,
                rebalance_timeout: Duration::from_secs(30),
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), Bytes::from(subscription(topics)))],
                require_known_member_id: instance.is_none(),
            };
            let actions = self.core.join(self.now, token, request);
            self.apply(actions);
            self.flush();
            token
        }

        fn joined(&mut self, token: u32) -> JoinResponse {
            match self.take(token) {
                Some(GroupResponse::Join(r)) => r,
                other => panic!("no join answer: {other:?}"),
            }
        }

        /// A dynamic member's two-step join; returns the token of the second join.
        fn join_new(&mut self, group: &str) -> (String, u32) {
            let token = self.join(group, "", None, &["t"]);
            let first = self.joined(token);
            assert_eq!(first.error, Some(GroupError::MemberIdRequired));
            let id = first.member_id;
            let token = self.join(group, &id, None, &["t"]);
            (id, token)
        }

        fn sync(
            &mut self,
            group: &str,
            member: &str,
            generation: i32,
            plan: &[(&str, &[i32])],
        ) -> u32 {
            let assignments = plan
                .iter()
                .map(|(m, ps)| ((*m).to_owned(), Bytes::from(assignment(&[("t", ps)]))))
                .collect();
            self.sync_assignments(group, member, generation, assignments)
        }

        /// [`Harness::sync`] with the assignments' bytes as given.
        fn sync_assignments(
            &mut self,
            group: &str,
            member: &str,
            generation: i32,
            assignments: Vec<(String, Bytes)>,
        ) -> u32 {
            let token = self.token();
            let request = SyncRequest {
                group_id: group.into(),
                generation,
                member_id: member.into(),
                group_instance_id: None,
                protocol_type: Some("consumer".into()),
                protocol_name: Some("range".into()),
                assignments,
            };
            let actions = self.core.sync(self.now, token, request);
            self.apply(actions);
            self.flush();
            token
        }

        fn synced(&mut self, token: u32) -> SyncResponse {
            match self.take(token) {
                Some(GroupResponse::Sync(r)) => r,
                other => panic!("no sync answer: {other:?}"),
            }
        }

        fn heartbeat(
            &mut self,
            group: &str,
            member: &str,
            generation: i32,
        ) -> Result<(), GroupError> {
            let request = HeartbeatRequest {
                group_id: group.into(),
                generation,
                member_id: member.into(),
                group_instance_id: None,
            };
            self.core.heartbeat(self.now, &request)
        }

        fn commit(
            &mut self,
            group: &str,
            member: &str,
            generation: i32,
            tp: (&str, i32),
            offset: i64,
        ) -> Option<GroupError> {
            let token = self.token();
            let request = CommitRequest {
                group_id: group.into(),
                generation,
                member_id: member.into(),
                group_instance_id: None,
                offsets: vec![CommitOffset {
                    tp: TopicPartition::new(tp.0, tp.1),
                    offset: Offset(offset),
                    leader_epoch: -1,
                    metadata: String::new(),
                }],
            };
            let actions = self.core.commit(self.now, token, request);
            self.apply(actions);
            self.flush();
            match self.take(token) {
                Some(GroupResponse::Commit(r)) => r.partitions[0].1.clone(),
                other => panic!("no commit answer: {other:?}"),
            }
        }

        fn committed(&self, group: &str, tp: (&str, i32)) -> i64 {
            let response = self.core.fetch_offsets(&FetchOffsetsRequest {
                group_id: group.into(),
                partitions: Some(vec![TopicPartition::new(tp.0, tp.1)]),
            });
            response.partitions[0].offset.0
        }

        /// Two dynamic members in a stable group "g": returns (leader, follower, generation).
        fn stable_pair(&mut self) -> (String, String, i32) {
            let (a, ta) = self.join_new("g");
            let first = self.joined(ta);
            assert_eq!(first.generation, 1);
            // b joins: the group rebalances; a learns by heartbeat and rejoins.
            let (b, tb) = self.join_new("g");
            assert_eq!(
                self.heartbeat("g", &a, 1),
                Err(GroupError::RebalanceInProgress)
            );
            let ta = self.join("g", &a, None, &["t"]);
            let ja = self.joined(ta);
            let jb = self.joined(tb);
            assert_eq!(ja.generation, 2);
            assert_eq!(ja.leader, a);
            assert_eq!(ja.members.len(), 2, "the leader sees every member");
            assert!(jb.members.is_empty(), "followers see none");
            let sb = self.sync("g", &b, 2, &[]);
            assert!(
                self.take(sb).is_none(),
                "a follower's sync waits for the leader"
            );
            let sa = self.sync("g", &a, 2, &[(&a, &[0, 1]), (&b, &[2, 3])]);
            let asg_a = self.synced(sa);
            let asg_b = self.synced(sb);
            assert_eq!(asg_a.error, None);
            assert_eq!(asg_b.assignment, Bytes::from(assignment(&[("t", &[2, 3])])));
            (a, b, 2)
        }
    }

    impl Harness {
        /// A native heartbeat for topic "t" (6 partitions); the answer after the append.
        fn beat(
            &mut self,
            group: &str,
            member: &str,
            epoch: i32,
            owned: &[i32],
        ) -> Result<ConsumerAssignment, GroupError> {
            let token = self.token();
            let request = ConsumerHeartbeat {
                group_id: group.into(),
                member_id: member.into(),
                member_epoch: epoch,
                client_id: "native".into(),
                client_host: String::new(),
                session_timeout: SESSION,
                topics: vec!["t".into()],
                owned: owned.iter().map(|p| TopicPartition::new("t", *p)).collect(),
                partition_counts: vec![("t".into(), 6)],
            };
            let actions = self.core.consumer_heartbeat(self.now, token, request);
            self.apply(actions);
            self.flush();
            match self.take(token) {
                Some(GroupResponse::ConsumerHeartbeat(r)) => r,
                other => panic!("no heartbeat answer: {other:?}"),
            }
        }
    }

    fn native_parts(a: &ConsumerAssignment) -> Vec<i32> {
        a.assignment.iter().map(|tp| tp.partition.0).collect()
    }

    // Goal: a native group through the coordinator: two members split six partitions with the
    // hand-over waiting for the revocation, every answer comes after its snapshot is in the
    // log, and bad commits get their errors (unknown member, stale and fenced epochs, a
    // partition the member does not own). Method: heartbeats and commits on the harness.
    #[test]
    fn native_group_assigns_and_checks_commits() {
        let mut h = Harness::new();
        let a = h.beat("n", "", 0, &[]).expect("join a");
        assert_eq!(native_parts(&a), vec![0, 1, 2, 3, 4, 5]);
        assert!(
            !h.log.is_empty(),
            "the snapshot is stored before the answer"
        );
        let b = h.beat("n", "", 0, &[]).expect("join b");
        assert!(native_parts(&b).is_empty());
        let a2 = h
            .beat("n", &a.member_id, a.member_epoch, &[0, 1, 2, 3, 4, 5])
            .expect("hb");
        assert_eq!(native_parts(&a2), vec![0, 1, 2]);
        // While revoking, a may still commit what it is giving up.
        assert_eq!(
            h.commit("n", &a.member_id, a2.member_epoch, ("t", 4), 10),
            None
        );
        let a3 = h
            .beat("n", &a.member_id, a2.member_epoch, &[0, 1, 2])
            .expect("hb");
        let b2 = h.beat("n", &b.member_id, b.member_epoch, &[]).expect("hb");
        assert_eq!(native_parts(&b2), vec![3, 4, 5]);
        assert_eq!(h.core.describe("n").state, GroupState::Stable);
        assert_eq!(h.core.describe("n").group_type, GroupType::Consumer);
        // Now partition 4 is b's.
        assert_eq!(
            h.commit("n", &a.member_id, a3.member_epoch, ("t", 4), 11),
            Some(GroupError::PartitionNotAssigned)
        );
        assert_eq!(
            h.commit("n", &b.member_id, b2.member_epoch, ("t", 4), 11),
            None
        );
        assert_eq!(h.committed("n", ("t", 4)), 11);
        assert_eq!(
            h.commit("n", "nobody", 1, ("t", 0), 1),
            Some(GroupError::UnknownMemberId)
        );
        assert_eq!(
            h.commit("n", &a.member_id, a3.member_epoch - 1, ("t", 0), 1),
            Some(GroupError::StaleMemberEpoch)
        );
        assert_eq!(
            h.commit("n", &a.member_id, a3.member_epoch + 1, ("t", 0), 1),
            Some(GroupError::FencedMemberEpoch)
        );
        // An admin commit (reset) is refused while members are active.
        assert_eq!(
            h.commit("n", "", -1, ("t", 0), 0),
            Some(GroupError::UnknownMemberId)
        );
        assert_eq!(
            h.beat("n", &a.member_id, 99, &[0, 1, 2]),
            Err(GroupError::FencedMemberEpoch)
        );
        // A classic member cannot join a native group with members, nor delete it.
        let t = h.join("n", "", None, &["t"]);
        assert_eq!(
            h.joined(t).error,
            Some(GroupError::InconsistentGroupProtocol)
        );
    }

    // Goal: a native group survives a coordinator restart: replaying the log restores members,
    // epochs and ownership, members keep their epochs and partitions, and a member that never
    // comes back expires so the others take its partitions. Method: replay the harness's log.
    #[test]
    fn native_group_replays() {
        let mut h = Harness::new();
        let a = h.beat("n", "", 0, &[]).expect("join a");
        let b = h.beat("n", "", 0, &[]).expect("join b");
        let a = h
            .beat("n", &a.member_id, a.member_epoch, &[0, 1, 2, 3, 4, 5])
            .expect("hb");
        let a = h
            .beat("n", &a.member_id, a.member_epoch, &[0, 1, 2])
            .expect("hb");
        let b = h.beat("n", &b.member_id, b.member_epoch, &[]).expect("hb");
        assert_eq!(
            h.commit("n", &b.member_id, b.member_epoch, ("t", 5), 3),
            None
        );
        let mut fresh = Harness::new();
        for record in h.log.clone() {
            fresh.core.replay(fresh.now, record);
        }
        fresh.core.finish_load(fresh.now);
        assert_eq!(fresh.committed("n", ("t", 5)), 3);
        let a2 = fresh
            .beat("n", &a.member_id, a.member_epoch, &[0, 1, 2])
            .expect("a keeps its membership");
        assert_eq!(native_parts(&a2), vec![0, 1, 2]);
        // b never heartbeats again: after its session a gets everything.
        fresh.advance(SESSION / 2);
        let a2 = fresh
            .beat("n", &a.member_id, a2.member_epoch, &[0, 1, 2])
            .expect("hb");
        fresh.advance(SESSION / 2);
        let a3 = fresh
            .beat("n", &a.member_id, a2.member_epoch, &[0, 1, 2])
            .expect("hb");
        assert_eq!(native_parts(&a3), vec![0, 1, 2, 3, 4, 5]);
        // Leaving empties the group; then it can be deleted like any other.
        let left = fresh.beat("n", &a.member_id, -1, &[]).expect("leave");
        assert_eq!(left.member_epoch, -1);
        let token = fresh.token();
        let actions = fresh.core.delete(token, "n");
        fresh.apply(actions);
        fresh.flush();
        assert_eq!(fresh.take(token), Some(GroupResponse::Delete(Ok(()))));
    }

    // Goal: the classic join/sync dance: MEMBER_ID_REQUIRED, a rebalance when a second member
    // joins, the leader's assignment delivered to everyone only after it is stored.
    #[test]
    fn two_members_join_and_sync() {
        let mut h = Harness::new();
        let (a, b, generation) = h.stable_pair();
        assert_eq!(h.heartbeat("g", &a, generation), Ok(()));
        assert_eq!(h.heartbeat("g", &b, generation), Ok(()));
        let described = h.core.describe("g");
        assert_eq!(described.state, GroupState::Stable);
        assert_eq!(described.protocol, "range");
        // The group metadata with both assignments is in the log.
        let stored = h.log.iter().any(|r| {
            matches!(r, OffsetsRecord::Group { value: Some(v), .. }
                if v.generation == 2 && v.members.len() == 2)
        });
        assert!(stored, "generation 2 stored: {:?}", h.log);
    }

    // Goal: heartbeats, syncs and commits with a bad member or generation get Kafka's codes.
    #[test]
    fn bad_member_or_generation_codes() {
        let mut h = Harness::new();
        let (a, b, generation) = h.stable_pair();
        assert_eq!(
            h.heartbeat("g", "nobody", generation),
            Err(GroupError::UnknownMemberId)
        );
        assert_eq!(
            h.heartbeat("g", &a, generation + 1),
            Err(GroupError::IllegalGeneration)
        );
        assert_eq!(
            h.heartbeat("nogroup", &a, 1),
            Err(GroupError::UnknownMemberId)
        );
        let s = h.sync("g", &a, generation - 1, &[]);
        assert_eq!(h.synced(s).error, Some(GroupError::IllegalGeneration));
        assert_eq!(
            h.commit("g", &a, generation + 5, ("t", 0), 1),
            Some(GroupError::IllegalGeneration)
        );
        assert_eq!(
            h.commit("g", "x", generation, ("t", 0), 1),
            Some(GroupError::UnknownMemberId)
        );
        // b owns partitions 2 and 3: a committing 2 is refused, its own 0 is accepted.
        assert_eq!(
            h.commit("g", &a, generation, ("t", 2), 5),
            Some(GroupError::IllegalGeneration)
        );
        assert_eq!(h.commit("g", &a, generation, ("t", 0), 5), None);
        assert_eq!(h.commit("g", &b, generation, ("t", 2), 6), None);
        assert_eq!(h.committed("g", ("t", 0)), 5);
        assert_eq!(h.committed("g", ("t", 2)), 6);
        // A simple (generation -1) commit is refused while the group has members.
        assert_eq!(
            h.commit("g", "", -1, ("t", 0), 9),
            Some(GroupError::UnknownMemberId)
        );
        // Deleting a group with members is refused.
        let token = h.token();
        let actions = h.core.delete(token, "g");
        h.apply(actions);
        assert_eq!(
            h.take(token),
            Some(GroupResponse::Delete(Err(GroupError::NonEmptyGroup)))
        );
    }

    // Goal: a member that stops heartbeating is removed after its session timeout and the
    // survivors rebalance; while they do, commits need the new generation.
    #[test]
    fn session_expiry_rebalances() {
        let mut h = Harness::new();
        let (a, b, generation) = h.stable_pair();
        // Only b heartbeats.
        for _ in 0..12 {
            h.advance(Duration::from_secs(1));
            let beat = h.heartbeat("g", &b, generation);
            if beat == Err(GroupError::RebalanceInProgress) {
                break;
            }
            assert_eq!(beat, Ok(()));
        }
        assert_eq!(h.core.describe("g").state, GroupState::PreparingRebalance);
        assert_eq!(
            h.heartbeat("g", &a, generation),
            Err(GroupError::UnknownMemberId)
        );
        let tb = h.join("g", &b, None, &["t"]);
        let jb = h.joined(tb);
        assert_eq!(jb.generation, generation + 1);
        assert_eq!(jb.leader, b, "the survivor leads");
        assert_eq!(jb.members.len(), 1);
        assert_eq!(
            h.commit("g", &b, generation + 1, ("t", 0), 3),
            Some(GroupError::RebalanceInProgress),
            "commits wait for the assignment"
        );
        let s = h.sync("g", &b, generation + 1, &[(&b, &[0, 1, 2, 3])]);
        assert_eq!(h.synced(s).error, None);
        assert_eq!(h.commit("g", &b, generation + 1, ("t", 0), 3), None);
        assert_eq!(
            h.commit("g", &b, generation, ("t", 0), 4),
            Some(GroupError::IllegalGeneration)
        );
    }

    // Goal: leaving removes the member at once and rebalances; the last to leave empties the
    // group, which can then be deleted with tombstones for its offsets.
    #[test]
    fn leave_then_delete() {
        let mut h = Harness::new();
        let (a, b, generation) = h.stable_pair();
        assert_eq!(h.commit("g", &a, generation, ("t", 0), 10), None);
        let (response, actions) = h.core.leave(
            h.now,
            LeaveRequest {
                group_id: "g".into(),
                members: vec![
                    LeavingMember {
                        member_id: a.clone(),
                        group_instance_id: None,
                    },
                    LeavingMember {
                        member_id: "ghost".into(),
                        group_instance_id: None,
                    },
                ],
            },
        );
        h.apply(actions);
        assert_eq!(response.members[0].1, None);
        assert_eq!(response.members[1].1, Some(GroupError::UnknownMemberId));
        let (response, actions) = h.core.leave(
            h.now,
            LeaveRequest {
                group_id: "g".into(),
                members: vec![LeavingMember {
                    member_id: b,
                    group_instance_id: None,
                }],
            },
        );
        h.apply(actions);
        h.flush();
        assert_eq!(response.members[0].1, None);
        assert_eq!(h.core.describe("g").state, GroupState::Empty);
        let token = h.token();
        let actions = h.core.delete(token, "g");
        h.apply(actions);
        h.flush();
        assert_eq!(h.take(token), Some(GroupResponse::Delete(Ok(()))));
        assert_eq!(
            h.core.describe("g").error,
            Some(GroupError::GroupIdNotFound)
        );
        assert!(
            h.log
                .iter()
                .any(|r| matches!(r, OffsetsRecord::Offset { value: None, .. }))
        );
        assert!(matches!(
            h.log.last(),
            Some(OffsetsRecord::Group { value: None, .. })
        ));
    }

    // Goal: a static member that restarts (rejoins with its instance id, no member id) gets a
    // new member id and its old assignment without a rebalance; the old id is fenced.
    #[test]
    fn static_member_rejoin_keeps_assignment() {
        let mut h = Harness::new();
        let t1 = h.join("s", "", Some("i-1"), &["t"]);
        let j1 = h.joined(t1);
        assert_eq!(j1.error, None, "static members skip MEMBER_ID_REQUIRED");
        let leader = j1.member_id.clone();
        let t2 = h.join("s", "", Some("i-2"), &["t"]);
        assert!(h.take(t2).is_none(), "waits for the leader to rejoin");
        let t1 = h.join("s", &leader, Some("i-1"), &["t"]);
        let j1 = h.joined(t1);
        let j2 = h.joined(t2);
        let follower = j2.member_id.clone();
        let s2 = h.sync("s", &follower, j2.generation, &[]);
        let s1 = h.sync(
            "s",
            &leader,
            j1.generation,
            &[(&leader, &[0]), (&follower, &[1])],
        );
        h.synced(s1);
        let before = h.synced(s2).assignment;
        // The follower's process restarts.
        let t = h.join("s", "", Some("i-2"), &["t"]);
        let rejoined = h.joined(t);
        assert_eq!(rejoined.error, None);
        assert_eq!(rejoined.generation, j2.generation, "no rebalance");
        assert_ne!(rejoined.member_id, follower);
        assert_eq!(h.core.describe("s").state, GroupState::Stable);
        let s = h.sync("s", &rejoined.member_id, rejoined.generation, &[]);
        assert_eq!(h.synced(s).assignment, before);
        let fenced = h.core.heartbeat(
            h.now,
            &HeartbeatRequest {
                group_id: "s".into(),
                generation: j2.generation,
                member_id: follower,
                group_instance_id: Some("i-2".into()),
            },
        );
        assert_eq!(fenced, Err(GroupError::FencedInstanceId));
    }

    // Goal: replaying the log into a fresh core restores offsets, generation, members and
    // assignments, so members keep heartbeating across a broker restart.
    #[test]
    fn replay_restores_state() {
        let mut h = Harness::new();
        let (a, b, generation) = h.stable_pair();
        assert_eq!(h.commit("g", &a, generation, ("t", 1), 42), None);
        assert_eq!(h.commit("g", &b, generation, ("t", 3), 7), None);
        assert_eq!(h.commit("simple", "", -1, ("t", 0), 99), None);
        let mut fresh = Harness::new();
        for record in h.log.clone() {
            fresh.core.replay(fresh.now, record);
        }
        fresh.core.finish_load(fresh.now);
        assert_eq!(fresh.committed("g", ("t", 1)), 42);
        assert_eq!(fresh.committed("g", ("t", 3)), 7);
        assert_eq!(fresh.committed("simple", ("t", 0)), 99);
        assert_eq!(fresh.heartbeat("g", &a, generation), Ok(()));
        assert_eq!(fresh.heartbeat("g", &b, generation), Ok(()));
        assert_eq!(fresh.core.describe("g").state, GroupState::Stable);
        // Ownership survives too.
        assert_eq!(
            fresh.commit("g", &a, generation, ("t", 3), 8),
            Some(GroupError::IllegalGeneration)
        );
    }

    // Goal: offsets of an empty group expire after the retention period with tombstones, and
    // the group disappears; a group with members keeps its offsets.
    #[test]
    fn offsets_retention() {
        let config = GroupConfig {
            offsets_retention: Duration::from_secs(60),
            offsets_retention_check_interval: Duration::from_secs(1),
            ..config()
        };
        let mut h = Harness::with(config);
        let (a, b, generation) = h.stable_pair();
        assert_eq!(h.commit("g", &a, generation, ("t", 0), 5), None);
        assert_eq!(h.commit("simple", "", -1, ("t", 0), 1), None);
        for second in 0..75 {
            h.advance(Duration::from_secs(1));
            assert_eq!(h.heartbeat("g", &a, generation), Ok(()));
            assert_eq!(h.heartbeat("g", &b, generation), Ok(()));
            if second == 30 {
                assert_eq!(h.committed("simple", ("t", 0)), 1, "not yet expired");
            }
        }
        assert_eq!(h.committed("simple", ("t", 0)), -1, "expired");
        assert!(h.core.list().iter().all(|g| g.group_id != "simple"));
        assert_eq!(
            h.committed("g", ("t", 0)),
            5,
            "a live group keeps its offsets"
        );
        assert!(h.log.iter().any(|r| matches!(r,
            OffsetsRecord::Offset { group, value: None, .. } if group == "simple")));
    }

    // Goal: an expiry never removes a commit that is acknowledged while the expiry's own
    // append is in flight. Method: a simple group's offset for a partition passes retention;
    // a new commit of that partition is appended but not yet durable when the retention check
    // runs; then both appends complete in order.
    #[test]
    fn expiry_spares_a_commit_in_flight() {
        let config = GroupConfig {
            offsets_retention: Duration::from_secs(60),
            offsets_retention_check_interval: Duration::from_secs(1),
            ..config()
        };
        let mut h = Harness::with(config);
        assert_eq!(h.commit("simple", "", -1, ("t", 1), 1), None);
        // Past retention, with no check run yet (`advance` would run one).
        h.now = after(h.now, Duration::from_secs(61));
        let token = h.token();
        let request = CommitRequest {
            group_id: "simple".into(),
            generation: -1,
            member_id: String::new(),
            group_instance_id: None,
            offsets: vec![CommitOffset {
                tp: TopicPartition::new("t", 1),
                offset: Offset(5),
                leader_epoch: -1,
                metadata: String::new(),
            }],
        };
        let actions = h.core.commit(h.now, token, request);
        h.apply(actions);
        let actions = h.core.tick(h.now);
        h.apply(actions);
        h.flush();
        match h.take(token) {
            Some(GroupResponse::Commit(r)) => assert_eq!(r.partitions[0].1, None),
            other => panic!("no commit answer: {other:?}"),
        }
        assert_eq!(
            h.committed("simple", ("t", 1)),
            5,
            "the acknowledged commit stays"
        );
        // Later checks keep it: it is new.
        for _ in 0..3 {
            h.advance(Duration::from_secs(1));
            let actions = h.core.tick(h.now);
            h.apply(actions);
            h.flush();
        }
        assert_eq!(h.committed("simple", ("t", 1)), 5);
    }

    // Goal: the initial rebalance delay gathers members that join close together into one
    // generation instead of one rebalance per member.
    #[test]
    fn initial_delay_gathers_members() {
        let config = GroupConfig {
            initial_rebalance_delay: Duration::from_secs(3),
            ..config()
        };
        let mut h = Harness::with(config);
        let (_, t1) = h.join_new("d");
        h.advance(Duration::from_secs(1));
        let (_, t2) = h.join_new("d");
        assert!(
            h.take(t1).is_none() && h.take(t2).is_none(),
            "still delayed"
        );
        for _ in 0..8 {
            h.advance(Duration::from_secs(1));
        }
        let (j1, j2) = (h.joined(t1), h.joined(t2));
        assert_eq!(j1.generation, 1);
        assert_eq!(j2.generation, 1);
    }

    // Goal: out-of-range session timeouts and mismatched protocols are refused.
    #[test]
    fn join_validation() {
        let mut h = Harness::new();
        let token = h.token();
        let mut request = JoinRequest {
            group_id: "v".into(),
            member_id: String::new(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout: Duration::from_millis(10),
            rebalance_timeout: Duration::from_secs(1),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
            require_known_member_id: false,
        };
        let actions = h.core.join(h.now, token, request.clone());
        h.apply(actions);
        assert!(matches!(
            h.joined(token).error,
            Some(GroupError::InvalidSessionTimeout { .. })
        ));
        request.session_timeout = SESSION;
        let token = h.token();
        let actions = h.core.join(h.now, token, request.clone());
        h.apply(actions);
        assert_eq!(h.joined(token).error, None);
        request.protocols = vec![("roundrobin".into(), Bytes::new())];
        let token = h.token();
        let actions = h.core.join(h.now, token, request);
        h.apply(actions);
        assert_eq!(
            h.joined(token).error,
            Some(GroupError::InconsistentGroupProtocol)
        );
        assert!(h.core.list().iter().all(|g| g.group_id != "nobody-home"));
    }

    /// A join of a new member to `group` with the given strings; returns the answer.
    fn join_with(
        h: &mut Harness,
        group: &str,
        change: impl FnOnce(&mut JoinRequest),
    ) -> JoinResponse {
        let token = h.token();
        let mut request = JoinRequest {
            group_id: group.into(),
            member_id: String::new(),
            group_instance_id: None,
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: SESSION,
            rebalance_timeout: Duration::from_secs(30),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from(subscription(&["t"])))],
            require_known_member_id: true,
        };
        change(&mut request);
        let actions = h.core.join(h.now, token, request);
        h.apply(actions);
        h.flush();
        h.joined(token)
    }

    // Goal: strings longer than an offsets record holds (flexible Kafka versions and the
    // native protocol allow them) are refused when the request arrives: INVALID_GROUP_ID for a
    // group id, StringTooLong for the rest, and no group is created. Method: each field of a
    // join, sync, commit and native heartbeat one byte over the limit.
    #[test]
    fn over_long_strings_are_refused() {
        let mut h = Harness::new();
        let long = "x".repeat(GROUP_STRING_BYTES_MAX + 1);
        let joined = join_with(&mut h, &long, |_| {});
        assert_eq!(joined.error, Some(GroupError::InvalidGroupId));
        let too_long = |field: &'static str| GroupError::StringTooLong {
            field,
            bytes: GROUP_STRING_BYTES_MAX + 1,
            max: GROUP_STRING_BYTES_MAX,
        };
        let joined = join_with(&mut h, "j", |r| r.group_instance_id = Some(long.clone()));
        assert_eq!(joined.error, Some(too_long("group instance id")));
        let joined = join_with(&mut h, "j", |r| r.protocol_type = long.clone());
        assert_eq!(joined.error, Some(too_long("protocol type")));
        let joined = join_with(&mut h, "j", |r| {
            r.protocols.push((long.clone(), Bytes::new()));
        });
        assert_eq!(joined.error, Some(too_long("protocol name")));
        let joined = join_with(&mut h, "j", |r| r.member_id = long.clone());
        assert_eq!(joined.error, Some(too_long("member id")));
        let joined = join_with(&mut h, "j", |r| r.client_id = long.clone());
        assert_eq!(joined.error, Some(too_long("client id")));
        assert!(h.core.list().is_empty(), "no group was created");
        // A simple commit with a long group id would create the group and store its offset.
        assert_eq!(
            h.commit(&long, "", -1, ("t", 0), 1),
            Some(GroupError::InvalidGroupId)
        );
        assert_eq!(
            h.commit("c", &long, -1, ("t", 0), 1),
            Some(too_long("member id"))
        );
        assert!(h.core.list().is_empty(), "no group was created");
        // A stable group: a sync naming a long protocol is refused before anything else.
        let (a, _, generation) = h.stable_pair();
        let token = h.token();
        let request = SyncRequest {
            group_id: "g".into(),
            generation,
            member_id: a.clone(),
            group_instance_id: None,
            protocol_type: Some("consumer".into()),
            protocol_name: Some(long.clone()),
            assignments: Vec::new(),
        };
        let actions = h.core.sync(h.now, token, request);
        h.apply(actions);
        assert_eq!(h.synced(token).error, Some(too_long("protocol name")));
        // Native heartbeats: the client id and a subscribed topic are stored in the snapshot.
        let mut beat = ConsumerHeartbeat {
            group_id: "n".into(),
            member_id: String::new(),
            member_epoch: MEMBER_EPOCH_JOIN,
            client_id: long.clone(),
            client_host: String::new(),
            session_timeout: SESSION,
            topics: vec!["t".into()],
            owned: Vec::new(),
            partition_counts: vec![("t".into(), 1)],
        };
        let token = h.token();
        let actions = h.core.consumer_heartbeat(h.now, token, beat.clone());
        h.apply(actions);
        assert_eq!(
            h.take(token),
            Some(GroupResponse::ConsumerHeartbeat(Err(too_long("client id"))))
        );
        beat.client_id = "native".into();
        beat.topics = vec!["t".repeat(TOPIC_NAME_BYTES_MAX + 1)];
        let token = h.token();
        let actions = h.core.consumer_heartbeat(h.now, token, beat);
        h.apply(actions);
        assert_eq!(
            h.take(token),
            Some(GroupResponse::ConsumerHeartbeat(Err(
                GroupError::StringTooLong {
                    field: "subscribed topic",
                    bytes: TOPIC_NAME_BYTES_MAX + 1,
                    max: TOPIC_NAME_BYTES_MAX,
                }
            )))
        );
        assert!(h.core.list().iter().all(|g| g.group_id == "g"));
    }

    // Goal: a member id built from a client id or instance id of the longest allowed length
    // still fits a record: the prefix is cut (on a character boundary), so the join, the sync
    // and its stored group metadata succeed. Method: a client id of the limit's length made of
    // 3-byte characters, and a static member whose instance id has the limit's length.
    #[test]
    fn long_client_id_makes_a_member_id_that_fits() {
        let mut h = Harness::new();
        let client_id = "\u{20ac}".repeat(GROUP_STRING_BYTES_MAX / 3);
        let first = join_with(&mut h, "long", |r| r.client_id = client_id.clone());
        assert_eq!(first.error, Some(GroupError::MemberIdRequired));
        let id = first.member_id;
        assert!(id.len() <= GROUP_STRING_BYTES_MAX, "{} bytes", id.len());
        assert!(
            id.len() > GROUP_STRING_BYTES_MAX - 3,
            "cut no more than needed"
        );
        let prefix = id
            .strip_suffix(&id[id.len() - MEMBER_ID_SUFFIX_BYTES..])
            .expect("suffix");
        assert!(client_id.starts_with(prefix));
        let joined = join_with(&mut h, "long", |r| {
            r.client_id = client_id.clone();
            r.member_id = id.clone();
        });
        assert_eq!(joined.error, None);
        let synced = h.sync("long", &id, joined.generation, &[(&id, &[0])]);
        assert_eq!(
            h.synced(synced).error,
            None,
            "the group metadata was stored"
        );
        let instance = "i".repeat(GROUP_STRING_BYTES_MAX);
        let joined = join_with(&mut h, "static", |r| {
            r.group_instance_id = Some(instance.clone());
            r.require_known_member_id = false;
        });
        assert_eq!(joined.error, None);
        assert!(joined.member_id.len() <= GROUP_STRING_BYTES_MAX);
        let synced = h.sync("static", &joined.member_id, joined.generation, &[]);
        assert_eq!(
            h.synced(synced).error,
            None,
            "the group metadata was stored"
        );
        assert_eq!(truncate_str("a\u{20ac}", 3), "a");
        assert_eq!(truncate_str("a\u{20ac}", 4), "a\u{20ac}");
    }

    /// A single dynamic member of `group` syncs `assignment` for itself; returns its id.
    fn sole_member_syncs(h: &mut Harness, group: &str, assignment: Bytes) -> String {
        let (id, token) = h.join_new(group);
        let joined = h.joined(token);
        assert_eq!(joined.error, None);
        let plan = vec![(id.clone(), assignment.clone())];
        let token = h.sync_assignments(group, &id, joined.generation, plan);
        let synced = h.synced(token);
        assert_eq!(synced.error, None, "a sync never fails for its assignment");
        assert_eq!(synced.assignment, assignment);
        id
    }

    // Goal: a member's assignment costs memory in proportion to its bytes: one allocation per
    // topic name shared by all its partitions and each partition once, in DescribeGroups and
    // after a replay; an assignment too large to track neither fails the sync nor the replay,
    // its partitions are just not tracked. Method: a 1,000-byte topic name listed with a
    // repeated partition, then an assignment of GROUP_OWNED_PARTITIONS_MAX + 1 entries; the log
    // replayed into a fresh core.
    #[test]
    fn assignments_share_topic_names_and_are_bounded() {
        let mut h = Harness::new();
        let long = "t".repeat(1000);
        let bytes = Bytes::from(assignment(&[(&long, &[5, 5, 7]), ("u", &[1])]));
        sole_member_syncs(&mut h, "big", bytes);
        let check = |core: &GroupCoordinator<u32>| {
            let described = core.describe("big");
            let partitions = &described.members[0].partitions;
            let parts: Vec<(usize, i32)> = partitions
                .iter()
                .map(|tp| (tp.topic.len(), tp.partition.0))
                .collect();
            assert_eq!(
                parts,
                vec![(1000, 5), (1000, 7), (1, 1)],
                "each partition once"
            );
            assert!(
                Arc::ptr_eq(&partitions[0].topic, &partitions[1].topic),
                "one allocation for the topic name"
            );
        };
        check(&h.core);
        // An assignment past what a group tracks: the sync succeeds, nothing is tracked.
        let every: Vec<i32> = vec![0; GROUP_OWNED_PARTITIONS_MAX + 1];
        let huge = Bytes::from(assignment(&[("t", &every)]));
        let member = sole_member_syncs(&mut h, "huge", huge);
        let described = h.core.describe("huge");
        assert!(described.members[0].partitions.is_empty(), "not tracked");
        assert_eq!(h.commit("huge", &member, 1, ("t", 0), 3), None);
        let mut fresh = Harness::new();
        for record in h.log.clone() {
            fresh.core.replay(fresh.now, record);
        }
        fresh.core.finish_load(fresh.now);
        check(&fresh.core);
        assert_eq!(fresh.core.describe("huge").state, GroupState::Stable);
        assert_eq!(fresh.heartbeat("huge", &member, 1), Ok(()));
    }
}
