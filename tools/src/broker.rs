//! `sluice broker`: wires the concrete pieces together and runs until SIGINT/SIGTERM.
//!
//! Start-up order: resolve config, check the host (io_uring, memlock, O_DIRECT), load
//! metadata (a cluster of one: the JSON file; with `--seeds`: the controller's raft log in
//! `DATA/__controller`), start one pinned shard per core (in a cluster each with its peer
//! links and cluster listener, shard 0 with the controller), open each shard's partitions
//! (recovery), then start the listeners: Kafka TCP and QUIC on every shard, admin HTTP on
//! shard 0. Shutdown: stop accepting, answer in-flight requests, flush and close every
//! partition.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use std::collections::HashMap;
use std::net::SocketAddr;

use sluice_cluster::controller::{ControllerBoot, ControllerConfig, ObserverConfig};
use sluice_cluster::metadata::{
    BrokerInfo, BrokerRegistration, DataDirIdentity, FileMetadataStore, META_PROPERTIES_FILE,
    MetaProperties, MetadataSnapshot, Settled, replace_missing_shards,
};
use sluice_cluster::replication::ReplicationSettings;
use sluice_cluster::shard::{Shard, ShardConfig};
use sluice_engine::BrokerId;
use sluice_engine::rt::{self, env, shards};
use sluice_net::native::NativeServerConfig;
use sluice_net::peer::PeerLinks;
use sluice_net::quic::tls::{self, CertKeyPaths, ServerIdentity, ServerTlsOptions};

use crate::config::BrokerConfig;

/// Runs the broker until a stop signal; returns when every shard has shut down.
pub fn run(mut config: BrokerConfig) -> anyhow::Result<()> {
    let report = env::check(&config.data_dir, config.cores, env::IO_MEMORY_BYTES_DEFAULT)?;
    // The check created the directory. Shards open files relative to it from their own
    // threads, and glommio fails relative paths there (EBADF), so pin it down once here.
    config.data_dir = std::fs::canonicalize(&config.data_dir).with_context(|| {
        format!(
            "cannot resolve data directory {}",
            config.data_dir.display()
        )
    })?;
    let io_memory = report.io_memory_bytes;
    for warning in &report.warnings {
        tracing::warn!("{warning}");
    }
    raise_open_files_limit();

    let node = BrokerId(config.node_id);
    // Metadata advertises `--quic-advertise` (default: the listen address) per shard.
    let quic_addrs: Vec<SocketAddr> = (0..config.cores)
        .map(|i| with_port_offset(config.quic_advertise, i))
        .collect();
    let mut observer = None;
    if !config.seeds.is_empty() {
        settle_cluster_identity(&config, node)?;
    }
    let (store, snapshot, controller) = if config.seeds.is_empty() {
        let (store, snapshot) = single_broker_metadata(&config, node, quic_addrs)?;
        (Some(store), snapshot, None)
    } else if config.seeds.iter().any(|s| s.id == config.node_id) {
        let controller = controller_config(&config, node, quic_addrs);
        let boot = sluice_cluster::controller::boot(&controller)
            .context("cannot load the controller log")?;
        let snapshot = boot.initial.clone();
        (None, snapshot, Some((controller, boot)))
    } else {
        // Outside the quorum: no metadata until the voters hand it over.
        let voter = controller_config(&config, node, quic_addrs);
        observer = Some(ObserverConfig {
            node,
            voters: voter.voters,
            registration: voter.registration,
            session_timeout: voter.session_timeout,
        });
        (None, MetadataSnapshot::default(), None)
    };
    let snapshot = Arc::new(snapshot);
    // TLS is set up once, before the shards start: it reads PEM files (and makes the
    // self-signed identity on first start), which the shards must not race on.
    let native = native_config(&config)?;

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install signal handler")?;
    }
    let cpus = core_ids(config.cores, &config.cpuset);
    let shards_config = shards::ShardsConfig {
        count: config.cores,
        cpus,
        io_memory_bytes: io_memory,
        inbox_capacity: sluice_cluster::limits::SHARD_INBOX_CAPACITY,
        name: "sluice-shard".into(),
        idle_poll: config.idle_poll,
    };
    let store = Arc::new(std::sync::Mutex::new(store));
    let controller = Arc::new(std::sync::Mutex::new(controller));
    let observer = Arc::new(observer);
    let config = Arc::new(config);
    tracing::info!(
        data_dir = %config.data_dir.display(),
        cores = config.cores,
        kafka = %config.kafka_listen,
        quic = %config.quic_listen,
        quic_advertise = %config.quic_advertise,
        admin = %config.admin_listen,
        "starting broker"
    );
    let handle = shards::start(shards_config, move |context| {
        let config = Arc::clone(&config);
        let snapshot = Arc::clone(&snapshot);
        let stop = Arc::clone(&stop);
        let native = native.clone();
        // Shard 0 takes the metadata store; the lock is touched once per shard at start-up.
        let (store, controller, observer) = if context.id.0 == 0 {
            (
                store.lock().expect("start-up lock not poisoned").take(),
                controller
                    .lock()
                    .expect("start-up lock not poisoned")
                    .take(),
                Option::clone(&observer),
            )
        } else {
            (None, None, None)
        };
        async move {
            let metadata = ShardMetadata {
                store,
                controller,
                observer,
            };
            run_shard(context, config, native, snapshot, metadata, stop).await
        }
    })?;
    handle.join()?;
    tracing::info!("broker stopped");
    Ok(())
}

