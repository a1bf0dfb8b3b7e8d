//! One Kafka connection with pipelined requests.
//!
//! A request is encoded whole (header and body), given a correlation id and queued for the writer
//! task; record sets given as placeholders ([`sluice_net::kafka::splice`]) are written from their
//! own buffers instead of being copied into the request; its reply slot joins a FIFO in the same
//! synchronous step, so the FIFO order is the write order. The reader task takes response frames in
//! order (a Kafka broker answers a connection's requests in the order it got them), checks each
//! correlation id against the FIFO's head, decodes the body with the `kafka-protocol` crate and
//! hands it over. At most `in_flight_max` requests are outstanding (Kafka's
//! `max.in.flight.requests.per.connection`); acks=0 produce requests get no response and leave the
//! window as soon as they are written.
//!
//! Any failure (socket, framing, an unexpected correlation id) breaks the connection: every
//! waiting request fails with the reason and later calls fail at once. The harness does not
//! reconnect: a benchmark whose connection breaks has failed.
//!
//! Shard-local (`!Send`): the socket lives on the executor that opened it.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use futures::channel::oneshot;
use futures::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use kafka_protocol::messages::api_versions_request::ApiVersionsRequest;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Encodable, StrBytes};
use sluice_engine::rt::net::{Preallocated, TcpStream};
use sluice_engine::rt::sync::{LocalReceiver, LocalSender, Semaphore, new_bounded};
use sluice_engine::rt::{self, Task};
use sluice_net::kafka::splice::{Placeholders, RecordsPrefix, splice};

/// Largest response frame accepted (a fetch answer is bounded by its `max_bytes`).
const RESPONSE_BYTES_MAX: usize = 512 << 20;

/// Receive buffer of a connection: a small response and the next one's length arrive with one
/// `recv`; a read of a large response body past it goes straight into the frame.
const RECV_BUFFER_BYTES: usize = 16 << 10;

/// The connection's socket, reading through [`RECV_BUFFER_BYTES`].
type Stream = TcpStream<Preallocated>;

/// Client id sent in every request header.
const CLIENT_ID: &str = "sluice-perf";

type Reply = oneshot::Sender<Result<ResponseKind, String>>;

/// A request waiting for its response.
struct Waiting {
    correlation_id: i32,
    api: ApiKey,
    version: i16,
    reply: Reply,
}

/// A frame for the writer, in chunks written in order; `release` frees its window slot once
/// written (no response).
struct Outgoing {
    chunks: Vec<Bytes>,
    release: bool,
}

struct Shared {
    /// Invariant: in write order; one entry per written-or-queued request expecting a
    /// response.
    waiting: RefCell<VecDeque<Waiting>>,
    window: Semaphore,
    broken: RefCell<Option<String>>,
}

impl Shared {
    /// Breaks the connection: every waiting request and every later call fails.
    fn fail(&self, reason: String) {
        self.broken.borrow_mut().get_or_insert(reason.clone());
        self.window.close();
        let waiting: Vec<Waiting> = self.waiting.borrow_mut().drain(..).collect();
        for waiting in waiting {
            let _ = waiting.reply.send(Err(reason.clone()));
        }
    }
}

/// The versions the broker answers for each API, from its ApiVersions response.
#[derive(Clone, Debug, Default)]
pub struct Versions(HashMap<i16, (i16, i16)>);

impl Versions {
    /// The highest version of `api` both sides speak, at most `ours_max` and at least
    /// `ours_min`.
    pub fn pick(&self, api: ApiKey, ours_min: i16, ours_max: i16) -> anyhow::Result<i16> {
        let (min, max) = self
            .0
            .get(&(api as i16))
            .copied()
            .with_context(|| format!("the broker does not support {api:?}"))?;
        let version = max.min(ours_max);
        if version < min.max(ours_min) {
            bail!(
                "no common version of {api:?}: broker {min}..={max}, \
                 harness {ours_min}..={ours_max}"
            );
        }
        Ok(version)
    }
}

/// A pipelined connection to one broker. Dropping it stops its tasks and closes the socket.
pub struct Connection {
    shared: Rc<Shared>,
    frames: LocalSender<Outgoing>,
    next_correlation_id: Cell<i32>,
    versions: Versions,
    addr: SocketAddr,
    _reader: Task<()>,
    _writer: Task<()>,
}

