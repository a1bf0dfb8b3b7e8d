//! Starting the shards: one glommio executor per core, pinned, joined by a channel mesh.
//!
//! A shard is one executor thread and everything it owns. [`start`] spawns `count` threads,
//! pins shard `i` to the `i`-th CPU it is given, joins every shard into a full mesh of bounded
//! channels carrying one message type `M`, and runs the caller's shard body on each.
//! The message enum itself belongs to the layer above (`cluster::shard::ShardMsg`).
//! Each shard also has `BLOCKING_THREADS_PER_SHARD` blocking threads on its CPU, for the file
//! operations io_uring cannot issue.

use std::future::Future;
use std::rc::Rc;

use glommio::channels::channel_mesh::{MeshBuilder, Senders};
use glommio::{LocalExecutorBuilder, Placement, PoolPlacement};

use crate::limits::BLOCKING_THREADS_PER_SHARD;
use crate::types::ShardId;

/// How to start the shards.
#[derive(Clone, Debug)]
pub struct ShardsConfig {
    /// Number of shards; each gets its own thread and executor.
    pub count: usize,
    /// CPUs to pin shards to, one per shard in order; empty means unpinned.
    pub cpus: Vec<usize>,
    /// Bytes of registered DMA buffer memory per shard.
    pub io_memory_bytes: usize,
    /// Capacity of each shard-to-shard channel.
    pub inbox_capacity: usize,
    /// Thread name prefix.
    pub name: String,
    /// How long an idle shard keeps polling its rings, timers and channels before it sleeps
    /// in the kernel; zero sleeps at once. Polling trades a busy core for no wake-up latency
    /// and no sleep and wake-up system calls (the timer of each sleep, the context switches),
    /// which dominate a shard's CPU at tens of thousands of small requests a second. Only
    /// worth it when the shard has its core to itself.
    pub idle_poll: std::time::Duration,
}

/// Why the shards could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// An executor thread could not be created (io_uring, memlock, pinning).
    #[error("cannot start shard {shard}: {reason}")]
    Executor {
        /// The shard that failed.
        shard: usize,
        /// What glommio said.
        reason: String,
    },
}

/// A message could not be delivered because the target inbox is full or gone.
#[derive(Debug)]
pub struct Overloaded<M>(pub M);

/// The sending half of a shard's view of the mesh. `!Send`: lives on its shard.
pub struct Mesh<M: Send + 'static> {
    id: ShardId,
    count: usize,
    senders: Senders<M>,
    local: Rc<dyn Fn(M)>,
}

impl<M: Send + 'static> Mesh<M> {
    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Number of shards in the broker.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Delivers `msg` to shard `to` without waiting; a full inbox returns the message back so
    /// the caller can turn it into backpressure. A message to the own shard is handled inline.
    pub fn try_send(&self, to: ShardId, msg: M) -> Result<(), Overloaded<M>> {
        assert!(
            usize::from(to.0) < self.count,
            "send to {to} of {} shards",
            self.count
        );
        if to == self.id {
            (self.local)(msg);
            return Ok(());
        }
        self.senders
            .try_send_to(usize::from(to.0), msg)
            .map_err(|error| match error {
                glommio::GlommioError::Closed(glommio::ResourceType::Channel(msg))
                | glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(msg)) => {
                    Overloaded(msg)
                }
                other => panic!("mesh send to {to} failed unexpectedly: {other}"),
            })
    }

    /// Delivers `msg` to shard `to`, waiting while its inbox is full.
    pub async fn send(&self, to: ShardId, msg: M) -> Result<(), Overloaded<M>> {
        assert!(
            usize::from(to.0) < self.count,
            "send to {to} of {} shards",
            self.count
        );
        if to == self.id {
            (self.local)(msg);
            return Ok(());
        }
        self.senders
            .send_to(usize::from(to.0), msg)
            .await
            .map_err(|error| match error {
                glommio::GlommioError::Closed(glommio::ResourceType::Channel(msg)) => {
                    Overloaded(msg)
                }
                other => panic!("mesh send to {to} failed unexpectedly: {other}"),
            })
    }
}

/// What a shard body receives: its identity, the mesh, and a way to start serving its inbox.
pub struct ShardContext<M: Send + 'static> {
    /// This shard.
    pub id: ShardId,
    /// Number of shards.
    pub count: usize,
    builder: MeshBuilder<M, glommio::channels::channel_mesh::Full>,
}

