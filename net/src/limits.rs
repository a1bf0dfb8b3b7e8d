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
/// two fits in one frame. A receiver buffers a whole payload before using it, so one
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

/// The largest UDP payload (QUIC datagram) a Sluice endpoint sends or accepts.
///
/// quinn starts every path at 1200 bytes and finds the path's real limit by probing (QUIC path
/// MTU discovery, DF bit set, no reliance on ICMP) up to this bound; quinn's default bound is
/// 1452, an Ethernet frame. Loopback carries 65,536-byte frames and bare-metal networks often
/// carry 9,000-byte jumbo frames, and per-packet work (framing, header protection, AEAD setup,
/// acknowledgements) is most of QUIC's CPU cost, so the bound is the largest datagram a 65,536
/// byte loopback frame holds behind IPv6 and UDP headers. One quinn stream over loopback with
/// 1452-byte datagrams moved 614-877 MB/s at 1.22-1.74 CPU-seconds per GiB on the sender;
/// with this bound 2062-2221 MB/s at 0.44-0.47 (`net/examples/quic_bandwidth.rs`,
/// perf/RESULTS.md "QUIC datagram size"). A path that carries less settles lower; a standard
/// Ethernet path stays at 1452.
pub const QUIC_MAX_UDP_PAYLOAD_BYTES: u16 = (65_536 - 40 - 8) as u16;

/// The most UDP payload one `sendmsg` may carry, GSO batch included: an IPv4 datagram's
/// 16-bit total length less its IP and UDP headers. The kernel refuses a larger GSO batch with
/// `EMSGSIZE`, which quinn-udp counts as a lost datagram (that is how a too-large MTU probe is
/// lost), so the shard socket splits larger batches (see `quic::runtime`).
pub const UDP_SEND_BYTES_MAX: usize = 65_535 - 20 - 8;

/// The largest list of datagrams Linux's UDP GRO hands to one receive: `GRO_MAX_SIZE`, the
/// ceiling of any device's `gro_max_size` (65,536 unless raised for BIG TCP).
///
/// quinn sizes each of its 32 receive buffers as the largest datagram we accept times the
/// GRO segments the socket reports, and quinn-udp reports the kernel's 64-segment maximum:
/// sound for 1,472-byte datagrams (94 KiB per buffer), but 4 MiB per buffer, 134 MB of address
/// space per endpoint, for [`QUIC_MAX_UDP_PAYLOAD_BYTES`]. The shard socket reports only as many
/// segments as this many bytes need (9), so each buffer still holds any GRO list.
pub const UDP_GRO_BYTES_MAX: usize = 8 * 65_535;

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

/// Default per-connection byte budget of the native server for request frames being read or
/// handled (header and payload bytes, as declared in each frame's prefix).
///
/// A stream reserves its frame's declared size before reading it and releases it once the
/// request is handled; a stream that does not fit waits (QUIC flow control then stops the
/// client), and a frame larger than the whole budget is refused. Twice the largest payload, so
/// a maximal produce never waits for a lone smaller one, and 32 maximal batches of the usual
/// 1 MiB in flight fit. Costs up to this much memory per connection, on top of what quinn
/// buffers (`QUIC_CONNECTION_RECEIVE_WINDOW_BYTES`).
pub const NATIVE_CONNECTION_BUFFER_BYTES_DEFAULT: usize = 2 * FRAME_PAYLOAD_BYTES_MAX;

/// Smallest per-connection budget a server may be configured with: room for a few ordinary
/// requests. Below it, every produce would be refused as too large.
pub const NATIVE_CONNECTION_BUFFER_BYTES_MIN: usize = 64 << 10;

/// Streams of one connection that may wait for budget at once; a stream beyond them is
/// answered `Overloaded` (retriable) and stopped instead of waiting.
///
/// A waiting stream leaves up to one stream window of data unread in quinn, and unread data
/// counts against the connection's flow-control window. If waiting streams could fill that
/// window, the streams holding budget could never receive the rest of their frames and the
/// connection would stall for good. Bounding waiters so that their windows leave at least one
/// stream window free keeps the streams that hold budget moving.
pub const NATIVE_BUDGET_WAITERS_MAX: usize =
    (QUIC_CONNECTION_RECEIVE_WINDOW_BYTES / QUIC_STREAM_RECEIVE_WINDOW_BYTES) as usize - 1;

