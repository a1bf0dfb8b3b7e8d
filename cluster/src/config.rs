//! Per-topic configuration: the Kafka topic-level keys Sluice honours, their defaults and
//! validation.
//!
//! Metadata stores only the overrides a user set (`BTreeMap<String, String>`), as Kafka does;
//! [`TopicConfig::resolve`] turns them into typed values on top of the broker defaults. Every
//! value is validated when set, so a stored override always resolves.

use std::collections::BTreeMap;

use crate::limits::MESSAGE_BYTES_MAX;

/// Typed topic configuration after defaults are applied.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicConfig {
    /// `retention.ms`: delete segments whose newest record is older; `None` keeps forever.
    pub retention_ms: Option<i64>,
    /// `retention.bytes`: delete oldest segments while the partition is larger; `None` = no cap.
    pub retention_bytes: Option<u64>,
    /// `segment.bytes`: roll the active segment at this size.
    pub segment_bytes: u64,
    /// `segment.ms`: roll the active segment when its first record is this old.
    pub segment_ms: i64,
    /// `cleanup.policy`: delete and/or compact.
    pub cleanup_policy: CleanupPolicy,
    /// `max.message.bytes`: largest record batch accepted.
    pub max_message_bytes: u64,
    /// `flush.ms`: fdatasync at least this often; `None` leaves it to the OS and acks=all.
    pub flush_ms: Option<i64>,
    /// `flush.messages`: fdatasync after this many records; `None` = no count trigger.
    pub flush_messages: Option<u64>,
    /// `min.insync.replicas`: replicas that must have an acks=all write.
    pub min_insync_replicas: u32,
    /// `message.timestamp.type`: keep the producer's timestamps or stamp log-append time.
    pub timestamp_type: TimestampType,
    /// `index.interval.bytes`: bytes of log between offset index entries.
    pub index_interval_bytes: u32,
    /// `unclean.leader.election.enable`: when no in-sync replica is alive, elect a live
    /// out-of-sync replica (losing what it lacks) instead of leaving the partition offline.
    #[serde(default)]
    pub unclean_leader_election: bool,
}

/// `cleanup.policy` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CleanupPolicy {
    /// Delete old segments by time and size.
    Delete,
    /// Keep the latest record per key.
    Compact,
    /// Both.
    CompactDelete,
}

/// `message.timestamp.type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TimestampType {
    /// Keep the producer's timestamps.
    CreateTime,
    /// Stamp the broker's time at append.
    LogAppendTime,
}

/// A config key or value the broker does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The key is not a topic config Sluice knows.
    #[error("unknown topic config {0}")]
    UnknownKey(String),
    /// The value does not parse or is out of range.
    #[error("invalid value {value:?} for {key}: {reason}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The rejected value.
        value: String,
        /// Why.
        reason: &'static str,
    },
}

/// A described config entry: its value and whether it is a topic override or a default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    /// Key, e.g. `retention.ms`.
    pub key: &'static str,
    /// Effective value as text.
    pub value: String,
    /// True when the topic overrides the default.
    pub is_override: bool,
}

/// Every key Sluice understands, with its default as text (Kafka's defaults).
pub const TOPIC_CONFIG_KEYS: &[(&str, &str)] = &[
    ("cleanup.policy", "delete"),
    ("flush.messages", "9223372036854775807"),
    ("flush.ms", "9223372036854775807"),
    ("index.interval.bytes", "4096"),
    ("max.message.bytes", "1048588"),
    ("message.timestamp.type", "CreateTime"),
    ("min.insync.replicas", "1"),
    ("retention.bytes", "-1"),
    ("retention.ms", "604800000"),
    ("segment.bytes", "1073741824"),
    ("segment.ms", "604800000"),
    ("unclean.leader.election.enable", "false"),
];

impl Default for TopicConfig {
    fn default() -> TopicConfig {
        TopicConfig::resolve(&BTreeMap::new()).expect("defaults are valid")
    }
}

fn parse_i64(key: &str, value: &str) -> Result<i64, ConfigError> {
    value
        .trim()
        .parse::<i64>()
        .map_err(|_| ConfigError::InvalidValue {
            key: key.into(),
            value: value.into(),
            reason: "not an integer",
        })
}

fn ranged(key: &str, value: &str, min: i64, max: i64) -> Result<i64, ConfigError> {
    let n = parse_i64(key, value)?;
    if n < min || n > max {
        return Err(ConfigError::InvalidValue {
            key: key.into(),
            value: value.into(),
            reason: "out of range",
        });
    }
    Ok(n)
}

/// `-1` (or `i64::MAX`, Kafka's "never") means unlimited.
fn optional(n: i64) -> Option<i64> {
    if n < 0 || n == i64::MAX {
        None
    } else {
        Some(n)
    }
}

