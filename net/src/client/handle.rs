//! [`Client`]: the shard-local handle on a cluster that producers, consumers and admin calls
//! share. It bootstraps from any broker that answers, keeps the cluster metadata, opens one
//! connection per broker shard endpoint on first use, and retries retriable failures with
//! bounded exponential backoff after refreshing the metadata.
//!
//! Main items: [`ClientConfig`], [`Client`], [`Acks`], [`Produced`], [`Fetched`].
//!
//! Must not depend on: storage internals; the runtime only through `sluice_engine::rt`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use sluice_engine::rt;

use super::error::ClientError;
use super::metadata::ClusterMetadata;
use super::pool::{Pool, Target, WriteOrder, resolve};
use crate::limits::{
    CLIENT_CONNECT_TIMEOUT_MS_DEFAULT, CLIENT_REQUEST_TIMEOUT_MS_DEFAULT, CLIENT_RETRIES_DEFAULT,
    CLIENT_RETRY_BACKOFF_MS_DEFAULT, CLIENT_RETRY_BACKOFF_MS_MAX_DEFAULT,
};
use crate::native::frame::Frame;
use crate::native::messages::{ErrorCode, Request, Response};
use crate::quic::tls::ClientTlsOptions;

/// The broker address used when none is given: a local broker's shard-0 QUIC endpoint.
pub const DEFAULT_BROKER: &str = "127.0.0.1:9192";

/// How to reach a cluster.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Bootstrap addresses, `host:port`: any broker's shard-0 QUIC endpoint. The first that
    /// answers describes the whole cluster.
    pub brokers: Vec<String>,
    /// TLS: `ca` to verify brokers against (without it, only loopback brokers are trusted),
    /// and a client certificate for brokers that require mutual TLS.
    pub tls: ClientTlsOptions,
    /// The name every broker certificate must carry; default: the host of each address.
    pub tls_server_name: Option<String>,
    /// How long one request may take (a long-poll fetch gets its wait on top).
    pub request_timeout: Duration,
    /// How long a QUIC handshake may take.
    pub connect_timeout: Duration,
    /// Retries after the first attempt for retriable failures.
    pub retries: u32,
    /// Wait before the first retry; doubles per retry up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    /// Longest wait between retries.
    pub retry_backoff_max: Duration,
    /// Let lookups of a topic create it when the broker auto-creates topics (Kafka's
    /// `allow.auto.create.topics`): a topic is looked up by name, which such a broker takes as
    /// a request to create it. When false, topics are looked up in the list of all topics,
    /// and an unknown topic is an error.
    pub auto_create_topics: bool,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            brokers: vec![DEFAULT_BROKER.to_owned()],
            tls: ClientTlsOptions::default(),
            tls_server_name: None,
            request_timeout: Duration::from_millis(CLIENT_REQUEST_TIMEOUT_MS_DEFAULT),
            connect_timeout: Duration::from_millis(CLIENT_CONNECT_TIMEOUT_MS_DEFAULT),
            retries: CLIENT_RETRIES_DEFAULT,
            retry_backoff: Duration::from_millis(CLIENT_RETRY_BACKOFF_MS_DEFAULT),
            retry_backoff_max: Duration::from_millis(CLIENT_RETRY_BACKOFF_MS_MAX_DEFAULT),
            auto_create_topics: true,
        }
    }
}

impl ClientConfig {
    /// Defaults with these bootstrap addresses.
    pub fn new<S: Into<String>>(brokers: impl IntoIterator<Item = S>) -> ClientConfig {
        ClientConfig {
            brokers: brokers.into_iter().map(Into::into).collect(),
            ..ClientConfig::default()
        }
    }

