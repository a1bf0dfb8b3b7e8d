//! The controller quorum: the cluster's single metadata writer, replicated with raft-rs.
//!
//! Every broker in the seed list is a voter and runs a [`Controller`] on its shard 0. The
//! raft log holds [`ControllerEntry`]s (a `MetadataCommand` plus the inputs its transition
//! needs, fixed by the proposer so that every broker computes the same snapshot); every voter
//! applies committed entries in order with the pure `metadata::apply_with` and publishes the
//! result to its shards (`ShardMsg::Metadata`), as a single broker does. The raft leader is the
//! active controller: it alone proposes, tracks broker heartbeats, fences brokers that miss
//! `session_timeout`, creates `__consumer_offsets` once enough brokers registered, and moves
//! leadership back to preferred replicas. A command given to another broker is forwarded to
//! the leader over the peer link (`PeerKind::Command`), or refused with `NotController` when
//! no leader is known (the client retries).
//!
//! The driver is one task (`run`) that owns the `RawNode`: ticks, inbound raft messages and
//! proposals are queued to it; each `Ready` is persisted (`storage`, fdatasync on the blocking
//! pool) before the messages that depend on it are sent. Publishing to the shards runs in its
//! own task so that opening partitions never delays raft ticks.
//!
//! Lives on shard 0 only (`!Send`). Must not depend on: the network layer (peers are reached
//! through `peer::PeerTransport`).

pub mod election;
mod observer;
pub mod storage;

pub use observer::{MetadataFetch, Observer, ObserverConfig};

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::oneshot;
use protobuf::Message as _;
use raft::prelude::{Entry, EntryType, Message};
use raft::{RawNode, StateRole, Storage as _};
use sluice_engine::util::Notify;
use sluice_engine::{BrokerId, Revision};

use crate::group::OFFSETS_TOPIC;
use crate::metadata::{
    ApplyInputs, BrokerRegistration, MetadataCommand, MetadataError, MetadataSnapshot,
    PlacementContext, TopicId, apply_with,
};
use crate::peer::{PeerError, PeerKind, PeerRequest, PeerResponse, PeerTransport};
use crate::shard::Shard;
use storage::{RaftFiles, Recovered};

/// The controller's directory under the data directory (`DATA/__controller`). A single
/// broker never writes it, so finding it tells one that the data is a cluster voter's.
pub const CONTROLLER_DIR: &str = "__controller";

/// How the controller runs. Built by `tools` from flags.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// This broker.
    pub node: BrokerId,
    /// The voters: the seed brokers, the same list on every broker.
    pub voters: Vec<BrokerId>,
    /// `DATA/__controller`.
    pub dir: PathBuf,
    /// What this broker registers with.
    pub registration: BrokerRegistration,
    /// A broker that has not heartbeated for this long is fenced.
    pub session_timeout: Duration,
    /// Raft tick; elections time out after 10-20 ticks, leaders heartbeat every 2.
    pub tick: Duration,
    /// Take a snapshot (and compact the log) after this many applied entries.
    pub snapshot_entries: u64,
    /// How often the active controller looks for partitions to move back to their preferred
    /// leader.
    pub leader_rebalance_interval: Duration,
    /// Partitions of `__consumer_offsets` when the controller creates it.
    pub offsets_topic_partitions: i32,
}

/// Raft ticks before a follower without a leader starts an election (raft-rs randomises
/// between this and twice this).
const ELECTION_TICKS: usize = 10;
/// Raft ticks between leader heartbeats.
const HEARTBEAT_TICKS: usize = 2;
/// How long a caller waits for its command to commit and be applied here.
const COMMAND_WAIT: Duration = Duration::from_secs(10);
/// Most queued inputs (raft messages, proposals) before new ones are refused: raft resends
/// what is dropped, and proposals get a retriable error.
const INBOX_INPUTS_MAX: usize = 4096;

/// `in_flight` key of the offsets-topic creation duty (broker ids are not negative).
const OFFSETS_DUTY: BrokerId = BrokerId(-2);
/// `in_flight` key of the preferred-leader election duty.
const REBALANCE_DUTY: BrokerId = BrokerId(-3);

/// One raft log entry: a command and the inputs fixed by its proposer.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ControllerEntry {
    /// The change.
    pub command: MetadataCommand,
    /// Id of a topic it creates.
    pub topic_id: uuid::Uuid,
    /// Proposer's node and shard count (used only when no broker is registered).
    pub node: i32,
    /// Proposer's shard count.
    pub shard_count: usize,
}

/// A broker's heartbeat to the active controller.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Heartbeat {
    /// Who it is and how to reach it.
    pub registration: BrokerRegistration,
}

/// The controller's answer to a heartbeat.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct HeartbeatAnswer {
    /// Whether the receiver is the active controller.
    pub is_controller: bool,
    /// The receiver's applied metadata revision.
    pub revision: u64,
}

/// The answer to a forwarded command.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum CommandAnswer {
    /// Applied at this revision.
    Applied(u64),
    /// The receiver is not the active controller.
    NotController,
    /// The topic exists (auto-creation races are common, and callers treat this as success).
    TopicExists(String),
    /// Refused for another reason.
    Refused(String),
}

