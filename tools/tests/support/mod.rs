//! Helpers for multi-process tests: a real `sluice broker` process on free loopback ports,
//! ready once its `/health` answers, killed when dropped (or on purpose, and restarted on
//! the same data directory); running `sluice` client commands against it; and running the
//! native client library against it (`run`, `connect`, `read_records`, `assert_same_record`).
//! `cluster`: three brokers with the same `--seeds`; `small_fs`: a loop-mounted ext4 image
//! (engine's, shared by path).

#![allow(dead_code)] // Each test file uses a different subset.

pub mod cluster;
#[path = "../../../engine/tests/common/small_fs.rs"]
pub mod small_fs;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sluice_net::client::{
    Client, ClientConfig, Consumer, ConsumerConfig, ConsumerRecord, ProducerRecord,
};

/// How long a broker may take to answer `/health` after it was started.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The `sluice` binary under test.
///
/// Pinned once per test process: worktrees that share a cargo target directory rebuild
/// `target/debug/sluice` from their own sources at any time, and a test must run the binary
/// it was built with. A hard link keeps the built file's inode when the linker replaces it and
/// costs no disk (a copy is 230 MB); pins of test processes that have exited are removed first,
/// since nothing else would.
pub fn sluice_bin() -> &'static Path {
    static PIN: OnceLock<PathBuf> = OnceLock::new();
    PIN.get_or_init(|| {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_sluice"));
        remove_stale_pins();
        let dir = std::env::temp_dir().join(format!("{PIN_PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir for the binary");
        let pin = dir.join("sluice");
        let _ = std::fs::remove_file(&pin);
        if std::fs::hard_link(&built, &pin).is_err() {
            std::fs::copy(&built, &pin).expect("copy the sluice binary");
        }
        pin
    })
}

const PIN_PREFIX: &str = "sluice-test-bin-";

/// Removes the binary pins of test processes that no longer run.
fn remove_stale_pins() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PIN_PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
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
    /// Every argument after `broker`, so a restart runs the same command.
    args: Vec<String>,
    /// Shard 0's QUIC endpoint: the address clients bootstrap from.
    pub quic: SocketAddr,
    /// Kafka listener.
    pub kafka: SocketAddr,
    /// Admin HTTP listener.
    pub admin: SocketAddr,
}

impl Broker {
    /// Starts a broker and waits until `/health` answers 200.
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// Starts a broker with extra flags and waits until `/health` answers 200.
    pub fn start_with(flags: &[&str]) -> Broker {
        Broker::start_on("127.0.0.1", flags)
    }

    /// Starts a broker whose QUIC listener binds `quic_ip` (on a port free on 127.0.0.1,
    /// which is also free on the wildcard address in practice) with extra flags, and waits
    /// until `/health` answers 200. `quic` is then 127.0.0.1 with that port, which reaches a
    /// wildcard listener too. `QUIC_PORT` in a flag stands for that port.
    pub fn start_on(quic_ip: &str, flags: &[&str]) -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_udp_port();
        let quic: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let kafka: SocketAddr = format!("127.0.0.1:{}", free_tcp_port())
            .parse()
            .expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_tcp_port())
            .parse()
            .expect("addr");
        let data = dir.path().join("data");
        let mut args: Vec<String> = vec!["--data-dir".into(), data.display().to_string()];
        for (flag, value) in [
            ("--quic-listen", format!("{quic_ip}:{port}")),
            ("--kafka-listen", kafka.to_string()),
            ("--admin-listen", admin.to_string()),
            ("--cores", "1".to_owned()),
        ] {
            // A flag the caller gives itself replaces the default.
            if !flags.contains(&flag) {
                args.push(flag.to_owned());
                args.push(value);
            }
        }
        args.extend(
            flags
                .iter()
                .map(|flag| flag.replace("QUIC_PORT", &port.to_string())),
        );
        let child = spawn_broker(dir.path(), &args);
        let mut broker = Broker {
            child,
            dir,
            args,
            quic,
            kafka,
            admin,
        };
        broker.wait_healthy();
        broker
    }

    /// Stops the broker with SIGTERM (a clean shutdown) and reaps it; fails the test if it
    /// has not exited within `deadline` (it is then killed).
    pub fn stop(&mut self, deadline: Duration) {
        assert!(
            terminate(&mut self.child, deadline),
            "broker did not stop within {deadline:?} after SIGTERM:\n{}",
            self.log()
        );
    }

    /// The broker's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Kills the broker with SIGKILL (no shutdown, nothing flushed) and reaps it.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL the broker");
        self.child.wait().expect("reap the broker");
    }

    /// Starts the broker again with the same flags, data directory and ports (after
    /// [`Broker::kill`]) and waits until `/health` answers 200.
    pub fn restart(&mut self) {
        assert!(
            self.child.try_wait().expect("poll the broker").is_some(),
            "restart needs a stopped broker"
        );
        self.child = spawn_broker(self.dir.path(), &self.args);
        self.wait_healthy();
    }

    /// Starts the broker again with the same flags and data directory (after
    /// [`Broker::stop`]) expecting it to refuse to start: waits until the process exits, and
    /// fails the test if it answers `/health` or still runs after the start deadline. Returns
    /// its exit status and what this run wrote to stderr.
    pub fn restart_refused(&mut self) -> (std::process::ExitStatus, String) {
        assert!(
            self.child.try_wait().expect("poll the broker").is_some(),
            "restart needs a stopped broker"
        );
        let logged = self.log().len();
        self.child = spawn_broker(self.dir.path(), &self.args);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the broker") {
                return (status, self.log()[logged..].to_owned());
            }
            assert!(
                !health(self.admin),
                "the broker started instead of refusing:\n{}",
                &self.log()[logged..]
            );
            assert!(
                Instant::now() < deadline,
                "broker neither refused nor started within {START_DEADLINE:?}:\n{}",
                &self.log()[logged..]
            );
            // Polling a condition: the broker has no way to tell us it refused.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The broker's resident set size, from `/proc/PID/status`.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("broker status readable");
        let line = status
            .lines()
            .find(|line| line.starts_with("VmRSS:"))
            .expect("VmRSS in /proc status");
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .expect("VmRSS in kB");
        kib * 1024
    }

    /// True while the broker process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("poll the broker").is_none()
    }

    /// Kills the broker with SIGKILL and starts it again on the same data directory, ports
    /// and flags; waits until `/health` answers.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.restart();
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

    /// What the broker has written to stderr so far (every run, appended).
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

