//! Loopback bandwidth of one QUIC stream on the shard runtime, with std TCP as the reference.
//!
//! Not a test: a measurement to run by hand, with the numbers reported as a ratio to TCP on
//! the same machine in the same run.
//!
//! ```text
//! cargo run --release -p sluice-net --example quic_bandwidth [BYTES]
//! ```
//!
//! For each transport a server thread and a client thread (each with its own executor for
//! QUIC, as two shards would be) move `BYTES` (default 1 GiB) over loopback; the client sends
//! 1 MiB chunks (shared, never copied by the sender) and stops the clock when the server
//! acknowledges the last byte. Printed per transport: MB/s, the CPU seconds each thread
//! spent (user + system), and for QUIC quinn's view of the path (datagrams per transmit,
//! which shows GSO/GRO at work, losses, congestion events, RTT).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use sluice_engine::rt;
use sluice_net::quic::{self, tls};

const CHUNK_BYTES: usize = 1 << 20;

/// User plus system CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is a live, writable rusage; RUSAGE_THREAD reports the calling thread.
    let result = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    assert_eq!(result, 0, "getrusage(RUSAGE_THREAD) works on Linux");
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

struct Run {
    elapsed: Duration,
    client_cpu: Duration,
    server_cpu: Duration,
    details: String,
}

fn report(name: &str, bytes: u64, run: &Run) -> f64 {
    let megabytes_per_second = bytes as f64 / run.elapsed.as_secs_f64() / 1e6;
    let gib = bytes as f64 / (1u64 << 30) as f64;
    println!(
        "{name:>4}: {bytes} bytes in {:.3} s = {megabytes_per_second:.0} MB/s; cpu per GiB: \
         client {:.2} s, server {:.2} s{}",
        run.elapsed.as_secs_f64(),
        run.client_cpu.as_secs_f64() / gib,
        run.server_cpu.as_secs_f64() / gib,
        run.details,
    );
    megabytes_per_second
}

