//! The records of `__consumer_offsets`: keys and values of committed offsets and of group
//! metadata, byte-compatible with Kafka's own schemas so that Kafka tooling that decodes the
//! offsets topic reads Sluice's too.
//!
//! | record | key (version prefix, fields) | value (version prefix, fields) |
//! |---|---|---|
//! | committed offset | `1`: group, topic, partition | `3`: offset, leader epoch, metadata, |
//! | | | commit timestamp |
//! | group metadata | `2`: group | `3`: protocol type, generation, protocol, leader, |
//! | | | state timestamp, members |
//!
//! A null value is a tombstone (the offset or the group was deleted). Encodings are Kafka's
//! non-flexible ones: big-endian integers, strings as `i16` length + UTF-8 (`-1`: null), bytes
//! as `i32` length (`-1`: null), arrays as `i32` count. Every decode is bounded by the bytes it
//! is given: a count is checked against the bytes left before anything is allocated. An encode
//! of a field longer than its length prefix holds is an [`EncodeError`], never a panic: the
//! coordinator refuses such strings when the request arrives, and this is the last line.
//!
//! Must not depend on: the log, the shard, or any protocol crate.

use bytes::{BufMut, Bytes, BytesMut};

/// Key version of a committed offset (Kafka's `OffsetCommitKey` v1).
const OFFSET_KEY_VERSION: i16 = 1;
/// Key version of group metadata (Kafka's `GroupMetadataKey` v2).
const GROUP_KEY_VERSION: i16 = 2;
/// Value version written for committed offsets (Kafka's `OffsetCommitValue` v3).
const OFFSET_VALUE_VERSION: i16 = 3;
/// Value version written for group metadata (Kafka's `GroupMetadataValue` v3).
const GROUP_VALUE_VERSION: i16 = 3;

/// A committed offset as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetValue {
    /// The next offset the group will read.
    pub offset: i64,
    /// Leader epoch of the committed record, `-1` when unknown.
    pub leader_epoch: i32,
    /// The client's metadata string.
    pub metadata: String,
    /// Wall-clock time of the commit (ms since the Unix epoch).
    pub commit_timestamp_ms: i64,
}

/// One member as stored in group metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberValue {
    /// Member id the coordinator gave.
    pub member_id: String,
    /// Static membership id (`group.instance.id`).
    pub group_instance_id: Option<String>,
    /// Client id of the member's connection.
    pub client_id: String,
    /// Client host of the member's connection.
    pub client_host: String,
    /// Rebalance timeout in ms.
    pub rebalance_timeout_ms: i32,
    /// Session timeout in ms.
    pub session_timeout_ms: i32,
    /// The member's metadata for the group's selected protocol.
    pub subscription: Bytes,
    /// The assignment the leader gave this member.
    pub assignment: Bytes,
}

/// Group metadata as stored after each completed rebalance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupValue {
    /// Protocol type (`consumer` for Kafka consumers).
    pub protocol_type: String,
    /// Generation.
    pub generation: i32,
    /// Selected protocol (assignor), if the group has members.
    pub protocol: Option<String>,
    /// Leader member id, if the group has members.
    pub leader: Option<String>,
    /// When the group entered its current state (ms since the Unix epoch).
    pub state_timestamp_ms: i64,
    /// Members.
    pub members: Vec<MemberValue>,
}

/// One record of the offsets topic, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffsetsRecord {
    /// A committed offset (`None`: deleted).
    Offset {
        /// Group id.
        group: String,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// The offset, or `None` for a tombstone.
        value: Option<OffsetValue>,
    },
    /// Group metadata (`None`: the group was deleted).
    Group {
        /// Group id.
        group: String,
        /// The metadata, or `None` for a tombstone.
        value: Option<GroupValue>,
    },
}