impl Connection {
    /// Connects to `addr` and asks for the broker's API versions.
    pub async fn connect(addr: SocketAddr, in_flight_max: usize) -> anyhow::Result<Connection> {
        assert!(in_flight_max >= 1, "a window of at least one request");
        let stream = TcpStream::connect(addr)
            .await
            .map_err(std::io::Error::from)
            .with_context(|| format!("cannot connect to the Kafka listener at {addr}"))?;
        stream
            .set_nodelay(true)
            .map_err(std::io::Error::from)
            .context("cannot set TCP_NODELAY")?;
        let (reader, writer) = stream
            .buffered_with(Preallocated::new(RECV_BUFFER_BYTES))
            .split();
        let shared = Rc::new(Shared {
            waiting: RefCell::new(VecDeque::with_capacity(in_flight_max)),
            window: Semaphore::new(in_flight_max as u64),
            broken: RefCell::new(None),
        });
        // The window bounds the frames queued: the channel never refuses a frame.
        let (frames, queued) = new_bounded(in_flight_max + 1);
        let reader = rt::spawn(read_loop(Rc::clone(&shared), reader));
        let writer = rt::spawn(write_loop(Rc::clone(&shared), writer, queued));
        let mut connection = Connection {
            shared,
            frames,
            next_correlation_id: Cell::new(0),
            versions: Versions::default(),
            addr,
            _reader: reader,
            _writer: writer,
        };
        let answer = connection
            .call(ApiKey::ApiVersions, 0, &ApiVersionsRequest::default())
            .await
            .with_context(|| format!("ApiVersions to {addr}"))?;
        let ResponseKind::ApiVersions(answer) = answer else {
            bail!("{addr} answered ApiVersions with something else");
        };
        if answer.error_code != 0 {
            bail!(
                "{addr} refused ApiVersions v0 with error {}",
                answer.error_code
            );
        }
        connection.versions = Versions(
            answer
                .api_keys
                .iter()
                .map(|api| (api.api_key, (api.min_version, api.max_version)))
                .collect(),
        );
        Ok(connection)
    }

    /// The broker's API versions.
    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    /// Sends a request and waits for its response. Waits first while the window is full.
    pub async fn call<R: Encodable>(
        &self,
        api: ApiKey,
        version: i16,
        body: &R,
    ) -> anyhow::Result<ResponseKind> {
        self.call_spliced(api, version, body, None).await
    }

    /// As [`Connection::call`], with the record sets of `body` given as placeholders of
    /// `records` (in encoding order, with the `records` length prefix of `version`).
    pub async fn call_spliced<R: Encodable>(
        &self,
        api: ApiKey,
        version: i16,
        body: &R,
        records: Option<Records>,
    ) -> anyhow::Result<ResponseKind> {
        self.start(api, version, body, records)
            .await?
            .answer()
            .await
    }

    /// Sends a request (waiting first while the window is full) and returns once it is queued;
    /// its response comes through [`Pending::answer`], so the caller can work meanwhile.
    /// `records` as for [`Connection::call_spliced`].
    pub async fn start<R: Encodable>(
        &self,
        api: ApiKey,
        version: i16,
        body: &R,
        records: Option<Records>,
    ) -> anyhow::Result<Pending> {
        let (reply, answer) = oneshot::channel();
        self.submit(api, version, body, records, Some(reply))
            .await?;
        Ok(Pending {
            api,
            addr: self.addr,
            answer,
        })
    }

    /// Sends a request that gets no response (acks=0 produce); returns once it is queued.
    /// `records` as for [`Connection::call_spliced`].
    pub async fn send_only<R: Encodable>(
        &self,
        api: ApiKey,
        version: i16,
        body: &R,
        records: Option<Records>,
    ) -> anyhow::Result<()> {
        self.submit(api, version, body, records, None).await
    }

