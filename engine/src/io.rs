//! The storage engine's file operations: the one module through which the log reaches the
//! file system.
//!
//! Every read, write, preallocation, truncation, sync, rename and removal of a log file goes
//! through the small set of functions here, on DMA (O_DIRECT) files from the runtime facade
//! ([`crate::rt::fs`]). Keeping the set small makes it auditable and gives one place for fault
//! injection ([`faults`]): tests make chosen operations fail with `ENOSPC` or `EIO` on the
//! current shard (thread) without touching the device.
//!
//! Durability comes two ways ([`SyncMode`]). One partition's operation (a roll, a retention
//! pass) syncs what it changed as it goes: `fdatasync` of each file, `fsync` of each directory.
//! Many partitions opening or closing together instead do their file work unsynced and then
//! wait for [`sync_file_system`], whose rounds (one `syncfs(2)` and one `fdatasync`) each serve
//! every partition of the shard that asked before the round started (group commit): closing
//! 10,000 partitions at once takes about a hundred rounds instead of 90,000 fsyncs
//! (perf/RESULTS.md, "Many partitions: shared syncs").
//!
//! Errors are plain `std::io::Error`s; the runtime's error type does not leak upward.
//! Directory listing and metadata use `std::fs` and block the shard briefly: they run only
//! while a log opens or is removed, never on the append or fetch path.
//!
//! Types here are `!Send` (DMA files belong to the shard that opened them).
//!
//! Must not depend on: the log, batches, or anything above the runtime facade.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use futures::channel::oneshot;

use crate::limits::DIO_ALIGN_BYTES;
use crate::rt::fs::{Directory, DmaFile, OpenOptions, ReadResult, open_dma};

/// A DMA file shared by the tasks of one shard.
pub type File = Rc<DmaFile>;

/// How a file operation's effect is made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// By the operation itself: `fdatasync` of the file it wrote, `fsync` of the directory
    /// whose entries it changed.
    Now,
    /// By a shared [`sync_file_system`] before the operation returns: many partitions opening
    /// or closing together share it.
    Shared,
    /// Not by the operation: the caller makes it durable with a later [`sync_file_system`].
    Deferred,
}

/// Rounds `value` up to the direct-IO block size.
pub fn align_up(value: u64) -> u64 {
    let align = DIO_ALIGN_BYTES as u64;
    value.div_ceil(align) * align
}

/// Rounds `value` down to the direct-IO block size.
pub fn align_down(value: u64) -> u64 {
    value - value % DIO_ALIGN_BYTES as u64
}

fn path_of(file: &DmaFile) -> PathBuf {
    file.path()
        .map(|path| path.to_path_buf())
        .unwrap_or_default()
}

/// Opens an existing file for reading and writing.
pub async fn open_read_write(path: &Path) -> io::Result<File> {
    faults::check(faults::Op::Open, path)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(path)
        .await?;
    Ok(Rc::new(file))
}

/// Opens an existing file for reading.
pub async fn open_read(path: &Path) -> io::Result<File> {
    faults::check(faults::Op::Open, path)?;
    let file = open_dma(path, OpenOptions::new().read(true)).await?;
    Ok(Rc::new(file))
}

/// Creates a file (truncating any old one) for reading and writing.
pub async fn create(path: &Path) -> io::Result<File> {
    faults::check(faults::Op::Create, path)?;
    let file = open_dma(
        path,
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true),
    )
    .await?;
    Ok(Rc::new(file))
}

/// Opens a file for reading and writing, creating it if missing.
pub async fn open_or_create(path: &Path) -> io::Result<File> {
    match open_read_write(path).await {
        Err(error) if error.kind() == io::ErrorKind::NotFound => create(path).await,
        other => other,
    }
}

/// Releases a handle; the last handle of a file closes its descriptor now. (glommio closes a
/// dropped file only at the reactor's next IO cycle; the log opens index files briefly and
/// must not let descriptors pile up.) Other handles of the file keep it open.
pub async fn close(file: File) -> io::Result<()> {
    file.close_rc().await?;
    Ok(())
}

