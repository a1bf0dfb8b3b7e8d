//! A raw native-protocol client for tests: a QUIC connection made with `quic::connect` and
//! requests written with the frame functions, so tests check the wire semantics of
//! net/PROTOCOL.md rather than a client library's. Shared by `net/tests/native_server.rs` (an
//! in-process broker) and `tools/tests/native_broker.rs` (a real broker process, which
//! includes this file by path).

#![allow(dead_code)] // Each test file uses a different subset.

use std::net::SocketAddr;

use bytes::Bytes;
use sluice_engine::batch::{Compression, SimpleRecord, build_batch};
use sluice_net::native::messages::{ErrorCode, OffsetQuery, Request, Response};
use sluice_net::native::stream::{ReadFrameError, read_frame, write_frame};
use sluice_net::quic::tls::{self, ClientTlsOptions};
use sluice_net::quic::{self, ConnectError};

/// A raw native-protocol client connected to one shard endpoint.
pub struct RawClient {
    _endpoint: quinn::Endpoint,
    /// The connection, for tests that drive streams by hand.
    pub connection: quinn::Connection,
}

impl RawClient {
    /// Connects trusting a loopback broker without a CA, as the client library does.
    pub async fn try_connect(server: SocketAddr) -> Result<RawClient, ConnectError> {
        let config =
            tls::client_config(&ClientTlsOptions::default(), server).expect("client config");
        RawClient::try_connect_with(server, config).await
    }

    /// Connects with a quinn client configuration of the caller's (other trust, a client
    /// certificate, another ALPN).
    pub async fn try_connect_with(
        server: SocketAddr,
        config: quinn::ClientConfig,
    ) -> Result<RawClient, ConnectError> {
        let endpoint =
            quic::client_endpoint("127.0.0.1:0".parse().expect("addr")).expect("client endpoint");
        let connection = quic::connect(&endpoint, server, "localhost", config).await?;
        Ok(RawClient {
            _endpoint: endpoint,
            connection,
        })
    }

    pub async fn connect(server: SocketAddr) -> RawClient {
        RawClient::try_connect(server)
            .await
            .expect("loopback connection")
    }

    /// Sends `request` with an empty payload; returns the answer header and payload.
    pub async fn call(&self, request: &Request) -> (Response, Bytes) {
        self.call_with(request, Bytes::new()).await
    }

    pub async fn call_with(&self, request: &Request, payload: Bytes) -> (Response, Bytes) {
        let (mut send, mut recv) = self.connection.open_bi().await.expect("open stream");
        // A server that refuses a request stops reading it (STOP_SENDING), which may fail the
        // write; its answer still follows.
        let _ = write_frame(&mut send, request, payload).await;
        let answer = read_frame::<Response>(&mut recv)
            .await
            .expect("read answer");
        (answer.header, answer.payload)
    }

    /// Sends raw bytes as a request stream; returns the decoded answer (or its error).
    pub async fn call_raw(&self, bytes: &[u8]) -> Result<Response, ReadFrameError> {
        let (mut send, mut recv) = self.connection.open_bi().await.expect("open stream");
        send.write_all(bytes).await.expect("write raw request");
        send.finish().expect("finish");
        read_frame::<Response>(&mut recv).await.map(|f| f.header)
    }

    pub async fn create_topic(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        let request = Request::CreateTopic {
            name: name.into(),
            partitions,
            replication: 1,
            configs: configs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let (answer, _) = self.call(&request).await;
        assert_eq!(answer, Response::Done { value: 0 }, "create {name}");
    }

    /// Shard endpoint owning each partition of `topic`, per metadata.
    pub async fn owners(&self, topic: &str) -> Vec<SocketAddr> {
        let request = Request::Metadata {
            topics: Some(vec![topic.into()]),
        };
        let (answer, _) = self.call(&request).await;
        let Response::Metadata {
            brokers, topics, ..
        } = answer
        else {
            panic!("metadata answer: {answer:?}");
        };
        assert_eq!(topics.len(), 1);
        assert_eq!(topics[0].name, topic);
        topics[0]
            .partitions
            .iter()
            .map(|p| {
                let broker = brokers
                    .iter()
                    .find(|b| b.id == p.leader)
                    .expect("leader listed");
                broker.shards[usize::from(p.shard)]
                    .parse()
                    .expect("endpoint address")
            })
            .collect()
    }

    pub async fn produce(&self, topic: &str, partition: i32, acks: i8, batch: Bytes) -> Response {
        let request = Request::Produce {
            topic: topic.into(),
            partition,
            acks,
            sequence: None,
        };
        self.call_with(&request, batch).await.0
    }

    pub async fn fetch(&self, topic: &str, partition: i32, offset: i64, wait_ms: u32) -> Fetched {
        let request = Request::Fetch {
            topic: topic.into(),
            partition,
            offset,
            max_bytes: 1 << 20,
            max_wait_ms: wait_ms,
        };
        match self.call(&request).await {
            (
                Response::Fetched {
                    high_watermark,
                    log_start_offset,
                },
                batches,
            ) => Fetched {
                high_watermark,
                log_start_offset,
                batches,
            },
            other => panic!("fetch {topic}-{partition}@{offset}: {other:?}"),
        }
    }

    pub async fn latest(&self, topic: &str, partition: i32) -> i64 {
        let request = Request::ListOffset {
            topic: topic.into(),
            partition,
            query: OffsetQuery::Latest,
        };
        match self.call(&request).await.0 {
            Response::Offset { offset, .. } => offset,
            other => panic!("list offset: {other:?}"),
        }
    }
}

#[derive(Debug)]
pub struct Fetched {
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub batches: Bytes,
}

/// A batch of uncompressed records with these values.
pub fn batch(values: &[&str]) -> Bytes {
    let records: Vec<SimpleRecord> = values.iter().map(|v| SimpleRecord::value(*v)).collect();
    build_batch(&records, Compression::None).expect("batch")
}

/// Asserts that `answer` is an error with code `expected`; returns its message.
pub fn assert_error(answer: &Response, expected: ErrorCode) -> String {
    match answer {
        Response::Error { code, message } => {
            assert_eq!(*code, expected, "{message}");
            message.clone()
        }
        other => panic!("expected {expected:?}, got {other:?}"),
    }
}

/// Connects with `config` and returns why the broker refused the connection: during the
/// handshake, or (in TLS 1.3 the client's certificate is judged after the client finished its
/// half) when the connection is first used.
///
/// Panics if the connection works.
pub async fn refusal(server: SocketAddr, config: quinn::ClientConfig) -> ConnectError {
    let client = match RawClient::try_connect_with(server, config).await {
        Err(error) => return error,
        Ok(client) => client,
    };
    if let Ok((mut send, mut recv)) = client.connection.open_bi().await {
        let _ = write_frame(&mut send, &Request::Metadata { topics: None }, Bytes::new()).await;
        if let Ok(answer) = read_frame::<Response>(&mut recv).await {
            panic!("the broker answered a client it should refuse: {answer:?}");
        }
    }
    let reason = client.connection.closed().await;
    ConnectError::from_connection(server, reason)
}
