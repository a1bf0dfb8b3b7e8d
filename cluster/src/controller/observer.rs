//! [`Observer`]: a broker outside the controller quorum (its `--node-id` is not among the
//! seeds). It holds no raft log; on shard 0 it
//!
//! - pulls the metadata from the voters (`PeerKind::MetadataFetch`, long-polled: a voter
//!   answers once it has applied a newer revision or learned another controller) and
//!   publishes each snapshot to its shards, as a voter does after applying an entry;
//! - heartbeats the active controller with its registration, which registers (and later
//!   unfences) it like any voter, so it gets replicas and leaderships;
//! - forwards metadata commands to the active controller (`PeerKind::Command`).
//!
//! This is how a cluster grows: start a broker with a new `--node-id` and the same `--seeds`,
//! then move replicas to it (`sluice cluster reassign`). Every snapshot travels whole (JSON);
//! with many partitions a delta feed would be cheaper.
//!
//! Must not depend on: sockets (peer links are the `PeerTransport`).

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_engine::BrokerId;
use sluice_engine::util::Notify;

use super::{ControllerEntry, apply_entry, forward_command, heartbeat_call, within};
use crate::metadata::{BrokerRegistration, MetadataCommand, MetadataError, MetadataSnapshot};
use crate::peer::{PeerKind, PeerRequest, PeerTransport};
use crate::shard::Shard;

/// A metadata pull from a voter: answer when the voter has applied a revision after `after`
/// or names a controller other than `controller`, else after `wait_ms`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MetadataFetch {
    /// The revision the observer has.
    pub after: u64,
    /// The controller the observer knows (-1: none).
    pub controller: i32,
    /// Longest the voter holds the request.
    pub wait_ms: u32,
}

/// How an observer runs. Built by `tools` from flags.
#[derive(Clone, Debug)]
pub struct ObserverConfig {
    /// This broker (not a voter).
    pub node: BrokerId,
    /// The voters.
    pub voters: Vec<BrokerId>,
    /// What this broker registers with.
    pub registration: BrokerRegistration,
    /// The controller fences a broker silent for this long; heartbeats go at a quarter of it.
    pub session_timeout: Duration,
}

/// How long a voter holds a metadata pull.
const FETCH_WAIT: Duration = Duration::from_secs(1);
/// Pause before trying the next voter after a failure.
const RETRY: Duration = Duration::from_millis(200);
/// How long a forwarded command waits for its revision to arrive here.
const COMMAND_WAIT: Duration = Duration::from_secs(10);

/// The observer on shard 0 (see the module docs).
pub struct Observer {
    config: ObserverConfig,
    shard: Weak<Shard>,
    peers: Rc<dyn PeerTransport>,
    /// The latest snapshot published to the shards.
    state: RefCell<Arc<MetadataSnapshot>>,
    /// The revision the shards have been given (all reconciled).
    published_revision: Cell<u64>,
    published: Notify,
    /// Which voter to ask next when the controller is unknown or failed.
    next_voter: Cell<usize>,
    /// When the active controller last took a heartbeat.
    last_contact: Cell<Option<std::time::Instant>>,
}

impl Observer {
    /// Starts pulling metadata and heartbeating from the calling shard (shard 0); the tasks
    /// end when the shard is dropped.
    pub fn start(
        config: ObserverConfig,
        shard: &Rc<Shard>,
        peers: Rc<dyn PeerTransport>,
    ) -> Rc<Observer> {
        assert_eq!(shard.id().0, 0, "the observer runs on shard 0");
        assert!(
            !config.voters.contains(&config.node) && !config.voters.is_empty(),
            "an observer is a broker outside a non-empty quorum"
        );
        let observer = Rc::new(Observer {
            config,
            shard: Rc::downgrade(shard),
            peers,
            state: RefCell::new(shard.metadata()),
            published_revision: Cell::new(0),
            published: Notify::new(),
            next_voter: Cell::new(0),
            last_contact: Cell::new(None),
        });
        sluice_engine::rt::spawn(Self::puller(Rc::downgrade(&observer))).detach();
        sluice_engine::rt::spawn(Self::heartbeater(Rc::downgrade(&observer))).detach();
        observer
    }

    /// Whether the active controller took a heartbeat within `session`.
    pub fn in_contact(&self, session: Duration) -> bool {
        within(self.last_contact.get(), session)
    }

    /// The controller the latest metadata names, or the next voter to try.
    fn target(&self) -> BrokerId {
        let controller = self.state.borrow().controller;
        if controller.0 >= 0 {
            return controller;
        }
        self.rotate()
    }

    fn rotate(&self) -> BrokerId {
        let voters = &self.config.voters;
        let index = self.next_voter.get() % voters.len();
        self.next_voter.set(index + 1);
        voters[index]
    }