/// `addr` with its port plus `offset` (shard i listens on the base port + i).
fn with_port_offset(mut addr: SocketAddr, offset: usize) -> SocketAddr {
    let offset = u16::try_from(offset).expect("shard ids fit in u16");
    addr.set_port(addr.port() + offset);
    addr
}

/// A cluster of one: metadata from the JSON file, the offsets topic made here, this broker
/// the controller and the only broker.
fn single_broker_metadata(
    config: &BrokerConfig,
    node: BrokerId,
    quic_addrs: Vec<SocketAddr>,
) -> anyhow::Result<(FileMetadataStore, MetadataSnapshot)> {
    let metadata_dir = config.data_dir.join("__metadata");
    // Before the metadata file is created: a lost one must not become a new cluster over
    // the data directory's partitions (opening them under new topic ids removes them).
    let identity = DataDirIdentity::read(&config.data_dir)?;
    let metadata_file = FileMetadataStore::file_in(&metadata_dir);
    let metadata_exists = metadata_file
        .try_exists()
        .with_context(|| format!("cannot look for {}", metadata_file.display()))?;
    if !metadata_exists {
        let partitions = sluice_cluster::partition::partition_dirs(&config.data_dir)
            .with_context(|| format!("cannot list {}", config.data_dir.display()))?;
        identity.check_new_metadata(&metadata_file, &partitions)?;
    }
    let (store, mut snapshot) =
        FileMetadataStore::open(&metadata_dir).context("cannot load metadata")?;
    let expected = MetaProperties::new(&snapshot.cluster_id, node);
    let origin = metadata_file.display().to_string();
    if identity.settle(&expected, &origin)? == Settled::Written {
        tracing::info!(
            cluster_id = %snapshot.cluster_id,
            node = node.0,
            "wrote {META_PROPERTIES_FILE}"
        );
    }
    if replace_missing_shards(&mut snapshot, config.cores) {
        tracing::info!(
            cores = config.cores,
            "shard count changed; partitions re-placed"
        );
    }
    let placement = sluice_cluster::metadata::PlacementContext {
        node,
        shard_count: config.cores,
    };
    if sluice_cluster::group::ensure_offsets_topic(&store, &mut snapshot, placement, &config.groups)
        .context("cannot create the offsets topic")?
    {
        tracing::info!(
            partitions = config.groups.offsets_topic_partitions,
            "created __consumer_offsets"
        );
    }
    snapshot.controller = node;
    snapshot.brokers = vec![BrokerInfo {
        id: node,
        kafka: config.kafka_advertise,
        quic: quic_addrs,
    }];
    Ok((store, snapshot))
}

