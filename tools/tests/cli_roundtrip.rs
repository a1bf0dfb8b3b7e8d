//! The native client library and the `sluice` client commands against a real broker process
//! (`sluice broker --cores 1` on free loopback ports, see `support`).
//!
//! Covers: records produced through the library at every acks level and with every codec come
//! back per partition in order with identical keys, values, headers and timestamps; CLI
//! produce → consume with `--format`; seeks by timestamp; independent consumers; and bad input
//! (unknown topic, partition out of range, record over `max.message.bytes`, usage errors)
//! getting one clear error line while the broker keeps serving; stray partition directories
//! removed at start-up; a broker whose metadata file is lost (or not its own) refusing to
//! start instead of removing its data.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use sluice_engine::TimestampMs;
use sluice_engine::batch::Compression;
use sluice_net::client::{
    Acks, Client, Consumer, ConsumerConfig, ConsumerRecord, DefaultPartitioner, NewTopic,
    Partitioner, Producer, ProducerConfig, ProducerRecord, Seek,
};
use sluice_net::native::messages::ErrorCode;
use support::{
    Broker, assert_error, assert_same_record, assert_success, connect, read_records, run,
    run_with_input, sluice_bin,
};

/// Records per acks level and per codec in the round-trip test.
const ROUND_TRIP_RECORDS: usize = 100_000;

const PARTITIONS: i32 = 4;

/// The record number `i` of a round-trip run: keyed, with a header and an explicit time.
fn record(topic: &str, i: usize) -> ProducerRecord {
    ProducerRecord::new(topic, format!("value-{i:08}-{}", "x".repeat(i % 50)))
        .with_key(format!("key-{}", i % 1000))
        .with_header("seq", Some(Bytes::from(i.to_string())))
        .with_header("null", None)
        .with_timestamp(TimestampMs(1_700_000_000_000 + i as i64))
}

/// The records a partition must hold, in order, when `count` records were sent with keys.
fn expected_by_partition(topic: &str, count: usize) -> HashMap<i32, Vec<ProducerRecord>> {
    let partitioner = DefaultPartitioner::new();
    let mut expected: HashMap<i32, Vec<ProducerRecord>> = HashMap::new();
    for i in 0..count {
        let record = record(topic, i);
        let partition = partitioner.partition(record.key.as_deref(), PARTITIONS);
        expected.entry(partition).or_default().push(record);
    }
    expected
}

/// Reads partition `partition` from the beginning until `count` records came.
async fn read_partition(
    client: &Client,
    topic: &str,
    partition: i32,
    count: usize,
) -> Vec<ConsumerRecord> {
    let (records, consumer) = read_records(client, &[(topic, partition)], count).await;
    assert!(
        consumer
            .poll(Duration::from_millis(100))
            .await
            .expect("poll")
            .is_empty(),
        "{topic}-{partition}: more records than produced"
    );
    records
}

fn assert_same(topic: &str, partition: i32, consumed: &[ConsumerRecord], sent: &[ProducerRecord]) {
    assert_eq!(
        consumed.len(),
        sent.len(),
        "{topic}-{partition}: record count"
    );
    for (index, (got, want)) in consumed.iter().zip(sent).enumerate() {
        let at = format!("{topic}-{partition} offset {}", got.offset);
        assert_eq!(got.offset, index as i64, "{at}: offsets dense from 0");
        assert_same_record(&at, got, want);
    }
}

