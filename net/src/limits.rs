//! Limits of the network layer.
//!
//! Every constant has its unit in its name, says why it has its value and what it costs, and
//! relations between limits are asserted at compile time. Must not depend on anything but
//! `sluice_engine::limits`.

use sluice_engine::limits::BATCH_BYTES_MAX;

/// Largest rkyv header a native frame may declare.
///
/// Headers carry request metadata (topic, partition, offsets, error text); a metadata answer
/// for a few thousand partitions at ~64 bytes each still fits. Larger answers must be paged or
/// carried in the payload. A receiver holds at most one header per in-flight stream, so this
/// costs up to `QUIC_BIDI_STREAMS_MAX * FRAME_HEADER_BYTES_MAX` (32 MiB) per connection, and
/// bytecheck validation is linear in it.
pub const FRAME_HEADER_BYTES_MAX: usize = 256 << 10;

/// Largest payload (record batch bytes) a native frame may declare.
///
/// Twice the engine's largest batch, so a produce of one maximal batch or a fetch answer of
/// two fits in one frame. A receiver buffers a whole payload before checking its CRC, so one
/// in-flight frame costs up to this much memory; a per-connection byte budget must bound the
/// sum across streams (see net/PROTOCOL.md).
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 2 * BATCH_BYTES_MAX;

/// Concurrent bidirectional streams a peer may open on one QUIC connection.
///
/// Each stream carries one request and its answer, so this bounds in-flight requests per
/// connection (pipelining depth). 128 keeps a producer busy across a loopback or LAN
/// round trip with 1 MiB batches; QUIC flow control makes the opener wait beyond it.
pub const QUIC_BIDI_STREAMS_MAX: u32 = 128;

/// Bytes a peer may send on one stream before we read them (QUIC stream flow-control window).
///
/// A single stream must sustain loopback bandwidth (~2 GB/s) across quinn's processing delay
/// (~1-2 ms between window updates on a busy shard), so 8 MiB. Memory is committed only when
/// the application stops reading.
pub const QUIC_STREAM_RECEIVE_WINDOW_BYTES: u32 = 8 << 20;

/// Bytes a peer may send on one connection before we read them (connection flow control).
///
/// Four streams' worth, so several concurrent requests progress at full speed. This is the
/// most unread data quinn buffers per connection.
pub const QUIC_CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 4 * QUIC_STREAM_RECEIVE_WINDOW_BYTES;

/// Bytes quinn buffers for sending on one connection before writes wait.
///
/// Matches the peer's connection window so a writer can fill it without waiting on quinn.
pub const QUIC_SEND_WINDOW_BYTES: u64 = QUIC_CONNECTION_RECEIVE_WINDOW_BYTES as u64;

/// Interval between QUIC keep-alive probes on an otherwise idle connection.
///
/// Keeps NAT and firewall state alive and detects a dead peer well inside the idle timeout;
/// costs one small packet per idle connection per interval.
pub const QUIC_KEEP_ALIVE_INTERVAL_MS: u64 = 5_000;

/// A connection with no packet from the peer for this long is closed.
///
/// Six keep-alive intervals: a peer must miss several probes (not one lost packet) to be
/// declared dead.
pub const QUIC_IDLE_TIMEOUT_MS: u64 = 6 * QUIC_KEEP_ALIVE_INTERVAL_MS;

/// Requested kernel receive buffer of each shard's UDP socket (SO_RCVBUF / SO_RCVBUFFORCE).
///
/// The kernel drops datagrams when the buffer fills while the shard is busy, and QUIC treats
/// drops as congestion. At 10 Gbit/s a 5 ms stall of the shard brings ~6 MB, so 8 MiB.
/// Kernel memory, used only while datagrams wait.
pub const UDP_RECV_BUFFER_BYTES: usize = 8 << 20;

/// Requested kernel send buffer of each shard's UDP socket (SO_SNDBUF / SO_SNDBUFFORCE).
///
/// Holds several 64-segment GSO sends (~90 KiB each) while the NIC queue drains, so `sendmsg`
/// rarely returns `EAGAIN`. Kernel memory, used only while datagrams wait.
pub const UDP_SEND_BUFFER_BYTES: usize = 4 << 20;

