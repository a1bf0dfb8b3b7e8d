//! The shard-wide cache of recent batches ([`BatchCache`]): tailing readers are served from
//! memory and never touch the disk.
//!
//! Every appended batch is inserted (the same `Bytes` the writer writes from, so the cache costs
//! no copy); the cache is bounded by a byte budget, not by what the logs retain, and evicts the
//! oldest insertions first across all partitions of the shard. Per partition it holds one
//! contiguous run of batches in offset order; a read that starts inside that run is a hit.
//!
//! Owned by one shard and shared by its logs through `Rc`; `!Send`.
//!
//! Must not depend on: files or the write pipeline.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use crate::limits::BATCH_CACHE_BYTES_MAX;
use crate::types::Offset;

/// Identifies one partition's run in a [`BatchCache`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey(u64);

#[derive(Debug)]
struct Cached {
    base: Offset,
    next: Offset,
    bytes: Bytes,
    sequence: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Invariant: each run is contiguous (`run[i].next == run[i + 1].base`).
    runs: HashMap<CacheKey, VecDeque<Cached>>,
    /// Insertion order across partitions; entries whose batch is gone are skipped lazily.
    order: VecDeque<(CacheKey, u64)>,
    /// Invariant: the sum of the cached batches' lengths.
    used_bytes: usize,
    /// Number of cached batches (live entries of `order`).
    live: usize,
    next_sequence: u64,
    next_key: u64,
}

/// Counters of a [`BatchCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads served from the cache.
    pub hits: u64,
    /// Reads that had to go to disk.
    pub misses: u64,
    /// Batches evicted to stay within the budget.
    pub evictions: u64,
}

/// A shard's cache of recent batches, shared by the shard's logs (see the module docs).
#[derive(Debug)]
pub struct BatchCache {
    budget_bytes: usize,
    inner: RefCell<Inner>,
    hits: Cell<u64>,
    misses: Cell<u64>,
    evictions: Cell<u64>,
}

impl BatchCache {
    /// A cache holding at most `budget_bytes` of batches; 0 disables caching.
    ///
    /// # Panics
    /// If the budget exceeds [`BATCH_CACHE_BYTES_MAX`] (validate configs before).
    pub fn new(budget_bytes: usize) -> BatchCache {
        assert!(
            budget_bytes <= BATCH_CACHE_BYTES_MAX,
            "batch cache budget {budget_bytes} too large"
        );
        BatchCache {
            budget_bytes,
            inner: RefCell::new(Inner::default()),
            hits: Cell::new(0),
            misses: Cell::new(0),
            evictions: Cell::new(0),
        }
    }

    /// The byte budget.
    pub fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    /// Bytes of batches held now.
    pub fn used_bytes(&self) -> usize {
        self.inner.borrow().used_bytes
    }

