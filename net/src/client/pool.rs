//! The client's connections: one QUIC endpoint per address family, and at most one
//! connection per broker shard endpoint, opened on first use and shared by every request to
//! that endpoint (each request is its own bidirectional stream, so many are in flight at once).
//!
//! Main items: [`Pool`] (lazily opened, reused connections), [`Target`] (a resolved shard
//! endpoint and the TLS name to check), [`resolve`], [`with_timeout`].
//!
//! Shard-local: a pool, its endpoints and connections live on the executor that made them
//! (`!Send` through `Rc`/`RefCell`; quinn's drivers run on that executor).
//!
//! Must not depend on: metadata or anything above one request/answer exchange.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use futures::channel::oneshot;
use futures::future::{Either, select};
use sluice_engine::rt;
use sluice_engine::util::Notify;

use super::error::ClientError;
use crate::native::frame::{Frame, FrameError};
use crate::native::messages::{ProduceSequence, Request, Response};
use crate::native::stream::{ReadFrameError, WriteFrameError, read_frame, write_frame};
use crate::quic::tls::{self, ClientTlsOptions};
use crate::quic::{self, ConnectError};

/// A broker shard endpoint ready to connect to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    /// The resolved address.
    pub addr: SocketAddr,
    /// The name the broker's certificate must carry when verified against a CA.
    pub server_name: String,
}

/// Keeps the requests of one partition in order: a request opens its stream and writes its
/// frame only after the previous request of the chain has written its own (or failed).
///
/// Together with the client's FIFO stream scheduling (see [`Pool`]), a partition's produce
/// requests leave in order, on streams with increasing ids, and the broker applies them in
/// stream order (net/PROTOCOL.md, "Ordering").
#[derive(Debug, Default)]
pub(crate) struct WriteOrder {
    after: Option<oneshot::Receiver<()>>,
    written: Option<oneshot::Sender<()>>,
}

impl WriteOrder {
    /// A request that waits for no other.
    pub(crate) fn none() -> WriteOrder {
        WriteOrder::default()
    }

    /// The next link of a chain whose last link's signal is `last` (updated to this link's).
    pub(crate) fn chain(last: &mut Option<oneshot::Receiver<()>>) -> WriteOrder {
        let (written, next) = oneshot::channel();
        WriteOrder {
            after: last.replace(next),
            written: Some(written),
        }
    }

    pub(crate) async fn wait_turn(&mut self) {
        if let Some(after) = self.after.take() {
            // Err means the previous request failed before writing: our turn all the same.
            let _ = after.await;
        }
    }

    /// Signals the next link (also done by dropping, if the request fails first).
    pub(crate) fn written(&mut self) {
        if let Some(written) = self.written.take() {
            let _ = written.send(());
        }
    }
}

/// Produce sequence numbers per connection and partition (net/PROTOCOL.md, "Produce
/// ordering"): every produce request the pool writes is numbered on the connection it is
/// written to, in write order, and tells the broker the oldest request of its partition still
/// unanswered, so the broker appends them in the order they were written.
#[derive(Default)]
struct Sequences {
    /// By (connection `stable_id`, topic, partition).
    lanes: RefCell<HashMap<(usize, String, i32), SequenceLane>>,
}

#[derive(Default)]
struct SequenceLane {
    /// The sequence of the next request written.
    next: u64,
    /// Sequences written and not answered yet. Invariant: all below `next`.
    unanswered: BTreeSet<u64>,
}

/// A numbered produce request in flight; counts as answered once dropped.
struct Numbered {
    sequences: Rc<Sequences>,
    key: (usize, String, i32),
    sequence: u64,
}

impl Drop for Numbered {
    fn drop(&mut self) {
        if let Some(lane) = self.sequences.lanes.borrow_mut().get_mut(&self.key) {
            lane.unanswered.remove(&self.sequence);
        }
    }
}

