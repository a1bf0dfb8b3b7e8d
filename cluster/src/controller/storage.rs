//! The controller's durable raft state in `DATA/__controller/`: an append-only record log of
//! raft entries and hard states, and a snapshot file holding the metadata snapshot.
//!
//! `raft.log` is a sequence of records `[length u32][crc32c u32][kind u8][body]` (little
//! endian; the CRC covers kind and body; `length` counts kind and body). Kind 1 is one raft
//! `Entry`, kind 2 one `HardState`, both protobuf as raft-rs encodes them. Replaying the records
//! in order into raft-rs's `MemStorage` rebuilds the log: a later entry with an index already
//! present overwrites that suffix, exactly as raft's append did when it was written.
//! Every write is followed by `fdatasync` before the driver lets raft send the messages that
//! depend on it (votes, append acknowledgements), which is what raft requires.
//!
//! Recovery: the first record that is short (torn write) or fails its CRC ends the log; the
//! file is truncated there. Only an unsynced write can be torn, and nothing unsynced was
//! acknowledged to a peer, so dropping it is safe.
//!
//! `snapshot.json` holds the raft snapshot metadata (index, term, voters) and the
//! `MetadataSnapshot` at that index. Taking one writes it atomically (temp file, fsync,
//! rename, fsync directory), then rewrites `raft.log` the same way with only the hard state
//! and the entries after the snapshot: that is the log compaction.
//!
//! Files are written with blocking std I/O; the driver calls these methods on the executor's
//! blocking pool. Must not depend on: the network.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;

use crate::metadata::MetadataSnapshot;

const LOG_FILE: &str = "raft.log";
const SNAPSHOT_FILE: &str = "snapshot.json";
const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
/// Bytes before a record's body: length, CRC, kind.
const RECORD_HEADER_BYTES: usize = 9;
/// Largest record accepted on replay: a metadata command is a few KiB; anything larger is
/// garbage.
const RECORD_BYTES_MAX: usize = 64 << 20;

/// Why the controller's storage failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftStorageError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The snapshot file does not decode.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The snapshot file's content.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotFile {
    index: u64,
    term: u64,
    voters: Vec<u64>,
    metadata: MetadataSnapshot,
}

/// What [`RaftFiles::open`] found.
pub struct Recovered {
    /// The raft log and hard state, ready for a `RawNode`.
    pub storage: MemStorage,
    /// The latest snapshot: raft's view (metadata, data = the JSON) and the decoded metadata.
    pub snapshot: Option<(Snapshot, MetadataSnapshot)>,
    /// Bytes of torn or corrupt tail cut off the log.
    pub truncated_bytes: u64,
    /// Records replayed.
    pub records: usize,
}

/// The open files. Lives on shard 0 of a voter; moved to the blocking pool for each write.
pub struct RaftFiles {
    dir: PathBuf,
    log: File,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RaftStorageError + '_ {
    move |source| RaftStorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn encode_record(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    let length = u32::try_from(body.len() + 1).expect("record fits u32");
    let mut crc = crc32c::crc32c(&[kind]);
    crc = crc32c::crc32c_append(crc, body);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
}

/// Encodes entries then the hard state as log records.
fn encode(entries: &[Entry], hard_state: Option<&HardState>) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let body = entry.write_to_bytes().expect("protobuf encodes an entry");
        encode_record(&mut out, KIND_ENTRY, &body);
    }
    if let Some(hs) = hard_state {
        let body = hs.write_to_bytes().expect("protobuf encodes a hard state");
        encode_record(&mut out, KIND_HARD_STATE, &body);
    }
    out
}

/// A snapshot as raft sees it.
pub fn raft_snapshot(
    index: u64,
    term: u64,
    voters: &[u64],
    metadata: &MetadataSnapshot,
) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let meta = snapshot.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(ConfState::from((voters.to_vec(), Vec::<u64>::new())));
    let file = SnapshotFile {
        index,
        term,
        voters: voters.to_vec(),
        metadata: metadata.clone(),
    };
    snapshot.data = serde_json::to_vec(&file)
        .expect("metadata encodes as JSON")
        .into();
    snapshot
}

/// Decodes the metadata a raft snapshot carries.
pub fn snapshot_metadata(snapshot: &Snapshot) -> Result<MetadataSnapshot, String> {
    serde_json::from_slice::<SnapshotFile>(&snapshot.data)
        .map(|file| file.metadata)
        .map_err(|e| e.to_string())
}

