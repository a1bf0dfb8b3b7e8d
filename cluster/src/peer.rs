//! Peer links between brokers, as the cluster layer sees them: typed requests with a header
//! and raw payload bytes, sent to a broker by id. `net` implements [`PeerTransport`] over TCP
//! (`net::peer`); cluster never names a socket.
//!
//! Links are per core: shard i of one broker talks only to shard i of another (the cluster
//! listener of shard i is `--cluster-listen` port + i), so a partition's replication traffic
//! stays on the core that owns the partition on both ends. The controller runs on shard 0 and
//! uses shard 0's links.
//!
//! A request is a [`PeerKind`], a small `header` (encoding chosen by the kind) and a
//! `payload` carried as raw bytes beside it, never re-serialised: record batches for the
//! replica fetcher go from log to socket to log unchanged. Calls are asynchronous and many
//! may be in flight on one link (correlation ids); the answer comes back on a oneshot, so the
//! trait is object safe and the shard root holds it as `Rc<dyn PeerTransport>`.
//!
//! Must not depend on: sockets or protocol crates.

use bytes::Bytes;
use futures::channel::oneshot;
use sluice_engine::BrokerId;

/// What a peer request is. The numbers are the wire values (`net::peer::frame`);
/// a retired value is never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum PeerKind {
    /// A raft message of the controller quorum (header: the raft-rs protobuf `Message`).
    /// One-way: raft retries by itself, so no answer is sent.
    Raft = 1,
    /// A broker's registration and heartbeat to the active controller (header: JSON
    /// `controller::Heartbeat`); answered with a JSON `controller::HeartbeatAnswer`.
    Heartbeat = 2,
    /// A metadata command forwarded to the active controller (header: JSON
    /// `controller::ControllerEntry`); answered with a JSON `controller::CommandAnswer`.
    Command = 3,
    /// A follower shard's replica fetch from the same shard of a partition leader (header:
    /// `replication::wire` request; answer header: the per-partition positions, answer
    /// payload: the record batches, unchanged). A broker that is not in a cluster answers
    /// [`PeerError::Unsupported`].
    ReplicaFetch = 4,
    /// An observer's (a broker outside the quorum) metadata pull from a voter (header: JSON
    /// `controller::MetadataFetch`); answered with a JSON `Option<MetadataSnapshot>`,
    /// long-polled until there is something newer.
    MetadataFetch = 5,
}

impl PeerKind {
    /// The kind for a wire value.
    pub fn from_wire(value: u8) -> Option<PeerKind> {
        match value {
            1 => Some(PeerKind::Raft),
            2 => Some(PeerKind::Heartbeat),
            3 => Some(PeerKind::Command),
            4 => Some(PeerKind::ReplicaFetch),
            5 => Some(PeerKind::MetadataFetch),
            _ => None,
        }
    }
}

/// A request to a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRequest {
    /// What it is.
    pub kind: PeerKind,
    /// Small typed header.
    pub header: Bytes,
    /// Raw bytes beside the header (record batches); empty for control requests.
    pub payload: Bytes,
}

/// A peer's answer.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PeerResponse {
    /// Small typed header.
    pub header: Bytes,
    /// Raw bytes beside the header.
    pub payload: Bytes,
}

/// Why a peer request failed. Every variant is an operating error: the caller retries later
/// or gives up on that peer; none is a reason to stop the broker.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// No address is known for the broker (not in the seeds, not registered).
    #[error("no address known for broker {0}")]
    UnknownPeer(i32),
    /// The link is down (connect refused, reset, timed out) and is being re-established with
    /// backoff; requests meanwhile fail at once.
    #[error("peer {broker} unreachable: {reason}")]
    Unreachable {
        /// The broker.
        broker: i32,
        /// Last connection error.
        reason: String,
    },
    /// The link's bounded send buffer is full: the peer is slow. Retry later.
    #[error("link to broker {0} is full")]
    Backpressure(i32),
    /// The peer did not answer in time.
    #[error("peer {0} did not answer in time")]
    Timeout(i32),
    /// The peer does not handle this request kind.
    #[error("peer does not support this request")]
    Unsupported,
    /// The peer failed the request (its reason).
    #[error("peer failed the request: {0}")]
    Remote(String),
}

/// The answer to a call: resolves once the peer answers or the call fails. A dropped sender
/// (the link closed) is a failure too.
pub type PeerCall = oneshot::Receiver<Result<PeerResponse, PeerError>>;

/// Sends requests to peers from one shard (shard i reaches shard i of the peer).
///
/// Implementations live on one shard and are `!Send`. Neither method blocks: a request is
/// queued on the link (bounded) and the outcome arrives on the returned receiver.
pub trait PeerTransport {
    /// Sends `request` to `to` and returns the receiver of its answer.
    fn call(&self, to: BrokerId, request: PeerRequest) -> PeerCall;
    /// Sends a one-way `request` (no answer); fails at once if it cannot be queued.
    fn send(&self, to: BrokerId, request: PeerRequest) -> Result<(), PeerError>;
    /// Learns (or changes) a peer's shard-0 cluster address, from its registration: brokers
    /// outside the seeds become reachable this way. Takes effect on the next connection.
    fn set_address(&self, peer: BrokerId, cluster: std::net::SocketAddr);
}
