//! The native protocol server: one QUIC endpoint per shard, one task per request stream.
//!
//! Every shard runs [`serve_native`] (or [`serve_native_until`]) on its own UDP port
//! (`--quic-listen` port + shard id). Metadata tells clients which shard endpoint owns each
//! partition, so produce and fetch are served only by the owner and never cross a core:
//! a produce or fetch for a partition this shard does not own is answered
//! [`ErrorCode::NotOwner`], and the client refreshes its metadata. Requests that are not on
//! the data path (metadata, topic administration, offsets, describe, delete records) are
//! answered by any shard, forwarding to the owner or to the metadata writer through the
//! [`Shard`] API.
//!
//! Per connection, each bidirectional stream carries one request and is handled by its own
//! task: read the frame's prefix, reserve the frame's declared size from the connection's byte
//! budget ([`NativeServerConfig::connection_buffer_bytes`]), read the rest, dispatch, write one
//! answer frame. A frame larger than the whole budget is refused with `MessageTooLarge`; one
//! that does not fit now waits (QUIC flow control then holds the client back), unless
//! [`NATIVE_BUDGET_WAITERS_MAX`] streams already wait, in which case it is refused with
//! `Overloaded` (see that limit for why waiting must be bounded). Every stream gets exactly
//! one answer, including produce with acks=0 (`net/PROTOCOL.md` explains why).
//!
//! Shutdown ([`serve_native_until`]'s `stop`): new connections are refused, connections stop
//! accepting streams, long-polling fetches answer at once with what they have, in-flight
//! requests finish (for at most [`NATIVE_DRAIN_WAIT_MS_MAX`]), then every connection is
//! closed with [`CLOSE_SHUTTING_DOWN`]. Dropping the server future closes the endpoint at once.
//!
//! Main items: [`NativeServerConfig`], [`serve_native`], [`serve_native_until`].
//! Lives on one shard: the endpoint, its connections and every task here are shard-local
//! (`quic::runtime` enforces it). Must not depend on: segment files or the engine log (only
//! the `Shard` API), nor on the Kafka listener.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{Either, select};
use sluice_cluster::config::TopicConfig;
use sluice_cluster::metadata::{
    MetadataCommand, MetadataSnapshot, PartitionMeta, TopicMeta, validate_topic_name,
};
use sluice_cluster::shard::{Acks, FetchRequest, OffsetSpec, Shard};
use sluice_engine::rt::sync::{Permit, Semaphore};
use sluice_engine::rt::{self, clock};
use sluice_engine::util::Notify;
use sluice_engine::{Offset, TimestampMs, TopicPartition};

use crate::domain::{DomainError, auto_create_topic};
use crate::limits::{
    FRAME_PAYLOAD_BYTES_MAX, KAFKA_DEFAULT_PARTITIONS, NATIVE_BUDGET_WAITERS_MAX,
    NATIVE_CLOSE_WAIT_MS_MAX, NATIVE_CONNECTION_BUFFER_BYTES_DEFAULT,
    NATIVE_CONNECTION_BUFFER_BYTES_MIN, NATIVE_DRAIN_WAIT_MS_MAX, NATIVE_FETCH_WAIT_MS_MAX,
};
use crate::native::error::error_code;
use crate::native::frame::{Frame, PREFIX_BYTES};
use crate::native::groups;
use crate::native::messages::{
    BrokerEndpoint, ErrorCode, OffsetQuery, PartitionInfo, ProduceSequence, Request, Response,
    TopicInfo,
};
use crate::native::order::ProduceOrder;
use crate::native::stream::{
    ReadFrameError, STOP_REJECTED, WriteFrameError, answer_frame_error, read_frame_body,
    read_prefix, write_frame, write_frame_chunks,
};
use crate::quic::tls::{self, ServerTlsOptions, TlsError};
use crate::quic::{self, EndpointError};

/// Application error code with which the server closes its connections when the broker shuts
/// down (QUIC `CONNECTION_CLOSE`, reason "broker shutting down"): the client retries on
/// another broker or after a restart, as for `ErrorCode::ShuttingDown`.
pub const CLOSE_SHUTTING_DOWN: u32 = 1;

const SHUTTING_DOWN_REASON: &[u8] = b"broker shutting down";

