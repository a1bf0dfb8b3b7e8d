//! Errors of the client library, one enum per operation family.
//!
//! [`ClientError`] is what a request to the cluster can fail with (transport, protocol, the
//! server's own error code and message, unknown topics). [`ProduceError`] and
//! [`ConsumerError`] wrap it with the partition the failure concerns. Every error says whether
//! retrying can help ([`ClientError::is_retriable`]); the client has already retried those a
//! bounded number of times before returning one.
//!
//! Must not depend on: the runtime or storage internals.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_engine::batch::{BatchError, BuildError};

use crate::native::frame::{EncodeError, FrameError};
use crate::native::messages::ErrorCode;
use crate::quic::tls::TlsError;
use crate::quic::{ConnectError, EndpointError};

/// Why a request to the cluster failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The client configuration is unusable.
    #[error("invalid client configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// A broker address could not be resolved.
    #[error("cannot resolve broker address {address}: {reason}")]
    Resolve {
        /// The address as given.
        address: String,
        /// What the resolver said.
        reason: String,
    },
    /// The TLS configuration could not be built (unreadable `--ca`, say).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The client's UDP socket could not be bound.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The connection could not be established, or was lost.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A request stream failed without the connection failing (reset by the broker).
    #[error("request to broker {endpoint} failed: {reason}")]
    Stream {
        /// The broker shard endpoint.
        endpoint: SocketAddr,
        /// What happened to the stream.
        reason: String,
    },
    /// The broker sent something that is not a valid answer frame.
    #[error("invalid answer from broker {endpoint}: {source}")]
    BadFrame {
        /// The broker shard endpoint.
        endpoint: SocketAddr,
        /// What was wrong with it.
        source: FrameError,
    },
    /// The broker answered with a message of the wrong kind.
    #[error("the broker answered a {request} request with {answer}")]
    UnexpectedAnswer {
        /// The request kind.
        request: &'static str,
        /// The answer kind.
        answer: String,
    },
    /// The request could not be encoded (a payload over the frame limit).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The broker refused the request.
    #[error("{message} ({code:?})")]
    Server {
        /// The stable error code.
        code: ErrorCode,
        /// The broker's explanation.
        message: String,
    },
    /// No answer within the request timeout.
    #[error("broker {endpoint} did not answer within {after:?}")]
    Timeout {
        /// The broker shard endpoint.
        endpoint: SocketAddr,
        /// The timeout.
        after: Duration,
    },
    /// No bootstrap address answered.
    #[error("no broker answered at {addresses}: {last}")]
    NoBroker {
        /// The addresses tried, comma-separated.
        addresses: String,
        /// The last failure.
        last: Box<ClientError>,
    },
    /// The topic does not exist in the cluster's metadata.
    #[error("unknown topic {topic}")]
    UnknownTopic {
        /// The topic.
        topic: String,
    },
    /// The topic exists but has no such partition.
    #[error("topic {topic} has no partition {partition} (it has {partitions})")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: i32,
        /// How many partitions the topic has.
        partitions: i32,
    },
    /// The metadata names a broker or shard it does not describe: in a cluster, a partition
    /// without a leader (`broker` -1) during an election, or a broker not listed yet.
    /// Retriable: newer metadata names the endpoint (Kafka's LEADER_NOT_AVAILABLE).
    #[error("metadata names no endpoint for broker {broker} shard {shard}")]
    NoEndpoint {
        /// The broker id.
        broker: i32,
        /// The shard on that broker.
        shard: u16,
    },
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

impl ClientError {
    /// The server's error code, when the broker refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            ClientError::NoBroker { last, .. } => last.code(),
            _ => None,
        }
    }

    /// True when the same request may succeed later: the broker is overloaded, shutting down
    /// or no longer owns the partition (refresh metadata first), or the connection or stream
    /// failed or timed out. A retried produce whose first attempt timed out may be appended
    /// twice (there is no idempotent producer yet).
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => code.is_retriable(),
            ClientError::Stream { .. } | ClientError::Timeout { .. } => true,
            ClientError::Connect(ConnectError::Connection { source, .. }) => !matches!(
                source,
                quinn::ConnectionError::VersionMismatch
                    | quinn::ConnectionError::TransportError(_)
                    | quinn::ConnectionError::LocallyClosed
            ),
            ClientError::NoBroker { last, .. } => last.is_retriable(),
            ClientError::NoEndpoint { .. } => true,
            _ => false,
        }
    }

    /// True when the failure concerns the connection as a whole, so it should be dropped
    /// from the pool and a new one opened on the next request.
    pub(crate) fn is_connection_failure(&self) -> bool {
        matches!(
            self,
            ClientError::Connect(_) | ClientError::Timeout { .. } | ClientError::BadFrame { .. }
        )
    }
}

