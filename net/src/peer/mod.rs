//! Peer links over TCP: `cluster::peer::PeerTransport` for one shard, and the shard's
//! cluster listener.
//!
//! TCP, not QUIC: the replica fetcher will move the bulk of the cluster's bytes here, and
//! quinn costs 4-6x the CPU per byte of TCP on this runtime (perf/RESULTS.md); peers are
//! trusted brokers on a private network, so QUIC's per-stream flow control and TLS buy
//! nothing that pays for that.
//!
//! Per core: shard i of a broker listens on `--cluster-listen` port + i ([`serve_peers`]) and
//! [`PeerLinks`] on shard i connects to shard i of each peer, one connection per shard pair.
//! A link carries many requests at once, matched to answers by correlation id. Sends queue
//! on the link (bounded by [`PEER_LINK_QUEUE_BYTES_MAX`]: a slow peer gets
//! `Backpressure`, never unbounded memory); a writer task writes the frames in order, a
//! reader task completes the calls. A link that fails fails every call in flight with
//! `Unreachable`, reconnects with exponential backoff, and fails new calls at once while it
//! is down; calls not answered in [`PEER_CALL_TIMEOUT`] fail with `Timeout`. An accepted
//! connection serves at most [`PEER_SERVE_INFLIGHT_MAX`] requests whose answers are not yet
//! written; then it stops reading until the peer reads answers.
//! Frames are in [`frame`] (length, CRC-32C, correlation, kind, header, raw payload).
//!
//! Lives on one shard (`!Send`). Must not depend on: storage.

pub mod frame;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::channel::oneshot;
use futures::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use sluice_cluster::peer::{
    PeerCall, PeerError, PeerKind, PeerRequest, PeerResponse, PeerTransport,
};
use sluice_cluster::shard::Shard;
use sluice_engine::rt::net::{TcpListener, TcpStream};
use sluice_engine::util::Notify;
use sluice_engine::{BrokerId, ShardId};

use frame::{Flags, Frame};

/// Largest peer frame: a replica fetch answer of up to 32 MiB of batches plus its header.
pub const PEER_FRAME_BYTES_MAX: usize = 33 << 20;
/// Bytes a link may hold queued for writing before sends fail with `Backpressure`: two
/// largest frames, so one slow peer costs at most ~66 MiB per shard.
pub const PEER_LINK_QUEUE_BYTES_MAX: usize = 2 * PEER_FRAME_BYTES_MAX;
/// Requests an accepted connection serves at once, counting each until its answer is written;
/// reading pauses beyond that, so a peer cannot make this shard hold more than this many
/// answers, however slowly it reads them. Replica fetches, whose answers are large, have a
/// smaller limit of their own ([`PEER_SERVE_FETCHES_INFLIGHT_MAX`]).
pub const PEER_SERVE_INFLIGHT_MAX: usize = 256;
/// Replica fetches an accepted connection serves at once, counting each until its answer is
/// written (further ones wait before they read the log). A follower sends one fetch at a time
/// per link and re-sends only after [`PEER_CALL_TIMEOUT`], so more than one in flight means
/// its answers are not being read fast enough. Memory: at most this many answers of the
/// follower's `max_bytes` each (4 MiB by default: 16 MiB per link; 132 MiB at the largest
/// frame).
pub const PEER_SERVE_FETCHES_INFLIGHT_MAX: usize = 4;
/// How long a call waits for its answer.
pub const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// First reconnect delay; doubles per failure up to [`PEER_BACKOFF_MAX`].
pub const PEER_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest reconnect delay.
pub const PEER_BACKOFF_MAX: Duration = Duration::from_secs(2);

const _: () = assert!(PEER_LINK_QUEUE_BYTES_MAX >= PEER_FRAME_BYTES_MAX);
const _: () = assert!(PEER_SERVE_FETCHES_INFLIGHT_MAX <= PEER_SERVE_INFLIGHT_MAX);

/// One queued frame: prefix and payload kept apart (the payload is never copied).
struct Outgoing {
    prefix: Bytes,
    payload: Bytes,
}

type Pending = HashMap<u64, (Instant, oneshot::Sender<Result<PeerResponse, PeerError>>)>;

