//! The leader-epoch cache of a partition: which leader epoch wrote which range of offsets, as
//! `(epoch, start offset)` entries (Kafka's `leader-epoch-checkpoint`).
//!
//! Replication asks it "where does epoch `e` end on this log?" ([`EpochCache::end_offset_for`],
//! Kafka's OffsetsForLeaderEpoch semantics) to find where a follower's log diverges from its
//! leader's, instead of truncating to a high watermark (the KIP-101 and KIP-279 bugs).
//!
//! Entries are derived from the batches' partition-leader-epoch fields: an append whose batch
//! carries an epoch above the latest entry adds `(epoch, batch base offset)`. Truncation removes
//! entries at or past the new end; advancing the log start removes entries wholly below it.
//! Negative epochs (batches never stamped by a leader) are not recorded.
//! The file that persists the cache is encoded in `checkpoint.rs`; when it is written and how
//! recovery rebuilds it are in `engine/FORMAT.md` §6 and §7.
//!
//! Must not depend on: file IO (the log persists the cache through its checkpoint path).

use crate::types::{LeaderEpoch, Offset};

/// One entry: `epoch` wrote the offsets from `start_offset` up to the next entry's start (or
/// the log end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochEntry {
    /// The leader epoch.
    pub epoch: LeaderEpoch,
    /// The first offset written in that epoch.
    pub start_offset: Offset,
}

/// The entries of one log, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct EpochCache {
    /// Invariant: epochs are non-negative and strictly increase; start offsets strictly
    /// increase (every epoch but the last holds at least one batch).
    entries: Vec<EpochEntry>,
}