// Goal: every acks level and every codec delivers 100k keyed records that come back per
// partition in send order, with identical keys, values, headers and timestamps, and (with
// acks 1 and all) the offsets the producer reported.
// Method: one topic of 4 partitions per case; produce through the library with pipelining,
// then read each partition from the beginning with its own consumer and compare with the
// records the partitioner routed to it.
#[test]
fn library_round_trip_every_acks_and_codec() {
    let broker = Broker::start();
    run(async {
        let client = connect(&broker).await;
        let mut cases: Vec<(String, Acks, Compression)> = [Acks::None, Acks::Leader, Acks::All]
            .into_iter()
            .map(|acks| (format!("acks-{}", acks.wire()), acks, Compression::None))
            .collect();
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            cases.push((
                format!("codec-{codec:?}").to_lowercase(),
                Acks::Leader,
                codec,
            ));
        }
        for (topic, acks, compression) in cases {
            client
                .create_topic(NewTopic::new(topic.clone(), PARTITIONS))
                .await
                .unwrap_or_else(|error| panic!("create {topic}: {error}"));
            let config = ProducerConfig {
                acks,
                compression,
                batch_size: 64 << 10,
                ..ProducerConfig::default()
            };
            let producer = Producer::new(&client, config).expect("producer");
            let mut reported = Vec::new();
            for i in 0..ROUND_TRIP_RECORDS {
                let ack = producer.send(record(&topic, i));
                if acks != Acks::None && i % 997 == 0 {
                    reported.push((i, ack));
                }
            }
            producer
                .flush()
                .await
                .unwrap_or_else(|error| panic!("{topic}: {error}"));
            let expected = expected_by_partition(&topic, ROUND_TRIP_RECORDS);
            for (i, ack) in reported {
                let metadata = ack.await.unwrap_or_else(|error| panic!("{topic}: {error}"));
                let position = expected[&metadata.partition]
                    .iter()
                    .position(|r| r.value == record(&topic, i).value)
                    .expect("sent record is expected");
                assert_eq!(metadata.offset, position as i64, "{topic} record {i}");
            }
            for (partition, sent) in &expected {
                let consumed = read_partition(&client, &topic, *partition, sent.len()).await;
                assert_same(&topic, *partition, &consumed, sent);
            }
        }
    });
}

// Goal: the CLI produces one record per stdin line (keys split at --key-separator) and
// consumes them back with --format, per partition in input order, honouring --partition,
// --from, --count, --timeout-ms and SLUICE_BROKERS.
// Method: pipe 1000 lines through `sluice produce`, read them with `sluice consume` in
// several ways, and compare with the input and the partitioner.
#[test]
fn cli_produce_then_consume() {
    let broker = Broker::start();
    let created = broker.sluice(&["topic", "create", "lines", "--partitions", "2"], b"");
    assert_eq!(assert_success(&created).trim(), "created topic lines");
    let input: String = (0..1000)
        .map(|i| format!("k{}|line {i}\n", i % 10))
        .collect();
    let produced = broker.sluice(
        &["produce", "lines", "--key-separator", "|"],
        input.as_bytes(),
    );
    assert_success(&produced);

    let consumed = broker.sluice(
        &[
            "consume",
            "lines",
            "--count",
            "1000",
            "--format",
            "%p;%o;%k;%s;%T\\n",
        ],
        b"",
    );
    let stdout = assert_success(&consumed);
    let partitioner = DefaultPartitioner::new();
    let mut per_partition: HashMap<i32, Vec<(i64, String, String)>> = HashMap::new();
    for line in stdout.lines() {
        let fields: Vec<&str> = line.split(';').collect();
        assert_eq!(fields.len(), 5, "{line}");
        let partition: i32 = fields[0].parse().expect("partition");
        let offset: i64 = fields[1].parse().expect("offset");
        assert!(fields[4].parse::<i64>().expect("timestamp") > 0, "{line}");
        assert_eq!(
            partitioner.partition(Some(fields[2].as_bytes()), 2),
            partition,
            "key {} on the partition its hash picks",
            fields[2]
        );
        per_partition.entry(partition).or_default().push((
            offset,
            fields[2].to_owned(),
            fields[3].to_owned(),
        ));
    }
    assert_eq!(per_partition.values().map(Vec::len).sum::<usize>(), 1000);
    for (partition, records) in &per_partition {
        let offsets: Vec<i64> = records.iter().map(|r| r.0).collect();
        assert_eq!(offsets, (0..records.len() as i64).collect::<Vec<_>>());
        let expected: Vec<(String, String)> = (0..1000)
            .map(|i| (format!("k{}", i % 10), format!("line {i}")))
            .filter(|(k, _)| partitioner.partition(Some(k.as_bytes()), 2) == *partition)
            .collect();
        let got: Vec<(String, String)> =
            records.iter().map(|r| (r.1.clone(), r.2.clone())).collect();
        assert_eq!(got, expected, "partition {partition} in input order");
    }

    let from_offset = broker.sluice(
        &[
            "consume",
            "lines",
            "--partition",
            "1",
            "--from",
            "3",
            "--count",
            "2",
            "--format",
            "%o\\n",
        ],
        b"",
    );
    assert_eq!(assert_success(&from_offset), "3\n4\n");

    // No --count: ends once nothing new came for --timeout-ms; the default prints values.
    let mut command = Command::new(sluice_bin());
    command
        .args(["consume", "lines", "--timeout-ms", "500"])
        .env("SLUICE_BROKERS", broker.brokers());
    let all = assert_success(&run_with_input(command, b""));
    assert_eq!(all.lines().count(), 1000);
    assert!(all.lines().all(|l| l.starts_with("line ")), "values only");

    // Producing to a topic that does not exist creates it (the broker auto-creates topics
    // by default, as Kafka does); reading one that does not exist does not.
    assert_success(&broker.sluice(&["produce", "fresh"], b"first\n"));
    let list = assert_success(&broker.sluice(&["topic", "list"], b""));
    assert!(list.lines().any(|l| l == "fresh"), "{list}");
    let output = broker.sluice(&["consume", "fresh", "--count", "1"], b"");
    assert_eq!(assert_success(&output), "first\n");
    assert_error(
        &broker.sluice(&["consume", "absent"], b""),
        1,
        "unknown topic absent",
    );
    let list = assert_success(&broker.sluice(&["topic", "list"], b""));
    assert!(!list.lines().any(|l| l == "absent"), "{list}");

    // --from end prints nothing that was there before.
    let end = broker.sluice(
        &["consume", "lines", "--from", "end", "--timeout-ms", "200"],
        b"",
    );
    assert_eq!(assert_success(&end), "");
}

