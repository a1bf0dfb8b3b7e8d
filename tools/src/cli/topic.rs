//! `sluice topic create | list | describe | delete | alter-config`.
//!
//! Output is for people and simple scripts: `list` prints one name per line; `describe`
//! prints a tab-separated `Key: value` line per partition (as Kafka's tools do) and the
//! effective configs, overrides marked.

use std::io::Write;

use anyhow::Context;
use sluice_net::client::NewTopic;
use sluice_net::native::messages::TopicInfo;

use super::{ConnectArgs, TopicLookup, parse_key_value, run};

/// The `topic` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic
    Create {
        /// Topic name
        name: String,
        /// Number of partitions
        #[arg(long, default_value_t = 1)]
        partitions: i32,
        /// Replication factor
        #[arg(long, default_value_t = 1)]
        replicas: i16,
        /// Topic config override, repeatable (retention.ms=3600000, max.message.bytes=...)
        #[arg(
            short = 'c',
            long = "config",
            value_name = "KEY=VALUE",
            value_parser = parse_key_value
        )]
        configs: Vec<(String, String)>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List topics, one per line
    List {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Show a topic's partitions (shard, leader, replicas, ISR, offsets, size) and configs
    Describe {
        /// Topic name
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Delete a topic and its data
    Delete {
        /// Topic name
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Set topic config overrides (or remove them with --delete-config)
    AlterConfig {
        /// Topic name
        name: String,
        /// Config to set, repeatable
        #[arg(
            short = 'c',
            long = "config",
            value_name = "KEY=VALUE",
            value_parser = parse_key_value,
            required_unless_present = "delete_config"
        )]
        configs: Vec<(String, String)>,
        /// Config override to remove (back to the default), repeatable
        #[arg(long = "delete-config", value_name = "KEY")]
        delete_config: Vec<String>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// Runs a `topic` subcommand.
pub fn main(command: TopicCommand) -> anyhow::Result<()> {
    run(async move {
        let mut out = std::io::stdout().lock();
        match command {
            TopicCommand::Create {
                name,
                partitions,
                replicas,
                configs,
                connect,
            } => {
                let client = connect.connect(TopicLookup::ExistingOnly).await?;
                let topic = NewTopic {
                    name: name.clone(),
                    partitions,
                    replication: replicas,
                    configs,
                };
                client
                    .create_topic(topic)
                    .await
                    .with_context(|| format!("cannot create topic {name}"))?;
                writeln!(out, "created topic {name}")?;
            }
            TopicCommand::List { connect } => {
                let client = connect.connect(TopicLookup::ExistingOnly).await?;
                let names = client.list_topics().await.context("cannot list topics")?;
                for name in names {
                    writeln!(out, "{name}")?;
                }
            }
            TopicCommand::Describe { name, connect } => {
                let client = connect.connect(TopicLookup::ExistingOnly).await?;
                let topic = client
                    .describe_topic(&name)
                    .await
                    .with_context(|| format!("cannot describe topic {name}"))?;
                out.write_all(describe_text(&topic).as_bytes())?;
            }
            TopicCommand::Delete { name, connect } => {
                let client = connect.connect(TopicLookup::ExistingOnly).await?;
                client
                    .delete_topic(&name)
                    .await
                    .with_context(|| format!("cannot delete topic {name}"))?;
                writeln!(out, "deleted topic {name}")?;
            }
            TopicCommand::AlterConfig {
                name,
                configs,
                delete_config,
                connect,
            } => {
                let client = connect.connect(TopicLookup::ExistingOnly).await?;
                let changes = configs
                    .into_iter()
                    .map(|(key, value)| (key, Some(value)))
                    .chain(delete_config.into_iter().map(|key| (key, None)))
                    .collect();
                client
                    .alter_config(&name, changes)
                    .await
                    .with_context(|| format!("cannot alter the configs of topic {name}"))?;
                writeln!(out, "altered the configs of topic {name}")?;
            }
        }
        out.flush()?;
        Ok(())
    })
}

/// The text `topic describe` prints.
fn describe_text(topic: &TopicInfo) -> String {
    let join = |ids: &[i32]| {
        ids.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let replication = topic.partitions.first().map_or(0, |p| p.replicas.len());
    let mut text = format!(
        "Topic: {}\tPartitions: {}\tReplicationFactor: {}\n",
        topic.name,
        topic.partitions.len(),
        replication
    );
    for p in &topic.partitions {
        text.push_str(&format!(
            "\tPartition: {}\tShard: {}\tLeader: {}\tReplicas: {}\tIsr: {}\t\
             LogStartOffset: {}\tLogEndOffset: {}\tHighWatermark: {}\tSizeBytes: {}\n",
            p.partition,
            p.shard,
            p.leader,
            join(&p.replicas),
            join(&p.isr),
            p.log_start_offset,
            p.log_end_offset,
            p.high_watermark,
            p.size_bytes
        ));
    }
    text.push_str("Configs:\n");
    for (key, value, is_override) in &topic.configs {
        let mark = if *is_override { " (override)" } else { "" };
        text.push_str(&format!("\t{key}={value}{mark}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use sluice_net::native::messages::PartitionInfo;

    use super::*;

    // Goal: describe prints every partition field and marks overrides.
    #[test]
    fn describe_layout() {
        let partition = |n: i32, shard: u16| PartitionInfo {
            partition: n,
            leader: 1,
            shard,
            replicas: vec![1, 2],
            isr: vec![1],
            log_start_offset: 5,
            log_end_offset: 42,
            high_watermark: 40,
            size_bytes: 4096,
        };
        let topic = TopicInfo {
            name: "orders".into(),
            partitions: vec![partition(0, 0), partition(1, 1)],
            configs: vec![
                ("cleanup.policy".into(), "delete".into(), false),
                ("retention.ms".into(), "1000".into(), true),
            ],
        };
        assert_eq!(
            describe_text(&topic),
            "Topic: orders\tPartitions: 2\tReplicationFactor: 2\n\
             \tPartition: 0\tShard: 0\tLeader: 1\tReplicas: 1,2\tIsr: 1\tLogStartOffset: 5\t\
             LogEndOffset: 42\tHighWatermark: 40\tSizeBytes: 4096\n\
             \tPartition: 1\tShard: 1\tLeader: 1\tReplicas: 1,2\tIsr: 1\tLogStartOffset: 5\t\
             LogEndOffset: 42\tHighWatermark: 40\tSizeBytes: 4096\n\
             Configs:\n\
             \tcleanup.policy=delete\n\
             \tretention.ms=1000 (override)\n"
        );
    }
}