/// A voter's role and progress, for `sluice cluster status`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VoterStatus {
    /// Broker.
    pub id: i32,
    /// Highest log index known replicated to it (the leader knows; others report 0).
    pub matched: u64,
    /// True for the leader.
    pub leader: bool,
}

/// What the controller knows about the quorum.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct ControllerStatus {
    /// The active controller (-1: none known).
    pub leader: i32,
    /// Current raft term.
    pub term: u64,
    /// This broker's role: leader, follower, candidate, pre-candidate.
    pub role: String,
    /// Last log index committed.
    pub commit: u64,
    /// Last log index applied here.
    pub applied: u64,
    /// Metadata revision applied here.
    pub revision: u64,
    /// The voters.
    pub voters: Vec<VoterStatus>,
}

/// The driver's inbox is full; the input was dropped.
#[derive(Debug)]
struct InboxFull;

enum Input {
    Raft(Message),
    Propose {
        entry: ControllerEntry,
        reply: oneshot::Sender<Result<Revision, MetadataError>>,
    },
    Tick,
}

fn raft_id(broker: BrokerId) -> u64 {
    u64::try_from(broker.0).expect("broker ids are not negative") + 1
}

fn broker_id(raft: u64) -> BrokerId {
    if raft == 0 {
        BrokerId(-1)
    } else {
        BrokerId(i32::try_from(raft - 1).expect("raft ids come from broker ids"))
    }
}