#[derive(Clone, Debug)]
enum LinkState {
    /// Connecting for the first time or after a backoff: sends queue.
    Connecting,
    /// Connected.
    Up,
    /// Failed; sends fail at once until the next attempt.
    Down(String),
}

/// One link to one peer's shard.
struct Link {
    peer: BrokerId,
    addr: SocketAddr,
    state: RefCell<LinkState>,
    queue: RefCell<VecDeque<Outgoing>>,
    /// Invariant: the sum of the queued frames' sizes.
    queued_bytes: Cell<usize>,
    queue_notify: Notify,
    pending: RefCell<Pending>,
    next_correlation: Cell<u64>,
}

impl Link {
    fn unreachable(&self, reason: &str) -> PeerError {
        PeerError::Unreachable {
            broker: self.peer.0,
            reason: reason.to_owned(),
        }
    }

    fn enqueue(
        &self,
        kind: PeerKind,
        flags: Flags,
        request: PeerRequest,
    ) -> Result<u64, PeerError> {
        if let LinkState::Down(reason) = &*self.state.borrow() {
            return Err(self.unreachable(reason));
        }
        let size = frame::FIXED_BYTES + 4 + request.header.len() + request.payload.len();
        if size > PEER_FRAME_BYTES_MAX {
            return Err(PeerError::Remote(format!(
                "peer frame of {size} bytes is too large"
            )));
        }
        if self.queued_bytes.get() + size > PEER_LINK_QUEUE_BYTES_MAX {
            return Err(PeerError::Backpressure(self.peer.0));
        }
        let correlation = self.next_correlation.get();
        self.next_correlation.set(correlation.wrapping_add(1));
        let prefix = frame::encode_prefix(
            correlation,
            kind as u8,
            flags,
            &request.header,
            &request.payload,
        );
        self.queue.borrow_mut().push_back(Outgoing {
            prefix: prefix.freeze(),
            payload: request.payload,
        });
        self.queued_bytes.set(self.queued_bytes.get() + size);
        self.queue_notify.notify();
        Ok(correlation)
    }

    fn fail_all(&self, reason: &str) {
        let pending: Vec<_> = self.pending.borrow_mut().drain().collect();
        for (_, (_, reply)) in pending {
            let _ = reply.send(Err(self.unreachable(reason)));
        }
        self.queue.borrow_mut().clear();
        self.queued_bytes.set(0);
    }
}

/// Shard i's links to shard i of every peer. Implements `PeerTransport`.
pub struct PeerLinks {
    node: BrokerId,
    shard: ShardId,
    /// Shard 0's cluster address of each peer (from the seeds and registrations).
    addresses: RefCell<HashMap<BrokerId, SocketAddr>>,
    links: RefCell<HashMap<BrokerId, Rc<Link>>>,
    this: RefCell<Weak<PeerLinks>>,
}

impl PeerLinks {
    /// Links of `shard` of broker `node`; `peers` maps each peer to its shard-0 cluster
    /// address.
    pub fn new(
        node: BrokerId,
        shard: ShardId,
        peers: HashMap<BrokerId, SocketAddr>,
    ) -> Rc<PeerLinks> {
        let links = Rc::new(PeerLinks {
            node,
            shard,
            addresses: RefCell::new(peers),
            links: RefCell::new(HashMap::new()),
            this: RefCell::new(Weak::new()),
        });
        *links.this.borrow_mut() = Rc::downgrade(&links);
        links
    }

    /// Learns or changes a peer's address (a registration); takes effect on reconnect.
    pub fn set_address(&self, peer: BrokerId, addr: SocketAddr) {
        self.addresses.borrow_mut().insert(peer, addr);
    }

    fn link(&self, peer: BrokerId) -> Result<Rc<Link>, PeerError> {
        if let Some(link) = self.links.borrow().get(&peer) {
            return Ok(Rc::clone(link));
        }
        let mut addr = *self
            .addresses
            .borrow()
            .get(&peer)
            .ok_or(PeerError::UnknownPeer(peer.0))?;
        addr.set_port(addr.port() + self.shard.0);
        let link = Rc::new(Link {
            peer,
            addr,
            state: RefCell::new(LinkState::Connecting),
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            queue_notify: Notify::new(),
            pending: RefCell::new(HashMap::new()),
            next_correlation: Cell::new(1),
        });
        self.links.borrow_mut().insert(peer, Rc::clone(&link));
        sluice_engine::rt::spawn(run_link(Rc::downgrade(&link), self.node, self.shard)).detach();
        sluice_engine::rt::spawn(sweep_timeouts(Rc::downgrade(&link))).detach();
        Ok(link)
    }
}

