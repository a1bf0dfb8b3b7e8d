//! Native consumer groups: server-side assignment with incremental, cooperative hand-over,
//! modelled on Kafka's consumer group protocol (KIP-848).
//!
//! A member heartbeats with its member epoch, its subscription and the partitions it owns.
//! The group has an epoch, bumped whenever what the assignment depends on changes (a member
//! joins, leaves or expires, a subscription changes, a subscribed topic's partition count
//! changes). The coordinator computes the target assignment itself ([`assign`], a sticky
//! range assignor: deterministic, balanced, and keeping each member's partitions where it
//! can), then moves every member towards its target one heartbeat at a time:
//!
//! 1. A member that owns partitions outside its target is told to revoke them (its answer
//!    leaves them out); they stay its own (`revoking`) until a heartbeat no longer reports
//!    them. Its epoch does not move until then.
//! 2. A member with nothing left to revoke takes the target epoch.
//! 3. A member at the target epoch is given each target partition that no other member owns
//!    or is still revoking; the others follow on later heartbeats, once released.
//!
//! So a partition is owned by at most one member at any time (checked by
//! [`NativeGroup::check_invariants`]), and members keep consuming the partitions they keep
//! while others move: no stop-the-world rebalance.
//!
//! Everything here is plain data driven by the coordinator (`coordinator.rs`), which persists
//! a snapshot ([`NativeGroup::value`]) before any answer that depends on it is sent.
//!
//! Must not depend on: the clock, the runtime, the log, or any protocol crate.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use sluice_engine::{TimestampMs, TopicPartition};

use super::GroupError;
use super::consumer_protocol::{
    assigned_partitions, assignment_user_data, encode_assignment, encode_subscription,
    subscription_topics,
};
use super::record::{GroupValue, MemberValue};
use super::types::{ConsumerAssignment, ConsumerHeartbeat, MEMBER_EPOCH_JOIN, MEMBER_EPOCH_LEAVE};

/// The assignor name stored as a native group's protocol: it marks a group metadata record
/// as a native group's snapshot on replay, and is what Kafka tools describe.
pub const NATIVE_ASSIGNOR: &str = "sluice-range";

/// Longest heartbeat interval handed out (Kafka's `group.consumer.heartbeat.interval.ms`).
const HEARTBEAT_INTERVAL_MAX: Duration = Duration::from_secs(5);

/// Heartbeat interval while a member's partitions are moving, so hand-overs take a few
/// round trips rather than a few intervals.
const HEARTBEAT_INTERVAL_RECONCILING: Duration = Duration::from_millis(200);

/// One member of a native group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct NativeMember {
    /// Invariant: at most the group's `target_epoch`.
    pub(super) epoch: i32,
    /// The epoch before the last bump: a heartbeat carrying it lost its answer, and is
    /// accepted.
    pub(super) previous_epoch: i32,
    pub(super) client_id: String,
    pub(super) client_host: String,
    pub(super) session_timeout: Duration,
    /// Removed when this passes.
    pub(super) deadline: TimestampMs,
    pub(super) topics: BTreeSet<String>,
    /// Partitions the member may own (its last answer).
    /// Invariant: disjoint from `revoking` and from every other member's partitions.
    pub(super) assigned: BTreeSet<TopicPartition>,
    /// Partitions it was told to give up and still owns until it reports them gone.
    pub(super) revoking: BTreeSet<TopicPartition>,
}

impl NativeMember {
    /// True when the member owns `tp` (assigned, or not yet revoked).
    pub(super) fn owns(&self, tp: &TopicPartition) -> bool {
        self.assigned.contains(tp) || self.revoking.contains(tp)
    }

    /// Everything the member owns, sorted.
    pub(super) fn owned(&self) -> Vec<TopicPartition> {
        self.assigned.union(&self.revoking).cloned().collect()
    }
}

/// The state of a native group (beside its committed offsets, which the coordinator keeps for
/// both group types).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct NativeGroup {
    /// Invariant: never decreases.
    pub(super) epoch: i32,
    /// The group epoch `target` was computed at. Invariant: at most `epoch`.
    target_epoch: i32,
    /// Member id → the partitions the assignor gives it.
    target: BTreeMap<String, BTreeSet<TopicPartition>>,
    pub(super) members: BTreeMap<String, NativeMember>,
    /// Partition count of each topic some member subscribed to, as last reported.
    partition_counts: BTreeMap<String, i32>,
    /// Bumped by every change a snapshot records. Invariant: `durable <= changes`.
    pub(super) changes: u64,
    /// The `changes` value of the newest snapshot known durable.
    pub(super) durable: u64,
}

