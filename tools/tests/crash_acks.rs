//! Durability of acknowledged writes across `kill -9`, through the native client library and a
//! real `sluice broker` process (see `support`): every record the broker acknowledged with
//! acks=all is readable after a restart on the same data directory, at its acknowledged offset,
//! with the key, value, headers and timestamp it was sent with.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use sluice_engine::TimestampMs;
use sluice_engine::rt;
use sluice_net::client::{
    Acks, Client, ClientConfig, ConsumerRecord, NewTopic, ProduceError, Producer, ProducerConfig,
    ProducerRecord, RecordMetadata,
};
use sluice_net::native::messages::OffsetQuery;
use support::{Broker, assert_same_record, read_records, run};

const TOPIC: &str = "crash-acks";
const PARTITIONS: i32 = 3;

/// Kill rounds: each produces until this many acknowledgements came, then kills the broker.
const ROUNDS: usize = 2;
const ACKS_BEFORE_KILL: usize = 3_000;

/// Records sent but not yet answered, kept while producing so sends are always in flight
/// when the kill comes.
const OUTSTANDING_MAX: usize = 2_000;

/// A client that gives up quickly on a dead broker: requests to a killed broker get no
/// answer at all (QUIC ignores ICMP), so they end only by this timeout.
async fn connect(broker: &Broker) -> Client {
    let config = ClientConfig {
        request_timeout: Duration::from_secs(2),
        retries: 2,
        ..ClientConfig::new([broker.brokers()])
    };
    Client::connect(config)
        .await
        .unwrap_or_else(|error| panic!("connect: {error}\nbroker log:\n{}", broker.log()))
}

/// Record `i` of round `round`: keyed, with headers (one null) and an explicit create time.
fn record(round: usize, i: usize) -> ProducerRecord {
    ProducerRecord::new(
        TOPIC,
        format!("r{round}-value-{i:08}-{}", "v".repeat(i % 97)),
    )
    .with_key(format!("key-{}", i % 101))
    .with_header("round", Some(Bytes::from(round.to_string())))
    .with_header("seq", Some(Bytes::from(i.to_string())))
    .with_header("nothing", None)
    .with_timestamp(TimestampMs(
        1_700_000_000_000 + (round * 1_000_000 + i) as i64,
    ))
}

/// What was acknowledged: (partition, offset) → the record sent.
type Acknowledged = HashMap<(i32, i64), ProducerRecord>;

/// Produces round `round` until `ACKS_BEFORE_KILL` acknowledgements came, SIGKILLs the broker
/// at once (more sends are in flight), then collects the answers still coming (acknowledged
/// just before the kill, or failed) and returns the acknowledged records.
async fn produce_then_kill(broker: &mut Broker, round: usize) -> Acknowledged {
    let client = connect(broker).await;
    if round == 0 {
        client
            .create_topic(NewTopic::new(TOPIC, PARTITIONS))
            .await
            .expect("create topic");
    }
    let config = ProducerConfig {
        acks: Acks::All,
        batch_size: 4 << 10,
        linger: Duration::from_millis(1),
        retries: 0,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&client, config).expect("producer");
    let mut pending = FuturesUnordered::new();
    let mut acknowledged = Acknowledged::new();
    let mut failed = 0usize;
    let mut sent = 0usize;
    // Bounded: each pass sends one record or takes one answer, and answers come (the broker
    // is alive until the kill); the test deadline catches a hang.
    while acknowledged.len() < ACKS_BEFORE_KILL {
        if pending.len() < OUTSTANDING_MAX {
            let ack = producer.send(record(round, sent));
            let i = sent;
            pending.push(async move { (i, ack.await) });
            sent += 1;
            // Let the driver and the answers run between sends.
            rt::yield_if_needed().await;
            continue;
        }
        let answer = pending.next().await.expect("answers pending");
        note(&mut acknowledged, &mut failed, round, answer);
    }
    assert!(!pending.is_empty(), "sends are in flight at the kill");
    broker.kill();
    let in_flight = pending.len();
    // Unsent records fail with Closed; sends in flight finish (their answers may have arrived
    // before the kill) or time out.
    drop(producer);
    while let Some(answer) = pending.next().await {
        note(&mut acknowledged, &mut failed, round, answer);
    }
    client.close().await;
    eprintln!(
        "round {round}: sent {sent}, {in_flight} in flight at the kill, {} acknowledged, \
         {failed} failed",
        acknowledged.len()
    );
    acknowledged
}

/// Books one answer: an acknowledgement under its (partition, offset), a failure counted.
fn note(
    acknowledged: &mut Acknowledged,
    failed: &mut usize,
    round: usize,
    (i, result): (usize, Result<RecordMetadata, ProduceError>),
) {
    match result {
        Ok(metadata) => {
            assert!(metadata.offset >= 0, "acks=all reports an offset");
            let previous =
                acknowledged.insert((metadata.partition, metadata.offset), record(round, i));
            assert!(previous.is_none(), "offset {metadata:?} acknowledged twice");
        }
        Err(_) => *failed += 1,
    }
}

/// Every record of `partition` from its log start to its high watermark.
async fn read_all(client: &Client, partition: i32) -> Vec<ConsumerRecord> {
    let end = client
        .list_offset(TOPIC, partition, OffsetQuery::Latest)
        .await
        .expect("high watermark")
        .offset;
    let count = usize::try_from(end).expect("a high watermark");
    read_records(client, &[(TOPIC, partition)], count).await.0
}

// Goal: no record acknowledged with acks=all is lost, moved or altered by a kill -9 of the
// broker, even when the kill comes right after the acknowledgements and with more sends in
// flight. Method: a real broker process; per round, the native producer (acks=all, small
// batches so there are many requests) sends keyed records with headers and create times and
// records every acknowledged (partition, offset) → record; as soon as 3000 are acknowledged
// the broker is SIGKILLed while up to 2000 sends are outstanding; the answers still arriving
// are collected, and the broker is restarted on the same data directory. After two rounds,
// every partition is read from the start: offsets are dense and every acknowledged record is
// at its offset with identical key, value, headers and timestamp.
#[test]
fn acknowledged_records_survive_kill_9() {
    let mut broker = Broker::start();
    let mut acknowledged = Acknowledged::new();
    for round in 0..ROUNDS {
        let acks = run(produce_then_kill(&mut broker, round));
        assert!(acks.len() >= ACKS_BEFORE_KILL, "round {round}");
        for (at, record) in acks {
            let previous = acknowledged.insert(at, record);
            assert!(
                previous.is_none(),
                "round {round} reused acknowledged offset {at:?}"
            );
        }
        broker.restart();
    }
    run(async {
        let client = connect(&broker).await;
        let mut checked = 0usize;
        for partition in 0..PARTITIONS {
            let records = read_all(&client, partition).await;
            for (index, got) in records.iter().enumerate() {
                assert_eq!(
                    got.offset, index as i64,
                    "partition {partition}: dense offsets"
                );
                let Some(want) = acknowledged.get(&(partition, got.offset)) else {
                    continue;
                };
                let at = format!("partition {partition} offset {}", got.offset);
                assert_same_record(&at, got, want);
                checked += 1;
            }
        }
        assert_eq!(
            checked,
            acknowledged.len(),
            "every acknowledged record is readable at its offset\nbroker log:\n{}",
            broker.log()
        );
        client.close().await;
    });
}
