//! Helpers for multi-process tests: a real `sluice broker` process on free loopback ports,
//! ready once its `/health` answers, killed when dropped; and running `sluice` client
//! commands against it.

#![allow(dead_code)] // Each test file uses a different subset.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a broker may take to answer `/health` after it was started.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The `sluice` binary under test.
///
/// Copied once per test process: worktrees that share a cargo target directory rebuild
/// `target/debug/sluice` from their own sources at any time, and a test must run the binary
/// it was built with.
pub fn sluice_bin() -> &'static Path {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    COPY.get_or_init(|| {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_sluice"));
        let dir = std::env::temp_dir().join(format!("sluice-test-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir for the binary");
        let copy = dir.join("sluice");
        std::fs::copy(&built, &copy).expect("copy the sluice binary");
        copy
    })
}

fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free TCP port");
    listener.local_addr().expect("bound").port()
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a free UDP port");
    socket.local_addr().expect("bound").port()
}

/// A `sluice broker` process with one shard on loopback; killed (SIGKILL) when dropped.
pub struct Broker {
    child: Child,
    /// Data directory and log file; removed on drop.
    dir: tempfile::TempDir,
    /// Shard 0's QUIC endpoint: the address clients bootstrap from.
    pub quic: SocketAddr,
    /// Kafka listener.
    pub kafka: SocketAddr,
    /// Admin HTTP listener.
    pub admin: SocketAddr,
    /// The extra flags it was started with (kept for restarts).
    flags: Vec<String>,
}

impl Broker {
    /// Starts a broker and waits until `/health` answers 200.
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// Starts a broker with extra flags and waits until `/health` answers 200.
    pub fn start_with(flags: &[&str]) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let quic: SocketAddr = format!("127.0.0.1:{}", free_udp_port())
            .parse()
            .expect("addr");
        let kafka: SocketAddr = format!("127.0.0.1:{}", free_tcp_port())
            .parse()
            .expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port())
            .parse()
            .expect("addr");
        let flags: Vec<String> = flags.iter().map(|f| (*f).to_owned()).collect();
        let child = spawn_broker(dir.path(), quic, kafka, admin, &flags);
        let mut broker = Broker {
            child,
            dir,
            quic,
            kafka,
            admin,
            flags,
        };
        broker.wait_healthy();
        broker
    }

    /// Kills the broker with SIGKILL and starts it again on the same data directory, ports
    /// and flags; waits until `/health` answers.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_broker(
            self.dir.path(),
            self.quic,
            self.kafka,
            self.admin,
            &self.flags,
        );
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the broker") {
                panic!(
                    "broker exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if health(self.admin) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "broker not healthy within {START_DEADLINE:?}:\n{}",
                self.log()
            );
            // Polling a condition: the broker has no way to tell us it is ready.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the broker has written to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// `--brokers` value for client commands.
    pub fn brokers(&self) -> String {
        self.quic.to_string()
    }

    /// Runs `sluice ARGS --brokers <this broker>` with `stdin` and returns its output.
    pub fn sluice(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut command = Command::new(sluice_bin());
        command.args(args).args(["--brokers", &self.brokers()]);
        run_with_input(command, stdin)
    }
}

/// Starts `sluice broker` on `dir/data`, appending its stderr to `dir/broker.log`.
fn spawn_broker(
    dir: &Path,
    quic: SocketAddr,
    kafka: SocketAddr,
    admin: SocketAddr,
    flags: &[String],
) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))
        .expect("log file");
    Command::new(sluice_bin())
        .arg("broker")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--quic-listen", &quic.to_string()])
        .args(["--kafka-listen", &kafka.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .args(["--cores", "1"])
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start sluice broker")
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` with `stdin` written to it and returns its output.
pub fn run_with_input(mut command: Command, stdin: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice");
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_vec();
    // Written from another thread so a child that fills its stdout pipe cannot deadlock us.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().expect("wait for sluice");
    writer.join().expect("stdin writer");
    output
}

/// True when `GET /health` on `admin` answers 200.
fn health(admin: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&admin, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /health HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// Asserts a command failed with exit code `code` and one `error: ...` line on stderr that
/// contains `needle`; returns the line.
pub fn assert_error(output: &Output, code: i32, needle: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(!lines.is_empty(), "no error message");
    let line = lines[0];
    if code == 1 {
        assert_eq!(lines.len(), 1, "one line of error: {stderr}");
        assert!(line.starts_with("error: "), "{line}");
    }
    assert!(
        stderr.contains(needle),
        "expected {needle:?} in the error: {stderr}"
    );
    line.to_owned()
}

/// Asserts a command succeeded; returns its stdout.
pub fn assert_success(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}, stderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8 output")
}
