//! Many partitions through a real `sluice broker` process (see `support`): a topic of 1,000
//! partitions survives a kill -9 right after `sluice topic create` returned (creation is
//! acknowledged only once every partition's files are durable), and a clean shutdown of that
//! many partitions leaves every one a valid clean-shutdown marker and serves everything again
//! after the restart. Creation and shutdown share their syncs across partitions
//! (`sluice_engine::io::sync_file_system`); these tests check the outcome, never the time.

mod support;

use std::time::Duration;

use futures::future::join_all;
use sluice_engine::TimestampMs;
use sluice_net::client::{Acks, Client, Producer, ProducerConfig, ProducerRecord};
use support::{Broker, assert_same_record, assert_success, connect, read_records, run};

const PARTITIONS: i32 = 1_000;

/// Far more than a clean shutdown of `PARTITIONS` partitions takes; only a hang reaches it.
const STOP_DEADLINE: Duration = Duration::from_secs(120);

fn record(topic: &str, partition: i32, round: usize) -> ProducerRecord {
    ProducerRecord::new(topic, format!("{topic}-{partition}-round-{round}"))
        .with_key(format!("key-{partition}"))
        .with_timestamp(TimestampMs(1_700_000_000_000 + i64::from(partition)))
        .with_partition(partition)
}

fn create(broker: &Broker, topic: &str) {
    assert_success(&broker.sluice(
        &[
            "topic",
            "create",
            topic,
            "--partitions",
            &PARTITIONS.to_string(),
        ],
        b"",
    ));
}

/// Sends one record of `round` to every partition with acks=all; each lands at offset `round`.
async fn produce_to_all(client: &Client, topic: &str, round: usize) {
    let config = ProducerConfig {
        acks: Acks::All,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, config).expect("producer");
    let sends = (0..PARTITIONS).map(|p| producer.send(record(topic, p, round)));
    for (p, result) in join_all(sends).await.into_iter().enumerate() {
        let metadata = result.unwrap_or_else(|error| panic!("partition {p}: {error}"));
        assert_eq!(metadata.partition, p as i32);
        assert_eq!(metadata.offset, round as i64, "partition {p}");
    }
}

/// Reads every partition from its start and checks it holds the records of rounds
/// `0..rounds`, in order.
async fn check_all(client: &Client, topic: &str, rounds: usize) {
    let partitions: Vec<(&str, i32)> = (0..PARTITIONS).map(|p| (topic, p)).collect();
    let count = PARTITIONS as usize * rounds;
    let (records, _consumer) = read_records(client, &partitions, count).await;
    assert_eq!(records.len(), count);
    for got in &records {
        let round = usize::try_from(got.offset).expect("offsets from 0");
        assert!(
            round < rounds,
            "offset {} of partition {}",
            got.offset,
            got.partition
        );
        let at = format!("partition {} offset {}", got.partition, got.offset);
        assert_same_record(&at, got, &record(topic, got.partition, round));
    }
}

// Goal: a topic creation that returned has every partition durable: a kill -9 right after it
// loses none, and each partition then takes and serves records.
// Method: `sluice topic create` of 1,000 partitions, SIGKILL the broker as soon as the command
// returns, check each partition's directory holds its active segment file, restart on the
// same data directory, produce one record to every partition (acks=all) and read all back.
#[test]
fn created_partitions_survive_kill_9() {
    const TOPIC: &str = "created-then-killed";
    let mut broker = Broker::start();
    create(&broker, TOPIC);
    broker.kill();
    for p in 0..PARTITIONS {
        let segment = broker
            .data_dir()
            .join(format!("{TOPIC}-{p}"))
            .join("00000000000000000000.log");
        assert!(segment.is_file(), "{} missing", segment.display());
    }
    broker.restart();
    run(async {
        let client = connect(&broker).await;
        produce_to_all(&client, TOPIC, 0).await;
        check_all(&client, TOPIC, 1).await;
        client.close().await;
    });
}

// Goal: a clean shutdown of many partitions leaves every one a valid clean-shutdown marker
// (written only after what it vouches for was durable) and the restarted broker serves every
// record, and takes more.
// Method: create 1,000 partitions, produce one record to each, SIGTERM and wait for the exit;
// check each partition directory's `clean_shutdown` starts with its magic (`SLCS`,
// engine/FORMAT.md §6); restart, read everything, produce a second round and read again.
#[test]
fn clean_shutdown_of_many_partitions_leaves_markers() {
    const TOPIC: &str = "closed-cleanly";
    let mut broker = Broker::start();
    create(&broker, TOPIC);
    run(async {
        let client = connect(&broker).await;
        produce_to_all(&client, TOPIC, 0).await;
        client.close().await;
    });
    broker.stop(STOP_DEADLINE);
    for p in 0..PARTITIONS {
        let marker = broker
            .data_dir()
            .join(format!("{TOPIC}-{p}"))
            .join("clean_shutdown");
        let bytes =
            std::fs::read(&marker).unwrap_or_else(|error| panic!("{}: {error}", marker.display()));
        assert_eq!(bytes.get(..4), Some(&b"SLCS"[..]), "{}", marker.display());
    }
    broker.restart();
    run(async {
        let client = connect(&broker).await;
        check_all(&client, TOPIC, 1).await;
        produce_to_all(&client, TOPIC, 1).await;
        check_all(&client, TOPIC, 2).await;
        client.close().await;
    });
}