    async fn submit<R: Encodable>(
        &self,
        api: ApiKey,
        version: i16,
        body: &R,
        records: Option<Records>,
        reply: Option<Reply>,
    ) -> anyhow::Result<()> {
        if let Some(reason) = self.shared.broken.borrow().clone() {
            bail!("connection to {} is broken: {reason}", self.addr);
        }
        let correlation_id = self.next_correlation_id.get();
        self.next_correlation_id.set(correlation_id.wrapping_add(1));
        let frame = encode_request(api, version, correlation_id, body)?;
        let chunks = match records {
            None => vec![frame.freeze()],
            Some(records) => splice(frame, records.prefix, records.placeholders)
                .map_err(|reason| anyhow::anyhow!("cannot encode {api:?} v{version}: {reason}"))?,
        };
        if self.shared.window.acquire(1).await.is_err() {
            let reason = self.shared.broken.borrow().clone().unwrap_or_default();
            bail!("connection to {} is broken: {reason}", self.addr);
        }
        // From here to the channel send nothing awaits, so waiting order is write order.
        let release = reply.is_none();
        if let Some(reply) = reply {
            self.shared.waiting.borrow_mut().push_back(Waiting {
                correlation_id,
                api,
                version,
                reply,
            });
        }
        if self.frames.try_send(Outgoing { chunks, release }).is_err() {
            bail!("connection to {} is closed", self.addr);
        }
        Ok(())
    }
}

/// A request sent on a connection whose response has not been taken yet.
pub struct Pending {
    api: ApiKey,
    addr: SocketAddr,
    answer: oneshot::Receiver<Result<ResponseKind, String>>,
}

impl Pending {
    /// Waits for the response.
    pub async fn answer(self) -> anyhow::Result<ResponseKind> {
        let Pending { api, addr, answer } = self;
        match answer.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(reason)) => bail!("{api:?} to {addr}: {reason}"),
            Err(_) => bail!("{api:?} to {addr}: connection closed"),
        }
    }
}

/// The record sets of a request, standing in its encoded body as placeholders.
pub struct Records {
    /// The placeholders given to the body's `records` fields, with their record sets.
    pub placeholders: Placeholders,
    /// How the request's version encodes a `records` length.
    pub prefix: RecordsPrefix,
}

/// Encodes a size-prefixed request frame.
fn encode_request<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> anyhow::Result<BytesMut> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let mut buf = BytesMut::with_capacity(body.compute_size(version).unwrap_or(0) + 64);
    buf.put_u32(0);
    header
        .encode(&mut buf, api.request_header_version(version))
        .with_context(|| format!("cannot encode the {api:?} v{version} header"))?;
    body.encode(&mut buf, version)
        .with_context(|| format!("cannot encode {api:?} v{version}"))?;
    let size = u32::try_from(buf.len() - 4).context("request larger than 4 GiB")?;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf)
}

async fn write_loop(
    shared: Rc<Shared>,
    mut writer: WriteHalf<Stream>,
    queued: LocalReceiver<Outgoing>,
) {
    // Runs until the connection is dropped (the channel closes) or the socket fails.
    while let Some(outgoing) = queued.recv().await {
        for chunk in &outgoing.chunks {
            if let Err(error) = writer.write_all(chunk).await {
                shared.fail(format!("write failed: {error}"));
                return;
            }
        }
        if outgoing.release {
            shared.window.signal(1);
        }
    }
    let _ = writer.close().await;
}

async fn read_loop(shared: Rc<Shared>, mut reader: ReadHalf<Stream>) {
    // Runs until the socket fails or closes, or a response makes no sense.
    loop {
        let frame = match read_frame(&mut reader).await {
            Ok(frame) => frame,
            Err(reason) => {
                shared.fail(reason);
                return;
            }
        };
        let Some(waiting) = shared.waiting.borrow_mut().pop_front() else {
            shared.fail("a response arrived with no request waiting".into());
            return;
        };
        shared.window.signal(1);
        match decode_response(frame, &waiting) {
            Ok(response) => {
                let _ = waiting.reply.send(Ok(response));
            }
            Err(reason) => {
                let _ = waiting.reply.send(Err(reason.clone()));
                shared.fail(reason);
                return;
            }
        }
    }
}

async fn read_frame(reader: &mut ReadHalf<Stream>) -> Result<Bytes, String> {
    let mut prefix = [0u8; 4];
    reader
        .read_exact(&mut prefix)
        .await
        .map_err(|e| format!("read failed: {e}"))?;
    let size = i32::from_be_bytes(prefix);
    let size = usize::try_from(size).map_err(|_| format!("negative frame size {size}"))?;
    if size > RESPONSE_BYTES_MAX {
        return Err(format!(
            "response of {size} bytes exceeds {RESPONSE_BYTES_MAX}"
        ));
    }
    let mut body = BytesMut::zeroed(size);
    reader
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("read failed: {e}"))?;
    Ok(body.freeze())
}

