//! Broker configuration: command-line flags over an optional TOML file over defaults.
//!
//! Every flag can be set in the file under the same name with dashes as underscores, so
//! `--kafka-listen 127.0.0.1:9092` and `kafka_listen = "127.0.0.1:9092"` mean the same.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use serde::Deserialize;

/// Flags of `sluice broker`; each is optional so the file and defaults can fill it in.
#[derive(clap::Args, Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct BrokerArgs {
    /// TOML file with any of these settings; flags override it.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Directory for logs and metadata [default: ./sluice-data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// This broker's node id [default: 1].
    #[arg(long)]
    pub node_id: Option<i32>,
    /// Number of shards (cores) to run [default: all cores].
    #[arg(long)]
    pub cores: Option<usize>,
    /// CPUs to pin the shards to, in shard order, e.g. `2,3` (several brokers on one machine
    /// each take their own) [default: the first --cores CPUs].
    #[arg(long, value_delimiter = ',')]
    pub cpuset: Option<Vec<usize>>,
    /// Microseconds an idle shard keeps polling for work before it sleeps, as Seastar's
    /// idle poll: lower latency and fewer system calls at small requests, for a busy core
    /// (give shards cores of their own with --cpuset) [default: 0, sleep at once].
    #[arg(long)]
    pub idle_poll_us: Option<u64>,
    /// Kafka protocol listener [default: 127.0.0.1:9092].
    #[arg(long)]
    pub kafka_listen: Option<SocketAddr>,
    /// Address advertised to Kafka clients [default: the listen address].
    #[arg(long)]
    pub kafka_advertise: Option<SocketAddr>,
    /// QUIC listener of shard 0; shard i listens on the port plus i [default: 127.0.0.1:9192].
    #[arg(long)]
    pub quic_listen: Option<SocketAddr>,
    /// QUIC endpoint of shard 0 advertised to clients in metadata (behind NAT, or when
    /// listening on 0.0.0.0); shard i is advertised at the port plus i
    /// [default: the listen address].
    #[arg(long)]
    pub quic_advertise: Option<SocketAddr>,
    /// Admin HTTP listener (/health, /metrics) [default: 127.0.0.1:9644].
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// PEM certificate for QUIC TLS [default: a self-signed one made in DATA/tls].
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: when set, QUIC clients must present a certificate it signed.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Bytes of recent batches each shard keeps in memory for tailing readers
    /// [default: 64 MiB].
    #[arg(long)]
    pub cache_bytes: Option<usize>,
    /// Create topics on first produce or metadata request, as Kafka's
    /// auto.create.topics.enable [default: true].
    #[arg(long)]
    pub auto_create_topics: Option<bool>,
    /// Partitions of auto-created topics [default: 1].
    #[arg(long)]
    pub default_partitions: Option<i32>,
    /// Partitions of __consumer_offsets when it is created [default: 16].
    #[arg(long)]
    pub offsets_topic_partitions: Option<i32>,
    /// Smallest session timeout a group member may ask for, as Kafka's
    /// group.min.session.timeout.ms [default: 6000].
    #[arg(long)]
    pub group_min_session_timeout_ms: Option<u64>,
    /// Largest session timeout a group member may ask for [default: 1800000].
    #[arg(long)]
    pub group_max_session_timeout_ms: Option<u64>,
    /// How long a new group waits for more members before its first rebalance, as Kafka's
    /// group.initial.rebalance.delay.ms [default: 3000].
    #[arg(long)]
    pub group_initial_rebalance_delay_ms: Option<u64>,
    /// How long the offsets of an empty group are kept [default: 10080 (7 days)].
    #[arg(long)]
    pub offsets_retention_minutes: Option<u64>,
    /// Peer-link listener of shard 0; shard i listens on the port plus i
    /// [default: 127.0.0.1:33145].
    #[arg(long)]
    pub cluster_listen: Option<SocketAddr>,
    /// The controller quorum, ID@ADDR[,ID@ADDR...] (each broker's --cluster-listen), the same
    /// list on every broker; without it the broker is a cluster of one.
    #[arg(long)]
    pub seeds: Option<String>,
    /// A broker whose heartbeats stop for this long is fenced and loses its leaderships, as
    /// Kafka's broker.session.timeout.ms [default: 6000].
    #[arg(long)]
    pub broker_session_timeout_ms: Option<u64>,
    /// How often the controller moves leadership back to preferred replicas, as Kafka's
    /// leader.imbalance.check.interval.seconds [default: 30000].
    #[arg(long)]
    pub leader_rebalance_interval_ms: Option<u64>,
    /// A follower that has not caught up with the leader for this long leaves the in-sync
    /// replicas, as Kafka's replica.lag.time.max.ms; acks=all produces wait at most twice
    /// this for the in-sync replicas [default: 30000].
    #[arg(long)]
    pub replica_lag_time_max_ms: Option<u64>,
    /// How often each shard deletes the segments past its partitions' retention.ms and
    /// retention.bytes, as Kafka's log.retention.check.interval.ms [default: 300000].
    #[arg(long)]
    pub log_retention_check_interval_ms: Option<u64>,
}

