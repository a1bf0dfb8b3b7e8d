//! Time for the harness: one run clock that every thread shares, and the wall-clock stamps
//! that end-to-end latency is computed from.
//!
//! A producer writes the intended send time of each record into the first
//! [`STAMP_BYTES`] bytes of its value, as nanoseconds since the Unix epoch. Inside one process
//! the stamp is derived from the monotonic clock (`start_realtime_ns` plus the monotonic time
//! since the run started), so consume − send is exact even if the wall clock is stepped;
//! a consumer in another process on the same machine compares against `CLOCK_REALTIME`.
//! Milliseconds (Kafka's record timestamps) are far too coarse for sub-millisecond latency.

use std::time::{Duration, Instant};

use sluice_engine::rt::clock;

/// Bytes of the send stamp at the start of every record value.
pub const STAMP_BYTES: usize = 8;

/// `CLOCK_REALTIME` in nanoseconds since the Unix epoch.
pub fn realtime_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a live, writable timespec; CLOCK_REALTIME always exists on Linux.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    assert_eq!(result, 0, "clock_gettime(CLOCK_REALTIME) works on Linux");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The run's time origin, shared by every thread of the harness (`Copy`, `Send`).
#[derive(Clone, Copy, Debug)]
pub struct RunClock {
    /// Monotonic start of the run.
    pub start: Instant,
    /// Wall clock at `start`, in nanoseconds since the epoch.
    pub start_realtime_ns: u64,
    /// Measurements begin here (start + warmup).
    pub measure_from: Instant,
}

impl RunClock {
    /// A clock starting now, measuring after `warmup`.
    pub fn new(warmup: Duration) -> RunClock {
        let start = clock::now();
        RunClock {
            start,
            start_realtime_ns: realtime_ns(),
            measure_from: start + warmup,
        }
    }

    /// The wall-clock stamp of monotonic instant `at` (exact within this process).
    pub fn stamp_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.start).as_nanos() as u64;
        self.start_realtime_ns + since
    }

    /// The stamp of the first measured instant.
    pub fn measure_from_stamp(&self) -> u64 {
        self.stamp_of(self.measure_from)
    }

    /// Seconds from the start of the run to `at`.
    pub fn seconds_at(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.start).as_secs_f64()
    }
}

/// Writes `stamp` into the first bytes of `value`.
pub fn put_stamp(value: &mut [u8], stamp: u64) {
    value[..STAMP_BYTES].copy_from_slice(&stamp.to_be_bytes());
}

/// Reads the stamp at the start of `value`, if it is long enough to hold one.
pub fn read_stamp(value: &[u8]) -> Option<u64> {
    let bytes: [u8; STAMP_BYTES] = value.get(..STAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: a stamp survives the trip through a value, and stamps follow the monotonic clock.
    #[test]
    fn stamps_round_trip_and_advance() {
        let run = RunClock::new(Duration::from_millis(5));
        let mut value = vec![0u8; 16];
        let stamp = run.stamp_of(run.start + Duration::from_micros(1500));
        put_stamp(&mut value, stamp);
        assert_eq!(read_stamp(&value), Some(stamp));
        assert_eq!(stamp - run.start_realtime_ns, 1_500_000);
        assert_eq!(run.measure_from_stamp() - run.start_realtime_ns, 5_000_000);
        assert_eq!(read_stamp(&value[..7]), None);
        let wall = realtime_ns();
        assert!(
            wall >= run.start_realtime_ns,
            "wall clock went backwards in a test"
        );
    }
}