    /// Hit, miss and eviction counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            evictions: self.evictions.get(),
        }
    }

    pub(crate) fn register(&self) -> CacheKey {
        let mut inner = self.inner.borrow_mut();
        inner.next_key += 1;
        CacheKey(inner.next_key)
    }

    /// Adds the batch `[base, next)` at the end of the partition's run. A batch that does not
    /// continue the run replaces it.
    pub(crate) fn insert(&self, key: CacheKey, base: Offset, next: Offset, bytes: Bytes) {
        assert!(next > base, "cached batch [{base}, {next}) is empty");
        if bytes.len() > self.budget_bytes {
            self.forget(key);
            return;
        }
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        inner.next_sequence += 1;
        let sequence = inner.next_sequence;
        let run = inner.runs.entry(key).or_default();
        if run.back().is_some_and(|last| last.next != base) {
            let removed: usize = run.iter().map(|cached| cached.bytes.len()).sum();
            inner.live -= run.len();
            inner.used_bytes -= removed;
            run.clear();
        }
        inner.used_bytes += bytes.len();
        inner.live += 1;
        run.push_back(Cached {
            base,
            next,
            bytes,
            sequence,
        });
        inner.order.push_back((key, sequence));
        while inner.used_bytes > self.budget_bytes {
            let Some((victim, victim_sequence)) = inner.order.pop_front() else {
                break;
            };
            let Some(run) = inner.runs.get_mut(&victim) else {
                continue;
            };
            if run
                .front()
                .is_some_and(|cached| cached.sequence == victim_sequence)
            {
                let cached = run.pop_front().expect("front checked");
                inner.used_bytes -= cached.bytes.len();
                inner.live -= 1;
                self.evictions.set(self.evictions.get() + 1);
            }
        }
        Self::compact_order(inner);
    }

    /// Drops stale entries from the insertion order when they outnumber live ones, so the order
    /// queue stays proportional to what is cached.
    fn compact_order(inner: &mut Inner) {
        if inner.order.len() <= 2 * inner.live + 1024 {
            return;
        }
        let runs = &inner.runs;
        inner.order.retain(|(key, sequence)| {
            // Sequences grow along each run, so a binary search finds a live entry.
            runs.get(key).is_some_and(|run| {
                run.binary_search_by_key(sequence, |cached| cached.sequence)
                    .is_ok()
            })
        });
    }

    /// The cached batches starting with the one containing `from`, up to `upper` (exclusive, on
    /// whole batches) and `max_bytes` (at least one batch). `None` on a miss.
    pub(crate) fn read(
        &self,
        key: CacheKey,
        from: Offset,
        upper: Offset,
        max_bytes: usize,
    ) -> Option<(Vec<Bytes>, Offset)> {
        let inner = self.inner.borrow();
        let hit = inner.runs.get(&key).and_then(|run| {
            let first = run.partition_point(|cached| cached.next <= from);
            let start = run.get(first)?;
            if start.base > from {
                return None;
            }
            let mut out = Vec::new();
            let mut bytes = 0;
            let mut next = from;
            for cached in run.range(first..) {
                if cached.next > upper {
                    break;
                }
                if !out.is_empty() && bytes + cached.bytes.len() > max_bytes {
                    break;
                }
                assert!(
                    out.is_empty() || cached.base == next,
                    "cache run not contiguous at {next}"
                );
                bytes += cached.bytes.len();
                next = cached.next;
                out.push(cached.bytes.clone());
            }
            Some((out, next))
        });
        match &hit {
            Some(_) => self.hits.set(self.hits.get() + 1),
            None => self.misses.set(self.misses.get() + 1),
        }
        hit
    }

    /// Removes the partition's batches at or after `offset` (a batch boundary).
    pub(crate) fn truncate_from(&self, key: CacheKey, offset: Offset) {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        let Some(run) = inner.runs.get_mut(&key) else {
            return;
        };
        while run.back().is_some_and(|cached| cached.next > offset) {
            let cached = run.pop_back().expect("back checked");
            inner.used_bytes -= cached.bytes.len();
            inner.live -= 1;
        }
    }

    /// Removes the partition's batches entirely below `offset`.
    pub(crate) fn remove_before(&self, key: CacheKey, offset: Offset) {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        let Some(run) = inner.runs.get_mut(&key) else {
            return;
        };
        while run.front().is_some_and(|cached| cached.next <= offset) {
            let cached = run.pop_front().expect("front checked");
            inner.used_bytes -= cached.bytes.len();
            inner.live -= 1;
        }
    }

    /// Removes everything cached for the partition.
    pub(crate) fn forget(&self, key: CacheKey) {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        if let Some(run) = inner.runs.remove(&key) {
            inner.used_bytes -= run.iter().map(|cached| cached.bytes.len()).sum::<usize>();
            inner.live -= run.len();
        }
        Self::compact_order(inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(len: usize) -> Bytes {
        Bytes::from(vec![7u8; len])
    }

    // Goal: reads hit inside the run, respect upper and max bytes, and miss outside it.
    #[test]
    fn read_hits_and_bounds() {
        let cache = BatchCache::new(1000);
        let key = cache.register();
        cache.insert(key, Offset(10), Offset(12), batch(100));
        cache.insert(key, Offset(12), Offset(15), batch(100));
        cache.insert(key, Offset(15), Offset(16), batch(100));
        let (out, next) = cache.read(key, Offset(13), Offset(100), 1000).expect("hit");
        assert_eq!((out.len(), next), (2, Offset(16)));
        let (out, next) = cache.read(key, Offset(10), Offset(15), 1000).expect("hit");
        assert_eq!((out.len(), next), (2, Offset(15)));
        let (out, next) = cache.read(key, Offset(10), Offset(100), 150).expect("hit");
        assert_eq!(
            (out.len(), next),
            (1, Offset(12)),
            "at least one batch, then the budget"
        );
        assert!(cache.read(key, Offset(9), Offset(100), 1000).is_none());
        assert!(cache.read(key, Offset(16), Offset(100), 1000).is_none());
        assert_eq!(cache.stats().misses, 2);
    }

    // Goal: eviction is oldest-first across partitions and keeps the byte budget.
    #[test]
    fn evicts_oldest_across_partitions() {
        let cache = BatchCache::new(300);
        let a = cache.register();
        let b = cache.register();
        cache.insert(a, Offset(0), Offset(1), batch(100));
        cache.insert(b, Offset(0), Offset(1), batch(100));
        cache.insert(a, Offset(1), Offset(2), batch(100));
        cache.insert(b, Offset(1), Offset(2), batch(100));
        assert_eq!(cache.used_bytes(), 300);
        assert!(
            cache.read(a, Offset(0), Offset(9), 1000).is_none(),
            "oldest (a@0) evicted"
        );
        assert!(cache.read(b, Offset(0), Offset(9), 1000).is_some());
        cache.insert(b, Offset(2), Offset(3), batch(100));
        assert!(
            cache.read(b, Offset(0), Offset(9), 1000).is_none(),
            "next oldest (b@0) evicted"
        );
        assert!(cache.read(a, Offset(1), Offset(9), 1000).is_some());
        assert_eq!(cache.stats().evictions, 2);
    }

    // Goal: truncation and non-contiguous inserts keep the accounting exact.
    #[test]
    fn truncate_and_replace_keep_accounting() {
        let cache = BatchCache::new(10_000);
        let key = cache.register();
        for i in 0..10 {
            cache.insert(key, Offset(i), Offset(i + 1), batch(10));
        }
        cache.truncate_from(key, Offset(5));
        assert_eq!(cache.used_bytes(), 50);
        cache.remove_before(key, Offset(2));
        assert_eq!(cache.used_bytes(), 30);
        cache.insert(key, Offset(7), Offset(8), batch(10));
        assert_eq!(cache.used_bytes(), 10, "a gap replaces the run");
        for round in 0..5000 {
            cache.insert(key, Offset(8 + round), Offset(9 + round), batch(1));
            cache.truncate_from(key, Offset(8 + round));
        }
        assert!(
            cache.inner.borrow().order.len() < 3000,
            "stale order entries are compacted"
        );
        cache.forget(key);
        assert_eq!(cache.used_bytes(), 0);
    }
}