// Goal: a consumer seeks by timestamp to the first record at or after the time, through the
// library and with `--from @UNIX_MS`; a time after every record means the end.
// Method: 100 records 10 ms apart on one partition; seek to the 51st record's time.
#[test]
fn seek_by_timestamp() {
    let broker = Broker::start();
    let base = 1_700_000_000_000i64;
    run(async {
        let client = connect(&broker).await;
        client
            .create_topic(NewTopic::new("times", 1))
            .await
            .expect("create");
        let producer = Producer::new(&client, ProducerConfig::default()).expect("producer");
        for i in 0..100 {
            let record = ProducerRecord::new("times", format!("t{i}"))
                .with_timestamp(TimestampMs(base + 10 * i));
            producer.send_and_forget(record).expect("room");
        }
        producer.flush().await.expect("acknowledged");
        let consumer = Consumer::new(&client, ConsumerConfig::default());
        consumer.assign(&[("times", 0)]);
        consumer
            .seek("times", 0, Seek::Timestamp(TimestampMs(base + 495)))
            .expect("seek");
        assert_eq!(consumer.position("times", 0).await.expect("position"), 50);
        let records = consumer.poll(Duration::from_secs(30)).await.expect("poll");
        assert_eq!(records.first().map(|r| r.offset), Some(50));
        assert_eq!(
            records.first().map(|r| r.timestamp),
            Some(TimestampMs(base + 500))
        );
        consumer
            .seek("times", 0, Seek::Timestamp(TimestampMs(base + 10_000)))
            .expect("seek");
        assert_eq!(consumer.position("times", 0).await.expect("position"), 100);
    });
    let at = format!("@{}", base + 500);
    let output = broker.sluice(
        &[
            "consume",
            "times",
            "--from",
            &at,
            "--count",
            "2",
            "--format",
            "%o %T %s\\n",
        ],
        b"",
    );
    assert_eq!(
        assert_success(&output),
        format!("50 {} t50\n51 {} t51\n", base + 500, base + 510)
    );
}

