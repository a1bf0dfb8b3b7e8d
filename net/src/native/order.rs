//! Produce ordering on one native connection: the requests a client pipelines for one
//! partition are appended in the order it wrote them.
//!
//! QUIC delivers each stream on its own and the server handles each stream in its own task,
//! so two produce requests for a partition may finish arriving in either order. A client that
//! wants them appended in order numbers them ([`ProduceSequence`]): per connection and
//! partition, `sequence` counts 0, 1, 2, ... in the order the requests were written, and
//! `unanswered_from` is the sequence of the oldest earlier request that had no answer yet when
//! this one was written (its own sequence when there was none). The server appends request
//! `s` only once every request from `unanswered_from` up to `s` is done (appended, or failed),
//! and fails it with [`ErrorCode::OutOfOrderSequence`] (retriable) when one of them failed, so
//! that a failed request is never overtaken by one written after it: the client resends the
//! failed one first. A request whose predecessor does not arrive within
//! [`NATIVE_PRODUCE_GAP_WAIT_MS_MAX`] fails the same way. The rules are in net/PROTOCOL.md
//! ("Produce ordering").
//!
//! Main items: [`ProduceOrder`] (one per connection), [`Turn`] (a request's place, released
//! when it is dropped). The state machine ([`Lane`]) is sans-IO and unit-tested; the waiting
//! is a thin shell around it.
//!
//! Shard-local: a connection's state lives on its shard. Must not depend on: storage.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

use futures::future::{Either, select};
use sluice_engine::TopicPartition;
use sluice_engine::rt;
use sluice_engine::util::Notify;

use crate::limits::{NATIVE_PRODUCE_GAP_WAIT_MS_MAX, NATIVE_PRODUCE_REORDER_WINDOW};
use crate::native::messages::{ErrorCode, ProduceSequence};

/// Why a sequenced produce request may not be appended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The numbers make no sense (a client bug): not retriable.
    #[error("produce sequence {sequence} (unanswered from {unanswered_from}) for {tp}: {reason}")]
    Invalid {
        /// The partition.
        tp: String,
        /// The request's sequence.
        sequence: u64,
        /// Its `unanswered_from`.
        unanswered_from: u64,
        /// What is wrong.
        reason: String,
    },
    /// An earlier request that this one must follow failed: retriable once it is resent.
    #[error(
        "produce sequence {sequence} for {tp} not appended: the earlier request {failed} \
         failed, and this one must not overtake it; resend both in order"
    )]
    EarlierFailed {
        /// The partition.
        tp: String,
        /// The request's sequence.
        sequence: u64,
        /// The failed earlier sequence.
        failed: u64,
    },
    /// An earlier request did not arrive in time: retriable.
    #[error(
        "produce sequence {sequence} for {tp} not appended: the earlier request {missing} \
         did not arrive within {NATIVE_PRODUCE_GAP_WAIT_MS_MAX} ms"
    )]
    Gap {
        /// The partition.
        tp: String,
        /// The request's sequence.
        sequence: u64,
        /// The first sequence still missing.
        missing: u64,
    },
}

impl OrderError {
    /// The native error code of this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            OrderError::Invalid { .. } => ErrorCode::InvalidRequest,
            OrderError::EarlierFailed { .. } | OrderError::Gap { .. } => {
                ErrorCode::OutOfOrderSequence
            }
        }
    }
}

/// What a request may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Every request it follows is done: append.
    Go,
    /// Wait for the sequence `missing`.
    Wait { missing: u64 },
    /// The earlier request `failed` failed: fail too.
    Fail { failed: u64 },
    /// The lane moved past it while it waited (a later request declared it answered).
    Skipped,
}

