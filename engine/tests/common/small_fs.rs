//! A small ext4 file system on a loop device, for tests of a really full disk (direct IO works
//! on it, unlike on tmpfs): made from a sparse image in a temp dir, mounted, lazily unmounted
//! when dropped. Needs root (mount). Shared by path with `tools/tests/support`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted ext4 image; `mount` is its root directory.
pub struct SmallFs {
    _dir: tempfile::TempDir,
    pub mount: PathBuf,
}

impl SmallFs {
    /// Makes and mounts a `megabytes` MiB ext4 file system with no blocks reserved for root
    /// (tests run as root, and reserved blocks would keep a "full" disk writable for them).
    /// The error says which step failed and why (not root, no loop device, no mkfs.ext4).
    pub fn new(megabytes: u64) -> Result<SmallFs, String> {
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let image = dir.path().join("fs.img");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| format!("mount point: {e}"))?;
        let run = |program: &str, args: &[&str]| -> Result<(), String> {
            let out = Command::new(program)
                .args(args)
                .output()
                .map_err(|e| format!("{program}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{program} {args:?}: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let image_arg = image.to_str().expect("temp paths are UTF-8");
        let mount_arg = mount.to_str().expect("temp paths are UTF-8");
        run("truncate", &["-s", &format!("{megabytes}M"), image_arg])?;
        run("mkfs.ext4", &["-q", "-m", "0", image_arg])?;
        run("mount", &["-o", "loop", image_arg, mount_arg])?;
        Ok(SmallFs { _dir: dir, mount })
    }

    /// Bytes an unprivileged writer could still allocate.
    pub fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.mount.to_str().expect("UTF-8 path"))
            .expect("no NUL in a temp path");
        // SAFETY: statvfs is plain old data; all-zero is a valid value.
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: path is a valid C string and stat a valid out pointer.
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut stat) }, 0);
        stat.f_bavail * stat.f_frsize
    }

    /// Allocates every free block to a new file at `path` (nothing else can then allocate
    /// until it is removed); returns its size.
    pub fn fill(&self, path: &Path) -> u64 {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::create(path).expect("filler file");
        let mut size: u64 = 0;
        // Large steps first, then ever smaller ones: what the file system's own metadata takes
        // is not known in advance. Bounded: at most 64 failures and free space steps.
        let mut step: u64 = 1 << 30;
        while step >= 4096 {
            // SAFETY: fallocate on a file descriptor we own.
            let result = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    0,
                    size as libc::off_t,
                    step as libc::off_t,
                )
            };
            if result == 0 {
                size += step;
            } else {
                step /= 2;
            }
        }
        size
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: a process may still hold files open on it (a test's executor closes them
        // asynchronously; a killed broker's descriptors close when it is reaped); the kernel
        // finishes the unmount when they are gone.
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// A file of `bytes` allocated bytes at `path`.
pub fn ballast(path: &Path, bytes: u64) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::create(path).expect("ballast file");
    // SAFETY: fallocate on a file descriptor we own.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    assert_eq!(result, 0, "ballast allocation");
}