/// How one shard's native server behaves. Shared read-only by the shard's connections.
#[derive(Clone, Debug)]
pub struct NativeServerConfig {
    /// The UDP address this shard's endpoint binds: `--quic-listen` with port + shard id.
    pub listen: SocketAddr,
    /// quinn's server configuration: TLS identity, client CA, transport limits. Build it once
    /// at broker start ([`NativeServerConfig::new`]) and give every shard a clone.
    pub quic: quinn::ServerConfig,
    /// Create a topic when a metadata request names it and it does not exist (the Kafka
    /// listener's `auto_create_topics` rule).
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic, and of CreateTopic asking for the default (-1).
    pub default_partitions: i32,
    /// Per-connection byte budget for request frames being read or handled.
    pub connection_buffer_bytes: usize,
}

impl NativeServerConfig {
    /// Builds the configuration for the shard endpoint at `listen`, with the TLS identity and
    /// client CA of `tls` and the defaults for everything else.
    ///
    /// Does blocking file I/O (reads the PEM files, and makes the self-signed identity on
    /// first start): call it once at broker start, before the shards serve, and clone the
    /// result for each shard (with its own `listen`). Shards must not each make the
    /// self-signed identity: they would race on the same files.
    pub fn new(listen: SocketAddr, tls: &ServerTlsOptions) -> Result<NativeServerConfig, TlsError> {
        Ok(NativeServerConfig {
            listen,
            quic: tls::server_config(tls)?,
            auto_create_topics: true,
            default_partitions: KAFKA_DEFAULT_PARTITIONS,
            connection_buffer_bytes: NATIVE_CONNECTION_BUFFER_BYTES_DEFAULT,
        })
    }

    /// Checks the values against the limits; [`serve_native_until`] calls it before binding.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_partitions < 1 {
            return Err(format!(
                "native default_partitions {} < 1",
                self.default_partitions
            ));
        }
        if self.connection_buffer_bytes < NATIVE_CONNECTION_BUFFER_BYTES_MIN {
            return Err(format!(
                "native connection_buffer_bytes {} < {NATIVE_CONNECTION_BUFFER_BYTES_MIN}",
                self.connection_buffer_bytes
            ));
        }
        Ok(())
    }
}

/// Serves the native protocol on this shard until the endpoint fails. Run it on every shard.
pub async fn serve_native(shard: Rc<Shard>, config: NativeServerConfig) -> io::Result<()> {
    serve_native_until(shard, config, futures::future::pending()).await
}

/// Serves the native protocol on this shard until `stop` completes, then drains: refuses new
/// connections and streams, cuts long polls short, lets in-flight requests finish (bounded by
/// [`NATIVE_DRAIN_WAIT_MS_MAX`]) and closes every connection with [`CLOSE_SHUTTING_DOWN`].
/// Returns once drained.
///
/// Dropping the returned future instead closes the endpoint and its connections at once.
pub async fn serve_native_until(
    shard: Rc<Shard>,
    config: NativeServerConfig,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let endpoint =
        quic::server_endpoint(config.listen, config.quic.clone()).map_err(endpoint_error)?;
    tracing::info!(shard = %shard.id(), listen = %config.listen, "native QUIC server started");
    let server = Rc::new(Server {
        shard,
        config,
        stopping: Signal::default(),
    });
    let _close_on_drop = CloseOnDrop {
        endpoint: endpoint.clone(),
        server: Rc::clone(&server),
    };
    let connections = Rc::new(InFlight::default());
    let accept = async {
        // Runs until the endpoint is closed; one task per connection, isolated from the others.
        while let Some(incoming) = endpoint.accept().await {
            connections.spawn(serve_connection(Rc::clone(&server), incoming));
        }
    };
    match select(std::pin::pin!(accept), std::pin::pin!(stop)).await {
        Either::Left(((), _)) => tracing::warn!(shard = %server.shard.id(), "QUIC endpoint closed"),
        Either::Right(((), _)) => server.drain(&endpoint, &connections).await,
    }
    Ok(())
}

fn endpoint_error(error: EndpointError) -> io::Error {
    let kind = match &error {
        EndpointError::Bind { source, .. } => source.kind(),
    };
    io::Error::new(kind, error)
}