impl NativeGroup {
    /// True when the state differs from the newest durable snapshot.
    pub(super) fn dirty(&self) -> bool {
        self.changes > self.durable
    }

    fn changed(&mut self) {
        self.changes += 1;
    }

    fn bump(&mut self) {
        self.epoch = self.epoch.checked_add(1).expect("group epoch overflow");
        self.changed();
    }

    /// True when every member is at the target epoch with its whole target and nothing to
    /// revoke.
    pub(super) fn stable(&self) -> bool {
        self.target_epoch == self.epoch
            && self.members.iter().all(|(id, m)| {
                m.epoch == self.target_epoch
                    && m.revoking.is_empty()
                    && self.target.get(id).is_none_or(|t| *t == m.assigned)
            })
    }

    /// Subscribed topics of every member.
    pub(super) fn subscribed(&self) -> BTreeSet<String> {
        self.members
            .values()
            .flat_map(|m| m.topics.iter().cloned())
            .collect()
    }

    /// Handles one heartbeat. `new_id` makes a member id for a member joining without one.
    pub(super) fn heartbeat(
        &mut self,
        now: TimestampMs,
        req: &ConsumerHeartbeat,
        new_id: &mut dyn FnMut() -> String,
    ) -> Result<ConsumerAssignment, GroupError> {
        let mut bump = false;
        let member_id = match req.member_epoch {
            MEMBER_EPOCH_LEAVE => {
                if self.members.remove(&req.member_id).is_none() {
                    return Err(GroupError::UnknownMemberId);
                }
                self.target.remove(&req.member_id);
                self.bump();
                return Ok(ConsumerAssignment {
                    member_id: req.member_id.clone(),
                    member_epoch: MEMBER_EPOCH_LEAVE,
                    heartbeat_interval: Duration::ZERO,
                    assignment: Vec::new(),
                });
            }
            MEMBER_EPOCH_JOIN => {
                let id = if req.member_id.is_empty() {
                    new_id()
                } else {
                    req.member_id.clone()
                };
                // A known member joining afresh (it lost its state) gives up what it had.
                self.members.remove(&id);
                self.members.insert(
                    id.clone(),
                    NativeMember {
                        epoch: 0,
                        previous_epoch: 0,
                        client_id: req.client_id.clone(),
                        client_host: req.client_host.clone(),
                        session_timeout: req.session_timeout,
                        deadline: now,
                        topics: BTreeSet::new(),
                        assigned: BTreeSet::new(),
                        revoking: BTreeSet::new(),
                    },
                );
                bump = true;
                id
            }
            epoch => {
                let member = self
                    .members
                    .get(&req.member_id)
                    .ok_or(GroupError::UnknownMemberId)?;
                if epoch != member.epoch && epoch != member.previous_epoch {
                    return Err(GroupError::FencedMemberEpoch);
                }
                req.member_id.clone()
            }
        };
        let topics: BTreeSet<String> = req.topics.iter().cloned().collect();
        let mut changed = false;
        {
            let member = self.members.get_mut(&member_id).expect("present above");
            member.deadline = after(now, req.session_timeout);
            member.session_timeout = req.session_timeout;
            member.client_id.clone_from(&req.client_id);
            member.client_host.clone_from(&req.client_host);
            if member.topics != topics {
                member.topics = topics;
                bump = true;
            }
            // Revoked partitions the member no longer reports are released.
            let before = member.revoking.len();
            member.revoking.retain(|tp| req.owned.contains(tp));
            changed |= member.revoking.len() != before;
        }
        for (topic, count) in &req.partition_counts {
            if self.partition_counts.get(topic) != Some(count) {
                self.partition_counts.insert(topic.clone(), *count);
                bump = true;
            }
        }
        if bump {
            self.bump();
        } else if changed {
            self.changed();
        }
        if self.target_epoch < self.epoch {
            self.target = assign(&self.members, &self.partition_counts);
            self.target_epoch = self.epoch;
        }
        self.reconcile(&member_id);
        let member = &self.members[&member_id];
        let settled = member.revoking.is_empty()
            && member.epoch == self.target_epoch
            && self
                .target
                .get(&member_id)
                .is_none_or(|t| *t == member.assigned);
        let regular = (req.session_timeout / 3).min(HEARTBEAT_INTERVAL_MAX);
        Ok(ConsumerAssignment {
            member_id: member_id.clone(),
            member_epoch: member.epoch,
            heartbeat_interval: if settled {
                regular
            } else {
                regular.min(HEARTBEAT_INTERVAL_RECONCILING)
            },
            assignment: member.assigned.iter().cloned().collect(),
        })
    }