impl PeerTransport for PeerLinks {
    fn call(&self, to: BrokerId, request: PeerRequest) -> PeerCall {
        let (reply, answer) = oneshot::channel();
        let outcome = self.link(to).and_then(|link| {
            let kind = request.kind;
            let correlation = link.enqueue(kind, Flags::Request, request)?;
            link.pending
                .borrow_mut()
                .insert(correlation, (sluice_engine::rt::clock::now(), reply));
            Ok(())
        });
        if let Err(error) = outcome {
            let (reply, answer) = oneshot::channel();
            let _ = reply.send(Err(error));
            return answer;
        }
        answer
    }

    fn send(&self, to: BrokerId, request: PeerRequest) -> Result<(), PeerError> {
        let link = self.link(to)?;
        let kind = request.kind;
        link.enqueue(kind, Flags::OneWay, request).map(|_| ())
    }

    fn set_address(&self, peer: BrokerId, cluster: SocketAddr) {
        PeerLinks::set_address(self, peer, cluster);
    }
}

/// Connects, writes queued frames and reads answers until the link fails; then backs off and
/// reconnects. Ends when the links are dropped.
async fn run_link(weak: Weak<Link>, node: BrokerId, shard: ShardId) {
    let mut backoff = PEER_BACKOFF_MIN;
    // Runs for the life of the link.
    loop {
        let Some(addr) = weak.upgrade().map(|l| l.addr) else {
            return;
        };
        match connect(addr, node, shard).await {
            Ok(stream) => {
                backoff = PEER_BACKOFF_MIN;
                let Some(link) = weak.upgrade() else { return };
                *link.state.borrow_mut() = LinkState::Up;
                tracing::info!(peer = link.peer.0, %addr, shard = shard.0, "peer link up");
                drop(link);
                let reason = serve_link(&weak, stream).await;
                let Some(link) = weak.upgrade() else { return };
                tracing::warn!(peer = link.peer.0, %addr, %reason, "peer link down");
                *link.state.borrow_mut() = LinkState::Down(reason.clone());
                link.fail_all(&reason);
            }
            Err(error) => {
                let Some(link) = weak.upgrade() else { return };
                let reason = error.to_string();
                tracing::debug!(peer = link.peer.0, %addr, %reason, "peer connect failed");
                *link.state.borrow_mut() = LinkState::Down(reason.clone());
                link.fail_all(&reason);
            }
        }
        sluice_engine::rt::sleep(backoff).await;
        backoff = (backoff * 2).min(PEER_BACKOFF_MAX);
        if let Some(link) = weak.upgrade() {
            *link.state.borrow_mut() = LinkState::Connecting;
        }
    }
}