fn decode_response(mut frame: Bytes, waiting: &Waiting) -> Result<ResponseKind, String> {
    use kafka_protocol::protocol::Decodable;
    let header_version = waiting.api.response_header_version(waiting.version);
    let header = ResponseHeader::decode(&mut frame, header_version)
        .map_err(|e| format!("bad response header: {e}"))?;
    if header.correlation_id != waiting.correlation_id {
        return Err(format!(
            "response to correlation id {} while {} was expected",
            header.correlation_id, waiting.correlation_id
        ));
    }
    ResponseKind::decode(waiting.api, &mut frame, waiting.version)
        .map_err(|e| format!("bad {:?} v{} response: {e}", waiting.api, waiting.version))
}

#[cfg(test)]
mod tests {
    use kafka_protocol::messages::RequestKind;
    use kafka_protocol::messages::metadata_request::MetadataRequest;
    use kafka_protocol::protocol::Decodable;

    use super::*;

    // Goal: a request frame is size-prefixed and decodes back to the same header and body
    // with the crate's own decoders. Method: encode a Metadata v12 request and decode it.
    #[test]
    fn request_frames_decode_back() {
        let body = MetadataRequest::default().with_allow_auto_topic_creation(false);
        let frame = encode_request(ApiKey::Metadata, 12, 42, &body).expect("encodes");
        let size = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(size, frame.len() - 4);
        let mut rest = frame.freeze().slice(4..);
        let header = RequestHeader::decode(&mut rest, ApiKey::Metadata.request_header_version(12))
            .expect("header decodes");
        assert_eq!(header.correlation_id, 42);
        assert_eq!(header.request_api_version, 12);
        let decoded = RequestKind::decode(ApiKey::Metadata, &mut rest, 12).expect("body decodes");
        assert!(matches!(decoded, RequestKind::Metadata(m) if m == body));
        let versions = Versions([(ApiKey::Metadata as i16, (0, 9))].into_iter().collect());
        assert_eq!(versions.pick(ApiKey::Metadata, 1, 12).expect("overlap"), 9);
        assert!(versions.pick(ApiKey::Metadata, 10, 12).is_err());
        assert!(versions.pick(ApiKey::Produce, 3, 9).is_err());
    }

    // Goal: a Produce request whose record sets are spliced in from their own buffers is the
    // request the crate would encode with the bytes inline, at a non-flexible and a flexible
    // version. Method: encode with placeholders, splice, join the chunks, decode, compare.
    #[test]
    fn spliced_produce_requests_decode_with_their_records() {
        use kafka_protocol::messages::TopicName;
        use kafka_protocol::messages::produce_request::{
            PartitionProduceData, ProduceRequest, TopicProduceData,
        };

        let sets: Vec<Bytes> = vec![
            Bytes::from(vec![7u8; 100]),
            Bytes::from((0..70_000u32).map(|i| i as u8).collect::<Vec<u8>>()),
        ];
        for (version, prefix) in [(8, RecordsPrefix::Int32), (9, RecordsPrefix::Compact)] {
            let mut placeholders = Placeholders::new();
            let partitions = sets
                .iter()
                .enumerate()
                .map(|(index, set)| {
                    PartitionProduceData::default()
                        .with_index(index as i32)
                        .with_records(Some(placeholders.add(vec![set.clone()])))
                })
                .collect();
            let body = ProduceRequest::default().with_acks(1).with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("t")))
                    .with_partition_data(partitions),
            ]);
            let frame = encode_request(ApiKey::Produce, version, 7, &body).expect("encodes");
            let chunks = splice(frame, prefix, placeholders).expect("splices");
            let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            let size = u32::from_be_bytes([joined[0], joined[1], joined[2], joined[3]]) as usize;
            assert_eq!(size, joined.len() - 4, "v{version}: size prefix");
            let mut rest = Bytes::from(joined).slice(4..);
            RequestHeader::decode(&mut rest, ApiKey::Produce.request_header_version(version))
                .expect("header decodes");
            let RequestKind::Produce(decoded) =
                RequestKind::decode(ApiKey::Produce, &mut rest, version).expect("body decodes")
            else {
                panic!("v{version}: not a produce request");
            };
            let records: Vec<Bytes> = decoded.topic_data[0]
                .partition_data
                .iter()
                .map(|p| p.records.clone().expect("records"))
                .collect();
            assert_eq!(records, sets, "v{version}: record sets");
        }
    }
}