    /// Moves one member towards its target (see the module docs).
    fn reconcile(&mut self, member_id: &str) {
        let target = self.target.get(member_id).cloned().unwrap_or_default();
        let target_epoch = self.target_epoch;
        let taken: BTreeSet<TopicPartition> = self
            .members
            .iter()
            .filter(|(id, _)| id.as_str() != member_id)
            .flat_map(|(_, m)| m.assigned.iter().chain(m.revoking.iter()).cloned())
            .collect();
        let member = self
            .members
            .get_mut(member_id)
            .expect("reconciling a member");
        if !member.revoking.is_empty() {
            return;
        }
        let mut changed = false;
        if member.epoch < target_epoch {
            let revoke: BTreeSet<TopicPartition> =
                member.assigned.difference(&target).cloned().collect();
            if !revoke.is_empty() {
                member.assigned.retain(|tp| target.contains(tp));
                member.revoking = revoke;
                self.changed();
                return;
            }
            member.previous_epoch = member.epoch;
            member.epoch = target_epoch;
            changed = true;
        }
        for tp in target.difference(&member.assigned.clone()) {
            if !taken.contains(tp) {
                member.assigned.insert(tp.clone());
                changed = true;
            }
        }
        assert!(
            member.epoch <= target_epoch,
            "member {member_id} epoch {} beyond target epoch {target_epoch}",
            member.epoch
        );
        if changed {
            self.changed();
        }
    }

    /// Removes members whose session passed; returns their ids.
    pub(super) fn expire(&mut self, now: TimestampMs) -> Vec<String> {
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.members.remove(id);
            self.target.remove(id);
        }
        if !expired.is_empty() {
            self.bump();
        }
        expired
    }

    /// Restored members get one session timeout from `now` to heartbeat.
    pub(super) fn restart_sessions(&mut self, now: TimestampMs) {
        for member in self.members.values_mut() {
            member.deadline = after(now, member.session_timeout);
        }
    }

    /// The snapshot to persist, in Kafka's group metadata layout: protocol type `consumer`,
    /// protocol [`NATIVE_ASSIGNOR`], the group epoch as generation, and per member its
    /// subscription and owned partitions as a consumer subscription and assignment. The
    /// assignment's user data holds what Kafka's layout has no field for: member epoch,
    /// previous epoch, and the partitions being revoked.
    pub(super) fn value(&self, now: TimestampMs) -> GroupValue {
        GroupValue {
            protocol_type: super::consumer_protocol::CONSUMER_PROTOCOL_TYPE.to_owned(),
            generation: self.epoch,
            protocol: Some(NATIVE_ASSIGNOR.to_owned()),
            leader: None,
            state_timestamp_ms: now.0,
            members: self
                .members
                .iter()
                .map(|(id, m)| {
                    let mut user_data = BytesMut::with_capacity(64);
                    user_data.put_i32(m.epoch);
                    user_data.put_i32(m.previous_epoch);
                    let revoking: Vec<TopicPartition> = m.revoking.iter().cloned().collect();
                    user_data.put_slice(&encode_assignment(&revoking, None));
                    let assigned: Vec<TopicPartition> = m.assigned.iter().cloned().collect();
                    let topics: Vec<String> = m.topics.iter().cloned().collect();
                    MemberValue {
                        member_id: id.clone(),
                        group_instance_id: None,
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        rebalance_timeout_ms: ms_i32(m.session_timeout),
                        session_timeout_ms: ms_i32(m.session_timeout),
                        subscription: encode_subscription(&topics),
                        assignment: encode_assignment(&assigned, Some(&user_data)),
                    }
                })
                .collect(),
        }
    }

    /// The group a snapshot describes; members whose bytes do not decode are dropped (their
    /// partitions are then free, as after a session expiry).
    pub(super) fn from_value(value: &GroupValue, now: TimestampMs) -> NativeGroup {
        let mut group = NativeGroup {
            epoch: value.generation.max(0),
            ..NativeGroup::default()
        };
        for m in &value.members {
            let Some(mut member) = restore_member(m, now) else {
                tracing::warn!(member = %m.member_id, "dropping undecodable native member");
                continue;
            };
            member.epoch = member.epoch.clamp(0, group.epoch);
            member.previous_epoch = member.previous_epoch.clamp(0, member.epoch);
            group.members.insert(m.member_id.clone(), member);
        }
        // Restored members keep their epochs. The target is not stored: a bump makes the first
        // heartbeat recompute it (from what members own, so it comes out the same).
        group.target_epoch = group.members.values().map(|m| m.epoch).max().unwrap_or(0);
        group.bump();
        group.durable = group.changes;
        group
    }

    /// Checks that no partition has two owners and that epochs are ordered.
    pub(super) fn check_invariants(&self, group: &str) {
        assert!(
            self.target_epoch <= self.epoch,
            "group {group}: target epoch {} beyond group epoch {}",
            self.target_epoch,
            self.epoch
        );
        assert!(self.durable <= self.changes, "group {group}: durable ahead");
        let mut owners: BTreeMap<&TopicPartition, &str> = BTreeMap::new();
        for (id, member) in &self.members {
            assert!(
                member.epoch <= self.target_epoch,
                "group {group}: member {id} epoch beyond the target epoch"
            );
            for tp in member.assigned.iter().chain(member.revoking.iter()) {
                if let Some(other) = owners.insert(tp, id) {
                    panic!("group {group}: partition {tp} owned by {other} and {id}");
                }
            }
        }
    }
}

