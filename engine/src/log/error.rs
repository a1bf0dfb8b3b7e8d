//! Error enums of the partition log, one per operation family: opening ([`OpenError`]),
//! appending ([`AppendError`]), reading ([`ReadError`]) and maintenance such as retention,
//! truncation and close ([`AdminError`]).
//!
//! IO errors are carried as `Arc<io::Error>` because one failed write fails every append that
//! shared it. All of these are `Send + Sync` and `Clone`.
//!
//! Must not depend on: protocol error codes (the network layer maps these in one place).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::batch::BatchError;
use crate::log::config::ConfigError;
use crate::types::{FilePos, LeaderEpoch, Offset};

/// Why a partition log could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A file operation failed.
    #[error("io error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Arc<io::Error>,
    },
    /// A file in the partition directory has a format this version cannot read.
    #[error("unsupported format in {path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A segment the checkpoint lists as sealed is missing: data was removed behind the log's
    /// back, and opening would silently lose it.
    #[error("segment {base} listed in the checkpoint of {path} is missing")]
    MissingSegment {
        /// The partition directory.
        path: PathBuf,
        /// Base offset of the missing segment.
        base: Offset,
    },
    /// More segments than [`crate::limits::SEGMENTS_MAX`].
    #[error("{count} segments in {path}, more than the limit")]
    TooManySegments {
        /// The partition directory.
        path: PathBuf,
        /// How many segment files it holds.
        count: usize,
    },
}

impl OpenError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> OpenError {
        OpenError::Io {
            path: path.into(),
            source: Arc::new(source),
        }
    }
}

