//! QUIC over loopback with the shard runtime: real quinn endpoints, real TLS, real sockets.
//!
//! A small echo server answers every `Produce` request with a `Fetched` answer carrying the
//! same payload, so the tests can check bytes end to end; frames that fail to decode are
//! answered with the protocol's error frames.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use futures::future::{Either, join_all, select};
use sluice_engine::rt;
use sluice_net::native::frame::{self, FrameError, PROTOCOL_VERSION};
use sluice_net::native::messages::{ErrorCode, Request, Response};
use sluice_net::native::stream::{ReadFrameError, answer_frame_error, read_frame, write_frame};
use sluice_net::quic::tls::{
    self, CertKeyPaths, ClientTlsOptions, ServerIdentity, ServerTlsOptions,
};
use sluice_net::quic::{self, ConnectError};

/// Far beyond what any of these tests needs; only a lost wake-up or a hang reaches it.
const TEST_DEADLINE: Duration = Duration::from_secs(120);

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal address")
}

/// Runs `future` on a fresh executor on this thread, failing the test if it hangs.
fn run<T>(future: impl Future<Output = T>) -> T {
    rt::block_on(async move {
        let deadline = rt::sleep(TEST_DEADLINE);
        futures::pin_mut!(future, deadline);
        match select(future, deadline).await {
            Either::Left((output, _)) => output,
            Either::Right(_) => panic!("test did not finish within {TEST_DEADLINE:?}"),
        }
    })
}

/// Deterministic, stream-specific bytes, so a payload delivered on the wrong stream differs.
fn payload(seed: u64, len: usize) -> Bytes {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut bytes = bytes::BytesMut::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.put_u64_le(state);
    }
    bytes.truncate(len);
    bytes.freeze()
}

fn self_signed(dir: &Path) -> CertKeyPaths {
    tls::self_signed_identity(dir, &tls::default_self_signed_names()).expect("identity")
}

/// Starts the echo server on the current shard; returns its endpoint.
fn start_server(identity: CertKeyPaths, client_ca: Option<&Path>) -> quinn::Endpoint {
    let options = ServerTlsOptions {
        identity: ServerIdentity::Files(identity),
        client_ca: client_ca.map(Path::to_path_buf),
    };
    let config = tls::server_config(&options).expect("server config");
    let endpoint = quic::server_endpoint(loopback(), config).expect("server endpoint");
    rt::spawn(serve(endpoint.clone())).detach();
    endpoint
}

/// Accepts connections until the endpoint closes.
async fn serve(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        rt::spawn(serve_connection(incoming)).detach();
    }
}

/// Serves streams until the connection ends, one task per stream.
async fn serve_connection(incoming: quinn::Incoming) {
    let Ok(connection) = incoming.await else {
        return;
    };
    while let Ok((send, recv)) = connection.accept_bi().await {
        rt::spawn(serve_stream(send, recv)).detach();
    }
}

async fn serve_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    match read_frame::<Request>(&mut recv).await {
        Ok(request) => {
            let answer = match request.header {
                Request::Produce { partition, .. } => Response::Fetched {
                    high_watermark: i64::from(partition),
                    log_start_offset: request.payload.len() as i64,
                },
                _ => Response::Error {
                    code: ErrorCode::InvalidRequest,
                    message: "the echo server answers produce only".into(),
                },
            };
            let _ = write_frame(&mut send, &answer, request.payload).await;
        }
        Err(ReadFrameError::Frame(error)) => {
            let _ = answer_frame_error(&mut send, &mut recv, &error).await;
        }
        Err(_) => {}
    }
}

async fn connect_loopback(endpoint: &quinn::Endpoint, server: SocketAddr) -> quinn::Connection {
    let config = tls::client_config(&ClientTlsOptions::default(), server).expect("client config");
    quic::connect(endpoint, server, "localhost", config)
        .await
        .expect("loopback connection")
}