fn quic_run(bytes: u64) -> Run {
    let dir = tempfile::tempdir().expect("temp dir");
    let identity =
        tls::self_signed_identity(dir.path(), &tls::default_self_signed_names()).expect("identity");
    let (addr_sender, addr_receiver) = mpsc::channel::<SocketAddr>();
    let server = std::thread::spawn(move || {
        rt::block_on(async move {
            let options = tls::ServerTlsOptions {
                identity: tls::ServerIdentity::Files(identity),
                client_ca: None,
            };
            let config = tls::server_config(&options).expect("server config");
            let loopback = "127.0.0.1:0".parse().expect("literal");
            let endpoint = quic::server_endpoint(loopback, config).expect("server endpoint");
            addr_sender
                .send(endpoint.local_addr().expect("address"))
                .expect("hand over address");
            let connection = endpoint
                .accept()
                .await
                .expect("a client")
                .await
                .expect("handshake");
            let (mut send, mut recv) = connection.accept_bi().await.expect("a stream");
            let cpu_before = thread_cpu();
            let mut received = 0u64;
            while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.expect("read") {
                received += chunk.bytes.len() as u64;
            }
            assert_eq!(received, bytes, "every byte arrived");
            send.write_all(b"k").await.expect("ack");
            send.finish().expect("finish");
            let cpu = thread_cpu() - cpu_before;
            let stats = connection.stats();
            let details = format!(
                "\n      server processed {} datagrams, sent {} in {} transmits; \
                 path MTU {} bytes (strace -c shows the receive system calls)",
                stats.udp_rx.datagrams,
                stats.udp_tx.datagrams,
                stats.udp_tx.ios,
                stats.path.current_mtu,
            );
            connection.closed().await;
            endpoint.wait_idle().await;
            (cpu, details)
        })
    });
    let addr = addr_receiver.recv().expect("server address");
    let (elapsed, client_cpu, details) = rt::block_on(async move {
        let loopback = "127.0.0.1:0".parse().expect("literal");
        let endpoint = quic::client_endpoint(loopback).expect("client endpoint");
        let config =
            tls::client_config(&tls::ClientTlsOptions::default(), addr).expect("client config");
        let connection = quic::connect(&endpoint, addr, "localhost", config)
            .await
            .expect("connection");
        let chunk = Bytes::from(vec![0x5a; CHUNK_BYTES]);
        let cpu_before = thread_cpu();
        let start = rt::clock::now();
        let (mut send, mut recv) = connection.open_bi().await.expect("stream");
        let mut sent = 0u64;
        while sent < bytes {
            let len = (bytes - sent).min(CHUNK_BYTES as u64) as usize;
            send.write_chunk(chunk.slice(..len)).await.expect("write");
            sent += len as u64;
        }
        send.finish().expect("finish");
        let ack = recv.read_to_end(1).await.expect("ack");
        assert_eq!(ack, b"k");
        let elapsed = rt::clock::now() - start;
        let cpu = thread_cpu() - cpu_before;
        let stats = connection.stats();
        let per_io = |datagrams: u64, ios: u64| datagrams as f64 / ios.max(1) as f64;
        let details = format!(
            "\n      client sent {} datagrams in {} transmits ({:.1} per transmit, each one GSO \
             sendmsg up to 64 KiB), got {} acks in {} ({:.1} per call); lost {} packets, \
             {} congestion events, rtt {:?}, cwnd {} bytes",
            stats.udp_tx.datagrams,
            stats.udp_tx.ios,
            per_io(stats.udp_tx.datagrams, stats.udp_tx.ios),
            stats.udp_rx.datagrams,
            stats.udp_rx.ios,
            per_io(stats.udp_rx.datagrams, stats.udp_rx.ios),
            stats.path.lost_packets,
            stats.path.congestion_events,
            stats.path.rtt,
            stats.path.cwnd,
        );
        connection.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        (elapsed, cpu, details)
    });
    let (server_cpu, server_details) = server.join().expect("server thread");
    Run {
        elapsed,
        client_cpu,
        server_cpu,
        details: details + &server_details,
    }
}

fn tcp_run(bytes: u64) -> Run {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("a client");
        let cpu_before = thread_cpu();
        let mut buffer = vec![0u8; CHUNK_BYTES];
        let mut received = 0u64;
        loop {
            let count = stream.read(&mut buffer).expect("read");
            if count == 0 {
                break;
            }
            received += count as u64;
        }
        assert_eq!(received, bytes, "every byte arrived");
        stream.write_all(b"k").expect("ack");
        thread_cpu() - cpu_before
    });
    let mut stream = TcpStream::connect(addr).expect("connect");
    let chunk = vec![0x5a; CHUNK_BYTES];
    let cpu_before = thread_cpu();
    let start = rt::clock::now();
    let mut sent = 0u64;
    while sent < bytes {
        let len = (bytes - sent).min(CHUNK_BYTES as u64) as usize;
        stream.write_all(&chunk[..len]).expect("write");
        sent += len as u64;
    }
    stream
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let mut ack = [0u8; 1];
    stream.read_exact(&mut ack).expect("ack");
    let elapsed = rt::clock::now() - start;
    let client_cpu = thread_cpu() - cpu_before;
    let server_cpu = server.join().expect("server thread");
    Run {
        elapsed,
        client_cpu,
        server_cpu,
        details: String::new(),
    }
}

fn main() {
    let bytes = std::env::args()
        .nth(1)
        .map(|arg| arg.parse::<u64>().expect("BYTES is a number"))
        .unwrap_or(1 << 30);
    println!("moving {bytes} bytes over 127.0.0.1 on {} CPUs", num_cpus());
    let quic = report("quic", bytes, &quic_run(bytes));
    let tcp = report("tcp", bytes, &tcp_run(bytes));
    println!("quic / tcp = {:.2}", quic / tcp);
}

fn num_cpus() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
}