impl EpochCache {
    /// A cache holding `entries`, or `None` if they break the invariant (a damaged file).
    pub fn from_entries(entries: Vec<EpochEntry>) -> Option<EpochCache> {
        let valid = entries
            .iter()
            .all(|entry| entry.epoch.0 >= 0 && entry.start_offset.0 >= 0)
            && entries.windows(2).all(|pair| {
                pair[0].epoch < pair[1].epoch && pair[0].start_offset < pair[1].start_offset
            });
        valid.then_some(EpochCache { entries })
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The latest recorded epoch.
    pub fn latest(&self) -> Option<LeaderEpoch> {
        self.entries.last().map(|entry| entry.epoch)
    }

    /// Records that `epoch` starts at `start` if it is newer than the latest entry; returns
    /// whether an entry was added. Negative epochs and epochs not above the latest are ignored
    /// (the append path rejects regressions before calling this; recovery relies on ignoring).
    pub fn assign(&mut self, epoch: LeaderEpoch, start: Offset) -> bool {
        if epoch.0 < 0 || self.latest().is_some_and(|latest| epoch <= latest) {
            return false;
        }
        if let Some(last) = self.entries.last() {
            assert!(
                start > last.start_offset,
                "epoch {epoch:?} starts at {start}, not after epoch {:?} at {}",
                last.epoch,
                last.start_offset
            );
        }
        assert!(
            start.0 >= 0,
            "epoch {epoch:?} starts at negative offset {start}"
        );
        self.entries.push(EpochEntry {
            epoch,
            start_offset: start,
        });
        true
    }

    /// Removes the entries that start at or after `end` (the log was truncated to `end`, or
    /// appends past it failed).
    pub fn truncate_from_end(&mut self, end: Offset) {
        let keep = self
            .entries
            .partition_point(|entry| entry.start_offset < end);
        self.entries.truncate(keep);
        assert!(
            self.entries
                .last()
                .is_none_or(|last| last.start_offset < end),
            "epoch entry at or past the log end {end} survived truncation"
        );
    }

    /// Removes the entries wholly below `log_start` (the next entry starts at or before it).
    /// The entry covering `log_start` stays with its original start: queries clamp to the log
    /// start, and keeping it means a file written before the log start became durable still
    /// describes the data that a crash could bring back.
    pub fn prune_before(&mut self, log_start: Offset) {
        let covering = self
            .entries
            .partition_point(|entry| entry.start_offset <= log_start);
        let drop = covering.saturating_sub(1);
        self.entries.drain(..drop);
        assert!(
            self.entries.len() < 2 || self.entries[1].start_offset > log_start,
            "an entry wholly below the log start {log_start} survived pruning"
        );
    }

    /// The entries starting below `offset` once those wholly below `log_start` are pruned:
    /// what the epoch file must hold when `offset` is the recovery point (the entries from
    /// there on are rebuilt by recovery's scan, or carried by a clean-shutdown marker).
    pub fn below(&self, offset: Offset, log_start: Offset) -> Vec<EpochEntry> {
        let mut pruned = self.clone();
        pruned.prune_before(log_start);
        pruned
            .entries
            .into_iter()
            .take_while(|entry| entry.start_offset < offset)
            .collect()
    }

    /// The epoch of the last readable batch that carries one: the latest entry, if its range
    /// `[start, log_end)` holds readable offsets (`>= log_start`).
    pub fn latest_live(&self, log_start: Offset, log_end: Offset) -> Option<LeaderEpoch> {
        self.entries
            .last()
            .filter(|last| last.start_offset < log_end && log_end > log_start)
            .map(|last| last.epoch)
    }

    /// OffsetsForLeaderEpoch: the largest live epoch `<= requested` and the offset where it
    /// ends (the start of the next live epoch, or `log_end`). When `requested` is below every
    /// live epoch (or none is live), the answer is `requested` itself ending where the first
    /// live epoch starts (or at `log_end`), as in Kafka. An entry is live when its range
    /// (up to the next entry's start or `log_end`) holds offsets in `[log_start, log_end)`, so
    /// the answer depends only on the readable batches: not on when pruning ran, nor on whether
    /// the cache was read from its file or rebuilt from the segments. End offsets are clamped to
    /// `[log_start, log_end]`.
    pub fn end_offset_for(
        &self,
        requested: LeaderEpoch,
        log_start: Offset,
        log_end: Offset,
    ) -> (LeaderEpoch, Offset) {
        assert!(
            log_start <= log_end,
            "log start {log_start} past log end {log_end}"
        );
        let live: Vec<EpochEntry> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(i, entry)| {
                let end = self
                    .entries
                    .get(i + 1)
                    .map_or(log_end, |next| next.start_offset)
                    .min(log_end);
                entry.start_offset < log_end && end > log_start
            })
            .map(|(_, entry)| *entry)
            .collect();
        let after = live.partition_point(|entry| entry.epoch <= requested);
        let end = live.get(after).map_or(log_end, |next| next.start_offset);
        let epoch = match after.checked_sub(1) {
            Some(floor) => live[floor].epoch,
            None => requested,
        };
        assert!(
            epoch <= requested,
            "answered epoch {epoch:?} above {requested:?}"
        );
        (epoch, end.clamp(log_start, log_end))
    }
}

/// A batch whose partition-leader-epoch field recovery found impossible, and so did not learn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DamagedEpoch {
    /// The batch's base offset.
    pub offset: Offset,
    /// The epoch the batch carries.
    pub epoch: LeaderEpoch,
}

