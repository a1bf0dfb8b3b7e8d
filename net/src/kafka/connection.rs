//! One Kafka connection: read frames, dispatch, write responses in request order.
//!
//! The read side handles requests one at a time, in order (Kafka processes a connection's
//! requests strictly in order too). Two kinds do not hold it up: a produce issues its appends
//! when it is read, so a connection's produces append in the order they were sent, and waits
//! for their acknowledgement in its own task; a fetch may long-poll, so it runs as its own
//! task. The read side moves on to the next request meanwhile. Responses go through a queue of
//! at most [`KAFKA_INFLIGHT_REQUESTS_MAX`] entries that the write side drains in order, awaiting
//! a produce's or fetch's task when it reaches it; a full queue stops reading (backpressure).
//!
//! Any error (a malformed frame, an oversized declared length, an unknown API, a failed
//! socket) ends this connection only: responses already queued are written, then the socket
//! closes. Lives on the accepting shard.

use std::rc::Rc;

use bytes::Bytes;
use futures::future::Either;
use futures::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use kafka_protocol::messages::{ApiKey, RequestKind};
use sluice_engine::rt::net::{Preallocated, TcpStream};
use sluice_engine::rt::sync::{LocalReceiver, LocalSender, new_bounded};
use sluice_engine::rt::{Task, spawn};

use super::codec::{
    Decoded, ReadError, api_versions_fallback, decode_request, encode_response,
    encode_response_spliced, read_frame,
};
use super::handler::{Context, Outcome};
use crate::limits::{
    KAFKA_INFLIGHT_REQUESTS_MAX, KAFKA_RECV_BUFFER_BYTES, KAFKA_REQUEST_BYTES_MAX,
};

/// A connection's socket, reading through a small buffer (see [`KAFKA_RECV_BUFFER_BYTES`]).
type Stream = TcpStream<Preallocated>;

/// What to write for one request.
enum Reply {
    /// An encoded response frame.
    Frame(Bytes),
    /// An encoded response frame in pieces, written in order (a spliced fetch response).
    Chunks(Vec<Bytes>),
    /// Nothing (acks=0).
    Nothing,
    /// Stop writing and close the connection.
    Close(String),
}

/// A queued reply: ready, or still being computed by a task.
enum Pending {
    Ready(Reply),
    Later(Task<Reply>),
}

/// Serves one accepted connection until it closes.
pub async fn serve(context: Rc<Context>, stream: TcpStream) {
    let peer_addr = stream.peer_addr().ok();
    let peer = peer_addr.map_or_else(|| "unknown".into(), |a| a.to_string());
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    let stream = stream.buffered_with(Preallocated::new(KAFKA_RECV_BUFFER_BYTES));
    let (reader, writer) = stream.split();
    let (queue, replies) = new_bounded(KAFKA_INFLIGHT_REQUESTS_MAX);
    let read = std::pin::pin!(read_loop(&context, reader, queue, peer_addr));
    let write = std::pin::pin!(write_loop(writer, replies));
    match futures::future::select(read, write).await {
        Either::Left((result, write)) => {
            if let Err(reason) = result {
                tracing::debug!(%peer, %reason, "closing kafka connection");
            }
            // The queue's sender is gone: the writer drains what is queued, then stops.
            if let Err(reason) = write.await {
                tracing::debug!(%peer, %reason, "kafka connection write side ended");
            }
        }
        Either::Right((result, _read)) => {
            if let Err(reason) = result {
                tracing::debug!(%peer, %reason, "kafka connection write side ended");
            }
        }
    }
}