impl Sequences {
    /// Numbers `request` for `connection` if it is an unnumbered produce: the numbered copy
    /// and the guard that marks it answered.
    fn number(
        self: &Rc<Self>,
        connection: &quinn::Connection,
        request: &Request,
    ) -> Option<(Request, Numbered)> {
        let Request::Produce {
            topic,
            partition,
            acks,
            sequence: None,
        } = request
        else {
            return None;
        };
        let key = (connection.stable_id(), topic.clone(), *partition);
        let mut lanes = self.lanes.borrow_mut();
        let lane = lanes.entry(key.clone()).or_default();
        let sequence = lane.next;
        lane.next += 1;
        let unanswered_from = lane.unanswered.first().copied().unwrap_or(sequence);
        let fresh = lane.unanswered.insert(sequence);
        assert!(fresh, "produce sequence {sequence} numbered twice");
        let numbered = Request::Produce {
            topic: topic.clone(),
            partition: *partition,
            acks: *acks,
            sequence: Some(ProduceSequence {
                sequence,
                unanswered_from,
            }),
        };
        let guard = Numbered {
            sequences: Rc::clone(self),
            key,
            sequence,
        };
        Some((numbered, guard))
    }

    /// Forgets the lanes of a connection that is no longer used.
    fn forget(&self, connection: &quinn::Connection) {
        let id = connection.stable_id();
        self.lanes
            .borrow_mut()
            .retain(|(owner, _, _), _| *owner != id);
    }
}

/// Resolves `host:port` (a literal IP address needs no lookup; a name is looked up on the
/// runtime's blocking pool so the shard keeps running).
pub(crate) async fn resolve(address: &str) -> Result<Target, ClientError> {
    let error = |reason: String| ClientError::Resolve {
        address: address.to_owned(),
        reason,
    };
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(Target {
            addr,
            server_name: addr.ip().to_string(),
        });
    }
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| error("expected host:port".to_owned()))?;
    let port: u16 = port
        .parse()
        .map_err(|_| error(format!("invalid port {port:?}")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if host.is_empty() {
        return Err(error("empty host".to_owned()));
    }
    let lookup_host = host.clone();
    let found = rt::spawn_blocking(move || {
        (lookup_host.as_str(), port)
            .to_socket_addrs()
            .map(|addrs| addrs.collect::<Vec<_>>())
    })
    .await
    .map_err(|e| error(e.to_string()))?;
    // Prefer IPv4 for names such as `localhost` that resolve to both, as brokers listen on
    // IPv4 loopback by default.
    let addr = found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| error("the name has no address".to_owned()))?;
    Ok(Target {
        addr,
        server_name: host,
    })
}

/// Runs `future` for at most `duration`; `None` when the time ran out first.
pub(crate) async fn with_timeout<T>(
    duration: Duration,
    future: impl Future<Output = T>,
) -> Option<T> {
    let sleep = rt::sleep(duration);
    futures::pin_mut!(future, sleep);
    match select(future, sleep).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}

enum Slot {
    /// A handshake is under way; waiters watch `Pool::changed`.
    Connecting,
    Ready(quinn::Connection),
}

/// Connections to broker shard endpoints, opened lazily and reused.
pub(crate) struct Pool {
    tls: ClientTlsOptions,
    server_name: Option<String>,
    connect_timeout: Duration,
    /// Invariant: at most one endpoint per address family (`is_ipv6`).
    endpoints: RefCell<Vec<(bool, quinn::Endpoint)>>,
    /// quinn client configs by "broker is on loopback" (they differ only without a CA).
    configs: RefCell<HashMap<bool, quinn::ClientConfig>>,
    /// Invariant: at most one connection or handshake per endpoint address.
    slots: RefCell<HashMap<SocketAddr, Slot>>,
    /// Bumped whenever a handshake ends, to wake requests waiting for it.
    changed: Notify,
    /// Requests sent without waiting for an answer whose bytes the broker has not yet
    /// acknowledged at the QUIC level; `close` waits for them, since closing a connection
    /// discards data not yet delivered.
    unanswered: Rc<Unanswered>,
    sequences: Rc<Sequences>,
}

/// Count of written-but-unacknowledged `send_only` requests.
#[derive(Default)]
struct Unanswered {
    count: Cell<usize>,
    drained: Notify,
}

