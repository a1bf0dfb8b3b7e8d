//! Reading the embedded consumer protocol (protocol type `consumer`): the topics a member
//! subscribes to and the partitions its assignment holds.
//!
//! The classic group protocol carries these as opaque bytes chosen by the client's assignor;
//! the coordinator reads them only to refuse a commit for a partition the current generation
//! assigns to another member, and an OffsetDelete for a topic the group still consumes. Bytes
//! that do not decode are treated as "unknown" and never cause a refusal.
//!
//! Native groups (`consumer_group.rs`) are shown to Kafka tools in the same layouts, so the
//! encoders live here too.
//!
//! Layouts (Kafka's `ConsumerProtocolSubscription` and `ConsumerProtocolAssignment`, every
//! version, non-flexible): a subscription starts `i16 version, [string topic]`; an assignment
//! starts `i16 version, [string topic, [i32 partition]]`. Later fields are not read.
//!
//! Must not depend on: the log, the shard, or any protocol crate.

use bytes::{BufMut, Bytes, BytesMut};
use sluice_engine::TopicPartition;

use super::record::{Reader, RecordError};

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

/// The (topic, partition) pairs a consumer's assignment holds, if the bytes decode.
pub fn assigned_partitions(assignment: &[u8]) -> Option<Vec<(String, i32)>> {
    if assignment.is_empty() {
        return Some(Vec::new());
    }
    let read = || -> Result<Vec<(String, i32)>, RecordError> {
        let mut r = Reader {
            buf: assignment,
            pos: 0,
        };
        let _version = r.i16()?;
        let topics = r.count(6)?;
        let mut out = Vec::new();
        for _ in 0..topics {
            let topic = r.string()?;
            let partitions = r.count(4)?;
            for _ in 0..partitions {
                out.push((topic.clone(), r.i32()?));
            }
        }
        Ok(out)
    };
    read().ok()
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
            assigned_partitions(&bytes),
            Some(vec![("a".into(), 0), ("a".into(), 2), ("b".into(), 1)])
        );
        assert_eq!(assigned_partitions(&[]), Some(vec![]));
        assert_eq!(assigned_partitions(&[0, 0, 0x7f, 0xff, 0xff, 0xff]), None);
        assert_eq!(
            subscription_topics(&subscription(&["x", "y"])),
            Some(vec!["x".into(), "y".into()])
        );
        assert_eq!(subscription_topics(&[1]), None);
    }
}
