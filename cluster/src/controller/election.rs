//! The controller's placement and leader-election rules as pure functions of a partition's
//! replica set and broker liveness, so they are tested without a cluster.
//!
//! The rules follow Kafka's KRaft controller:
//! - replicas of a new partition are R distinct live brokers, spread round-robin, the
//!   preferred leader (first replica) rotating with the partition number;
//! - fencing a broker removes it from every ISR it is not the last member of (the last member
//!   stays, as Kafka keeps it, so that it can lead again when it returns), and every partition
//!   it led gets the first live in-sync replica as leader, or none (offline, leader -1);
//!   `unclean.leader.election.enable` allows a live out-of-sync replica instead;
//! - an unfenced broker leads the offline partitions whose ISR names it;
//! - preferred-leader election moves leadership to the first replica when it is live and in
//!   sync;
//! - every leader change bumps the leader epoch.
//!
//! Must not depend on: I/O, clocks, or the network.

use sluice_engine::{BrokerId, LeaderEpoch};

use crate::metadata::PartitionMeta;

/// The leader id of a partition that has none (Kafka's -1).
pub const NO_LEADER: BrokerId = BrokerId(-1);

/// What one rule changed in one partition.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// The leader changed (and the epoch was bumped).
    pub leader_changed: bool,
    /// The ISR lost a member.
    pub isr_shrunk: bool,
}

/// `count` distinct brokers from `live` (sorted, unique) for partition `index` of a topic whose
/// spread starts at `start`: consecutive brokers from `(start + index) % live.len()`.
pub fn assign_replicas(
    live: &[BrokerId],
    start: usize,
    index: usize,
    count: usize,
) -> Vec<BrokerId> {
    assert!(count >= 1, "a partition has at least one replica");
    assert!(
        count <= live.len(),
        "replication {count} > {} live brokers",
        live.len()
    );
    assert!(
        live.windows(2).all(|w| w[0] < w[1]),
        "live brokers sorted and unique"
    );
    let first = (start + index) % live.len();
    let replicas: Vec<BrokerId> = (0..count).map(|i| live[(first + i) % live.len()]).collect();
    assert_eq!(replicas.len(), count, "one replica per slot");
    replicas
}

/// The first replica, in replica order, that is in sync, live and not `excluded`; with
/// `unclean`, else the first live replica that is not `excluded`. The bool says the choice
/// was unclean.
pub fn choose_leader(
    partition: &PartitionMeta,
    is_live: impl Fn(BrokerId) -> bool,
    excluded: BrokerId,
    unclean: bool,
) -> Option<(BrokerId, bool)> {
    let eligible = |id: &&BrokerId| **id != excluded && is_live(**id);
    if let Some(id) = partition
        .replicas
        .iter()
        .filter(|id| partition.isr.contains(id))
        .find(eligible)
    {
        return Some((*id, false));
    }
    if unclean {
        return partition
            .replicas
            .iter()
            .find(eligible)
            .map(|id| (*id, true));
    }
    None
}

fn set_leader(partition: &mut PartitionMeta, leader: BrokerId) {
    assert_ne!(
        partition.leader, leader,
        "a leader change changes the leader"
    );
    partition.leader = leader;
    partition.leader_epoch = LeaderEpoch(partition.leader_epoch.0 + 1);
}

/// Fences `id` in one partition (see the module docs).
pub fn fence(
    partition: &mut PartitionMeta,
    id: BrokerId,
    is_live: impl Fn(BrokerId) -> bool,
    unclean: bool,
) -> Change {
    let mut change = Change::default();
    if !partition.replicas.contains(&id) {
        return change;
    }
    if partition.leader == id {
        match choose_leader(partition, &is_live, id, unclean) {
            Some((leader, was_unclean)) => {
                set_leader(partition, leader);
                if was_unclean {
                    partition.isr = vec![leader];
                }
            }
            None => set_leader(partition, NO_LEADER),
        }
        change.leader_changed = true;
    }
    if partition.isr.len() > 1 && partition.isr.contains(&id) {
        partition.isr.retain(|member| *member != id);
        change.isr_shrunk = true;
    }
    assert!(!partition.isr.is_empty(), "the ISR keeps its last member");
    assert!(
        partition.leader != id,
        "a fenced broker leads nothing (partition {})",
        partition.id.0
    );
    change
}

/// Unfences `id` in one partition: it leads the partition if it has no leader and `id` is in
/// sync (or, with `unclean`, any replica).
pub fn unfence(partition: &mut PartitionMeta, id: BrokerId, unclean: bool) -> Change {
    let mut change = Change::default();
    if partition.leader != NO_LEADER || !partition.replicas.contains(&id) {
        return change;
    }
    if partition.isr.contains(&id) {
        set_leader(partition, id);
        change.leader_changed = true;
    } else if unclean {
        set_leader(partition, id);
        partition.isr = vec![id];
        change.leader_changed = true;
    }
    change
}