/// Learns the epoch rises of batch headers read in log order, as recovery must: the
/// partition-leader-epoch field lies outside the batch CRC, so a damaged one passes every check
/// of the batch (`5` read as `0x7fff0005`), and learning it would make the log refuse every
/// append of the real epoch (`StaleEpoch`). Epochs never decrease along a log (the append paths
/// refuse it), so a batch whose epoch is below an earlier batch's shows one of the two fields
/// damaged, and the batch after them tells which:
///
/// - A rise is learned once the next batch carrying an epoch confirms it with the same or a
///   higher one.
/// - A batch carrying an epoch below the latest learned one is damaged (lowered): reported.
/// - A batch carrying an epoch below the pending rise (but not below the latest learned) makes
///   them suspect each other: if the batch after carries the rise's epoch or more, the lower
///   one was damaged; otherwise the rise was (raised) and is reported, not learned. When the
///   log ends first, the later batch is trusted (a raised field blocks appends, a lowered one
///   costs only the start of its epoch).
/// - The rise of the log's last batches has nothing after it and is learned: a leader elected
///   just before a crash writes exactly that (its epoch reaches the epoch file only at the next
///   checkpoint), so a damaged field there cannot be told from it.
///
/// So one damaged field anywhere but in the last batch is found; two adjacent batches damaged
/// alike are not. The batches themselves are kept (their records pass the CRC). Bounded: one
/// pending rise, one suspect, the entries learned and at most [`DAMAGED_EPOCHS_REPORTED_MAX`]
/// reports.
#[derive(Debug, Default)]
pub(crate) struct EpochScan {
    learned: EpochCache,
    /// A rise seen in the last batches, not yet confirmed.
    /// Invariant: its epoch is above `learned.latest()`.
    pending: Option<EpochEntry>,
    /// A batch after `pending` carrying an epoch below it (not below `learned.latest()`).
    /// Invariant: only with `pending`.
    suspect: Option<EpochEntry>,
    damaged: Vec<DamagedEpoch>,
}

/// The most damaged epoch fields one open reports (the first ones found); bounds the report.
pub(crate) const DAMAGED_EPOCHS_REPORTED_MAX: usize = 64;

impl EpochScan {
    /// Feeds the next batch's header, in log order.
    pub fn batch(&mut self, epoch: LeaderEpoch, base: Offset) {
        if epoch.0 < 0 {
            // Never stamped by a leader: not part of the cache.
            return;
        }
        let entry = EpochEntry {
            epoch,
            start_offset: base,
        };
        if let Some(suspect) = self.suspect.take() {
            let pending = self
                .pending
                .take()
                .expect("a suspect comes with a pending rise");
            assert!(
                base > suspect.start_offset,
                "batch at {base} not in log order"
            );
            if epoch >= pending.epoch {
                self.report(suspect);
                self.learned.assign(pending.epoch, pending.start_offset);
                self.pending = (epoch > pending.epoch).then_some(entry);
            } else {
                self.report(pending);
                self.settled(suspect);
                self.batch(epoch, base);
            }
            return;
        }
        if let Some(pending) = self.pending {
            assert!(
                base > pending.start_offset,
                "batch at {base} not in log order"
            );
            if epoch >= pending.epoch {
                self.learned.assign(pending.epoch, pending.start_offset);
                self.pending = (epoch > pending.epoch).then_some(entry);
            } else if self.learned.latest().is_some_and(|latest| epoch < latest) {
                self.report(entry);
            } else {
                self.suspect = Some(entry);
            }
            return;
        }
        self.settled(entry);
    }

    /// A batch with nothing pending before it.
    fn settled(&mut self, entry: EpochEntry) {
        assert!(
            self.pending.is_none() && self.suspect.is_none(),
            "settled batch with a rise pending"
        );
        match self.learned.latest() {
            Some(latest) if entry.epoch < latest => self.report(entry),
            Some(latest) if entry.epoch == latest => {}
            _ => self.pending = Some(entry),
        }
    }

    fn report(&mut self, entry: EpochEntry) {
        tracing::warn!(
            offset = %entry.start_offset,
            epoch = ?entry.epoch,
            "batch leader epoch contradicts the log's; not learned"
        );
        if self.damaged.len() < DAMAGED_EPOCHS_REPORTED_MAX {
            self.damaged.push(DamagedEpoch {
                offset: entry.start_offset,
                epoch: entry.epoch,
            });
        }
    }