// Goal: consumers are independent: two read the same partitions completely, each at its own
// pace, and a third that starts at the end sees only records produced after it started,
// delivered by its long poll.
// Method: produce, read with two consumers, then tail with a third while producing more.
#[test]
fn independent_consumers() {
    let broker = Broker::start();
    run(async {
        let client = connect(&broker).await;
        client
            .create_topic(NewTopic::new("shared", 2))
            .await
            .expect("create");
        let producer = Producer::new(&client, ProducerConfig::default()).expect("producer");
        for i in 0..500 {
            producer
                .send_and_forget(record("shared", i).with_partition((i % 2) as i32))
                .expect("room");
        }
        producer.flush().await.expect("acknowledged");
        let first = Consumer::new(&client, ConsumerConfig::default());
        let second = Consumer::new(
            &client,
            ConsumerConfig {
                poll_records_max: 7,
                ..ConsumerConfig::default()
            },
        );
        for consumer in [&first, &second] {
            consumer.assign(&[("shared", 0), ("shared", 1)]);
        }
        let mut counts = [0usize; 2];
        while counts[0] < 500 || counts[1] < 500 {
            for (index, consumer) in [&first, &second].into_iter().enumerate() {
                if counts[index] < 500 {
                    counts[index] += consumer
                        .poll(Duration::from_secs(30))
                        .await
                        .expect("poll")
                        .len();
                }
            }
        }
        assert_eq!(counts, [500, 500]);

        let tail = Consumer::new(
            &client,
            ConsumerConfig {
                start: Seek::End,
                ..ConsumerConfig::default()
            },
        );
        tail.assign(&[("shared", 1)]);
        assert_eq!(tail.position("shared", 1).await.expect("position"), 250);
        let sent = producer.send(ProducerRecord::new("shared", "late").with_partition(1));
        let metadata = sent.await.expect("acknowledged");
        assert_eq!(metadata.offset, 250);
        let mut got = Vec::new();
        while got.is_empty() {
            got = tail.poll(Duration::from_secs(30)).await.expect("poll");
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].value.as_deref(), Some(&b"late"[..]));
    });
}

// Goal: bad input gets one clear error line (exit 1) or a usage error (exit 2), through the
// CLI and the library, and the broker keeps serving afterwards.
// Method: on a broker that does not auto-create topics: unknown topics, a partition out of
// range, a record over the topic's max.message.bytes, a duplicate topic and malformed flags;
// then a normal round trip.
#[test]
fn bad_input_gets_clear_errors() {
    let broker = Broker::start_with(&["--auto-create-topics", "false"]);
    assert_error(
        &broker.sluice(&["consume", "nope", "--count", "1"], b""),
        1,
        "unknown topic nope",
    );
    assert_error(
        &broker.sluice(&["produce", "nope"], b"x\n"),
        1,
        "unknown topic nope",
    );
    let created = broker.sluice(
        &[
            "topic",
            "create",
            "small",
            "--partitions",
            "2",
            "-c",
            "max.message.bytes=1024",
        ],
        b"",
    );
    assert_success(&created);
    assert_error(
        &broker.sluice(&["topic", "create", "small"], b""),
        1,
        "TopicExists",
    );
    assert_error(
        &broker.sluice(&["consume", "small", "--partition", "7"], b""),
        1,
        "topic small has no partition 7 (it has 2)",
    );
    assert_error(
        &broker.sluice(&["produce", "small", "--partition", "7"], b"x\n"),
        1,
        "has no partition 7",
    );
    let big_line = format!("{}\n", "y".repeat(4000));
    assert_error(
        &broker.sluice(
            &["produce", "small", "--partition", "0"],
            big_line.as_bytes(),
        ),
        1,
        "MessageTooLarge",
    );
    assert_error(
        &broker.sluice(&["consume", "small", "--from", "yesterday"], b""),
        2,
        "--from",
    );
    assert_error(
        &broker.sluice(&["produce", "small", "--acks", "2"], b""),
        2,
        "--acks",
    );
    assert_error(
        &broker.sluice(&["consume", "small", "--format", "%x"], b""),
        2,
        "%x",
    );
    assert_error(
        &broker.sluice(&["topic", "create", "t", "-c", "novalue"], b""),
        2,
        "KEY=VALUE",
    );

    run(async {
        let client = connect(&broker).await;
        let producer = Producer::new(&client, ProducerConfig::default()).expect("producer");
        let error = producer
            .send(ProducerRecord::new("small", vec![0u8; 4000]).with_partition(1))
            .await
            .expect_err("over max.message.bytes");
        assert_eq!(error.code(), Some(ErrorCode::MessageTooLarge), "{error}");
        let error = producer
            .send(ProducerRecord::new("small", "x").with_partition(2))
            .await
            .expect_err("no partition 2");
        assert!(error.to_string().contains("has no partition 2"), "{error}");
        let error = producer
            .send(ProducerRecord::new("missing", "x"))
            .await
            .expect_err("no such topic");
        assert!(
            error.to_string().contains("unknown topic missing"),
            "{error}"
        );
        // The broker still serves this connection and others.
        let metadata = producer
            .send(ProducerRecord::new("small", "fine").with_partition(1))
            .await
            .expect("a good record after bad ones");
        assert_eq!(metadata.offset, 0);
    });
    let output = broker.sluice(
        &["consume", "small", "--partition", "1", "--count", "1"],
        b"",
    );
    assert_eq!(assert_success(&output), "fine\n");
}