fn restore_member(m: &MemberValue, now: TimestampMs) -> Option<NativeMember> {
    // No cap beyond the bytes: this broker wrote the snapshot from the member's own state (its
    // partitions come from metadata), and dropping a member for its size would free partitions
    // it still consumes. Memory stays proportional to the snapshot, topic names shared.
    let entries_max = usize::MAX;
    let topics = subscription_topics(&m.subscription)?;
    let assigned = assigned_partitions(&m.assignment, entries_max)?;
    let user_data = assignment_user_data(&m.assignment)??;
    if user_data.len() < 8 {
        return None;
    }
    let epoch = i32::from_be_bytes(user_data[0..4].try_into().ok()?);
    let previous_epoch = i32::from_be_bytes(user_data[4..8].try_into().ok()?);
    let revoking = assigned_partitions(&user_data[8..], entries_max)?;
    let session_timeout = Duration::from_millis(u64::try_from(m.session_timeout_ms).ok()?);
    Some(NativeMember {
        epoch,
        previous_epoch,
        client_id: m.client_id.clone(),
        client_host: m.client_host.clone(),
        session_timeout,
        deadline: after(now, session_timeout),
        topics: topics.into_iter().collect(),
        assigned: assigned.into_iter().collect(),
        revoking: revoking.into_iter().collect(),
    })
}