/// Moves leadership to the preferred replica if it is live, in sync and not leading.
pub fn elect_preferred(
    partition: &mut PartitionMeta,
    is_live: impl Fn(BrokerId) -> bool,
) -> Change {
    let preferred = *partition
        .replicas
        .first()
        .expect("a partition has replicas");
    if partition.leader == preferred || !partition.isr.contains(&preferred) || !is_live(preferred) {
        return Change::default();
    }
    set_leader(partition, preferred);
    Change {
        leader_changed: true,
        isr_shrunk: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_engine::{PartitionId, ShardId};

    fn ids(ids: &[i32]) -> Vec<BrokerId> {
        ids.iter().map(|id| BrokerId(*id)).collect()
    }

    fn partition(leader: i32, replicas: &[i32], isr: &[i32]) -> PartitionMeta {
        PartitionMeta {
            id: PartitionId(0),
            shard: ShardId(0),
            leader: BrokerId(leader),
            leader_epoch: LeaderEpoch(5),
            partition_epoch: crate::metadata::PartitionEpoch(0),
            replicas: ids(replicas),
            isr: ids(isr),
            target_replicas: None,
        }
    }

    fn live(dead: &'static [i32]) -> impl Fn(BrokerId) -> bool {
        move |id| !dead.contains(&id.0)
    }

    // Goal: replicas are distinct, rotate with the partition, and spread evenly.
    // Method: assign 6 partitions of RF 2 over 3 brokers and count leaders and replicas.
    #[test]
    fn assignment_spreads_round_robin() {
        let brokers = ids(&[1, 2, 3]);
        let all: Vec<Vec<BrokerId>> = (0..6).map(|p| assign_replicas(&brokers, 1, p, 2)).collect();
        assert_eq!(all[0], ids(&[2, 3]));
        assert_eq!(all[1], ids(&[3, 1]));
        assert_eq!(all[2], ids(&[1, 2]));
        for replicas in &all {
            assert_ne!(replicas[0], replicas[1]);
        }
        for broker in &brokers {
            let leads = all.iter().filter(|r| r[0] == *broker).count();
            let holds = all.iter().filter(|r| r.contains(broker)).count();
            assert_eq!((leads, holds), (2, 4), "broker {broker:?}");
        }
    }

    // Goal: fencing the leader elects the next live in-sync replica with a higher epoch and
    // drops the fenced broker from the ISR. Method: table of cases.
    #[test]
    fn fencing_the_leader() {
        let mut p = partition(1, &[1, 2, 3], &[1, 2, 3]);
        let change = fence(&mut p, BrokerId(1), live(&[1]), false);
        assert_eq!(
            (p.leader, p.leader_epoch, p.isr.clone()),
            (BrokerId(2), LeaderEpoch(6), ids(&[2, 3]))
        );
        assert!(change.leader_changed && change.isr_shrunk);

        // The next in-sync replica is dead too: skip it.
        let mut p = partition(1, &[1, 2, 3], &[1, 2, 3]);
        fence(&mut p, BrokerId(1), live(&[1, 2]), false);
        assert_eq!(p.leader, BrokerId(3));

        // A follower is fenced: leader unchanged, ISR shrinks, epoch unchanged.
        let mut p = partition(1, &[1, 2, 3], &[1, 2, 3]);
        let change = fence(&mut p, BrokerId(3), live(&[3]), false);
        assert_eq!(
            (p.leader, p.leader_epoch, p.isr.clone()),
            (BrokerId(1), LeaderEpoch(5), ids(&[1, 2]))
        );
        assert!(!change.leader_changed && change.isr_shrunk);

        // Not a replica: nothing changes.
        let mut p = partition(1, &[1, 2], &[1, 2]);
        assert_eq!(
            fence(&mut p, BrokerId(3), live(&[3]), false),
            Change::default()
        );
    }

    // Goal: with no live in-sync replica the partition goes offline and keeps its last ISR
    // member, unless unclean election is on. Method: fence the sole in-sync leader.
    #[test]
    fn fencing_the_last_in_sync_replica() {
        let mut p = partition(1, &[1, 2, 3], &[1]);
        fence(&mut p, BrokerId(1), live(&[1]), false);
        assert_eq!(
            (p.leader, p.leader_epoch, p.isr.clone()),
            (NO_LEADER, LeaderEpoch(6), ids(&[1]))
        );
        // It comes back: it leads again.
        let change = unfence(&mut p, BrokerId(1), false);
        assert!(change.leader_changed);
        assert_eq!((p.leader, p.leader_epoch), (BrokerId(1), LeaderEpoch(7)));

        let mut p = partition(1, &[1, 2, 3], &[1]);
        fence(&mut p, BrokerId(1), live(&[1]), true);
        assert_eq!((p.leader, p.isr.clone()), (BrokerId(2), ids(&[2])));

        // An out-of-sync replica returning does not lead an offline partition (clean).
        let mut p = partition(-1, &[1, 2], &[1]);
        assert_eq!(unfence(&mut p, BrokerId(2), false), Change::default());
        assert_eq!(p.leader, NO_LEADER);
        assert!(unfence(&mut p, BrokerId(2), true).leader_changed);
        assert_eq!((p.leader, p.isr.clone()), (BrokerId(2), ids(&[2])));
    }

    // Goal: preferred election moves leadership home only when the preferred replica is live
    // and in sync. Method: three cases.
    #[test]
    fn preferred_leader_election() {
        let mut p = partition(2, &[1, 2, 3], &[1, 2, 3]);
        assert!(elect_preferred(&mut p, live(&[])).leader_changed);
        assert_eq!((p.leader, p.leader_epoch), (BrokerId(1), LeaderEpoch(6)));

        let mut p = partition(2, &[1, 2, 3], &[2, 3]);
        assert_eq!(elect_preferred(&mut p, live(&[])), Change::default());

        let mut p = partition(2, &[1, 2, 3], &[1, 2, 3]);
        assert_eq!(elect_preferred(&mut p, live(&[1])), Change::default());
        assert_eq!(p.leader, BrokerId(2));
    }
}