/// A stable cluster id for a seed list, so every voter names the cluster alike without
/// coordination: FNV-1a over the sorted voter ids.
pub fn cluster_id(voters: &[BrokerId]) -> String {
    let mut ids: Vec<i32> = voters.iter().map(|b| b.0).collect();
    ids.sort_unstable();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for id in ids {
        for byte in id.to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("sluice-{hash:016x}")
}

/// The raft state a voter starts from, loaded before the shards start (blocking I/O).
pub struct ControllerBoot {
    files: RaftFiles,
    recovered: Recovered,
    /// The metadata at the snapshot (or an empty cluster): what the shards start from; the
    /// committed entries after it are applied once the controller runs.
    pub initial: MetadataSnapshot,
}

/// Opens `config.dir` and replays it.
pub fn boot(config: &ControllerConfig) -> Result<ControllerBoot, storage::RaftStorageError> {
    let voters: Vec<u64> = config.voters.iter().map(|b| raft_id(*b)).collect();
    let (files, recovered) = RaftFiles::open(&config.dir, &voters)?;
    let initial = match &recovered.snapshot {
        Some((_, metadata)) => metadata.clone(),
        None => MetadataSnapshot {
            cluster_id: cluster_id(&config.voters),
            ..MetadataSnapshot::default()
        },
    };
    Ok(ControllerBoot {
        files,
        recovered,
        initial,
    })
}

/// The controller of one voter. Lives on shard 0.
pub struct Controller {
    config: ControllerConfig,
    shard: Weak<Shard>,
    peers: Rc<dyn PeerTransport>,
    inbox: RefCell<VecDeque<Input>>,
    wake: Notify,
    /// Latest applied metadata (the controller field is not maintained here).
    state: RefCell<Arc<MetadataSnapshot>>,
    /// Bumped whenever `state` or the known leader changes; the publisher follows it.
    changed: Notify,
    /// Revision the shards have been given (all reconciled).
    published: Cell<Revision>,
    published_notify: Notify,
    status: RefCell<ControllerStatus>,
    /// Proposals of this node waiting for their entry to apply, by proposal id.
    pending: RefCell<HashMap<u64, oneshot::Sender<Result<Revision, MetadataError>>>>,
    /// When this broker last reached the active controller (or was it).
    last_contact: Cell<Option<Instant>>,
    /// Active controller only: when each broker last heartbeated.
    heartbeats: RefCell<HashMap<BrokerId, Instant>>,
    /// Active controller only: brokers with a registration or fence in flight.
    in_flight: RefCell<HashSet<BrokerId>>,
    next_proposal: Cell<u64>,
}

impl Controller {
    /// Starts the controller on the calling shard (shard 0) from `boot`, with `peers` for
    /// shard 0's links. Spawns the raft driver, the publisher, the heartbeat sender and the
    /// active-controller duties; they stop when the shard is dropped.
    pub fn start(
        config: ControllerConfig,
        boot: ControllerBoot,
        shard: &Rc<Shard>,
        peers: Rc<dyn PeerTransport>,
    ) -> Rc<Controller> {
        assert_eq!(shard.id().0, 0, "the controller runs on shard 0");
        assert!(
            config.voters.contains(&config.node),
            "only voters run a controller"
        );
        let ControllerBoot {
            files,
            recovered,
            initial,
        } = boot;
        let revision = initial.revision;
        let seed = uuid::Uuid::new_v4().as_u64_pair().0;
        let controller = Rc::new(Controller {
            config,
            shard: Rc::downgrade(shard),
            peers,
            inbox: RefCell::new(VecDeque::new()),
            wake: Notify::new(),
            state: RefCell::new(Arc::new(initial)),
            changed: Notify::new(),
            published: Cell::new(revision),
            published_notify: Notify::new(),
            status: RefCell::new(ControllerStatus {
                leader: -1,
                ..ControllerStatus::default()
            }),
            pending: RefCell::new(HashMap::new()),
            last_contact: Cell::new(None),
            heartbeats: RefCell::new(HashMap::new()),
            in_flight: RefCell::new(HashSet::new()),
            next_proposal: Cell::new(seed),
        });
        let node = new_raw_node(&controller.config, recovered);
        sluice_engine::rt::spawn(Rc::clone(&controller).run(node, files)).detach();
        sluice_engine::rt::spawn(Self::publisher(Rc::downgrade(&controller))).detach();
        sluice_engine::rt::spawn(Self::ticker(Rc::downgrade(&controller))).detach();
        sluice_engine::rt::spawn(Self::heartbeater(Rc::downgrade(&controller))).detach();
        controller
    }

    /// The quorum as this voter sees it.
    pub fn status(&self) -> ControllerStatus {
        let mut status = self.status.borrow().clone();
        status.revision = self.state.borrow().revision.0;
        status
    }

    /// The active controller, if known.
    pub fn leader(&self) -> Option<BrokerId> {
        let leader = self.status.borrow().leader;
        (leader >= 0).then_some(BrokerId(leader))
    }

    /// Whether this broker reached the active controller (or was it) within `session`.
    pub fn in_contact(&self, session: Duration) -> bool {
        within(self.last_contact.get(), session)
    }

    fn is_leader(&self) -> bool {
        self.leader() == Some(self.config.node)
    }

    /// Queues `input` for the driver; fails (the input dropped) when the inbox is full.
    fn push(&self, input: Input) -> Result<(), InboxFull> {
        let mut inbox = self.inbox.borrow_mut();
        if inbox.len() >= INBOX_INPUTS_MAX {
            return Err(InboxFull);
        }
        inbox.push_back(input);
        drop(inbox);
        self.wake.notify();
        Ok(())
    }

    /// Handles a request that arrived over a peer link of shard 0.
    pub async fn handle_peer(&self, request: PeerRequest) -> Result<PeerResponse, PeerError> {
        match request.kind {
            PeerKind::Raft => {
                let message = Message::parse_from_bytes(&request.header)
                    .map_err(|e| PeerError::Remote(format!("bad raft message: {e}")))?;
                // A full inbox drops the message; raft retransmits.
                let _ = self.push(Input::Raft(message));
                Ok(PeerResponse::default())
            }
            PeerKind::Heartbeat => {
                let heartbeat: Heartbeat = serde_json::from_slice(&request.header)
                    .map_err(|e| PeerError::Remote(format!("bad heartbeat: {e}")))?;
                let answer = self.heartbeat(heartbeat.registration);
                Ok(json_response(&answer))
            }
            PeerKind::Command => {
                let entry: ControllerEntry = serde_json::from_slice(&request.header)
                    .map_err(|e| PeerError::Remote(format!("bad command: {e}")))?;
                let answer = if self.is_leader() {
                    match self.propose(entry).await {
                        Ok(revision) => CommandAnswer::Applied(revision.0),
                        Err(MetadataError::NotController) => CommandAnswer::NotController,
                        Err(MetadataError::TopicExists(name)) => CommandAnswer::TopicExists(name),
                        Err(error) => CommandAnswer::Refused(error.to_string()),
                    }
                } else {
                    CommandAnswer::NotController
                };
                Ok(json_response(&answer))
            }
            PeerKind::MetadataFetch => {
                let fetch: MetadataFetch = serde_json::from_slice(&request.header)
                    .map_err(|e| PeerError::Remote(format!("bad metadata fetch: {e}")))?;
                Ok(json_response(&self.metadata_for(&fetch).await))
            }
            _ => Err(PeerError::Unsupported),
        }
    }

    /// An observer's metadata pull: the applied snapshot (naming the controller) once it is
    /// newer than the observer's or names another controller, else `None` after the wait.
    async fn metadata_for(&self, fetch: &MetadataFetch) -> Option<MetadataSnapshot> {
        let wait = Duration::from_millis(u64::from(fetch.wait_ms)).min(Duration::from_secs(5));
        let deadline = sluice_engine::rt::clock::now() + wait;
        // Bounded by the deadline.
        loop {
            let seen = self.changed.version();
            let controller = self.leader().unwrap_or(BrokerId(-1));
            let state = Arc::clone(&self.state.borrow());
            if state.revision.0 > fetch.after || controller.0 != fetch.controller {
                let mut snapshot = MetadataSnapshot::clone(&state);
                snapshot.controller = controller;
                return Some(snapshot);
            }
            let now = sluice_engine::rt::clock::now();
            if now >= deadline {
                return None;
            }
            let changed = std::pin::pin!(self.changed.changed(seen));
            let timer = std::pin::pin!(sluice_engine::rt::sleep(deadline - now));
            futures::future::select(changed, timer).await;
        }
    }

    /// Records a heartbeat (active controller only) and registers or unfences the broker when
    /// its registration is missing, fenced or changed.
    fn heartbeat(&self, registration: BrokerRegistration) -> HeartbeatAnswer {
        let revision = self.state.borrow().revision.0;
        if !self.is_leader() {
            return HeartbeatAnswer {
                is_controller: false,
                revision,
            };
        }
        let id = registration.id;
        self.heartbeats
            .borrow_mut()
            .insert(id, sluice_engine::rt::clock::now());
        let current = self.state.borrow().cluster.registration(id).cloned();
        let wanted = BrokerRegistration {
            fenced: false,
            ..registration
        };
        if current.as_ref() != Some(&wanted) && self.in_flight.borrow_mut().insert(id) {
            let command = MetadataCommand::RegisterBroker {
                registration: wanted,
            };
            self.propose_background(command, id);
        }
        HeartbeatAnswer {
            is_controller: true,
            revision,
        }
    }

    /// Proposes `command` for the active controller's own duties; `broker`'s in-flight mark
    /// is cleared when it is done.
    fn propose_background(&self, command: MetadataCommand, broker: BrokerId) {
        let entry = self.entry(command);
        let (reply, answer) = oneshot::channel();
        if self.push(Input::Propose { entry, reply }).is_err() {
            self.in_flight.borrow_mut().remove(&broker);
            return;
        }
        let weak = self.shard.clone();
        sluice_engine::rt::spawn(async move {
            let outcome = answer.await;
            if let Some(shard) = weak.upgrade()
                && let Some(controller) = shard.controller()
            {
                controller.in_flight.borrow_mut().remove(&broker);
            }
            if let Ok(Err(error)) = outcome {
                tracing::warn!(broker = broker.0, %error, "controller duty refused");
            }
        })
        .detach();
    }

    fn entry(&self, command: MetadataCommand) -> ControllerEntry {
        ControllerEntry {
            command,
            topic_id: uuid::Uuid::new_v4(),
            node: self.config.node.0,
            shard_count: self.config.registration.shard_count(),
        }
    }

    /// Applies `command` through the quorum: proposed here when this broker is the active
    /// controller, forwarded to it otherwise. Returns once the change is applied and
    /// published on this broker.
    pub async fn submit(
        &self,
        command: MetadataCommand,
    ) -> Result<Arc<MetadataSnapshot>, MetadataError> {
        let entry = self.entry(command);
        // Validate against what this broker knows first, so that errors are exact.
        apply_entry(&self.state.borrow(), &entry)?;
        let revision = match self.leader() {
            Some(leader) if leader == self.config.node => self.propose(entry).await?,
            Some(leader) => self.forward(leader, &entry).await?,
            None => return Err(MetadataError::NotController),
        };
        self.wait_published(revision).await?;
        Ok(self
            .shard
            .upgrade()
            .map_or_else(|| Arc::clone(&self.state.borrow()), |s| s.metadata()))
    }

    async fn forward(
        &self,
        leader: BrokerId,
        entry: &ControllerEntry,
    ) -> Result<Revision, MetadataError> {
        forward_command(&*self.peers, leader, entry).await
    }

    async fn propose(&self, entry: ControllerEntry) -> Result<Revision, MetadataError> {
        let (reply, answer) = oneshot::channel();
        if self.push(Input::Propose { entry, reply }).is_err() {
            return Err(MetadataError::NotController);
        }
        let timeout = sluice_engine::rt::sleep(COMMAND_WAIT);
        match futures::future::select(answer, Box::pin(timeout)).await {
            futures::future::Either::Left((Ok(result), _)) => result,
            futures::future::Either::Left((Err(_), _)) => Err(MetadataError::NotController),
            futures::future::Either::Right(_) => Err(MetadataError::Refused(
                "the controller did not commit the change in time".into(),
            )),
        }
    }

    async fn wait_published(&self, revision: Revision) -> Result<(), MetadataError> {
        let deadline = sluice_engine::rt::clock::now() + COMMAND_WAIT;
        // Bounded by the deadline: each pass waits for a publish or a short timer.
        while self.published.get() < revision {
            if sluice_engine::rt::clock::now() >= deadline {
                return Err(MetadataError::Refused(format!(
                    "revision {} committed but not yet applied on this broker",
                    revision.0
                )));
            }
            let seen = self.published_notify.version();
            let changed = self.published_notify.changed(seen);
            let timer = sluice_engine::rt::sleep(Duration::from_millis(100));
            futures::future::select(Box::pin(changed), Box::pin(timer)).await;
        }
        Ok(())
    }

    async fn ticker(weak: Weak<Controller>) {
        // Runs for the life of the controller.
        loop {
            let Some(tick) = weak.upgrade().map(|c| c.config.tick) else {
                return;
            };
            sluice_engine::rt::sleep(tick).await;
            let Some(controller) = weak.upgrade() else {
                return;
            };
            let _ = controller.push(Input::Tick);
        }
    }

    /// Sends this broker's heartbeat to the active controller every quarter of the session
    /// timeout (to itself when it is the active controller).
    async fn heartbeater(weak: Weak<Controller>) {
        // Runs for the life of the controller.
        loop {
            let Some(interval) = weak.upgrade().map(|c| c.config.session_timeout / 4) else {
                return;
            };
            sluice_engine::rt::sleep(interval).await;
            let Some(controller) = weak.upgrade() else {
                return;
            };
            let registration = controller.config.registration.clone();
            match controller.leader() {
                None => {}
                Some(leader) if leader == controller.config.node => {
                    controller.heartbeat(registration);
                    controller
                        .last_contact
                        .set(Some(sluice_engine::rt::clock::now()));
                }
                Some(leader) => {
                    let call = heartbeat_call(&*controller.peers, leader, registration);
                    drop(controller);
                    match call.await {
                        Ok(answer) if answer.is_controller => {
                            if let Some(controller) = weak.upgrade() {
                                controller
                                    .last_contact
                                    .set(Some(sluice_engine::rt::clock::now()));
                            }
                        }
                        Ok(_) => {
                            tracing::debug!("heartbeat went to a broker that is not the controller")
                        }
                        Err(error) => tracing::debug!(%error, "heartbeat failed"),
                    }
                }
            }
        }
    }

    /// Gives the shards every new state (coalescing), one publish at a time.
    async fn publisher(weak: Weak<Controller>) {
        let mut seen = 0;
        // Runs for the life of the controller.
        loop {
            let Some(controller) = weak.upgrade() else {
                return;
            };
            let changed = controller.changed.version();
            if changed == seen {
                let wait = controller.changed.changed(seen);
                let timer = sluice_engine::rt::sleep(Duration::from_millis(200));
                // The timer bounds how long this holds the controller while idle.
                futures::future::select(Box::pin(wait), Box::pin(timer)).await;
                continue;
            }
            seen = changed;
            let mut snapshot = MetadataSnapshot::clone(&controller.state.borrow());
            snapshot.controller = controller.leader().unwrap_or(BrokerId(-1));
            let revision = snapshot.revision;
            let Some(shard) = controller.shard.upgrade() else {
                return;
            };
            drop(controller);
            shard.publish(Arc::new(snapshot)).await;
            let Some(controller) = weak.upgrade() else {
                return;
            };
            controller
                .published
                .set(revision.max(controller.published.get()));
            controller.published_notify.notify();
        }
    }

    /// The raft driver: the only code that touches the `RawNode`.
    async fn run(self: Rc<Self>, mut node: RawNode<MemStorageHandle>, files: RaftFiles) {
        let mut files_slot = Some(files);
        let mut last_duty = sluice_engine::rt::clock::now();
        let mut last_rebalance = sluice_engine::rt::clock::now();
        let mut snapshot_index = node.store().snapshot_index();
        // Runs for the life of the controller; ends when the shard drops it.
        loop {
            if self.shard.strong_count() == 0 {
                return;
            }
            let seen = self.wake.version();
            let inputs: Vec<Input> = self.inbox.borrow_mut().drain(..).collect();
            for input in inputs {
                match input {
                    Input::Raft(message) => {
                        if let Err(error) = node.step(message) {
                            tracing::debug!(%error, "raft message rejected");
                        }
                    }
                    Input::Propose { entry, reply } => {
                        if node.raft.state != StateRole::Leader {
                            let _ = reply.send(Err(MetadataError::NotController));
                            continue;
                        }
                        let id = self.next_proposal.get();
                        self.next_proposal.set(id.wrapping_add(1));
                        let data = serde_json::to_vec(&entry).expect("entries encode as JSON");
                        match node.propose(id.to_le_bytes().to_vec(), data) {
                            Ok(()) => {
                                self.pending.borrow_mut().insert(id, reply);
                            }
                            Err(_) => {
                                let _ = reply.send(Err(MetadataError::NotController));
                            }
                        }
                    }
                    Input::Tick => {
                        node.tick();
                    }
                }
            }
            let now = sluice_engine::rt::clock::now();
            let since_duty = now.duration_since(last_duty);
            if since_duty >= self.config.session_timeout / 4 {
                last_duty = now;
                if since_duty > self.config.session_timeout / 2 {
                    // This shard did not run for a while (starved or paused): the
                    // heartbeats it did not read say nothing about the brokers. Give every
                    // one a fresh session instead of fencing them all.
                    tracing::warn!(
                        ms = since_duty.as_millis() as u64,
                        "controller paused; restarting every broker's session"
                    );
                    let mut heartbeats = self.heartbeats.borrow_mut();
                    for seen in heartbeats.values_mut() {
                        *seen = now;
                    }
                }
                self.duties(&mut last_rebalance);
            }
            if node.has_ready() {
                let files_now = files_slot.take().expect("files are back after each ready");
                let files_back = self
                    .on_ready(&mut node, files_now, &mut snapshot_index)
                    .await;
                files_slot = Some(files_back);
                // More may be ready already; loop without waiting.
                continue;
            }
            if self.wake.version() == seen {
                self.wake.changed(seen).await;
            }
        }
    }

    async fn on_ready(
        &self,
        node: &mut RawNode<MemStorageHandle>,
        mut files: RaftFiles,
        snapshot_index: &mut u64,
    ) -> RaftFiles {
        let mut ready = node.ready();
        self.send_messages(ready.take_messages());
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            match storage::snapshot_metadata(&snapshot) {
                Ok(metadata) => {
                    node.store()
                        .mem
                        .wl()
                        .apply_snapshot(snapshot.clone())
                        .expect("raft hands over snapshots newer than the log start");
                    node.store().set_snapshot(snapshot.clone());
                    let hs = node.store().mem.rl().hard_state().clone();
                    files = persist(files, move |f| f.install_snapshot(&snapshot, &[], &hs)).await;
                    *snapshot_index = node.store().snapshot_index();
                    *self.state.borrow_mut() = Arc::new(metadata);
                    self.changed.notify();
                }
                Err(reason) => {
                    crate::fatal::fatal(
                        crate::fatal::Reason::ControllerLog,
                        &format!("the controller leader sent an undecodable snapshot: {reason}"),
                    );
                }
            }
        }
        self.apply_committed(ready.take_committed_entries());
        let entries = ready.entries().clone();
        let hs = ready.hs().cloned();
        if !entries.is_empty() || hs.is_some() {
            node.store()
                .mem
                .wl()
                .append(&entries)
                .expect("raft appends contiguously");
            if let Some(hs) = &hs {
                node.store().mem.wl().set_hardstate(hs.clone());
            }
            files = persist(files, move |f| f.append(&entries, hs.as_ref())).await;
        }
        self.send_messages(ready.take_persisted_messages());
        if let Some(ss) = ready.ss() {
            self.on_role(ss.leader_id, ss.raft_state);
        }
        let mut light = node.advance(ready);
        if let Some(commit) = light.commit_index() {
            let hs = {
                let store = node.store();
                let mut core = store.mem.wl();
                core.mut_hard_state().set_commit(commit);
                core.hard_state().clone()
            };
            files = persist(files, move |f| f.append(&[], Some(&hs))).await;
        }
        self.send_messages(light.take_messages());
        self.apply_committed(light.take_committed_entries());
        node.advance_apply();
        self.update_status(node);
        let applied = node.raft.raft_log.applied;
        if applied >= *snapshot_index + self.config.snapshot_entries {
            files = self.take_snapshot(node, files, applied).await;
            *snapshot_index = applied;
        }
        files
    }

    async fn take_snapshot(
        &self,
        node: &mut RawNode<MemStorageHandle>,
        files: RaftFiles,
        applied: u64,
    ) -> RaftFiles {
        let store = node.store();
        let term = store
            .term(applied)
            .expect("the applied entry is in the log");
        let voters: Vec<u64> = self.config.voters.iter().map(|b| raft_id(*b)).collect();
        let metadata = MetadataSnapshot::clone(&self.state.borrow());
        let snapshot = storage::raft_snapshot(applied, term, &voters, &metadata);
        let last = store.last_index().expect("memory storage answers");
        let later = if last > applied {
            store
                .entries(
                    applied + 1,
                    last + 1,
                    None,
                    raft::GetEntriesContext::empty(false),
                )
                .expect("entries after the applied index are in memory")
        } else {
            Vec::new()
        };
        let hs = store.mem.rl().hard_state().clone();
        {
            let mut core = store.mem.wl();
            core.apply_snapshot(snapshot.clone())
                .expect("the applied index is not compacted");
            core.append(&later)
                .expect("the entries follow the snapshot");
            core.set_hardstate(hs.clone());
        }
        store.set_snapshot(snapshot.clone());
        tracing::info!(index = applied, "controller snapshot taken; log compacted");
        persist(files, move |f| f.install_snapshot(&snapshot, &later, &hs)).await
    }

    fn send_messages(&self, messages: Vec<Message>) {
        for message in messages {
            let to = broker_id(message.to);
            let header = message.write_to_bytes().expect("raft messages encode");
            let request = PeerRequest {
                kind: PeerKind::Raft,
                header: header.into(),
                payload: Bytes::new(),
            };
            if let Err(error) = self.peers.send(to, request) {
                tracing::trace!(%error, to = to.0, "raft message not sent");
            }
        }
    }

    fn apply_committed(&self, entries: Vec<Entry>) {
        for entry in entries {
            if entry.data.is_empty() || entry.get_entry_type() != EntryType::EntryNormal {
                continue;
            }
            let proposal = <[u8; 8]>::try_from(&entry.context[..])
                .ok()
                .map(u64::from_le_bytes);
            let reply = proposal.and_then(|id| self.pending.borrow_mut().remove(&id));
            let result = match serde_json::from_slice::<ControllerEntry>(&entry.data) {
                Ok(decoded) => {
                    let current = Arc::clone(&self.state.borrow());
                    match apply_entry(&current, &decoded) {
                        Ok(next) => {
                            let revision = next.revision;
                            *self.state.borrow_mut() = Arc::new(next);
                            self.changed.notify();
                            Ok(revision)
                        }
                        Err(error) => Err(error),
                    }
                }
                Err(error) => Err(MetadataError::Refused(format!(
                    "undecodable entry: {error}"
                ))),
            };
            if let Err(error) = &result {
                tracing::debug!(index = entry.index, %error, "committed command refused");
            }
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        }
    }

    fn on_role(&self, leader: u64, role: StateRole) {
        let leader = broker_id(leader);
        let was = self.status.borrow().leader;
        {
            let mut status = self.status.borrow_mut();
            status.leader = leader.0;
            status.role = role_name(role).into();
        }
        if role == StateRole::Leader && was != leader.0 {
            tracing::info!(node = self.config.node.0, "became the active controller");
            // Every broker gets a full session to heartbeat the new controller.
            let now = sluice_engine::rt::clock::now();
            let mut heartbeats = self.heartbeats.borrow_mut();
            heartbeats.clear();
            for registration in &self.state.borrow().cluster.registrations {
                heartbeats.insert(registration.id, now);
            }
            self.in_flight.borrow_mut().clear();
        }
        if role != StateRole::Leader {
            // Proposals of a deposed leader may never commit: their callers retry.
            self.pending.borrow_mut().clear();
        }
        if was != leader.0 {
            tracing::info!(controller = leader.0, "controller changed");
            self.changed.notify();
        }
    }

    fn update_status(&self, node: &RawNode<MemStorageHandle>) {
        let raft = &node.raft;
        let mut status = self.status.borrow_mut();
        status.term = raft.term;
        status.commit = raft.raft_log.committed;
        status.applied = raft.raft_log.applied;
        status.role = role_name(raft.state).into();
        status.leader = broker_id(raft.leader_id).0;
        let leader = raft.state == StateRole::Leader;
        status.voters = self
            .config
            .voters
            .iter()
            .map(|b| VoterStatus {
                id: b.0,
                matched: if leader {
                    raft.prs().get(raft_id(*b)).map_or(0, |p| p.matched)
                } else {
                    0
                },
                leader: broker_id(raft.leader_id) == *b,
            })
            .collect();
    }

    /// The active controller's periodic work: fence silent brokers, create the offsets
    /// topic, move leaders back to preferred replicas.
    fn duties(&self, last_rebalance: &mut Instant) {
        if !self.is_leader() {
            return;
        }
        let now = sluice_engine::rt::clock::now();
        let state = Arc::clone(&self.state.borrow());
        let silent: Vec<BrokerId> = {
            let heartbeats = self.heartbeats.borrow();
            state
                .cluster
                .registrations
                .iter()
                .filter(|r| !r.fenced)
                // The active controller is alive by running this.
                .filter(|r| r.id != self.config.node)
                .filter(|r| {
                    heartbeats
                        .get(&r.id)
                        .is_none_or(|t| now.duration_since(*t) > self.config.session_timeout)
                })
                .map(|r| r.id)
                .collect()
        };
        for id in silent {
            if self.in_flight.borrow_mut().insert(id) {
                tracing::warn!(broker = id.0, "broker missed its session timeout; fencing");
                self.propose_background(MetadataCommand::FenceBroker { id }, id);
            }
        }
        let live = state
            .cluster
            .registrations
            .iter()
            .filter(|r| !r.fenced)
            .count();
        let wanted = self.config.voters.len().min(3);
        if state.topic(OFFSETS_TOPIC).is_none()
            && live >= wanted
            && self.in_flight.borrow_mut().insert(OFFSETS_DUTY)
        {
            let overrides = crate::group::offsets_topic_overrides();
            let command = MetadataCommand::CreateTopic {
                name: OFFSETS_TOPIC.to_owned(),
                partitions: self.config.offsets_topic_partitions,
                replication: i16::try_from(live.min(3)).expect("at most 3"),
                overrides,
            };
            self.propose_background(command, OFFSETS_DUTY);
        }
        if now.duration_since(*last_rebalance) >= self.config.leader_rebalance_interval {
            *last_rebalance = now;
            let is_live = |b: BrokerId| state.cluster.is_live(b);
            let needed = state.topics.values().any(|t| {
                t.partitions
                    .iter()
                    .any(|p| election::elect_preferred(&mut p.clone(), is_live).leader_changed)
            });
            if needed && self.in_flight.borrow_mut().insert(REBALANCE_DUTY) {
                self.propose_background(MetadataCommand::ElectPreferredLeaders, REBALANCE_DUTY);
            }
        }
    }
}

