//! Reading the embedded consumer protocol (protocol type `consumer`): the topics a member
//! subscribes to and the partitions its assignment holds.
//!
//! The classic group protocol carries these as opaque bytes chosen by the client's assignor;
//! the coordinator reads them only to refuse a commit for a partition the current generation
//! assigns to another member, and an OffsetDelete for a topic the group still consumes. Bytes
//! that do not decode, or list more than the coordinator tracks, are treated as "unknown" and
//! never cause a refusal; what is read costs memory in proportion to the bytes.
//!
//! Native groups (`consumer_group.rs`) are shown to Kafka tools in the same layouts, so the
//! encoders live here too.
//!
//! Layouts (Kafka's `ConsumerProtocolSubscription` and `ConsumerProtocolAssignment`, every
//! version, non-flexible): a subscription starts `i16 version, [string topic]`; an assignment
//! starts `i16 version, [string topic, [i32 partition]]`. Later fields are not read.
//!
//! Must not depend on: the log, the shard, or any protocol crate.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use sluice_engine::{PartitionId, TopicPartition};

use super::record::{Reader, RecordError};
use crate::limits::TOPIC_PARTITIONS_MAX;

/// The protocol type Kafka consumers use.
pub const CONSUMER_PROTOCOL_TYPE: &str = "consumer";

/// The topics a consumer's subscription names, if the bytes decode.
pub fn subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let read = || -> Result<Vec<String>, RecordError> {
        let mut r = Reader {
            buf: metadata,
            pos: 0,
        };
        let _version = r.i16()?;
        let count = r.count(2)?;
        let mut topics = Vec::with_capacity(count);
        for _ in 0..count {
            topics.push(r.string()?);
        }
        Ok(topics)
    };
    read().ok()
}

/// One topic of a decoded assignment: its name, allocated once, and its partitions, sorted
/// and each listed once.
pub type AssignedTopic = (Arc<str>, Vec<i32>);

/// The topics and partitions a consumer's assignment holds, if the bytes decode and list at
/// most `entries_max` partitions that a topic can have.
///
/// The bytes are the client's (Kafka treats them as opaque), so what is kept is bounded by
/// them and by `entries_max`, never multiplied by a name's length: each topic's name is
/// allocated once (a topic listed twice is merged), its partitions are sorted and
/// deduplicated, and numbers no topic can have (negative, or [`TOPIC_PARTITIONS_MAX`] and
/// above) are left out. Counted before deduplication, so more than `entries_max` entries of
/// one partition also give `None`. Memory: 4 bytes per entry (each took 4 bytes of input),
/// plus per topic its name once and ~100 bytes of bookkeeping (each took at least 11).
pub fn assigned_topics(assignment: &[u8], entries_max: usize) -> Option<Vec<AssignedTopic>> {
    if assignment.is_empty() {
        return Some(Vec::new());
    }
    let read = || -> Result<Option<Vec<AssignedTopic>>, RecordError> {
        let mut r = Reader {
            buf: assignment,
            pos: 0,
        };
        let _version = r.i16()?;
        let topics = r.count(6)?;
        let mut out: Vec<AssignedTopic> = Vec::new();
        // Names borrowed from the bytes, to merge a topic listed twice without a copy.
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut entries = 0usize;
        for _ in 0..topics {
            let name = r.str()?;
            let count = r.count(4)?;
            let mut partitions = Vec::new();
            for _ in 0..count {
                let partition = r.i32()?;
                if !(0..TOPIC_PARTITIONS_MAX).contains(&partition) {
                    continue;
                }
                if entries == entries_max {
                    return Ok(None);
                }
                entries += 1;
                partitions.push(partition);
            }
            if partitions.is_empty() {
                continue;
            }
            match index.get(name) {
                Some(&i) => out[i].1.append(&mut partitions),
                None => {
                    index.insert(name, out.len());
                    out.push((Arc::from(name), partitions));
                }
            }
        }
        for (_, partitions) in &mut out {
            partitions.sort_unstable();
            partitions.dedup();
        }
        assert!(out.iter().map(|(_, ps)| ps.len()).sum::<usize>() <= entries_max);
        Ok(Some(out))
    };
    read().ok().flatten()
}

/// [`assigned_topics`] as (topic, partition) pairs, in topic order; the pairs of one topic
/// share its name.
pub fn assigned_partitions(assignment: &[u8], entries_max: usize) -> Option<Vec<TopicPartition>> {
    let topics = assigned_topics(assignment, entries_max)?;
    let mut out = Vec::with_capacity(topics.iter().map(|(_, ps)| ps.len()).sum());
    for (topic, partitions) in topics {
        out.extend(partitions.into_iter().map(|partition| TopicPartition {
            topic: Arc::clone(&topic),
            partition: PartitionId(partition),
        }));
    }
    Some(out)
}

/// Encodes a subscription (version 0, no user data) naming `topics`: what a Kafka consumer
/// sends, and what describing a native group shows Kafka tools.
pub fn encode_subscription(topics: &[String]) -> Bytes {
    let mut buf = BytesMut::with_capacity(16 + topics.iter().map(String::len).sum::<usize>());
    buf.put_i16(0);
    buf.put_i32(i32::try_from(topics.len()).expect("topics fit in i32"));
    for topic in topics {
        put_string(&mut buf, topic);
    }
    buf.put_i32(-1);
    buf.freeze()
}