impl TopicConfig {
    /// Applies `overrides` on top of the defaults, validating every value.
    pub fn resolve(overrides: &BTreeMap<String, String>) -> Result<TopicConfig, ConfigError> {
        let get = |key: &str| -> &str {
            overrides.get(key).map(String::as_str).unwrap_or_else(|| {
                TOPIC_CONFIG_KEYS
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| *v)
                    .expect("every key read below has a default")
            })
        };
        for key in overrides.keys() {
            if !TOPIC_CONFIG_KEYS.iter().any(|(k, _)| k == key) {
                return Err(ConfigError::UnknownKey(key.clone()));
            }
        }
        let cleanup_policy = match get("cleanup.policy").replace(' ', "").as_str() {
            "delete" => CleanupPolicy::Delete,
            "compact" => CleanupPolicy::Compact,
            "compact,delete" | "delete,compact" => CleanupPolicy::CompactDelete,
            other => {
                return Err(ConfigError::InvalidValue {
                    key: "cleanup.policy".into(),
                    value: other.into(),
                    reason: "expected delete, compact or compact,delete",
                });
            }
        };
        let timestamp_type = match get("message.timestamp.type") {
            "CreateTime" => TimestampType::CreateTime,
            "LogAppendTime" => TimestampType::LogAppendTime,
            other => {
                return Err(ConfigError::InvalidValue {
                    key: "message.timestamp.type".into(),
                    value: other.into(),
                    reason: "expected CreateTime or LogAppendTime",
                });
            }
        };
        let unclean_leader_election = match get("unclean.leader.election.enable") {
            "true" => true,
            "false" => false,
            other => {
                return Err(ConfigError::InvalidValue {
                    key: "unclean.leader.election.enable".into(),
                    value: other.into(),
                    reason: "expected true or false",
                });
            }
        };
        let max = i64::MAX;
        Ok(TopicConfig {
            unclean_leader_election,
            retention_ms: optional(ranged("retention.ms", get("retention.ms"), -1, max)?),
            retention_bytes: optional(ranged("retention.bytes", get("retention.bytes"), -1, max)?)
                .map(|n| n as u64),
            segment_bytes: ranged(
                "segment.bytes",
                get("segment.bytes"),
                14,
                i64::from(i32::MAX),
            )? as u64,
            segment_ms: ranged("segment.ms", get("segment.ms"), 1, max)?,
            cleanup_policy,
            max_message_bytes: ranged(
                "max.message.bytes",
                get("max.message.bytes"),
                0,
                MESSAGE_BYTES_MAX as i64,
            )? as u64,
            flush_ms: optional(ranged("flush.ms", get("flush.ms"), 0, max)?),
            flush_messages: optional(ranged("flush.messages", get("flush.messages"), 1, max)?)
                .map(|n| n as u64),
            min_insync_replicas: ranged(
                "min.insync.replicas",
                get("min.insync.replicas"),
                1,
                i64::from(i32::MAX),
            )? as u32,
            timestamp_type,
            index_interval_bytes: ranged(
                "index.interval.bytes",
                get("index.interval.bytes"),
                0,
                i64::from(i32::MAX),
            )? as u32,
        })
    }

    /// Lists every key with its effective value and whether `overrides` sets it.
    pub fn describe(overrides: &BTreeMap<String, String>) -> Vec<ConfigEntry> {
        TOPIC_CONFIG_KEYS
            .iter()
            .map(|(key, default)| ConfigEntry {
                key,
                value: overrides
                    .get(*key)
                    .cloned()
                    .unwrap_or_else(|| (*default).to_string()),
                is_override: overrides.contains_key(*key),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overrides(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    // Goal: defaults match Kafka's and overrides are typed and validated.
    #[test]
    fn resolve_defaults_and_overrides() {
        let config = TopicConfig::default();
        assert_eq!(config.retention_ms, Some(604_800_000));
        assert_eq!(config.retention_bytes, None);
        assert_eq!(config.segment_bytes, 1 << 30);
        assert_eq!(config.flush_ms, None);
        assert_eq!(config.cleanup_policy, CleanupPolicy::Delete);

        let config = TopicConfig::resolve(&overrides(&[
            ("retention.ms", "-1"),
            ("retention.bytes", "1000"),
            ("cleanup.policy", "compact,delete"),
            ("flush.messages", "1"),
        ]))
        .expect("valid overrides");
        assert_eq!(config.retention_ms, None);
        assert_eq!(config.retention_bytes, Some(1000));
        assert_eq!(config.cleanup_policy, CleanupPolicy::CompactDelete);
        assert_eq!(config.flush_messages, Some(1));
    }

    // Goal: bad keys and values are rejected with a typed error naming the key.
    #[test]
    fn resolve_rejects_bad_input() {
        let unknown = TopicConfig::resolve(&overrides(&[("retention.weeks", "1")]));
        assert_eq!(
            unknown,
            Err(ConfigError::UnknownKey("retention.weeks".into()))
        );
        let bad = TopicConfig::resolve(&overrides(&[("segment.bytes", "ten")]));
        assert!(
            matches!(bad, Err(ConfigError::InvalidValue { ref key, .. }) if key == "segment.bytes")
        );
        let huge = TopicConfig::resolve(&overrides(&[("max.message.bytes", "999999999999")]));
        assert!(matches!(huge, Err(ConfigError::InvalidValue { .. })));
        let policy = TopicConfig::resolve(&overrides(&[("cleanup.policy", "shred")]));
        assert!(matches!(policy, Err(ConfigError::InvalidValue { .. })));
    }
}