async fn connect(addr: SocketAddr, node: BrokerId, shard: ShardId) -> io::Result<TcpStream> {
    let connect = TcpStream::connect(addr);
    let timeout = sluice_engine::rt::sleep(PEER_CALL_TIMEOUT);
    let mut stream = match futures::future::select(Box::pin(connect), Box::pin(timeout)).await {
        futures::future::Either::Left((result, _)) => sluice_engine::rt::into_io(result)?,
        futures::future::Either::Right(_) => {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
    };
    sluice_engine::rt::into_io(stream.set_nodelay(true))?;
    stream.write_all(&frame::hello(node.0, shard.0)).await?;
    Ok(stream)
}

/// Runs one connection: returns why it ended.
async fn serve_link(weak: &Weak<Link>, stream: TcpStream) -> String {
    let (reader, writer) = stream.split();
    let write = write_queued(weak.clone(), writer);
    let read = read_answers(weak.clone(), reader);
    match futures::future::select(Box::pin(write), Box::pin(read)).await {
        futures::future::Either::Left((reason, _))
        | futures::future::Either::Right((reason, _)) => reason,
    }
}

async fn write_queued(weak: Weak<Link>, mut writer: WriteHalf<TcpStream>) -> String {
    // Runs until the connection fails or the link is dropped.
    loop {
        let Some(link) = weak.upgrade() else {
            return "link dropped".into();
        };
        let seen = link.queue_notify.version();
        let next = link.queue.borrow_mut().pop_front();
        let Some(out) = next else {
            // Holding the link while idle is fine: links live as long as their shard.
            link.queue_notify.changed(seen).await;
            continue;
        };
        let size = out.prefix.len() + out.payload.len();
        link.queued_bytes
            .set(link.queued_bytes.get().saturating_sub(size));
        drop(link);
        if let Err(error) = writer.write_all(&out.prefix).await {
            return error.to_string();
        }
        if !out.payload.is_empty()
            && let Err(error) = writer.write_all(&out.payload).await
        {
            return error.to_string();
        }
    }
}

async fn read_frame(reader: &mut ReadHalf<TcpStream>) -> Result<Frame, String> {
    let mut length = [0u8; 4];
    reader
        .read_exact(&mut length)
        .await
        .map_err(|e| e.to_string())?;
    let length = frame::check_length(u32::from_le_bytes(length), PEER_FRAME_BYTES_MAX)
        .map_err(|e| e.to_string())?;
    let mut body = BytesMut::zeroed(length);
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    frame::decode(body.freeze()).map_err(|e| e.to_string())
}

async fn read_answers(weak: Weak<Link>, mut reader: ReadHalf<TcpStream>) -> String {
    // Runs until the connection fails or the link is dropped.
    loop {
        let frame = match read_frame(&mut reader).await {
            Ok(frame) => frame,
            Err(reason) => return reason,
        };
        let Some(link) = weak.upgrade() else {
            return "link dropped".into();
        };
        let Some((_, reply)) = link.pending.borrow_mut().remove(&frame.correlation) else {
            // Timed out already.
            continue;
        };
        let answer = match frame.flags {
            Flags::Answer => Ok(PeerResponse {
                header: frame.header,
                payload: frame.payload,
            }),
            Flags::Unsupported => Err(PeerError::Unsupported),
            Flags::Error => Err(PeerError::Remote(
                String::from_utf8_lossy(&frame.header).into_owned(),
            )),
            Flags::Request | Flags::OneWay => {
                return "peer sent a request on an outbound link".into();
            }
        };
        let _ = reply.send(answer);
    }
}

async fn sweep_timeouts(weak: Weak<Link>) {
    // Runs for the life of the link.
    loop {
        sluice_engine::rt::sleep(PEER_CALL_TIMEOUT / 5).await;
        let Some(link) = weak.upgrade() else { return };
        let now = sluice_engine::rt::clock::now();
        let expired: Vec<u64> = link
            .pending
            .borrow()
            .iter()
            .filter(|(_, (sent, _))| now.duration_since(*sent) > PEER_CALL_TIMEOUT)
            .map(|(c, _)| *c)
            .collect();
        for correlation in expired {
            if let Some((_, reply)) = link.pending.borrow_mut().remove(&correlation) {
                let _ = reply.send(Err(PeerError::Timeout(link.peer.0)));
            }
        }
    }
}

/// Accepts peer connections on `listen` (this shard's cluster address) until `stop`
/// resolves, serving each with `shard.handle_peer`.
pub async fn serve_peers(
    shard: Rc<Shard>,
    listen: SocketAddr,
    stop: impl std::future::Future<Output = ()>,
) -> io::Result<()> {
    let listener = sluice_engine::rt::into_io(TcpListener::bind(listen))?;
    tracing::info!(%listen, shard = shard.id().0, "cluster listener up");
    let accept = async {
        // Runs until stopped.
        loop {
            match listener.accept().await {
                Ok(stream) => {
                    let shard = Rc::clone(&shard);
                    sluice_engine::rt::spawn(async move {
                        if let Err(reason) = serve_connection(shard, stream).await {
                            tracing::debug!(%reason, "peer connection closed");
                        }
                    })
                    .detach();
                }
                Err(error) => {
                    tracing::warn!(%error, "peer accept failed; continuing");
                    sluice_engine::rt::sleep(PEER_BACKOFF_MIN).await;
                }
            }
        }
    };
    futures::future::select(Box::pin(accept), Box::pin(stop)).await;
    Ok(())
}

async fn serve_connection(shard: Rc<Shard>, stream: TcpStream) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.split();
    let mut hello = [0u8; frame::HELLO_BYTES];
    reader
        .read_exact(&mut hello)
        .await
        .map_err(|e| e.to_string())?;
    let (node, peer_shard) = frame::decode_hello(&hello).map_err(|e| e.to_string())?;
    if peer_shard != shard.id().0 {
        return Err(format!(
            "broker {node} shard {peer_shard} connected to shard {}: links join equal shards",
            shard.id().0
        ));
    }
    let answers = Rc::new(Answers {
        queue: RefCell::new(VecDeque::new()),
        notify: Notify::new(),
        closed: Cell::new(false),
    });
    let writer_task = sluice_engine::rt::spawn(write_answers(Rc::clone(&answers), writer));
    let inflight = Rc::new(sluice_engine::rt::sync::Semaphore::new(
        PEER_SERVE_INFLIGHT_MAX as u64,
    ));
    let fetches = Rc::new(sluice_engine::rt::sync::Semaphore::new(
        PEER_SERVE_FETCHES_INFLIGHT_MAX as u64,
    ));
    let result = loop {
        let frame = match read_frame(&mut reader).await {
            Ok(frame) => frame,
            Err(reason) => break Err(reason),
        };
        if answers.closed.get() {
            break Err("cannot write answers".into());
        }
        let Some(kind) = PeerKind::from_wire(frame.kind) else {
            let answer = Answer {
                correlation: frame.correlation,
                kind: frame.kind,
                flags: Flags::Unsupported,
                header: Bytes::new(),
                payload: Bytes::new(),
            };
            answers.push(answer, Box::new(()));
            continue;
        };
        let one_way = match frame.flags {
            Flags::Request => false,
            Flags::OneWay => true,
            _ => break Err("peer sent an answer on an inbound link".into()),
        };
        // Bounded: at most PEER_SERVE_INFLIGHT_MAX requests are served or have their answer
        // queued at once; reading waits here for a slot. The slot is released once the answer
        // is written: released earlier, a peer reading answers slowly (a follower whose
        // fetches time out and are sent again) would grow the answer queue without bound.
        let permit = Rc::clone(&inflight)
            .acquire_static_permit(1)
            .await
            .expect("semaphore never closed");
        let shard = Rc::clone(&shard);
        let answers = Rc::clone(&answers);
        let fetches = Rc::clone(&fetches);
        let request = PeerRequest {
            kind,
            header: frame.header,
            payload: frame.payload,
        };
        sluice_engine::rt::spawn(async move {
            // A replica fetch also takes a fetch slot before it reads the log, held with the
            // other until its (large) answer is written.
            let fetch_slot = match kind {
                PeerKind::ReplicaFetch => Some(
                    fetches
                        .acquire_static_permit(1)
                        .await
                        .expect("semaphore never closed"),
                ),
                _ => None,
            };
            let outcome = shard.handle_peer(request).await;
            let permit: Slot = Box::new((permit, fetch_slot));
            if one_way {
                if let Err(error) = outcome {
                    tracing::debug!(%error, "one-way peer request failed");
                }
                return;
            }
            let (flags, header, payload) = match outcome {
                Ok(response) => (Flags::Answer, response.header, response.payload),
                Err(PeerError::Unsupported) => (Flags::Unsupported, Bytes::new(), Bytes::new()),
                Err(error) => (Flags::Error, Bytes::from(error.to_string()), Bytes::new()),
            };
            let answer = Answer {
                correlation: frame.correlation,
                kind: frame.kind,
                flags,
                header,
                payload,
            };
            answers.push(answer, permit);
        })
        .detach();
    };
    answers.closed.set(true);
    answers.notify.notify();
    writer_task.await;
    result
}

