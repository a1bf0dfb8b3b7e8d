//! `sluice consume TOPIC`: one record per line of standard output, formatted by `--format`
//! (kcat's tokens, `format.rs`; default: the value).
//!
//! Reads every partition of the topic, or only `--partition P`, from `--from` (default: the
//! beginning). Ends after `--count N` records, or once no record has come for
//! `--timeout-ms MS`; without either it follows the topic until interrupted. A reader that
//! closes the pipe (`| head`) ends the command quietly.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use sluice_engine::TimestampMs;
use sluice_engine::rt::clock;
use sluice_net::client::{Consumer, ConsumerConfig, Seek};

use super::{ConnectArgs, TopicLookup, run};
use crate::format::{Format, RecordView};

/// How long one poll waits at most when no timeout applies; only bounds how often the loop
/// checks its end conditions.
const POLL_WAIT_MAX: Duration = Duration::from_secs(1);

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
    #[arg(long, value_name = "P")]
    pub partition: Option<i32>,
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
    let consumer = Consumer::new(&client, config);
    consumer.assign(&assigned);
    let format = args.format.unwrap_or_default();
    let idle = args.timeout_ms.map(Duration::from_millis);
    let mut printed: u64 = 0;
    let mut last_record = clock::now();
    let mut text = Vec::with_capacity(64 << 10);
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
        let records = consumer
            .poll(wait)
            .await
            .with_context(|| format!("cannot consume topic {topic}"))?;
        if records.is_empty() {
            continue;
        }
        last_record = clock::now();
        text.clear();
        for record in records {
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
        }
        let written = out.write_all(&text).and_then(|()| out.flush());
        match written {
            Ok(()) => {}
            // The reader has seen enough (`| head`): not a failure.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(error) => return Err(error).context("cannot write to standard output"),
        }
    }
    tracing::debug!(printed, "consumed");
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
