//! The native protocol against a real `sluice broker` process (see `support`): bad input on raw
//! QUIC streams and failed handshakes get clear errors while a healthy client keeps producing
//! and consuming, declared frame lengths do not turn into memory, and `--quic-advertise` is
//! what metadata tells clients.
//!
//! The raw client (`native_raw`) is shared with `net/tests/native_server.rs`, which checks
//! the same wire rules against an in-process server.

mod support;

#[path = "../../net/tests/native_raw/mod.rs"]
mod native_raw;

use std::cell::Cell;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use futures::future::join_all;
use native_raw::{RawClient, refusal};
use sluice_engine::rt::{self, clock};
use sluice_net::client::{
    Acks, Client, ClientConfig, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig,
    ProducerRecord,
};
use sluice_net::limits::FRAME_PAYLOAD_BYTES_MAX;
use sluice_net::native::frame::{self, FrameError, MAGIC, PROTOCOL_VERSION};
use sluice_net::native::messages::{ErrorCode, Request, Response};
use sluice_net::native::stream::ReadFrameError;
use sluice_net::quic::ConnectError;
use sluice_net::quic::tls::{self, CertKeyPaths, ClientTlsOptions};
use support::{Broker, assert_error, run};

/// How long the healthy client may take for two more rounds after a bad input.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(30);

/// Records per round of the healthy client.
const HEALTHY_RECORDS: usize = 20;

/// A client library user that produces and consumes in rounds for as long as the test runs,
/// on its own connection. A failure panics its task, and `progressed` then reports a stall.
struct Healthy {
    rounds: Rc<Cell<u64>>,
    stop: Rc<Cell<bool>>,
}

impl Healthy {
    /// Starts the rounds on topic `topic` (created here) through `client`.
    async fn start(client: Client, topic: &str) -> Healthy {
        client
            .create_topic(NewTopic::new(topic, 1))
            .await
            .expect("create the healthy topic");
        let healthy = Healthy {
            rounds: Rc::new(Cell::new(0)),
            stop: Rc::new(Cell::new(false)),
        };
        let rounds = Rc::clone(&healthy.rounds);
        let stop = Rc::clone(&healthy.stop);
        let topic = topic.to_owned();
        rt::spawn(async move { healthy_rounds(client, topic, rounds, stop).await }).detach();
        healthy.progressed("start").await;
        healthy
    }

