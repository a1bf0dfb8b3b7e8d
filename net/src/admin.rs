//! The admin HTTP endpoint: `GET /health`, `GET /metrics` (Prometheus text format),
//! `GET /cluster` (JSON: the quorum and broker registrations, for `sluice cluster`) and
//! `POST /cluster/reassign?topic=T&partition=P&replicas=1,2,3` (start a reassignment;
//! answers the cluster view, or 400 with the reason).
//!
//! Runs on shard 0 only. HTTP/1.1 with one request per connection (`Connection: close`): the
//! endpoint is scraped every few seconds, so simplicity beats keep-alive. Requests are bounded
//! (`ADMIN_REQUEST_BYTES_MAX`) and anything but these paths gets 404.
//!
//! Must not depend on: storage internals; it reads counters through the shard.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;

use futures::{AsyncReadExt, AsyncWriteExt};
use sluice_cluster::metadata::MetadataCommand;
use sluice_cluster::metrics::{LATENCY_BUCKETS_US, MetricsSnapshot};
use sluice_cluster::shard::Shard;
use sluice_engine::rt::net::{TcpListener, TcpStream};
use sluice_engine::{BrokerId, PartitionId};

use crate::limits::ADMIN_REQUEST_BYTES_MAX;

/// Binds `listen` and serves admin requests until the process stops.
pub async fn serve(shard: Rc<Shard>, listen: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    // Runs for the life of the shard: each connection is its own task.
    loop {
        let stream = match listener.accept().await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                continue;
            }
        };
        let shard = Rc::clone(&shard);
        sluice_engine::rt::spawn(async move {
            if let Err(error) = handle(shard, stream).await {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        })
        .detach();
    }
}

async fn handle(shard: Rc<Shard>, mut stream: TcpStream) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&chunk[..n]);
        if request.len() > ADMIN_REQUEST_BYTES_MAX {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request too large\n",
            )
            .await;
        }
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (method, path) {
        ("GET", "/health") => respond(&mut stream, "200 OK", "text/plain", "ok\n").await,
        ("GET", "/metrics") => {
            let snapshot = shard.collect_metrics().await;
            let body = render(&snapshot, &shard);
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &body).await
        }
        ("GET", "/cluster") => {
            let body = cluster_json(&shard);
            respond(&mut stream, "200 OK", "application/json", &body).await
        }
        ("POST", path) if path.starts_with("/cluster/reassign?") => {
            let (status, body) = match reassign_command(&path["/cluster/reassign?".len()..]) {
                Ok(command) => match shard.command(command).await {
                    Ok(_) => ("200 OK", cluster_json(&shard)),
                    Err(error) => ("400 Bad Request", format!("{error}\n")),
                },
                Err(error) => ("400 Bad Request", format!("{error}\n")),
            };
            respond(&mut stream, status, "application/json", &body).await
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await,
    }
}

/// `topic=T&partition=P&replicas=1,2,3` as a reassignment command.
fn reassign_command(query: &str) -> Result<MetadataCommand, String> {
    let mut topic = None;
    let mut partition = None;
    let mut replicas = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "topic" => topic = Some(value.to_owned()),
            "partition" => {
                partition = Some(
                    value
                        .parse::<i32>()
                        .map_err(|_| "bad partition".to_owned())?,
                );
            }
            "replicas" => {
                let ids: Result<Vec<BrokerId>, _> = value
                    .split(',')
                    .map(|id| id.parse().map(BrokerId))
                    .collect();
                replicas = Some(ids.map_err(|_| "bad replicas: use ids like 1,2,3".to_owned())?);
            }
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    Ok(MetadataCommand::ReassignPartition {
        topic: topic.ok_or("topic missing")?,
        partition: PartitionId(partition.ok_or("partition missing")?),
        replicas: replicas.ok_or("replicas missing")?,
    })
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await?;
    stream.close().await
}

/// What `GET /cluster` answers (`sluice cluster status` and `brokers` read it).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    /// Cluster id.
    pub cluster_id: String,
    /// The broker answering.
    pub node: i32,
    /// Metadata revision applied on the answering broker.
    pub revision: u64,
    /// The controller the metadata names (-1: none known).
    pub controller: i32,
    /// The answering broker's view of the quorum (absent on a single broker).
    pub quorum: Option<sluice_cluster::controller::ControllerStatus>,
    /// Registered brokers (empty on a single broker).
    pub brokers: Vec<sluice_cluster::metadata::BrokerRegistration>,
    /// Every partition's leader, epoch, replicas and ISR.
    pub partitions: Vec<PartitionView>,
}