/// Sequenced produce requests of one partition on one connection that may be unanswered at
/// once (net/PROTOCOL.md, "Produce ordering"): a request numbered further ahead of the oldest
/// unanswered one is refused at once. A connection carries at most `QUIC_BIDI_STREAMS_MAX`
/// requests at a time, so a correct client never exceeds it; it bounds the sequence numbers
/// the server keeps per partition (two sets of at most this many).
pub const NATIVE_PRODUCE_REORDER_WINDOW: u64 = QUIC_BIDI_STREAMS_MAX as u64;

/// How long a sequenced produce request waits for an earlier one of its partition to arrive
/// before it fails with `OutOfOrderSequence` (retriable). The earlier request's bytes left
/// the client first, so it is normally there already; it is late when it is large and the
/// link is slow, or when it was refused before its header was read. A request that gives up
/// never overtakes the one it waited for (it fails instead), so this bounds only how long a
/// lost predecessor holds up its successors and their budget.
pub const NATIVE_PRODUCE_GAP_WAIT_MS_MAX: u64 = 5_000;

/// Longest a native fetch may long-poll, whatever `max_wait_ms` the client asks for: as the
/// Kafka listener's cap, it keeps a misbehaving client from parking work for hours.
pub const NATIVE_FETCH_WAIT_MS_MAX: u64 = 30_000;

/// On shutdown, how long the native server waits for in-flight requests to finish before it
/// closes its connections anyway. Long polls are cut short at once, so this only waits for
/// produces and admin changes, which take milliseconds; 5 s covers a slow fdatasync.
pub const NATIVE_DRAIN_WAIT_MS_MAX: u64 = 5_000;

/// After closing its endpoint, how long the native server waits for the close to reach its
/// clients (so they see "shutting down" rather than an idle timeout). One loopback or LAN
/// round trip suffices; a lost close costs the client one idle timeout.
pub const NATIVE_CLOSE_WAIT_MS_MAX: u64 = 1_000;

const _: () = assert!(NATIVE_CONNECTION_BUFFER_BYTES_DEFAULT >= FRAME_PAYLOAD_BYTES_MAX);
const _: () = assert!(
    NATIVE_CONNECTION_BUFFER_BYTES_DEFAULT >= FRAME_HEADER_BYTES_MAX + FRAME_PAYLOAD_BYTES_MAX
);
const _: () = assert!(NATIVE_CONNECTION_BUFFER_BYTES_MIN <= NATIVE_CONNECTION_BUFFER_BYTES_DEFAULT);
const _: () = assert!(NATIVE_BUDGET_WAITERS_MAX >= 1);
const _: () = assert!(
    (NATIVE_BUDGET_WAITERS_MAX as u64 + 1) * QUIC_STREAM_RECEIVE_WINDOW_BYTES as u64
        <= QUIC_CONNECTION_RECEIVE_WINDOW_BYTES as u64
);
const _: () = assert!(NATIVE_CLOSE_WAIT_MS_MAX < NATIVE_DRAIN_WAIT_MS_MAX);
const _: () = assert!(NATIVE_PRODUCE_REORDER_WINDOW >= 1);
const _: () = assert!(NATIVE_PRODUCE_GAP_WAIT_MS_MAX < CLIENT_REQUEST_TIMEOUT_MS_DEFAULT);

/// Largest admin HTTP request head. Scrapers send a few hundred bytes; 8 KiB is generous and
/// bounds memory per admin connection.
pub const ADMIN_REQUEST_BYTES_MAX: usize = 8 << 10;

/// Default `ProducerConfig::batch_size`: a batch is closed once its records reach this size.
///
/// Kafka's `batch.size` default, so the producer behaves as users of Kafka expect; a batch
/// costs this much memory while it fills. Throughput runs raise it (256 KiB to 1 MiB batches
/// amortise per-request costs far better).
pub const PRODUCER_BATCH_BYTES_DEFAULT: usize = 16 << 10;

/// Default `ProducerConfig::linger_ms`: how long a batch may wait for more records.
///
/// Kafka 3.x's `linger.ms` is 5 ms: enough to batch a busy producer, invisible next to a
/// network round trip for a slow one.
pub const PRODUCER_LINGER_MS_DEFAULT: u64 = 5;