async fn read_loop(
    context: &Rc<Context>,
    mut reader: ReadHalf<Stream>,
    queue: LocalSender<Pending>,
    peer: Option<std::net::SocketAddr>,
) -> Result<(), String> {
    // Runs until the client closes, sends something invalid, or the writer stops.
    loop {
        let frame = match read_frame(&mut reader, KAFKA_REQUEST_BYTES_MAX).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(ReadError::Io(error)) => return Err(format!("read failed: {error}")),
            Err(ReadError::Decode(error)) => return Err(error.to_string()),
        };
        let pending = match decode_request(frame).map_err(|e| e.to_string())? {
            Decoded::ApiVersionsFallback { correlation_id } => {
                Pending::Ready(match api_versions_fallback(correlation_id) {
                    Ok(frame) => Reply::Frame(frame),
                    Err(error) => Reply::Close(error.to_string()),
                })
            }
            Decoded::Request(mut request) => {
                request.peer = peer;
                let api = request.api;
                let version = request.header.request_api_version;
                let correlation_id = request.header.correlation_id;
                if let RequestKind::Produce(body) = request.body {
                    // The header's client id is a slice of the frame: dropped first so that a
                    // record set can be the frame's last reference (see `produce_start`).
                    drop(request.header);
                    // Issued now, in arrival order; acknowledged in its own task.
                    let start = sluice_engine::rt::clock::now();
                    let acknowledged = context.produce_start(version, body);
                    let context = Rc::clone(context);
                    Pending::Later(spawn(async move {
                        let outcome = acknowledged.await;
                        record(&context, api, start, &outcome);
                        reply(api, version, correlation_id, outcome)
                    }))
                } else if api == ApiKey::Fetch {
                    let context = Rc::clone(context);
                    Pending::Later(spawn(async move {
                        let outcome = handle_measured(&context, request, api).await;
                        reply(api, version, correlation_id, outcome)
                    }))
                } else {
                    let outcome = handle_measured(context, request, api).await;
                    Pending::Ready(reply(api, version, correlation_id, outcome))
                }
            }
        };
        let closing = matches!(pending, Pending::Ready(Reply::Close(_)));
        if queue.send(pending).await.is_err() {
            return Err("writer stopped".into());
        }
        if closing {
            return Ok(());
        }
    }
}

/// Handles one request and counts it, with its latency, in the shard's per-API metrics.
async fn handle_measured(
    context: &Rc<Context>,
    request: super::codec::Request,
    api: ApiKey,
) -> Outcome {
    let start = sluice_engine::rt::clock::now();
    let outcome = context.handle(request).await;
    record(context, api, start, &outcome);
    outcome
}

/// Counts one handled request, with its latency since `start`.
fn record(context: &Context, api: ApiKey, start: std::time::Instant, outcome: &Outcome) {
    let failed = matches!(outcome, Outcome::Close(_));
    context
        .shard
        .metrics
        .record_request(metric_name(api), start.elapsed(), failed);
}

/// The `api` label of a Kafka API in `/metrics`.
fn metric_name(api: ApiKey) -> &'static str {
    match api {
        ApiKey::Produce => "kafka_produce",
        ApiKey::Fetch => "kafka_fetch",
        ApiKey::ListOffsets => "kafka_list_offsets",
        ApiKey::Metadata => "kafka_metadata",
        ApiKey::ApiVersions => "kafka_api_versions",
        ApiKey::CreateTopics => "kafka_create_topics",
        ApiKey::DeleteTopics => "kafka_delete_topics",
        ApiKey::FindCoordinator => "kafka_find_coordinator",
        _ => "kafka_other",
    }
}

fn reply(api: ApiKey, version: i16, correlation_id: i32, outcome: Outcome) -> Reply {
    match outcome {
        Outcome::Respond { body, capacity } => {
            match encode_response(api, version, correlation_id, &body, capacity) {
                Ok(frame) => Reply::Frame(frame),
                Err(error) => {
                    tracing::error!(%error, "cannot encode kafka response");
                    Reply::Close(error.to_string())
                }
            }
        }
        Outcome::RespondSpliced {
            body,
            capacity,
            records,
        } => {
            match encode_response_spliced(api, version, correlation_id, &body, capacity, records) {
                Ok(chunks) => Reply::Chunks(chunks),
                Err(error) => {
                    tracing::error!(%error, "cannot encode kafka response");
                    Reply::Close(error.to_string())
                }
            }
        }
        Outcome::Silent => Reply::Nothing,
        Outcome::Close(reason) => Reply::Close(reason),
    }
}

async fn write_loop(
    mut writer: WriteHalf<Stream>,
    replies: LocalReceiver<Pending>,
) -> Result<(), String> {
    // Runs until the reader drops the queue (and it is drained) or a reply closes the
    // connection.
    while let Some(pending) = replies.recv().await {
        let reply = match pending {
            Pending::Ready(reply) => reply,
            Pending::Later(task) => task.await,
        };
        match reply {
            Reply::Frame(frame) => {
                writer
                    .write_all(&frame)
                    .await
                    .map_err(|e| format!("write failed: {e}"))?;
            }
            Reply::Chunks(chunks) => {
                for chunk in chunks {
                    writer
                        .write_all(&chunk)
                        .await
                        .map_err(|e| format!("write failed: {e}"))?;
                }
            }
            Reply::Nothing => {}
            Reply::Close(reason) => {
                let _ = writer.close().await;
                return Err(reason);
            }
        }
    }
    writer
        .close()
        .await
        .map_err(|e| format!("close failed: {e}"))
}