/// Whether `at` (a last contact) is at most `session` ago.
fn within(at: Option<Instant>, session: Duration) -> bool {
    let now = sluice_engine::rt::clock::now();
    at.is_some_and(|at| now.duration_since(at) <= session)
}

/// Sends a heartbeat with `registration` to `to`; resolves to its answer. The call is made
/// before this returns (the caller may drop its borrows before awaiting).
fn heartbeat_call(
    peers: &dyn PeerTransport,
    to: BrokerId,
    registration: BrokerRegistration,
) -> impl std::future::Future<Output = Result<HeartbeatAnswer, String>> + use<> {
    let header = serde_json::to_vec(&Heartbeat { registration }).expect("heartbeats encode");
    let call = peers.call(
        to,
        PeerRequest {
            kind: PeerKind::Heartbeat,
            header: header.into(),
            payload: Bytes::new(),
        },
    );
    async move {
        match call.await {
            Ok(Ok(response)) => serde_json::from_slice(&response.header).map_err(|e| e.to_string()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("link closed".to_owned()),
        }
    }
}

/// Sends `entry` to `leader` (the active controller, as far as the sender knows) and returns
/// the revision it was applied at; `NotController` if `leader` is not (or is unreachable).
async fn forward_command(
    peers: &dyn PeerTransport,
    leader: BrokerId,
    entry: &ControllerEntry,
) -> Result<Revision, MetadataError> {
    let header = serde_json::to_vec(entry).expect("entries encode as JSON");
    let call = peers.call(
        leader,
        PeerRequest {
            kind: PeerKind::Command,
            header: header.into(),
            payload: Bytes::new(),
        },
    );
    let answer = match call.await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            tracing::debug!(%error, leader = leader.0, "cannot forward a command");
            return Err(MetadataError::NotController);
        }
        Err(_) => return Err(MetadataError::NotController),
    };
    let answer: CommandAnswer = serde_json::from_slice(&answer.header)
        .map_err(|e| MetadataError::Refused(format!("bad answer from the controller: {e}")))?;
    match answer {
        CommandAnswer::Applied(revision) => Ok(Revision(revision)),
        CommandAnswer::NotController => Err(MetadataError::NotController),
        CommandAnswer::TopicExists(name) => Err(MetadataError::TopicExists(name)),
        CommandAnswer::Refused(reason) => Err(MetadataError::Refused(reason)),
    }
}