/// The serving slot of a request (its `PEER_SERVE_INFLIGHT_MAX` permit), held until its
/// answer is written or dropped.
type Slot = Box<dyn std::any::Any>;

/// One answer to an inbound request.
struct Answer {
    correlation: u64,
    kind: u8,
    flags: Flags,
    header: Bytes,
    payload: Bytes,
}

/// Answers of one inbound connection waiting to be written, in completion order. Each holds
/// its request's serving slot, so the queue holds at most `PEER_SERVE_INFLIGHT_MAX` answers.
struct Answers {
    queue: RefCell<VecDeque<(Outgoing, Slot)>>,
    notify: Notify,
    /// Set when the connection ends (read side) or a write fails.
    closed: Cell<bool>,
}

impl Answers {
    /// Queues `answer` for writing; `slot` is released once it is written (at once if the
    /// connection is closed).
    fn push(&self, answer: Answer, slot: Slot) {
        if self.closed.get() {
            return;
        }
        let Answer {
            correlation,
            kind,
            flags,
            header,
            payload,
        } = answer;
        let prefix = frame::encode_prefix(correlation, kind, flags, &header, &payload);
        let out = Outgoing {
            prefix: prefix.freeze(),
            payload,
        };
        self.queue.borrow_mut().push_back((out, slot));
        self.notify.notify();
    }
}

