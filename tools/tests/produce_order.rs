//! Pipelined produce order on one native connection, against a real `sluice broker` process
//! (see `support`): the broker appends a connection's sequenced requests for a partition in
//! sequence order whatever order they arrive in, fails the ones behind a failed one, and the
//! native producer keeps every partition in send order with many requests in flight, across
//! failures (net/PROTOCOL.md, "Produce ordering").

mod support;

#[path = "../../net/tests/native_raw/mod.rs"]
mod native_raw;

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::{join, join_all};
use native_raw::{RawClient, assert_error, batch};
use sluice_net::client::{
    Acks, Client, NewTopic, ProduceError, Producer, ProducerConfig, ProducerRecord,
};
use sluice_net::native::messages::{ErrorCode, ProduceSequence, Request, Response};
use sluice_net::native::stream::{read_frame, write_frame};
use support::{Broker, connect, read_records, run};

fn sequenced(topic: &str, sequence: u64, unanswered_from: u64) -> Request {
    Request::Produce {
        topic: topic.into(),
        partition: 0,
        acks: 1,
        sequence: Some(ProduceSequence {
            sequence,
            unanswered_from,
        }),
    }
}

/// Writes a whole produce frame on a new stream and returns the stream's receiving half.
async fn write(client: &RawClient, request: &Request, payload: Bytes) -> quinn::RecvStream {
    let (mut send, recv) = client.connection.open_bi().await.expect("open a stream");
    write_frame(&mut send, request, payload)
        .await
        .expect("write a request");
    recv
}

async fn answer(mut recv: quinn::RecvStream) -> Response {
    read_frame::<Response>(&mut recv)
        .await
        .expect("an answer")
        .header
}

fn base_offset(answer: &Response) -> i64 {
    match answer {
        Response::Produced { base_offset, .. } => *base_offset,
        other => panic!("expected Produced, got {other:?}"),
    }
}

// Goal: the broker appends sequenced requests in sequence order, not arrival order. Method:
// on one raw connection, write sequence 1 completely, then sequence 0 on a later stream;
// 0 must get offset 0 and 1 offset 1. Then a request without a sequence goes at once.
#[test]
fn sequence_order_beats_arrival_order() {
    let broker = Broker::start();
    run(async {
        let client = RawClient::connect(broker.quic).await;
        client.create_topic("order", 1, &[]).await;
        let second = write(&client, &sequenced("order", 1, 0), batch(&["b"])).await;
        let first = write(&client, &sequenced("order", 0, 0), batch(&["a"])).await;
        let (first, second) = join(answer(first), answer(second)).await;
        assert_eq!(base_offset(&first), 0, "sequence 0 first");
        assert_eq!(base_offset(&second), 1, "sequence 1 after it");
        let free = client.produce("order", 0, 1, batch(&["c"])).await;
        assert_eq!(base_offset(&free), 2, "an unsequenced request");
    });
}

// Goal: a failed request is never overtaken by one written while it was unanswered, and the
// client's resends (written after the failure was answered) go through; a missing
// predecessor fails its successor after the gap wait, naming it; impossible numbers are
// refused at once. Method: raw sequenced requests on one connection of a real broker.
#[test]
fn failures_are_not_overtaken() {
    let broker = Broker::start();
    run(async {
        let client = RawClient::connect(broker.quic).await;
        client.create_topic("cascade", 1, &[]).await;
        let mut corrupt = BytesMut::from(&batch(&["bad"])[..]);
        let last = corrupt.len() - 1;
        corrupt[last] ^= 0x01;
        let failing = write(&client, &sequenced("cascade", 0, 0), corrupt.freeze()).await;
        let behind = write(&client, &sequenced("cascade", 1, 0), batch(&["behind"])).await;
        let (failing, behind) = join(answer(failing), answer(behind)).await;
        assert_error(&failing, ErrorCode::CorruptMessage);
        let message = assert_error(&behind, ErrorCode::OutOfOrderSequence);
        assert!(message.contains("earlier request 0 failed"), "{message}");
        eprintln!("behind a failure: {message}");

        let resent = write(&client, &sequenced("cascade", 2, 2), batch(&["behind"])).await;
        assert_eq!(
            base_offset(&answer(resent).await),
            0,
            "the resend is appended"
        );

        // Sequence 3 is never sent: 4 waits for it, then fails naming it.
        let orphan = write(&client, &sequenced("cascade", 4, 3), batch(&["orphan"])).await;
        let message = assert_error(&answer(orphan).await, ErrorCode::OutOfOrderSequence);
        assert!(
            message.contains("earlier request 3 did not arrive"),
            "{message}"
        );
        eprintln!("gap: {message}");

        for (request, why) in [
            (sequenced("cascade", 2, 2), "already used"),
            (sequenced("cascade", 6, 7), "unanswered_from is after"),
            (sequenced("cascade", 1000, 5), "unanswered"),
        ] {
            let refused = write(&client, &request, batch(&["x"])).await;
            let message = assert_error(&answer(refused).await, ErrorCode::InvalidRequest);
            assert!(message.contains(why), "{message}");
        }
        let (latest, _) = client
            .call(&Request::ListOffset {
                topic: "cascade".into(),
                partition: 0,
                query: sluice_net::native::messages::OffsetQuery::Latest,
            })
            .await;
        assert_eq!(
            latest,
            Response::Offset {
                offset: 1,
                timestamp: -1
            },
            "only the resend was appended"
        );
    });
}