    /// The rises learned (that of the last batches included) and the damaged fields found,
    /// in log order.
    pub fn finish(mut self) -> (Vec<EpochEntry>, Vec<DamagedEpoch>) {
        if let Some(suspect) = self.suspect.take() {
            // The log ends on a batch below the rise before it: trust the later one.
            let pending = self
                .pending
                .take()
                .expect("a suspect comes with a pending rise");
            self.report(pending);
            self.settled(suspect);
        }
        if let Some(pending) = self.pending.take() {
            self.learned.assign(pending.epoch, pending.start_offset);
        }
        self.damaged.sort_by_key(|damaged| damaged.offset);
        (self.learned.entries, self.damaged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> EpochCache {
        EpochCache::from_entries(
            entries
                .iter()
                .map(|&(epoch, start)| EpochEntry {
                    epoch: LeaderEpoch(epoch),
                    start_offset: Offset(start),
                })
                .collect(),
        )
        .expect("valid entries")
    }

    fn pairs(cache: &EpochCache) -> Vec<(i32, i64)> {
        cache
            .entries()
            .iter()
            .map(|entry| (entry.epoch.0, entry.start_offset.0))
            .collect()
    }

    // Goal: OffsetsForLeaderEpoch answers match Kafka's for every position of the requested
    // epoch relative to the entries. Method: a table of (request, expected answer).
    #[test]
    fn end_offset_for_table() {
        let epochs = cache(&[(1, 0), (3, 10), (6, 25)]);
        let check = |requested: i32, log_start: i64, expected: (i32, i64)| {
            let (epoch, end) =
                epochs.end_offset_for(LeaderEpoch(requested), Offset(log_start), Offset(40));
            assert_eq!(
                (epoch.0, end.0),
                expected,
                "request {requested} from {log_start}"
            );
        };
        check(0, 0, (0, 0)); // below every epoch: ends where the first starts
        check(1, 0, (1, 10));
        check(2, 0, (1, 10)); // unknown epoch between: the floor epoch answers
        check(3, 0, (3, 25));
        check(5, 0, (3, 25));
        check(6, 0, (6, 40)); // the latest epoch ends at the log end
        check(9, 0, (6, 40)); // above the latest: the latest and the log end
        check(1, 15, (1, 15)); // clamped to the log start
        let empty = EpochCache::default();
        assert_eq!(
            empty.end_offset_for(LeaderEpoch(4), Offset(0), Offset(7)),
            (LeaderEpoch(4), Offset(7))
        );
    }

    // Goal: assignment ignores stale and negative epochs; truncation and pruning keep exactly
    // the entries that still describe the log.
    #[test]
    fn assign_truncate_prune() {
        let mut epochs = EpochCache::default();
        assert!(!epochs.assign(LeaderEpoch(-1), Offset(0)));
        assert!(epochs.assign(LeaderEpoch(2), Offset(0)));
        assert!(!epochs.assign(LeaderEpoch(2), Offset(5)));
        assert!(!epochs.assign(LeaderEpoch(1), Offset(5)));
        assert!(epochs.assign(LeaderEpoch(4), Offset(5)));
        assert!(epochs.assign(LeaderEpoch(7), Offset(9)));
        assert_eq!(pairs(&epochs), [(2, 0), (4, 5), (7, 9)]);
        let mut truncated = epochs.clone();
        truncated.truncate_from_end(Offset(9));
        assert_eq!(pairs(&truncated), [(2, 0), (4, 5)]);
        truncated.truncate_from_end(Offset(6));
        assert_eq!(pairs(&truncated), [(2, 0), (4, 5)]);
        truncated.truncate_from_end(Offset(0));
        assert_eq!(pairs(&truncated), []);
        let mut pruned = epochs.clone();
        pruned.prune_before(Offset(4));
        assert_eq!(pairs(&pruned), [(2, 0), (4, 5), (7, 9)]);
        pruned.prune_before(Offset(5));
        assert_eq!(pairs(&pruned), [(4, 5), (7, 9)]);
        pruned.prune_before(Offset(20));
        assert_eq!(pairs(&pruned), [(7, 9)]);
    }

    /// `(epoch, offset)` pairs.
    type Pairs = Vec<(i32, i64)>;

    /// The entries and damaged fields an [`EpochScan`] finds in `(epoch, base)` batches.
    fn scan(batches: &[(i32, i64)]) -> (Pairs, Pairs) {
        let mut scan = EpochScan::default();
        for &(epoch, base) in batches {
            scan.batch(LeaderEpoch(epoch), Offset(base));
        }
        let (learned, damaged) = scan.finish();
        let learned = learned.iter().map(|e| (e.epoch.0, e.start_offset.0));
        let damaged = damaged.iter().map(|d| (d.epoch.0, d.offset.0));
        (learned.collect(), damaged.collect())
    }

    // Goal: a scan learns every rise a valid log holds (a rise in the last batch included) and
    // finds one damaged epoch field anywhere before the last batch, raised or lowered, without
    // learning it. Method: a table of batch epochs and what the scan must answer.
    #[test]
    fn epoch_scan_table() {
        const X: i32 = 0x7fff_0005;
        let check = |batches: &[(i32, i64)], learned: &[(i32, i64)], damaged: &[(i32, i64)]| {
            assert_eq!(
                scan(batches),
                (learned.to_vec(), damaged.to_vec()),
                "{batches:?}"
            );
        };
        check(&[], &[], &[]);
        check(&[(5, 0), (5, 1), (6, 2), (6, 3)], &[(5, 0), (6, 2)], &[]);
        check(&[(5, 0), (6, 1), (7, 2)], &[(5, 0), (6, 1), (7, 2)], &[]);
        check(&[(5, 0), (-1, 1), (6, 2)], &[(5, 0), (6, 2)], &[]);
        // Raised: the batches after it are lower.
        check(&[(5, 0), (X, 1), (5, 2), (5, 3)], &[(5, 0)], &[(X, 1)]);
        check(
            &[(5, 0), (X, 1), (6, 2), (6, 3)],
            &[(5, 0), (6, 2)],
            &[(X, 1)],
        );
        check(&[(X, 0), (5, 1), (5, 2)], &[(5, 1)], &[(X, 0)]);
        // Lowered: below the epoch before it, and the batch after is not.
        check(&[(5, 0), (1, 1), (5, 2)], &[(5, 0)], &[(1, 1)]);
        check(
            &[(5, 0), (6, 1), (1, 2), (6, 3)],
            &[(5, 0), (6, 1)],
            &[(1, 2)],
        );
        check(&[(5, 0), (5, 1), (1, 2), (5, 3)], &[(5, 0)], &[(1, 2)]);
        // The log ends right after the lower batch: the later one is trusted.
        check(&[(5, 0), (X, 1), (5, 2)], &[(5, 0)], &[(X, 1)]);
        check(&[(X, 0), (5, 1)], &[(5, 1)], &[(X, 0)]);
        // The last batch has nothing after it: a new leader's first batch looks the same.
        check(&[(5, 0), (5, 1), (X, 2)], &[(5, 0), (X, 2)], &[]);
    }

    // Goal: entries that break the invariant are refused (a damaged file is rebuilt instead).
    #[test]
    fn from_entries_checks_the_invariant() {
        let entry = |epoch, start| EpochEntry {
            epoch: LeaderEpoch(epoch),
            start_offset: Offset(start),
        };
        assert!(EpochCache::from_entries(vec![entry(1, 0), entry(1, 5)]).is_none());
        assert!(EpochCache::from_entries(vec![entry(1, 5), entry(2, 5)]).is_none());
        assert!(EpochCache::from_entries(vec![entry(2, 0), entry(1, 5)]).is_none());
        assert!(EpochCache::from_entries(vec![entry(-1, 0)]).is_none());
        assert!(EpochCache::from_entries(vec![entry(0, -3)]).is_none());
        assert!(EpochCache::from_entries(vec![entry(0, 0), entry(3, 1)]).is_some());
    }
}