/// Why a stored record does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The bytes end inside a field.
    #[error("offsets record truncated at byte {at}")]
    Truncated {
        /// Where the missing field starts.
        at: usize,
    },
    /// A version this broker does not read.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// Key or value.
        what: &'static str,
        /// The version found.
        version: i16,
    },
    /// A length is negative (other than null) or larger than the bytes left.
    #[error("invalid length {0}")]
    InvalidLength(i64),
    /// A string is not UTF-8.
    #[error("string is not UTF-8")]
    NotUtf8,
    /// A record without a key.
    #[error("record without a key")]
    NoKey,
    /// Bytes left after the last field.
    #[error("{0} bytes after the last field")]
    Trailing(usize),
}

/// Why a record cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A field is longer than its length prefix can say (`i16` for strings, `i32` for bytes).
    #[error("{field} is {bytes} bytes, longer than the {max} an offsets record holds")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        bytes: usize,
        /// The most its length prefix holds.
        max: usize,
    },
}

/// Longest string a record holds: its length is an `i16`.
pub const RECORD_STRING_BYTES_MAX: usize = i16::MAX as usize;

const _: () = assert!(crate::limits::GROUP_STRING_BYTES_MAX <= RECORD_STRING_BYTES_MAX);
const _: () = assert!(crate::limits::TOPIC_NAME_BYTES_MAX <= RECORD_STRING_BYTES_MAX);

impl OffsetsRecord {
    /// The group this record belongs to.
    pub fn group(&self) -> &str {
        match self {
            OffsetsRecord::Offset { group, .. } | OffsetsRecord::Group { group, .. } => group,
        }
    }

    /// The record key.
    pub fn encode_key(&self) -> Result<Bytes, EncodeError> {
        let mut buf = BytesMut::with_capacity(64);
        match self {
            OffsetsRecord::Offset {
                group,
                topic,
                partition,
                ..
            } => {
                buf.put_i16(OFFSET_KEY_VERSION);
                put_str(&mut buf, "group id", group)?;
                put_str(&mut buf, "topic", topic)?;
                buf.put_i32(*partition);
            }
            OffsetsRecord::Group { group, .. } => {
                buf.put_i16(GROUP_KEY_VERSION);
                put_str(&mut buf, "group id", group)?;
            }
        }
        Ok(buf.freeze())
    }

    /// The record value; `None` for a tombstone.
    pub fn encode_value(&self) -> Result<Option<Bytes>, EncodeError> {
        match self {
            OffsetsRecord::Offset { value: None, .. }
            | OffsetsRecord::Group { value: None, .. } => Ok(None),
            OffsetsRecord::Offset { value: Some(v), .. } => {
                let mut buf = BytesMut::with_capacity(32 + v.metadata.len());
                buf.put_i16(OFFSET_VALUE_VERSION);
                buf.put_i64(v.offset);
                buf.put_i32(v.leader_epoch);
                put_str(&mut buf, "offset metadata", &v.metadata)?;
                buf.put_i64(v.commit_timestamp_ms);
                Ok(Some(buf.freeze()))
            }
            OffsetsRecord::Group { value: Some(v), .. } => {
                let mut buf = BytesMut::with_capacity(256);
                buf.put_i16(GROUP_VALUE_VERSION);
                put_str(&mut buf, "protocol type", &v.protocol_type)?;
                buf.put_i32(v.generation);
                put_nullable_str(&mut buf, "protocol", v.protocol.as_deref())?;
                put_nullable_str(&mut buf, "leader", v.leader.as_deref())?;
                buf.put_i64(v.state_timestamp_ms);
                // Each member is an entry in memory of well over a byte: a count past i32
                // cannot be held.
                buf.put_i32(i32::try_from(v.members.len()).expect("members fit in i32"));
                for m in &v.members {
                    put_str(&mut buf, "member id", &m.member_id)?;
                    put_nullable_str(
                        &mut buf,
                        "group instance id",
                        m.group_instance_id.as_deref(),
                    )?;
                    put_str(&mut buf, "client id", &m.client_id)?;
                    put_str(&mut buf, "client host", &m.client_host)?;
                    buf.put_i32(m.rebalance_timeout_ms);
                    buf.put_i32(m.session_timeout_ms);
                    put_bytes(&mut buf, "subscription", &m.subscription)?;
                    put_bytes(&mut buf, "assignment", &m.assignment)?;
                }
                Ok(Some(buf.freeze()))
            }
        }
    }