async fn write_answers(answers: Rc<Answers>, mut writer: impl AsyncWrite + Unpin) {
    // Runs until the connection closes.
    loop {
        let seen = answers.notify.version();
        let next = answers.queue.borrow_mut().pop_front();
        match next {
            Some((out, slot)) => {
                let failed = writer.write_all(&out.prefix).await.is_err()
                    || (!out.payload.is_empty() && writer.write_all(&out.payload).await.is_err());
                // Written (or failed): the request's slot frees for the next one.
                drop(slot);
                if failed {
                    answers.closed.set(true);
                    // Queued answers will not be written: free their slots too.
                    answers.queue.borrow_mut().clear();
                    return;
                }
            }
            None if answers.closed.get() => return,
            None => answers.notify.changed(seen).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A peer socket that accepts bytes only while `open` is set.
    struct Gated {
        open: Rc<Cell<bool>>,
        written: Rc<Cell<usize>>,
        waker: Rc<RefCell<Option<std::task::Waker>>>,
    }

    impl AsyncWrite for Gated {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if !self.open.get() {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            self.written.set(self.written.get() + buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    // Goal: an answer keeps its request's serving slot until it is written, so a peer that
    // reads slowly cannot make answers queue past PEER_SERVE_INFLIGHT_MAX.
    // Method: a one-slot semaphore; an answer holding the slot is queued to a writer whose
    // socket accepts nothing; the slot stays taken until the socket opens and the answer is
    // written. No timing: the test steps the executor with yields.
    #[test]
    fn answer_holds_its_slot_until_written() {
        sluice_engine::rt::block_on(async {
            let slots = Rc::new(sluice_engine::rt::sync::Semaphore::new(1));
            let answers = Rc::new(Answers {
                queue: RefCell::new(VecDeque::new()),
                notify: Notify::new(),
                closed: Cell::new(false),
            });
            let (open, written) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(0)));
            let waker = Rc::new(RefCell::new(None::<std::task::Waker>));
            let socket = Gated {
                open: Rc::clone(&open),
                written: Rc::clone(&written),
                waker: Rc::clone(&waker),
            };
            let writer = sluice_engine::rt::spawn(write_answers(Rc::clone(&answers), socket));
            let slot = Rc::clone(&slots)
                .acquire_static_permit(1)
                .await
                .expect("semaphore open");
            let answer = Answer {
                correlation: 7,
                kind: PeerKind::ReplicaFetch as u8,
                flags: Flags::Answer,
                header: Bytes::from_static(b"header"),
                payload: Bytes::from(vec![0u8; 4096]),
            };
            answers.push(answer, Box::new(slot));
            for _ in 0..10 {
                sluice_engine::rt::yield_now().await;
            }
            assert_eq!(written.get(), 0, "the socket accepted nothing");
            assert_eq!(slots.available(), 0, "the unwritten answer holds its slot");
            open.set(true);
            if let Some(waker) = waker.borrow_mut().take() {
                waker.wake();
            }
            let again = Rc::clone(&slots)
                .acquire_static_permit(1)
                .await
                .expect("semaphore open");
            assert!(written.get() > 4096, "the answer was written first");
            drop(again);
            answers.closed.set(true);
            answers.notify.notify();
            writer.await;
        });
    }
}