/// Closes the endpoint if the server future is dropped without draining.
struct CloseOnDrop {
    endpoint: quinn::Endpoint,
    server: Rc<Server>,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.server.stopping.fire();
        self.endpoint.close(
            quinn::VarInt::from_u32(CLOSE_SHUTTING_DOWN),
            SHUTTING_DOWN_REASON,
        );
    }
}

/// A one-way "it happened" flag that tasks can wait on. Shard-local.
#[derive(Debug, Default)]
struct Signal {
    fired: Cell<bool>,
    notify: Notify,
}

impl Signal {
    fn fire(&self) {
        if !self.fired.replace(true) {
            self.notify.notify();
        }
    }

    fn is_fired(&self) -> bool {
        self.fired.get()
    }

    async fn wait(&self) {
        // Each round ends on a notify; the flag is set before notifying, so this ends.
        while !self.fired.get() {
            let seen = self.notify.version();
            self.notify.changed(seen).await;
        }
    }
}

/// Counts running tasks so a drain can wait for them. Shard-local.
///
/// Unlike glommio's `Gate`, waiting may be abandoned (on a deadline) without harm.
#[derive(Debug, Default)]
struct InFlight {
    count: Cell<usize>,
    /// Notified when `count` drops to zero.
    idle: Notify,
}

/// One counted task; uncounts it when dropped (the task ended or was cancelled).
struct InFlightGuard(Rc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let count = self.0.count.get();
        assert!(count > 0, "in-flight count underflow");
        self.0.count.set(count - 1);
        if count == 1 {
            self.0.idle.notify();
        }
    }
}

impl InFlight {
    /// Spawns `task` on this shard, counted until it ends.
    fn spawn(self: &Rc<Self>, task: impl Future<Output = ()> + 'static) {
        self.count.set(self.count.get() + 1);
        let guard = InFlightGuard(Rc::clone(self));
        rt::spawn(async move {
            let _guard = guard;
            task.await;
        })
        .detach();
    }

    /// Resolves once no counted task runs.
    async fn idle(&self) {
        // Each round ends on a notify, which follows the count reaching zero.
        while self.count.get() > 0 {
            let seen = self.idle.version();
            self.idle.changed(seen).await;
        }
    }
}

/// What every connection and request task of one shard's server shares.
struct Server {
    shard: Rc<Shard>,
    config: NativeServerConfig,
    /// Fired when the server starts draining.
    stopping: Signal,
}

impl Server {
    async fn drain(&self, endpoint: &quinn::Endpoint, connections: &InFlight) {
        tracing::info!(shard = %self.shard.id(), "native QUIC server draining");
        endpoint.set_server_config(None);
        self.stopping.fire();
        let drained = std::pin::pin!(connections.idle());
        let deadline = std::pin::pin!(rt::sleep(Duration::from_millis(NATIVE_DRAIN_WAIT_MS_MAX)));
        if let Either::Right(_) = select(drained, deadline).await {
            tracing::warn!(
                shard = %self.shard.id(),
                "requests still in flight after {NATIVE_DRAIN_WAIT_MS_MAX} ms; closing anyway"
            );
        }
        endpoint.close(
            quinn::VarInt::from_u32(CLOSE_SHUTTING_DOWN),
            SHUTTING_DOWN_REASON,
        );
        let idle = std::pin::pin!(endpoint.wait_idle());
        let deadline = std::pin::pin!(rt::sleep(Duration::from_millis(NATIVE_CLOSE_WAIT_MS_MAX)));
        let _ = select(idle, deadline).await;
        tracing::info!(shard = %self.shard.id(), "native QUIC server stopped");
    }
}

