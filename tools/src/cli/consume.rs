//! `sluice consume TOPIC`: one record per line of standard output, formatted by `--format`
//! (kcat's tokens, `format.rs`; default: the value).
//!
//! Reads every partition of the topic, or only `--partition P`, from `--from` (default: the
//! beginning). Ends after `--count N` records, or once no record has come for
//! `--timeout-ms MS`; without either it follows the topic until interrupted. A reader that
//! closes the pipe (`| head`) ends the command quietly.
//!
//! With `--group G` the command is a member of consumer group G (`GroupConsumer`): the
//! broker shares the topic's partitions among the group's members, each partition starts at
//! the group's committed offset (`--from` only for partitions without one), and records are
//! committed once printed (every second, and when the command ends, which also leaves the
//! group).

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use sluice_engine::TimestampMs;
use sluice_engine::rt::clock;
use sluice_net::client::{
    Consumer, ConsumerConfig, ConsumerRecord, GroupConsumer, GroupConsumerConfig, Seek,
};

use super::{ConnectArgs, TopicLookup, run};
use crate::format::{Format, RecordView};

/// How long one poll waits at most when no timeout applies; only bounds how often the loop
/// checks its end conditions.
const POLL_WAIT_MAX: Duration = Duration::from_secs(1);

/// How often `--group` commits what it printed: a crashed member's successor prints again at
/// most about this much.
const GROUP_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Flags of `sluice consume`.
#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    /// Topic to read
    pub topic: String,
    /// Where to start: beginning, end, an offset, or @UNIX_MS (the first record at or after
    /// that time)
    #[arg(long, default_value = "beginning", value_name = "WHERE", value_parser = parse_from)]
    pub from: Seek,
    /// Read only this partition [default: every partition]
    #[arg(long, value_name = "P", conflicts_with = "group")]
    pub partition: Option<i32>,
    /// Consume as a member of this consumer group: share the partitions with its other
    /// members and resume from its committed offsets
    #[arg(long, value_name = "G")]
    pub group: Option<String>,
    /// Group session timeout: without a heartbeat for this long the group gives this
    /// member's partitions to the others [default: 10000]
    #[arg(long, value_name = "MS", requires = "group")]
    pub session_timeout_ms: Option<u64>,
    /// Stop after N records
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop once no record has come for MS milliseconds
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Output format with kcat's tokens: %t topic, %p partition, %o offset, %k key, %s value,
    /// %S value length, %K key length, %T timestamp, %h headers, \n, \t [default: %s\n]
    #[arg(long, value_name = "FMT", value_parser = parse_format)]
    pub format: Option<Format>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn parse_from(text: &str) -> Result<Seek, String> {
    match text {
        "beginning" => Ok(Seek::Beginning),
        "end" => Ok(Seek::End),
        _ => {
            let (number, at_time) = match text.strip_prefix('@') {
                Some(ms) => (ms, true),
                None => (text, false),
            };
            match number.parse::<i64>() {
                Ok(ms) if at_time && ms >= 0 => Ok(Seek::Timestamp(TimestampMs(ms))),
                Ok(offset) if !at_time && offset >= 0 => Ok(Seek::Offset(offset)),
                _ => Err(format!(
                    "expected beginning, end, an offset or @UNIX_MS, got {text:?}"
                )),
            }
        }
    }
}

fn parse_format(text: &str) -> Result<Format, String> {
    Format::parse(text).map_err(|error| error.to_string())
}

/// Runs `sluice consume`.
pub fn main(args: ConsumeArgs) -> anyhow::Result<()> {
    run(consume(args, Box::new(std::io::stdout())))
}

/// Where records come from: assigned partitions, or a group's share of them.
enum Source {
    Assigned(Consumer),
    Group(Box<GroupConsumer>),
}

impl Source {
    async fn poll(&self, wait: Duration) -> anyhow::Result<Vec<ConsumerRecord>> {
        match self {
            Source::Assigned(consumer) => Ok(consumer.poll(wait).await?),
            Source::Group(member) => Ok(member.poll(wait).await?),
        }
    }

    /// Ends a group membership: `printed` records of the last batch were printed, so the
    /// rest must not count as processed.
    async fn finish(&self, last: &[ConsumerRecord], printed: usize) -> anyhow::Result<()> {
        let Source::Group(member) = self else {
            return Ok(());
        };
        let mut seen: Vec<(&str, i32)> = Vec::new();
        for record in last.iter().skip(printed) {
            // The first unprinted record of each partition is where the group resumes.
            let key = (&*record.topic, record.partition);
            if !seen.contains(&key) {
                seen.push(key);
                member.processed_up_to(key.0, key.1, record.offset);
            }
        }
        member
            .close()
            .await
            .context("cannot commit the group's offsets")
    }
}

