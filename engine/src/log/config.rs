//! Per-partition log settings ([`LogConfig`]) with Kafka's names and defaults, validated
//! against [`crate::limits`].
//!
//! Must not depend on: the network or cluster layers (they translate topic configs into this).

use crate::limits;

/// Settings of one partition log. Field names follow Kafka's topic configs; `_ms` fields are
/// milliseconds as in the configs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll to a new segment when an append would make the active segment
    /// larger than this. Default 1 GiB.
    pub segment_bytes: u64,
    /// `segment.ms`: roll when the incoming batch's max timestamp is this much later than the
    /// max timestamp of the active segment's first batch. Default 7 days.
    pub segment_ms: i64,
    /// `retention.ms`: sealed segments whose max timestamp is older than this are deleted by
    /// [`super::PartitionLog::apply_retention`]; `None` (Kafka's -1) keeps them. Default 7 days.
    pub retention_ms: Option<i64>,
    /// `retention.bytes`: oldest sealed segments are deleted while the log stays at least this
    /// large without them; `None` (Kafka's -1, the default) keeps them.
    pub retention_bytes: Option<u64>,
    /// `index.interval.bytes`: bytes of log between offset index entries. Default 4096.
    pub index_interval_bytes: u32,
    /// `flush.messages`: fdatasync after this many unsynced records even when no append asked
    /// for it. `None` (the default, Kafka's `Long.MAX_VALUE`): never; durability comes from
    /// replication and `Synced` appends.
    pub flush_messages: Option<u64>,
    /// `flush.ms`: fdatasync unsynced data at most this long after it was written. `None` (the
    /// default): never.
    pub flush_ms: Option<i64>,
    /// `max.message.bytes`: largest batch accepted, header included. Default 1 MiB + 12.
    pub max_batch_bytes: usize,
    /// Bytes the active segment is preallocated by at a time (`fallocate`); `0` disables
    /// preallocation. A multiple of 4096. Default 4 MiB.
    pub preallocate_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        const WEEK_MS: i64 = 7 * 24 * 60 * 60 * 1000;
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: WEEK_MS,
            retention_ms: Some(WEEK_MS),
            retention_bytes: None,
            index_interval_bytes: 4096,
            flush_messages: None,
            flush_ms: None,
            max_batch_bytes: (1 << 20) + 12,
            preallocate_bytes: limits::PREALLOCATE_BYTES_DEFAULT,
        }
    }
}

/// A setting outside its allowed range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("invalid log config {name} = {value}: {rule}")]
pub struct ConfigError {
    /// The Kafka name of the setting.
    pub name: &'static str,
    /// The rejected value.
    pub value: i64,
    /// What the value must satisfy.
    pub rule: &'static str,
}

fn check(ok: bool, name: &'static str, value: i64, rule: &'static str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError { name, value, rule })
    }
}

fn as_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl LogConfig {
    /// Checks every setting against the engine's limits.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            (limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX).contains(&self.segment_bytes),
            "segment.bytes",
            as_i64(self.segment_bytes),
            "must be between 4096 and 2147483647",
        )?;
        check(
            self.segment_ms >= 1,
            "segment.ms",
            self.segment_ms,
            "must be at least 1",
        )?;
        let retention_ms = self.retention_ms.unwrap_or(0);
        check(
            retention_ms >= 0,
            "retention.ms",
            retention_ms,
            "must be unlimited or at least 0",
        )?;
        check(
            u64::from(self.index_interval_bytes) <= limits::INDEX_INTERVAL_BYTES_MAX,
            "index.interval.bytes",
            i64::from(self.index_interval_bytes),
            "must be at most 1073741824",
        )?;
        let flush_messages = self.flush_messages.unwrap_or(1);
        check(
            flush_messages >= 1,
            "flush.messages",
            as_i64(flush_messages),
            "must be at least 1",
        )?;
        let flush_ms = self.flush_ms.unwrap_or(0);
        check(
            flush_ms >= 0,
            "flush.ms",
            flush_ms,
            "must be never or at least 0",
        )?;
        check(
            self.max_batch_bytes >= crate::batch::HEADER_BYTES
                && self.max_batch_bytes <= limits::BATCH_BYTES_MAX,
            "max.message.bytes",
            self.max_batch_bytes as i64,
            "must be between 61 and 16777216",
        )?;
        check(
            self.preallocate_bytes <= limits::PREALLOCATE_BYTES_MAX
                && self
                    .preallocate_bytes
                    .is_multiple_of(limits::DIO_ALIGN_BYTES as u64),
            "segment.preallocate.bytes",
            as_i64(self.preallocate_bytes),
            "must be a multiple of 4096 and at most 1073741824",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: defaults are valid and each bound rejects the value just outside it.
    #[test]
    fn validate_bounds() {
        assert_eq!(LogConfig::default().validate(), Ok(()));
        let bad = [
            LogConfig {
                segment_bytes: 4095,
                ..LogConfig::default()
            },
            LogConfig {
                segment_bytes: 1 << 31,
                ..LogConfig::default()
            },
            LogConfig {
                segment_ms: 0,
                ..LogConfig::default()
            },
            LogConfig {
                retention_ms: Some(-1),
                ..LogConfig::default()
            },
            LogConfig {
                index_interval_bytes: (1 << 30) + 1,
                ..LogConfig::default()
            },
            LogConfig {
                flush_messages: Some(0),
                ..LogConfig::default()
            },
            LogConfig {
                flush_ms: Some(-1),
                ..LogConfig::default()
            },
            LogConfig {
                max_batch_bytes: 60,
                ..LogConfig::default()
            },
            LogConfig {
                max_batch_bytes: (16 << 20) + 1,
                ..LogConfig::default()
            },
            LogConfig {
                preallocate_bytes: 4097,
                ..LogConfig::default()
            },
        ];
        for config in bad {
            assert!(config.validate().is_err(), "{config:?} should be rejected");
        }
    }
}
