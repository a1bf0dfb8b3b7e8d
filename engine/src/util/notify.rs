//! A shard-local "something changed" signal for waiters such as long-polling fetches.
//!
//! `!Send`: lives on one shard. Waiters remember the version they saw and wake when it moves.
//! Cheaper than a channel per waiter and never holds a borrow across `.await`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A version counter with wakers.
#[derive(Debug, Default)]
pub struct Notify {
    version: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    /// A new signal at version 0.
    pub fn new() -> Notify {
        Notify::default()
    }

    /// The current version; pass it to [`Notify::changed`].
    pub fn version(&self) -> u64 {
        self.version.get()
    }

    /// Bumps the version and wakes every waiter.
    pub fn notify(&self) {
        self.version.set(self.version.get().wrapping_add(1));
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers {
            waker.wake();
        }
    }

    /// Resolves once the version differs from `seen`.
    pub fn changed(&self, seen: u64) -> Changed<'_> {
        Changed { notify: self, seen }
    }
}

/// Future returned by [`Notify::changed`].
#[derive(Debug)]
pub struct Changed<'a> {
    notify: &'a Notify,
    seen: u64,
}

impl Future for Changed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.version.get() != self.seen {
            return Poll::Ready(());
        }
        let mut wakers = self.notify.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