// Goal: the topic admin commands do what they say and print what scripts can parse.
// Method: create with a config, list, describe, alter, describe again, delete, list.
#[test]
fn topic_commands() {
    let broker = Broker::start();
    let created = broker.sluice(
        &[
            "topic",
            "create",
            "admin",
            "--partitions",
            "3",
            "--replicas",
            "1",
            "-c",
            "retention.ms=3600000",
        ],
        b"",
    );
    assert_success(&created);
    let list = assert_success(&broker.sluice(&["topic", "list"], b""));
    assert!(list.lines().any(|l| l == "admin"), "{list}");
    let described = assert_success(&broker.sluice(&["topic", "describe", "admin"], b""));
    assert!(
        described.starts_with("Topic: admin\tPartitions: 3\tReplicationFactor: 1\n"),
        "{described}"
    );
    for partition in 0..3 {
        let line = format!("\tPartition: {partition}\tShard: 0\tLeader: ");
        assert!(described.contains(&line), "{described}");
    }
    assert!(
        described.contains("LogStartOffset: 0\tLogEndOffset: 0"),
        "{described}"
    );
    assert!(
        described.contains("\tretention.ms=3600000 (override)\n"),
        "{described}"
    );
    let altered = broker.sluice(
        &["topic", "alter-config", "admin", "-c", "retention.ms=60000"],
        b"",
    );
    assert_success(&altered);
    let described = assert_success(&broker.sluice(&["topic", "describe", "admin"], b""));
    assert!(
        described.contains("\tretention.ms=60000 (override)\n"),
        "{described}"
    );
    assert_success(&broker.sluice(&["topic", "delete", "admin"], b""));
    let list = assert_success(&broker.sluice(&["topic", "list"], b""));
    assert!(!list.lines().any(|l| l == "admin"), "{list}");
    assert_error(
        &broker.sluice(&["topic", "describe", "admin"], b""),
        1,
        "admin",
    );
}

/// Reads a partition's log start offset from `sluice topic describe`.
fn log_start_offset(broker: &Broker, topic: &str) -> i64 {
    let described = assert_success(&broker.sluice(&["topic", "describe", topic], b""));
    let field = described
        .split('\t')
        .find_map(|field| field.strip_prefix("LogStartOffset: "))
        .unwrap_or_else(|| panic!("no log start offset in {described}"));
    field.trim().parse().expect("a number")
}

/// The base offsets of the segment files (`<base>.log`) of partition 0 of `topic`.
fn segment_bases(broker: &Broker, topic: &str) -> Vec<i64> {
    std::fs::read_dir(broker.data_dir().join(format!("{topic}-0")))
        .expect("partition directory")
        .filter_map(|entry| {
            let name = entry.expect("entry").file_name();
            let base = name.to_string_lossy().strip_suffix(".log")?.parse().ok()?;
            Some(base)
        })
        .collect()
}