/// One seed: a voter of the controller quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed {
    pub id: i32,
    pub addr: SocketAddr,
}

/// Parses `ID@ADDR[,ID@ADDR...]`.
pub fn parse_seeds(text: &str) -> anyhow::Result<Vec<Seed>> {
    let mut seeds: Vec<Seed> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('@')
            .with_context(|| format!("seed {item:?} is not ID@ADDR"))?;
        let id: i32 = id
            .parse()
            .ok()
            .filter(|id| *id >= 0)
            .with_context(|| format!("seed {item:?}: id must be a non-negative integer"))?;
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("seed {item:?}: address must be IP:PORT"))?;
        anyhow::ensure!(
            seeds.iter().all(|s| s.id != id),
            "seed id {id} is listed twice"
        );
        seeds.push(Seed { id, addr });
    }
    anyhow::ensure!(!seeds.is_empty(), "--seeds lists no broker");
    Ok(seeds)
}

/// Resolved broker settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub data_dir: PathBuf,
    pub node_id: i32,
    pub cores: usize,
    /// Empty: the first `cores` CPUs.
    pub cpuset: Vec<usize>,
    /// Zero: an idle shard sleeps at once.
    pub idle_poll: std::time::Duration,
    pub kafka_listen: SocketAddr,
    pub kafka_advertise: SocketAddr,
    pub quic_listen: SocketAddr,
    pub quic_advertise: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub cache_bytes: usize,
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    pub groups: sluice_cluster::group::GroupConfig,
    pub cluster_listen: SocketAddr,
    /// Empty: a cluster of one.
    pub seeds: Vec<Seed>,
    pub broker_session_timeout: std::time::Duration,
    pub leader_rebalance_interval: std::time::Duration,
    pub replica_lag_time_max: std::time::Duration,
    pub log_retention_check_interval: std::time::Duration,
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("built-in default address parses")
}

