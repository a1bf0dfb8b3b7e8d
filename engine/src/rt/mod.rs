//! The runtime facade: the only place in Sluice that names glommio.
//!
//! Every crate reaches executors, timers, DMA files, sockets and cross-shard channels through
//! this module, so a runtime swap (or a simulator) stays a local change (STYLE §3). Most items
//! are thin re-exports; [`shards`] starts the pinned per-core executors with their channel mesh,
//! [`clock`] is the one place that reads time, and [`env`] checks the host at broker start.
//!
//! Must not depend on: anything above the runtime (logs, protocols, metadata).

pub mod clock;
pub mod env;
pub mod shards;

use std::future::Future;
use std::time::Duration;

pub mod fs;

/// Sockets driven by the shard's io_uring ring. These are `!Send`: they live on one shard.
pub mod net {
    pub use glommio::net::{Preallocated, TcpListener, TcpStream, UdpSocket};
}

/// Shard-local synchronisation primitives (`!Send`).
pub mod sync {
    pub use glommio::channels::local_channel::{LocalReceiver, LocalSender, new_bounded};
    pub use glommio::sync::{Gate, Permit, Semaphore};
}

/// A timer future and related types.
pub mod timer {
    pub use glommio::timer::{Timer, TimerActionOnce, TimerActionRepeat, sleep};
}

/// A spawned task: dropping it cancels the future unless `detach` was called.
pub type Task<T> = glommio::Task<T>;

/// Identifies a task queue created with [`create_task_queue`].
pub type TaskQueueHandle = glommio::TaskQueueHandle;

/// Spawns a future on the current shard.
///
/// glommio runs the new task at once, inside this call, until its first suspension point; the
/// caller must not hold a `RefCell` borrow the task may need.
pub fn spawn<T: 'static>(future: impl Future<Output = T> + 'static) -> Task<T> {
    glommio::spawn_local(future)
}

/// Spawns a future on the current shard into the given task queue.
pub fn spawn_into<T: 'static>(
    future: impl Future<Output = T> + 'static,
    queue: TaskQueueHandle,
) -> Task<T> {
    glommio::spawn_local_into(future, queue).expect("task queue belongs to this executor")
}

/// Creates a task queue with the given static shares, for background work (retention,
/// compaction, index rebuild) that must not starve the produce and fetch path.
pub fn create_task_queue(name: &str, shares: usize) -> TaskQueueHandle {
    glommio::executor().create_task_queue(
        glommio::Shares::Static(shares),
        glommio::Latency::NotImportant,
        name,
    )
}

/// Yields to other tasks of this shard if this one has used up its time slice.
pub async fn yield_if_needed() {
    glommio::yield_if_needed().await;
}

/// Lets every other task of this shard that is ready now run before this one continues.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}

/// Suspends this task until the shard's next IO poll, which hands the IO queued so far to the
/// kernel and reaps completions.
///
/// glommio submits queued IO (the DMA writes of write rounds, say) only when its executor leaves
/// the task queues: when every task waits, or when the preempt timer fires (100 ms). A task that
/// stages appends in a loop without waiting keeps the rounds they issue in user space, and the
/// disk idle, until it waits; it calls this once per write round's worth of appends. The
/// wake-up is a 1 µs timer, due by the time that poll runs.
pub async fn yield_to_io() {
    glommio::timer::sleep(Duration::from_micros(1)).await;
}

/// Waits for `duration` on the shard's timer wheel.
pub async fn sleep(duration: Duration) {
    glommio::timer::sleep(duration).await;
}

/// Runs `future` to completion on a new unpinned executor on the calling thread.
///
/// For tests, tools and benchmarks that need a runtime but no shards. `io_memory_bytes`
/// sizes the registered DMA buffer pool; keep it under `RLIMIT_MEMLOCK`.
pub fn block_on<T>(future: impl Future<Output = T>) -> T {
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(env::IO_MEMORY_BYTES_DEFAULT)
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(
            crate::limits::BLOCKING_THREADS_PER_SHARD,
        ))
        .make()
        .expect("executor starts (check `sluice broker` environment errors)");
    executor.run(async move {
        fs::prime_direct_io(&std::env::temp_dir()).await;
        if let Ok(dir) = std::env::current_dir() {
            fs::prime_direct_io(&dir).await;
        }
        future.await
    })
}

/// I/O memory of an executor that does no storage I/O: glommio's minimum.
const NETWORK_ONLY_IO_MEMORY_BYTES: usize = 64 << 10;

/// Runs `future` to completion on a new unpinned executor on the calling thread, for programs
/// that use only the network (the `sluice` client commands, client library users).
///
/// Unlike [`block_on`] it touches no directory (no direct-IO priming), registers only a
/// minimal I/O buffer pool, and reports an executor that cannot start (no io_uring, say) as
/// an error instead of panicking.
pub fn try_block_on<T>(future: impl Future<Output = T>) -> std::io::Result<T> {
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(NETWORK_ONLY_IO_MEMORY_BYTES)
        .make();
    let executor = into_io(executor)?;
    Ok(executor.run(future))
}

/// Runs blocking work (rare, small file-system operations such as writing the metadata file)
/// on the executor's blocking thread pool so the shard keeps serving meanwhile.
pub async fn spawn_blocking<F, R>(func: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    glommio::executor().spawn_blocking(func).await
}

/// The runtime's error type for file and socket operations.
pub type RtError = glommio::GlommioError<()>;

/// Converts a runtime result into a `std::io::Result` (the runtime's error type is not `Sync`,
/// so it cannot travel inside `anyhow` or most error enums).
pub fn into_io<T>(result: Result<T, RtError>) -> std::io::Result<T> {
    result.map_err(std::io::Error::from)
}

/// Counters the runtime kept for this shard since the previous call (glommio hands out deltas
/// and resets), as `(name, value)` pairs with units in the names. Callers accumulate them.
pub fn stats_delta() -> Vec<(&'static str, u64)> {
    let executor = glommio::executor();
    let stats = executor.executor_stats();
    let io = executor.io_stats();
    let rings = io.all_rings();
    let (file_reads, file_read_bytes) = rings.file_reads();
    let (file_writes, file_write_bytes) = rings.file_writes();
    let mut out = vec![
        ("tasks_executed_total", stats.tasks_executed()),
        ("scheduler_runs_total", stats.scheduler_runs()),
        (
            "runtime_microseconds_total",
            u64::try_from(stats.total_runtime().as_micros()).unwrap_or(u64::MAX),
        ),
        ("file_reads_total", file_reads),
        ("file_read_bytes_total", file_read_bytes),
        ("file_writes_total", file_writes),
        ("file_write_bytes_total", file_write_bytes),
    ];
    let queues: Vec<glommio::TaskQueueStats> = executor.all_task_queue_stats(Vec::new());
    let maintenance: u64 = queues
        .iter()
        .filter(|q| q.current_shares() < 1000)
        .map(|q| u64::try_from(q.runtime().as_micros()).unwrap_or(u64::MAX))
        .sum();
    let foreground: u64 = queues
        .iter()
        .filter(|q| q.current_shares() >= 1000)
        .map(|q| u64::try_from(q.runtime().as_micros()).unwrap_or(u64::MAX))
        .sum();
    out.push(("foreground_queue_runtime_microseconds_total", foreground));
    out.push(("background_queue_runtime_microseconds_total", maintenance));
    out
}