/// Builds an aligned buffer holding `parts` back to back followed by zeros up to the next
/// block boundary. The buffer is allocated for this write and freed when the write completes.
pub fn aligned_buffer(file: &DmaFile, parts: &[&[u8]]) -> crate::rt::fs::DmaBuffer {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    assert!(len > 0, "aligned_buffer of nothing");
    let padded = usize::try_from(align_up(len as u64)).expect("buffer length fits in usize");
    let mut buffer = file.alloc_dma_buffer(padded);
    let bytes = buffer.as_bytes_mut();
    let mut at = 0;
    for part in parts {
        bytes[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    bytes[at..].fill(0);
    assert_eq!(at, len);
    buffer
}

/// Builds an aligned buffer of exactly `len` bytes (a multiple of the block size) holding bytes
/// `[skip, skip + len)` of `parts` taken back to back, followed by zeros when `parts` hold
/// fewer. Bytes of `parts` past `skip + len` are left out: the writer keeps them for its next
/// write. Allocated for this write and freed when the write completes.
pub fn aligned_buffer_of_range(
    file: &DmaFile,
    parts: &[&[u8]],
    skip: usize,
    len: usize,
) -> crate::rt::fs::DmaBuffer {
    assert!(len > 0, "aligned buffer of nothing");
    assert!(
        len.is_multiple_of(DIO_ALIGN_BYTES),
        "unaligned buffer length {len}"
    );
    let mut buffer = file.alloc_dma_buffer(len);
    let bytes = buffer.as_bytes_mut();
    let (mut at, mut start) = (0, 0);
    for part in parts {
        if at == len {
            break;
        }
        let end = start + part.len();
        if end > skip {
            let from = skip.saturating_sub(start);
            let take = (part.len() - from).min(len - at);
            bytes[at..at + take].copy_from_slice(&part[from..from + take]);
            at += take;
        }
        start = end;
    }
    bytes[at..].fill(0);
    assert!(at <= len);
    buffer
}

/// Writes a whole aligned buffer at the aligned position `pos`. A short write is an error: the
/// device ran out of space part-way.
pub async fn write_at(
    file: &DmaFile,
    buffer: crate::rt::fs::DmaBuffer,
    pos: u64,
) -> io::Result<()> {
    assert!(
        pos.is_multiple_of(DIO_ALIGN_BYTES as u64),
        "unaligned write position {pos}"
    );
    assert!(
        buffer.len().is_multiple_of(DIO_ALIGN_BYTES),
        "unaligned write length {}",
        buffer.len()
    );
    faults::check(faults::Op::Write, &path_of(file))?;
    let len = buffer.len();
    let written = file.write_at(buffer, pos).await?;
    if written != len {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("short write: {written} of {len} bytes at {pos}"),
        ));
    }
    Ok(())
}

/// Reads up to `len` bytes at `pos` (any alignment) into a fresh `Bytes`. Returns fewer bytes
/// only at the end of the file.
///
/// The read lands in an aligned DMA buffer and is copied once into the returned `Bytes`, which
/// the caller may hand to another task or slice into batches.
pub async fn read_at(file: &DmaFile, pos: u64, len: usize) -> io::Result<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let result = read_at_dma(file, pos, len).await?;
    Ok(Bytes::copy_from_slice(&result))
}

/// As [`read_at`], keeping the bytes in the DMA buffer they were read into (`!Send`): for a
/// shard-local reader that copies out only part of them.
pub async fn read_at_dma(file: &DmaFile, pos: u64, len: usize) -> io::Result<ReadResult> {
    faults::check(faults::Op::Read, &path_of(file))?;
    Ok(file.read_at(pos, len).await?)
}

/// Reserves space up to `size` bytes (`fallocate` without `FALLOC_FL_KEEP_SIZE`, so the file
/// size becomes `size` and the new range reads as zeros).
pub async fn allocate(file: &DmaFile, size: u64) -> io::Result<()> {
    faults::check(faults::Op::Allocate, &path_of(file))?;
    file.pre_allocate(size, false).await?;
    Ok(())
}

/// Whether an IO error means the file system (or the quota) is out of space.
pub fn is_no_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// Sets the file size to `size`, discarding anything past it.
pub async fn truncate(file: &DmaFile, size: u64) -> io::Result<()> {
    faults::check(faults::Op::Truncate, &path_of(file))?;
    file.truncate(size).await?;
    Ok(())
}

/// `fdatasync`: the file's data and the metadata needed to read it back are on stable storage.
pub async fn sync(file: &DmaFile) -> io::Result<()> {
    faults::check(faults::Op::Sync, &path_of(file))?;
    file.fdatasync().await?;
    Ok(())
}

/// The file's size in bytes.
pub async fn file_len(file: &DmaFile) -> io::Result<u64> {
    Ok(file.file_size().await?)
}

/// The size in bytes of the file at `path`, without opening it. Blocks briefly (a `stat`).
pub fn path_len(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.len())
}

/// Makes the directory's entries (created, renamed, removed files) durable.
pub async fn sync_dir(path: &Path) -> io::Result<()> {
    faults::check(faults::Op::Sync, path)?;
    // glommio opens a relative directory path against no directory fd and fails with EBADF.
    let dir = Directory::open(std::path::absolute(path)?).await?;
    dir.sync().await?;
    dir.close().await?;
    Ok(())
}