fn role_name(role: StateRole) -> &'static str {
    match role {
        StateRole::Leader => "leader",
        StateRole::Follower => "follower",
        StateRole::Candidate => "candidate",
        StateRole::PreCandidate => "pre-candidate",
    }
}

fn json_response<T: serde::Serialize>(value: &T) -> PeerResponse {
    PeerResponse {
        header: serde_json::to_vec(value)
            .expect("answers encode as JSON")
            .into(),
        payload: Bytes::new(),
    }
}

/// Applies one committed entry: the same result on every broker.
fn apply_entry(
    current: &MetadataSnapshot,
    entry: &ControllerEntry,
) -> Result<MetadataSnapshot, MetadataError> {
    let context = PlacementContext {
        node: BrokerId(entry.node),
        shard_count: entry.shard_count.max(1),
    };
    let inputs = ApplyInputs {
        topic_id: TopicId(entry.topic_id),
    };
    apply_with(current, &entry.command, context, inputs)
}

/// Runs a storage write on the blocking pool. A failed write of the controller log cannot be
/// retried safely (the file's state is unknown after a failed fsync), so it is fatal.
async fn persist(
    mut files: RaftFiles,
    write: impl FnOnce(&mut RaftFiles) -> Result<(), storage::RaftStorageError> + Send + 'static,
) -> RaftFiles {
    let (files, result) = sluice_engine::rt::spawn_blocking(move || {
        let result = write(&mut files);
        (files, result)
    })
    .await;
    if let Err(error) = result {
        crate::fatal::fatal(
            crate::fatal::Reason::ControllerLog,
            &format!("cannot write the controller log: {error}"),
        );
    }
    files
}

