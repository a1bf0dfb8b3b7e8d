//! `sluice cluster status | brokers`: the controller quorum and the registered brokers, read
//! from a broker's admin endpoint (`GET /cluster`).
//!
//! The admin endpoint rather than the native protocol: the quorum's state (raft term, voter
//! progress) is operator information that lives beside `/metrics`, and the native protocol
//! stays the data path. Until the replication issue lands, followers receive no data: the
//! output says so.

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
    }
    Ok(())
}

fn fetch(admin: SocketAddr) -> anyhow::Result<ClusterView> {
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&admin, timeout)
        .with_context(|| format!("cannot reach the admin endpoint {admin}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /cluster HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
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
        "admin endpoint answered {}",
        head.lines().next().unwrap_or_default()
    );
    serde_json::from_str(body).context("cannot decode the cluster view")
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
            out.push_str(
                "note: partition data is not replicated to followers yet (RF>1 is placement \
                 and failover only)\n",
            );
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