/// One partition in [`ClusterView`].
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Leader (-1: offline).
    pub leader: i32,
    /// Leader epoch.
    pub leader_epoch: i32,
    /// Replicas, preferred leader first.
    pub replicas: Vec<i32>,
    /// In-sync replicas.
    pub isr: Vec<i32>,
    /// The replica set a reassignment in progress moves to.
    #[serde(default)]
    pub target_replicas: Option<Vec<i32>>,
}

fn cluster_json(shard: &Shard) -> String {
    let metadata = shard.metadata();
    let view = ClusterView {
        cluster_id: metadata.cluster_id.clone(),
        node: shard.node().0,
        revision: metadata.revision.0,
        controller: metadata.controller.0,
        quorum: shard.controller().map(|c| c.status()),
        brokers: metadata.cluster.registrations.clone(),
        partitions: metadata
            .topics
            .values()
            .flat_map(|t| {
                t.partitions.iter().map(|p| PartitionView {
                    topic: t.name.to_string(),
                    partition: p.id.0,
                    leader: p.leader.0,
                    leader_epoch: p.leader_epoch.0,
                    replicas: p.replicas.iter().map(|b| b.0).collect(),
                    isr: p.isr.iter().map(|b| b.0).collect(),
                    target_replicas: p
                        .target_replicas
                        .as_ref()
                        .map(|t| t.iter().map(|b| b.0).collect()),
                })
            })
            .collect(),
    };
    let mut body = serde_json::to_string_pretty(&view).expect("the cluster view encodes as JSON");
    body.push('\n');
    body
}