/// Completes the handshake, then accepts streams until the connection ends or the server
/// drains; each stream is handled by its own task (quinn bounds how many are open at once).
async fn serve_connection(server: Rc<Server>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(error) => {
            tracing::debug!(%remote, %error, "QUIC connection attempt failed");
            return;
        }
    };
    let connection = match select(connecting, std::pin::pin!(server.stopping.wait())).await {
        Either::Left((Ok(connection), _)) => connection,
        Either::Left((Err(error), _)) => {
            tracing::debug!(%remote, %error, "QUIC handshake failed");
            return;
        }
        Either::Right(_) => return,
    };
    let budget = Rc::new(Budget::new(server.config.connection_buffer_bytes));
    let order = Rc::new(ProduceOrder::default());
    let streams = Rc::new(InFlight::default());
    // Runs until the client closes the connection, it fails, or the server drains.
    loop {
        let accept = std::pin::pin!(connection.accept_bi());
        match select(accept, std::pin::pin!(server.stopping.wait())).await {
            Either::Left((Ok((send, recv)), _)) => {
                streams.spawn(serve_stream(
                    Rc::clone(&server),
                    Rc::clone(&budget),
                    Rc::clone(&order),
                    send,
                    recv,
                ));
            }
            Either::Left((Err(error), _)) => {
                // Streams still in flight finish on their own; their writes fail if the
                // connection is gone.
                tracing::debug!(%remote, %error, "QUIC connection ended");
                return;
            }
            Either::Right(_) => break,
        }
    }
    streams.idle().await;
    connection.close(
        quinn::VarInt::from_u32(CLOSE_SHUTTING_DOWN),
        SHUTTING_DOWN_REASON,
    );
}

/// One request: read, dispatch, answer, count.
async fn serve_stream(
    server: Rc<Server>,
    budget: Rc<Budget>,
    order: Rc<ProduceOrder>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let started = clock::now();
    let prefix = match read_prefix(&mut recv).await {
        Ok(prefix) => prefix,
        Err(error) => return server.answer_read_error(&mut send, &mut recv, error).await,
    };
    let permit = match budget.reserve(prefix.frame_bytes() - PREFIX_BYTES).await {
        Ok(permit) => permit,
        Err(refusal) => {
            let _ = recv.stop(quinn::VarInt::from_u32(STOP_REJECTED));
            let answer = Response::Error {
                code: refusal.code(),
                message: refusal.to_string(),
            };
            let _ = write_frame(&mut send, &answer, Bytes::new()).await;
            server.record("native_refused", started, true);
            return;
        }
    };
    let frame = match read_frame_body::<Request>(&mut recv, &prefix).await {
        Ok(frame) => frame,
        Err(error) => {
            drop(permit);
            return server.answer_read_error(&mut send, &mut recv, error).await;
        }
    };
    // Latency is counted from the whole request read to the answer handed to QUIC, so it
    // covers the broker's work (long polls included) and not the client's upload.
    let started = clock::now();
    let api = api_name(&frame.header);
    let answer = server.dispatch(frame, &order).await;
    drop(permit);
    let mut failed = matches!(answer.header, Response::Error { .. });
    match write_frame_chunks(&mut send, &answer.header, answer.payload).await {
        Ok(()) => {}
        Err(WriteFrameError::Encode(error)) => {
            // Nothing was written: say why instead of leaving the client a truncated stream
            // (a metadata answer for very many partitions can outgrow the header limit).
            tracing::warn!(%error, api, "native answer too large");
            failed = true;
            let answer = Response::Error {
                code: ErrorCode::Internal,
                message: format!("the answer cannot be sent: {error}"),
            };
            let _ = write_frame(&mut send, &answer, Bytes::new()).await;
        }
        Err(error) => tracing::debug!(%error, api, "cannot write native answer"),
    }
    server.record(api, started, failed);
}

impl Server {
    fn record(&self, api: &'static str, started: std::time::Instant, failed: bool) {
        let latency = clock::now().saturating_duration_since(started);
        self.shard.metrics.record_request(api, latency, failed);
    }

    /// Answers a request that could not be read: a frame error gets its protocol answer
    /// (`answer_frame_error`), a stream that ended early or was reset gets `InvalidRequest`,
    /// and a lost connection gets nothing.
    async fn answer_read_error(
        &self,
        send: &mut quinn::SendStream,
        recv: &mut quinn::RecvStream,
        error: ReadFrameError,
    ) {
        let started = clock::now();
        let message = error.to_string();
        let result = match error {
            ReadFrameError::Frame(error) => answer_frame_error(send, recv, &error).await,
            ReadFrameError::Truncated { .. }
            | ReadFrameError::Stream(quinn::ReadError::Reset(_)) => {
                let answer = Response::Error {
                    code: ErrorCode::InvalidRequest,
                    message,
                };
                write_frame(send, &answer, Bytes::new()).await
            }
            other => {
                tracing::debug!(error = %other, "native request stream lost");
                return;
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "cannot answer a request that failed to read");
        }
        self.record("native_invalid", started, true);
    }
}

