//! Limits of the network layer. Units in names; each says why it has its value.

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