/// Default `ProducerConfig::buffer_bytes`: records held by a producer (accumulating and in
/// flight) before `send_and_forget` refuses and `ready` waits.
///
/// Kafka's `buffer.memory`: 32 MiB keeps 2k default batches in flight, far more than one
/// connection's round trip needs.
pub const PRODUCER_BUFFER_BYTES_DEFAULT: usize = 32 << 20;

/// Default `ProducerConfig::in_flight_max`: produce requests outstanding per partition.
///
/// Kafka's `max.in.flight.requests.per.connection` default: enough to hide a round trip
/// behind four others. Order holds whatever the count: the client numbers a partition's
/// requests per connection and the broker appends them in that order, failing the ones
/// behind a failed one so they are resent after it (net/PROTOCOL.md, "Produce ordering").
/// Each request carries every batch ready for the partition (up to `request_bytes_max`), so
/// more in flight mostly helps small, latency-bound producers.
pub const PRODUCER_IN_FLIGHT_PER_PARTITION_DEFAULT: usize = 5;

/// Default `ProducerConfig::request_bytes_max`: the largest batch the producer builds.
///
/// Kafka's `max.request.size` (1 MiB): larger records fail at `send` with a clear error
/// rather than at the broker. A topic's `max.message.bytes` may still be smaller.
pub const PRODUCER_REQUEST_BYTES_DEFAULT: usize = 1 << 20;

/// Default `ClientConfig::request_timeout`: how long one request may take before it fails
/// and is retried (Kafka's `request.timeout.ms`). Long-poll fetches get their wait on top.
pub const CLIENT_REQUEST_TIMEOUT_MS_DEFAULT: u64 = 30_000;

/// Default `ClientConfig::connect_timeout`: how long a QUIC handshake may take.
///
/// A dead UDP port gives no error (QUIC ignores ICMP), so without this a client would wait
/// for the full idle timeout before trying the next broker.
pub const CLIENT_CONNECT_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// Default `ClientConfig::retries`: attempts after the first for a request that failed with
/// a retriable error. With the backoff below they span about 8 s, enough for a broker restart
/// or a leader move, short enough that a dead cluster is reported quickly.
pub const CLIENT_RETRIES_DEFAULT: u32 = 10;

/// Default `ClientConfig::retry_backoff`: wait before the first retry; doubles per retry.
pub const CLIENT_RETRY_BACKOFF_MS_DEFAULT: u64 = 50;

/// Default `ClientConfig::retry_backoff_max`: the longest wait between two retries.
pub const CLIENT_RETRY_BACKOFF_MS_MAX_DEFAULT: u64 = 1_000;

/// Default `ConsumerConfig::fetch_wait_max`: how long the broker holds a fetch that found no
/// new record (Kafka's `fetch.max.wait.ms`). A tailing consumer sees a new record at once; an
/// idle one costs two requests a second per partition.
pub const CONSUMER_FETCH_WAIT_MS_DEFAULT: u32 = 500;

/// Default `ConsumerConfig::fetch_bytes_max`: soft byte limit of one fetch for one partition
/// (Kafka's `max.partition.fetch.bytes`). The broker returns at least one whole batch.
pub const CONSUMER_FETCH_BYTES_DEFAULT: u32 = 1 << 20;

/// Default `ConsumerConfig::buffer_bytes`: record bytes a consumer prefetches before its
/// fetchers pause. At most two more fetches per partition arrive after the bound is reached
/// (the answer being decoded and the fetch sent ahead of it).
pub const CONSUMER_BUFFER_BYTES_DEFAULT: usize = 64 << 20;

/// Default `ConsumerConfig::poll_records_max`: records one `poll` returns at most.
pub const CONSUMER_POLL_RECORDS_DEFAULT: usize = 10_000;

/// Default `GroupConsumerConfig::session_timeout`: a group member silent this long loses its
/// partitions to the others. Kafka's default is 45 s; 10 s moves a crashed member's
/// partitions sooner and is well above the broker's smallest allowed (6 s) and the longest
/// heartbeat interval (5 s, a third of the session at most).
pub const GROUP_SESSION_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// Default `GroupConsumerConfig::auto_commit_interval`, as Kafka's `auto.commit.interval.ms`:
/// how many records a crashed member's successor reads again is bounded by what the member
/// processed in this time.
pub const GROUP_AUTO_COMMIT_INTERVAL_MS_DEFAULT: u64 = 5_000;