/// A cluster broker's data directory must belong to the cluster its `--seeds` name (the
/// cluster id is a function of the voter ids, [`sluice_cluster::controller::cluster_id`], the
/// same on voters and observers) and to `--node-id`; checked before the controller log or
/// anything else in the directory is opened. Without meta.properties (a new directory, or one
/// from before the file existed) the file is written.
fn settle_cluster_identity(config: &BrokerConfig, node: BrokerId) -> anyhow::Result<()> {
    let voters: Vec<BrokerId> = config.seeds.iter().map(|s| BrokerId(s.id)).collect();
    let cluster_id = sluice_cluster::controller::cluster_id(&voters);
    let ids: Vec<String> = voters.iter().map(|v| v.0.to_string()).collect();
    let origin = format!("the cluster of --seeds voters {}", ids.join(","));
    let identity = DataDirIdentity::read(&config.data_dir)?;
    if identity.settle(&MetaProperties::new(&cluster_id, node), &origin)? == Settled::Written {
        tracing::info!(%cluster_id, node = node.0, "wrote {META_PROPERTIES_FILE}");
    }
    Ok(())
}

/// The controller quorum member this voter runs (cluster mode).
fn controller_config(
    config: &BrokerConfig,
    node: BrokerId,
    quic_addrs: Vec<SocketAddr>,
) -> ControllerConfig {
    ControllerConfig {
        node,
        voters: config.seeds.iter().map(|s| BrokerId(s.id)).collect(),
        dir: config
            .data_dir
            .join(sluice_cluster::controller::CONTROLLER_DIR),
        registration: BrokerRegistration {
            id: node,
            kafka: config.kafka_advertise,
            quic: quic_addrs,
            cluster: config.cluster_listen,
            fenced: false,
            metadata_version: sluice_cluster::metadata::METADATA_VERSION,
        },
        session_timeout: config.broker_session_timeout,
        tick: Duration::from_millis(100),
        snapshot_entries: 1024,
        leader_rebalance_interval: config.leader_rebalance_interval,
        offsets_topic_partitions: config.groups.offsets_topic_partitions,
    }
}

/// What shard 0 takes at start: the single-broker store, or the controller's boot state.
struct ShardMetadata {
    store: Option<FileMetadataStore>,
    controller: Option<(ControllerConfig, ControllerBoot)>,
    /// A broker outside the quorum: how its observer runs.
    observer: Option<ObserverConfig>,
}