impl BrokerArgs {
    /// Merges flags over the file (if any) over defaults.
    pub fn resolve(self) -> anyhow::Result<BrokerConfig> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<BrokerArgs>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => BrokerArgs::default(),
        };
        let cores_available = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kafka_listen = self
            .kafka_listen
            .or(file.kafka_listen)
            .unwrap_or_else(|| addr("127.0.0.1:9092"));
        let quic_listen = self
            .quic_listen
            .or(file.quic_listen)
            .unwrap_or_else(|| addr("127.0.0.1:9192"));
        let tls_cert = self.tls_cert.or(file.tls_cert);
        let tls_key = self.tls_key.or(file.tls_key);
        anyhow::ensure!(
            tls_cert.is_some() == tls_key.is_some(),
            "--tls-cert and --tls-key must be given together"
        );
        let defaults = sluice_cluster::group::GroupConfig::default();
        let ms = std::time::Duration::from_millis;
        let groups = sluice_cluster::group::GroupConfig {
            offsets_topic_partitions: self
                .offsets_topic_partitions
                .or(file.offsets_topic_partitions)
                .unwrap_or(defaults.offsets_topic_partitions),
            session_timeout_min: self
                .group_min_session_timeout_ms
                .or(file.group_min_session_timeout_ms)
                .map_or(defaults.session_timeout_min, ms),
            session_timeout_max: self
                .group_max_session_timeout_ms
                .or(file.group_max_session_timeout_ms)
                .map_or(defaults.session_timeout_max, ms),
            initial_rebalance_delay: self
                .group_initial_rebalance_delay_ms
                .or(file.group_initial_rebalance_delay_ms)
                .map_or(defaults.initial_rebalance_delay, ms),
            offsets_retention: self
                .offsets_retention_minutes
                .or(file.offsets_retention_minutes)
                .map_or(defaults.offsets_retention, |m| {
                    std::time::Duration::from_secs(m.saturating_mul(60))
                }),
            ..defaults
        };
        groups.validate().map_err(|e| anyhow::anyhow!(e))?;
        let config = BrokerConfig {
            data_dir: self
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| "sluice-data".into()),
            node_id: self.node_id.or(file.node_id).unwrap_or(1),
            cores: self.cores.or(file.cores).unwrap_or(cores_available),
            cpuset: self.cpuset.or(file.cpuset).unwrap_or_default(),
            idle_poll: std::time::Duration::from_micros(
                self.idle_poll_us.or(file.idle_poll_us).unwrap_or(0),
            ),
            kafka_listen,
            kafka_advertise: self
                .kafka_advertise
                .or(file.kafka_advertise)
                .unwrap_or(kafka_listen),
            quic_listen,
            quic_advertise: self
                .quic_advertise
                .or(file.quic_advertise)
                .unwrap_or(quic_listen),
            admin_listen: self
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or_else(|| addr("127.0.0.1:9644")),
            tls_cert,
            tls_key,
            ca: self.ca.or(file.ca),
            cache_bytes: self.cache_bytes.or(file.cache_bytes).unwrap_or(64 << 20),
            auto_create_topics: self
                .auto_create_topics
                .or(file.auto_create_topics)
                .unwrap_or(true),
            default_partitions: self
                .default_partitions
                .or(file.default_partitions)
                .unwrap_or(1),
            groups,
            cluster_listen: self
                .cluster_listen
                .or(file.cluster_listen)
                .unwrap_or_else(|| addr("127.0.0.1:33145")),
            seeds: match self.seeds.or(file.seeds) {
                Some(text) => parse_seeds(&text).context("invalid --seeds")?,
                None => Vec::new(),
            },
            broker_session_timeout: ms(self
                .broker_session_timeout_ms
                .or(file.broker_session_timeout_ms)
                .unwrap_or(6000)),
            leader_rebalance_interval: ms(self
                .leader_rebalance_interval_ms
                .or(file.leader_rebalance_interval_ms)
                .unwrap_or(30_000)),
            replica_lag_time_max: ms(self
                .replica_lag_time_max_ms
                .or(file.replica_lag_time_max_ms)
                .unwrap_or(30_000)),
            log_retention_check_interval: ms(self
                .log_retention_check_interval_ms
                .or(file.log_retention_check_interval_ms)
                .unwrap_or(300_000)),
        };
        anyhow::ensure!(config.cores >= 1, "--cores must be at least 1");
        anyhow::ensure!(
            config.cpuset.is_empty() || config.cpuset.len() >= config.cores,
            "--cpuset names {} CPUs for {} shards",
            config.cpuset.len(),
            config.cores
        );
        anyhow::ensure!(
            config.broker_session_timeout >= std::time::Duration::from_millis(500),
            "--broker-session-timeout-ms must be at least 500"
        );
        anyhow::ensure!(
            config.replica_lag_time_max >= std::time::Duration::from_millis(100),
            "--replica-lag-time-max-ms must be at least 100"
        );
        anyhow::ensure!(
            config.leader_rebalance_interval >= std::time::Duration::from_millis(100),
            "--leader-rebalance-interval-ms must be at least 100"
        );
        anyhow::ensure!(
            config.log_retention_check_interval >= std::time::Duration::from_millis(100),
            "--log-retention-check-interval-ms must be at least 100"
        );
        // Shard i uses port + i on both addresses; every one must be a valid port.
        for (flag, address) in [
            ("--quic-listen", config.quic_listen),
            ("--quic-advertise", config.quic_advertise),
        ] {
            anyhow::ensure!(
                usize::from(address.port()) + config.cores <= usize::from(u16::MAX) + 1,
                "{flag} port {} leaves no port for each of the {} shards",
                address.port(),
                config.cores
            );
            anyhow::ensure!(
                flag == "--quic-listen" || !address.ip().is_unspecified(),
                "--quic-advertise {address} is not an address clients can reach"
            );
        }
        anyhow::ensure!(config.node_id >= 0, "--node-id must not be negative");
        anyhow::ensure!(
            config.default_partitions >= 1,
            "--default-partitions must be at least 1"
        );
        Ok(config)
    }
}
