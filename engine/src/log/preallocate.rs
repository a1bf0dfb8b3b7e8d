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
//! Below one configured step (a new partition, or an active segment reopened after a close or
//! a recovery, trimmed to its data) the file instead grows from [`PREALLOCATE_BYTES_FIRST`] by
//! doubling its size, so 10,000 partitions that each get a few records do not reserve 40 GiB.
//!
//! Sans-IO: the writer asks it for the next target size and issues the `fallocate` itself.

use std::time::{Duration, Instant};

use crate::io::align_down;
use crate::limits::{
    DIO_ALIGN_BYTES, PREALLOCATE_BURST_BYTES_MAX, PREALLOCATE_BYTES_FIRST, PREALLOCATE_RAMP_MS,
};

/// The preallocation step of one partition's active segment, carried across segment rolls.
#[derive(Debug, Default)]
pub(crate) struct Preallocation {
    /// The rate-ramped step: the configured step while the file grows to it, doubled per fast
    /// preallocation past it; 0 before the first preallocation.
    step: u64,
    /// When the last preallocation was asked for.
    last: Option<Instant>,
}

impl Preallocation {
    /// The file size to preallocate to so that a write ending at `write_end` fits (whole
    /// steps past it), and the smaller size to fall back to when the disk has no room for it.
    /// `configured` is the log's step (not 0) and `allocated` the file's size now; the result
    /// never passes `limit` (the segment's size limit) unless `write_end` does.
    ///
    /// A file holding less than one configured step grows from [`PREALLOCATE_BYTES_FIRST`],
    /// doubling its size, so a partition that gets a few records reserves little; past that the
    /// step ramps with the write rate.
    pub fn target(
        &mut self,
        now: Instant,
        configured: u64,
        allocated: u64,
        write_end: u64,
        limit: u64,
    ) -> (u64, u64) {
        assert!(
            configured > 0,
            "preallocation asked for with preallocation disabled"
        );
        assert!(
            write_end > allocated,
            "preallocation asked for a write ending at {write_end} within {allocated} bytes"
        );
        let fast = self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) < ramp());
        self.last = Some(now);
        let growth =
            align_down(allocated).clamp(PREALLOCATE_BYTES_FIRST.min(configured), configured);
        let step = if growth < configured {
            self.step = configured;
            growth
        } else {
            self.step = if fast {
                (self.step * 2).clamp(configured, configured.max(PREALLOCATE_BURST_BYTES_MAX))
            } else {
                configured
            };
            self.step
        };
        let cap = limit.max(write_end);
        let target = (write_end.div_ceil(step) * step).min(cap);
        let least = (write_end.div_ceil(growth) * growth).min(cap).min(target);
        assert!(
            least >= write_end && target >= least,
            "preallocation {least}..{target} short of write end {write_end}"
        );
        assert!(
            step.is_multiple_of(DIO_ALIGN_BYTES as u64),
            "unaligned step {step}"
        );
        (target, least)
    }
}

fn ramp() -> Duration {
    Duration::from_millis(PREALLOCATE_RAMP_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const LIMIT: u64 = 1 << 30;

    // Goal: a file starting empty grows from PREALLOCATE_BYTES_FIRST by doubling up to the
    // configured step; past it a fast writer's step doubles up to the burst maximum; a pause
    // falls back to the configured step.
    #[test]
    fn step_grows_then_ramps_with_rate_and_falls_back() {
        let mut prealloc = Preallocation::default();
        let mut at = Instant::now();
        let mut allocated = 0;
        let mut sizes = Vec::new();
        while allocated < 132 * MIB {
            at += Duration::from_millis(10);
            let (target, least) = prealloc.target(at, 4 * MIB, allocated, allocated + 1, LIMIT);
            assert!(target > allocated && least > allocated && least <= target);
            allocated = target;
            sizes.push(allocated >> 10);
        }
        assert_eq!(
            sizes,
            [
                64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 196608
            ],
            "KiB after each fallocate: doubling to 4 MiB, then steps of 8, 16, 32, 64, 64 MiB"
        );
        assert_eq!(PREALLOCATE_BYTES_FIRST, 64 << 10);
        assert_eq!(PREALLOCATE_BURST_BYTES_MAX, 64 * MIB);
        at += Duration::from_millis(PREALLOCATE_RAMP_MS + 1);
        let (target, _) = prealloc.target(at, 4 * MIB, allocated, allocated + 1, LIMIT);
        assert_eq!(
            target - allocated,
            4 * MIB,
            "slow again: the configured step"
        );
    }

    // Goal: preallocation stops at the segment's size limit but always covers the write, its
    // fallback is one configured step, and a configured step larger than the burst maximum or
    // smaller than the first step is used as configured.
    #[test]
    fn target_is_capped_and_falls_back_to_one_step() {
        let now = Instant::now();
        let mut prealloc = Preallocation::default();
        assert_eq!(
            prealloc.target(now, 4 * MIB, 4 * MIB, 5 * MIB, 6 * MIB),
            (6 * MIB, 6 * MIB)
        );
        assert_eq!(
            prealloc.target(now, 4 * MIB, 4 * MIB, 7 * MIB, 6 * MIB),
            (7 * MIB, 7 * MIB)
        );
        let (target, least) = prealloc.target(now, 4 * MIB, 8 * MIB, 8 * MIB + 1, LIMIT);
        assert!(target > least && least == 12 * MIB, "{target} {least}");
        let mut large = Preallocation::default();
        large.target(now, 128 * MIB, 128 * MIB, 128 * MIB + 1, LIMIT);
        large.target(now, 128 * MIB, 256 * MIB, 256 * MIB + 1, LIMIT);
        assert_eq!(large.step, 128 * MIB);
        let mut small = Preallocation::default();
        assert_eq!(
            small.target(now, 16 << 10, 0, 1, LIMIT),
            (16 << 10, 16 << 10)
        );
    }
}
