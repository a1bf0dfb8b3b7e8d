//! Partition placement: which shard of a broker owns a partition.
//!
//! A pure, stable function of (topic id, partition, shard count): a topic's partitions are
//! spread round-robin over the shards starting at a shard chosen by the topic id, so the
//! partitions of many small topics do not all land on shard 0. The result is recorded in
//! metadata when a partition is created, so it survives restarts and can later be moved; it is
//! recomputed only when the recorded shard no longer exists (the broker restarted with fewer
//! cores).

use sluice_engine::{PartitionId, ShardId};

use crate::metadata::TopicId;

/// The shard that owns `partition` of the topic with id `topic` on a broker with
/// `shard_count` shards.
pub fn shard_for(topic: TopicId, partition: PartitionId, shard_count: usize) -> ShardId {
    assert!(shard_count >= 1, "a broker has at least one shard");
    assert!(shard_count <= usize::from(u16::MAX), "shard ids fit in u16");
    assert!(partition.0 >= 0, "negative partition {}", partition.0);
    // FNV-1a over the id bytes: stable across builds and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in topic.0.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let start = hash % shard_count as u64;
    let shard = (start + partition.0 as u64) % shard_count as u64;
    ShardId(u16::try_from(shard).expect("shard < shard_count <= u16::MAX"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        // Goal: placement is deterministic, in range, and spreads a topic evenly: over any
        // `shard_count` consecutive partitions every shard appears exactly once.
        #[test]
        fn placement_is_stable_in_range_and_balanced(
            id in any::<u128>(),
            shards in 1usize..64,
            first in 0i32..1_000_000,
        ) {
            let topic = TopicId(uuid::Uuid::from_u128(id));
            let mut seen = vec![0u32; shards];
            for p in first..first + shards as i32 {
                let shard = shard_for(topic, PartitionId(p), shards);
                prop_assert!(usize::from(shard.0) < shards);
                prop_assert_eq!(shard, shard_for(topic, PartitionId(p), shards));
                seen[usize::from(shard.0)] += 1;
            }
            prop_assert!(seen.iter().all(|&n| n == 1));
        }
    }

    // Goal: the function's output is pinned, so a change to it (which would move partitions
    // between shards on upgrade) is a deliberate, visible decision.
    #[test]
    fn placement_is_pinned() {
        let topic = TopicId(uuid::Uuid::from_u128(
            0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
        ));
        let shards: Vec<u16> = (0..8)
            .map(|p| shard_for(topic, PartitionId(p), 3).0)
            .collect();
        assert_eq!(shards, vec![1, 2, 0, 1, 2, 0, 1, 2]);
    }
}