/// Creates a directory and its missing parents; returns whether it created the directory.
/// Syncs nothing: the caller makes the new entries durable (a [`sync_file_system`] once the
/// directory has its first files). Blocks briefly (open time only).
pub fn create_dir(path: &Path) -> io::Result<bool> {
    if path.is_dir() {
        return Ok(false);
    }
    std::fs::create_dir_all(path)?;
    Ok(true)
}

/// Removes a file; a missing file is not an error.
pub async fn remove(path: &Path) -> io::Result<()> {
    faults::check(faults::Op::Remove, path)?;
    match crate::rt::fs::remove(path).await {
        Ok(()) => Ok(()),
        Err(error) => {
            let error = io::Error::from(error);
            if error.kind() == io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(error)
            }
        }
    }
}

/// Renames a file (atomic replacement of `to`).
pub async fn rename(from: &Path, to: &Path) -> io::Result<()> {
    faults::check(faults::Op::Rename, from)?;
    crate::rt::fs::rename(from, to).await?;
    Ok(())
}

/// The names of the entries of a directory. Blocks briefly (open time only).
pub fn list_dir(path: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Removes a directory and everything in it, then syncs its parent. Blocks briefly.
pub async fn remove_dir_all(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    }
    if let Some(parent) = path.parent() {
        sync_dir(parent).await?;
    }
    Ok(())
}

/// Replaces `dir/name` atomically with `content`: write `name.tmp` padded to whole blocks,
/// `fdatasync` it, rename it over `name`, sync the directory. After a crash the file holds
/// either the old or the new content, never a mix. `content` carries its own length.
pub async fn write_file_atomic(dir: &Path, name: &str, content: &[u8]) -> io::Result<()> {
    let tmp = write_temporary(dir, name, content, SyncMode::Now).await?;
    rename(&tmp, &dir.join(name)).await?;
    sync_dir(dir).await
}

/// The first half of an atomic replacement whose syncs are shared: writes `content` to
/// `dir/name.tmp`, unsynced. The caller then makes it durable with [`sync_file_system`], calls
/// [`replace_with_staged`], and syncs again before relying on the new content; a crash before
/// the rename is durable leaves the old file (and a `.tmp` that open removes).
pub async fn stage_file(dir: &Path, name: &str, content: &[u8]) -> io::Result<()> {
    write_temporary(dir, name, content, SyncMode::Deferred)
        .await
        .map(drop)
}

/// The second half of [`stage_file`]: renames `dir/name.tmp` over `dir/name`. The temporary
/// file must be durable first (a [`sync_file_system`] after staging), and the rename is
/// durable only after the next one.
pub async fn replace_with_staged(dir: &Path, name: &str) -> io::Result<()> {
    rename(&dir.join(format!("{name}.tmp")), &dir.join(name)).await
}

/// Makes what was written to `file` durable as `mode` says.
async fn sync_as(file: &File, mode: SyncMode) -> io::Result<()> {
    match mode {
        SyncMode::Now => sync(file).await,
        SyncMode::Shared => sync_file_system(file).await,
        SyncMode::Deferred => Ok(()),
    }
}

/// Writes `dir/name.tmp` (created or truncated) with `content` padded to whole blocks, synced
/// when `mode` says so; removes it again on failure.
async fn write_temporary(
    dir: &Path,
    name: &str,
    content: &[u8],
    mode: SyncMode,
) -> io::Result<PathBuf> {
    let tmp = dir.join(format!("{name}.tmp"));
    let file = create(&tmp).await?;
    let result = async {
        let buffer = aligned_buffer(&file, &[content]);
        write_at(&file, buffer, 0).await?;
        sync_as(&file, mode).await
    }
    .await;
    let closed = close(file).await;
    if let Err(error) = result.and(closed) {
        let _ = remove(&tmp).await;
        return Err(error);
    }
    Ok(tmp)
}

/// Writes a small file's first blocks in place with `content` (padded with zeros to whole
/// blocks), creating the file if it is missing, and syncs it as `mode` says. An existing file
/// keeps its size when `content` fits in it, so the sync changes no metadata; a crash may leave
/// a torn mix of old and new blocks (or an empty new file), so only files whose content is
/// checksummed and optional (the clean-shutdown marker) are written this way.
pub async fn write_small_file_in_place(
    path: &Path,
    content: &[u8],
    mode: SyncMode,
) -> io::Result<()> {
    let file = open_or_create(path).await?;
    let result = async {
        let buffer = aligned_buffer(&file, &[content]);
        write_at(&file, buffer, 0).await?;
        sync_as(&file, mode).await
    }
    .await;
    close(file).await?;
    result
}

