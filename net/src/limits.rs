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

const _: () = assert!(FRAME_PAYLOAD_BYTES_MAX >= BATCH_BYTES_MAX);
const _: () = assert!(FRAME_PAYLOAD_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(FRAME_HEADER_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(QUIC_CONNECTION_RECEIVE_WINDOW_BYTES >= QUIC_STREAM_RECEIVE_WINDOW_BYTES);
const _: () = assert!(QUIC_KEEP_ALIVE_INTERVAL_MS < QUIC_IDLE_TIMEOUT_MS);
const _: () = assert!(UDP_RECV_BUFFER_BYTES <= i32::MAX as usize);
const _: () = assert!(UDP_SEND_BUFFER_BYTES <= i32::MAX as usize);
