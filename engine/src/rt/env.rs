//! Host checks at broker start: io_uring, the memlock limit, and O_DIRECT on the data directory.
//!
//! Each failed check returns one clear sentence naming the fix, instead of an obscure error
//! from deep inside the first append.

use std::path::Path;

/// Registered DMA buffer memory per executor when nothing else is configured.
///
/// Every aligned buffer of the shard's disk IO comes from this pool while it has room: a
/// partition's writer keeps four 1 MiB rounds in flight and a catch-up reader four 1 MiB
/// reads, and the pool's buddy allocator rounds each up to a power of two. 32 MiB covers a
/// few busy partitions at once; past it buffers come from the heap, which costs a page fault
/// per 4 KiB on first touch and a page pin per write (measured: about 10% of a shard's CPU at
/// 500 MB/s of produce with the earlier 4 MiB pool). Registration pins the pool, so it counts
/// in the broker's RSS from the start: 32 MiB per shard.
///
/// glommio registers the pool with each of its three io_uring rings, which counts against
/// `RLIMIT_MEMLOCK` three times; [`check`] raises the limit when it may (root) and otherwise
/// shrinks the pool to fit.
pub const IO_MEMORY_BYTES_DEFAULT: usize = 32 << 20;

/// What is wrong with the host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// io_uring cannot be set up.
    #[error(
        "io_uring is not available ({0}); sluice needs Linux 5.8+ with io_uring enabled \
         (sysctl kernel.io_uring_disabled=0)"
    )]
    NoIoUring(std::io::Error),
    /// The data directory cannot be created or written.
    #[error("data directory {path} is not usable: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The data directory's file system rejects O_DIRECT (tmpfs, some overlay file systems).
    #[error(
        "the file system of {path} does not support O_DIRECT ({source}); \
         put --data-dir on ext4, xfs or btrfs"
    )]
    NoDirectIo {
        /// The directory.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result of [`check`]: warnings the broker should log, and the memory limit in force.
#[derive(Debug)]
pub struct EnvReport {
    /// `RLIMIT_MEMLOCK` soft limit in bytes after any raise.
    pub memlock_bytes: u64,
    /// Registered io buffer bytes per shard that fit under the limit (at most what was asked).
    pub io_memory_bytes: usize,
    /// Human-readable notes on degraded settings.
    pub warnings: Vec<String>,
}

/// Checks the host for `shards` executors each registering `io_memory_bytes`, raising
/// `RLIMIT_MEMLOCK` when allowed, and probing O_DIRECT in `data_dir` (created if missing).
pub fn check(
    data_dir: &Path,
    shards: usize,
    io_memory_bytes: usize,
) -> Result<EnvReport, EnvError> {
    io_uring::IoUring::new(8).map_err(EnvError::NoIoUring)?;
    let mut warnings = Vec::new();
    // glommio registers the pool with three rings per executor.
    let needed = (shards * io_memory_bytes * RINGS_PER_SHARD) as u64 + MEMLOCK_SLACK_BYTES;
    let memlock_bytes = raise_memlock(needed, &mut warnings);
    // Shrink the pool to what the limit allows rather than lose registration altogether. A
    // process with CAP_IPC_LOCK is exempt: io_uring does not count its registered buffers
    // against the limit (a container's root often has CAP_IPC_LOCK but may not raise limits).
    let exempt = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|status| has_effective_capability(&status, CAP_IPC_LOCK));
    let fitting = if exempt {
        u64::MAX
    } else {
        memlock_bytes.saturating_sub(MEMLOCK_SLACK_BYTES) / (shards * RINGS_PER_SHARD) as u64
    };
    let io_memory_bytes =
        (fitting.min(io_memory_bytes as u64) as usize) & !(IO_MEMORY_STEP_BYTES - 1);
    if io_memory_bytes < io_memory_bytes_min() {
        warnings.push(format!(
            "RLIMIT_MEMLOCK of {memlock_bytes} bytes leaves no room for registered io buffers; \
             io will use unregistered buffers (raise it with `ulimit -l` or limits.conf)"
        ));
    }
    std::fs::create_dir_all(data_dir).map_err(|source| EnvError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    probe_direct_io(data_dir)?;
    Ok(EnvReport {
        memlock_bytes,
        io_memory_bytes: io_memory_bytes.max(io_memory_bytes_min()),
        warnings,
    })
}

/// glommio registers the buffer pool with each of its three rings (main, latency, poll).
const RINGS_PER_SHARD: usize = 3;
/// Locked memory left for everything else (ring structures, other libraries).
const MEMLOCK_SLACK_BYTES: u64 = 1 << 20;
/// Pool sizes are multiples of this.
const IO_MEMORY_STEP_BYTES: usize = 64 << 10;

/// glommio's own floor for the pool.
fn io_memory_bytes_min() -> usize {
    IO_MEMORY_STEP_BYTES
}

/// Linux's capability number of CAP_IPC_LOCK (`linux/capability.h`).
const CAP_IPC_LOCK: u32 = 14;

/// Whether the `CapEff:` line of a `/proc/<pid>/status` text has capability `bit` set.
fn has_effective_capability(status: &str, bit: u32) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << bit) != 0)
}

fn raise_memlock(needed: u64, warnings: &mut Vec<String>) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        warnings.push("cannot read RLIMIT_MEMLOCK; registered io buffers may be disabled".into());
        return 0;
    }
    if limit.rlim_cur >= needed {
        return limit.rlim_cur;
    }
    let raised = libc::rlimit {
        rlim_cur: needed,
        rlim_max: limit.rlim_max.max(needed),
    };
    // SAFETY: setrlimit reads the struct we own; failure leaves the limit unchanged.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
        return needed;
    }
    let soft = libc::rlimit {
        rlim_cur: limit.rlim_max.min(needed),
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &soft) };
    // Could not raise the hard limit: the caller shrinks the buffer pool to fit.
    limit.rlim_max.min(needed).max(limit.rlim_cur)
}

fn probe_direct_io(data_dir: &Path) -> Result<(), EnvError> {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = data_dir.join(".direct-io-probe");
    let result = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe);
    let _ = std::fs::remove_file(&probe);
    result.map(drop).map_err(|source| EnvError::NoDirectIo {
        path: data_dir.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the capability check reads the effective set only, bit by bit.
    #[test]
    fn effective_capabilities_are_read_from_status() {
        let status = "Name:\tsluice\nCapPrm:\t0000000000004000\nCapEff:\t000001fffeffffff\n";
        assert!(has_effective_capability(status, CAP_IPC_LOCK));
        assert!(
            !has_effective_capability(status, 24),
            "CAP_SYS_RESOURCE is bit 24, clear"
        );
        let without = "CapPrm:\t0000000000004000\nCapEff:\t0000000000000000\n";
        assert!(!has_effective_capability(without, CAP_IPC_LOCK));
        assert!(!has_effective_capability(
            "no capabilities here",
            CAP_IPC_LOCK
        ));
    }
}
