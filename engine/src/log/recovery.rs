//! Opening a partition log: reading the checkpoint and the clean-shutdown marker, trusting the
//! sealed segments the checkpoint lists (with cheap index checks), scanning the tail segments
//! (CRC, framing, offset continuity), truncating a torn or corrupt tail at the last whole batch,
//! rebuilding damaged or missing indexes, rebuilding the leader-epoch cache from the epoch file
//! and the scanned batch headers, and reporting all of it ([`RecoveryReport`]).
//!
//! The rules are specified in `engine/FORMAT.md` §Recovery.
//!
//! Must not depend on: the write queue (the log is not yet shared while it opens).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use crate::batch::BatchError;
use crate::io::{self as dio, File, SyncMode, align_down};
use crate::limits::{
    DIO_ALIGN_BYTES, EPOCH_FILE_BYTES_MAX, OFFSET_INDEX_ENTRY_BYTES, SEGMENTS_MAX,
    TIME_INDEX_ENTRY_BYTES,
};
use crate::log::admin::write_active_index;
use crate::log::cache::BatchCache;
use crate::log::checkpoint::{
    CHECKPOINT_FILE, CLEAN_BYTES_MAX, CLEAN_SHUTDOWN_FILE, Checkpoint, CleanShutdown, DecodeError,
    EPOCH_FILE, SealedRow, decode_epochs, encode_epochs,
};
use crate::log::epoch::{
    DAMAGED_EPOCHS_REPORTED_MAX, DamagedEpoch, EpochCache, EpochEntry, EpochScan,
};
use crate::log::index::{
    EntryBounds, IndexBuilder, IndexDamage, IndexFile, check_offset_entries, check_time_entries,
};
use crate::log::segment::{
    ActiveSegment, INDEX_EXTENSION, LOG_EXTENSION, ScanItem, Scanner, Segment, Spare,
    TIME_INDEX_EXTENSION, file_path, parse_file_name, parse_recycle_file_name, recycle_file_name,
    segments_max,
};
use crate::log::writer::{checkpoint_of, create_segment, cursor_of_active, sealed_row};
use crate::log::{Inner, LogConfig, LogStats, Mode, OpenError, State};
use crate::rt::sync::Semaphore;
use crate::types::{FilePos, Offset, TopicPartition};

/// What opening a log found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The partition directory was empty and a new log was created.
    pub created: bool,
    /// A valid clean-shutdown marker matched the active segment: nothing was scanned.
    pub clean_shutdown: bool,
    /// State of the checkpoint file.
    pub checkpoint: CheckpointStatus,
    /// State of the leader-epoch checkpoint. When not valid, the epoch cache was rebuilt from
    /// the batch headers of every segment.
    pub epoch_checkpoint: CheckpointStatus,
    /// Base offsets of the segments whose batches were scanned and CRC-checked.
    pub scanned_segments: Vec<Offset>,
    /// Tails cut off at the last whole batch.
    pub truncations: Vec<Truncation>,
    /// Segments deleted: after a truncated segment (the log cannot continue past it), or left
    /// below the log start by an interrupted deletion.
    pub deleted_segments: Vec<Offset>,
    /// Index files rewritten, and why.
    pub rebuilt_indexes: Vec<RebuiltIndex>,
    /// Stray files removed (temporary files, indexes without a segment).
    pub removed_files: Vec<String>,
    /// Batches whose leader epoch field (outside the batch CRC) contradicts the batches around
    /// it or the epoch file, so the epoch cache did not learn it; the batches are kept (at
    /// most 64 are listed, the first ones).
    pub damaged_epochs: Vec<DamagedEpoch>,
    /// The log start offset after opening.
    pub log_start_offset: Offset,
    /// The log end offset after opening.
    pub log_end_offset: Offset,
}

impl RecoveryReport {
    /// Bytes discarded by truncations.
    pub fn truncated_bytes(&self) -> u64 {
        self.truncations
            .iter()
            .map(|truncation| truncation.bytes)
            .sum()
    }

    /// True when nothing was truncated, deleted or rebuilt, and no damaged epoch was found.
    pub fn is_clean(&self) -> bool {
        self.truncations.is_empty()
            && self.deleted_segments.is_empty()
            && self.rebuilt_indexes.is_empty()
            && self.damaged_epochs.is_empty()
    }
}

/// State of the checkpoint file at open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointStatus {
    /// Present and valid: segments it lists were trusted.
    #[default]
    Valid,
    /// Absent: every segment was scanned.
    Missing,
    /// Present but unusable (the reason): every segment was scanned.
    Damaged(String),
}

/// A tail cut off during recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    /// Base offset of the segment.
    pub segment: Offset,
    /// Where the segment now ends.
    pub position: FilePos,
    /// Bytes of non-zero data discarded from there (measured up to a bound).
    pub bytes: u64,
    /// Why the bytes at `position` were not a valid next batch.
    pub reason: TruncationReason,
}

/// Why recovery truncated.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TruncationReason {
    /// The bytes fail the batch checks (length, magic, CRC, or cut short).
    InvalidBatch(BatchError),
    /// A valid batch that does not continue the offsets.
    OffsetGap {
        /// The offset the log continues at.
        expected: Offset,
        /// The batch's base offset.
        found: Offset,
    },
}

/// Which index of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexKind {
    /// The `.index` file.
    Offset,
    /// The `.timeindex` file.
    Time,
}

/// An index file recovery rewrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebuiltIndex {
    /// Base offset of the segment.
    pub segment: Offset,
    /// Which index.
    pub kind: IndexKind,
    /// What was wrong with it.
    pub damage: IndexDamage,
}

/// The result of walking a segment's batches.
pub(crate) struct ScanOutcome {
    /// Position after the last good batch.
    pub end_position: u64,
    /// Offset after the last good batch.
    pub end_offset: Offset,
    pub offsets: Vec<u8>,
    pub times: Vec<u8>,
    pub builder: IndexBuilder,
    /// The first bad position and why, if the walk stopped before a clean end.
    pub stop: Option<(u64, TruncationReason)>,
}