/// The sequencing state of one partition on one connection. Sans-IO.
#[derive(Debug, Default)]
struct Lane {
    /// Invariant: every sequence below `next` is done (or was abandoned by the client).
    next: u64,
    /// Done sequences above `next` (requests that failed before their turn).
    /// Invariant: every element is greater than `next`.
    done_ahead: BTreeSet<u64>,
    /// Sequences that failed, from `floor` on; later requests must not overtake them.
    failed: BTreeSet<u64>,
    /// The highest `unanswered_from` seen: the client knew the outcome of everything below.
    /// Invariant: `floor <= next`.
    floor: u64,
    /// Sequences that arrived and are not done yet (each has a `Turn` or is about to).
    waiting: BTreeSet<u64>,
}

impl Lane {
    /// Takes note of a request's numbers as it arrives; refuses numbers no correct client
    /// sends.
    fn arrive(&mut self, order: ProduceSequence) -> Result<(), String> {
        let ProduceSequence {
            sequence,
            unanswered_from,
        } = order;
        if unanswered_from > sequence {
            return Err("unanswered_from is after the sequence".to_owned());
        }
        if sequence - unanswered_from >= NATIVE_PRODUCE_REORDER_WINDOW {
            return Err(format!(
                "more than {NATIVE_PRODUCE_REORDER_WINDOW} requests unanswered, the most a \
                 connection can carry"
            ));
        }
        if unanswered_from > self.floor {
            // Everything below was answered to the client, so it is done here, or it never
            // got this far (refused before its header was read).
            self.floor = unanswered_from;
            self.failed = self.failed.split_off(&unanswered_from);
            if self.next < unanswered_from {
                self.next = unanswered_from;
                self.done_ahead = self.done_ahead.split_off(&unanswered_from);
                self.absorb();
            }
        }
        if sequence < self.next
            || self.done_ahead.contains(&sequence)
            || self.waiting.contains(&sequence)
        {
            return Err(format!("sequence already used (next is {})", self.next));
        }
        self.waiting.insert(sequence);
        assert!(self.floor <= self.next, "lane floor passed next");
        assert!(
            self.next >= unanswered_from,
            "next {} is behind unanswered_from {unanswered_from}",
            self.next
        );
        Ok(())
    }

    /// What request `order` may do now.
    fn step(&self, order: ProduceSequence) -> Step {
        if self.next < order.sequence {
            return Step::Wait { missing: self.next };
        }
        if self.next > order.sequence {
            // A later request said this one was answered while it still waited: the client
            // gave up on it (a timeout). It can no longer be placed.
            return Step::Skipped;
        }
        match self
            .failed
            .range(order.unanswered_from..order.sequence)
            .next()
        {
            Some(&failed) => Step::Fail { failed },
            None => Step::Go,
        }
    }

    /// Marks `sequence` done, successfully or not.
    fn finish(&mut self, sequence: u64, ok: bool) {
        let arrived = self.waiting.remove(&sequence);
        assert!(
            arrived,
            "sequence {sequence} finished without arriving, or twice"
        );
        if sequence < self.next {
            // Skipped: the lane moved past it already.
            return;
        }
        if !ok && sequence >= self.floor {
            self.failed.insert(sequence);
        }
        if sequence == self.next {
            self.next += 1;
            self.absorb();
        } else {
            let fresh = self.done_ahead.insert(sequence);
            assert!(fresh, "sequence {sequence} finished twice");
        }
        // Failures this far behind cannot matter: no request may follow them any more.
        let horizon = self.next.saturating_sub(NATIVE_PRODUCE_REORDER_WINDOW);
        if self.failed.first().is_some_and(|first| *first < horizon) {
            self.failed = self.failed.split_off(&horizon);
        }
    }

    fn absorb(&mut self) {
        while self.done_ahead.remove(&self.next) {
            self.next += 1;
        }
        assert!(
            self.done_ahead
                .first()
                .is_none_or(|first| *first > self.next),
            "done_ahead holds only sequences after next"
        );
    }
}

/// The produce sequencing of one connection. Shard-local; shared by the connection's stream
/// tasks through `Rc`.
///
/// Memory: one lane per partition the connection produced to with sequences (only
/// partitions this shard owns get one), each holding at most
/// `2 * NATIVE_PRODUCE_REORDER_WINDOW` sequence numbers.
#[derive(Debug, Default)]
pub struct ProduceOrder {
    lanes: RefCell<HashMap<TopicPartition, Lane>>,
    /// Notified whenever a sequence is done on any lane.
    changed: Notify,
}