    /// Waits until the healthy client completed two more rounds (so at least one round ran
    /// entirely after `after`), failing the test at the deadline.
    async fn progressed(&self, after: &str) {
        let target = self.rounds.get() + 2;
        let deadline = clock::now() + PROGRESS_DEADLINE;
        // Bounded by the deadline.
        while self.rounds.get() < target {
            assert!(
                clock::now() < deadline,
                "the healthy client stalled after {after} (at round {})",
                self.rounds.get()
            );
            rt::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Healthy {
    fn drop(&mut self) {
        self.stop.set(true);
    }
}

async fn healthy_rounds(
    client: Client,
    topic: String,
    rounds: Rc<Cell<u64>>,
    stop: Rc<Cell<bool>>,
) {
    let config = ProducerConfig {
        acks: Acks::All,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&client, config).expect("healthy producer");
    let consumer = Consumer::new(&client, ConsumerConfig::default());
    consumer.assign(&[(topic.as_str(), 0)]);
    // Runs until the test ends (stop) or a round fails (panic).
    while !stop.get() {
        let round = rounds.get();
        let values: Vec<String> = (0..HEALTHY_RECORDS)
            .map(|i| format!("healthy-{round}-{i}"))
            .collect();
        let acks = values.iter().map(|value| {
            producer.send(ProducerRecord::new(topic.as_str(), value.clone()).with_partition(0))
        });
        for ack in join_all(acks.collect::<Vec<_>>()).await {
            ack.unwrap_or_else(|error| panic!("healthy produce in round {round}: {error}"));
        }
        let mut seen = Vec::new();
        while seen.len() < values.len() {
            let records = consumer
                .poll(Duration::from_secs(10))
                .await
                .unwrap_or_else(|error| panic!("healthy consume in round {round}: {error}"));
            assert!(
                !records.is_empty(),
                "healthy consume in round {round}: nothing"
            );
            seen.extend(records.into_iter().map(|record| {
                String::from_utf8(record.value.expect("a value").to_vec()).expect("utf-8")
            }));
        }
        assert_eq!(seen, values, "healthy round {round}");
        rounds.set(round + 1);
    }
}

/// A frame prefix declaring `header_bytes` and `payload_bytes`, with a CRC of nothing.
fn declaring(header_bytes: u32, payload_bytes: u32) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(frame::PREFIX_BYTES);
    prefix.extend_from_slice(&MAGIC);
    prefix.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    prefix.extend_from_slice(&0u16.to_le_bytes());
    prefix.extend_from_slice(&header_bytes.to_le_bytes());
    prefix.extend_from_slice(&payload_bytes.to_le_bytes());
    prefix.extend_from_slice(&0u32.to_le_bytes());
    prefix.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(prefix.len(), frame::PREFIX_BYTES);
    prefix
}

fn identity(dir: &Path, name: &str) -> CertKeyPaths {
    tls::self_signed_identity(&dir.join(name), &tls::default_self_signed_names())
        .expect("self-signed identity")
}

fn client_config(server: SocketAddr, options: &ClientTlsOptions) -> quinn::ClientConfig {
    tls::client_config(options, server).expect("client config")
}

async fn library_client(broker: &Broker, tls: ClientTlsOptions) -> Client {
    let config = ClientConfig {
        tls,
        ..ClientConfig::new([broker.brokers()])
    };
    Client::connect(config)
        .await
        .unwrap_or_else(|error| panic!("connect: {error}\nbroker log:\n{}", broker.log()))
}

// Goal: bad frames on raw QUIC streams of a real broker each get their clear error answer on
// their own stream: a malformed frame and a truncated one InvalidRequest, a wrong CRC
// CorruptMessage, a declared header or payload over the limits MessageTooLarge, an unknown
// protocol version a version rejection; the bad connection itself keeps working, and a
// healthy client on another connection completes produce-and-consume rounds after every case.
// Method: one broker process; the healthy client runs rounds in a task of the test's
// executor; after each bad input the test waits (bounded) for two more healthy rounds.
#[test]
fn bad_frames_fail_alone() {
    let broker = Broker::start();
    run(async {
        let healthy = Healthy::start(library_client(&broker, Default::default()).await, "ok").await;
        let bad = RawClient::connect(broker.quic).await;

        let answer = bad
            .call_raw(b"GET / HTTP/1.1\r\nHost: sluice\r\n\r\n")
            .await
            .expect("an answer");
        let message = native_raw::assert_error(&answer, ErrorCode::InvalidRequest);
        eprintln!("malformed: {message}");
        healthy.progressed("a malformed frame").await;

        let whole = frame::encode(&Request::Metadata { topics: None }, b"").expect("encode");
        let answer = bad
            .call_raw(&whole[..whole.len() - 3])
            .await
            .expect("an answer");
        let message = native_raw::assert_error(&answer, ErrorCode::InvalidRequest);
        assert!(message.contains("ended"), "{message}");
        eprintln!("truncated: {message}");
        healthy.progressed("a truncated frame").await;

        let mut flipped = whole.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        let answer = bad.call_raw(&flipped).await.expect("an answer");
        let message = native_raw::assert_error(&answer, ErrorCode::CorruptMessage);
        eprintln!("wrong CRC: {message}");
        healthy.progressed("a wrong CRC").await;

        for (header, payload) in [
            (16, u32::MAX),
            (u32::MAX, 0),
            (16, FRAME_PAYLOAD_BYTES_MAX as u32 + 1),
        ] {
            let answer = bad
                .call_raw(&declaring(header, payload))
                .await
                .expect("an answer");
            let message = native_raw::assert_error(&answer, ErrorCode::MessageTooLarge);
            eprintln!("declared {header} + {payload} bytes: {message}");
            healthy.progressed("a huge declared length").await;
        }

        let mut future = whole.to_vec();
        future[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
        match bad.call_raw(&future).await {
            Err(ReadFrameError::Frame(error @ FrameError::Rejected { .. })) => {
                assert_eq!(error.error_code(), ErrorCode::UnsupportedVersion);
                let message = error.to_string();
                assert!(
                    message.contains(&format!(
                        "unsupported protocol version {}",
                        PROTOCOL_VERSION + 1
                    )),
                    "{message}"
                );
                eprintln!("future version: {message}");
            }
            other => panic!("expected a version rejection, got {other:?}"),
        }
        healthy.progressed("an unsupported version").await;

        let (answer, _) = bad.call(&Request::Metadata { topics: None }).await;
        assert!(matches!(answer, Response::Metadata { .. }), "{answer:?}");
    });
}

// Goal: frames declaring large lengths cost the broker the bytes that arrive, not the bytes
// declared: 4 connections × 8 streams each declare a maximal payload (32 MiB, 1 GiB in all)
// and send 1 KiB of it; per connection the byte budget lets one stream hold its reservation,
// three wait and the other four are refused Overloaded; the broker's RSS grows by less than
// one declared frame, the healthy client keeps going, and once the connections close the
// broker serves on. Method: VmRSS of the broker process before and while the streams stall.
#[test]
fn declared_lengths_do_not_become_memory() {
    let broker = Broker::start();
    run(async {
        let healthy = Healthy::start(library_client(&broker, Default::default()).await, "ok").await;
        let before = broker.rss_bytes();
        let mut held = Vec::new();
        for connection in 0..4 {
            let client = RawClient::connect(broker.quic).await;
            let mut answers = Vec::new();
            for _ in 0..8 {
                let (mut send, recv) = client.connection.open_bi().await.expect("open a stream");
                let mut bytes = declaring(64, FRAME_PAYLOAD_BYTES_MAX as u32);
                bytes.resize(1024, 0x5a);
                // Refused streams are stopped by the broker; the write may then fail.
                let _ = send.write_all(&bytes).await;
                answers.push((send, recv));
            }
            // Exactly the four streams beyond one holder and three waiters are refused.
            let reads = answers.iter_mut().map(|(_, recv)| {
                Box::pin(sluice_net::native::stream::read_frame::<Response>(recv))
            });
            let mut pending: Vec<_> = reads.collect();
            let mut refused = 0;
            // Bounded: each pass takes one answer; the test deadline catches a hang.
            while refused < 4 {
                let (answer, _, rest) = futures::future::select_all(pending).await;
                let answer = answer.expect("a refusal answer").header;
                let message = native_raw::assert_error(&answer, ErrorCode::Overloaded);
                if refused == 0 {
                    eprintln!("connection {connection}: {message}");
                }
                refused += 1;
                pending = rest;
            }
            drop(pending);
            held.push((client, answers));
        }
        healthy.progressed("stalled huge frames").await;
        let during = broker.rss_bytes();
        let grown = during.saturating_sub(before);
        eprintln!("RSS {before} → {during} bytes while 1 GiB is declared");
        assert!(
            grown < FRAME_PAYLOAD_BYTES_MAX as u64,
            "RSS grew by {grown} bytes, more than one declared frame"
        );
        for (client, _) in &held {
            client.connection.close(0u32.into(), b"done");
        }
        drop(held);
        healthy.progressed("closing the stalled connections").await;
    });
}

// Goal: failed handshakes read clearly and do not disturb other clients: a wrong ALPN is
// "does not speak the sluice/1 protocol", and a client whose --ca did not sign the broker's
// certificate is told to pass --ca (raw client, library and CLI alike). Method: one broker;
// the healthy client runs throughout.
#[test]
fn handshake_failures_are_clear() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let other = identity(dir.path(), "other");
    run(async {
        let healthy = Healthy::start(library_client(&broker, Default::default()).await, "ok").await;

        let mut wrong_alpn =
            tls::client_rustls_config(&ClientTlsOptions::default(), broker.quic).expect("config");
        wrong_alpn.alpn_protocols = vec![b"wrong/1".to_vec()];
        let config = tls::quic_client_config(wrong_alpn).expect("quic config");
        let error = refusal(broker.quic, config).await;
        assert!(
            matches!(error, ConnectError::AlpnMismatch { .. }),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("does not speak the sluice/1 protocol"),
            "{error}"
        );
        eprintln!("wrong ALPN: {error}");
        healthy.progressed("a wrong ALPN").await;

        let untrusting = ClientTlsOptions {
            ca: Some(other.cert.clone()),
            identity: None,
        };
        let error = refusal(broker.quic, client_config(broker.quic, &untrusting)).await;
        assert!(
            matches!(error, ConnectError::UntrustedBroker { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("pass --ca"), "{error}");
        eprintln!("untrusted broker: {error}");
        let config = ClientConfig {
            tls: untrusting,
            retries: 0,
            ..ClientConfig::new([broker.brokers()])
        };
        let Err(error) = Client::connect(config).await else {
            panic!("connected to an untrusted broker");
        };
        assert!(error.to_string().contains("pass --ca"), "{error}");
        healthy.progressed("an untrusted certificate").await;
    });
    let ca = other.cert.display().to_string();
    let output = broker.sluice(&["topic", "list", "--ca", &ca], b"");
    let line = assert_error(&output, 1, "pass --ca");
    eprintln!("cli: {line}");
}

// Goal: with --ca (mutual TLS) the broker refuses clients without a certificate and clients
// whose certificate its CA did not sign, each with an error saying mutual TLS is required,
// while a client with a good certificate keeps producing and consuming. Method: a broker
// started with --ca naming a client identity's certificate; raw and library clients.
#[test]
fn mutual_tls_refuses_clear() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = identity(dir.path(), "client");
    let wrong = identity(dir.path(), "wrong");
    let ca = good.cert.display().to_string();
    let broker = Broker::start_with(&["--ca", &ca]);
    run(async {
        let trusted = ClientTlsOptions {
            ca: None,
            identity: Some(good.clone()),
        };
        let healthy = Healthy::start(library_client(&broker, trusted).await, "ok").await;

        for (case, identity) in [
            ("no certificate", None),
            ("a wrong certificate", Some(wrong)),
        ] {
            let options = ClientTlsOptions { ca: None, identity };
            let error = refusal(broker.quic, client_config(broker.quic, &options)).await;
            assert!(
                matches!(error, ConnectError::ClientRejected { .. }),
                "{case}: {error}"
            );
            assert!(error.to_string().contains("mutual TLS"), "{case}: {error}");
            eprintln!("{case}: {error}");
            let config = ClientConfig {
                tls: options,
                retries: 0,
                ..ClientConfig::new([broker.brokers()])
            };
            let Err(error) = Client::connect(config).await else {
                panic!("{case}: the broker accepted the client");
            };
            assert!(error.to_string().contains("mutual TLS"), "{case}: {error}");
            healthy.progressed(case).await;
        }
    });
}

// Goal: --quic-advertise is what metadata tells clients: a broker listening on 0.0.0.0 with
// two shards advertises 127.0.0.2 with shard i at the advertised port + i, and a client that
// bootstraps from 127.0.0.1 produces and consumes through the advertised endpoints. An
// unreachable advertised address (0.0.0.0) is refused at start with one clear line.
// Method: a real broker; the client library's metadata; a produce and consume per partition.
#[test]
fn quic_advertise_in_metadata() {
    let broker = Broker::start_on(
        "0.0.0.0",
        &["--quic-advertise", "127.0.0.2:QUIC_PORT", "--cores", "2"],
    );
    let port = broker.quic.port();
    run(async {
        let client = library_client(&broker, Default::default()).await;
        let metadata = client.refresh_metadata().await.expect("metadata");
        assert_eq!(metadata.brokers.len(), 1);
        assert_eq!(
            metadata.brokers[0].shards,
            vec![
                format!("127.0.0.2:{port}"),
                format!("127.0.0.2:{}", port + 1)
            ]
        );
        client
            .create_topic(NewTopic::new("advertised", 4))
            .await
            .expect("create topic");
        let metadata = client.refresh_metadata().await.expect("metadata");
        let shards: std::collections::BTreeSet<u16> = metadata
            .topic("advertised")
            .expect("listed")
            .partitions
            .iter()
            .map(|p| p.shard)
            .collect();
        assert_eq!(shards.len(), 2, "both shards own partitions: {shards:?}");
        let producer = Producer::new(&client, ProducerConfig::default()).expect("producer");
        let acks = (0..4).map(|p| {
            producer.send(ProducerRecord::new("advertised", format!("via-{p}")).with_partition(p))
        });
        for ack in join_all(acks.collect::<Vec<_>>()).await {
            ack.expect("produce through the advertised endpoint");
        }
        for partition in 0..4 {
            let consumer = Consumer::new(&client, ConsumerConfig::default());
            consumer.assign(&[("advertised", partition)]);
            let records = consumer.poll(Duration::from_secs(30)).await.expect("poll");
            assert_eq!(records.len(), 1, "partition {partition}");
            assert_eq!(
                records[0].value.as_deref(),
                Some(format!("via-{partition}").as_bytes())
            );
        }
        client.close().await;
    });
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = std::process::Command::new(support::sluice_bin());
    command
        .args(["broker", "--quic-advertise", "0.0.0.0:9192", "--data-dir"])
        .arg(dir.path());
    let output = support::run_with_input(command, b"");
    assert_error(&output, 1, "not an address clients can reach");
}