async fn consume(args: ConsumeArgs, mut out: Box<dyn Write>) -> anyhow::Result<()> {
    let client = args.connect.connect(TopicLookup::ExistingOnly).await?;
    let topic = args.topic.as_str();
    let partitions = client
        .partition_count(topic)
        .await
        .with_context(|| format!("cannot consume topic {topic}"))?;
    let assigned: Vec<(&str, i32)> = match args.partition {
        Some(partition) if (0..partitions).contains(&partition) => vec![(topic, partition)],
        Some(partition) => {
            bail!("topic {topic} has no partition {partition} (it has {partitions})")
        }
        None => (0..partitions).map(|p| (topic, p)).collect(),
    };
    let config = ConsumerConfig {
        start: args.from,
        ..ConsumerConfig::default()
    };
    let source = match &args.group {
        Some(group) => {
            let mut config = GroupConsumerConfig {
                consumer: config,
                client_id: "sluice-consume".to_owned(),
                auto_commit_interval: Some(GROUP_COMMIT_INTERVAL),
                ..GroupConsumerConfig::new(group.as_str(), [topic])
            };
            if let Some(ms) = args.session_timeout_ms {
                config.session_timeout = Duration::from_millis(ms);
            }
            Source::Group(Box::new(GroupConsumer::new(&client, config)?))
        }
        None => {
            let consumer = Consumer::new(&client, config);
            consumer.assign(&assigned);
            Source::Assigned(consumer)
        }
    };
    let format = args.format.unwrap_or_default();
    let idle = args.timeout_ms.map(Duration::from_millis);
    let mut printed: u64 = 0;
    let mut last_record = clock::now();
    let mut text = Vec::with_capacity(64 << 10);
    let mut last: Vec<ConsumerRecord> = Vec::new();
    let mut last_printed = 0;
    loop {
        if args.count.is_some_and(|count| printed >= count) {
            break;
        }
        let wait = match idle {
            Some(idle) => {
                let left = idle.saturating_sub(clock::now().saturating_duration_since(last_record));
                if left.is_zero() {
                    break;
                }
                left.min(POLL_WAIT_MAX)
            }
            None => POLL_WAIT_MAX,
        };
        let records = source
            .poll(wait)
            .await
            .with_context(|| format!("cannot consume topic {topic}"))?;
        if records.is_empty() {
            continue;
        }
        last_record = clock::now();
        text.clear();
        let mut printed_now = 0;
        for record in &records {
            if args.count.is_some_and(|count| printed >= count) {
                break;
            }
            let headers: Vec<(String, Option<Vec<u8>>)> = record
                .headers
                .iter()
                .map(|h| {
                    let key = String::from_utf8_lossy(&h.key).into_owned();
                    (key, h.value.as_ref().map(|v| v.to_vec()))
                })
                .collect();
            let view = RecordView {
                topic: &record.topic,
                partition: record.partition,
                offset: record.offset,
                key: record.key.as_deref(),
                value: record.value.as_deref(),
                timestamp_ms: record.timestamp.0,
                headers: &headers,
            };
            format.render(&view, &mut text);
            printed += 1;
            printed_now += 1;
        }
        let written = out.write_all(&text).and_then(|()| out.flush());
        match written {
            Ok(()) => {}
            // The reader has seen enough (`| head`): not a failure. The group resumes from
            // the last commit.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(error) => return Err(error).context("cannot write to standard output"),
        }
        if printed_now < records.len() {
            last = records;
            last_printed = printed_now;
            break;
        }
    }
    tracing::debug!(printed, "consumed");
    source.finish(&last, last_printed).await?;
    client.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: --from accepts its four forms and refuses anything else as a usage error.
    #[test]
    fn from_values() {
        assert_eq!(parse_from("beginning"), Ok(Seek::Beginning));
        assert_eq!(parse_from("end"), Ok(Seek::End));
        assert_eq!(parse_from("42"), Ok(Seek::Offset(42)));
        assert_eq!(
            parse_from("@1700000000000"),
            Ok(Seek::Timestamp(TimestampMs(1_700_000_000_000)))
        );
        for bad in ["-1", "@", "@x", "@-5", "start", ""] {
            assert!(parse_from(bad).is_err(), "{bad}");
        }
        assert!(parse_format("%x").is_err());
    }
}
