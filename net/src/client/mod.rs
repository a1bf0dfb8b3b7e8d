//! The Rust client library of the native protocol: a [`Client`] shared by a [`Producer`], a
//! [`Consumer`] and admin calls.
//!
//! The client runs on a Sluice executor: inside `sluice_engine::rt::block_on` in a program of
//! its own, or on a broker shard. Everything here is shard-local (`!Send`, `Rc` inside):
//! create it on the executor that uses it. A [`Client`] bootstraps from any broker that
//! answers, learns for every partition which broker and which of its shards owns it, and
//! talks to that shard's QUIC endpoint directly, one connection per endpoint, each request on
//! its own stream (net/PROTOCOL.md). Retriable failures (`ErrorCode::is_retriable`, a lost
//! connection, a timeout) are retried a bounded number of times with exponential backoff
//! after a metadata refresh; the errors that remain are typed ([`ClientError`],
//! [`ProduceError`], [`ConsumerError`]) and carry the broker's code and message.
//!
//! Main items: [`Client`] and [`ClientConfig`]; admin calls on `Client` ([`NewTopic`],
//! [`ListedOffset`]); [`Producer`], [`ProducerConfig`], [`ProducerRecord`],
//! [`RecordMetadata`]; [`Consumer`], [`ConsumerConfig`], [`ConsumerRecord`], [`Seek`];
//! [`GroupConsumer`] and [`GroupConsumerConfig`] (a member of a consumer group: the broker
//! assigns partitions, the member commits what it processed); [`partitioner`].
//!
//! Must not depend on: storage internals (batches are built and decoded with
//! `sluice_engine::batch`, the one format), glommio by name, or the broker side of `net`.
//!
//! # Examples
//!
//! Create a topic, produce keyed records and wait for their acknowledgement:
//!
//! ```no_run
//! use sluice_engine::rt;
//! use sluice_net::client::{Client, ClientConfig, NewTopic, Producer, ProducerConfig};
//! use sluice_net::client::ProducerRecord;
//!
//! rt::block_on(async {
//!     let client = Client::connect(ClientConfig::new(["127.0.0.1:9192"])).await?;
//!     client.create_topic(NewTopic::new("orders", 3).config("retention.ms", "86400000")).await?;
//!     let producer = Producer::new(&client, ProducerConfig::default())?;
//!     let mut acks = Vec::new();
//!     for i in 0..100 {
//!         let record = ProducerRecord::new("orders", format!("order {i}"))
//!             .with_key(format!("customer-{}", i % 7));
//!         // Enqueued now, in call order; the future resolves when the broker acknowledges.
//!         acks.push(producer.send(record));
//!     }
//!     for ack in futures::future::join_all(acks).await {
//!         let metadata = ack?;
//!         assert!(metadata.offset >= 0, "acks=all reports offsets");
//!     }
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! High throughput with bounded memory: `ready` waits while the buffer is full, failures of
//! forgotten records are reported by `flush`:
//!
//! ```no_run
//! # use sluice_engine::rt;
//! # use sluice_net::client::{Acks, Client, ClientConfig, Producer, ProducerConfig};
//! # use sluice_net::client::ProducerRecord;
//! use std::time::Duration;
//! use sluice_engine::batch::Compression;
//!
//! rt::block_on(async {
//!     let client = Client::connect(ClientConfig::default()).await?;
//!     let config = ProducerConfig {
//!         batch_size: 1 << 20,
//!         linger: Duration::from_millis(2),
//!         compression: Compression::Lz4,
//!         acks: Acks::Leader,
//!         ..ProducerConfig::default()
//!     };
//!     let producer = Producer::new(&client, config)?;
//!     for i in 0u64..1_000_000 {
//!         producer.ready().await;
//!         producer.send_and_forget(ProducerRecord::new("metrics", i.to_le_bytes().to_vec()))?;
//!     }
//!     producer.flush().await?;
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Consume two partitions from an hour ago:
//!
//! ```no_run
//! # use sluice_engine::rt;
//! use std::io::Write;
//! use std::time::Duration;
//! use sluice_engine::TimestampMs;
//! use sluice_engine::rt::clock;
//! use sluice_net::client::{Client, ClientConfig, Consumer, ConsumerConfig, Seek};
//!
//! rt::block_on(async {
//!     let client = Client::connect(ClientConfig::default()).await?;
//!     let consumer = Consumer::new(&client, ConsumerConfig::default());
//!     consumer.assign(&[("orders", 0), ("orders", 1)]);
//!     let an_hour_ago = TimestampMs(clock::unix_now_ms().0 - 3_600_000);
//!     for partition in [0, 1] {
//!         consumer.seek("orders", partition, Seek::Timestamp(an_hour_ago))?;
//!     }
//!     loop {
//!         for record in consumer.poll(Duration::from_secs(1)).await? {
//!             let value = record.value.as_deref().unwrap_or_default();
//!             let (partition, offset) = (record.partition, record.offset);
//!             writeln!(std::io::stdout(), "{partition} {offset} {}", value.len())?;
//!         }
//!     }
//!     # Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Share a topic's partitions with the other members of a group, resuming from the group's
//! committed offsets; `poll` commits what earlier polls returned every five seconds, and
//! `close` commits the rest and leaves the group:
//!
//! ```no_run
//! # use sluice_engine::rt;
//! use std::io::Write;
//! use std::time::Duration;
//! use sluice_net::client::{Client, ClientConfig, GroupConsumer, GroupConsumerConfig};
//!
//! rt::block_on(async {
//!     let client = Client::connect(ClientConfig::default()).await?;
//!     let member = GroupConsumer::new(&client, GroupConsumerConfig::new("billing", ["orders"]))?;
//!     for _ in 0..100 {
//!         for record in member.poll(Duration::from_secs(1)).await? {
//!             let (partition, offset) = (record.partition, record.offset);
//!             writeln!(std::io::stdout(), "{partition} {offset}")?;
//!         }
//!     }
//!     member.close().await?;
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Admin calls:
//!
//! ```no_run
//! # use sluice_engine::rt;
//! # use sluice_net::client::{Client, ClientConfig};
//! use std::io::Write;
//! use sluice_net::native::messages::OffsetQuery;
//!
//! rt::block_on(async {
//!     let client = Client::connect(ClientConfig::default()).await?;
//!     for name in client.list_topics().await? {
//!         let topic = client.describe_topic(&name).await?;
//!         for p in &topic.partitions {
//!             let (start, end) = (p.log_start_offset, p.log_end_offset);
//!             writeln!(std::io::stdout(), "{name}-{}: shard {} offsets {start}..{end}",
//!                 p.partition, p.shard)?;
//!         }
//!     }
//!     client.alter_config("orders", vec![("retention.ms".into(), Some("3600000".into()))]).await?;
//!     let end = client.list_offset("orders", 0, OffsetQuery::Latest).await?;
//!     client.delete_records("orders", 0, end.offset).await?;
//!     Ok::<(), Box<dyn std::error::Error>>(())
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod admin;
mod consumer;
mod error;
mod group;
mod handle;
mod metadata;
pub mod partitioner;
mod pool;
mod producer;

pub use admin::{ListedOffset, NewTopic};
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, Seek};
pub use error::{ClientError, ConsumerError, GroupConsumerError, ProduceError};
pub use group::{GroupConsumer, GroupConsumerConfig};
pub use handle::{Acks, Client, ClientConfig, DEFAULT_BROKER, Fetched, Produced};
pub use metadata::ClusterMetadata;
pub use partitioner::{DefaultPartitioner, Partitioner, RoundRobinPartitioner};
pub use producer::{Producer, ProducerConfig, ProducerRecord, RecordMetadata};
