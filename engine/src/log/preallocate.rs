//! How far ahead the active segment is preallocated ([`Preallocation`]): the configured step
//! (`segment.preallocate.bytes`) for a partition written slowly, growing for one written fast.
//!
//! Why it ramps: `fallocate` on ext4 and XFS waits for every direct write in flight on the
//! file and blocks new ones until it is done, so each preallocation drains the writer's
//! pipeline. With a fixed 4 MiB step a partition streaming at 1.5 GB/s drained it about 400
//! times a second and wrote at 0.66 of the disk's bandwidth (`sluice-perf log-bench`); with 64
//! MiB steps it wrote at 1.2 of the fresh-block reference. A fixed large step would instead
//! reserve that much unused disk for every idle partition. So the step doubles, up to
//! [`PREALLOCATE_BURST_BYTES_MAX`], whenever the previous preallocation was used up within
//! [`PREALLOCATE_RAMP_MS`], and falls back to the configured step when it lasted longer: a
//! partition preallocates about once per ramp interval of its own write rate, and an idle one
//! reserves at most one configured step.
//!
//! Sans-IO: the writer asks it for the next target size and issues the `fallocate` itself.

use std::time::{Duration, Instant};

use crate::limits::{PREALLOCATE_BURST_BYTES_MAX, PREALLOCATE_RAMP_MS};

/// The preallocation step of one partition's active segment, carried across segment rolls.
#[derive(Debug, Default)]
pub(crate) struct Preallocation {
    /// The step of the last preallocation; 0 before the first.
    step: u64,
    /// When the last preallocation was asked for.
    last: Option<Instant>,
}

impl Preallocation {
    /// The file size to preallocate to so that a write ending at `write_end` fits: whole steps
    /// past `write_end`. `configured` is the log's step (not 0); the result never passes
    /// `limit` (the segment's size limit) unless `write_end` does.
    pub fn target(&mut self, now: Instant, configured: u64, write_end: u64, limit: u64) -> u64 {
        assert!(
            configured > 0,
            "preallocation asked for with preallocation disabled"
        );
        let fast = self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < ramp());
        self.step = if fast {
            (self.step * 2).clamp(configured, configured.max(PREALLOCATE_BURST_BYTES_MAX))
        } else {
            configured
        };
        self.last = Some(now);
        let target = write_end.div_ceil(self.step) * self.step;
        let target = target.min(limit.max(write_end));
        assert!(
            target >= write_end,
            "preallocation {target} short of write end {write_end}"
        );
        target
    }

    /// The smallest preallocation that holds a write ending at `write_end`: one configured
    /// step, for when the disk has no room for [`Self::target`].
    pub fn least(configured: u64, write_end: u64, limit: u64) -> u64 {
        (write_end.div_ceil(configured) * configured).min(limit.max(write_end))
    }
}

fn ramp() -> Duration {
    Duration::from_millis(PREALLOCATE_RAMP_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    // Goal: a fast writer's step doubles up to the burst maximum, a slow one stays at the
    // configured step, and a pause falls back to it.
    #[test]
    fn step_ramps_with_rate_and_falls_back() {
        let mut prealloc = Preallocation::default();
        let start = Instant::now();
        let limit = 1 << 30;
        assert_eq!(prealloc.target(start, 4 * MIB, 1, limit), 4 * MIB);
        let mut at = start;
        let mut end = 4 * MIB;
        let mut steps = Vec::new();
        for _ in 0..6 {
            at += Duration::from_millis(10);
            let target = prealloc.target(at, 4 * MIB, end + 1, limit);
            steps.push(prealloc.step);
            assert!(target > end && target.is_multiple_of(prealloc.step));
            end = target;
        }
        assert_eq!(
            steps,
            [8 * MIB, 16 * MIB, 32 * MIB, 64 * MIB, 64 * MIB, 64 * MIB],
            "doubling up to PREALLOCATE_BURST_BYTES_MAX"
        );
        assert_eq!(PREALLOCATE_BURST_BYTES_MAX, 64 * MIB);
        at += Duration::from_millis(PREALLOCATE_RAMP_MS + 1);
        prealloc.target(at, 4 * MIB, end + 1, limit);
        assert_eq!(prealloc.step, 4 * MIB, "slow again: the configured step");
    }

    // Goal: preallocation stops at the segment's size limit, but always covers the write.
    #[test]
    fn target_is_capped_by_the_segment_limit() {
        let mut prealloc = Preallocation::default();
        let now = Instant::now();
        assert_eq!(prealloc.target(now, 4 * MIB, MIB, 2 * MIB), 2 * MIB);
        assert_eq!(prealloc.target(now, 4 * MIB, 3 * MIB, 2 * MIB), 3 * MIB);
        // A configured step larger than the burst maximum is kept.
        let mut large = Preallocation::default();
        large.target(now, 128 * MIB, 1, 1 << 30);
        large.target(now, 128 * MIB, 128 * MIB + 1, 1 << 30);
        assert_eq!(large.step, 128 * MIB);
    }
}
