//! Reading the embedded consumer protocol (protocol type `consumer`): the topics a member
//! subscribes to and the partitions its assignment holds.
//!
//! The classic group protocol carries these as opaque bytes chosen by the client's assignor;
//! the coordinator reads them only to refuse a commit for a partition the current generation
//! assigns to another member, and an OffsetDelete for a topic the group still consumes. Bytes
//! that do not decode are treated as "unknown" and never cause a refusal.
//!
//! Layouts (Kafka's `ConsumerProtocolSubscription` and `ConsumerProtocolAssignment`, every
//! version, non-flexible): a subscription starts `i16 version, [string topic]`; an assignment
//! starts `i16 version, [string topic, [i32 partition]]`. Later fields are not read.
//!
//! Must not depend on: the log, the shard, or any protocol crate.

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Encodes a consumer assignment (version 0, no user data) for tests.
    pub(crate) fn assignment(partitions: &[(&str, &[i32])]) -> Vec<u8> {
        let mut buf = vec![0, 0];
        buf.extend_from_slice(&(partitions.len() as i32).to_be_bytes());
        for (topic, ps) in partitions {
            buf.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            buf.extend_from_slice(topic.as_bytes());
            buf.extend_from_slice(&(ps.len() as i32).to_be_bytes());
            for p in *ps {
                buf.extend_from_slice(&p.to_be_bytes());
            }
        }
        buf.extend_from_slice(&(-1i32).to_be_bytes());
        buf
    }

    /// Encodes a consumer subscription (version 0, no user data) for tests.
    pub(crate) fn subscription(topics: &[&str]) -> Vec<u8> {
        let mut buf = vec![0, 0];
        buf.extend_from_slice(&(topics.len() as i32).to_be_bytes());
        for topic in topics {
            buf.extend_from_slice(&(topic.len() as i16).to_be_bytes());
            buf.extend_from_slice(topic.as_bytes());
        }
        buf.extend_from_slice(&(-1i32).to_be_bytes());
        buf
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