/// Wait before retrying a UDP send that returned `EAGAIN`.
///
/// glommio offers no write-readiness wait for a foreign socket, so a full send buffer is
/// retried on a timer. With a multi-MiB send buffer this only happens when the NIC queue is
/// saturated; 100 µs adds at most that much latency and costs at most 10k wake-ups a second
/// per blocked connection.
pub const UDP_SEND_RETRY_WAIT_US: u64 = 100;

/// Largest admin HTTP request head. Scrapers send a few hundred bytes; 8 KiB is generous and
/// bounds memory per admin connection.
pub const ADMIN_REQUEST_BYTES_MAX: usize = 8 << 10;

/// Largest Kafka request frame accepted, as Kafka's `socket.request.max.bytes` default
/// (100 MiB). A larger declared size closes the connection before anything is allocated.
/// Memory per connection grows with the bytes actually received, never with the declared size.
pub const KAFKA_REQUEST_BYTES_MAX: usize = 100 * 1024 * 1024;

/// Smallest well-formed request frame: api key (2), api version (2), correlation id (4).
pub const KAFKA_REQUEST_BYTES_MIN: usize = 8;

/// Bytes read per step while receiving a request frame. Bounds how far the buffer runs ahead
/// of the bytes that have arrived (a client declaring 100 MiB and sending nothing costs 64 KiB).
pub const KAFKA_READ_CHUNK_BYTES: usize = 64 * 1024;

/// Requests read from one connection but not yet answered. Kafka answers in order; this bounds
/// the response queue (and the fetches long-polling concurrently) per connection.
pub const KAFKA_INFLIGHT_REQUESTS_MAX: usize = 16;

/// Longest a fetch may long-poll, whatever `max_wait_ms` the client asks for. Kafka clients
/// default to 500 ms; a cap keeps a misbehaving client from parking work for hours.
pub const KAFKA_FETCH_WAIT_MS_MAX: u64 = 30_000;

/// Rounds of "wait for any partition, then re-read all" one fetch may take before it answers
/// with what it has. Each round ends on new data or on the deadline, so this only bounds a fetch
/// whose `min_bytes` is never reached while data trickles in.
pub const KAFKA_FETCH_ROUNDS_MAX: usize = 64;

/// Partitions in one CreateTopics default when the client asks for the broker default (-1)
/// and when a topic is auto-created: Kafka's `num.partitions` default.
pub const KAFKA_DEFAULT_PARTITIONS: i32 = 1;

const _: () = assert!(KAFKA_READ_CHUNK_BYTES <= KAFKA_REQUEST_BYTES_MAX);
const _: () = assert!(KAFKA_REQUEST_BYTES_MIN < KAFKA_READ_CHUNK_BYTES);
const _: () = assert!(KAFKA_REQUEST_BYTES_MAX < i32::MAX as usize);
const _: () = assert!(KAFKA_INFLIGHT_REQUESTS_MAX >= 1);

/// Array elements (topics, partitions, configs, ...) in one request, counted over all arrays.
/// Each decoded element costs up to ~200 bytes of memory whatever its wire size, so this bounds
/// a request's decoded size to ~40 MiB; 200k covers a produce or fetch naming every partition
/// of a large broker.
pub const KAFKA_REQUEST_ARRAY_ELEMENTS_MAX: usize = 200_000;
const _: () = assert!(FRAME_PAYLOAD_BYTES_MAX >= BATCH_BYTES_MAX);
const _: () = assert!(FRAME_PAYLOAD_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(FRAME_HEADER_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(QUIC_CONNECTION_RECEIVE_WINDOW_BYTES >= QUIC_STREAM_RECEIVE_WINDOW_BYTES);
const _: () = assert!(QUIC_KEEP_ALIVE_INTERVAL_MS < QUIC_IDLE_TIMEOUT_MS);
const _: () = assert!(UDP_RECV_BUFFER_BYTES <= i32::MAX as usize);
const _: () = assert!(UDP_SEND_BUFFER_BYTES <= i32::MAX as usize);