impl RaftFiles {
    /// Opens (or creates) the controller's files in `dir` and replays them. `voters` is the
    /// initial configuration when there is no snapshot yet (the seed list, the same on every
    /// voter).
    pub fn open(dir: &Path, voters: &[u64]) -> Result<(RaftFiles, Recovered), RaftStorageError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let storage = MemStorage::new();
        let snapshot_path = dir.join(SNAPSHOT_FILE);
        let snapshot = match std::fs::read(&snapshot_path) {
            Ok(bytes) => {
                let file: SnapshotFile =
                    serde_json::from_slice(&bytes).map_err(|e| RaftStorageError::Corrupt {
                        path: snapshot_path.clone(),
                        reason: e.to_string(),
                    })?;
                let raft = raft_snapshot(file.index, file.term, &file.voters, &file.metadata);
                storage
                    .wl()
                    .apply_snapshot(raft.clone())
                    .expect("a fresh storage takes any snapshot");
                Some((raft, file.metadata))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                storage.initialize_with_conf_state(ConfState::from((
                    voters.to_vec(),
                    Vec::<u64>::new(),
                )));
                None
            }
            Err(e) => return Err(io(&snapshot_path)(e)),
        };
        let snapshot_index = snapshot.as_ref().map_or(0, |(s, _)| s.get_metadata().index);
        let log_path = dir.join(LOG_FILE);
        let mut log = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes).map_err(io(&log_path))?;
        let (valid, records) = replay(&bytes, &storage, snapshot_index);
        let truncated_bytes = (bytes.len() - valid) as u64;
        if truncated_bytes > 0 {
            tracing::warn!(
                file = %log_path.display(),
                valid,
                truncated_bytes,
                "controller log has a torn or corrupt tail; truncating"
            );
            log.set_len(valid as u64).map_err(io(&log_path))?;
            log.sync_all().map_err(io(&log_path))?;
        }
        let files = RaftFiles {
            dir: dir.to_path_buf(),
            log,
        };
        Ok((
            files,
            Recovered {
                storage,
                snapshot,
                truncated_bytes,
                records,
            },
        ))
    }

    /// Appends `entries` and `hard_state` and makes them durable.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), RaftStorageError> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let path = self.dir.join(LOG_FILE);
        let bytes = encode(entries, hard_state);
        self.log.write_all(&bytes).map_err(io(&path))?;
        self.log.sync_data().map_err(io(&path))?;
        Ok(())
    }

    /// Writes `snapshot` (from raft: taken locally or received from the leader), then
    /// rewrites the log to hold only `hard_state` and `entries` (those after the snapshot).
    pub fn install_snapshot(
        &mut self,
        snapshot: &Snapshot,
        entries: &[Entry],
        hard_state: &HardState,
    ) -> Result<(), RaftStorageError> {
        assert!(
            entries
                .first()
                .is_none_or(|e| e.index == snapshot.get_metadata().index + 1),
            "the log after a snapshot starts right after it"
        );
        let snapshot_path = self.dir.join(SNAPSHOT_FILE);
        write_atomically(&snapshot_path, &snapshot.data)?;
        let log_path = self.dir.join(LOG_FILE);
        write_atomically(&log_path, &encode(entries, Some(hard_state)))?;
        self.log = OpenOptions::new()
            .append(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        Ok(())
    }
}