/// An echo server on this shard and a client endpoint connected to it.
async fn echo_pair(dir: &Path) -> (quinn::Endpoint, quinn::Endpoint, quinn::Connection) {
    let server = start_server(self_signed(dir), None);
    let server_addr = server.local_addr().expect("server address");
    let client = quic::client_endpoint(loopback()).expect("client endpoint");
    let connection = connect_loopback(&client, server_addr).await;
    (server, client, connection)
}

/// Sends one produce request with `body` on a new stream and checks the echo.
async fn echo(connection: &quinn::Connection, partition: i32, body: Bytes) {
    let (mut send, mut recv) = connection.open_bi().await.expect("open stream");
    let request = Request::Produce {
        topic: "echo".into(),
        partition,
        acks: 1,
        sequence: None,
    };
    write_frame(&mut send, &request, body.clone())
        .await
        .expect("write request");
    let answer = read_frame::<Response>(&mut recv)
        .await
        .expect("read answer");
    assert_eq!(
        answer.header,
        Response::Fetched {
            high_watermark: i64::from(partition),
            log_start_offset: body.len() as i64
        }
    );
    assert!(
        answer.payload == body,
        "stream {partition}: payload of {} bytes differs",
        body.len()
    );
}

/// Sends raw bytes as a request and returns how the answer decodes.
async fn send_raw(
    connection: &quinn::Connection,
    bytes: &[u8],
) -> Result<frame::Frame<Response>, ReadFrameError> {
    let (mut send, mut recv) = connection.open_bi().await.expect("open stream");
    // The server may stop reading early (oversized or unsupported frames); that is fine.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    read_frame::<Response>(&mut recv).await
}

// Goal: 64 concurrent streams on one connection each carry their own frame, from 1 KiB to
// 4 MiB, and get exactly their bytes back; bad frames on the same connection get clear errors
// and do not disturb it. Method: one executor runs an echo server and a client on loopback;
// the client sends all 64 requests at once and compares every answer byte for byte, then
// sends a corrupted frame, a frame of a future version, and an oversized one, and finally
// one more good request.
#[test]
fn concurrent_streams_echo_and_bad_frames_fail_alone() {
    run(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_server, client, connection) = echo_pair(dir.path()).await;
        assert_eq!(
            connection.handshake_data().and_then(|data| data
                .downcast::<quinn::crypto::rustls::HandshakeData>()
                .ok()
                .and_then(|data| data.protocol)),
            Some(tls::ALPN_SLUICE_V1.to_vec())
        );

        let sizes: Vec<usize> = (0..64).map(|i| 1024 << (i % 13)).collect();
        assert_eq!(sizes.iter().max(), Some(&(4 << 20)));
        join_all(sizes.iter().enumerate().map(|(i, &len)| {
            let partition = i32::try_from(i).expect("small");
            echo(&connection, partition, payload(i as u64, len))
        }))
        .await;

        // A flipped header byte (the last one, before the 3-byte payload): answered with
        // CorruptMessage, on that stream only. (The payload is record batches, which carry
        // their own CRCs; the frame's covers the header.)
        let mut corrupted = frame::encode(
            &Request::Produce {
                topic: "t".into(),
                partition: 0,
                acks: 1,
                sequence: None,
            },
            b"abc",
        )
        .expect("encode");
        let last_header_byte = corrupted.len() - 4;
        corrupted[last_header_byte] ^= 0x01;
        let answer = send_raw(&connection, &corrupted)
            .await
            .expect("an error answer");
        assert!(
            matches!(
                answer.header,
                Response::Error {
                    code: ErrorCode::CorruptMessage,
                    ..
                }
            ),
            "{:?}",
            answer.header
        );

        // A frame from a future protocol version: answered with a version rejection.
        let mut future = frame::encode(&Request::Metadata { topics: None }, b"").expect("encode");
        future[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
        match send_raw(&connection, &future).await {
            Err(ReadFrameError::Frame(error @ FrameError::Rejected { .. })) => {
                let expected = format!("unsupported protocol version {}", PROTOCOL_VERSION + 1);
                assert!(error.to_string().contains(&expected), "{error}");
            }
            other => panic!("expected a version rejection, got {other:?}"),
        }

        // A frame declaring a payload over the limit: refused from its prefix alone.
        let mut oversized =
            frame::encode(&Request::Metadata { topics: None }, b"").expect("encode");
        oversized[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        let answer = send_raw(&connection, &oversized)
            .await
            .expect("an error answer");
        assert!(
            matches!(
                answer.header,
                Response::Error {
                    code: ErrorCode::MessageTooLarge,
                    ..
                }
            ),
            "{:?}",
            answer.header
        );

        // The connection is still healthy.
        echo(&connection, 99, payload(99, 100_000)).await;
        connection.close(0u32.into(), b"done");
        client.wait_idle().await;
    });
}