/// Why an append failed. Nothing of a failed append is readable, and the log end offset is
/// unchanged by it (see the module docs for what a crash may still reveal).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    /// The record set holds no batch.
    #[error("empty record set")]
    Empty,
    /// The record set is larger than one append may be.
    #[error("record set of {bytes} bytes exceeds the limit of {limit}")]
    RecordSetTooLarge {
        /// Size of the record set.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// One batch is larger than `max.message.bytes`.
    #[error("batch {index} of {bytes} bytes exceeds max.message.bytes {limit}")]
    BatchTooLarge {
        /// Position of the batch in the record set (0-based).
        index: usize,
        /// Declared batch size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// One batch is malformed (length, magic, CRC, record count).
    #[error("batch {index} is invalid: {error}")]
    InvalidBatch {
        /// Position of the batch in the record set (0-based).
        index: usize,
        /// What is wrong.
        #[source]
        error: BatchError,
    },
    /// [`super::PartitionLog::append_replicated`]: the batches do not continue the log
    /// exactly (gap, overlap, or offsets that go backwards).
    #[error("batch {index} starts at offset {found}, expected {expected}")]
    OffsetMismatch {
        /// Position of the batch in the record set (0-based).
        index: usize,
        /// The offset the log continues at.
        expected: Offset,
        /// The batch's base offset.
        found: Offset,
    },
    /// [`super::PartitionLog::append`]: the leader epoch is below the latest epoch already in
    /// the log (a deposed leader appending).
    #[error("leader epoch {} is below the log's latest epoch {}", epoch.0, latest.0)]
    StaleEpoch {
        /// The epoch the append asked for.
        epoch: LeaderEpoch,
        /// The latest epoch in the log.
        latest: LeaderEpoch,
    },
    /// [`super::PartitionLog::append_replicated`]: a batch carries a leader epoch below the
    /// latest epoch in the log or below an earlier batch of the record set.
    #[error("batch {index} carries leader epoch {}, below the latest epoch {}", epoch.0, latest.0)]
    EpochRegression {
        /// Position of the batch in the record set (0-based).
        index: usize,
        /// The batch's leader epoch.
        epoch: LeaderEpoch,
        /// The latest epoch before it.
        latest: LeaderEpoch,
    },
    /// The device is full. Appends work again once space is freed.
    #[error("no space left on device: {0}")]
    NoSpace(#[source] Arc<io::Error>),
    /// A write failed. The log stays readable; later appends retry the write.
    #[error("write failed: {0}")]
    Io(#[source] Arc<io::Error>),
    /// The partition's write backlog is full (the device is slower than the producers);
    /// retry later.
    #[error("write backlog of {queued_bytes} bytes is full (limit {limit})")]
    Overloaded {
        /// Bytes queued for the writer.
        queued_bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The append needs a new segment and the partition holds the most it may
    /// ([`crate::limits::SEGMENTS_MAX`]); appends work again once retention or delete-records
    /// removes segments.
    #[error("partition holds {segments} segments, the most it may; delete records to append")]
    SegmentLimit {
        /// Segments the log holds, rolls queued included.
        segments: usize,
        /// The limit.
        limit: usize,
    },
    /// The log is being truncated; retry after [`super::PartitionLog::truncate_to`] returns.
    #[error("log is being truncated")]
    Busy,
    /// The log is closing or closed.
    #[error("log is closed")]
    Closed,
    /// An fdatasync failed earlier: the state of unsynced data is unknown, so the log refuses
    /// appends until it is reopened (which recovers the tail).
    #[error("log failed after a sync error; reopen it")]
    Failed,
}

impl AppendError {
    pub(crate) fn from_io(error: Arc<io::Error>) -> AppendError {
        if matches!(
            error.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        ) {
            AppendError::NoSpace(error)
        } else {
            AppendError::Io(error)
        }
    }
}

/// Why a read failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The offset is below the log start or past the log end.
    #[error("offset {requested} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: Offset,
        /// The log start offset.
        log_start: Offset,
        /// The log end offset.
        log_end: Offset,
    },
    /// A batch on disk fails its checks (CRC, framing, offsets): it is not served.
    #[error("corrupt batch in segment {segment} at position {}: {error}", position.0)]
    Corrupt {
        /// Base offset of the segment.
        segment: Offset,
        /// Position of the batch in the segment file.
        position: FilePos,
        /// What is wrong.
        #[source]
        error: BatchError,
    },
    /// A read failed.
    #[error("read failed: {0}")]
    Io(#[source] Arc<io::Error>),
    /// The log is closed.
    #[error("log is closed")]
    Closed,
}

/// Why a maintenance operation (retention, delete-records, truncation, close, remove) failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The offset is outside what the operation accepts.
    #[error("offset {requested} out of range [{log_start}, {log_end}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: Offset,
        /// The log start offset.
        log_start: Offset,
        /// The log end offset.
        log_end: Offset,
    },
    /// A batch needed by the operation fails its checks.
    #[error("corrupt batch in segment {segment} at position {}: {error}", position.0)]
    Corrupt {
        /// Base offset of the segment.
        segment: Offset,
        /// Position of the batch.
        position: FilePos,
        /// What is wrong.
        #[source]
        error: BatchError,
    },
    /// A file operation failed.
    #[error("io error: {0}")]
    Io(#[source] Arc<io::Error>),
    /// The log is closing or closed.
    #[error("log is closed")]
    Closed,
    /// The log failed after a sync error; reopen it.
    #[error("log failed after a sync error; reopen it")]
    Failed,
    /// A forced roll when the partition holds the most segments it may
    /// ([`crate::limits::SEGMENTS_MAX`]).
    #[error("partition holds {segments} segments, the most it may")]
    SegmentLimit {
        /// Segments the log holds, rolls queued included.
        segments: usize,
        /// The limit.
        limit: usize,
    },
}

impl From<io::Error> for AdminError {
    fn from(error: io::Error) -> AdminError {
        AdminError::Io(Arc::new(error))
    }
}

impl From<ReadError> for AdminError {
    fn from(error: ReadError) -> AdminError {
        match error {
            ReadError::OffsetOutOfRange {
                requested,
                log_start,
                log_end,
            } => AdminError::OffsetOutOfRange {
                requested,
                log_start,
                log_end,
            },
            ReadError::Corrupt {
                segment,
                position,
                error,
            } => AdminError::Corrupt {
                segment,
                position,
                error,
            },
            ReadError::Io(error) => AdminError::Io(error),
            ReadError::Closed => AdminError::Closed,
        }
    }
}