/// Replays records into `storage`; returns the length of the valid prefix and the record
/// count.
fn replay(bytes: &[u8], storage: &MemStorage, snapshot_index: u64) -> (usize, usize) {
    let mut pos = 0;
    let mut records = 0;
    loop {
        let Some(header) = bytes.get(pos..pos + RECORD_HEADER_BYTES) else {
            return (pos, records);
        };
        let length = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
        if length == 0 || length > RECORD_BYTES_MAX {
            return (pos, records);
        }
        let Some(record) = bytes.get(pos + 8..pos + 8 + length) else {
            return (pos, records);
        };
        if crc32c::crc32c(record) != crc {
            return (pos, records);
        }
        let (kind, body) = (record[0], &record[1..]);
        match kind {
            KIND_ENTRY => {
                let Ok(entry) = Entry::parse_from_bytes(body) else {
                    return (pos, records);
                };
                if entry.index > snapshot_index {
                    let last = raft::Storage::last_index(storage).expect("memory storage answers");
                    if entry.index > last + 1 {
                        // A gap cannot come from raft's own writes: treat it as corruption.
                        return (pos, records);
                    }
                    storage
                        .wl()
                        .append(&[entry])
                        .expect("replayed entries are contiguous");
                }
            }
            KIND_HARD_STATE => {
                let Ok(mut hs) = HardState::parse_from_bytes(body) else {
                    return (pos, records);
                };
                hs.commit = hs.commit.max(snapshot_index);
                storage.wl().set_hardstate(hs);
            }
            _ => return (pos, records),
        }
        pos += 8 + length;
        records += 1;
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), RaftStorageError> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    let dir = path
        .parent()
        .expect("controller files have a parent directory");
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage as _;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
        HardState {
            term,
            vote,
            commit,
            ..Default::default()
        }
    }

    fn last(storage: &MemStorage) -> (u64, HardState) {
        let state = storage.initial_state().expect("state");
        (storage.last_index().expect("last"), state.hard_state)
    }

    // Goal: entries and hard state survive a reopen; a later append at an existing index
    // replaces that suffix, as raft's own append does. Method: write, reopen, compare.
    #[test]
    fn round_trip_and_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut files, recovered) = RaftFiles::open(dir.path(), &[1, 2, 3]).expect("open");
        assert_eq!(recovered.records, 0);
        files
            .append(
                &[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")],
                Some(&hard_state(1, 1, 2)),
            )
            .expect("append");
        files
            .append(&[entry(3, 2, b"C")], Some(&hard_state(2, 2, 3)))
            .expect("overwrite");
        drop(files);
        let (_, recovered) = RaftFiles::open(dir.path(), &[1, 2, 3]).expect("reopen");
        let (index, hs) = last(&recovered.storage);
        assert_eq!(index, 3);
        assert_eq!((hs.term, hs.vote, hs.commit), (2, 2, 3));
        let entries = recovered
            .storage
            .entries(1, 4, None, raft::GetEntriesContext::empty(false))
            .expect("entries");
        let data: Vec<&[u8]> = entries.iter().map(|e| &e.data[..]).collect();
        assert_eq!(data, vec![&b"a"[..], b"b", b"C"]);
        assert_eq!(entries[2].term, 2);
        let conf = recovered.storage.initial_state().expect("state").conf_state;
        assert_eq!(conf.voters, vec![1, 2, 3]);
    }

    // Goal: a torn last record and garbage after the valid records are cut off on restart,
    // and everything before them is kept. Method: append, then damage the file by hand.
    #[test]
    fn torn_and_garbage_tails_are_truncated() {
        for damage in ["torn", "garbage", "bitflip"] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (mut files, _) = RaftFiles::open(dir.path(), &[1]).expect("open");
            files
                .append(&[entry(1, 1, b"kept")], Some(&hard_state(1, 1, 1)))
                .expect("append");
            let good = std::fs::metadata(dir.path().join(LOG_FILE))
                .expect("stat")
                .len();
            files.append(&[entry(2, 1, b"lost")], None).expect("append");
            drop(files);
            let path = dir.path().join(LOG_FILE);
            let mut bytes = std::fs::read(&path).expect("read");
            match damage {
                "torn" => bytes.truncate(bytes.len() - 3),
                "garbage" => {
                    bytes.truncate(good as usize);
                    bytes.extend_from_slice(&[0xAB; 37]);
                }
                _ => {
                    let last = bytes.len() - 1;
                    bytes[last] ^= 0x40;
                }
            }
            std::fs::write(&path, &bytes).expect("damage");
            let (mut files, recovered) = RaftFiles::open(dir.path(), &[1]).expect("reopen");
            assert!(recovered.truncated_bytes > 0, "{damage}");
            assert_eq!(
                std::fs::metadata(&path).expect("stat").len(),
                good,
                "{damage}"
            );
            let (index, hs) = last(&recovered.storage);
            assert_eq!((index, hs.commit), (1, 1), "{damage}");
            // The log accepts appends again after the cut.
            files
                .append(&[entry(2, 2, b"new")], None)
                .expect("append after cut");
            drop(files);
            let (_, recovered) = RaftFiles::open(dir.path(), &[1]).expect("reopen again");
            assert_eq!(recovered.truncated_bytes, 0, "{damage}");
            assert_eq!(last(&recovered.storage).0, 2, "{damage}");
        }
    }

    // Goal: a snapshot compacts the log and restores with the metadata and later entries.
    // Method: install a snapshot at index 2 with one later entry, reopen.
    #[test]
    fn snapshot_compacts_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut files, _) = RaftFiles::open(dir.path(), &[1, 2]).expect("open");
        files
            .append(
                &[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")],
                Some(&hard_state(1, 1, 3)),
            )
            .expect("append");
        let metadata = MetadataSnapshot {
            cluster_id: "c".into(),
            revision: sluice_engine::Revision(7),
            ..MetadataSnapshot::default()
        };
        let snapshot = raft_snapshot(2, 1, &[1, 2], &metadata);
        files
            .install_snapshot(&snapshot, &[entry(3, 1, b"c")], &hard_state(1, 1, 3))
            .expect("snapshot");
        drop(files);
        let (_, recovered) = RaftFiles::open(dir.path(), &[9]).expect("reopen");
        let (raft, restored) = recovered.snapshot.expect("snapshot restored");
        assert_eq!(restored, metadata);
        assert_eq!(raft.get_metadata().index, 2);
        assert_eq!(recovered.records, 2, "hard state and one entry");
        assert_eq!(recovered.storage.first_index().expect("first"), 3);
        assert_eq!(last(&recovered.storage).0, 3);
        let conf = recovered.storage.initial_state().expect("state").conf_state;
        assert_eq!(
            conf.voters,
            vec![1, 2],
            "voters come from the snapshot, not the flag"
        );
    }
}