// Goal: handshake failures say what to fix, and do not affect good clients. Method: one
// server; a client offering the wrong ALPN, a client whose --ca did not sign the server's
// certificate, a client trusting the server's certificate through --ca, and a plain loopback
// client; only the first two must fail, each with its own error.
#[test]
fn handshake_failures_are_clear() {
    run(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let server_identity = self_signed(&dir.path().join("server"));
        let other_identity = self_signed(&dir.path().join("other"));
        let server = start_server(server_identity.clone(), None);
        let addr = server.local_addr().expect("server address");
        let client = quic::client_endpoint(loopback()).expect("client endpoint");

        let mut wrong_alpn =
            tls::client_rustls_config(&ClientTlsOptions::default(), addr).expect("config");
        wrong_alpn.alpn_protocols = vec![b"wrong/1".to_vec()];
        let config = tls::quic_client_config(wrong_alpn).expect("quic config");
        let error = quic::connect(&client, addr, "localhost", config)
            .await
            .expect_err("alpn");
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

        let options = ClientTlsOptions {
            ca: Some(other_identity.cert.clone()),
            identity: None,
        };
        let config = tls::client_config(&options, addr).expect("config");
        let error = quic::connect(&client, addr, "localhost", config)
            .await
            .expect_err("ca");
        assert!(
            matches!(error, ConnectError::UntrustedBroker { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("pass --ca"), "{error}");
        // Distinct subjects per self-signed certificate make this "unknown issuer" rather
        // than a signature failure against a same-named anchor.
        assert!(error.to_string().contains("UnknownIssuer"), "{error}");
        eprintln!("wrong --ca: {error}");

        let options = ClientTlsOptions {
            ca: Some(server_identity.cert.clone()),
            identity: None,
        };
        let config = tls::client_config(&options, addr).expect("config");
        let verified = quic::connect(&client, addr, "localhost", config)
            .await
            .expect("ca ok");
        echo(&verified, 1, payload(1, 10_000)).await;

        let loopback_client = connect_loopback(&client, addr).await;
        echo(&loopback_client, 2, payload(2, 10_000)).await;
        client.close(0u32.into(), b"done");
        client.wait_idle().await;
    });
}

// Goal: with --ca on the server, only clients presenting a certificate signed by it get
// through, and the rejection of the others reads clearly. Method: a server requiring client
// certificates from one authority; a client with that identity echoes; a client without one
// is rejected (in TLS 1.3 possibly just after its handshake, so on first use).
#[test]
fn mutual_tls() {
    run(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let server_identity = self_signed(&dir.path().join("server"));
        let client_identity = self_signed(&dir.path().join("client"));
        let server = start_server(server_identity, Some(&client_identity.cert));
        let addr = server.local_addr().expect("server address");
        let client = quic::client_endpoint(loopback()).expect("client endpoint");

        let options = ClientTlsOptions {
            ca: None,
            identity: Some(client_identity),
        };
        let config = tls::client_config(&options, addr).expect("config");
        let accepted = quic::connect(&client, addr, "localhost", config)
            .await
            .expect("mtls");
        echo(&accepted, 1, payload(1, 50_000)).await;

        let config = tls::client_config(&ClientTlsOptions::default(), addr).expect("config");
        let error = match quic::connect(&client, addr, "localhost", config).await {
            Err(error) => error,
            Ok(connection) => {
                // The broker's verdict arrives after our handshake completed.
                let (mut send, mut recv) = match connection.open_bi().await {
                    Ok(streams) => streams,
                    Err(error) => panic!("open failed before a verdict: {error}"),
                };
                let _ = send.write_all(b"x").await;
                let _ = send.finish();
                let _ = recv.read_to_end(1024).await;
                let reason = connection.closed().await;
                ConnectError::from_connection(addr, reason)
            }
        };
        assert!(
            matches!(error, ConnectError::ClientRejected { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("mutual TLS"), "{error}");
        eprintln!("no client certificate: {error}");
        client.close(0u32.into(), b"done");
        client.wait_idle().await;
    });
}

// Goal: server and client on different executor threads talk over the network (each
// endpoint stays on its own shard). Method: the server thread runs an endpoint and serves one
// connection until the client closes it; the client thread connects to the address it is
// handed, echoes 16 frames concurrently, and closes.
#[test]
fn server_and_client_on_different_threads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let identity = self_signed(dir.path());
    let (addr_sender, addr_receiver) = std::sync::mpsc::channel();
    let server = std::thread::Builder::new()
        .name("quic-server".into())
        .spawn(move || {
            run(async move {
                let options = ServerTlsOptions {
                    identity: ServerIdentity::Files(identity),
                    client_ca: None,
                };
                let config = tls::server_config(&options).expect("server config");
                let endpoint = quic::server_endpoint(loopback(), config).expect("endpoint");
                addr_sender
                    .send(endpoint.local_addr().expect("address"))
                    .expect("send addr");
                let incoming = endpoint.accept().await.expect("one connection");
                serve_connection(incoming).await;
                endpoint.wait_idle().await;
            })
        })
        .expect("server thread");
    let client = std::thread::Builder::new()
        .name("quic-client".into())
        .spawn(move || {
            let addr = addr_receiver.recv().expect("server address");
            run(async move {
                let endpoint = quic::client_endpoint(loopback()).expect("client endpoint");
                let connection = connect_loopback(&endpoint, addr).await;
                join_all(
                    (0..16).map(|i| echo(&connection, i, payload(i as u64, 65_536 + i as usize))),
                )
                .await;
                connection.close(0u32.into(), b"done");
                endpoint.wait_idle().await;
            })
        })
        .expect("client thread");
    client.join().expect("client thread succeeds");
    server.join().expect("server thread succeeds");
}

// Goal: on loopback, connections find and keep datagrams far larger than an Ethernet frame,
// and batches of them reach the peer. Method: echo 16 MiB on one connection, then read quinn's
// path statistics on the sender. Pass: the path MTU rose above quinn's 1452-byte default and
// no black hole was detected. If the shard socket handed the kernel GSO batches over 64 KiB,
// every batch of large datagrams would be refused and counted lost, quinn would declare a
// black hole and fall back to 1200 bytes (1 GB/s became 3 MB/s when that happened).
#[test]
fn loopback_paths_use_large_datagrams() {
    run(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let (_server, client, connection) = echo_pair(dir.path()).await;
        join_all((0..4).map(|i| echo(&connection, i, payload(i as u64, 4 << 20)))).await;
        let path = connection.stats().path;
        assert_eq!(path.black_holes_detected, 0, "{path:?}");
        assert!(path.current_mtu > 1452, "path MTU stayed small: {path:?}");
        connection.close(0u32.into(), b"done");
        client.wait_idle().await;
    });
}