/// raft-rs storage: its `MemStorage` for the log, plus the snapshot with its data (raft-rs's
/// own `MemStorage::snapshot` carries no data).
pub struct MemStorageHandle {
    mem: raft::storage::MemStorage,
    snapshot: RefCell<raft::prelude::Snapshot>,
}

impl MemStorageHandle {
    fn set_snapshot(&self, snapshot: raft::prelude::Snapshot) {
        *self.snapshot.borrow_mut() = snapshot;
    }

    fn snapshot_index(&self) -> u64 {
        self.snapshot.borrow().get_metadata().index
    }
}

impl raft::Storage for MemStorageHandle {
    fn initial_state(&self) -> raft::Result<raft::RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: raft::GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<raft::prelude::Snapshot> {
        Ok(self.snapshot.borrow().clone())
    }
}

fn new_raw_node(config: &ControllerConfig, recovered: Recovered) -> RawNode<MemStorageHandle> {
    let snapshot = recovered.snapshot.map(|(raft, _)| raft).unwrap_or_default();
    let applied = snapshot.get_metadata().index;
    let raft_config = raft::Config {
        id: raft_id(config.node),
        election_tick: ELECTION_TICKS,
        heartbeat_tick: HEARTBEAT_TICKS,
        applied,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..raft::Config::default()
    };
    raft_config
        .validate()
        .expect("controller raft config is valid");
    let storage = MemStorageHandle {
        mem: recovered.storage,
        snapshot: RefCell::new(snapshot),
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    RawNode::new(&raft_config, storage, &logger).expect("raft starts from recovered storage")
}