/// Walks a segment from the start to `limit`, checking framing (and CRCs when `verify_crc`)
/// and that offsets continue from `base`, builds its indexes by the write path's rule, and
/// feeds the good batches' leader epochs to `epochs`.
pub(crate) async fn scan_segment(
    file: File,
    base: Offset,
    limit: u64,
    interval: u64,
    verify_crc: bool,
    epochs: &mut EpochScan,
) -> io::Result<(ScanOutcome, Scanner)> {
    let mut scanner = Scanner::new(file, 0, limit, verify_crc);
    let mut outcome = ScanOutcome {
        end_position: 0,
        end_offset: base,
        offsets: Vec::new(),
        times: Vec::new(),
        builder: IndexBuilder::new(base, interval),
        stop: None,
    };
    loop {
        match scanner.next().await? {
            ScanItem::Batch { header, position } => {
                if header.base_offset != outcome.end_offset {
                    let reason = TruncationReason::OffsetGap {
                        expected: outcome.end_offset,
                        found: header.base_offset,
                    };
                    outcome.stop = Some((position, reason));
                    break;
                }
                let entries =
                    outcome
                        .builder
                        .on_batch(header.base_offset, position, header.max_timestamp);
                if let Some(entry) = entries.offset {
                    outcome.offsets.extend_from_slice(&entry.encode());
                }
                if let Some(entry) = entries.time {
                    outcome.times.extend_from_slice(&entry.encode());
                }
                epochs.batch(header.leader_epoch, header.base_offset);
                outcome.end_offset = header.next_offset();
                outcome.end_position = position + header.total_bytes() as u64;
            }
            ScanItem::End { position } => {
                assert_eq!(position, outcome.end_position, "scan end moved");
                break;
            }
            ScanItem::Invalid { position, error } => {
                outcome.stop = Some((position, TruncationReason::InvalidBatch(error)));
                break;
            }
        }
    }
    assert!(
        outcome.end_position <= limit,
        "scan of segment {base} ended past its limit"
    );
    Ok((outcome, scanner))
}

fn io_error(path: &Path) -> impl Fn(io::Error) -> OpenError + '_ {
    move |error| OpenError::io(path, error)
}