/// A sequenced request's turn to append: it holds the partition's next place until it is
/// marked [`Turn::appended`] or dropped (which counts as a failure, so that requests after it
/// do not overtake it).
pub struct Turn {
    order: Rc<ProduceOrder>,
    tp: TopicPartition,
    sequence: u64,
    ok: bool,
}

impl Turn {
    /// The request's append has been issued (its offsets are assigned): later requests may
    /// go.
    pub fn appended(mut self) {
        self.ok = true;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.order.finish(&self.tp, self.sequence, self.ok);
    }
}

impl ProduceOrder {
    /// Waits until request `order` for `tp` may be appended, then returns its turn.
    ///
    /// Fails at once for numbers no correct client sends, when a request it must follow has
    /// failed, and after [`NATIVE_PRODUCE_GAP_WAIT_MS_MAX`] if one has not arrived. A failure
    /// marks the request done (failed): requests written after it fail too.
    pub async fn turn(
        self: &Rc<Self>,
        tp: &TopicPartition,
        order: ProduceSequence,
    ) -> Result<Turn, OrderError> {
        let invalid = |reason: String| OrderError::Invalid {
            tp: tp.to_string(),
            sequence: order.sequence,
            unanswered_from: order.unanswered_from,
            reason,
        };
        self.lanes
            .borrow_mut()
            .entry(tp.clone())
            .or_default()
            .arrive(order)
            .map_err(invalid)?;
        // From here the request is counted: the turn releases its place whatever happens.
        let turn = Turn {
            order: Rc::clone(self),
            tp: tp.clone(),
            sequence: order.sequence,
            ok: false,
        };
        let deadline = rt::sleep(Duration::from_millis(NATIVE_PRODUCE_GAP_WAIT_MS_MAX));
        futures::pin_mut!(deadline);
        // Each round ends when a sequence is done on some lane, or at the deadline.
        loop {
            let seen = self.changed.version();
            let step = self.lanes.borrow()[tp].step(order);
            match step {
                Step::Go => return Ok(turn),
                Step::Fail { failed } => {
                    return Err(OrderError::EarlierFailed {
                        tp: tp.to_string(),
                        sequence: order.sequence,
                        failed,
                    });
                }
                Step::Skipped => {
                    return Err(invalid(
                        "a later request declared it answered before it could be appended"
                            .to_owned(),
                    ));
                }
                Step::Wait { missing } => {
                    let changed = self.changed.changed(seen);
                    futures::pin_mut!(changed);
                    if let Either::Right(_) = select(changed, deadline.as_mut()).await {
                        return Err(OrderError::Gap {
                            tp: tp.to_string(),
                            sequence: order.sequence,
                            missing,
                        });
                    }
                }
            }
        }
    }