/// Metric name of a request's API.
fn api_name(request: &Request) -> &'static str {
    match request {
        Request::Metadata { .. } => "native_metadata",
        Request::Produce { .. } => "native_produce",
        Request::Fetch { .. } => "native_fetch",
        Request::ListOffset { .. } => "native_list_offset",
        Request::CreateTopic { .. } => "native_create_topic",
        Request::DeleteTopic { .. } => "native_delete_topic",
        Request::DescribeTopic { .. } => "native_describe_topic",
        Request::AlterConfig { .. } => "native_alter_config",
        Request::CreatePartitions { .. } => "native_create_partitions",
        Request::DeleteRecords { .. } => "native_delete_records",
        Request::GroupHeartbeat { .. } => "native_group_heartbeat",
        Request::CommitOffsets { .. } => "native_commit_offsets",
        Request::FetchOffsets { .. } => "native_fetch_offsets",
        Request::ListGroups => "native_list_groups",
        Request::DescribeGroup { .. } => "native_describe_group",
        Request::DeleteGroup { .. } => "native_delete_group",
    }
}

/// A connection's byte budget for request frames. Shard-local, one per connection.
struct Budget {
    /// Invariant: never closed, so acquiring fails only by waiting.
    semaphore: Semaphore,
    capacity: usize,
    /// Streams waiting in `reserve`. Invariant: at most `NATIVE_BUDGET_WAITERS_MAX`.
    waiters: Cell<usize>,
}

/// Why a stream was refused budget.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("request frame of {bytes} bytes exceeds the connection's budget of {capacity} bytes")]
    TooLarge { bytes: usize, capacity: usize },
    #[error(
        "{waiters} requests on this connection already wait for buffer space; retry when \
         earlier requests have been answered"
    )]
    Busy { waiters: usize },
}

impl Refusal {
    fn code(&self) -> ErrorCode {
        match self {
            Refusal::TooLarge { .. } => ErrorCode::MessageTooLarge,
            Refusal::Busy { .. } => ErrorCode::Overloaded,
        }
    }
}

/// Decrements the waiter count when a waiting `reserve` ends or is dropped.
struct Waiting<'a>(&'a Cell<usize>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl Budget {
    fn new(capacity: usize) -> Budget {
        Budget {
            semaphore: Semaphore::new(capacity as u64),
            capacity,
            waiters: Cell::new(0),
        }
    }

    /// Reserves `bytes` until the permit is dropped: at once if they are free, else after the
    /// streams ahead (first come, first served), unless the frame can never fit or too many
    /// streams wait already.
    async fn reserve(&self, bytes: usize) -> Result<Permit<'_>, Refusal> {
        if bytes > self.capacity {
            return Err(Refusal::TooLarge {
                bytes,
                capacity: self.capacity,
            });
        }
        if let Ok(permit) = self.semaphore.try_acquire_permit(bytes as u64) {
            return Ok(permit);
        }
        let waiters = self.waiters.get();
        if waiters >= NATIVE_BUDGET_WAITERS_MAX {
            return Err(Refusal::Busy { waiters });
        }
        self.waiters.set(waiters + 1);
        let _waiting = Waiting(&self.waiters);
        let permit = self
            .semaphore
            .acquire_permit(bytes as u64)
            .await
            .expect("the budget semaphore is never closed");
        Ok(permit)
    }
}

/// An answer header and its payload chunks (stored batches for a fetch, else none).
struct Answer {
    header: Response,
    payload: Vec<Bytes>,
}

impl Answer {
    fn header(header: Response) -> Answer {
        Answer {
            header,
            payload: Vec::new(),
        }
    }

    fn error(code: ErrorCode, message: impl Into<String>) -> Answer {
        Answer::header(Response::Error {
            code,
            message: message.into(),
        })
    }

    fn done(value: i64) -> Answer {
        Answer::header(Response::Done { value })
    }
}

/// The error answer for a domain error, through the one mapping.
fn failure<'a, E>(error: &'a E) -> Answer
where
    E: std::fmt::Display,
    &'a E: Into<DomainError<'a>>,
{
    Answer::error(error_code(error), error.to_string())
}