/// Sends SIGTERM (a clean shutdown) to `child` and reaps it; SIGKILLs it if it has not exited
/// within `deadline`. Returns whether it exited by itself.
pub fn terminate(child: &mut Child, deadline: Duration) -> bool {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill(2) on our own child's pid, which is not reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let until = Instant::now() + deadline;
    while Instant::now() < until {
        if child.try_wait().expect("poll the broker").is_some() {
            return true;
        }
        // Polling a condition: no event tells us the process exited.
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    child.wait().expect("reap");
    false
}

/// Spawns `sluice broker ARGS`, appending its stderr to `DIR/broker.log`.
fn spawn_broker(dir: &Path, args: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))
        .expect("log file");
    Command::new(sluice_bin())
        .arg("broker")
        .args(args)
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

/// Far beyond what any client test needs; only a hang reaches it.
pub const CLIENT_TEST_DEADLINE: Duration = Duration::from_secs(300);

/// Runs `future` on a client executor on this thread, failing the test if it hangs.
pub fn run<T>(future: impl std::future::Future<Output = T>) -> T {
    sluice_engine::rt::try_block_on(async move {
        let deadline = sluice_engine::rt::sleep(CLIENT_TEST_DEADLINE);
        futures::pin_mut!(future, deadline);
        match futures::future::select(future, deadline).await {
            futures::future::Either::Left((output, _)) => output,
            futures::future::Either::Right(_) => {
                panic!("test did not finish within {CLIENT_TEST_DEADLINE:?}")
            }
        }
    })
    .expect("executor starts")
}

/// A native client library handle bootstrapped from `broker` with the default settings.
pub async fn connect(broker: &Broker) -> Client {
    Client::connect(ClientConfig::new([broker.brokers()]))
        .await
        .unwrap_or_else(|error| panic!("connect: {error}\nbroker log:\n{}", broker.log()))
}

/// Reads `partitions` from their beginning with a new consumer until `count` records came
/// (each poll must bring records within 30 s); returns them and the consumer.
pub async fn read_records(
    client: &Client,
    partitions: &[(&str, i32)],
    count: usize,
) -> (Vec<ConsumerRecord>, Consumer) {
    let consumer = Consumer::new(client, ConsumerConfig::default());
    consumer.assign(partitions);
    let mut records = Vec::with_capacity(count);
    // Bounded: every poll brings records or fails the test.
    while records.len() < count {
        let batch = consumer
            .poll(Duration::from_secs(30))
            .await
            .unwrap_or_else(|error| panic!("{partitions:?}: {error}"));
        assert!(
            !batch.is_empty(),
            "{partitions:?}: nothing new within 30 s after {} of {count} records",
            records.len()
        );
        records.extend(batch);
    }
    (records, consumer)
}

/// Asserts that a consumed record has the key, value, headers and timestamp it was sent with.
pub fn assert_same_record(at: &str, got: &ConsumerRecord, want: &ProducerRecord) {
    assert_eq!(got.key, want.key, "{at}: key");
    assert_eq!(got.value, want.value, "{at}: value");
    assert_eq!(Some(got.timestamp), want.timestamp, "{at}: timestamp");
    let headers: Vec<(&[u8], Option<&[u8]>)> = got
        .headers
        .iter()
        .map(|h| (&h.key[..], h.value.as_deref()))
        .collect();
    let wanted: Vec<(&[u8], Option<&[u8]>)> = want
        .headers
        .iter()
        .map(|(k, v)| (k.as_bytes(), v.as_deref()))
        .collect();
    assert_eq!(headers, wanted, "{at}: headers");
}
