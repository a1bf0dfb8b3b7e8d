//! `sluice cluster status | brokers | reassign`: the controller quorum and the registered
//! brokers, read from a broker's admin endpoint (`GET /cluster`), and partition reassignment
//! (`POST /cluster/reassign`).
//!
//! The admin endpoint rather than the native protocol: the quorum's state (raft term, voter
//! progress) and replica moves are operator matters that live beside `/metrics`, and the
//! native protocol stays the data path.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context;
use sluice_net::admin::ClusterView;

/// `sluice cluster ...`.
#[derive(clap::Subcommand, Debug)]
pub enum ClusterCommand {
    /// The active controller, raft term, voters and metadata revision.
    Status(AdminArgs),
    /// Registered brokers: id, endpoints, alive or fenced.
    Brokers(AdminArgs),
    /// Move a partition to another replica set with no downtime: the new replicas catch up,
    /// join the ISR, then the old ones leave (leadership moves first if its broker leaves).
    Reassign(ReassignArgs),
}

/// `sluice cluster reassign`.
#[derive(clap::Args, Debug)]
pub struct ReassignArgs {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The new replica set, preferred leader first (broker ids, e.g. 2,3,4).
    #[arg(long, value_delimiter = ',', required = true)]
    pub replicas: Vec<i32>,
    /// Wait until the move has completed (or this many seconds have passed: then fail).
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<u64>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Which broker to ask.
#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// Admin HTTP endpoint of any broker (its --admin-listen)
    #[arg(
        long,
        env = "SLUICE_ADMIN",
        default_value = "127.0.0.1:9644",
        value_name = "ADDR"
    )]
    pub admin: SocketAddr,
}

/// Runs a `cluster` subcommand.
pub fn main(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status(args) => {
            let view = fetch(args.admin)?;
            print!("{}", status_text(&view));
        }
        ClusterCommand::Brokers(args) => {
            let view = fetch(args.admin)?;
            print!("{}", brokers_text(&view));
        }
        ClusterCommand::Reassign(args) => reassign(&args)?,
    }
    Ok(())
}

fn reassign(args: &ReassignArgs) -> anyhow::Result<()> {
    let replicas: Vec<String> = args.replicas.iter().map(ToString::to_string).collect();
    let path = format!(
        "/cluster/reassign?topic={}&partition={}&replicas={}",
        args.topic,
        args.partition,
        replicas.join(",")
    );
    request(args.admin.admin, "POST", &path)?;
    let Some(seconds) = args.wait else {
        println!(
            "reassignment of {}-{} to {} started",
            args.topic,
            args.partition,
            replicas.join(",")
        );
        return Ok(());
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        let view = fetch(args.admin.admin)?;
        let partition = view
            .partitions
            .iter()
            .find(|p| p.topic == args.topic && p.partition == args.partition)
            .with_context(|| format!("{}-{} is gone", args.topic, args.partition))?;
        if partition.target_replicas.is_none() && partition.replicas == args.replicas {
            println!(
                "{}-{}: replicas {} leader {} isr {}",
                args.topic,
                args.partition,
                replicas.join(","),
                partition.leader,
                join(&partition.isr)
            );
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{}-{} not moved within {seconds} s: replicas {} isr {}",
            args.topic,
            args.partition,
            join(&partition.replicas),
            join(&partition.isr)
        );
        // Polling the controller's view; the admin endpoint has no change feed.
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn join(ids: &[i32]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn fetch(admin: SocketAddr) -> anyhow::Result<ClusterView> {
    let body = request(admin, "GET", "/cluster")?;
    serde_json::from_str(&body).context("cannot decode the cluster view")
}

/// One HTTP request to the admin endpoint; the body of a 200 answer, or the error it gave.
fn request(admin: SocketAddr, method: &str, path: &str) -> anyhow::Result<String> {
    let timeout = Duration::from_secs(30);
    let mut stream = TcpStream::connect_timeout(&admin, timeout)
        .with_context(|| format!("cannot reach the admin endpoint {admin}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream
        .take(16 << 20)
        .read_to_end(&mut response)
        .context("cannot read the admin answer")?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed admin answer")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "admin endpoint answered {}: {}",
        head.lines().next().unwrap_or_default(),
        body.trim()
    );
    Ok(body.to_owned())
}

fn status_text(view: &ClusterView) -> String {
    let mut out = format!(
        "cluster {}\nasked broker {}\nmetadata revision {}\n",
        view.cluster_id, view.node, view.revision
    );
    match &view.quorum {
        None => out.push_str(&format!(
            "controller {} (a cluster of one: no quorum)\n",
            view.controller
        )),
        Some(quorum) => {
            out.push_str(&format!(
                "controller {}\nraft term {}\nraft commit {} applied {}\nrole here {}\nvoters:\n",
                quorum.leader, quorum.term, quorum.commit, quorum.applied, quorum.role
            ));
            for voter in &quorum.voters {
                let role = if voter.leader { "leader" } else { "follower" };
                out.push_str(&format!(
                    "  {:<6} {:<9} matched {}\n",
                    voter.id, role, voter.matched
                ));
            }
        }
    }
    out
}

fn brokers_text(view: &ClusterView) -> String {
    let mut out = format!(
        "{:<6} {:<7} {:<22} {:<22} {:<22} {}\n",
        "ID", "STATE", "KAFKA", "QUIC (SHARD 0)", "CLUSTER", "SHARDS"
    );
    for broker in &view.brokers {
        let state = if broker.fenced { "fenced" } else { "alive" };
        let quic = broker
            .quic
            .first()
            .map_or_else(String::new, ToString::to_string);
        out.push_str(&format!(
            "{:<6} {:<7} {:<22} {:<22} {:<22} {}\n",
            broker.id.0,
            state,
            broker.kafka,
            quic,
            broker.cluster,
            broker.quic.len()
        ));
    }
    if view.brokers.is_empty() {
        out.push_str(&format!("{:<6} alive   (a cluster of one)\n", view.node));
    }
    out
}