impl Server {
    async fn dispatch(&self, frame: Frame<Request>, order: &Rc<ProduceOrder>) -> Answer {
        if !frame.payload.is_empty() && !matches!(frame.header, Request::Produce { .. }) {
            return Answer::error(
                ErrorCode::InvalidRequest,
                format!(
                    "{} requests carry no payload, got {} bytes",
                    api_name(&frame.header),
                    frame.payload.len()
                ),
            );
        }
        match frame.header {
            Request::Metadata { topics } => self.metadata(topics).await,
            Request::Produce {
                topic,
                partition,
                acks,
                sequence,
            } => {
                let tp = TopicPartition::new(topic, partition);
                self.produce(tp, acks, sequence, order, frame.payload).await
            }
            Request::Fetch {
                topic,
                partition,
                offset,
                max_bytes,
                max_wait_ms,
            } => {
                let tp = TopicPartition::new(topic, partition);
                self.fetch(tp, Offset(offset), max_bytes, max_wait_ms).await
            }
            Request::ListOffset {
                topic,
                partition,
                query,
            } => {
                let spec = match query {
                    OffsetQuery::Earliest => OffsetSpec::Earliest,
                    OffsetQuery::Latest => OffsetSpec::Latest,
                    OffsetQuery::Timestamp { ms } => OffsetSpec::Timestamp(TimestampMs(ms)),
                };
                let tp = TopicPartition::new(topic, partition);
                match self.shard.list_offset(tp, spec).await {
                    Ok((offset, timestamp)) => Answer::header(Response::Offset {
                        offset: offset.map_or(-1, |o| o.0),
                        timestamp: timestamp.map_or(-1, |t| t.0),
                    }),
                    Err(error) => failure(&error),
                }
            }
            Request::CreateTopic {
                name,
                partitions,
                replication,
                configs,
            } => {
                self.create_topic(name, partitions, replication, configs)
                    .await
            }
            Request::DeleteTopic { name } => {
                self.change(MetadataCommand::DeleteTopic { name }).await
            }
            Request::DescribeTopic { name } => self.describe_topic(&name).await,
            Request::AlterConfig { name, changes } => {
                let command = MetadataCommand::AlterConfig {
                    name,
                    changes,
                    replace: false,
                };
                self.change(command).await
            }
            Request::CreatePartitions { name, total } => {
                self.change(MetadataCommand::CreatePartitions { name, total })
                    .await
            }
            Request::DeleteRecords {
                topic,
                partition,
                before,
            } => {
                let tp = TopicPartition::new(topic, partition);
                match self.shard.delete_records(tp, Offset(before)).await {
                    Ok(start) => Answer::done(start.0),
                    Err(error) => failure(&error),
                }
            }
            group @ (Request::GroupHeartbeat { .. }
            | Request::CommitOffsets { .. }
            | Request::FetchOffsets { .. }
            | Request::ListGroups
            | Request::DescribeGroup { .. }
            | Request::DeleteGroup { .. }) => {
                Answer::header(groups::handle(&self.shard, group).await)
            }
        }
    }

    /// Brokers with every shard endpoint, and the named topics (all when `None`). Missing named
    /// topics are created first when `auto_create_topics` is on; any still missing fail the
    /// whole request, naming the topic.
    async fn metadata(&self, topics: Option<Vec<String>>) -> Answer {
        if self.shard.isolated() {
            // Its metadata is stale (it still names itself leader): send the client on.
            return Answer::error(
                ErrorCode::Overloaded,
                "this broker is cut off from the controller; ask another broker",
            );
        }
        let mut snapshot = self.shard.metadata();
        let Some(names) = topics else {
            let all = snapshot.topics.values().map(topic_info).collect();
            return metadata_answer(&snapshot, all);
        };
        if self.config.auto_create_topics {
            for name in &names {
                if snapshot.topic(name).is_some() || validate_topic_name(name).is_err() {
                    continue;
                }
                match auto_create_topic(&self.shard, name, self.config.default_partitions).await {
                    Ok(_) => snapshot = self.shard.metadata(),
                    Err(error) => {
                        return Answer::error(
                            error_code(&error),
                            format!("cannot auto-create topic {name}: {error}"),
                        );
                    }
                }
            }
        }
        let mut found = Vec::with_capacity(names.len());
        for name in &names {
            match snapshot.topic(name) {
                Some(topic) => found.push(topic_info(topic)),
                None => {
                    if let Err(error) = validate_topic_name(name) {
                        return failure(&error);
                    }
                    return Answer::error(
                        ErrorCode::UnknownTopicOrPartition,
                        format!("unknown topic {name}"),
                    );
                }
            }
        }
        metadata_answer(&snapshot, found)
    }