    /// Decodes a record from its key and value (`None`: tombstone).
    pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<OffsetsRecord, RecordError> {
        let key = key.ok_or(RecordError::NoKey)?;
        let mut k = Reader { buf: key, pos: 0 };
        let record = match k.i16()? {
            0 | OFFSET_KEY_VERSION => {
                let group = k.string()?;
                let topic = k.string()?;
                let partition = k.i32()?;
                k.end()?;
                let value = value.map(decode_offset_value).transpose()?;
                OffsetsRecord::Offset {
                    group,
                    topic,
                    partition,
                    value,
                }
            }
            GROUP_KEY_VERSION => {
                let group = k.string()?;
                k.end()?;
                let value = value.map(decode_group_value).transpose()?;
                OffsetsRecord::Group { group, value }
            }
            version => {
                return Err(RecordError::UnsupportedVersion {
                    what: "key",
                    version,
                });
            }
        };
        Ok(record)
    }
}

fn decode_offset_value(bytes: &[u8]) -> Result<OffsetValue, RecordError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let version = r.i16()?;
    if version != OFFSET_VALUE_VERSION {
        return Err(RecordError::UnsupportedVersion {
            what: "offset value",
            version,
        });
    }
    let value = OffsetValue {
        offset: r.i64()?,
        leader_epoch: r.i32()?,
        metadata: r.string()?,
        commit_timestamp_ms: r.i64()?,
    };
    r.end()?;
    Ok(value)
}

fn decode_group_value(bytes: &[u8]) -> Result<GroupValue, RecordError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let version = r.i16()?;
    if version != GROUP_VALUE_VERSION {
        return Err(RecordError::UnsupportedVersion {
            what: "group value",
            version,
        });
    }
    let protocol_type = r.string()?;
    let generation = r.i32()?;
    let protocol = r.nullable_string()?;
    let leader = r.nullable_string()?;
    let state_timestamp_ms = r.i64()?;
    // Each member takes at least 24 bytes (four empty strings, four i32s); the count is
    // checked against what is left.
    let count = r.count(24)?;
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        members.push(MemberValue {
            member_id: r.string()?,
            group_instance_id: r.nullable_string()?,
            client_id: r.string()?,
            client_host: r.string()?,
            rebalance_timeout_ms: r.i32()?,
            session_timeout_ms: r.i32()?,
            subscription: r.bytes()?,
            assignment: r.bytes()?,
        });
    }
    r.end()?;
    Ok(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        state_timestamp_ms,
        members,
    })
}

fn put_str(buf: &mut BytesMut, field: &'static str, s: &str) -> Result<(), EncodeError> {
    put_nullable_str(buf, field, Some(s))
}

fn put_nullable_str(
    buf: &mut BytesMut,
    field: &'static str,
    s: Option<&str>,
) -> Result<(), EncodeError> {
    match s {
        None => buf.put_i16(-1),
        Some(s) => {
            // The coordinator refuses longer group ids, member ids, instance ids, protocols and
            // client ids when they arrive; this refuses whatever reaches here anyway.
            let len = i16::try_from(s.len()).map_err(|_| EncodeError::TooLong {
                field,
                bytes: s.len(),
                max: RECORD_STRING_BYTES_MAX,
            })?;
            buf.put_i16(len);
            buf.put_slice(s.as_bytes());
        }
    }
    Ok(())
}

fn put_bytes(buf: &mut BytesMut, field: &'static str, b: &[u8]) -> Result<(), EncodeError> {
    let len = i32::try_from(b.len()).map_err(|_| EncodeError::TooLong {
        field,
        bytes: b.len(),
        max: i32::MAX as usize,
    })?;
    buf.put_i32(len);
    buf.put_slice(b);
    Ok(())
}