fn ms_i32(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

fn after(now: TimestampMs, d: Duration) -> TimestampMs {
    TimestampMs(
        now.0
            .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    )
}

/// The sticky range assignor: for each subscribed topic, its partitions are split among the
/// members subscribed to it so that counts differ by at most one; each member first keeps
/// what it owns (up to its share), and the rest go, in partition order, to the members with
/// the fewest (ties to the smaller member id). Deterministic: the same members, ownership and
/// partition counts give the same assignment.
pub(super) fn assign(
    members: &BTreeMap<String, NativeMember>,
    partition_counts: &BTreeMap<String, i32>,
) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut target: BTreeMap<String, BTreeSet<TopicPartition>> = members
        .keys()
        .map(|id| (id.clone(), BTreeSet::new()))
        .collect();
    let topics: BTreeSet<&String> = members.values().flat_map(|m| m.topics.iter()).collect();
    for topic in topics {
        let count = usize::try_from(partition_counts.get(topic).copied().unwrap_or(0)).unwrap_or(0);
        let subscribed: Vec<&String> = members
            .iter()
            .filter(|(_, m)| m.topics.contains(topic))
            .map(|(id, _)| id)
            .collect();
        if count == 0 || subscribed.is_empty() {
            continue;
        }
        let share = count / subscribed.len();
        let mut extra = count % subscribed.len();
        let mut owner: Vec<Option<usize>> = vec![None; count];
        let mut counts = vec![0usize; subscribed.len()];
        let owned = |i: usize| -> Vec<usize> {
            members[subscribed[i]]
                .owned()
                .into_iter()
                .filter(|tp| *tp.topic == **topic)
                .filter_map(|tp| usize::try_from(tp.partition.0).ok())
                .filter(|p| *p < count)
                .collect()
        };
        // Keep owned partitions up to the share, then one more while extra slots remain.
        for round in 0..2 {
            for (i, held) in counts.iter_mut().enumerate() {
                let limit = if round == 0 { share } else { share + 1 };
                if round == 1 && (extra == 0 || *held != share) {
                    continue;
                }
                for p in owned(i) {
                    if *held >= limit {
                        break;
                    }
                    if owner[p].is_none() {
                        owner[p] = Some(i);
                        *held += 1;
                    }
                }
                if round == 1 && *held == share + 1 {
                    extra -= 1;
                }
            }
        }
        for slot in owner.iter_mut() {
            if slot.is_some() {
                continue;
            }
            let i = (0..subscribed.len())
                .filter(|i| counts[*i] < share || (counts[*i] == share && extra > 0))
                .min_by_key(|i| (counts[*i], *i))
                .expect("capacity left for every partition");
            if counts[i] == share {
                extra -= 1;
            }
            *slot = Some(i);
            counts[i] += 1;
        }
        for (p, i) in owner.into_iter().enumerate() {
            let i = i.expect("every partition assigned");
            assert!(
                counts[i] == share || counts[i] == share + 1,
                "topic {topic}: unbalanced assignment"
            );
            let partition = i32::try_from(p).expect("partition fits i32");
            target
                .get_mut(subscribed[i])
                .expect("subscribed members are members")
                .insert(TopicPartition::new(topic.as_str(), partition));
        }
    }
    target
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(member: &str, epoch: i32, owned: &[i32]) -> ConsumerHeartbeat {
        ConsumerHeartbeat {
            group_id: "g".into(),
            member_id: member.into(),
            member_epoch: epoch,
            client_id: "c".into(),
            client_host: "h".into(),
            session_timeout: Duration::from_secs(10),
            topics: vec!["t".into()],
            owned: owned.iter().map(|p| TopicPartition::new("t", *p)).collect(),
            partition_counts: vec![("t".into(), 6)],
        }
    }

    fn parts(a: &ConsumerAssignment) -> Vec<i32> {
        a.assignment.iter().map(|tp| tp.partition.0).collect()
    }

    struct Ids(u32);
    impl Ids {
        fn next(&mut self) -> String {
            self.0 += 1;
            format!("m{}", self.0)
        }
    }

    // Goal: the assignor is balanced, deterministic and sticky. Method: assign 6 partitions to
    // 1, 2 and 3 members, with and without prior ownership, and check counts and who kept what.
    #[test]
    fn assignor_balanced_and_sticky() {
        let member = |topics: &[&str], owned: &[i32]| NativeMember {
            epoch: 1,
            previous_epoch: 0,
            client_id: String::new(),
            client_host: String::new(),
            session_timeout: Duration::from_secs(10),
            deadline: TimestampMs(0),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            assigned: owned.iter().map(|p| TopicPartition::new("t", *p)).collect(),
            revoking: BTreeSet::new(),
        };
        let counts: BTreeMap<String, i32> = [("t".to_owned(), 6)].into_iter().collect();
        let show =
            |target: &BTreeMap<String, BTreeSet<TopicPartition>>| -> Vec<(String, Vec<i32>)> {
                target
                    .iter()
                    .map(|(id, ps)| (id.clone(), ps.iter().map(|tp| tp.partition.0).collect()))
                    .collect()
            };
        let mut members = BTreeMap::new();
        members.insert("a".to_owned(), member(&["t"], &[0, 1, 2, 3, 4, 5]));
        members.insert("b".to_owned(), member(&["t"], &[]));
        assert_eq!(
            show(&assign(&members, &counts)),
            vec![("a".into(), vec![0, 1, 2]), ("b".into(), vec![3, 4, 5])]
        );
        members.insert("c".to_owned(), member(&["t"], &[]));
        members.get_mut("a").expect("a").assigned =
            (0..3).map(|p| TopicPartition::new("t", p)).collect();
        members.get_mut("b").expect("b").assigned =
            (3..6).map(|p| TopicPartition::new("t", p)).collect();
        let target = assign(&members, &counts);
        assert_eq!(
            show(&target),
            vec![
                ("a".into(), vec![0, 1]),
                ("b".into(), vec![3, 4]),
                ("c".into(), vec![2, 5])
            ]
        );
        assert_eq!(assign(&members, &counts), target, "deterministic");
        // 7 partitions over 3: two members get 3, one gets 2; members not subscribed get none.
        let counts7: BTreeMap<String, i32> = [("t".to_owned(), 7)].into_iter().collect();
        members.insert("d".to_owned(), member(&["other"], &[]));
        let sizes: Vec<usize> = assign(&members, &counts7)
            .values()
            .map(BTreeSet::len)
            .collect();
        assert_eq!(sizes, vec![3, 2, 2, 0]);
    }

    // Goal: a second member gets partitions only after the first reported them revoked, and
    // the first keeps the rest throughout. Method: drive heartbeats by hand and check the
    // answers and the one-owner invariant after each.
    #[test]
    fn incremental_handover() {
        let mut g = NativeGroup::default();
        let mut ids = Ids(0);
        let now = TimestampMs(0);
        let a = g
            .heartbeat(now, &beat("", 0, &[]), &mut || ids.next())
            .expect("join");
        assert_eq!(parts(&a), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(a.member_epoch, 1);
        let b = g
            .heartbeat(now, &beat("", 0, &[]), &mut || ids.next())
            .expect("join");
        g.check_invariants("g");
        assert_eq!(parts(&b), Vec::<i32>::new(), "nothing free yet");
        assert_eq!(b.member_epoch, 2);
        assert!(!g.stable());
        // a is told to revoke 3..6 and keeps 0..3; its epoch waits.
        let a2 = g
            .heartbeat(now, &beat("m1", 1, &[0, 1, 2, 3, 4, 5]), &mut || ids.next())
            .expect("hb");
        assert_eq!(parts(&a2), vec![0, 1, 2]);
        assert_eq!(a2.member_epoch, 1);
        // b still gets nothing: a has not released.
        let b2 = g
            .heartbeat(now, &beat("m2", 2, &[]), &mut || ids.next())
            .expect("hb");
        assert_eq!(parts(&b2), Vec::<i32>::new());
        g.check_invariants("g");
        // a reports the revocation done and moves to epoch 2.
        let a3 = g
            .heartbeat(now, &beat("m1", 1, &[0, 1, 2]), &mut || ids.next())
            .expect("hb");
        assert_eq!((a3.member_epoch, parts(&a3)), (2, vec![0, 1, 2]));
        let b3 = g
            .heartbeat(now, &beat("m2", 2, &[]), &mut || ids.next())
            .expect("hb");
        assert_eq!(parts(&b3), vec![3, 4, 5]);
        assert!(g.stable());
        g.check_invariants("g");
    }

    // Goal: growing a subscribed topic rebalances the group: the epoch goes up and the new
    // partitions are assigned, while each member keeps what it owned. Method: two stable
    // members over 6 partitions, then heartbeats that report 8 partitions.
    #[test]
    fn partition_count_change_rebalances() {
        let mut g = NativeGroup::default();
        let mut ids = Ids(0);
        let now = TimestampMs(0);
        g.heartbeat(now, &beat("", 0, &[]), &mut || ids.next())
            .expect("join");
        g.heartbeat(now, &beat("", 0, &[]), &mut || ids.next())
            .expect("join");
        g.heartbeat(now, &beat("m1", 1, &[0, 1, 2, 3, 4, 5]), &mut || ids.next())
            .expect("hb");
        let a = g
            .heartbeat(now, &beat("m1", 1, &[0, 1, 2]), &mut || ids.next())
            .expect("hb");
        let b = g
            .heartbeat(now, &beat("m2", 2, &[]), &mut || ids.next())
            .expect("hb");
        assert_eq!((parts(&a), parts(&b)), (vec![0, 1, 2], vec![3, 4, 5]));
        assert!(g.stable());
        let epoch = b.member_epoch;
        let grown = |member: &str, epoch: i32, owned: &[i32]| ConsumerHeartbeat {
            partition_counts: vec![("t".into(), 8)],
            ..beat(member, epoch, owned)
        };
        let a2 = g
            .heartbeat(now, &grown("m1", a.member_epoch, &[0, 1, 2]), &mut || {
                ids.next()
            })
            .expect("hb");
        let b2 = g
            .heartbeat(now, &grown("m2", b.member_epoch, &[3, 4, 5]), &mut || {
                ids.next()
            })
            .expect("hb");
        g.check_invariants("g");
        let mut all: Vec<i32> = parts(&a2).into_iter().chain(parts(&b2)).collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..8).collect::<Vec<i32>>(),
            "every partition assigned once"
        );
        assert!(parts(&a2).starts_with(&[0, 1, 2]), "a keeps its partitions");
        assert!(parts(&b2).starts_with(&[3, 4, 5]), "b keeps its partitions");
        assert!(b2.member_epoch > epoch, "the group epoch went up");
    }

    // Goal: epochs are checked (fenced when unknown or too new; the previous epoch is accepted
    // after a lost answer), leave and expiry free partitions. Method: heartbeats by hand.
    #[test]
    fn fencing_leave_and_expiry() {
        let mut g = NativeGroup::default();
        let mut ids = Ids(0);
        let now = TimestampMs(0);
        g.heartbeat(now, &beat("", 0, &[]), &mut || ids.next())
            .expect("join");
        assert_eq!(
            g.heartbeat(now, &beat("nobody", 3, &[]), &mut || ids.next()),
            Err(GroupError::UnknownMemberId)
        );
        assert_eq!(
            g.heartbeat(now, &beat("m1", 9, &[]), &mut || ids.next()),
            Err(GroupError::FencedMemberEpoch)
        );
        g.heartbeat(now, &beat("", 0, &[]), &mut || ids.next())
            .expect("join m2");
        let all: Vec<i32> = (0..6).collect();
        let a = g
            .heartbeat(now, &beat("m1", 1, &all), &mut || ids.next())
            .expect("hb");
        let a = g
            .heartbeat(now, &beat("m1", 1, &parts(&a)), &mut || ids.next())
            .expect("hb");
        assert_eq!(a.member_epoch, 2);
        // The answer to that heartbeat was lost: epoch 1 is still accepted once.
        g.heartbeat(now, &beat("m1", 1, &parts(&a)), &mut || ids.next())
            .expect("previous epoch");
        let b = g
            .heartbeat(now, &beat("m2", 2, &[]), &mut || ids.next())
            .expect("hb");
        assert_eq!(parts(&b), vec![3, 4, 5]);
        // m2 leaves: m1 gets everything on its next heartbeat.
        let left = g
            .heartbeat(now, &beat("m2", -1, &[]), &mut || ids.next())
            .expect("leave");
        assert_eq!(left.member_epoch, -1);
        let a = g
            .heartbeat(now, &beat("m1", 2, &[0, 1, 2]), &mut || ids.next())
            .expect("hb");
        assert_eq!(parts(&a), all);
        // m1's session passes.
        assert_eq!(g.expire(TimestampMs(60_000)), vec!["m1".to_owned()]);
        assert!(g.members.is_empty());
    }

    // Goal: a snapshot restores members, epochs, owned and revoking partitions exactly, and
    // the restored group recomputes its target. Method: value → from_value round trip.
    #[test]
    fn snapshot_round_trip() {
        let mut g = NativeGroup::default();
        let mut ids = Ids(0);
        let now = TimestampMs(0);
        g.heartbeat(now, &beat("", 0, &[]), &mut || ids.next())
            .expect("join");
        g.heartbeat(now, &beat("", 0, &[]), &mut || ids.next())
            .expect("join");
        let all: Vec<i32> = (0..6).collect();
        g.heartbeat(now, &beat("m1", 1, &all), &mut || ids.next())
            .expect("revoke");
        let value = g.value(now);
        let restored = NativeGroup::from_value(&value, TimestampMs(5));
        assert_eq!(restored.members["m1"].revoking, g.members["m1"].revoking);
        assert_eq!(restored.members["m1"].assigned, g.members["m1"].assigned);
        assert_eq!(restored.members["m1"].epoch, 1);
        assert_eq!(restored.members["m2"].epoch, 2);
        assert!(!restored.dirty());
        restored.check_invariants("g");
        let mut restored = restored;
        let a = restored
            .heartbeat(now, &beat("m1", 1, &[0, 1, 2]), &mut || ids.next())
            .expect("hb after restore");
        assert_eq!(parts(&a), vec![0, 1, 2]);
        let b = restored
            .heartbeat(now, &beat("m2", 2, &[]), &mut || ids.next())
            .expect("hb");
        assert_eq!(parts(&b), vec![3, 4, 5]);
        restored.check_invariants("g");
    }
}