    /// Checks that this shard leads `tp`: produce and fetch are served by the owner only.
    fn check_owner(&self, tp: &TopicPartition) -> Result<(), Answer> {
        let snapshot = self.shard.metadata();
        let Some(partition) = snapshot.partition(tp) else {
            return Err(Answer::error(
                ErrorCode::UnknownTopicOrPartition,
                format!("unknown topic or partition {tp}"),
            ));
        };
        if partition.leader == self.shard.node() && partition.shard == self.shard.id() {
            return Ok(());
        }
        let endpoint = snapshot
            .broker(partition.leader)
            .and_then(|broker| broker.quic.get(usize::from(partition.shard.0)))
            .map_or_else(|| "unknown".to_owned(), ToString::to_string);
        Err(Answer::error(
            ErrorCode::NotOwner,
            format!(
                "partition {tp} is served by broker {} shard {} at {endpoint}, not by this \
                 endpoint; refresh metadata",
                partition.leader.0, partition.shard.0
            ),
        ))
    }

    /// Appends a produce request's batches. A sequenced request (`sequence`) waits for its
    /// turn among the connection's requests for the partition (`order`), and lets the next
    /// one go as soon as its append is issued, before waiting for the acknowledgement.
    async fn produce(
        &self,
        tp: TopicPartition,
        acks: i8,
        sequence: Option<ProduceSequence>,
        order: &Rc<ProduceOrder>,
        batches: Bytes,
    ) -> Answer {
        let acks = match acks {
            0 => Acks::None,
            1 => Acks::Leader,
            -1 => Acks::All,
            other => {
                return Answer::error(
                    ErrorCode::InvalidRequest,
                    format!("acks must be 0, 1 or -1 (all), not {other}"),
                );
            }
        };
        if let Err(answer) = self.check_owner(&tp) {
            return answer;
        }
        let turn = match sequence {
            Some(sequence) => match order.turn(&tp, sequence).await {
                Ok(turn) => Some(turn),
                Err(error) => return Answer::error(error.code(), error.to_string()),
            },
            None => None,
        };
        // Dropping the turn on failure marks the request failed: later ones must not
        // overtake it.
        let pending = match self.shard.produce_local_start(&tp, batches, acks) {
            Ok(pending) => pending,
            Err(error) => return failure(&error),
        };
        if let Some(turn) = turn {
            turn.appended();
        }
        match pending.await {
            Ok(ok) => Answer::header(Response::Produced {
                base_offset: ok.base_offset.0,
                last_offset: ok.last_offset.0,
                log_append_time: ok.log_append_time.map_or(-1, |t| t.0),
            }),
            Err(error) => failure(&error),
        }
    }