/// A bounded big-endian reader over one key or value.
pub(crate) struct Reader<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if n > self.buf.len() - self.pos {
            return Err(RecordError::Truncated { at: self.pos });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    pub(crate) fn i16(&mut self) -> Result<i16, RecordError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self) -> Result<i32, RecordError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, RecordError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    /// A nullable string borrowed from the bytes (nothing allocated).
    pub(crate) fn nullable_str(&mut self) -> Result<Option<&'a str>, RecordError> {
        let len = self.i16()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| RecordError::InvalidLength(len.into()))?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| RecordError::NotUtf8)
    }

    /// A non-null string borrowed from the bytes.
    pub(crate) fn str(&mut self) -> Result<&'a str, RecordError> {
        self.nullable_str()?.ok_or(RecordError::InvalidLength(-1))
    }

    pub(crate) fn nullable_string(&mut self) -> Result<Option<String>, RecordError> {
        Ok(self.nullable_str()?.map(str::to_owned))
    }

    pub(crate) fn string(&mut self) -> Result<String, RecordError> {
        self.nullable_string()?
            .ok_or(RecordError::InvalidLength(-1))
    }

    /// Nullable bytes (`i32` length, `-1`: null).
    pub(crate) fn nullable_bytes(&mut self) -> Result<Option<Vec<u8>>, RecordError> {
        let len = self.i32()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| RecordError::InvalidLength(len.into()))?;
        Ok(Some(self.take(len)?.to_vec()))
    }

    fn bytes(&mut self) -> Result<Bytes, RecordError> {
        let len = self.i32()?;
        if len == -1 {
            return Ok(Bytes::new());
        }
        let len = usize::try_from(len).map_err(|_| RecordError::InvalidLength(len.into()))?;
        Ok(Bytes::copy_from_slice(self.take(len)?))
    }

    /// An array count, checked against the bytes left (each element takes at least
    /// `element_bytes_min`); a null array is empty.
    pub(crate) fn count(&mut self, element_bytes_min: usize) -> Result<usize, RecordError> {
        let count = self.i32()?;
        if count == -1 {
            return Ok(0);
        }
        let count = usize::try_from(count).map_err(|_| RecordError::InvalidLength(count.into()))?;
        if count.saturating_mul(element_bytes_min) > self.buf.len() - self.pos {
            return Err(RecordError::InvalidLength(count as i64));
        }
        Ok(count)
    }

    pub(crate) fn end(&self) -> Result<(), RecordError> {
        match self.buf.len() - self.pos {
            0 => Ok(()),
            n => Err(RecordError::Trailing(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(record: OffsetsRecord) {
        let key = record.encode_key().expect("key encodes");
        let value = record.encode_value().expect("value encodes");
        let decoded = OffsetsRecord::decode(Some(&key), value.as_deref()).expect("decodes");
        assert_eq!(decoded, record);
    }

    // Goal: every record kind (values and tombstones) survives encode then decode.
    #[test]
    fn records_roundtrip() {
        roundtrip(OffsetsRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
            value: Some(OffsetValue {
                offset: 42,
                leader_epoch: -1,
                metadata: "meta".into(),
                commit_timestamp_ms: 1_700_000_000_000,
            }),
        });
        roundtrip(OffsetsRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
            value: None,
        });
        roundtrip(OffsetsRecord::Group {
            group: "g".into(),
            value: Some(GroupValue {
                protocol_type: "consumer".into(),
                generation: 7,
                protocol: Some("range".into()),
                leader: Some("m-1".into()),
                state_timestamp_ms: 5,
                members: vec![MemberValue {
                    member_id: "m-1".into(),
                    group_instance_id: Some("i-1".into()),
                    client_id: "c".into(),
                    client_host: "/127.0.0.1".into(),
                    rebalance_timeout_ms: 300_000,
                    session_timeout_ms: 10_000,
                    subscription: Bytes::from_static(b"sub"),
                    assignment: Bytes::from_static(b"asg"),
                }],
            }),
        });
        roundtrip(OffsetsRecord::Group {
            group: "g".into(),
            value: None,
        });
    }

    // Goal: the key layout is Kafka's (so Kafka tools decode it). Method: a hand-written
    // OffsetCommitKey v1 for group "g", topic "t", partition 1.
    #[test]
    fn offset_key_is_kafka_layout() {
        let record = OffsetsRecord::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 1,
            value: None,
        };
        assert_eq!(
            &record.encode_key().expect("key encodes")[..],
            &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 1]
        );
    }

    // Goal: a string longer than an i16 length is an encode error naming the field, never a
    // panic (a panic aborts a release broker), and the longest string that fits encodes.
    // Method: a commit key with a 40,000-byte group id, a group value with an over-long member
    // id, instance id and protocol, and a key at exactly the limit.
    #[test]
    fn over_long_strings_are_encode_errors() {
        let long = "g".repeat(40_000);
        let offset = OffsetsRecord::Offset {
            group: long.clone(),
            topic: "t".into(),
            partition: 0,
            value: None,
        };
        assert_eq!(
            offset.encode_key(),
            Err(EncodeError::TooLong {
                field: "group id",
                bytes: 40_000,
                max: RECORD_STRING_BYTES_MAX,
            })
        );
        let member = MemberValue {
            member_id: "m".into(),
            group_instance_id: None,
            client_id: "c".into(),
            client_host: "h".into(),
            rebalance_timeout_ms: 1,
            session_timeout_ms: 1,
            subscription: Bytes::new(),
            assignment: Bytes::new(),
        };
        let value = GroupValue {
            protocol_type: "consumer".into(),
            generation: 1,
            protocol: Some("range".into()),
            leader: Some("m".into()),
            state_timestamp_ms: 0,
            members: vec![member],
        };
        let group = |change: &dyn Fn(&mut GroupValue)| {
            let mut value = value.clone();
            change(&mut value);
            let record = OffsetsRecord::Group {
                group: "g".into(),
                value: Some(value),
            };
            match record.encode_value() {
                Err(EncodeError::TooLong { field, .. }) => field,
                other => panic!("expected an error, got {other:?}"),
            }
        };
        assert_eq!(
            group(&|v| v.members[0].member_id = long.clone()),
            "member id"
        );
        assert_eq!(
            group(&|v| v.members[0].group_instance_id = Some(long.clone())),
            "group instance id"
        );
        assert_eq!(group(&|v| v.protocol = Some(long.clone())), "protocol");
        assert_eq!(group(&|v| v.protocol_type = long.clone()), "protocol type");
        let longest = "g".repeat(RECORD_STRING_BYTES_MAX);
        roundtrip(OffsetsRecord::Group {
            group: longest,
            value: Some(value),
        });
    }

    // Goal: damaged bytes are errors, never panics or huge allocations.
    #[test]
    fn damaged_records_are_errors() {
        assert_eq!(OffsetsRecord::decode(None, None), Err(RecordError::NoKey));
        assert!(matches!(
            OffsetsRecord::decode(Some(&[0, 9]), None),
            Err(RecordError::UnsupportedVersion { .. })
        ));
        assert!(matches!(
            OffsetsRecord::decode(Some(&[0, 2, 0, 5, b'g']), None),
            Err(RecordError::Truncated { .. })
        ));
        // A group value declaring i32::MAX members in a few bytes.
        let mut value = vec![0, 3, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
        value.extend_from_slice(&[0; 8]);
        value.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            OffsetsRecord::decode(Some(&[0, 2, 0, 1, b'g']), Some(&value)),
            Err(RecordError::InvalidLength(_))
        ));
        let key = [0, 2, 0, 1, b'g', 7];
        assert_eq!(
            OffsetsRecord::decode(Some(&key), None),
            Err(RecordError::Trailing(1))
        );
    }
}
