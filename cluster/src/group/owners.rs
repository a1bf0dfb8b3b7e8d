//! Which member of a classic consumer group the current generation assigns each partition, read
//! from the members' assignments so the coordinator can refuse a commit for a partition that
//! another member owns ([`Owners`]).
//!
//! Assignments are the client's bytes (Kafka treats them as opaque), so the table costs memory
//! in proportion to them, with a small constant, and never more than
//! [`GROUP_OWNED_PARTITIONS_MAX`] entries: each topic's name is held once (shared with the
//! decoded assignment), each partition once as 8 bytes. A member whose assignment does not
//! decode or does not fit is left out; a partition nobody is known to own is committable, so
//! leaving a member out never refuses a commit that tracking it would accept.
//!
//! Must not depend on: the log, the shard, or any protocol crate. Plain data, `Send`.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_engine::TopicPartition;

use super::consumer_protocol::assigned_topics;
use crate::limits::GROUP_OWNED_PARTITIONS_MAX;

/// The partition owners of one classic consumer group's generation. Owned by its `Group`.
#[derive(Debug, Default)]
pub(super) struct Owners {
    /// Ids of the members tracked; the values in `topics` index it.
    members: Vec<String>,
    /// Topic → (partition, index in `members`), one entry per partition.
    /// Invariant: partitions strictly increase; every index is below `members.len()`.
    topics: HashMap<Arc<str>, Vec<(i32, u32)>>,
    /// Entries over all topics. Invariant: at most [`GROUP_OWNED_PARTITIONS_MAX`].
    entries: usize,
    /// Members whose assignment did not decode or did not fit.
    untracked: usize,
}

impl Owners {
    /// Reads `members` (id, assignment) in order; a partition assigned to two members is
    /// owned by the first.
    pub(super) fn build<'a>(members: impl Iterator<Item = (&'a str, &'a [u8])>) -> Owners {
        let mut owners = Owners::default();
        // Counted before deduplication, which is what the table holds while it is built.
        let mut entries = 0usize;
        for (member_id, assignment) in members {
            let left = GROUP_OWNED_PARTITIONS_MAX - entries;
            let Some(topics) = assigned_topics(assignment, left) else {
                owners.untracked += 1;
                continue;
            };
            let index = u32::try_from(owners.members.len()).expect("members fit in u32");
            owners.members.push(member_id.to_owned());
            for (topic, partitions) in topics {
                entries += partitions.len();
                owners
                    .topics
                    .entry(topic)
                    .or_default()
                    .extend(partitions.into_iter().map(|p| (p, index)));
            }
            assert!(
                entries <= GROUP_OWNED_PARTITIONS_MAX,
                "{entries} owned entries"
            );
        }
        for partitions in owners.topics.values_mut() {
            // Stable: among equal partitions the first member's entry comes first and stays.
            partitions.sort_by_key(|&(p, _)| p);
            partitions.dedup_by_key(|&mut (p, _)| p);
            partitions.shrink_to_fit();
        }
        owners.entries = owners.topics.values().map(Vec::len).sum();
        owners.check_invariants();
        owners
    }

    /// The member the generation assigns `tp` to, if known.
    pub(super) fn owner(&self, tp: &TopicPartition) -> Option<&str> {
        let partitions = self.topics.get(&*tp.topic)?;
        let at = partitions
            .binary_search_by_key(&tp.partition.0, |&(p, _)| p)
            .ok()?;
        let index = partitions[at].1 as usize;
        Some(&self.members[index])
    }

    /// A member's id changed (a static member rejoined): its partitions move with it.
    pub(super) fn rename(&mut self, old_id: &str, new_id: &str) {
        for member in &mut self.members {
            if member == old_id {
                new_id.clone_into(member);
            }
        }
    }

    /// Members whose assignment is not tracked.
    pub(super) fn untracked(&self) -> usize {
        self.untracked
    }

    fn check_invariants(&self) {
        assert!(self.entries <= GROUP_OWNED_PARTITIONS_MAX);
        for (topic, partitions) in &self.topics {
            assert!(
                partitions.windows(2).all(|w| w[0].0 < w[1].0),
                "topic {topic}: partitions not strictly increasing"
            );
            assert!(
                partitions
                    .iter()
                    .all(|&(_, i)| (i as usize) < self.members.len()),
                "topic {topic}: owner index out of range"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::consumer_protocol::tests::assignment;
    use super::*;

    fn owner<'a>(owners: &'a Owners, topic: &str, partition: i32) -> Option<&'a str> {
        owners.owner(&TopicPartition::new(topic, partition))
    }

    // Goal: owners are looked up per (topic, partition); a partition assigned twice goes to
    // the first member; a member is renamed with its partitions; an assignment that does not
    // decode leaves that member out without touching the others. Method: three members.
    #[test]
    fn owners_of_partitions() {
        let a = assignment(&[("t", &[0, 1]), ("u", &[0])]);
        let b = assignment(&[("t", &[2, 1])]);
        let garbage = [0, 0, 0x7f, 0xff, 0xff, 0xff];
        let members = [("a", &a[..]), ("b", &b[..]), ("c", &garbage[..])];
        let mut owners = Owners::build(members.into_iter());
        assert_eq!(owner(&owners, "t", 0), Some("a"));
        assert_eq!(
            owner(&owners, "t", 1),
            Some("a"),
            "the first member keeps it"
        );
        assert_eq!(owner(&owners, "t", 2), Some("b"));
        assert_eq!(owner(&owners, "u", 0), Some("a"));
        assert_eq!(owner(&owners, "u", 1), None);
        assert_eq!(owner(&owners, "v", 0), None);
        assert_eq!(owners.untracked(), 1);
        assert_eq!(owners.entries, 4);
        owners.rename("b", "b2");
        assert_eq!(owner(&owners, "t", 2), Some("b2"));
    }

    // Goal: the table is bounded: one name per topic however many members list it, one entry
    // per partition however often it is listed, and a member that does not fit what is left
    // of the limit is not tracked while the members before it are. Method: members assigned
    // the same long-named topic, then one member past the limit.
    #[test]
    fn owners_are_bounded() {
        let topic = "t".repeat(1000);
        let first = assignment(&[(&topic, &[0, 0, 0, 1])]);
        let second = assignment(&[(&topic, &[1, 2])]);
        let owners = Owners::build([("a", &first[..]), ("b", &second[..])].into_iter());
        assert_eq!(owners.topics.len(), 1, "one name for the topic");
        assert_eq!(owners.entries, 3, "each partition once");
        let name = owners.topics.keys().next().expect("one topic");
        assert_eq!(
            Arc::strong_count(name),
            1,
            "no copy of the name is kept elsewhere"
        );
        // A member with every partition of ten topics fills the table; the next is left out.
        let every: Vec<i32> = (0..crate::limits::TOPIC_PARTITIONS_MAX).collect();
        let names: Vec<String> = (0..10).map(|i| format!("full-{i}")).collect();
        let full: Vec<(&str, &[i32])> = names.iter().map(|n| (n.as_str(), &every[..])).collect();
        let full = assignment(&full);
        let owners = Owners::build([("full", &full[..]), ("late", &first[..])].into_iter());
        assert_eq!(owners.entries, GROUP_OWNED_PARTITIONS_MAX);
        assert_eq!(owners.untracked(), 1);
        assert_eq!(
            owner(&owners, &topic, 0),
            None,
            "the late member is not tracked"
        );
        assert_eq!(owner(&owners, "full-9", 99_999), Some("full"));
    }
}
