//! `sluice group list | describe G | reset-offsets G --topic T --to WHERE | delete G`: consumer
//! groups, native and Kafka (classic) alike, over the native protocol.
//!
//! Output is for people and simple scripts, in the style of `sluice topic`: `list` prints one
//! group per line (`id`, type, state, tab-separated); `describe` prints tab-separated
//! `Key: value` lines: the group, each member with its partitions, and per partition the
//! committed offset, the log end offset (high watermark) and the lag, as Kafka's
//! `kafka-consumer-groups --describe` does.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, bail};
use sluice_engine::TimestampMs;
use sluice_net::client::Client;
use sluice_net::native::messages::{ErrorCode, GroupInfo, OffsetQuery, TopicPartitions};

use super::{ConnectArgs, TopicLookup, run};

/// The `group` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum GroupCommand {
    /// List groups, one per line: id, type (consumer or classic), state
    List {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Show a group's state, members and assignment, and per partition its committed offset,
    /// log end offset and lag
    Describe {
        /// Group id
        group: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Set a group's committed offsets for a topic (the group must have no active member)
    ResetOffsets {
        /// Group id
        group: String,
        /// Topic whose partitions to reset
        #[arg(long)]
        topic: String,
        /// earliest, latest, an offset, or @UNIX_MS (the first record at or after that time)
        #[arg(long, value_name = "WHERE", value_parser = parse_to)]
        to: ResetTo,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Delete a group without active members, with its committed offsets
    Delete {
        /// Group id
        group: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// Where `reset-offsets --to` moves a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTo {
    /// The log start offset.
    Earliest,
    /// The high watermark.
    Latest,
    /// An offset, clamped into the log.
    Offset(i64),
    /// The first record at or after this time (the high watermark if none is).
    Timestamp(TimestampMs),
}

fn parse_to(text: &str) -> Result<ResetTo, String> {
    match text {
        "earliest" => Ok(ResetTo::Earliest),
        "latest" => Ok(ResetTo::Latest),
        _ => {
            let (number, at_time) = match text.strip_prefix('@') {
                Some(ms) => (ms, true),
                None => (text, false),
            };
            match number.parse::<i64>() {
                Ok(ms) if at_time && ms >= 0 => Ok(ResetTo::Timestamp(TimestampMs(ms))),
                Ok(offset) if !at_time && offset >= 0 => Ok(ResetTo::Offset(offset)),
                _ => Err(format!(
                    "expected earliest, latest, an offset or @UNIX_MS, got {text:?}"
                )),
            }
        }
    }
}

/// Runs a `group` subcommand.
pub fn main(command: GroupCommand) -> anyhow::Result<()> {
    run(async move {
        let mut out = std::io::stdout().lock();
        match command {
            GroupCommand::List { connect } => {
                let client = connect.connect(TopicLookup::ExistingOnly).await?;
                let groups = client.list_groups().await.context("cannot list groups")?;
                for g in groups {
                    writeln!(out, "{}\t{}\t{}", g.group_id, g.group_type, g.state)?;
                }
                client.close().await;
            }
            GroupCommand::Describe { group, connect } => {
                let client = connect.connect(TopicLookup::ExistingOnly).await?;
                let text = describe(&client, &group)
                    .await
                    .with_context(|| format!("cannot describe group {group}"))?;
                out.write_all(text.as_bytes())?;
                client.close().await;
            }
            GroupCommand::ResetOffsets {
                group,
                topic,
                to,
                connect,
            } => {
                let client = connect.connect(TopicLookup::ExistingOnly).await?;
                let text = reset(&client, &group, &topic, to)
                    .await
                    .with_context(|| format!("cannot reset the offsets of group {group}"))?;
                out.write_all(text.as_bytes())?;
                client.close().await;
            }
            GroupCommand::Delete { group, connect } => {
                let client = connect.connect(TopicLookup::ExistingOnly).await?;
                match client.delete_group(&group).await {
                    Ok(()) => writeln!(out, "deleted group {group}")?,
                    Err(error) if error.code() == Some(ErrorCode::GroupNotEmpty) => bail!(
                        "cannot delete group {group}: it has active members (stop them first)"
                    ),
                    Err(error) => {
                        return Err(error).with_context(|| format!("cannot delete group {group}"));
                    }
                }
                client.close().await;
            }
        }
        Ok(())
    })
}

/// The group's description, or an empty one for a group that only exists through its
/// committed offsets (or not at all).
async fn group_info(client: &Client, group: &str) -> anyhow::Result<Option<GroupInfo>> {
    match client.describe_group(group).await {
        Ok(info) => Ok(Some(info)),
        Err(error) if error.code() == Some(ErrorCode::GroupNotFound) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

async fn describe(client: &Client, group: &str) -> anyhow::Result<String> {
    let info = group_info(client, group).await?;
    let committed = client.fetch_offsets(group, None).await?;
    let Some(info) = info else {
        bail!("no such group");
    };
    let mut text = String::new();
    text.push_str(&format!(
        "Group: {}\tType: {}\tState: {}\tEpoch: {}\tAssignor: {}\tMembers: {}\n",
        info.group_id,
        info.group_type,
        info.state,
        info.epoch,
        if info.protocol.is_empty() {
            "-"
        } else {
            &info.protocol
        },
        info.members.len()
    ));
    // (topic, partition) → (committed offset, owning member).
    let mut rows: BTreeMap<(String, i32), (i64, String)> = BTreeMap::new();
    for member in &info.members {
        let partitions: Vec<String> = TopicPartitions::pairs(&member.assignment)
            .map(|(t, p)| format!("{t}-{p}"))
            .collect();
        text.push_str(&format!(
            "Member: {}\tEpoch: {}\tClient: {}\tHost: {}\tTopics: {}\tAssignment: {}\n",
            member.member_id,
            member.member_epoch,
            member.client_id,
            if member.client_host.is_empty() {
                "-"
            } else {
                &member.client_host
            },
            member.topics.join(","),
            partitions.join(",")
        ));
        for (topic, partition) in TopicPartitions::pairs(&member.assignment) {
            rows.insert(
                (topic.to_owned(), partition),
                (-1, member.member_id.clone()),
            );
        }
    }
    for offset in committed {
        rows.entry((offset.topic, offset.partition))
            .or_insert((-1, String::new()))
            .0 = offset.offset;
    }
    let mut ends: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (topic, _) in rows.keys() {
        if ends.contains_key(topic) {
            continue;
        }
        // A deleted topic has no end; its rows show "-".
        let partitions = match client.describe_topic(topic).await {
            Ok(described) => described
                .partitions
                .iter()
                .map(|p| p.high_watermark)
                .collect(),
            Err(error) if error.code() == Some(ErrorCode::UnknownTopicOrPartition) => Vec::new(),
            Err(error) => return Err(error.into()),
        };
        ends.insert(topic.clone(), partitions);
    }
    for ((topic, partition), (offset, member)) in &rows {
        let end = usize::try_from(*partition)
            .ok()
            .and_then(|p| ends.get(topic).and_then(|e| e.get(p)).copied());
        let show = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        let committed = (*offset >= 0).then_some(*offset);
        let lag = committed.zip(end).map(|(c, e)| (e - c).max(0));
        text.push_str(&format!(
            "Topic: {topic}\tPartition: {partition}\tCommitted: {}\tLogEnd: {}\tLag: {}\t\
             Member: {}\n",
            show(committed),
            show(end),
            show(lag),
            if member.is_empty() { "-" } else { member }
        ));
    }
    Ok(text)
}

async fn reset(client: &Client, group: &str, topic: &str, to: ResetTo) -> anyhow::Result<String> {
    if let Some(info) = group_info(client, group).await?
        && !info.members.is_empty()
    {
        bail!(
            "group {group} has {} active member(s); stop them first (state {})",
            info.members.len(),
            info.state
        );
    }
    let partitions = client.partition_count(topic).await?;
    let mut offsets = Vec::new();
    for partition in 0..partitions {
        let earliest = client
            .list_offset(topic, partition, OffsetQuery::Earliest)
            .await?;
        let latest = client
            .list_offset(topic, partition, OffsetQuery::Latest)
            .await?;
        let offset = match to {
            ResetTo::Earliest => earliest.offset,
            ResetTo::Latest => latest.offset,
            ResetTo::Offset(offset) => offset.clamp(earliest.offset, latest.offset),
            ResetTo::Timestamp(ms) => {
                let found = client
                    .list_offset(topic, partition, OffsetQuery::Timestamp { ms: ms.0 })
                    .await?;
                if found.offset < 0 {
                    latest.offset
                } else {
                    found.offset
                }
            }
        };
        offsets.push((topic, partition, offset));
    }
    match client.commit_offsets(group, &offsets).await {
        Ok(()) => {}
        // A member joined between the check and the commit.
        Err(error)
            if matches!(
                error.code(),
                Some(ErrorCode::UnknownMemberId | ErrorCode::GroupNotEmpty)
            ) =>
        {
            bail!("group {group} has active members; stop them first")
        }
        Err(error) => return Err(error.into()),
    }
    let mut text = String::new();
    for (topic, partition, offset) in offsets {
        text.push_str(&format!(
            "Topic: {topic}\tPartition: {partition}\tNew offset: {offset}\n"
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: --to accepts its four forms and refuses anything else as a usage error.
    #[test]
    fn to_values() {
        assert_eq!(parse_to("earliest"), Ok(ResetTo::Earliest));
        assert_eq!(parse_to("latest"), Ok(ResetTo::Latest));
        assert_eq!(parse_to("7"), Ok(ResetTo::Offset(7)));
        assert_eq!(
            parse_to("@1700000000000"),
            Ok(ResetTo::Timestamp(TimestampMs(1_700_000_000_000)))
        );
        for bad in ["-1", "@", "@x", "beginning", ""] {
            assert!(parse_to(bad).is_err(), "{bad}");
        }
    }
}
