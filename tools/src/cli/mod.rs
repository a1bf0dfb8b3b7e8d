//! The client commands of `sluice`: `topic`, `produce`, `consume`, `group` and `cluster`, one
//! module each (`cluster` reads a broker's admin endpoint instead of the native protocol).
//!
//! Each command runs on one executor on the calling thread (`rt::try_block_on`) and talks to
//! the cluster through `sluice_net::client`. Every command takes the connection flags of
//! [`ConnectArgs`]: `--brokers` (or `SLUICE_BROKERS`) and `--ca`.

pub mod cluster;
pub mod consume;
pub mod group;
pub mod produce;
pub mod topic;

use std::future::Future;
use std::path::PathBuf;

use anyhow::Context;
use sluice_engine::rt;
use sluice_net::client::{Client, ClientConfig, DEFAULT_BROKER};
use sluice_net::quic::tls::ClientTlsOptions;

/// How to reach the cluster; flattened into every client command.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Brokers to bootstrap from: host:port of any broker's QUIC endpoint, comma-separated
    #[arg(
        long,
        env = "SLUICE_BROKERS",
        value_delimiter = ',',
        default_value = DEFAULT_BROKER,
        value_name = "ADDR[,ADDR...]"
    )]
    pub brokers: Vec<String>,
    /// PEM certificate of the authority that signed the brokers' certificates (needed for
    /// brokers off the loopback interface; a broker's self-signed DATA/tls/cert.pem works)
    #[arg(long, value_name = "PATH")]
    pub ca: Option<PathBuf>,
}

impl ConnectArgs {
    /// The client configuration these flags describe. `topics` says whether looking a topic
    /// up may create it (on a broker that auto-creates topics): true for `produce`, as
    /// Kafka's console producer; false for commands that only read or describe.
    pub fn client_config(&self, topics: TopicLookup) -> ClientConfig {
        ClientConfig {
            tls: ClientTlsOptions {
                ca: self.ca.clone(),
                identity: None,
            },
            auto_create_topics: topics == TopicLookup::MayCreate,
            ..ClientConfig::new(self.brokers.iter().map(|b| b.trim().to_owned()))
        }
    }

    /// Connects to the cluster.
    pub async fn connect(&self, topics: TopicLookup) -> anyhow::Result<Client> {
        Client::connect(self.client_config(topics))
            .await
            .context("cannot connect to the cluster")
    }
}

/// Whether a command's topic lookups may create the topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicLookup {
    /// The broker may auto-create a missing topic (its `--auto-create-topics`).
    MayCreate,
    /// A missing topic is an error.
    ExistingOnly,
}

/// Runs a command's body on a fresh executor on this thread.
pub fn run<T>(body: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    rt::try_block_on(body).context("cannot start the runtime (io_uring)")?
}

/// Parses `KEY=VALUE` (for `-c`).
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: -c values split at the first '=', and malformed ones are usage errors.
    #[test]
    fn key_values() {
        assert_eq!(
            parse_key_value("retention.ms=100").expect("valid"),
            ("retention.ms".to_owned(), "100".to_owned())
        );
        assert_eq!(
            parse_key_value("a=b=c").expect("valid"),
            ("a".to_owned(), "b=c".to_owned())
        );
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }
}