/// Encodes an assignment (version 0) of `partitions`, grouped by topic in the order given,
/// with optional user data.
pub fn encode_assignment(partitions: &[TopicPartition], user_data: Option<&[u8]>) -> Bytes {
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for tp in partitions {
        match topics.iter_mut().find(|(t, _)| *t == &*tp.topic) {
            Some((_, ps)) => ps.push(tp.partition.0),
            None => topics.push((&tp.topic, vec![tp.partition.0])),
        }
    }
    let mut buf = BytesMut::with_capacity(16 + partitions.len() * 8);
    buf.put_i16(0);
    buf.put_i32(i32::try_from(topics.len()).expect("topics fit in i32"));
    for (topic, ps) in &topics {
        put_string(&mut buf, topic);
        buf.put_i32(i32::try_from(ps.len()).expect("partitions fit in i32"));
        for p in ps {
            buf.put_i32(*p);
        }
    }
    match user_data {
        Some(data) => {
            buf.put_i32(i32::try_from(data.len()).expect("user data fits in i32"));
            buf.put_slice(data);
        }
        None => buf.put_i32(-1),
    }
    buf.freeze()
}

/// The user data of an assignment, if the bytes decode (`Some(None)`: null user data).
pub fn assignment_user_data(assignment: &[u8]) -> Option<Option<Vec<u8>>> {
    let read = || -> Result<Option<Vec<u8>>, RecordError> {
        let mut r = Reader {
            buf: assignment,
            pos: 0,
        };
        let _version = r.i16()?;
        let topics = r.count(6)?;
        for _ in 0..topics {
            let _topic = r.string()?;
            let partitions = r.count(4)?;
            for _ in 0..partitions {
                r.i32()?;
            }
        }
        r.nullable_bytes()
    };
    read().ok()
}

fn put_string(buf: &mut BytesMut, s: &str) {
    buf.put_i16(i16::try_from(s.len()).expect("topic names are at most 249 bytes"));
    buf.put_slice(s.as_bytes());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A consumer assignment (version 0, no user data) for tests.
    pub(crate) fn assignment(partitions: &[(&str, &[i32])]) -> Vec<u8> {
        let partitions: Vec<TopicPartition> = partitions
            .iter()
            .flat_map(|(t, ps)| ps.iter().map(|p| TopicPartition::new(*t, *p)))
            .collect();
        encode_assignment(&partitions, None).to_vec()
    }

    /// A consumer subscription (version 0, no user data) for tests.
    pub(crate) fn subscription(topics: &[&str]) -> Vec<u8> {
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        encode_subscription(&topics).to_vec()
    }

    // Goal: assignments and subscriptions decode; garbage is "unknown", not an error.
    #[test]
    fn decodes_or_gives_up() {
        let bytes = assignment(&[("a", &[0, 2]), ("b", &[1])]);
        assert_eq!(
            assigned_partitions(&bytes, 3),
            Some(vec![
                TopicPartition::new("a", 0),
                TopicPartition::new("a", 2),
                TopicPartition::new("b", 1)
            ])
        );
        assert_eq!(assigned_partitions(&[], 0), Some(vec![]));
        assert_eq!(
            assigned_partitions(&[0, 0, 0x7f, 0xff, 0xff, 0xff], 10),
            None
        );
        assert_eq!(
            subscription_topics(&subscription(&["x", "y"])),
            Some(vec!["x".into(), "y".into()])
        );
        assert_eq!(subscription_topics(&[1]), None);
    }

    /// An assignment (version 0, no user data) listing `topics` in order as given, repeats
    /// included (the encoder above would merge them).
    fn raw_assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        buf.put_i16(0);
        buf.put_i32(topics.len() as i32);
        for (topic, partitions) in topics {
            put_string(&mut buf, topic);
            buf.put_i32(partitions.len() as i32);
            for p in *partitions {
                buf.put_i32(*p);
            }
        }
        buf.put_i32(-1);
        buf.to_vec()
    }

    // Goal: a decoded assignment costs memory in proportion to its bytes, never multiplied by
    // a topic name's length: one allocation per topic name shared by all its partitions (a
    // topic listed twice merged), each partition once, numbers no topic can have left out, and
    // more entries than asked for give "unknown". Method: Arc::ptr_eq over the decoded pairs,
    // then the brief's case of a 32,767-byte topic name with 250,000 partition numbers.
    #[test]
    fn decoded_topics_share_one_name_and_are_bounded() {
        let long = "t".repeat(i16::MAX as usize);
        let bytes = raw_assignment(&[
            (&long, &[3, 1, 3, -1, TOPIC_PARTITIONS_MAX]),
            ("u", &[0]),
            (&long, &[2, 1]),
        ]);
        let pairs = assigned_partitions(&bytes, 100).expect("decodes");
        let parts: Vec<(usize, i32)> = pairs
            .iter()
            .map(|tp| (tp.topic.len(), tp.partition.0))
            .collect();
        assert_eq!(
            parts,
            vec![(long.len(), 1), (long.len(), 2), (long.len(), 3), (1, 0)]
        );
        assert!(Arc::ptr_eq(&pairs[0].topic, &pairs[1].topic));
        assert!(Arc::ptr_eq(&pairs[0].topic, &pairs[2].topic));
        // Entries are counted as listed (duplicates too), out-of-range ones not.
        assert!(assigned_topics(&bytes, 6).is_some());
        assert_eq!(assigned_topics(&bytes, 5), None);
        // 1 MiB: one 32,767-byte name and 250,000 partition numbers.
        let many: Vec<i32> = (0..250_000).collect();
        let bytes = raw_assignment(&[(&long, &many)]);
        assert!(bytes.len() > 1_000_000);
        let topics = assigned_topics(&bytes, usize::MAX).expect("decodes");
        assert_eq!(topics.len(), 1);
        assert_eq!(
            topics[0].1.len(),
            TOPIC_PARTITIONS_MAX as usize,
            "in-range ones only"
        );
        assert_eq!(Arc::strong_count(&topics[0].0), 1, "one name");
        assert_eq!(assigned_topics(&bytes, 99_999), None, "too many to track");
    }
}