/// Cluster gauges and counters from the metadata: every broker reports the same counters
/// (they are derived from the replicated log); under-replicated partitions are those this
/// broker leads whose ISR is smaller than their replica set, as Kafka counts them.
fn render_cluster(out: &mut String, shard: &Shard) {
    let metadata = shard.metadata();
    let node = shard.node();
    let partitions = metadata.topics.values().flat_map(|t| t.partitions.iter());
    let (mut under, mut offline) = (0u64, 0u64);
    for partition in partitions {
        under +=
            u64::from(partition.leader == node && partition.isr.len() < partition.replicas.len());
        offline += u64::from(partition.leader.0 < 0);
    }
    let cluster = &metadata.cluster;
    for (name, kind, help, value) in [
        (
            "sluice_leader_elections_total",
            "counter",
            "Partition leader changes made by the controller.",
            cluster.leader_elections_total,
        ),
        (
            "sluice_isr_shrinks_total",
            "counter",
            "ISR shrinks accepted by the controller.",
            cluster.isr_shrinks_total,
        ),
        (
            "sluice_isr_expands_total",
            "counter",
            "ISR expansions accepted by the controller.",
            cluster.isr_expands_total,
        ),
        (
            "sluice_under_replicated_partitions",
            "gauge",
            "Partitions led here whose ISR is smaller than the replica set.",
            under,
        ),
        (
            "sluice_offline_partitions",
            "gauge",
            "Partitions without a leader.",
            offline,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
}

/// Renders counters in the Prometheus text exposition format.
pub fn render(snapshot: &MetricsSnapshot, shard: &Shard) -> String {
    let mut out = String::new();
    render_cluster(&mut out, shard);
    let metadata = shard.metadata();
    // Writing into a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP sluice_partitions Partitions owned by each shard."
    );
    let _ = writeln!(out, "# TYPE sluice_partitions gauge");
    let mut per_shard = snapshot.partitions_per_shard.clone();
    per_shard.sort_unstable();
    for (id, count) in &per_shard {
        let _ = writeln!(out, "sluice_partitions{{shard=\"{id}\"}} {count}");
    }
    let _ = writeln!(out, "# HELP sluice_topic_partitions Partitions per topic.");
    let _ = writeln!(out, "# TYPE sluice_topic_partitions gauge");
    for topic in metadata.topics.values() {
        let _ = writeln!(
            out,
            "sluice_topic_partitions{{topic=\"{}\"}} {}",
            topic.name,
            topic.partitions.len()
        );
    }
    let mut topics: Vec<_> = snapshot.topics.iter().collect();
    topics.sort_by(|a, b| a.0.cmp(b.0));
    for (name, help, pick) in [
        (
            "sluice_topic_bytes_in_total",
            "Record batch bytes appended.",
            0,
        ),
        ("sluice_topic_records_in_total", "Records appended.", 1),
        (
            "sluice_topic_bytes_out_total",
            "Record batch bytes served to fetches.",
            2,
        ),
        (
            "sluice_topic_produce_errors_total",
            "Produce requests that failed.",
            3,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (topic, counters) in &topics {
            let value = match pick {
                0 => counters.bytes_in,
                1 => counters.records_in,
                2 => counters.bytes_out,
                _ => counters.produce_errors,
            };
            let _ = writeln!(out, "{name}{{topic=\"{topic}\"}} {value}");
        }
    }
    let mut apis: Vec<_> = snapshot.apis.iter().collect();
    apis.sort_by_key(|(api, _)| **api);
    let _ = writeln!(
        out,
        "# HELP sluice_requests_total Requests handled per API."
    );
    let _ = writeln!(out, "# TYPE sluice_requests_total counter");
    for (api, counters) in &apis {
        let _ = writeln!(
            out,
            "sluice_requests_total{{api=\"{api}\"}} {}",
            counters.requests
        );
    }
    let _ = writeln!(
        out,
        "# HELP sluice_request_errors_total Requests answered with an error per API."
    );
    let _ = writeln!(out, "# TYPE sluice_request_errors_total counter");
    for (api, counters) in &apis {
        let _ = writeln!(
            out,
            "sluice_request_errors_total{{api=\"{api}\"}} {}",
            counters.errors
        );
    }
    let _ = writeln!(
        out,
        "# HELP sluice_request_latency_seconds Request latency per API."
    );
    let _ = writeln!(out, "# TYPE sluice_request_latency_seconds histogram");
    for (api, counters) in &apis {
        for (bound, count) in LATENCY_BUCKETS_US.iter().zip(&counters.latency_buckets) {
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "sluice_request_latency_seconds_bucket{{api=\"{api}\",le=\"{le}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "sluice_request_latency_seconds_bucket{{api=\"{api}\",le=\"+Inf\"}} {}",
            counters.requests
        );
        let _ = writeln!(
            out,
            "sluice_request_latency_seconds_sum{{api=\"{api}\"}} {}",
            counters.latency_sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "sluice_request_latency_seconds_count{{api=\"{api}\"}} {}",
            counters.requests
        );
    }
    let _ = writeln!(
        out,
        "# HELP sluice_consumer_group_lag Records between a group's committed offset and the \
         high watermark, per partition."
    );
    let _ = writeln!(out, "# TYPE sluice_consumer_group_lag gauge");
    for (group, tp, lag) in snapshot.consumer_lag() {
        let _ = writeln!(
            out,
            "sluice_consumer_group_lag{{group=\"{}\",topic=\"{}\",partition=\"{}\"}} {lag}",
            escape_label(&group),
            tp.topic,
            tp.partition.0
        );
    }
    let _ = writeln!(
        out,
        "# HELP sluice_replica_lag Offsets a follower is behind the leader's log end, per \
         partition led here (-1: not yet known in this leader epoch)."
    );
    let _ = writeln!(out, "# TYPE sluice_replica_lag gauge");
    let mut lag = snapshot.replica_lag.clone();
    lag.sort();
    for (tp, replica, lag) in lag {
        let _ = writeln!(
            out,
            "sluice_replica_lag{{topic=\"{}\",partition=\"{}\",replica=\"{}\"}} {}",
            tp.topic,
            tp.partition.0,
            replica.0,
            lag.unwrap_or(-1)
        );
    }
    let mut gauges = snapshot.shard_gauges.clone();
    gauges.sort_unstable_by_key(|(shard, name, _)| (*name, *shard));
    let mut last_name = "";
    for (id, name, value) in &gauges {
        if *name != last_name {
            let _ = writeln!(out, "# TYPE sluice_shard_{name} counter");
            last_name = name;
        }
        let _ = writeln!(out, "sluice_shard_{name}{{shard=\"{id}\"}} {value}");
    }
    out
}

/// Escapes a Prometheus label value (group ids are client-chosen text).
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}