    fn validate(&self) -> Result<(), ClientError> {
        let invalid = |reason: &str| {
            Err(ClientError::InvalidConfig {
                reason: reason.to_owned(),
            })
        };
        if self.brokers.is_empty() {
            return invalid("no broker address given");
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return invalid("timeouts must be positive");
        }
        if self.retry_backoff > self.retry_backoff_max {
            return invalid("retry_backoff exceeds retry_backoff_max");
        }
        Ok(())
    }
}

/// Acknowledgement level of a produce (Kafka's `acks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Acks {
    /// 0: the producer does not wait for the broker; offsets are unknown (-1).
    None,
    /// 1: the leader has written the batch.
    Leader,
    /// all: every in-sync replica has it, and it is on disk.
    #[default]
    All,
}

impl Acks {
    /// The value on the wire: 0, 1 or -1.
    pub fn wire(self) -> i8 {
        match self {
            Acks::None => 0,
            Acks::Leader => 1,
            Acks::All => -1,
        }
    }

    /// Parses `0`, `1`, `all` or `-1`.
    pub fn from_name(name: &str) -> Option<Acks> {
        match name {
            "0" => Some(Acks::None),
            "1" => Some(Acks::Leader),
            "all" | "-1" => Some(Acks::All),
            _ => None,
        }
    }
}

/// A batch the broker appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Produced {
    /// Offset of the first record (-1 with acks=0).
    pub base_offset: i64,
    /// Offset of the last record (-1 with acks=0).
    pub last_offset: i64,
    /// The broker's append time when the topic stamps log-append time, else -1.
    pub log_append_time: i64,
}

/// What one fetch returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The partition's high watermark: offsets below it are readable.
    pub high_watermark: i64,
    /// The partition's log start offset.
    pub log_start_offset: i64,
    /// Whole record batches, back to back, exactly as stored (the first may start before
    /// the offset asked for).
    pub batches: Bytes,
}

/// A shard-local handle on a cluster; cheap to clone (the clones share connections and
/// metadata). `!Send`: use it on the executor that created it.
///
/// See the [module docs](crate::client) for examples.
#[derive(Clone)]
pub struct Client {
    pub(super) inner: Rc<Inner>,
}

pub(super) struct Inner {
    pub(super) config: ClientConfig,
    pool: Pool,
    /// Replaced whole on every refresh; never borrowed across an `.await`.
    metadata: RefCell<Rc<ClusterMetadata>>,
    /// Resolved `host:port` strings.
    targets: RefCell<HashMap<String, Target>>,
    /// The metadata/admin address that answered last; tried first next time.
    control: RefCell<Option<String>>,
    /// Addresses whose last call failed on the connection (refused, timed out), and when:
    /// metadata and admin requests try them last for `SUSPECT_FOR`, so a dead broker does
    /// not cost a request timeout on every refresh. Never borrowed across an `.await`.
    suspects: RefCell<HashMap<String, std::time::Instant>>,
    closed: Cell<bool>,
}