/// Value of record `i`: mostly small, every seventh large, so that requests of very
/// different sizes are in flight together and later small ones finish arriving first.
fn value(partition: i32, i: usize) -> Bytes {
    let size = if i % 7 == 3 { 32 << 10 } else { 40 };
    let mut value = format!("p{partition}-{i:06}-").into_bytes();
    value.resize(size, b'.');
    Bytes::from(value)
}

/// The sequence number a value starts with.
fn index_of(value: &[u8]) -> usize {
    let text = std::str::from_utf8(&value[..12]).expect("utf-8 prefix");
    text.split('-')
        .nth(1)
        .expect("index")
        .parse()
        .expect("number")
}

/// Every record of `topic`-`partition`, `count` of them, as (offset, value).
async fn read(client: &Client, topic: &str, partition: i32, count: usize) -> Vec<(i64, Bytes)> {
    let (records, _) = read_records(client, &[(topic, partition)], count).await;
    records
        .into_iter()
        .map(|r| (r.offset, r.value.expect("a value")))
        .collect()
}

// Goal: with many requests in flight per partition (the default five, and 32), each
// partition holds its records in send order at the offsets the producer reported. Method:
// a real broker; 4 partitions; small batches without linger, so every few records make a
// request, with large records mixed in; read each partition back and compare.
#[test]
fn many_in_flight_keep_order() {
    let broker = Broker::start();
    run(async {
        let client = connect(&broker).await;
        for in_flight_max in [ProducerConfig::default().in_flight_max, 32] {
            let topic = format!("pipelined-{in_flight_max}");
            client
                .create_topic(NewTopic::new(topic.clone(), 4))
                .await
                .expect("create topic");
            let config = ProducerConfig {
                acks: Acks::All,
                batch_size: 2 << 10,
                linger: Duration::ZERO,
                in_flight_max,
                ..ProducerConfig::default()
            };
            let producer = Producer::new(&client, config).expect("producer");
            const PER_PARTITION: usize = 1_000;
            let mut acks = Vec::new();
            for i in 0..PER_PARTITION {
                for partition in 0..4 {
                    let record = ProducerRecord::new(topic.clone(), value(partition, i))
                        .with_partition(partition);
                    acks.push((partition, i, producer.send(record)));
                }
            }
            producer.flush().await.expect("flush");
            let mut reported: HashMap<(i32, usize), i64> = HashMap::new();
            for (partition, i, ack) in acks {
                let metadata = ack.await.unwrap_or_else(|error| panic!("{topic}: {error}"));
                reported.insert((partition, i), metadata.offset);
            }
            for partition in 0..4 {
                let records = read(&client, &topic, partition, PER_PARTITION).await;
                for (index, (offset, value)) in records.iter().enumerate() {
                    assert_eq!(*offset, index as i64, "{topic}-{partition}: dense offsets");
                    let i = index_of(value);
                    assert_eq!(
                        i, index,
                        "{topic}-{partition}: record {i} at offset {offset}"
                    );
                    assert_eq!(
                        reported[&(partition, i)],
                        *offset,
                        "{topic}-{partition}: ack"
                    );
                }
            }
        }
    });
}

// Goal: the producer keeps order across failures with many requests in flight: records the
// broker refuses (over the topic's max.message.bytes) fail alone, the requests in flight
// behind them are failed by the broker and resent, and every other record lands in send
// order. Method: a topic with max.message.bytes 64 KiB; every 50th record is 80 KiB; 16
// requests in flight; compare the partition with the records that succeeded.
#[test]
fn order_holds_across_failures() {
    let broker = Broker::start();
    run(async {
        let client = connect(&broker).await;
        client
            .create_topic(NewTopic::new("refusing", 1).config("max.message.bytes", "65536"))
            .await
            .expect("create topic");
        let config = ProducerConfig {
            acks: Acks::Leader,
            batch_size: 4 << 10,
            linger: Duration::ZERO,
            in_flight_max: 16,
            ..ProducerConfig::default()
        };
        let producer = Producer::new(&client, config).expect("producer");
        const RECORDS: usize = 1_500;
        let acks: Vec<_> = (0..RECORDS)
            .map(|i| {
                let mut value = format!("r-{i:06}-").into_bytes();
                value.resize(if i % 50 == 49 { 80 << 10 } else { 30 }, b'.');
                producer.send(ProducerRecord::new("refusing", value).with_partition(0))
            })
            .collect();
        let mut kept = Vec::new();
        let mut refused = 0;
        for (i, ack) in join_all(acks).await.into_iter().enumerate() {
            match ack {
                Ok(metadata) => kept.push((i, metadata.offset)),
                Err(ProduceError::Send { source, .. })
                    if source.code() == Some(ErrorCode::MessageTooLarge) =>
                {
                    assert_eq!(i % 50, 49, "record {i} refused: {source}");
                    refused += 1;
                }
                Err(error) => panic!("record {i}: {error}"),
            }
        }
        assert_eq!(refused, RECORDS / 50, "every large record refused");
        let records = read(&client, "refusing", 0, kept.len()).await;
        for ((offset, value), (i, reported)) in records.iter().zip(&kept) {
            let text = std::str::from_utf8(&value[..8]).expect("utf-8 prefix");
            assert_eq!(text, format!("r-{i:06}"), "offset {offset}: send order");
            assert_eq!(offset, reported, "record {i}: reported offset");
        }
    });
}