// Goal: a running broker applies retention.bytes and retention.ms by itself (Kafka's
// log.retention.check.interval.ms), deleting whole old segments, advancing the log start
// offset, and serving the kept records from there.
// Method: a broker checking every 200 ms; two topics of 16 KiB segments; 400 records of ~400
// bytes in twenty batches to each; then retention.bytes of 48 KiB set on one and retention.ms of
// 1 s on the other (set after the records, so that one retention pass finds the whole log and
// the log start moves once, not again while the consumer reads); poll `topic describe`
// (bounded) until the log start moves, then check the segment files on disk and that a consumer
// from the beginning starts exactly there and reads every later record in order.
#[test]
fn retention_runs_in_the_broker() {
    let broker = Broker::start_with(&["--log-retention-check-interval-ms", "200"]);
    let value = "v".repeat(400);
    // Twenty `sluice produce` runs of twenty records: at least twenty batches, so that the
    // 16 KiB segments roll (one run's records would go in one batch, and a segment takes a
    // whole batch however large).
    let inputs: Vec<String> = (0..20)
        .map(|run| {
            (run * 20..run * 20 + 20)
                .map(|i| format!("{i:05}-{value}\n"))
                .collect()
        })
        .collect();
    for (topic, retention) in [
        ("bysize", "retention.bytes=49152"),
        ("bytime", "retention.ms=1000"),
    ] {
        assert_success(&broker.sluice(
            &[
                "topic",
                "create",
                topic,
                "--partitions",
                "1",
                "-c",
                "segment.bytes=16384",
            ],
            b"",
        ));
        for input in &inputs {
            assert_success(&broker.sluice(&["produce", topic, "--acks", "all"], input.as_bytes()));
        }
        assert_success(&broker.sluice(&["topic", "alter-config", topic, "-c", retention], b""));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        // By size the log start moves once; by time it moves until only the active segment is
        // left, so wait for that (then nothing moves while the consumer reads). Retention
        // advances the log start, then removes the files below it: so the files are listed
        // first, and the log start read after them is settled once no file lies below it.
        let (start, kept) = loop {
            let bases = segment_bases(&broker, topic);
            let start = log_start_offset(&broker, topic);
            let settled = start > 0
                && bases.iter().all(|base| *base >= start)
                && (topic == "bysize" || bases.len() == 1);
            if settled {
                break (start, bases.len());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{topic}: retention never ran"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        // Twenty batches of ~8.4 KiB, at most two to a 16 KiB segment, fill ten or more;
        // retention leaves fewer.
        assert!(kept < 10, "{topic}: {kept} segments kept");
        if topic == "bysize" {
            // At least retention.bytes stays: about 117 records of 420 bytes.
            assert!(400 - start >= 49152 / 420, "{topic}: only {start}.. kept");
        }
        let consumed = assert_success(&broker.sluice(
            &[
                "consume",
                topic,
                "--from",
                "beginning",
                "--timeout-ms",
                "1000",
                "--format",
                "%o %s\n",
            ],
            b"",
        ));
        let offsets: Vec<i64> = consumed
            .lines()
            .map(|line| {
                let offset = line.split(' ').next().expect("an offset");
                offset.parse().expect("a number")
            })
            .collect();
        assert_eq!(
            offsets,
            (start..400).collect::<Vec<_>>(),
            "{topic}: the consumer reads from the log start to the end"
        );
    }
}

// Goal: a broker whose shards poll instead of sleeping (--idle-poll-us) serves produce and
// consume as usual, and the flag is checked.
// Method: start one with --idle-poll-us 500, round-trip 100 records through the CLI in order;
// a non-numeric value is a usage error.
#[test]
fn a_polling_broker_serves() {
    let broker = Broker::start_with(&["--idle-poll-us", "500"]);
    assert_success(&broker.sluice(&["topic", "create", "polled", "--partitions", "1"], b""));
    let input: String = (0..100).map(|i| format!("record-{i}\n")).collect();
    assert_success(&broker.sluice(&["produce", "polled", "--acks", "all"], input.as_bytes()));
    let consumed = assert_success(&broker.sluice(
        &["consume", "polled", "--from", "beginning", "--count", "100"],
        b"",
    ));
    assert_eq!(consumed, input);
    let mut command = Command::new(sluice_bin());
    command.args(["broker", "--idle-poll-us", "soon"]);
    assert_error(&run_with_input(command, b""), 2, "idle-poll-us");
}

/// A broker with a one-partition topic `kept` of ten records (acks=all), and the records as
/// `sluice consume` prints them.
fn broker_with_kept_records() -> (Broker, String) {
    let broker = Broker::start();
    assert_success(&broker.sluice(&["topic", "create", "kept", "--partitions", "1"], b""));
    let input: String = (0..10).map(|i| format!("record-{i}\n")).collect();
    assert_success(&broker.sluice(&["produce", "kept", "--acks", "all"], input.as_bytes()));
    (broker, input)
}

/// The ten records of `kept`, from the beginning.
fn read_kept(broker: &Broker) -> String {
    assert_success(&broker.sluice(
        &["consume", "kept", "--from", "beginning", "--count", "10"],
        b"",
    ))
}

// Goal: at start-up a broker removes the partition directories no partition of its metadata
// names (a deleted topic's left behind, say by a kill -9 after the deletion was durable; a
// partition number the topic does not have), keeps its other directories, and the live
// topic's records still read back.
// Method: create a one-partition topic and produce; stop the broker; copy the partition's
// directory as `gone-0` naming a topic id no topic has in `partition.metadata`, and as
// `kept-5` (a partition `kept` does not have); restart (the sweep runs before the broker
// reports healthy); check the copies are gone, the rest is there, and consume the records.
#[test]
fn stray_partition_directories_are_removed_at_start() {
    let (mut broker, input) = broker_with_kept_records();
    broker.stop(Duration::from_secs(30));
    let data = broker.data_dir();
    let live = data.join("kept-0");
    for stray in ["gone-0", "kept-5"] {
        let dir = data.join(stray);
        std::fs::create_dir(&dir).expect("plant a stray");
        for entry in std::fs::read_dir(&live).expect("partition directory") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy a file");
        }
    }
    let deleted = "version: 0\ntopic_id: 00000000-0000-0000-0000-000000000009\n";
    std::fs::write(data.join("gone-0").join("partition.metadata"), deleted).expect("id file");
    let before: Vec<String> = std::fs::read_dir(&data)
        .expect("data directory")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();

    broker.restart();
    for stray in ["gone-0", "kept-5"] {
        assert!(!data.join(stray).exists(), "{stray} not removed");
    }
    for name in before
        .iter()
        .filter(|name| !["gone-0", "kept-5"].contains(&name.as_str()))
    {
        assert!(data.join(name).exists(), "{name} removed");
    }
    assert_eq!(read_kept(&broker), input);
}

/// Every file under `dir` (relative path, length, modification time), sorted: what a
/// refused start must leave as it was.
fn files_under(dir: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).expect("list a directory") {
            let entry = entry.expect("entry");
            let metadata = entry.metadata().expect("file metadata");
            if metadata.is_dir() {
                pending.push(entry.path());
                continue;
            }
            let path = entry.path();
            let relative = path.strip_prefix(dir).expect("under dir");
            files.push((
                relative.display().to_string(),
                metadata.len(),
                metadata.modified().expect("mtime"),
            ));
        }
    }
    files.sort();
    files
}

