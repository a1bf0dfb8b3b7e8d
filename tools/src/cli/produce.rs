//! `sluice produce TOPIC`: one record per line of standard input.
//!
//! Lines are bytes (not necessarily UTF-8) without their `\n` (and a `\r` before it). With
//! `--key-separator SEP` a line is split at the first SEP into key and value; a line without
//! SEP has no key. Standard input is read in chunks on the runtime's blocking thread, one
//! chunk ahead of the producer, so reading never stalls the executor and memory stays
//! bounded (one chunk plus the producer's buffer). Exits 1 when any record was not
//! acknowledged, after every record was tried.

use std::io::{BufRead, BufReader, Read};

use anyhow::{Context, bail};
use bytes::Bytes;
use sluice_engine::batch::Compression;
use sluice_engine::rt;
use sluice_net::client::{Acks, Producer, ProducerConfig, ProducerRecord};

use super::{ConnectArgs, TopicLookup, run};

/// Lines read from standard input per chunk, at most.
const CHUNK_LINES_MAX: usize = 4096;
/// Bytes read from standard input per chunk, about (a chunk ends at the line that crosses it).
const CHUNK_BYTES_MAX: usize = 1 << 20;

/// Flags of `sluice produce`.
#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    /// Topic to produce to
    pub topic: String,
    /// Acknowledgement: 0 (none), 1 (leader), all (every in-sync replica, on disk)
    #[arg(long, default_value = "all", value_parser = parse_acks)]
    pub acks: Acks,
    /// Batch compression
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    pub compression: Compression,
    /// Split each line at the first SEP into key and value
    #[arg(long, value_name = "SEP", value_parser = parse_separator)]
    pub key_separator: Option<String>,
    /// Partition for every record [default: by key hash, sticky for lines without a key]
    #[arg(long, value_name = "P")]
    pub partition: Option<i32>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

fn parse_acks(text: &str) -> Result<Acks, String> {
    Acks::from_name(text).ok_or_else(|| format!("expected 0, 1 or all, got {text:?}"))
}

fn parse_compression(text: &str) -> Result<Compression, String> {
    Compression::from_name(text)
        .ok_or_else(|| format!("expected none, gzip, snappy, lz4 or zstd, got {text:?}"))
}

fn parse_separator(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the separator must not be empty".to_owned());
    }
    Ok(text.to_owned())
}

/// Runs `sluice produce`.
pub fn main(args: ProduceArgs) -> anyhow::Result<()> {
    run(produce(args, Box::new(std::io::stdin())))
}

async fn produce(args: ProduceArgs, input: Box<dyn Read + Send>) -> anyhow::Result<()> {
    let client = args.connect.connect(TopicLookup::MayCreate).await?;
    let topic = args.topic.as_str();
    // Fail before reading any input when the records could not go anywhere.
    let partitions = client
        .partition_count(topic)
        .await
        .with_context(|| format!("cannot produce to topic {topic}"))?;
    if let Some(partition) = args.partition
        && !(0..partitions).contains(&partition)
    {
        bail!("topic {topic} has no partition {partition} (it has {partitions})");
    }
    let config = ProducerConfig {
        acks: args.acks,
        compression: args.compression,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&client, config).context("cannot start the producer")?;
    let topic: std::sync::Arc<str> = topic.into();
    let separator = args.key_separator.as_deref().map(str::as_bytes);
    let mut reader = BufReader::with_capacity(64 << 10, input);
    let mut count: u64 = 0;
    let mut chunk;
    (reader, chunk) = read_chunk_blocking(reader).await;
    loop {
        let lines = chunk.context("cannot read standard input")?;
        if lines.is_empty() {
            break;
        }
        // Read the next chunk while this one is produced.
        let next = rt::spawn(read_chunk_blocking(reader));
        for line in lines {
            let (key, value) = split_line(line, separator);
            let mut record = ProducerRecord::new(std::sync::Arc::clone(&topic), value);
            record.key = key;
            record.partition = args.partition;
            producer.ready().await;
            if let Err(error) = producer.send_and_forget(record) {
                // Deliver what was accepted before reporting.
                let _ = producer.flush().await;
                return Err(error).with_context(|| format!("record {} not sent", count + 1));
            }
            count += 1;
        }
        (reader, chunk) = next.await;
    }
    producer
        .flush()
        .await
        .with_context(|| format!("not every record of {count} was acknowledged"))?;
    tracing::debug!(count, "produced");
    client.close().await;
    Ok(())
}

type Chunk = std::io::Result<Vec<Bytes>>;

/// Reads the next chunk of lines on the runtime's blocking thread; an empty chunk is the end.
async fn read_chunk_blocking<R: Read + Send + 'static>(
    mut reader: BufReader<R>,
) -> (BufReader<R>, Chunk) {
    rt::spawn_blocking(move || {
        let chunk = read_chunk(&mut reader);
        (reader, chunk)
    })
    .await
}

fn read_chunk(reader: &mut impl BufRead) -> Chunk {
    let mut lines = Vec::new();
    let mut bytes = 0;
    while lines.len() < CHUNK_LINES_MAX && bytes < CHUNK_BYTES_MAX {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        bytes += line.len();
        lines.push(Bytes::from(line));
    }
    Ok(lines)
}

/// Splits a line into key and value at the first separator.
fn split_line(line: Bytes, separator: Option<&[u8]>) -> (Option<Bytes>, Bytes) {
    let Some(separator) = separator else {
        return (None, line);
    };
    match line
        .windows(separator.len())
        .position(|window| window == separator)
    {
        Some(at) => (Some(line.slice(..at)), line.slice(at + separator.len()..)),
        None => (None, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: lines lose their line ending only, CRLF included, and a last line without one is
    // kept. Method: read a small input in one chunk.
    #[test]
    fn lines() {
        let mut input = BufReader::new(&b"a\r\nb\n\nlast"[..]);
        let lines = read_chunk(&mut input).expect("in memory");
        let expected: Vec<&[u8]> = vec![b"a", b"b", b"", b"last"];
        assert_eq!(lines, expected);
        assert!(read_chunk(&mut input).expect("in memory").is_empty());
    }

    // Goal: keys split at the first separator, which may be several bytes.
    #[test]
    fn keys() {
        let line = Bytes::from_static(b"k::v::w");
        assert_eq!(
            split_line(line.clone(), Some(b"::")),
            (Some(Bytes::from_static(b"k")), Bytes::from_static(b"v::w"))
        );
        assert_eq!(split_line(line.clone(), Some(b"|")), (None, line.clone()));
        assert_eq!(split_line(line.clone(), None), (None, line));
        assert_eq!(
            split_line(Bytes::from_static(b":v"), Some(b":")),
            (Some(Bytes::new()), Bytes::from_static(b"v"))
        );
    }

    // Goal: flag values are checked by the parser (usage errors, exit code 2).
    #[test]
    fn flag_values() {
        assert_eq!(parse_acks("all"), Ok(Acks::All));
        assert_eq!(parse_acks("0"), Ok(Acks::None));
        assert!(parse_acks("2").is_err());
        assert_eq!(parse_compression("zstd"), Ok(Compression::Zstd));
        assert!(parse_compression("brotli").is_err());
        assert!(parse_separator("").is_err());
    }
}
