//! Environmental failures with no in-process fix: log, then exit with a code per reason
//! (STYLE §6). A panic would abort too, but without saying which failure it was. The message
//! goes to the log (stderr).
//!
//! Must not depend on: anything but logging.

/// Why the broker stops. The value is the process exit code; a retired code is not reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
#[non_exhaustive]
pub enum Reason {
    /// The controller's raft log or snapshot could not be written or fsynced: after a failed
    /// fsync the file's contents are unknown, and raft's promises depend on them.
    ControllerLog = 70,
}

/// Logs `message` and exits the process with `reason`'s code.
pub fn fatal(reason: Reason, message: &str) -> ! {
    tracing::error!(?reason, "fatal: {message}");
    std::process::exit(reason as i32)
}