/// Why a record was not produced.
///
/// Cloneable because one failed batch fails every record in it: the cluster error is shared.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// The record is larger than the producer's `request_bytes_max`.
    #[error(
        "record of {bytes} bytes exceeds the producer's request limit of {limit} bytes \
         (ProducerConfig::request_bytes_max)"
    )]
    RecordTooLarge {
        /// Encoded size of the record.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// `send_and_forget` found the buffer full; await `Producer::ready` first.
    #[error("the producer's buffer of {limit} bytes is full")]
    BufferFull {
        /// The buffer bound.
        limit: usize,
    },
    /// The record's batch could not be built (compression failed).
    #[error("cannot build a batch for {topic}-{partition}: {source}")]
    Build {
        /// The topic.
        topic: Arc<str>,
        /// The partition.
        partition: i32,
        /// What the builder said.
        source: BuildError,
    },
    /// The topic or the record's explicit partition does not exist, or metadata could not be
    /// read.
    #[error("cannot route a record to topic {topic}: {source}")]
    Route {
        /// The topic.
        topic: Arc<str>,
        /// Why.
        source: Arc<ClientError>,
    },
    /// The broker did not acknowledge the batch, after the retries the producer allows.
    #[error("cannot produce to {topic}-{partition}: {source}")]
    Send {
        /// The topic.
        topic: Arc<str>,
        /// The partition.
        partition: i32,
        /// The last failure.
        source: Arc<ClientError>,
    },
    /// The producer was dropped before the record was acknowledged.
    #[error("the producer was closed before the record was acknowledged")]
    Closed,
    /// Some records given to `send_and_forget` failed (reported by `flush`).
    #[error("{count} records were not delivered; first failure: {first}")]
    Undelivered {
        /// How many records failed since the previous flush.
        count: u64,
        /// The first of those failures.
        first: Box<ProduceError>,
    },
}

impl ProduceError {
    /// The cluster error behind this failure, if any.
    pub fn client_error(&self) -> Option<&ClientError> {
        match self {
            ProduceError::Route { source, .. } | ProduceError::Send { source, .. } => Some(source),
            ProduceError::Undelivered { first, .. } => first.client_error(),
            _ => None,
        }
    }

    /// The server's error code behind this failure, if the broker refused the batch.
    pub fn code(&self) -> Option<ErrorCode> {
        self.client_error().and_then(ClientError::code)
    }
}

/// Why a consumer operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// The partition is not assigned to this consumer.
    #[error("{topic}-{partition} is not assigned to this consumer")]
    NotAssigned {
        /// The topic.
        topic: Arc<str>,
        /// The partition.
        partition: i32,
    },
    /// Fetching or looking up an offset failed (after the client's retries).
    #[error("cannot fetch {topic}-{partition}: {source}")]
    Fetch {
        /// The topic.
        topic: Arc<str>,
        /// The partition.
        partition: i32,
        /// The cluster error.
        source: ClientError,
    },
    /// The broker returned a batch that does not decode.
    #[error("corrupt batch from {topic}-{partition} at offset {offset}: {source}")]
    Corrupt {
        /// The topic.
        topic: Arc<str>,
        /// The partition.
        partition: i32,
        /// The fetch offset.
        offset: i64,
        /// What the decoder said.
        source: BatchError,
    },
}

impl ConsumerError {
    /// The cluster error behind this failure, if any.
    pub fn client_error(&self) -> Option<&ClientError> {
        match self {
            ConsumerError::Fetch { source, .. } => Some(source),
            _ => None,
        }
    }

    /// The server's error code behind this failure, if the broker refused a request.
    pub fn code(&self) -> Option<ErrorCode> {
        self.client_error().and_then(ClientError::code)
    }
}

/// Why a [`GroupConsumer`](super::GroupConsumer) operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupConsumerError {
    /// The configuration is unusable.
    #[error("invalid group consumer configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// A group request (heartbeat, commit, offset fetch) failed for good.
    #[error("group {group}: {source}")]
    Group {
        /// The group.
        group: String,
        /// The failure.
        source: ClientError,
    },
    /// The coordinator refused to commit a partition's offset.
    #[error("group {group}: cannot commit {topic}-{partition}: {code:?}")]
    Commit {
        /// The group.
        group: String,
        /// The topic.
        topic: Arc<str>,
        /// The partition.
        partition: i32,
        /// Why.
        code: ErrorCode,
    },
    /// Reading an owned partition failed for good.
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    /// The consumer was closed.
    #[error("the group consumer is closed")]
    Closed,
}

impl GroupConsumerError {
    /// The broker's error code, if the broker refused something.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            GroupConsumerError::Group { source, .. } => source.code(),
            GroupConsumerError::Commit { code, .. } => Some(*code),
            GroupConsumerError::Consumer(error) => error.code(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: retriability follows the server's code table and the transport's failure kinds.
    // Method: classify one error of each kind.
    #[test]
    fn retriable_errors() {
        let server = |code| ClientError::Server {
            code,
            message: "m".into(),
        };
        assert!(server(ErrorCode::NotOwner).is_retriable());
        assert!(server(ErrorCode::Overloaded).is_retriable());
        assert!(!server(ErrorCode::MessageTooLarge).is_retriable());
        assert!(!server(ErrorCode::UnknownTopicOrPartition).is_retriable());
        let endpoint = "127.0.0.1:1".parse().expect("literal");
        assert!(
            ClientError::Timeout {
                endpoint,
                after: Duration::from_secs(1)
            }
            .is_retriable()
        );
        let lost = ClientError::Connect(ConnectError::Connection {
            broker: endpoint,
            source: quinn::ConnectionError::TimedOut,
        });
        assert!(lost.is_retriable());
        assert!(lost.is_connection_failure());
        let untrusted = ClientError::Connect(ConnectError::UntrustedBroker {
            broker: endpoint,
            reason: "bad".into(),
        });
        assert!(!untrusted.is_retriable());
        assert!(!ClientError::UnknownTopic { topic: "t".into() }.is_retriable());
        let produce = ProduceError::Send {
            topic: "t".into(),
            partition: 0,
            source: Arc::new(server(ErrorCode::MessageTooLarge)),
        };
        assert_eq!(produce.code(), Some(ErrorCode::MessageTooLarge));
        assert_eq!(
            produce.to_string(),
            "cannot produce to t-0: m (MessageTooLarge)"
        );
    }
}