/// Reads a whole small file (checkpoint, marker); `Ok(None)` when it does not exist.
pub async fn read_small_file(path: &Path, len_max: usize) -> io::Result<Option<Bytes>> {
    let file = match open_read(path).await {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let len = file_len(&file).await?;
    let len = usize::try_from(len).unwrap_or(usize::MAX).min(len_max);
    read_at(&file, 0, len).await.map(Some)
}

/// Makes durable everything this shard did on the file system holding `file` before the call:
/// completed writes, sizes, creations, truncations, renames and removals of every file and
/// directory there, as `fdatasync` of each file plus `fsync` of each changed directory would.
///
/// Group commit across partitions: a round is one `syncfs(2)` of the file system followed by
/// one `fdatasync` of a waiting caller's file (`syncfs` commits all metadata but promises no
/// device cache flush on every file system: XFS flushes only when its log has something to
/// write; an `fdatasync` always ends with one). A round serves every caller that asked before
/// it started; callers that ask while it runs share the next one. So partitions that open or
/// close together pay a few rounds between them, not a few syncs each.
///
/// A failed round fails every caller it served (each treats it as a failed sync: nothing that
/// depends on it may follow). Cost: `syncfs` also writes back other processes' dirty data on
/// the same file system, so it is used where many partitions wait at once (creation, close),
/// never on the append path.
pub async fn sync_file_system(file: &File) -> io::Result<()> {
    faults::check(faults::Op::SyncFileSystem, &path_of(file))?;
    let device = (file.dev_major(), file.dev_minor());
    let (done, answer) = oneshot::channel();
    let start = SHARED_SYNCS.with(|groups| {
        let mut groups = groups.borrow_mut();
        let group = groups.entry(device).or_default();
        group.waiting.push(SharedSyncWaiter {
            file: Rc::clone(file),
            done,
        });
        !std::mem::replace(&mut group.running, true)
    });
    if start {
        crate::rt::spawn(sync_file_system_rounds(device)).detach();
    }
    match answer.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err((kind, message))) => Err(io::Error::new(kind, message)),
        Err(oneshot::Canceled) => Err(io::Error::other("file system sync abandoned")),
    }
}

/// A caller of [`sync_file_system`] waiting for the next round.
struct SharedSyncWaiter {
    /// Kept open until the round that serves the caller is done.
    file: File,
    /// The round's outcome (an `io::Error` cannot be cloned to every caller, so its parts).
    done: oneshot::Sender<Result<(), (io::ErrorKind, String)>>,
}

/// The shared syncs of one device on this shard.
#[derive(Default)]
struct SharedSyncGroup {
    /// A task is running rounds for this device.
    running: bool,
    /// Callers for the next round. Invariant: non-empty only while `running`.
    waiting: Vec<SharedSyncWaiter>,
}

thread_local! {
    /// Per device (major, minor): one `syncfs` covers only its own file system.
    static SHARED_SYNCS: RefCell<HashMap<(u32, u32), SharedSyncGroup>> =
        RefCell::new(HashMap::new());
}

/// Runs rounds for `device` until no caller waits. Ends by itself: each round takes every
/// waiter, and a round is started only for waiters.
async fn sync_file_system_rounds(device: (u32, u32)) {
    loop {
        // Tasks that are ready now reach their own sync first, and share this round.
        crate::rt::yield_now().await;
        let round = SHARED_SYNCS.with(|groups| {
            let mut groups = groups.borrow_mut();
            let group = groups.get_mut(&device).expect("running group stays");
            assert!(group.running, "rounds run only for a running group");
            let round = std::mem::take(&mut group.waiting);
            if round.is_empty() {
                groups.remove(&device);
            }
            round
        });
        let Some(first) = round.first() else {
            return;
        };
        let file = Rc::clone(&first.file);
        let result = async {
            crate::rt::fs::sync_file_system(&file).await?;
            file.fdatasync().await.map_err(io::Error::from)
        }
        .await;
        if let Err(error) = &result {
            tracing::error!(%error, path = %path_of(&file).display(), "file system sync failed");
        }
        let outcome = result.map_err(|error| (error.kind(), error.to_string()));
        for waiter in round {
            let _ = waiter.done.send(outcome.clone());
        }
    }
}

