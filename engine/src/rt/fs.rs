//! DMA (O_DIRECT) files and their aligned buffers.
//!
//! Use [`open_dma`] (or call [`prime_direct_io`] for the directory first) rather than
//! `DmaFile::open`/`create` directly. glommio decides once per device and thread whether the
//! device supports polled I/O by reading the first block of the first file opened on it; when
//! that file is empty the kernel answers the read without touching the device, glommio wrongly
//! concludes that polling works, and every later read fails with EOPNOTSUPP on devices without
//! poll queues (virtio, most cloud disks). Priming opens a file that has a real first block.

use std::cell::RefCell;
use std::collections::HashSet;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub use glommio::io::{
    Directory, DmaBuffer, DmaFile, DmaStreamReaderBuilder, DmaStreamWriterBuilder, OpenOptions,
    ReadResult, remove, rename,
};

thread_local! {
    /// Devices (st_dev) whose polled-I/O probe this thread has already run correctly.
    static PRIMED: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Makes glommio's polled-I/O probe for the device holding `dir` see a real block. Idempotent
/// and cheap after the first call per device and thread. Errors are ignored: a directory that
/// cannot be probed fails loudly on its first real open instead.
pub async fn prime_direct_io(dir: &Path) {
    let Ok(metadata) = std::fs::metadata(dir) else {
        return;
    };
    let device = metadata.dev();
    if PRIMED.with(|primed| primed.borrow().contains(&device)) {
        return;
    }
    // Unique per process and thread: processes sharing a directory (the temp dir) must not
    // remove each other's probe between glommio's open and its statfs, which panics.
    let probe = dir.join(format!(
        ".sluice-dio-probe-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    // One 4 KiB file written once per device and thread at start-up: not on the data path.
    if std::fs::write(&probe, [0u8; 4096]).is_ok() {
        if let Ok(file) = DmaFile::open(&probe).await {
            let _ = file.close().await;
        }
        let _ = std::fs::remove_file(&probe);
    }
    PRIMED.with(|primed| primed.borrow_mut().insert(device));
}

/// Opens `path` for direct I/O with `options`, priming the device's probe first.
pub async fn open_dma(path: &Path, options: &OpenOptions) -> std::io::Result<DmaFile> {
    if let Some(dir) = path.parent() {
        prime_direct_io(dir).await;
    }
    options.dma_open(path).await.map_err(std::io::Error::from)
}

/// `syncfs(2)` on the file system holding `file`: every dirty inode, directory and metadata block
/// of that file system is written back and the file system's own sync runs (ext4 commits its
/// journal, or flushes the device cache without one; XFS forces its log). Runs on the executor's
/// blocking thread on a duplicate of the descriptor, so the call is safe even if the caller
/// stops waiting. Errors are the file system's writeback errors since `file` was opened.
pub async fn sync_file_system(file: &DmaFile) -> std::io::Result<()> {
    // SAFETY: `file` is open for the whole borrow; the clone below is a new descriptor.
    let borrowed = unsafe { BorrowedFd::borrow_raw(file.as_raw_fd()) };
    let owned = borrowed.try_clone_to_owned()?;
    crate::rt::spawn_blocking(move || {
        // SAFETY: syncfs only reads the descriptor, which `owned` keeps open during the call.
        let result = unsafe { libc::syncfs(owned.as_raw_fd()) };
        if result == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    })
    .await
}