    async fn fetch(
        &self,
        tp: TopicPartition,
        from: Offset,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Answer {
        if let Err(answer) = self.check_owner(&tp) {
            return answer;
        }
        let request = FetchRequest {
            from,
            // The log returns at most max(max_bytes, one batch), and a batch is at most
            // BATCH_BYTES_MAX, so the answer fits one frame. A native fetch always gets at
            // least one batch (0 would mean none to the shard).
            max_bytes: usize::try_from(max_bytes)
                .unwrap_or(usize::MAX)
                .clamp(1, FRAME_PAYLOAD_BYTES_MAX),
            max_wait: Duration::from_millis(u64::from(max_wait_ms).min(NATIVE_FETCH_WAIT_MS_MAX)),
        };
        let result = if self.stopping.is_fired() {
            self.shard.fetch_local(&tp, now(request)).await
        } else {
            let poll = std::pin::pin!(self.shard.fetch_local(&tp, request));
            match select(poll, std::pin::pin!(self.stopping.wait())).await {
                Either::Left((result, _)) => result,
                // Draining: answer with what there is now instead of waiting.
                Either::Right(((), _)) => self.shard.fetch_local(&tp, now(request)).await,
            }
        };
        let data = match result {
            Ok(data) => data,
            Err(error) => return failure(&error),
        };
        let mut payload = Vec::with_capacity(data.batches.len());
        let mut total = 0usize;
        for chunk in data.batches {
            if !payload.is_empty() && total + chunk.len() > FRAME_PAYLOAD_BYTES_MAX {
                break;
            }
            total += chunk.len();
            payload.push(chunk);
        }
        if total > FRAME_PAYLOAD_BYTES_MAX {
            return Answer::error(
                ErrorCode::Internal,
                format!("stored data of {total} bytes at {tp} offset {from} exceeds one frame"),
            );
        }
        Answer {
            header: Response::Fetched {
                high_watermark: data.high_watermark.0,
                log_start_offset: data.log_start_offset.0,
            },
            payload,
        }
    }

    async fn create_topic(
        &self,
        name: String,
        partitions: i32,
        replication: i16,
        configs: Vec<(String, String)>,
    ) -> Answer {
        let mut overrides = BTreeMap::new();
        for (key, value) in configs {
            if overrides.contains_key(&key) {
                return Answer::error(
                    ErrorCode::InvalidConfig,
                    format!("config {key} given twice"),
                );
            }
            overrides.insert(key, value);
        }
        let command = MetadataCommand::CreateTopic {
            name,
            partitions: if partitions == -1 {
                self.config.default_partitions
            } else {
                partitions
            },
            replication: if replication == -1 { 1 } else { replication },
            overrides,
        };
        self.change(command).await
    }

    /// Applies a metadata change through the single writer; answers once every shard has it.
    async fn change(&self, command: MetadataCommand) -> Answer {
        match self.shard.command(command).await {
            Ok(_) => Answer::done(0),
            Err(error) => failure(&error),
        }
    }

    async fn describe_topic(&self, name: &str) -> Answer {
        let snapshot = self.shard.metadata();
        let Some(topic) = snapshot.topic(name) else {
            return Answer::error(
                ErrorCode::UnknownTopicOrPartition,
                format!("unknown topic {name}"),
            );
        };
        let statuses = futures::future::join_all(topic.partitions.iter().map(|p| {
            self.shard
                .status(TopicPartition::new(Arc::clone(&topic.name), p.id.0))
        }))
        .await;
        let partitions = topic
            .partitions
            .iter()
            .zip(statuses)
            .map(|(partition, status)| {
                let mut info = partition_info(partition);
                if let Some(status) = status {
                    info.log_start_offset = status.log_start_offset.0;
                    info.log_end_offset = status.log_end_offset.0;
                    info.high_watermark = status.high_watermark.0;
                    info.size_bytes = status.size_bytes;
                }
                info
            })
            .collect();
        let configs = TopicConfig::describe(&topic.overrides)
            .into_iter()
            .map(|entry| (entry.key.to_owned(), entry.value, entry.is_override))
            .collect();
        Answer::header(Response::Topic {
            topic: TopicInfo {
                name: topic.name.to_string(),
                partitions,
                configs,
            },
        })
    }
}

/// `request` without waiting.
fn now(request: FetchRequest) -> FetchRequest {
    FetchRequest {
        max_wait: Duration::ZERO,
        ..request
    }
}

fn metadata_answer(snapshot: &MetadataSnapshot, topics: Vec<TopicInfo>) -> Answer {
    let brokers = snapshot
        .brokers
        .iter()
        .map(|broker| BrokerEndpoint {
            id: broker.id.0,
            shards: broker.quic.iter().map(ToString::to_string).collect(),
            kafka: broker.kafka.to_string(),
        })
        .collect();
    Answer::header(Response::Metadata {
        cluster_id: snapshot.cluster_id.clone(),
        brokers,
        topics,
    })
}

fn topic_info(topic: &TopicMeta) -> TopicInfo {
    TopicInfo {
        name: topic.name.to_string(),
        partitions: topic.partitions.iter().map(partition_info).collect(),
        configs: Vec::new(),
    }
}

fn partition_info(partition: &PartitionMeta) -> PartitionInfo {
    PartitionInfo {
        partition: partition.id.0,
        leader: partition.leader.0,
        shard: partition.shard.0,
        replicas: partition.replicas.iter().map(|id| id.0).collect(),
        isr: partition.isr.iter().map(|id| id.0).collect(),
        log_start_offset: 0,
        log_end_offset: 0,
        high_watermark: 0,
        size_bytes: 0,
    }
}