/// Reads a whole index file; `None` when missing.
async fn read_index(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match dio::open_read(path).await {
        Ok(file) => {
            let read = async {
                let len = dio::file_len(&file).await?;
                let len = usize::try_from(len).map_err(io::Error::other)?;
                Ok(dio::read_at(&file, 0, len).await?.to_vec())
            }
            .await;
            dio::close(file).await?;
            read.map(Some)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Names what is wrong with an index file that does not match what its segment gives. An
/// active index may end mid-entry (it is flushed in whole blocks), so only its whole entries
/// are checked.
fn classify(
    on_disk: Option<&[u8]>,
    expected: &[u8],
    kind: IndexKind,
    bounds: EntryBounds,
    active: bool,
) -> IndexDamage {
    let Some(on_disk) = on_disk else {
        return IndexDamage::Missing;
    };
    let entry_bytes = match kind {
        IndexKind::Offset => OFFSET_INDEX_ENTRY_BYTES,
        IndexKind::Time => TIME_INDEX_ENTRY_BYTES,
    };
    let whole = if active {
        on_disk.len() - on_disk.len() % entry_bytes
    } else {
        on_disk.len()
    };
    let checked = match kind {
        IndexKind::Offset => check_offset_entries(&on_disk[..whole], bounds, None),
        IndexKind::Time => check_time_entries(&on_disk[..whole], bounds, None),
    };
    if let Err(damage) = checked {
        return damage;
    }
    if on_disk.len() < expected.len() && expected.starts_with(on_disk) {
        IndexDamage::Incomplete
    } else {
        IndexDamage::Mismatch
    }
}

/// Writes a sealed segment's index exactly (padded write, trim, sync).
async fn write_sealed_index(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let file = dio::open_or_create(path).await?;
    let result = async {
        dio::truncate(&file, 0).await?;
        if !bytes.is_empty() {
            let buffer = dio::aligned_buffer(&file, &[bytes]);
            dio::write_at(&file, buffer, 0).await?;
        }
        dio::truncate(&file, bytes.len() as u64).await?;
        dio::sync(&file).await
    }
    .await;
    dio::close(file).await?;
    result
}

/// Makes a scanned segment's index file match `expected`; reports a rewrite. For the active
/// segment, a file holding a prefix of `expected` covering its whole blocks is already right
/// (the write path flushes only whole blocks), and the result keeps the rest in memory.
async fn reconcile_index(
    dir: &Path,
    segment: &Segment,
    kind: IndexKind,
    expected: &[u8],
    active: bool,
    report: &mut RecoveryReport,
) -> Result<Option<IndexFile>, OpenError> {
    let path = file_path(
        dir,
        segment.base,
        if kind == IndexKind::Offset {
            INDEX_EXTENSION
        } else {
            TIME_INDEX_EXTENSION
        },
    );
    let mut on_disk = read_index(&path).await.map_err(io_error(&path))?;
    let whole_blocks = usize::try_from(align_down(expected.len() as u64)).expect("fits");
    if active && on_disk.is_none() && whole_blocks == 0 {
        // An active index file appears with its first whole block: while its entries fit in
        // memory, a missing file is the normal state, an empty index on disk.
        on_disk = Some(Vec::new());
    }
    let good = on_disk.as_deref().is_some_and(|on_disk| {
        if active {
            on_disk.len() <= expected.len()
                && on_disk.len() >= whole_blocks
                && expected.starts_with(on_disk)
        } else {
            on_disk == expected
        }
    });
    let bounds = bounds_of(segment);
    if !good {
        let damage = classify(on_disk.as_deref(), expected, kind, bounds, active);
        report.rebuilt_indexes.push(RebuiltIndex {
            segment: segment.base,
            kind,
            damage,
        });
        if !active {
            write_sealed_index(&path, expected)
                .await
                .map_err(io_error(&path))?;
        }
    }
    if !active {
        return Ok(None);
    }
    if good {
        // The file holds at least the whole blocks: memory continues from there (a partial
        // block the file may also hold is rewritten by the next flush).
        let disk_bytes = whole_blocks as u64;
        return Ok(Some(IndexFile::new(
            path,
            disk_bytes,
            expected[whole_blocks..].to_vec(),
        )));
    }
    let index = write_active_index(path.clone(), expected)
        .await
        .map_err(io_error(&path))?;
    Ok(Some(index))
}

fn bounds_of(segment: &Segment) -> EntryBounds {
    EntryBounds {
        relative_end: u64::try_from(segment.end.0 - segment.base.0).expect("end >= base"),
        size: segment.size,
    }
}

/// Cheap checks of a trusted sealed segment's index: size as recorded, and the first and last
/// windows (one block each) well-formed and within the segment.
async fn check_sealed_index(
    path: &Path,
    recorded: u64,
    kind: IndexKind,
    bounds: EntryBounds,
) -> io::Result<Option<IndexDamage>> {
    let file = match dio::open_read(path).await {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Ok(Some(IndexDamage::Missing));
        }
        Err(error) => return Err(error),
    };
    let result = check_index_file(&file, recorded, kind, bounds).await;
    dio::close(file).await?;
    result
}

/// [`check_sealed_index`] on an open file.
async fn check_index_file(
    file: &File,
    recorded: u64,
    kind: IndexKind,
    bounds: EntryBounds,
) -> io::Result<Option<IndexDamage>> {
    let len = dio::file_len(file).await?;
    if len != recorded || !len.is_multiple_of(entry_bytes(kind)) {
        return Ok(Some(IndexDamage::WrongSize));
    }
    check_index_windows(file, len, kind, bounds).await
}

/// Checks the first and the last window (one block each) of the first `whole` bytes of an
/// index file, a whole number of entries: well-formed and within the segment.
async fn check_index_windows(
    file: &File,
    whole: u64,
    kind: IndexKind,
    bounds: EntryBounds,
) -> io::Result<Option<IndexDamage>> {
    let entry = entry_bytes(kind);
    assert!(whole.is_multiple_of(entry), "whole entries");
    let window = (DIO_ALIGN_BYTES as u64 / entry) * entry;
    let first_len = whole.min(window);
    let last_from = whole - first_len;
    for from in [0, last_from] {
        let bytes =
            dio::read_at(file, from, usize::try_from(first_len).expect("one block")).await?;
        if bytes.len() as u64 != first_len {
            return Ok(Some(IndexDamage::WrongSize));
        }
        let checked = match kind {
            IndexKind::Offset => check_offset_entries(&bytes, bounds, None),
            IndexKind::Time => check_time_entries(&bytes, bounds, None),
        };
        if let Err(damage) = checked {
            return Ok(Some(damage));
        }
    }
    Ok(None)
}

fn entry_bytes(kind: IndexKind) -> u64 {
    match kind {
        IndexKind::Offset => OFFSET_INDEX_ENTRY_BYTES as u64,
        IndexKind::Time => TIME_INDEX_ENTRY_BYTES as u64,
    }
}

/// Rebuilds a trusted sealed segment's damaged indexes from its batches (framing only: the
/// segment's CRCs are checked when its batches are read).
async fn repair_sealed(
    dir: &Path,
    segment: &Segment,
    damaged: [Option<IndexDamage>; 2],
    interval: u64,
    report: &mut RecoveryReport,
) -> Result<(), OpenError> {
    let log_path = file_path(dir, segment.base, LOG_EXTENSION);
    let file = dio::open_read(&log_path)
        .await
        .map_err(io_error(&log_path))?;
    let mut epochs = EpochScan::default();
    let (mut outcome, _) = scan_segment(
        file,
        segment.base,
        segment.size,
        interval,
        false,
        &mut epochs,
    )
    .await
    .map_err(io_error(&log_path))?;
    if let Some(entry) = outcome.builder.on_seal() {
        outcome.times.extend_from_slice(&entry.encode());
    }
    for (slot, damage) in damaged.into_iter().enumerate() {
        let Some(damage) = damage else { continue };
        let (kind, extension, bytes) = if slot == 0 {
            (IndexKind::Offset, INDEX_EXTENSION, &outcome.offsets)
        } else {
            (IndexKind::Time, TIME_INDEX_EXTENSION, &outcome.times)
        };
        let path = file_path(dir, segment.base, extension);
        write_sealed_index(&path, bytes)
            .await
            .map_err(io_error(&path))?;
        report.rebuilt_indexes.push(RebuiltIndex {
            segment: segment.base,
            kind,
            damage,
        });
    }
    Ok(())
}

/// Files of the partition directory by segment.
#[derive(Default)]
struct DiskSegments {
    bases: BTreeMap<Offset, [bool; 3]>,
    /// The retired segment file kept for reuse.
    spare: Option<Spare>,
}

async fn list_segments(dir: &Path, report: &mut RecoveryReport) -> Result<DiskSegments, OpenError> {
    let names = dio::list_dir(dir).map_err(io_error(dir))?;
    let mut disk = DiskSegments::default();
    for name in &names {
        if name.ends_with(".tmp") {
            let path = dir.join(name);
            dio::remove(&path).await.map_err(io_error(&path))?;
            report.removed_files.push(name.clone());
            continue;
        }
        if let Some(end) = parse_recycle_file_name(name) {
            // One is kept (the newest, should a crash between removing the old one and
            // retiring the new one have left two); its size tells how far it is written.
            let path = dir.join(name);
            let keep = disk.spare.is_none_or(|spare| spare.end < end);
            let dropped = if keep {
                let bytes = dio::path_len(&path).map_err(io_error(&path))?;
                disk.spare
                    .replace(Spare { end, bytes })
                    .map(|spare| spare.end)
            } else {
                Some(end)
            };
            if let Some(dropped) = dropped {
                let name = recycle_file_name(dropped);
                let path = dir.join(&name);
                dio::remove(&path).await.map_err(io_error(&path))?;
                report.removed_files.push(name);
            }
            continue;
        }
        let Some((base, extension)) = parse_file_name(name) else {
            continue;
        };
        let slot = match extension {
            LOG_EXTENSION => 0,
            INDEX_EXTENSION => 1,
            _ => 2,
        };
        disk.bases.entry(base).or_default()[slot] = true;
    }
    let orphans: Vec<(Offset, [bool; 3])> = disk
        .bases
        .iter()
        .filter(|(_, files)| !files[0])
        .map(|(base, files)| (*base, *files))
        .collect();
    for (base, files) in orphans {
        for (slot, extension) in [(1, INDEX_EXTENSION), (2, TIME_INDEX_EXTENSION)] {
            if files[slot] {
                let path = file_path(dir, base, extension);
                dio::remove(&path).await.map_err(io_error(&path))?;
                report.removed_files.push(
                    path.file_name()
                        .expect("named")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
        disk.bases.remove(&base);
    }
    if disk.bases.len() > segments_max() {
        return Err(OpenError::TooManySegments {
            path: dir.to_path_buf(),
            count: disk.bases.len(),
        });
    }
    Ok(disk)
}

async fn read_checkpoint(
    dir: &Path,
    report: &mut RecoveryReport,
) -> Result<Option<Checkpoint>, OpenError> {
    let path = dir.join(CHECKPOINT_FILE);
    let len_max = SEGMENTS_MAX * 40 + DIO_ALIGN_BYTES;
    let Some(bytes) = dio::read_small_file(&path, len_max)
        .await
        .map_err(io_error(&path))?
    else {
        report.checkpoint = CheckpointStatus::Missing;
        return Ok(None);
    };
    match Checkpoint::decode(&bytes) {
        Ok(checkpoint) => {
            let rows = &checkpoint.sealed;
            let ordered = rows.windows(2).all(|pair| pair[0].end == pair[1].base)
                && rows.iter().all(|row| row.end > row.base && row.base.0 >= 0)
                && rows
                    .last()
                    .is_none_or(|last| last.end == checkpoint.recovery_point)
                && checkpoint.log_start.0 >= 0;
            if ordered {
                report.checkpoint = CheckpointStatus::Valid;
                Ok(Some(checkpoint))
            } else {
                report.checkpoint = CheckpointStatus::Damaged("inconsistent segment table".into());
                Ok(None)
            }
        }
        Err(DecodeError::Damaged(reason)) => {
            report.checkpoint = CheckpointStatus::Damaged(reason.into());
            Ok(None)
        }
        Err(DecodeError::Version(version)) => Err(OpenError::Format {
            path,
            reason: format!("checkpoint format version {version}, this build reads version 1"),
        }),
    }
}

/// Reads the leader-epoch checkpoint; a missing or damaged file is reported and gives `None`.
async fn read_epoch_file(
    dir: &Path,
    report: &mut RecoveryReport,
) -> Result<Option<EpochCache>, OpenError> {
    let path = dir.join(EPOCH_FILE);
    let Some(bytes) = dio::read_small_file(&path, EPOCH_FILE_BYTES_MAX)
        .await
        .map_err(io_error(&path))?
    else {
        report.epoch_checkpoint = CheckpointStatus::Missing;
        return Ok(None);
    };
    match decode_epochs(&bytes) {
        Ok(epochs) => {
            report.epoch_checkpoint = CheckpointStatus::Valid;
            Ok(Some(epochs))
        }
        Err(DecodeError::Damaged(reason)) => {
            tracing::warn!(path = %path.display(), reason, "epoch checkpoint damaged; rebuilding");
            report.epoch_checkpoint = CheckpointStatus::Damaged(reason.into());
            Ok(None)
        }
        Err(DecodeError::Version(version)) => Err(OpenError::Format {
            path,
            reason: format!("epoch checkpoint version {version}, this build reads version 1"),
        }),
    }
}

/// The epoch cache of the recovered log (`engine/FORMAT.md` §7): entries below the first
/// scanned segment come from the epoch file (written before every checkpoint that moved the
/// recovery point past them) or, when the file is unusable, from a header walk of those
/// segments; entries from there on come from the batches just scanned, and those of an active
/// segment opened from a clean-shutdown marker that carries them (`clean`: its base and
/// entries) from the marker. Epochs read from batch headers are learned as [`EpochScan`] says,
/// and a scanned one below an epoch taken from the file (or an earlier header) is not learned
/// either: both are reported. Then entries past the log end are dropped and entries wholly
/// below the log start pruned.
async fn recover_epochs(
    dir: &Path,
    segments: &VecDeque<Segment>,
    file: Option<&EpochCache>,
    scanned: &[EpochEntry],
    clean: Option<(Offset, &[EpochEntry])>,
    report: &mut RecoveryReport,
    interval: u64,
) -> Result<EpochCache, OpenError> {
    let written = segments.back().expect("active segment").end;
    let scanned_from = report.scanned_segments.first().copied().unwrap_or(written);
    // The marker's entries are those starting in its segment: the epoch file supplies the
    // ones below. A header walk (no usable file) covers the marker's segment too, since the
    // epoch that was current when it began starts below it.
    let file_from = clean.map_or(scanned_from, |(base, _)| scanned_from.min(base));
    let mut epochs = EpochCache::default();
    match file {
        Some(file) => {
            for entry in file.entries() {
                if entry.start_offset < file_from {
                    epochs.assign(entry.epoch, entry.start_offset);
                }
            }
        }
        None => {
            let mut walk = EpochScan::default();
            for segment in segments
                .iter()
                .filter(|s| s.base < scanned_from && s.size > 0)
            {
                let path = file_path(dir, segment.base, LOG_EXTENSION);
                let log = dio::open_read(&path).await.map_err(io_error(&path))?;
                scan_segment(log, segment.base, segment.size, interval, false, &mut walk)
                    .await
                    .map_err(io_error(&path))?;
            }
            let (walked, damaged) = walk.finish();
            for entry in walked {
                epochs.assign(entry.epoch, entry.start_offset);
            }
            report.damaged_epochs.extend(damaged);
        }
    }
    for entry in scanned {
        if epochs.latest().is_some_and(|latest| entry.epoch < latest) {
            // Epochs never decrease along a log: this header's field is damaged.
            tracing::warn!(offset = %entry.start_offset, epoch = ?entry.epoch,
                "scanned leader epoch below the log's earlier ones; not learned");
            report.damaged_epochs.push(DamagedEpoch {
                offset: entry.start_offset,
                epoch: entry.epoch,
            });
            continue;
        }
        epochs.assign(entry.epoch, entry.start_offset);
    }
    report.damaged_epochs.sort_by_key(|damaged| damaged.offset);
    report.damaged_epochs.truncate(DAMAGED_EPOCHS_REPORTED_MAX);
    for entry in clean.map_or(&[][..], |(_, entries)| entries) {
        epochs.assign(entry.epoch, entry.start_offset);
    }
    epochs.truncate_from_end(written);
    let log_start = report.log_start_offset;
    epochs.prune_before(log_start);
    Ok(epochs)
}

/// Reads the clean-shutdown marker and, when it is valid, invalidates it on disk before
/// anything else changes: from here on, a crash must be recovered from.
///
/// The marker is invalidated in place (its first block overwritten with zeros) rather than
/// removed, and made durable by a shared sync (partitions opening together share one): a
/// removal would need a directory fsync per partition, and opening 10,000 partitions after a
/// clean shutdown spent most of its 16 s in those (perf/RESULTS.md). A zeroed or torn marker
/// fails its magic and CRC checks, so it never vouches for anything.
async fn take_clean_marker(dir: &Path) -> Result<Option<CleanShutdown>, OpenError> {
    let path = dir.join(CLEAN_SHUTDOWN_FILE);
    let bytes = dio::read_small_file(&path, CLEAN_BYTES_MAX)
        .await
        .map_err(io_error(&path))?;
    let marker = bytes.and_then(|bytes| CleanShutdown::decode(&bytes).ok());
    if marker.is_some() {
        dio::write_small_file_in_place(&path, &[0u8; DIO_ALIGN_BYTES], SyncMode::Shared)
            .await
            .map_err(io_error(&path))?;
        let after = dio::read_small_file(&path, CLEAN_BYTES_MAX)
            .await
            .map_err(io_error(&path))?;
        assert!(
            after.is_none_or(|bytes| CleanShutdown::decode(&bytes).is_err()),
            "{}: clean-shutdown marker still valid after invalidation",
            path.display()
        );
    }
    Ok(marker)
}

async fn delete_segment_files(dir: &Path, base: Offset) -> Result<(), OpenError> {
    for extension in [LOG_EXTENSION, INDEX_EXTENSION, TIME_INDEX_EXTENSION] {
        let path = file_path(dir, base, extension);
        dio::remove(&path).await.map_err(io_error(&path))?;
    }
    Ok(())
}

/// Reads the partial last block `[align_down(size), size)` of a segment.
async fn read_tail(file: &File, size: u64) -> io::Result<Vec<u8>> {
    let from = align_down(size);
    let len = usize::try_from(size - from).expect("below a block");
    let tail = dio::read_at(file, from, len).await?;
    if tail.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "segment shorter than its size",
        ));
    }
    Ok(tail.to_vec())
}

/// Opens the active segment as the clean-shutdown marker describes it, if everything matches.
async fn open_clean(
    dir: &Path,
    marker: &CleanShutdown,
    config: &LogConfig,
) -> io::Result<Option<(Segment, ActiveSegment)>> {
    let base = marker.active_base;
    let log = dio::open_read_write(&file_path(dir, base, LOG_EXTENSION)).await?;
    if dio::file_len(&log).await? != marker.active_size {
        return Ok(None);
    }
    let segment = Segment {
        base,
        end: marker.log_end,
        size: marker.active_size,
        max_timestamp: marker.max.map(|(ts, _)| ts),
        index_bytes: 0,
        time_index_bytes: 0,
        sealed: false,
    };
    let bounds = bounds_of(&segment);
    let mut indexes = Vec::with_capacity(2);
    for (kind, extension, recorded, tail) in [
        (
            IndexKind::Offset,
            INDEX_EXTENSION,
            marker.index_bytes,
            &marker.index_tail,
        ),
        (
            IndexKind::Time,
            TIME_INDEX_EXTENSION,
            marker.time_index_bytes,
            &marker.time_index_tail,
        ),
    ] {
        let path = file_path(dir, base, extension);
        // The close left the file as the writer keeps it while open (the index's whole blocks;
        // no file while there are none) and put the partial last block in the marker. Bytes
        // past the whole blocks (an older partial block) are ignored: the next write of that
        // block replaces them.
        let disk_bytes = align_down(u64::from(recorded));
        let usable = match dio::open_read(&path).await {
            Err(error) if error.kind() == io::ErrorKind::NotFound => disk_bytes == 0,
            Err(error) => return Err(error),
            Ok(file) => {
                let checked: io::Result<bool> = async {
                    let len = dio::file_len(&file).await?;
                    if len < disk_bytes || len - disk_bytes >= DIO_ALIGN_BYTES as u64 {
                        return Ok(false);
                    }
                    let whole = disk_bytes - disk_bytes % entry_bytes(kind);
                    Ok(check_index_windows(&file, whole, kind, bounds)
                        .await?
                        .is_none())
                }
                .await;
                dio::close(file).await?;
                checked?
            }
        };
        if !usable {
            return Ok(None);
        }
        indexes.push(IndexFile::new(path, disk_bytes, tail.clone()));
    }
    let time_index = indexes.pop().expect("two indexes");
    let index = indexes.pop().expect("two indexes");
    let tail = read_tail(&log, marker.active_size).await?;
    let builder = IndexBuilder::resume(
        base,
        u64::from(config.index_interval_bytes),
        crate::log::index::BuilderResume {
            last_indexed_position: marker.last_indexed_position,
            last_relative: marker.last_relative,
            max: marker.max,
            last_time_entry: marker.last_time_entry,
            first_max_timestamp: marker.first_max_timestamp,
        },
    );
    let active = ActiveSegment {
        base,
        log,
        // The previous close left all three files exact and synced, and they were checked.
        files_exact: true,
        tail,
        allocated: marker.active_size,
        index,
        time_index,
        builder,
    };
    Ok(Some((segment, active)))
}

/// Scans a tail segment; truncates it at the last whole batch if needed. Returns the segment
/// and its scan.
async fn scan_tail_segment(
    dir: &Path,
    base: Offset,
    config: &LogConfig,
    report: &mut RecoveryReport,
    epochs: &mut EpochScan,
) -> Result<(Segment, ScanOutcome, File), OpenError> {
    let path = file_path(dir, base, LOG_EXTENSION);
    let file = dio::open_read_write(&path).await.map_err(io_error(&path))?;
    let len = dio::file_len(&file).await.map_err(io_error(&path))?;
    let (outcome, mut scanner) = scan_segment(
        file.clone(),
        base,
        len,
        u64::from(config.index_interval_bytes),
        true,
        epochs,
    )
    .await
    .map_err(io_error(&path))?;
    report.scanned_segments.push(base);
    if let Some((position, reason)) = &outcome.stop {
        assert_eq!(
            *position, outcome.end_position,
            "segment {base}: stop at the end of good data"
        );
        let bytes = scanner
            .garbage_bytes(*position)
            .await
            .map_err(io_error(&path))?;
        tracing::warn!(segment = %base, position, bytes, ?reason, "truncating segment tail");
        report.truncations.push(Truncation {
            segment: base,
            position: FilePos(*position),
            bytes,
            reason: reason.clone(),
        });
    }
    if len > outcome.end_position {
        // Drop the preallocated space and anything invalid after the last batch, so stale
        // bytes can never be mistaken for batches later.
        dio::truncate(&file, outcome.end_position)
            .await
            .map_err(io_error(&path))?;
    }
    dio::sync(&file).await.map_err(io_error(&path))?;
    let segment = Segment {
        base,
        end: outcome.end_offset,
        size: outcome.end_position,
        max_timestamp: outcome.builder.max_timestamp(),
        index_bytes: 0,
        time_index_bytes: 0,
        sealed: false,
    };
    Ok((segment, outcome, file))
}

/// The checkpoint of the segments recovered so far (`segments`, the last of them the active
/// one when `active`), written before open deletes a segment the checkpoint on disk lists.
/// The recovery point moves down, never up, so the epoch file on disk still holds every entry
/// below it.
fn open_shorter_checkpoint(
    segments: &[Segment],
    active: bool,
    checkpoint: &Option<Checkpoint>,
) -> Checkpoint {
    let checkpoint = checkpoint
        .as_ref()
        .expect("only a checkpoint lists segments");
    let end = segments
        .last()
        .map_or(checkpoint.recovery_point, |segment| segment.end);
    let sealed_count = segments.len() - usize::from(active);
    let sealed: Vec<SealedRow> = segments[..sealed_count].iter().map(sealed_row).collect();
    let recovery_point = if active {
        segments.last().expect("active segment").base
    } else {
        end
    };
    assert!(
        recovery_point <= checkpoint.recovery_point,
        "shorter checkpoint raises the recovery point"
    );
    Checkpoint {
        log_start: checkpoint.log_start.min(end),
        high_watermark: checkpoint.high_watermark.min(end),
        recovery_point,
        sealed,
    }
}

/// See [`crate::log::PartitionLog::open`].
pub(crate) async fn open(
    dir: &Path,
    tp: TopicPartition,
    config: LogConfig,
    cache: Rc<BatchCache>,
) -> Result<(Inner, RecoveryReport), OpenError> {
    config.validate()?;
    let dir: PathBuf = dir.to_path_buf();
    // New directory entries (this partition's directory, a new active segment) are made
    // durable by one shared sync at the end, which partitions opening together share.
    let mut unsynced = dio::create_dir(&dir).map_err(io_error(&dir))?;
    let mut report = RecoveryReport::default();
    let marker = take_clean_marker(&dir).await?;
    let disk = list_segments(&dir, &mut report).await?;
    let checkpoint = read_checkpoint(&dir, &mut report).await?;
    let interval = u64::from(config.index_interval_bytes);

    // Trusted sealed segments: those the checkpoint lists, while their files match it.
    let rows: Vec<SealedRow> = checkpoint
        .as_ref()
        .map(|checkpoint| checkpoint.sealed.clone())
        .unwrap_or_default();
    for row in &rows {
        if !disk.bases.contains_key(&row.base) {
            return Err(OpenError::MissingSegment {
                path: dir.clone(),
                base: row.base,
            });
        }
    }
    let mut sealed: Vec<Segment> = Vec::new();
    for row in &rows {
        let path = file_path(&dir, row.base, LOG_EXTENSION);
        let file = dio::open_read(&path).await.map_err(io_error(&path))?;
        let len = dio::file_len(&file).await.map_err(io_error(&path))?;
        if len != row.size {
            let (segment, recorded) = (row.base, row.size);
            tracing::warn!(%tp, %segment, len, recorded, "sealed segment size changed; scanning");
            break;
        }
        sealed.push(Segment {
            base: row.base,
            end: row.end,
            size: row.size,
            max_timestamp: row.max_timestamp,
            index_bytes: u64::from(row.index_bytes),
            time_index_bytes: u64::from(row.time_index_bytes),
            sealed: true,
        });
    }
    for segment in &sealed {
        let bounds = bounds_of(segment);
        let mut damaged = [None, None];
        for (slot, (kind, extension, recorded)) in [
            (IndexKind::Offset, INDEX_EXTENSION, segment.index_bytes),
            (
                IndexKind::Time,
                TIME_INDEX_EXTENSION,
                segment.time_index_bytes,
            ),
        ]
        .into_iter()
        .enumerate()
        {
            let path = file_path(&dir, segment.base, extension);
            damaged[slot] = check_sealed_index(&path, recorded, kind, bounds)
                .await
                .map_err(io_error(&path))?;
        }
        if damaged.iter().any(Option::is_some) {
            repair_sealed(&dir, segment, damaged, interval, &mut report).await?;
        }
    }

    // Segments below the trusted ones (or below the recovery point) are leftovers of an
    // interrupted deletion.
    let floor = match (&checkpoint, rows.first()) {
        (_, Some(first)) => first.base,
        (Some(checkpoint), None) => checkpoint.recovery_point,
        (None, None) => Offset(i64::MIN),
    };
    let mut expected = sealed.last().map(|segment| segment.end);
    let mut tail: Vec<Offset> = Vec::new();
    for base in disk.bases.keys() {
        if *base < floor {
            delete_segment_files(&dir, *base).await?;
            report.deleted_segments.push(*base);
        } else if expected.is_none_or(|end| *base >= end) {
            tail.push(*base);
        }
    }

    // The tail: the first segment not trusted onwards. Scanned unless the clean marker
    // vouches for the active segment.
    let mut segments: Vec<Segment> = sealed;
    let mut active: Option<ActiveSegment> = None;
    let mut tail_iter = tail.into_iter().peekable();
    // One scan of the leader epochs across every tail segment scanned, in log order.
    let mut tail_epochs = EpochScan::default();
    let mut shortened = false;
    while let Some(base) = tail_iter.next() {
        if active.is_some() || expected.is_some_and(|end| base != end) {
            if !shortened && rows.iter().any(|row| row.base == base) {
                // Open refuses a checkpoint that lists a missing segment, so before a listed
                // segment goes, a checkpoint that lists none from here on is made durable.
                let shorter = open_shorter_checkpoint(&segments, active.is_some(), &checkpoint);
                let path = dir.join(CHECKPOINT_FILE);
                dio::write_file_atomic(&dir, CHECKPOINT_FILE, &shorter.encode())
                    .await
                    .map_err(io_error(&path))?;
                shortened = true;
            }
            delete_segment_files(&dir, base).await?;
            report.deleted_segments.push(base);
            continue;
        }
        let is_last = tail_iter.peek().is_none();
        if is_last && let Some(marker) = marker.as_ref().filter(|marker| marker.active_base == base)
        {
            let opened = open_clean(&dir, marker, &config)
                .await
                .map_err(io_error(&dir))?;
            if let Some((segment, clean_active)) = opened {
                report.clean_shutdown = true;
                expected = Some(segment.end);
                segments.push(segment);
                active = Some(clean_active);
                continue;
            }
        }
        let (mut segment, mut outcome, file) =
            scan_tail_segment(&dir, base, &config, &mut report, &mut tail_epochs).await?;
        let truncated = outcome.stop.is_some();
        if is_last || truncated || segment.size == 0 {
            let index = reconcile_index(
                &dir,
                &segment,
                IndexKind::Offset,
                &outcome.offsets,
                true,
                &mut report,
            )
            .await?;
            let time_index = reconcile_index(
                &dir,
                &segment,
                IndexKind::Time,
                &outcome.times,
                true,
                &mut report,
            )
            .await?;
            let tail = read_tail(&file, segment.size)
                .await
                .map_err(io_error(&dir))?;
            active = Some(ActiveSegment {
                base,
                log: file,
                // Recovery may have rewritten the indexes without a sync.
                files_exact: false,
                tail,
                allocated: segment.size,
                index: index.expect("active index"),
                time_index: time_index.expect("active index"),
                builder: outcome.builder,
            });
        } else {
            if let Some(entry) = outcome.builder.on_seal() {
                outcome.times.extend_from_slice(&entry.encode());
            }
            reconcile_index(
                &dir,
                &segment,
                IndexKind::Offset,
                &outcome.offsets,
                false,
                &mut report,
            )
            .await?;
            reconcile_index(
                &dir,
                &segment,
                IndexKind::Time,
                &outcome.times,
                false,
                &mut report,
            )
            .await?;
            segment.sealed = true;
            segment.index_bytes = outcome.offsets.len() as u64;
            segment.time_index_bytes = outcome.times.len() as u64;
        }
        expected = Some(segment.end);
        segments.push(segment);
    }
    let active = match active {
        Some(active) => active,
        None => {
            // No usable tail segment: start an empty one where the log ends.
            let base = expected.unwrap_or_else(|| {
                checkpoint
                    .as_ref()
                    .map_or(Offset(0), |c| c.recovery_point.max(c.log_start))
            });
            report.created = segments.is_empty();
            let active = create_segment(&dir, base, interval, 0, None)
                .await
                .map_err(io_error(&dir))?;
            unsynced = true;
            segments.push(Segment::empty(base));
            active
        }
    };
    if !report.deleted_segments.is_empty() || !report.removed_files.is_empty() {
        dio::sync_dir(&dir).await.map_err(io_error(&dir))?;
    }

    let first_base = segments[0].base;
    let written = segments.last().expect("active segment").end;
    let log_start = checkpoint
        .as_ref()
        .map_or(first_base, |c| c.log_start)
        .max(first_base)
        .min(written);
    // The checkpoint's high watermark is the one of its last writing; a clean-shutdown marker
    // carries the one at close (a close does not rewrite the checkpoint for it).
    let clean_marker = marker.as_ref().filter(|_| report.clean_shutdown);
    let high_watermark = clean_marker
        .map(|marker| marker.high_watermark)
        .or(checkpoint.as_ref().map(|c| c.high_watermark))
        .unwrap_or(log_start)
        .min(written)
        .max(log_start);
    assert_eq!(
        active.base,
        segments.last().expect("active").base,
        "{tp}: active segment is the last"
    );
    let segments: VecDeque<Segment> = segments.into();
    for pair in segments.iter().collect::<Vec<_>>().windows(2) {
        assert_eq!(
            pair[0].end, pair[1].base,
            "{tp}: segments not contiguous at {}",
            pair[0].end
        );
        assert!(
            pair[0].sealed,
            "{tp}: segment {} before the active one is not sealed",
            pair[0].base
        );
    }
    report.log_start_offset = log_start;
    report.log_end_offset = written;
    let epoch_file = read_epoch_file(&dir, &mut report).await?;
    let clean_epochs = clean_marker.and_then(|marker| {
        let entries = marker.epochs.as_deref()?;
        Some((marker.active_base, entries))
    });
    let (scanned_epochs, damaged_epochs) = tail_epochs.finish();
    report.damaged_epochs = damaged_epochs;
    let epochs = recover_epochs(
        &dir,
        &segments,
        epoch_file.as_ref(),
        &scanned_epochs,
        clean_epochs,
        &mut report,
        interval,
    )
    .await?;
    assert!(
        epochs
            .entries()
            .last()
            .is_none_or(|last| last.start_offset < written),
        "{tp}: epoch entry past the log end {written}"
    );
    // The epoch file must hold the entries below the recovery point (the active segment's come
    // from its scan after a crash, or from the marker after a clean close). Rewritten only when
    // it does not: a missing file for a log with none there (a new partition) stands as it is.
    let recovery_point = active.base;
    let wanted = epochs.below(recovery_point, log_start);
    let missing_stands = report.epoch_checkpoint == CheckpointStatus::Missing && wanted.is_empty();
    let epochs_persisted = if epoch_file
        .as_ref()
        .map(|file| file.below(recovery_point, log_start))
        != Some(wanted)
        && !missing_stands
    {
        dio::write_file_atomic(&dir, EPOCH_FILE, &encode_epochs(epochs.entries()))
            .await
            .map_err(io_error(&dir))?;
        epochs.clone()
    } else {
        epoch_file.unwrap_or_default()
    };

    let mut state = State {
        segments,
        active,
        log_start,
        high_watermark,
        next_offset: written,
        assign: crate::log::AssignCursor {
            segment_base: Offset(0),
            bytes: 0,
            first_max_timestamp: None,
        },
        written,
        synced: written,
        epochs,
        epochs_persisted,
        // Replaced just below by what is on disk once the checkpoint is current.
        checkpoint_persisted: Checkpoint {
            log_start,
            high_watermark,
            recovery_point: Offset(0),
            sealed: Vec::new(),
        },
        unsynced_records: 0,
        queue: VecDeque::new(),
        queued_bytes: 0,
        writer_running: false,
        writer_kicked: false,
        writer_waker: None,
        flush_due: false,
        flush_timer_armed: false,
        written_waiters: VecDeque::new(),
        synced_waiters: VecDeque::new(),
        idle_waiters: Vec::new(),
        mode: Mode::Open,
        read_memo: Default::default(),
        read_memo_next: 0,
        sealed_file: None,
        read_ahead: None,
        read_ahead_next_id: 0,
        preallocation: Default::default(),
        spare: disk.spare,
        roll_failure: None,
        stats: LogStats::default(),
    };
    state.assign = cursor_of_active(&state);
    let fresh = checkpoint_of(&state);
    // The file is rewritten only when it differs in more than the high watermark, which it
    // holds as of its writing (a clean-shutdown marker carries the newer one). A missing
    // checkpoint means "scan everything; the log starts at its first segment": for a log that
    // is one segment with nothing below it, the same as `fresh`, so a new partition writes no
    // checkpoint until something else changes.
    let missing_stands = report.checkpoint == CheckpointStatus::Missing
        && fresh.sealed.is_empty()
        && fresh.log_start == fresh.recovery_point;
    let on_disk = checkpoint.clone().map(|c| Checkpoint {
        high_watermark: fresh.high_watermark,
        ..c
    });
    let checkpoint_persisted = if on_disk.as_ref() != Some(&fresh) && !missing_stands {
        dio::write_file_atomic(&dir, CHECKPOINT_FILE, &fresh.encode())
            .await
            .map_err(io_error(&dir))?;
        fresh
    } else {
        checkpoint.unwrap_or(Checkpoint {
            high_watermark: fresh.log_start,
            ..fresh
        })
    };
    // A crash may have come before the directory entries of the tail were durable (a partition
    // created, or a segment rolled, just before it; a creation whose shared sync failed).
    unsynced |= !report.scanned_segments.is_empty();
    if unsynced {
        // A new directory or active segment, or a tail recovered after a crash: its entries,
        // and the data directory's entry for its directory, are durable before the log is
        // used.
        dio::sync_file_system(&state.active.log)
            .await
            .map_err(io_error(&dir))?;
    }
    state.checkpoint_persisted = checkpoint_persisted;
    let cache_key = cache.register();
    let inner = Inner {
        tp,
        dir,
        config: Cell::new(config),
        cache,
        cache_key,
        state: RefCell::new(state),
        checkpoint_lock: Semaphore::new(1),
        admin_lock: Semaphore::new(1),
        removed: Cell::new(false),
    };
    Ok((inner, report))
}