    fn finish(&self, tp: &TopicPartition, sequence: u64, ok: bool) {
        if let Some(lane) = self.lanes.borrow_mut().get_mut(tp) {
            lane.finish(sequence, ok);
        }
        self.changed.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(sequence: u64, unanswered_from: u64) -> ProduceSequence {
        ProduceSequence {
            sequence,
            unanswered_from,
        }
    }

    // Goal: pipelined requests take their turns in sequence order whatever order they arrive
    // in. Method: 0..4 arrive reversed; only the lowest may go each time.
    #[test]
    fn turns_in_sequence_order() {
        let mut lane = Lane::default();
        for s in (0..4).rev() {
            lane.arrive(seq(s, 0)).expect("valid");
        }
        for s in 0..4 {
            for later in s + 1..4 {
                assert_eq!(lane.step(seq(later, 0)), Step::Wait { missing: s });
            }
            assert_eq!(lane.step(seq(s, 0)), Step::Go);
            lane.finish(s, true);
        }
        assert_eq!(lane.next, 4);
    }

    // Goal: a failure fails the requests written while it was unanswered, not those written
    // after its answer (the client's resends). Method: 1 fails; 2 and 3 (unanswered from 1)
    // fail with it; the resend of 1 as 4 (nothing unanswered) goes, and so does 5 after it.
    #[test]
    fn failure_cascades_until_resent() {
        let mut lane = Lane::default();
        lane.arrive(seq(0, 0)).expect("valid");
        lane.finish(0, true);
        for s in 1..4 {
            lane.arrive(seq(s, 1)).expect("valid");
        }
        assert_eq!(lane.step(seq(1, 1)), Step::Go);
        lane.finish(1, false);
        assert_eq!(lane.step(seq(2, 1)), Step::Fail { failed: 1 });
        lane.finish(2, false);
        assert_eq!(lane.step(seq(3, 1)), Step::Fail { failed: 1 });
        lane.finish(3, false);
        lane.arrive(seq(4, 4)).expect("valid");
        assert_eq!(lane.step(seq(4, 4)), Step::Go);
        lane.finish(4, true);
        lane.arrive(seq(5, 5)).expect("valid");
        assert_eq!(lane.step(seq(5, 5)), Step::Go);
        assert!(lane.failed.is_empty(), "{lane:?}");
    }

    // Goal: a request that gave up waiting counts as failed when its turn comes, and a
    // sequence the client never delivered (refused before its header was read) is skipped
    // once the client says it was answered. Method: 1 never arrives; 2 gives up; 3, written
    // after 1's answer, goes once 2 is done.
    #[test]
    fn gaps_and_skipped_sequences() {
        let mut lane = Lane::default();
        lane.arrive(seq(0, 0)).expect("valid");
        lane.finish(0, true);
        lane.arrive(seq(2, 1)).expect("valid");
        assert_eq!(lane.step(seq(2, 1)), Step::Wait { missing: 1 });
        lane.finish(2, false);
        assert_eq!(lane.next, 1);
        lane.arrive(seq(3, 2)).expect("valid");
        assert_eq!(lane.next, 3);
        assert_eq!(lane.step(seq(3, 2)), Step::Fail { failed: 2 });
        lane.finish(3, false);
        lane.arrive(seq(4, 4)).expect("valid");
        assert_eq!(lane.step(seq(4, 4)), Step::Go);
    }

    // Goal: input a buggy client controls never breaks the lane's invariants: a sequence
    // given twice while the first still waits is refused, and a waiting request that a later
    // one declares answered is skipped, not appended out of order. Method: drive the lane
    // with those numbers; its assertions would panic on a broken invariant.
    #[test]
    fn buggy_clients_cannot_break_lanes() {
        let mut lane = Lane::default();
        lane.arrive(seq(1, 0)).expect("valid");
        let error = lane.arrive(seq(1, 0)).expect_err("a duplicate");
        assert!(error.contains("already used"), "{error}");
        lane.arrive(seq(3, 2)).expect("valid");
        assert_eq!(lane.step(seq(1, 0)), Step::Skipped);
        lane.finish(1, false);
        assert_eq!(lane.step(seq(3, 2)), Step::Wait { missing: 2 });
        lane.finish(3, false);
        assert!(lane.waiting.is_empty(), "{lane:?}");
    }

    // Goal: numbers no correct client sends are refused before they can stall a lane.
    #[test]
    fn invalid_numbers() {
        let mut lane = Lane::default();
        lane.arrive(seq(0, 0)).expect("valid");
        lane.finish(0, true);
        let window = NATIVE_PRODUCE_REORDER_WINDOW;
        for (bad, why) in [
            (seq(0, 0), "already used"),
            (seq(3, 4), "unanswered_from is after"),
            (seq(window + 1, 1), "unanswered"),
        ] {
            let error = lane.arrive(bad).expect_err("refused");
            assert!(error.contains(why), "{bad:?}: {error}");
        }
    }
}