impl<M: Send + 'static> ShardContext<M> {
    /// Joins the mesh (every shard must call this) and spawns one receive loop per peer that
    /// hands each message to `handler`. Messages sent to the own shard call `handler` inline.
    ///
    /// The receive loops run until their peer closes the channel.
    pub async fn join_mesh(self, handler: impl Fn(M) + 'static) -> Mesh<M> {
        let (senders, mut receivers) = self
            .builder
            .join()
            .await
            .expect("every shard joins the mesh exactly once");
        let handler: Rc<dyn Fn(M)> = Rc::new(handler);
        for (_peer, receiver) in receivers.streams() {
            let handler = Rc::clone(&handler);
            glommio::spawn_local(async move {
                // Runs until the peer shard closes its sender (shutdown).
                while let Some(msg) = receiver.recv().await {
                    handler(msg);
                }
            })
            .detach();
        }
        Mesh {
            id: self.id,
            count: self.count,
            senders,
            local: handler,
        }
    }
}

/// Running shards; `join` waits for every shard body to return.
pub struct ShardsHandle {
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl ShardsHandle {
    /// Waits for all shard threads to finish. Returns the first failure, if any.
    pub fn join(self) -> Result<(), StartError> {
        let mut first = Ok(());
        for (shard, handle) in self.handles.into_iter().enumerate() {
            if let Err(error) = handle.join()
                && first.is_ok()
            {
                first = Err(StartError::Executor {
                    shard,
                    reason: error.to_string(),
                });
            }
        }
        first
    }
}

/// Starts `config.count` shards, each running `body(context)` on its own pinned executor.
pub fn start<M, F, Fut>(config: ShardsConfig, body: F) -> Result<ShardsHandle, StartError>
where
    M: Send + 'static,
    F: Fn(ShardContext<M>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    assert!(config.count >= 1, "at least one shard");
    assert!(
        config.cpus.is_empty() || config.cpus.len() >= config.count,
        "one cpu per shard when pinning"
    );
    assert!(
        config.count <= usize::from(u16::MAX),
        "shard ids fit in u16"
    );
    let mesh = MeshBuilder::<M, _>::full(config.count, config.inbox_capacity);
    let mut handles = Vec::with_capacity(config.count);
    for shard in 0..config.count {
        let (placement, pool) = match config.cpus.get(shard) {
            Some(&cpu) => {
                let cpus = glommio::CpuSet::online()
                    .map_err(|error| StartError::Executor {
                        shard,
                        reason: error.to_string(),
                    })?
                    .filter(|location| location.cpu == cpu);
                (
                    Placement::Fixed(cpu),
                    PoolPlacement::Fenced(BLOCKING_THREADS_PER_SHARD, cpus),
                )
            }
            None => (
                Placement::Unbound,
                PoolPlacement::Unbound(BLOCKING_THREADS_PER_SHARD),
            ),
        };
        let body = body.clone();
        let builder = mesh.clone();
        let count = config.count;
        // The blocking threads share the shard's CPU: they wait on the device, not the CPU.
        let mut executor = LocalExecutorBuilder::new(placement)
            .blocking_thread_pool_placement(pool)
            .name(&format!("{}-{shard}", config.name))
            .io_memory(config.io_memory_bytes);
        if !config.idle_poll.is_zero() {
            executor = executor.spin_before_park(config.idle_poll);
        }
        let handle = executor
            .spawn(move || async move {
                let id = ShardId(u16::try_from(shard).expect("checked above"));
                body(ShardContext { id, count, builder }).await;
            })
            .map_err(|error| StartError::Executor {
                shard,
                reason: error.to_string(),
            })?;
        handles.push(handle);
    }
    Ok(ShardsHandle { handles })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    // Goal: every shard can message every other shard through the mesh, and self-sends are
    // handled inline. Method: three unpinned shards each send one message to all shards and
    // count what they receive.
    #[test]
    fn mesh_delivers_to_every_shard() {
        let received = Arc::new(AtomicUsize::new(0));
        let config = ShardsConfig {
            count: 3,
            cpus: vec![],
            io_memory_bytes: crate::rt::env::IO_MEMORY_BYTES_DEFAULT,
            inbox_capacity: 16,
            name: "test".into(),
            idle_poll: std::time::Duration::ZERO,
        };
        let counter = Arc::clone(&received);
        let handle = start::<usize, _, _>(config, move |ctx| {
            let counter = Arc::clone(&counter);
            async move {
                let count = ctx.count;
                let seen = Rc::new(std::cell::Cell::new(0usize));
                let seen_in_handler = Rc::clone(&seen);
                let mesh = ctx
                    .join_mesh(move |_msg: usize| {
                        seen_in_handler.set(seen_in_handler.get() + 1);
                    })
                    .await;
                for to in 0..count {
                    mesh.send(ShardId(to as u16), usize::from(mesh.id().0))
                        .await
                        .ok();
                }
                while seen.get() < count {
                    crate::rt::sleep(std::time::Duration::from_millis(1)).await;
                }
                counter.fetch_add(seen.get(), Ordering::SeqCst);
            }
        })
        .expect("shards start");
        handle.join().expect("shards finish");
        assert_eq!(received.load(Ordering::SeqCst), 9);
    }
}