/// Largest Kafka request frame accepted, as Kafka's `socket.request.max.bytes` default
/// (100 MiB). A larger declared size closes the connection before anything is allocated.
/// Memory per connection grows with the bytes actually received, never with the declared size.
pub const KAFKA_REQUEST_BYTES_MAX: usize = 100 * 1024 * 1024;

/// Smallest well-formed request frame: api key (2), api version (2), correlation id (4).
pub const KAFKA_REQUEST_BYTES_MIN: usize = 8;

/// A request frame up to this size is received into one buffer of its size, allocated when its
/// length prefix arrives: Kafka producers' default `max.request.size` is 1 MiB, so a produce
/// request is neither moved nor zeroed twice on the way in. A larger frame grows by doubling
/// from here, so the buffer never runs ahead of the bytes that have arrived by more than this
/// (a client declaring 100 MiB and sending nothing costs 1 MiB).
pub const KAFKA_READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Receive buffer of a Kafka connection. A request's 4-byte length and a small request's body
/// arrive with one `recv` into it (several pipelined small requests too) instead of one call
/// each for the length, the body and the empty socket; a read of a body at least this large
/// goes straight into the frame, so a large produce request is copied from it at most once,
/// for the bytes that came with its length.
pub const KAFKA_RECV_BUFFER_BYTES: usize = 16 * 1024;

/// Pieces of a fetch response up to this size are copied into shared chunks when the response
/// is spliced (`kafka::splice`); larger batches are written from their own buffers. Bounds the
/// write calls of a response of many tiny batches.
pub const SPLICE_COPY_BYTES_MAX: usize = 16 * 1024;

/// Requests read from one connection but not yet answered. Kafka answers in order; this bounds
/// the response queue (and the fetches long-polling concurrently) per connection.
pub const KAFKA_INFLIGHT_REQUESTS_MAX: usize = 16;

/// Longest a fetch may long-poll, whatever `max_wait_ms` the client asks for. Kafka clients
/// default to 500 ms; a cap keeps a misbehaving client from parking work for hours.
pub const KAFKA_FETCH_WAIT_MS_MAX: u64 = 30_000;

/// Most record bytes one Kafka fetch response carries, whatever `max_bytes` the client asks
/// for: Kafka's `fetch.max.bytes` broker default (55 MiB). A fetch's reads are planned against
/// it, so a request listing many partitions (or one partition many times) cannot make the
/// broker read more than this plus one batch per read in flight.
pub const KAFKA_FETCH_RESPONSE_BYTES_MAX: usize = 55 * 1024 * 1024;

/// Partition reads one Kafka fetch runs at once. Each returns at least one batch, so this
/// bounds what a fetch holds beyond [`KAFKA_FETCH_RESPONSE_BYTES_MAX`].
pub const KAFKA_FETCH_READS_IN_FLIGHT_MAX: usize = 64;

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
const _: () = assert!(QUIC_MAX_UDP_PAYLOAD_BYTES as usize <= UDP_SEND_BYTES_MAX);
const _: () = assert!(UDP_GRO_BYTES_MAX >= QUIC_MAX_UDP_PAYLOAD_BYTES as usize);
const _: () = assert!(UDP_RECV_BUFFER_BYTES <= i32::MAX as usize);
const _: () = assert!(UDP_SEND_BUFFER_BYTES <= i32::MAX as usize);
const _: () = assert!(PRODUCER_BATCH_BYTES_DEFAULT <= PRODUCER_REQUEST_BYTES_DEFAULT);
const _: () = assert!(PRODUCER_REQUEST_BYTES_DEFAULT <= BATCH_BYTES_MAX);
const _: () = assert!(PRODUCER_BUFFER_BYTES_DEFAULT >= PRODUCER_REQUEST_BYTES_DEFAULT);
const _: () =
    assert!(PRODUCER_IN_FLIGHT_PER_PARTITION_DEFAULT as u64 <= NATIVE_PRODUCE_REORDER_WINDOW);
const _: () = assert!(CLIENT_RETRY_BACKOFF_MS_DEFAULT <= CLIENT_RETRY_BACKOFF_MS_MAX_DEFAULT);
const _: () = assert!(CONSUMER_FETCH_BYTES_DEFAULT as usize <= FRAME_PAYLOAD_BYTES_MAX);