// Goal: a broker whose metadata file is lost refuses to start, naming the missing file, the
// cluster id in `meta.properties` and what to do, and leaves the data directory untouched;
// with the file back it starts and serves the records and the committed group offset. Before
// `meta.properties` such a start created new metadata with a new cluster id, re-created
// `__consumer_offsets` (and any auto-created topic) under new topic ids, and opening each
// partition removed the old directory as a deleted topic's: committed offsets and records
// silently gone. Also: a directory from before `meta.properties` (the file deleted) is
// adopted; partition directories with neither file are refused; another data directory's
// metadata file is refused with both cluster ids.
// Method: create a topic, produce 10 records, consume them in group `g` (committing offset
// 10), stop; move `__metadata` away and start: non-zero exit, the error, and every file
// under the data directory (the `__consumer_offsets-*` and `kept-0` partitions, their
// segments, `meta.properties`) unchanged in name, size and mtime; put it back, start,
// consume and describe the group. Then the adoption, neither-file and foreign-metadata
// cases, each followed by a normal start. Without the fix (broker.rs as before it) the test
// fails: no `meta.properties` is written; with that read made lenient, the lost-metadata start
// starts ("the broker started instead of refusing"), its log showing all 16
// `__consumer_offsets-*` directories removed as "the records of a deleted topic of the same
// name" (`kept-0` would follow once anything re-created `kept`).
#[test]
fn lost_metadata_refuses_to_start_and_keeps_the_data() {
    let (mut broker, input) = broker_with_kept_records();
    let grouped = ["consume", "kept", "--group", "g", "--count", "10"];
    assert_eq!(assert_success(&broker.sluice(&grouped, b"")), input);
    let committed = |broker: &Broker| {
        let described = assert_success(&broker.sluice(&["group", "describe", "g"], b""));
        described
            .lines()
            .any(|line| line.contains("Topic: kept") && line.contains("Committed: 10"))
    };
    assert!(committed(&broker), "offset 10 committed");
    broker.stop(Duration::from_secs(30));

    let data = broker.data_dir();
    let properties = data.join("meta.properties");
    let written = std::fs::read_to_string(&properties).expect("meta.properties written");
    let cluster_id = written
        .lines()
        .find_map(|line| line.strip_prefix("cluster.id="))
        .expect("cluster.id")
        .to_owned();
    assert!(written.contains("node.id=1\n"), "{written}");
    let metadata = data.join("__metadata");
    let saved = data.with_file_name("metadata-saved");
    let move_away = || std::fs::rename(&metadata, &saved).expect("move the metadata away");
    let put_back = || std::fs::rename(&saved, &metadata).expect("put the metadata back");

    // Lost metadata file.
    move_away();
    let before = files_under(&data);
    assert!(
        before
            .iter()
            .any(|f| f.0.starts_with("__consumer_offsets-")),
        "{before:?}"
    );
    assert!(
        before.iter().any(|f| f.0.starts_with("kept-0/")),
        "{before:?}"
    );
    let (status, log) = broker.restart_refused();
    assert!(!status.success(), "{status}: {log}");
    for needle in [
        "metadata.json is missing",
        "meta.properties",
        cluster_id.as_str(),
        "restore",
    ] {
        assert!(log.contains(needle), "{needle:?} not in: {log}");
    }
    assert_eq!(
        files_under(&data),
        before,
        "a refused start touched the data directory"
    );
    assert!(!metadata.exists(), "no new metadata");
    put_back();
    broker.restart();
    assert_eq!(read_kept(&broker), input);
    assert!(committed(&broker), "the committed offset survived");
    broker.stop(Duration::from_secs(30));

    // A data directory from before meta.properties is adopted.
    std::fs::remove_file(&properties).expect("remove meta.properties");
    broker.restart();
    broker.stop(Duration::from_secs(30));
    let adopted = std::fs::read_to_string(&properties).expect("meta.properties adopted");
    assert!(
        adopted.contains(&format!("cluster.id={cluster_id}\n")),
        "{adopted}"
    );

    // Partition directories but neither file: whose data it is cannot be told.
    move_away();
    std::fs::remove_file(&properties).expect("remove meta.properties");
    let before = files_under(&data);
    let (status, log) = broker.restart_refused();
    assert!(!status.success(), "{status}: {log}");
    assert!(log.contains("partition directories"), "{log}");
    assert_eq!(
        files_under(&data),
        before,
        "a refused start touched the data directory"
    );
    put_back();
    broker.restart();
    broker.stop(Duration::from_secs(30));

    // Another data directory's metadata file: both cluster ids named.
    let mut other = Broker::start();
    other.stop(Duration::from_secs(30));
    let other_file = other.data_dir().join("__metadata").join("metadata.json");
    let other_properties = std::fs::read_to_string(other.data_dir().join("meta.properties"))
        .expect("the other broker's meta.properties");
    let other_id = other_properties
        .lines()
        .find_map(|line| line.strip_prefix("cluster.id="))
        .expect("cluster.id");
    let own_file = metadata.join("metadata.json");
    let own = std::fs::read(&own_file).expect("own metadata");
    std::fs::copy(&other_file, &own_file).expect("plant the other metadata");
    let before = files_under(&data);
    let (status, log) = broker.restart_refused();
    assert!(!status.success(), "{status}: {log}");
    for needle in ["invalid cluster.id", cluster_id.as_str(), other_id] {
        assert!(log.contains(needle), "{needle:?} not in: {log}");
    }
    assert_eq!(
        files_under(&data),
        before,
        "a refused start touched the data directory"
    );
    std::fs::write(&own_file, own).expect("restore own metadata");
    broker.restart();
    assert_eq!(read_kept(&broker), input);
}
