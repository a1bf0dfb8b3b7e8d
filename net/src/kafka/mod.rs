//! The Kafka wire protocol listener: existing Kafka clients and tools talk to Sluice unchanged.
//!
//! Every shard runs [`serve_kafka`] on the same `--kafka-listen` address; the listener socket
//! has `SO_REUSEPORT`, so the kernel spreads connections over the shards. A connection stays
//! on the shard that accepted it. Each request is decoded with the `kafka-protocol` crate
//! ([`codec`], after the allocation pre-check in `guard`), answered by a handler that calls the
//! [`Shard`] API (which forwards per partition to the owning shard by message), and answered in
//! order. Record batches are never re-encoded: produce records go to the shard as slices of the
//! request frame, and fetch responses carry the stored batch bytes.
//!
//! Main types: [`KafkaConfig`], [`serve_kafka`], [`error_code`] (the one domain-error mapping),
//! [`DecodeError`] (wire errors), [`SUPPORTED_APIS`].
//!
//! Must not depend on: segment files or the engine log (only the `Shard` API), nor on any
//! other network protocol.

mod admin;
mod codec;
mod connection;
mod error;
mod fetch;
mod groups;
mod guard;
mod handler;
mod metadata;
mod offsets;
mod produce;
pub mod splice;
mod versions;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use sluice_cluster::shard::Shard;
use sluice_engine::rt::net::TcpListener;

pub use codec::{DecodeError, Decoded, Request, decode_request, encode_response, read_frame};
pub use error::{DomainError, error_code};
pub use guard::GuardError;
pub use versions::{SUPPORTED_APIS, SupportedApi, is_supported};

use crate::limits::KAFKA_DEFAULT_PARTITIONS;

/// How the Kafka listener behaves. Shared read-only by every connection of a shard.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    /// Address every shard binds (`--kafka-listen`).
    pub listen: SocketAddr,
    /// Address advertised to clients in Metadata (`--kafka-advertise`; default: `listen`).
    pub advertise: SocketAddr,
    /// Create a topic when a client asks for its metadata (Kafka's
    /// `auto.create.topics.enable`, default true).
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic, and of CreateTopics asking for the default (-1):
    /// Kafka's `num.partitions`.
    pub default_partitions: i32,
}

impl KafkaConfig {
    /// Kafka's defaults, listening and advertising on `listen`.
    pub fn new(listen: SocketAddr) -> KafkaConfig {
        KafkaConfig {
            listen,
            advertise: listen,
            auto_create_topics: true,
            default_partitions: KAFKA_DEFAULT_PARTITIONS,
        }
    }

    /// Checks the values against the limits; call at startup.
    pub fn validate(&self) -> Result<(), String> {
        if self.default_partitions < 1 {
            return Err(format!(
                "kafka default_partitions {} < 1",
                self.default_partitions
            ));
        }
        if self.advertise.ip().is_unspecified() || self.advertise.port() == 0 {
            return Err(format!(
                "kafka advertise address {} is not reachable",
                self.advertise
            ));
        }
        Ok(())
    }
}

/// Serves the Kafka protocol on this shard until the listener fails. Run it on every shard.
pub async fn serve_kafka(shard: Rc<Shard>, config: KafkaConfig) -> io::Result<()> {
    serve_kafka_until(shard, config, futures::future::pending()).await
}

/// Serves the Kafka protocol on this shard until `stop` completes (or the listener fails).
/// Connections already accepted are served until their client closes them or the shard's
/// executor stops.
pub async fn serve_kafka_until(
    shard: Rc<Shard>,
    config: KafkaConfig,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    config
        .validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let listener = TcpListener::bind(config.listen)?;
    tracing::info!(shard = %shard.id(), listen = %config.listen, "kafka listener started");
    let context = Rc::new(handler::Context::new(shard, config));
    let accept = async {
        loop {
            // Runs until the listener fails; one task per connection, isolated from the others.
            let stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(error) => {
                    let error = io::Error::from(error);
                    if is_transient_accept_error(&error) {
                        tracing::warn!(%error, "kafka accept failed; continuing");
                        sluice_engine::rt::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                    return Err(error);
                }
            };
            let context = Rc::clone(&context);
            sluice_engine::rt::spawn(connection::serve(context, stream)).detach();
        }
    };
    let accept = std::pin::pin!(accept);
    let stop = std::pin::pin!(stop);
    match futures::future::select(accept, stop).await {
        futures::future::Either::Left((result, _)) => result,
        futures::future::Either::Right(((), _)) => Ok(()),
    }
}

/// Accept errors that concern one connection or a momentary resource shortage (file
/// descriptors, memory), not the listener.
fn is_transient_accept_error(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
                | libc::EPERM
        )
    )
}