/// How long an address that failed on the connection is tried last.
const SUSPECT_FOR: Duration = Duration::from_secs(10);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("brokers", &self.inner.config.brokers)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to the first bootstrap address that answers and reads the cluster's metadata.
    ///
    /// Each address is tried once, in order; a broker that does not answer costs up to
    /// `connect_timeout`.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        config.validate()?;
        let pool = Pool::new(
            config.tls.clone(),
            config.tls_server_name.clone(),
            config.connect_timeout,
        );
        let client = Client {
            inner: Rc::new(Inner {
                config,
                pool,
                metadata: RefCell::new(Rc::new(ClusterMetadata::default())),
                targets: RefCell::new(HashMap::new()),
                control: RefCell::new(None),
                suspects: RefCell::new(HashMap::new()),
                closed: Cell::new(false),
            }),
        };
        let request = Request::Metadata { topics: None };
        let frame = client.control_round(&request).await?;
        client.store_metadata(frame, None)?;
        Ok(client)
    }

    /// The configuration this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The metadata as last refreshed (no request).
    pub fn metadata(&self) -> Rc<ClusterMetadata> {
        Rc::clone(&self.inner.metadata.borrow())
    }

    /// Reads the metadata of every topic from the cluster.
    pub async fn refresh_metadata(&self) -> Result<Rc<ClusterMetadata>, ClientError> {
        let frame = self
            .control_request(&Request::Metadata { topics: None })
            .await?;
        self.store_metadata(frame, None)
    }

    /// Reads the metadata of `topics` from the cluster, keeping what is known of others.
    ///
    /// With `auto_create_topics`, the topics are asked for by name (a broker that
    /// auto-creates topics creates missing ones) and a topic that still does not exist is
    /// [`ClientError::UnknownTopic`]; without, every topic is read and missing ones are
    /// simply absent from the result.
    pub async fn refresh_topics(
        &self,
        topics: &[String],
    ) -> Result<Rc<ClusterMetadata>, ClientError> {
        if !self.inner.config.auto_create_topics {
            return self.refresh_metadata().await;
        }
        let request = Request::Metadata {
            topics: Some(topics.to_vec()),
        };
        match self.control_request(&request).await {
            Ok(frame) => self.store_metadata(frame, Some(topics)),
            Err(error) if error.code() == Some(ErrorCode::UnknownTopicOrPartition) => {
                for topic in topics {
                    self.forget_topic(topic);
                }
                match topics {
                    [topic] => Err(ClientError::UnknownTopic {
                        topic: topic.clone(),
                    }),
                    _ => Err(error),
                }
            }
            Err(error) => Err(error),
        }
    }

    /// The partition count of `topic`, from the metadata, refreshing it if the topic is not
    /// known yet.
    pub async fn partition_count(&self, topic: &str) -> Result<i32, ClientError> {
        if let Some(count) = self.metadata().partition_count(topic) {
            return Ok(count);
        }
        self.refresh_topics(&[topic.to_owned()])
            .await?
            .partition_count(topic)
            .ok_or_else(|| ClientError::UnknownTopic {
                topic: topic.to_owned(),
            })
    }

    /// Closes every connection, after the bytes of acks=0 produce requests have reached
    /// their brokers (waiting at most `request_timeout`). Requests made afterwards fail with
    /// [`ClientError::Closed`]. Dropping the last handle instead may lose acks=0 data still
    /// in flight.
    pub async fn close(&self) {
        self.inner.closed.set(true);
        self.inner
            .pool
            .close(self.inner.config.request_timeout)
            .await;
    }

    fn store_metadata(
        &self,
        frame: Frame<Response>,
        asked: Option<&[String]>,
    ) -> Result<Rc<ClusterMetadata>, ClientError> {
        let Response::Metadata {
            cluster_id,
            brokers,
            topics,
        } = frame.header
        else {
            return Err(unexpected("metadata", &frame.header));
        };
        let metadata = match asked {
            None => ClusterMetadata::from_answer(cluster_id, brokers, topics),
            Some(asked) => self.metadata().merged(cluster_id, brokers, asked, topics),
        };
        let metadata = Rc::new(metadata);
        *self.inner.metadata.borrow_mut() = Rc::clone(&metadata);
        Ok(metadata)
    }

    /// Forgets what is known of `topic`, so the next use reads it again.
    pub(super) fn forget_topic(&self, topic: &str) {
        let current = self.metadata();
        if current.topics.contains_key(topic) {
            let mut updated = (*current).clone();
            updated.topics.remove(topic);
            *self.inner.metadata.borrow_mut() = Rc::new(updated);
        }
    }

    async fn target(&self, address: &str) -> Result<Target, ClientError> {
        if let Some(target) = self.inner.targets.borrow().get(address) {
            return Ok(target.clone());
        }
        let target = resolve(address).await?;
        self.inner
            .targets
            .borrow_mut()
            .insert(address.to_owned(), target.clone());
        Ok(target)
    }

    /// One request to `address`, once.
    async fn call(
        &self,
        address: &str,
        request: &Request,
        payload: Bytes,
        timeout: Duration,
        order: WriteOrder,
    ) -> Result<Frame<Response>, ClientError> {
        if self.inner.closed.get() {
            return Err(ClientError::Closed);
        }
        let target = self.target(address).await?;
        let result = self
            .inner
            .pool
            .call(&target, request, payload, timeout, order)
            .await;
        match &result {
            Err(error) if error.is_connection_failure() => {
                let now = rt::clock::now();
                self.inner
                    .suspects
                    .borrow_mut()
                    .insert(address.to_owned(), now);
                let mut control = self.inner.control.borrow_mut();
                if control.as_deref() == Some(address) {
                    *control = None;
                }
            }
            Ok(_) => {
                self.inner.suspects.borrow_mut().remove(address);
            }
            Err(_) => {}
        }
        result
    }

    /// The wait before retry number `retry` (0-based).
    pub(super) fn backoff(&self, retry: u32) -> Duration {
        let config = &self.inner.config;
        let factor = 1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX);
        config
            .retry_backoff
            .saturating_mul(factor)
            .min(config.retry_backoff_max)
    }

    /// Addresses that serve metadata and admin requests, most promising first: the one that
    /// answered last, every broker's shard 0, then the bootstrap list; those that failed on
    /// the connection within `SUSPECT_FOR` last.
    fn control_addresses(&self) -> Vec<String> {
        let mut addresses: Vec<String> = Vec::new();
        let mut add = |address: &str| {
            if !addresses.iter().any(|a| a == address) {
                addresses.push(address.to_owned());
            }
        };
        if let Some(address) = self.inner.control.borrow().as_deref() {
            add(address);
        }
        for address in self.metadata().control_endpoints() {
            add(address);
        }
        for address in &self.inner.config.brokers {
            add(address);
        }
        // Addresses that recently failed on the connection go last (stable: the order above
        // stays among the rest).
        let now = rt::clock::now();
        let suspects = self.inner.suspects.borrow();
        let suspect = |address: &String| {
            suspects
                .get(address)
                .is_some_and(|since| now.duration_since(*since) < SUSPECT_FOR)
        };
        addresses.sort_by_key(suspect);
        addresses
    }

    /// Tries `request` once on each control address until one answers. A broker's refusal
    /// that retrying cannot fix ends the round at once.
    async fn control_round(&self, request: &Request) -> Result<Frame<Response>, ClientError> {
        let addresses = self.control_addresses();
        let timeout = self.inner.config.request_timeout;
        let mut last = None;
        for address in &addresses {
            let order = WriteOrder::none();
            match self
                .call(address, request, Bytes::new(), timeout, order)
                .await
            {
                Ok(frame) => {
                    *self.inner.control.borrow_mut() = Some(address.clone());
                    return Ok(frame);
                }
                Err(error) if error.is_retriable() => {
                    tracing::debug!(%address, %error, "control request failed; trying the next");
                    last = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        let last = last.expect("at least one address: validated config has a broker");
        if matches!(last, ClientError::Server { .. }) {
            return Err(last);
        }
        Err(ClientError::NoBroker {
            addresses: addresses.join(","),
            last: Box::new(last),
        })
    }

    /// A metadata or admin request, retried with backoff over rounds of control addresses.
    pub(super) async fn control_request(
        &self,
        request: &Request,
    ) -> Result<Frame<Response>, ClientError> {
        let mut retry = 0;
        loop {
            match self.control_round(request).await {
                Err(error) if error.is_retriable() && retry < self.inner.config.retries => {
                    rt::sleep(self.backoff(retry)).await;
                    retry += 1;
                }
                result => return result,
            }
        }
    }

    /// One request to the shard that owns `topic`/`partition`, without retries. Unknown
    /// topics and partitions are looked up once more before failing.
    pub(super) async fn partition_call(
        &self,
        topic: &str,
        partition: i32,
        request: &Request,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Frame<Response>, ClientError> {
        let address = self.leader_address(topic, partition).await?;
        self.call(&address, request, payload, timeout, WriteOrder::none())
            .await
    }

    /// A request to the shard that owns `topic`/`partition`, retried with backoff after a
    /// metadata refresh while the failure is retriable.
    pub(super) async fn partition_request(
        &self,
        topic: &str,
        partition: i32,
        request: &Request,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Frame<Response>, ClientError> {
        let mut retry = 0;
        loop {
            let result = self
                .partition_call(topic, partition, request, payload.clone(), timeout)
                .await;
            match result {
                Err(error) if retry < self.inner.config.retries => {
                    if !self.worth_retrying(topic, partition, &error).await {
                        return Err(error);
                    }
                    tracing::debug!(topic, partition, %error, retry, "retrying");
                    rt::sleep(self.backoff(retry)).await;
                    retry += 1;
                }
                result => return result,
            }
        }
    }

    /// Decides whether a failed partition request should be retried, refreshing the topic's
    /// metadata first (a moved partition is the usual reason). A partition the broker does
    /// not know is retried only while the fresh metadata still lists it: that is a shard that
    /// has not caught up with a just-created topic.
    pub(super) async fn worth_retrying(
        &self,
        topic: &str,
        partition: i32,
        error: &ClientError,
    ) -> bool {
        let unknown_here = error.code() == Some(ErrorCode::UnknownTopicOrPartition);
        if !error.is_retriable() && !unknown_here {
            return false;
        }
        match self.refresh_topics(&[topic.to_owned()]).await {
            Ok(metadata) => !unknown_here || metadata.partition(topic, partition).is_ok(),
            // The refresh is retried with the request.
            Err(refresh) => refresh.is_retriable(),
        }
    }

    /// The `host:port` of the shard endpoint owning the partition, refreshing the topic's
    /// metadata once if it is not known.
    async fn leader_address(&self, topic: &str, partition: i32) -> Result<String, ClientError> {
        if let Ok(address) = self.metadata().leader_endpoint(topic, partition) {
            return Ok(address.to_owned());
        }
        let metadata = self.refresh_topics(&[topic.to_owned()]).await?;
        metadata
            .leader_endpoint(topic, partition)
            .map(str::to_owned)
    }

    /// Appends `batches` (record batches, back to back) to a partition, retrying retriable
    /// failures. With [`Acks::None`] the request is only written, and the offsets are -1.
    ///
    /// A retry after a timeout may append the batch twice. The [`Producer`](super::Producer)
    /// batches records and keeps a partition's batches in order; use this for batches built
    /// by hand.
    pub async fn produce_batches(
        &self,
        topic: &str,
        partition: i32,
        acks: Acks,
        batches: Bytes,
    ) -> Result<Produced, ClientError> {
        let mut retry = 0;
        loop {
            let order = WriteOrder::none();
            match self
                .produce_ordered(topic, partition, acks, batches.clone(), order)
                .await
            {
                Err(error) if retry < self.inner.config.retries => {
                    if !self.worth_retrying(topic, partition, &error).await {
                        return Err(error);
                    }
                    rt::sleep(self.backoff(retry)).await;
                    retry += 1;
                }
                result => return result,
            }
        }
    }

    /// One produce attempt, written after the previous link of `order` (the producer does
    /// its own retries, in partition order).
    pub(super) async fn produce_ordered(
        &self,
        topic: &str,
        partition: i32,
        acks: Acks,
        batches: Bytes,
        order: WriteOrder,
    ) -> Result<Produced, ClientError> {
        if self.inner.closed.get() {
            return Err(ClientError::Closed);
        }
        let request = Request::Produce {
            topic: topic.to_owned(),
            partition,
            acks: acks.wire(),
            // The pool numbers it on the connection it is written to.
            sequence: None,
        };
        let timeout = self.inner.config.request_timeout;
        let address = self.leader_address(topic, partition).await?;
        let target = self.target(&address).await?;
        if acks == Acks::None {
            self.inner
                .pool
                .send_only(&target, &request, batches, timeout, order)
                .await?;
            return Ok(Produced {
                base_offset: -1,
                last_offset: -1,
                log_append_time: -1,
            });
        }
        let frame = self
            .inner
            .pool
            .call(&target, &request, batches, timeout, order)
            .await?;
        match frame.header {
            Response::Produced {
                base_offset,
                last_offset,
                log_append_time,
            } => Ok(Produced {
                base_offset,
                last_offset,
                log_append_time,
            }),
            other => Err(unexpected("produce", &other)),
        }
    }

    /// Reads record batches from `offset`, waiting up to `wait` on the broker when there is
    /// nothing new. `bytes_max` is soft: at least one whole batch comes back when one exists.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        bytes_max: u32,
        wait: Duration,
    ) -> Result<Fetched, ClientError> {
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let request = Request::Fetch {
            topic: topic.to_owned(),
            partition,
            offset,
            max_bytes: bytes_max,
            max_wait_ms: wait_ms,
        };
        let timeout = self.inner.config.request_timeout + wait;
        let frame = self
            .partition_request(topic, partition, &request, Bytes::new(), timeout)
            .await?;
        match frame.header {
            Response::Fetched {
                high_watermark,
                log_start_offset,
            } => Ok(Fetched {
                high_watermark,
                log_start_offset,
                batches: frame.payload,
            }),
            other => Err(unexpected("fetch", &other)),
        }
    }
}

/// The error for an answer of the wrong kind.
pub(super) fn unexpected(request: &'static str, answer: &Response) -> ClientError {
    let answer = match answer {
        Response::Error { .. } => "an error",
        Response::Metadata { .. } => "metadata",
        Response::Produced { .. } => "a produce acknowledgement",
        Response::Fetched { .. } => "fetched batches",
        Response::Offset { .. } => "an offset",
        Response::Topic { .. } => "a topic description",
        Response::Done { .. } => "a bare acknowledgement",
        Response::GroupHeartbeat { .. } => "a group heartbeat answer",
        Response::Committed { .. } => "commit results",
        Response::Offsets { .. } => "committed offsets",
        Response::Groups { .. } => "a group listing",
        Response::Group { .. } => "a group description",
    };
    ClientError::UnexpectedAnswer {
        request,
        answer: answer.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the backoff doubles from its start and stops at its cap, and bad configurations
    // are refused before any network activity.
    #[test]
    fn backoff_and_validation() {
        let config = ClientConfig {
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_millis(300),
            ..ClientConfig::default()
        };
        config.validate().expect("valid");
        let client = Client {
            inner: Rc::new(Inner {
                pool: Pool::new(ClientTlsOptions::default(), None, config.connect_timeout),
                config,
                metadata: RefCell::new(Rc::new(ClusterMetadata::default())),
                targets: RefCell::new(HashMap::new()),
                control: RefCell::new(None),
                suspects: RefCell::new(HashMap::new()),
                closed: Cell::new(false),
            }),
        };
        let waits: Vec<u128> = (0..5).map(|r| client.backoff(r).as_millis()).collect();
        assert_eq!(waits, vec![50, 100, 200, 300, 300]);
        assert_eq!(client.backoff(u32::MAX).as_millis(), 300);
        let empty = ClientConfig::new(Vec::<String>::new());
        assert!(matches!(
            empty.validate(),
            Err(ClientError::InvalidConfig { .. })
        ));
        assert_eq!(Acks::from_name("all"), Some(Acks::All));
        assert_eq!(Acks::from_name("2"), None);
        assert_eq!(Acks::Leader.wire(), 1);
    }
}
