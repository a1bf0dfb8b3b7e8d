//! Choosing a partition for a record: Kafka's murmur2 key hash, the sticky partitioner for
//! records without keys, and a trait for custom partitioners.
//!
//! `murmur2` is bit-for-bit Kafka's (`org.apache.kafka.common.utils.Utils.murmur2`), so a key
//! lands on the same partition whether a Kafka client or the Sluice client produced it.

use std::cell::Cell;

/// Picks a partition for a record.
pub trait Partitioner {
    /// The partition (in `0..partitions`) for a record with this key; `partitions >= 1`.
    fn partition(&self, key: Option<&[u8]>, partitions: i32) -> i32;

    /// Called when a batch for `partition` was sent; sticky partitioners move on here.
    fn on_batch_sent(&self, _partition: i32, _partitions: i32) {}
}

/// Kafka's murmur2 hash.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's default: murmur2 of the key for keyed records, sticky for records without a key
/// (all keyless records go to one partition until a batch is sent, then the next).
#[derive(Debug, Default)]
pub struct DefaultPartitioner {
    sticky: Cell<Option<i32>>,
    counter: Cell<u32>,
}

impl DefaultPartitioner {
    /// A new partitioner.
    pub fn new() -> DefaultPartitioner {
        DefaultPartitioner::default()
    }
}

impl Partitioner for DefaultPartitioner {
    fn partition(&self, key: Option<&[u8]>, partitions: i32) -> i32 {
        assert!(partitions >= 1, "a topic has at least one partition");
        match key {
            Some(key) => (murmur2(key) & 0x7fff_ffff) % partitions,
            None => match self.sticky.get() {
                Some(p) if p < partitions => p,
                _ => {
                    let p = (self.counter.get() % partitions as u32) as i32;
                    self.sticky.set(Some(p));
                    p
                }
            },
        }
    }

    fn on_batch_sent(&self, partition: i32, partitions: i32) {
        if self.sticky.get() == Some(partition) && partitions > 1 {
            self.counter.set(self.counter.get().wrapping_add(1));
            self.sticky.set(None);
        }
    }
}

/// Round-robin over partitions for every record, ignoring keys.
#[derive(Debug, Default)]
pub struct RoundRobinPartitioner {
    next: Cell<u32>,
}

impl Partitioner for RoundRobinPartitioner {
    fn partition(&self, _key: Option<&[u8]>, partitions: i32) -> i32 {
        assert!(partitions >= 1, "a topic has at least one partition");
        let n = self.next.get();
        self.next.set(n.wrapping_add(1));
        (n % partitions as u32) as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: murmur2 matches Kafka's own test vectors (Kafka's UtilsTest), so keyed records land
    // on the same partitions as with Kafka clients.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input),
                *expected,
                "murmur2({:?})",
                String::from_utf8_lossy(input)
            );
        }
    }

    // Goal: keyed records are stable per key; keyless records stick to one partition until a
    // batch is sent, then move on.
    #[test]
    fn default_partitioner_behaviour() {
        let partitioner = DefaultPartitioner::new();
        let p = partitioner.partition(Some(b"user-1"), 6);
        assert_eq!(p, partitioner.partition(Some(b"user-1"), 6));
        let first = partitioner.partition(None, 6);
        assert_eq!(first, partitioner.partition(None, 6));
        partitioner.on_batch_sent(first, 6);
        let second = partitioner.partition(None, 6);
        assert_ne!(first, second);
        let round = RoundRobinPartitioner::default();
        let seen: Vec<i32> = (0..4).map(|_| round.partition(Some(b"k"), 3)).collect();
        assert_eq!(seen, vec![0, 1, 2, 0]);
    }
}