/// Removes a `Connecting` slot if the handshake is abandoned (its task dropped, or failed).
struct ConnectingGuard<'a> {
    pool: &'a Pool,
    addr: SocketAddr,
    armed: bool,
}

impl Drop for ConnectingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.pool.slots.borrow_mut().remove(&self.addr);
        }
        self.pool.changed.notify();
    }
}

impl Pool {
    /// A pool with no connection yet. `server_name` overrides the TLS name checked for every
    /// broker (default: the host of each address).
    pub(crate) fn new(
        tls: ClientTlsOptions,
        server_name: Option<String>,
        connect_timeout: Duration,
    ) -> Pool {
        Pool {
            tls,
            server_name,
            connect_timeout,
            endpoints: RefCell::new(Vec::new()),
            configs: RefCell::new(HashMap::new()),
            slots: RefCell::new(HashMap::new()),
            changed: Notify::new(),
            unanswered: Rc::new(Unanswered::default()),
            sequences: Rc::new(Sequences::default()),
        }
    }

    /// Sends `request` with `payload` on a new stream to `target` and reads the answer,
    /// connecting first if needed. A `Response::Error` becomes [`ClientError::Server`]; a
    /// failed connection is dropped from the pool so the next request reconnects.
    pub(crate) async fn call(
        &self,
        target: &Target,
        request: &Request,
        payload: Bytes,
        timeout: Duration,
        mut order: WriteOrder,
    ) -> Result<Frame<Response>, ClientError> {
        let exchange = async {
            order.wait_turn().await;
            let connection = self.connection(target).await?;
            let numbered = self.sequences.number(&connection, request);
            let request = numbered.as_ref().map_or(request, |(numbered, _)| numbered);
            let result = exchange(&connection, target.addr, request, payload, &mut order).await;
            if let Err(error) = &result
                && error.is_connection_failure()
            {
                self.evict(target.addr, &connection);
            }
            result
        };
        match with_timeout(timeout, exchange).await {
            Some(result) => result,
            None => {
                // The connection may be dead without quinn knowing yet (that takes the idle
                // timeout): the next request opens a new one, while requests still in flight
                // on the old one finish or fail there.
                let mut slots = self.slots.borrow_mut();
                if let Some(Slot::Ready(connection)) = slots.get(&target.addr) {
                    // The timed-out request may still be appended there: later requests go
                    // on a new connection, in a new sequence space.
                    self.sequences.forget(connection);
                    slots.remove(&target.addr);
                }
                Err(ClientError::Timeout {
                    endpoint: target.addr,
                    after: timeout,
                })
            }
        }
    }

    /// Writes `request` on a new stream to `target` and does not wait for an answer (acks=0
    /// produce). Returns once the frame is handed to QUIC.
    pub(crate) async fn send_only(
        &self,
        target: &Target,
        request: &Request,
        payload: Bytes,
        timeout: Duration,
        mut order: WriteOrder,
    ) -> Result<(), ClientError> {
        let send = async {
            order.wait_turn().await;
            let connection = self.connection(target).await?;
            let (numbered, guard) = match self.sequences.number(&connection, request) {
                Some((numbered, guard)) => (Some(numbered), Some(guard)),
                None => (None, None),
            };
            let request = numbered.as_ref().unwrap_or(request);
            let result = send_frame(&connection, target.addr, request, payload).await;
            order.written();
            if let Err(error) = &result
                && error.is_connection_failure()
            {
                self.evict(target.addr, &connection);
            }
            let (send, recv) = result?;
            self.track_unanswered(send, recv, guard, timeout);
            Ok(())
        };
        with_timeout(timeout, send)
            .await
            .unwrap_or(Err(ClientError::Timeout {
                endpoint: target.addr,
                after: timeout,
            }))
    }

    /// The pooled connection to `target`, connecting if there is none or it has closed.
    async fn connection(&self, target: &Target) -> Result<quinn::Connection, ClientError> {
        // Each pass either returns, starts a handshake, or waits for another task's handshake
        // to end; a handshake always ends (it is bounded by the connect timeout).
        loop {
            let seen = self.changed.version();
            let waiting = match self.slots.borrow().get(&target.addr) {
                Some(Slot::Ready(connection)) if connection.close_reason().is_none() => {
                    return Ok(connection.clone());
                }
                Some(Slot::Connecting) => true,
                Some(Slot::Ready(_)) | None => false,
            };
            if waiting {
                self.changed.changed(seen).await;
                continue;
            }
            return self.connect(target).await;
        }
    }

