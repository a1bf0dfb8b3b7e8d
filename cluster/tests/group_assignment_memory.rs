//! Memory a consumer-group assignment costs the group coordinator, measured by a counting
//! allocator: the core, driven as the backend drives it (each appended record encoded and
//! decoded), syncs an assignment, describes the group, and a fresh core replays the log. The
//! assignment is the client's bytes (Kafka treats them as opaque), so what the coordinator
//! builds from them must be proportional to their size with a small constant, whatever the
//! bytes say: a long topic name listed with many partitions once cost a copy of the name per
//! partition (gigabytes for one 1 MiB SyncGroup, repeated by every replay at start-up).
//!
//! The allocator counts per thread, so each test measures only what its own thread allocates.

// STYLE §6: unwrap is allowed in tests.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use sluice_cluster::group::record::OffsetsRecord;
use sluice_cluster::group::{
    Action, GroupConfig, GroupCoordinator, GroupResponse, JoinRequest, SyncRequest,
};
use sluice_engine::TimestampMs;

/// The system allocator, counting this thread's live bytes and their peak.
struct Counting;

thread_local! {
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
    static PEAK_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: the thread's locals may be gone while it exits; nothing to count then.
    let _ = LIVE_BYTES.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK_BYTES.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds as it does for `System`; counting allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller upholds `alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller upholds `alloc_zeroed`'s contract for `layout`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns the most bytes this thread had allocated at once during it, above what
/// it had when `f` started.
fn peak_growth(f: impl FnOnce()) -> usize {
    let start = LIVE_BYTES.with(Cell::get);
    PEAK_BYTES.with(|peak| peak.set(start));
    f();
    let peak = PEAK_BYTES.with(Cell::get);
    usize::try_from(peak - start).unwrap()
}

const NOW: TimestampMs = TimestampMs(1_000_000);

/// Drives a core like the backend: replies kept, appends encoded, decoded and completed in
/// order, the records kept as the log.
struct Driver {
    core: GroupCoordinator<u32>,
    replies: BTreeMap<u32, GroupResponse>,
    log: Vec<OffsetsRecord>,
}

impl Driver {
    fn new() -> Driver {
        let config = GroupConfig {
            initial_rebalance_delay: Duration::ZERO,
            session_timeout_min: Duration::from_secs(1),
            ..GroupConfig::default()
        };
        Driver {
            core: GroupCoordinator::new(config, 7, NOW),
            replies: BTreeMap::new(),
            log: Vec::new(),
        }
    }

    fn apply(&mut self, actions: Vec<Action<u32>>) {
        let mut queue = actions;
        while !queue.is_empty() {
            let mut next = Vec::new();
            for action in queue {
                match action {
                    Action::Reply(token, response) => {
                        self.replies.insert(token, response);
                    }
                    Action::Append { id, records } => {
                        for record in records {
                            let key = record.encode_key().unwrap();
                            let value = record.encode_value().unwrap();
                            let stored = OffsetsRecord::decode(Some(&key), value.as_deref());
                            self.log.push(stored.unwrap());
                        }
                        next.extend(self.core.append_done(NOW, id, Ok(())));
                    }
                }
            }
            queue = next;
        }
    }

    /// One member joins `group` and is its leader; returns its id and generation.
    fn join(&mut self, group: &str) -> (String, i32) {
        let request = JoinRequest {
            group_id: group.into(),
            member_id: String::new(),
            group_instance_id: None,
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(10),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
            require_known_member_id: false,
        };
        let actions = self.core.join(NOW, 1, request);
        self.apply(actions);
        let actions = self.core.tick(NOW);
        self.apply(actions);
        let Some(GroupResponse::Join(joined)) = self.replies.remove(&1) else {
            panic!("no join answer")
        };
        assert_eq!(joined.error, None);
        (joined.member_id, joined.generation)
    }

    fn sync(&mut self, group: &str, member: &str, generation: i32, assignment: Bytes) {
        let request = SyncRequest {
            group_id: group.into(),
            generation,
            member_id: member.into(),
            group_instance_id: None,
            protocol_type: Some("consumer".into()),
            protocol_name: Some("range".into()),
            assignments: vec![(member.into(), assignment)],
        };
        let actions = self.core.sync(NOW, 2, request);
        self.apply(actions);
        let Some(GroupResponse::Sync(synced)) = self.replies.remove(&2) else {
            panic!("no sync answer")
        };
        assert_eq!(synced.error, None);
    }
}

/// A consumer assignment (version 0, no user data) of `partitions` of one topic.
fn assignment(topic: &str, partitions: impl ExactSizeIterator<Item = i32>) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    buf.put_i32(1);
    buf.put_i16(i16::try_from(topic.len()).unwrap());
    buf.put_slice(topic.as_bytes());
    buf.put_i32(i32::try_from(partitions.len()).unwrap());
    for p in partitions {
        buf.put_i32(p);
    }
    buf.put_i32(-1);
    buf.freeze()
}

/// Syncs `assignment` in a one-member group, describes the group, replays the log into a
/// fresh core and describes it there; returns the peak bytes that took.
fn sync_describe_replay(assignment: Bytes) -> usize {
    let mut driver = Driver::new();
    let (member, generation) = driver.join("g");
    peak_growth(|| {
        driver.sync("g", &member, generation, assignment);
        let described = driver.core.describe("g");
        assert!(!described.members[0].partitions.is_empty());
        drop(described);
        let mut fresh = Driver::new();
        for record in driver.log.clone() {
            fresh.core.replay(NOW, record);
        }
        fresh.core.finish_load(NOW);
        let described = fresh.core.describe("g");
        assert_eq!(described.members.len(), 1, "the member is restored");
        drop(described);
        drop(fresh);
    })
}

/// Peak bytes allowed per byte of assignment: the coordinator keeps the bytes themselves a few
/// times over (the request's, the encoded record, the decoded one), 8 bytes per partition entry
/// of 4 in its ownership table, and a description lists 24 bytes per entry.
const BYTES_PER_ASSIGNMENT_BYTE_MAX: usize = 16;

// Goal: a long topic name listed with many partitions costs the coordinator memory in
// proportion to the assignment's bytes, not a copy of the name per partition. Method: a
// 32,767-byte topic name with 4,096 partitions (48 KiB): a copy per partition would be 134 MiB
// at once; the peak must stay under 16 bytes per assignment byte.
#[test]
fn long_topic_name_costs_its_bytes_once() {
    let topic = "t".repeat(i16::MAX as usize);
    let bytes = assignment(&topic, 0..4096);
    let size = bytes.len();
    let peak = sync_describe_replay(bytes);
    assert!(
        peak <= BYTES_PER_ASSIGNMENT_BYTE_MAX * size,
        "peak {peak} bytes for a {size}-byte assignment"
    );
}

// Goal: the review's case, a 1 MiB SyncGroup assignment of one 32,767-byte topic name and
// 250,000 partition numbers, stays proportional to its size (it once cost ~8 GB, in the sync
// and again in every replay). Method: as above.
#[test]
fn one_mebibyte_assignment_stays_proportional() {
    let topic = "t".repeat(i16::MAX as usize);
    let bytes = assignment(&topic, 0..250_000);
    let size = bytes.len();
    assert!(size > 1_000_000);
    let peak = sync_describe_replay(bytes);
    assert!(
        peak <= BYTES_PER_ASSIGNMENT_BYTE_MAX * size,
        "peak {peak} bytes for a {size}-byte assignment"
    );
}