    async fn puller(weak: Weak<Observer>) {
        let mut voter = None;
        // Runs for the life of the observer; every failure waits `RETRY`.
        loop {
            let Some(observer) = weak.upgrade() else {
                return;
            };
            let from = *voter.get_or_insert_with(|| observer.rotate());
            let (after, controller) = {
                let state = observer.state.borrow();
                (state.revision.0, state.controller.0)
            };
            let request = MetadataFetch {
                after,
                controller,
                wait_ms: u32::try_from(FETCH_WAIT.as_millis()).expect("fits"),
            };
            let call = observer.peers.call(
                from,
                PeerRequest {
                    kind: PeerKind::MetadataFetch,
                    header: serde_json::to_vec(&request)
                        .expect("requests encode as JSON")
                        .into(),
                    payload: Bytes::new(),
                },
            );
            drop(observer);
            let answer = match call.await {
                Ok(Ok(response)) => {
                    serde_json::from_slice::<Option<MetadataSnapshot>>(&response.header)
                        .map_err(|e| e.to_string())
                }
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err("link closed".to_owned()),
            };
            let Some(observer) = weak.upgrade() else {
                return;
            };
            match answer {
                Ok(Some(snapshot)) => {
                    let newer = snapshot.revision >= observer.state.borrow().revision;
                    if newer {
                        let snapshot = Arc::new(snapshot);
                        let revision = snapshot.revision.0;
                        *observer.state.borrow_mut() = Arc::clone(&snapshot);
                        let Some(shard) = observer.shard.upgrade() else {
                            return;
                        };
                        drop(observer);
                        shard.publish(snapshot).await;
                        if let Some(observer) = weak.upgrade() {
                            observer.published_revision.set(revision);
                            observer.published.notify();
                        }
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(voter = from.0, %error, "metadata pull failed");
                    voter = None;
                    drop(observer);
                    sluice_engine::rt::sleep(RETRY).await;
                }
            }
        }
    }

    async fn heartbeater(weak: Weak<Observer>) {
        // Runs for the life of the observer.
        loop {
            let Some(interval) = weak.upgrade().map(|o| o.config.session_timeout / 4) else {
                return;
            };
            sluice_engine::rt::sleep(interval).await;
            let Some(observer) = weak.upgrade() else {
                return;
            };
            let to = observer.target();
            let call = heartbeat_call(&*observer.peers, to, observer.config.registration.clone());
            drop(observer);
            let accepted = call.await.is_ok_and(|answer| answer.is_controller);
            if accepted && let Some(observer) = weak.upgrade() {
                observer
                    .last_contact
                    .set(Some(sluice_engine::rt::clock::now()));
            }
            if !accepted {
                tracing::debug!(voter = to.0, "heartbeat not taken; trying another voter");
                if let Some(observer) = weak.upgrade() {
                    // The next heartbeat goes to the next voter until metadata names one.
                    observer.rotate();
                }
            }
        }
    }

    /// Applies `command` through the active controller and returns once the new revision
    /// has been published on this broker.
    pub async fn submit(
        &self,
        command: MetadataCommand,
    ) -> Result<Arc<MetadataSnapshot>, MetadataError> {
        let entry = ControllerEntry {
            command,
            topic_id: uuid::Uuid::new_v4(),
            node: self.config.node.0,
            shard_count: self.config.registration.shard_count(),
        };
        apply_entry(&self.state.borrow(), &entry)?;
        let mut last = MetadataError::NotController;
        let mut revision = None;
        // The controller the metadata names first, then each voter once.
        let mut candidates = vec![self.target()];
        candidates.extend(self.config.voters.iter().copied());
        candidates.dedup();
        for to in candidates {
            match forward_command(&*self.peers, to, &entry).await {
                Ok(applied) => {
                    revision = Some(applied);
                    break;
                }
                Err(MetadataError::NotController) => {}
                Err(other) => {
                    last = other;
                    break;
                }
            }
        }
        let Some(revision) = revision else {
            return Err(last);
        };
        let deadline = sluice_engine::rt::clock::now() + COMMAND_WAIT;
        // Bounded by the deadline: each pass waits for a publish or a short timer.
        while self.published_revision.get() < revision.0 {
            if sluice_engine::rt::clock::now() >= deadline {
                return Err(MetadataError::Refused(format!(
                    "revision {} committed but not yet seen by this broker",
                    revision.0
                )));
            }
            let seen = self.published.version();
            let published = std::pin::pin!(self.published.changed(seen));
            let timer = std::pin::pin!(sluice_engine::rt::sleep(Duration::from_millis(100)));
            futures::future::select(published, timer).await;
        }
        Ok(self
            .shard
            .upgrade()
            .map_or_else(|| Arc::clone(&self.state.borrow()), |s| s.metadata()))
    }
}