    async fn connect(&self, target: &Target) -> Result<quinn::Connection, ClientError> {
        self.slots
            .borrow_mut()
            .insert(target.addr, Slot::Connecting);
        let mut guard = ConnectingGuard {
            pool: self,
            addr: target.addr,
            armed: true,
        };
        let endpoint = self.endpoint(target.addr)?;
        let config = self.client_config(target.addr)?;
        let name = self.server_name.as_deref().unwrap_or(&target.server_name);
        let handshake = quic::connect(&endpoint, target.addr, name, config);
        let connection = match with_timeout(self.connect_timeout, handshake).await {
            Some(result) => result?,
            None => {
                return Err(ClientError::Connect(ConnectError::Connection {
                    broker: target.addr,
                    source: quinn::ConnectionError::TimedOut,
                }));
            }
        };
        tracing::debug!(endpoint = %target.addr, "connected");
        self.slots
            .borrow_mut()
            .insert(target.addr, Slot::Ready(connection.clone()));
        guard.armed = false;
        Ok(connection)
    }

    /// Drops `connection` from the pool if it is still the pooled one for `addr`.
    fn evict(&self, addr: SocketAddr, connection: &quinn::Connection) {
        let mut slots = self.slots.borrow_mut();
        if let Some(Slot::Ready(pooled)) = slots.get(&addr)
            && pooled.stable_id() == connection.stable_id()
        {
            slots.remove(&addr);
        }
        self.sequences.forget(connection);
    }