/// Fault injection for tests: make chosen file operations of the current thread (shard) fail.
///
/// A plan matches operations by kind and by a substring of the file path, lets `skip` matching
/// operations pass, then fails the next `count` of them with the chosen error. Plans are
/// thread-local, so one test's plan never affects another test's executor.
pub mod faults {
    use std::cell::RefCell;
    use std::io;
    use std::path::Path;

    /// A kind of file operation.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Op {
        /// Opening an existing file.
        Open,
        /// Creating a file.
        Create,
        /// A data write.
        Write,
        /// A read.
        Read,
        /// `fallocate`.
        Allocate,
        /// `ftruncate`.
        Truncate,
        /// `fdatasync` of a file or directory.
        Sync,
        /// [`super::sync_file_system`], checked against the caller's file.
        SyncFileSystem,
        /// Unlinking a file.
        Remove,
        /// Renaming a file.
        Rename,
    }

    /// The error an injected fault produces.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Failure {
        /// `ENOSPC`.
        NoSpace,
        /// `EIO`.
        Io,
    }

    /// Which operations fail and how.
    #[derive(Clone, Debug)]
    pub struct Plan {
        /// The operation kind to fail.
        pub op: Op,
        /// Only paths containing this substring match (empty matches all).
        pub path_contains: String,
        /// Matching operations to let through first.
        pub skip: u32,
        /// Matching operations to fail after that.
        pub count: u32,
        /// The error to fail them with.
        pub failure: Failure,
    }

    thread_local! {
        static PLANS: RefCell<Vec<Plan>> = const { RefCell::new(Vec::new()) };
    }

    /// Adds a plan for the current thread.
    pub fn inject(plan: Plan) {
        PLANS.with(|plans| plans.borrow_mut().push(plan));
    }

    /// Removes every plan of the current thread.
    pub fn clear() {
        PLANS.with(|plans| plans.borrow_mut().clear());
    }

    pub(super) fn check(op: Op, path: &Path) -> io::Result<()> {
        PLANS.with(|plans| {
            let mut plans = plans.borrow_mut();
            if plans.is_empty() {
                return Ok(());
            }
            let path = path.to_string_lossy();
            for plan in plans.iter_mut() {
                if plan.op != op || !path.contains(plan.path_contains.as_str()) {
                    continue;
                }
                if plan.skip > 0 {
                    plan.skip -= 1;
                    continue;
                }
                if plan.count > 0 {
                    plan.count -= 1;
                    return Err(match plan.failure {
                        Failure::NoSpace => io::Error::new(
                            io::ErrorKind::StorageFull,
                            format!("injected ENOSPC on {op:?} of {path}"),
                        ),
                        Failure::Io => {
                            io::Error::other(format!("injected EIO on {op:?} of {path}"))
                        }
                    });
                }
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::limits::DIO_ALIGN_BYTES;

    // Goal: a relative directory path (as `--data-dir sluice-data` gives) can be synced.
    // Method: make a directory under the current directory and sync it by its relative name;
    // glommio alone fails this with EBADF.
    #[test]
    fn sync_dir_accepts_a_relative_path() {
        let cwd = std::env::current_dir().expect("current directory");
        let dir = tempfile::tempdir_in(&cwd).expect("temporary directory");
        let relative = dir
            .path()
            .strip_prefix(&cwd)
            .expect("made under cwd")
            .to_path_buf();
        assert!(relative.is_relative());
        crate::rt::block_on(super::sync_dir(&relative)).expect("sync a relative directory");
    }

    // Goal: a round split into two writes puts every byte where one write would have.
    // Method: cut parts of odd lengths at a block boundary inside a part and compare both
    // buffers with the concatenation, zero-padded.
    #[test]
    fn aligned_buffer_of_range_takes_the_bytes_after_skip() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("f");
        crate::rt::block_on(async move {
            let file = super::create(&path).await.expect("create");
            let parts: Vec<Vec<u8>> = [1000usize, 5000, 3]
                .iter()
                .enumerate()
                .map(|(n, len)| vec![n as u8 + 1; *len])
                .collect();
            let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let mut whole = parts.concat();
            whole.resize(3 * DIO_ALIGN_BYTES, 0);
            let first = super::aligned_buffer_of_range(&file, &slices, 0, DIO_ALIGN_BYTES);
            assert_eq!(first.as_bytes(), &whole[..DIO_ALIGN_BYTES]);
            let rest_len = 2 * DIO_ALIGN_BYTES;
            let rest = super::aligned_buffer_of_range(&file, &slices, DIO_ALIGN_BYTES, rest_len);
            assert_eq!(rest.as_bytes(), &whole[DIO_ALIGN_BYTES..]);
            super::close(file).await.expect("close");
        });
    }
}