/// The native server configuration every shard starts from (each sets its own address).
fn native_config(config: &BrokerConfig) -> anyhow::Result<NativeServerConfig> {
    let identity = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => ServerIdentity::Files(CertKeyPaths {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ => {
            let mut names = tls::default_self_signed_names();
            // The certificate names the addresses clients are told to use.
            for ip in [config.quic_listen.ip(), config.quic_advertise.ip()] {
                let name = ip.to_string();
                if !ip.is_loopback() && !ip.is_unspecified() && !names.contains(&name) {
                    names.push(name);
                }
            }
            ServerIdentity::SelfSigned {
                dir: config.data_dir.join("tls"),
                names,
            }
        }
    };
    let tls = ServerTlsOptions {
        identity,
        client_ca: config.ca.clone(),
    };
    let mut native = NativeServerConfig::new(config.quic_listen, &tls)
        .context("cannot set up TLS for the QUIC listener")?;
    native.auto_create_topics = config.auto_create_topics;
    native.default_partitions = config.default_partitions;
    native.validate().map_err(anyhow::Error::msg)?;
    Ok(native)
}

async fn run_shard(
    context: shards::ShardContext<sluice_cluster::shard::ShardMsg>,
    config: Arc<BrokerConfig>,
    mut native: NativeServerConfig,
    snapshot: Arc<sluice_cluster::metadata::MetadataSnapshot>,
    metadata: ShardMetadata,
    stop: Arc<AtomicBool>,
) {
    let shard_config = ShardConfig {
        node: BrokerId(config.node_id),
        data_dir: config.data_dir.clone(),
        cache_bytes: config.cache_bytes,
        replication: ReplicationSettings::with_lag(config.replica_lag_time_max),
    };
    // In a cluster, this shard's links to the same shard of every other seed (controller
    // traffic on shard 0, replication on every shard).
    let links = (!config.seeds.is_empty()).then(|| {
        let peers: HashMap<BrokerId, SocketAddr> = config
            .seeds
            .iter()
            .map(|s| (BrokerId(s.id), s.addr))
            .collect();
        PeerLinks::new(BrokerId(config.node_id), context.id, peers)
    });
    let peers = links
        .clone()
        .map(|links| -> Rc<dyn sluice_cluster::peer::PeerTransport> { links });
    let shard = Shard::start(context, shard_config, snapshot, metadata.store, peers).await;
    shard.start_groups(config.groups.clone());
    shard.spawn_maintenance(config.log_retention_check_interval);
    let id = shard.id();
    let mut listeners = Vec::new();
    let (stop_peers, peers_stopped) = futures::channel::oneshot::channel::<()>();
    if let Some(links) = links {
        if let Some((controller, boot)) = metadata.controller {
            shard.start_controller(controller, boot, links);
        } else if let Some(observer) = metadata.observer {
            shard.start_observer(observer, links);
        }
        listeners.push(rt::spawn(log_exit(
            "cluster",
            sluice_net::peer::serve_peers(
                Rc::clone(&shard),
                with_port_offset(config.cluster_listen, usize::from(id.0)),
                async {
                    let _ = peers_stopped.await;
                },
            ),
        )));
    }
    let kafka = sluice_net::kafka::KafkaConfig {
        listen: config.kafka_listen,
        advertise: config.kafka_advertise,
        auto_create_topics: config.auto_create_topics,
        default_partitions: config.default_partitions,
    };
    listeners.push(rt::spawn(log_exit(
        "kafka",
        sluice_net::kafka::serve_kafka(Rc::clone(&shard), kafka),
    )));
    // Shard i binds `--quic-listen` port + i; metadata advertises `--quic-advertise` port + i.
    native.listen = with_port_offset(config.quic_listen, usize::from(id.0));
    let (stop_native, native_stopped) = futures::channel::oneshot::channel::<()>();
    let native = rt::spawn(log_exit(
        "quic",
        sluice_net::native::serve_native_until(Rc::clone(&shard), native, async {
            let _ = native_stopped.await;
        }),
    ));
    if id.0 == 0 {
        listeners.push(rt::spawn(log_exit(
            "admin",
            sluice_net::admin::serve(Rc::clone(&shard), config.admin_listen),
        )));
    }
    tracing::info!(
        shard = id.0,
        partitions = shard.partition_count(),
        "shard serving"
    );
    // The shard serves until a stop signal; the flag is polled because signal handlers cannot
    // reach an executor directly.
    while !stop.load(Ordering::Relaxed) {
        rt::sleep(Duration::from_millis(50)).await;
    }
    // The native server drains (in-flight requests answered, connections closed with a
    // reason) before the partitions close; the other listeners just stop.
    let _ = stop_native.send(());
    native.await;
    let _ = stop_peers.send(());
    drop(listeners);
    shard.shutdown().await;
    tracing::info!(shard = id.0, "shard stopped");
}

async fn log_exit<E: std::fmt::Display>(
    name: &'static str,
    server: impl std::future::Future<Output = Result<(), E>>,
) {
    if let Err(error) = server.await {
        tracing::error!(listener = name, %error, "listener failed");
        eprintln!("error: {name} listener failed: {error}");
        std::process::exit(1);
    }
}

/// The CPUs the shards are pinned to: `cpuset` where given (those this process may use),
/// else the first `count`; empty (no pinning) when there are not enough.
fn core_ids(count: usize, cpuset: &[usize]) -> Vec<usize> {
    let mut available: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    if !cpuset.is_empty() {
        available = cpuset
            .iter()
            .copied()
            .filter(|cpu| available.contains(cpu))
            .collect();
    }
    if available.len() >= count {
        available[..count].to_vec()
    } else {
        Vec::new()
    }
}

fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