    fn endpoint(&self, broker: SocketAddr) -> Result<quinn::Endpoint, ClientError> {
        let ipv6 = broker.is_ipv6();
        if let Some((_, endpoint)) = self.endpoints.borrow().iter().find(|(v6, _)| *v6 == ipv6) {
            return Ok(endpoint.clone());
        }
        let bind: SocketAddr = if ipv6 {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let endpoint = quic::client_endpoint(bind)?;
        self.endpoints.borrow_mut().push((ipv6, endpoint.clone()));
        Ok(endpoint)
    }

    fn client_config(&self, broker: SocketAddr) -> Result<quinn::ClientConfig, ClientError> {
        let loopback = broker.ip().is_loopback();
        if let Some(config) = self.configs.borrow().get(&loopback) {
            return Ok(config.clone());
        }
        let mut config = tls::client_config(&self.tls, broker)?;
        // FIFO stream scheduling: quinn sends each stream's data in full before the next
        // stream's, in the order streams were first written, instead of round-robin. With
        // `WriteOrder` this keeps a partition's requests in order on the wire. It costs a
        // small request queued behind a large one at most the time to send the large one.
        let mut transport = tls::transport_config();
        transport.send_fairness(false);
        config.transport_config(std::sync::Arc::new(transport));
        self.configs.borrow_mut().insert(loopback, config.clone());
        Ok(config)
    }

    /// Counts a request written without waiting for its answer as unanswered until the answer
    /// comes (or `timeout`): its produce sequence stays unanswered until then, and `close`
    /// waits for it.
    fn track_unanswered(
        &self,
        send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        numbered: Option<Numbered>,
        timeout: Duration,
    ) {
        let unanswered = Rc::clone(&self.unanswered);
        unanswered.count.set(unanswered.count.get() + 1);
        rt::spawn(async move {
            // The answer itself is not wanted (acks=0); its arrival is.
            let _ = with_timeout(timeout, read_frame::<Response>(&mut recv)).await;
            drop((send, numbered));
            unanswered.count.set(unanswered.count.get() - 1);
            unanswered.drained.notify();
        })
        .detach();
    }

    /// Closes every connection once requests sent without an answer have reached their
    /// brokers (at most `drain_timeout`), and waits briefly for the peers to learn of it.
    pub(crate) async fn close(&self, drain_timeout: Duration) {
        let drained = async {
            loop {
                let seen = self.unanswered.drained.version();
                if self.unanswered.count.get() == 0 {
                    return;
                }
                self.unanswered.drained.changed(seen).await;
            }
        };
        let _ = with_timeout(drain_timeout, drained).await;
        let slots = std::mem::take(&mut *self.slots.borrow_mut());
        for slot in slots.into_values() {
            if let Slot::Ready(connection) = slot {
                connection.close(quinn::VarInt::from_u32(0), b"client closed");
            }
        }
        let endpoints = std::mem::take(&mut *self.endpoints.borrow_mut());
        for (_, endpoint) in endpoints {
            // wait_idle lasts up to three probe timeouts; a closing client need not wait for
            // a peer that is gone.
            let _ = with_timeout(Duration::from_millis(200), endpoint.wait_idle()).await;
        }
    }
}

/// Opens a stream and writes one request frame; returns the stream's receiving half.
async fn send_frame(
    connection: &quinn::Connection,
    endpoint: SocketAddr,
    request: &Request,
    payload: Bytes,
) -> Result<(quinn::SendStream, quinn::RecvStream), ClientError> {
    let (mut send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| connection_error(endpoint, e))?;
    match write_frame(&mut send, request, payload).await {
        Ok(()) => Ok((send, recv)),
        // The broker refused the request before reading all of it; its answer says why.
        Err(WriteFrameError::Stream(quinn::WriteError::Stopped(_))) => Ok((send, recv)),
        Err(WriteFrameError::Stream(quinn::WriteError::ConnectionLost(e))) => {
            Err(connection_error(endpoint, e))
        }
        Err(WriteFrameError::Encode(e)) => Err(ClientError::Encode(e)),
        Err(other) => Err(ClientError::Stream {
            endpoint,
            reason: other.to_string(),
        }),
    }
}

/// One request/answer exchange on a new stream of `connection`.
async fn exchange(
    connection: &quinn::Connection,
    endpoint: SocketAddr,
    request: &Request,
    payload: Bytes,
    order: &mut WriteOrder,
) -> Result<Frame<Response>, ClientError> {
    let (_send, mut recv) = send_frame(connection, endpoint, request, payload).await?;
    order.written();
    let frame = read_frame::<Response>(&mut recv)
        .await
        .map_err(|error| match error {
            ReadFrameError::Stream(quinn::ReadError::ConnectionLost(e)) => {
                connection_error(endpoint, e)
            }
            ReadFrameError::Frame(FrameError::Rejected { message, .. }) => ClientError::Server {
                code: crate::native::messages::ErrorCode::UnsupportedVersion,
                message,
            },
            ReadFrameError::Frame(source) => ClientError::BadFrame { endpoint, source },
            other => ClientError::Stream {
                endpoint,
                reason: other.to_string(),
            },
        })?;
    if let Response::Error { code, message } = frame.header {
        return Err(ClientError::Server { code, message });
    }
    Ok(frame)
}

fn connection_error(endpoint: SocketAddr, error: quinn::ConnectionError) -> ClientError {
    ClientError::Connect(ConnectError::from_connection(endpoint, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: literal addresses resolve without a lookup and keep their IP as the TLS name;
    // malformed addresses are clear errors. Method: resolve a few forms on an executor.
    #[test]
    fn resolve_forms() {
        rt::block_on(async {
            let target = resolve("127.0.0.1:9192").await.expect("literal v4");
            assert_eq!(
                target.addr,
                "127.0.0.1:9192".parse::<SocketAddr>().expect("literal")
            );
            assert_eq!(target.server_name, "127.0.0.1");
            let target = resolve("[::1]:9192").await.expect("literal v6");
            assert_eq!(target.server_name, "::1");
            let target = resolve("localhost:9192").await.expect("localhost resolves");
            assert!(target.addr.ip().is_loopback(), "{target:?}");
            assert_eq!(target.server_name, "localhost");
            for bad in ["nohostport", "host:notaport", ":9192"] {
                let error = resolve(bad).await.expect_err(bad);
                assert!(error.to_string().contains(bad), "{error}");
            }
        });
    }
}
